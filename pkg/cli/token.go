package cli

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/token"
)

func newTokenCommand() *cobra.Command {
	var kubeconfig string
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens"}
	cmd.PersistentFlags().StringVar(&kubeconfig, "kubeconfig", "", "admin kubeconfig (default: $KUBECONFIG, else "+config.DefaultKubeconfig+")")

	var ttl time.Duration
	var description string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token and print it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl < 0 {
				return fmt.Errorf("--ttl %s is negative; use 0 for a token that never expires", ttl)
			}
			cs, caPEM, err := adminClient(kubeconfig)
			if err != nil {
				return err
			}
			t, err := token.Generate()
			if err == nil {
				t, err = t.WithCA(caPEM)
			}
			if err != nil {
				return err
			}
			if err := token.Create(cmd.Context(), cs, t, token.Options{TTL: ttl, Description: description}, time.Now()); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.String())
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token is valid; 0 means forever")
	create.Flags().StringVar(&description, "description", "", "what the token is for")

	list := &cobra.Command{
		Use:   "list",
		Short: "List join tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cs, _, err := adminClient(kubeconfig)
			if err != nil {
				return err
			}
			infos, err := token.List(cmd.Context(), cs)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tEXPIRES\tUSAGES\tDESCRIPTION")
			for _, i := range infos {
				expires := "never"
				if !i.Expires.IsZero() {
					expires = i.Expires.Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s\t%s\t%v\t%s\n", i.ID, expires, i.Usages, i.Description)
			}
			return w.Flush()
		},
	}

	del := &cobra.Command{
		Use:   "delete ID...",
		Short: "Delete join tokens by id",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			cs, _, err := adminClient(kubeconfig)
			if err != nil {
				return err
			}
			for _, id := range ids {
				if err := token.Delete(cmd.Context(), cs, id); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "token %s deleted\n", id)
			}
			return nil
		},
	}
	var dataDir string
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Replace the server's token with a new one and print it once",
		Long: "Replace the server's own token: the new one is written to the token file in the data dir and printed once, " +
			"and the old one joins nothing from then on. Nodes that have joined keep working with their own credentials.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cs, caPEM, err := adminClient(kubeconfig)
			if err != nil {
				return err
			}
			files := (&config.Config{DataDir: dataDir}).ServerToken()
			// The other servers follow the cluster's token (their files are what users read to
			// join nodes); one that another rotation replaced meanwhile stays.
			publish := func(old, t token.Token) error {
				return join.ReplaceServerToken(cmd.Context(), cs, old.ID, t)
			}
			t, err := files.Rotate(cmd.Context(), cs, caPEM, time.Now(), publish)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.String())
			return nil
		},
	}
	rotate.Flags().StringVarP(&dataDir, "data-dir", "d", config.DefaultDataDir, "the server's data dir, which holds its token file")
	cmd.AddCommand(create, list, del, rotate)
	return cmd
}

// adminClient connects with the admin kubeconfig and returns the cluster CA it trusts.
func adminClient(path string) (kubernetes.Interface, []byte, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	} else if os.Getenv("KUBECONFIG") == "" {
		rules.ExplicitPath = config.DefaultKubeconfig
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil)
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("admin kubeconfig: %w; run this on a server, or pass --kubeconfig", err)
	}
	caPEM := rc.CAData
	if len(caPEM) == 0 && rc.CAFile != "" {
		if caPEM, err = os.ReadFile(rc.CAFile); err != nil {
			return nil, nil, fmt.Errorf("cluster CA: %w", err)
		}
	}
	rc.Timeout = 15 * time.Second
	cs, err := kubernetes.NewForConfig(rc)
	return cs, caPEM, err
}
