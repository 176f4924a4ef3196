package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/server"
	"github.com/kone-dev/kone/pkg/snapshot"
)

// newEtcdSnapshotCommand works on the snapshots of this machine's server, as k3s's
// `etcd-snapshot` does.
func newEtcdSnapshotCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "etcd-snapshot", Short: "Save, list, delete and prune snapshots of this server's etcd"}
	log := func(c *cobra.Command) *logrus.Logger {
		l := logrus.New()
		l.SetOutput(c.ErrOrStderr())
		return l
	}

	var name string
	save := onServer("save", "Save a snapshot of this server's etcd member now", cobra.NoArgs,
		func(c *cobra.Command, cfg *config.Config, _ []string) error {
			saver, err := server.Snapshots(c.Context(), cfg, log(c))
			if err != nil {
				return err
			}
			m, err := saver.Save(c.Context(), name)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "saved snapshot %s (%s, database %s) to %s\n", m.Name, mib(m.Size), mib(m.DBSize), saver.Dir.File(m.Name))
			return nil
		})
	save.Flags().StringVar(&name, "name", snapshot.OnDemandName, "the snapshot's name; the node and the time are added to it")

	ls := onServer("ls", "List the snapshots in the snapshot directory", cobra.NoArgs,
		func(c *cobra.Command, cfg *config.Config, _ []string) error {
			dir := snapshot.Dir(cfg.SnapshotDir())
			all, err := dir.List()
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(c.OutOrStdout(), 0, 8, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tSIZE\tCREATED\tNODE\tLOCATION")
			for _, m := range all {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", m.Name, mib(m.Size), m.CreatedAt.Format("2006-01-02T15:04:05Z"), m.Node, dir.File(m.Name))
			}
			return w.Flush()
		})
	ls.Aliases = []string{"list"}

	del := onServer("delete NAME...", "Delete snapshots", cobra.MinimumNArgs(1),
		func(c *cobra.Command, cfg *config.Config, names []string) error {
			err := snapshot.Dir(cfg.SnapshotDir()).Delete(names...)
			// Those that were deleted leave the API's list at once when the server runs, else at
			// its next start.
			if saver, serr := server.Snapshots(c.Context(), cfg, log(c)); serr == nil {
				saver.Publish(c.Context())
			}
			return err
		})
	del.Aliases = []string{"rm"}

	var pruneName string
	var retention int
	prune := onServer("prune", "Delete this server's oldest snapshots of a name, keeping the newest --retention", cobra.NoArgs,
		func(c *cobra.Command, cfg *config.Config, _ []string) error {
			keep := retention
			if !c.Flags().Changed("retention") {
				keep = cfg.EtcdSnapshotRetention
			}
			saver, err := server.Snapshots(c.Context(), cfg, log(c))
			if err != nil {
				return err
			}
			gone, err := saver.Prune(c.Context(), pruneName, keep)
			for _, n := range gone {
				fmt.Fprintf(c.OutOrStdout(), "deleted snapshot %s\n", n)
			}
			return err
		})
	prune.Flags().StringVar(&pruneName, "name", snapshot.OnDemandName, "prune the snapshots saved under this name")
	prune.Flags().IntVar(&retention, "retention", 0, "how many to keep (default: --etcd-snapshot-retention)")

	cmd.AddCommand(save, ls, del, prune)
	return cmd
}

func mib(bytes int64) string { return fmt.Sprintf("%.1f MiB", float64(bytes)/(1<<20)) }
