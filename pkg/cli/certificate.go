package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kone-dev/kone/pkg/agent"
	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/server"
)

// checkWithin is how close to its expiry a certificate makes `certificate check` fail: kone
// renews leaves pki.RenewBefore (90 days) ahead, hourly while it runs, so one this close is one
// that kone could not renew (or a kone that has not run for long); a monitoring job that runs
// the check finds it in time.
const checkWithin = 30

func newCertificateCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "certificate", Short: "Check and rotate the certificates kone keeps"}
	cmd.AddCommand(newCertificateCheckCommand())
	var services []string
	rotate := onAnyNode("rotate", "Issue leaf certificates anew with new keys, the old ones kept aside; kone may be running", cobra.NoArgs,
		func(c *cobra.Command, cfg *config.Config, _ []string) error {
			if _, err := os.Stat(cfg.TLSDir()); errors.Is(err, fs.ErrNotExist) {
				return agent.RotateCertificates(c.Context(), cfg, services, time.Now(), c.OutOrStdout())
			} else if err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			return server.RotateCertificates(cfg, services, time.Now(), c.OutOrStdout())
		})
	rotate.Flags().StringSliceVar(&services, "service", nil, "what to rotate the certificates of (repeatable; default: all): on a server admin, api-server, auth-proxy, controller-manager, scheduler, etcd, "+
		"and those of its node; on an agent kubelet, kube-proxy, coredns, flannel")
	cmd.AddCommand(rotate)
	cmd.AddCommand(onServer("rotate-ca", "Replace the cluster's certificate authorities with new ones, cross-signed by the old so that joined nodes keep working; kone must be running", cobra.NoArgs,
		func(c *cobra.Command, cfg *config.Config, _ []string) error {
			return server.RotateAuthorities(c.Context(), cfg, time.Now(), c.OutOrStdout())
		}))
	return cmd
}

// onAnyNode is a command that works on the data dir of a server or an agent: it takes the
// flags and the config file of either, and finds this machine's data dir with them.
func onAnyNode(use, short string, args cobra.PositionalArgs, run func(*cobra.Command, *config.Config, []string) error) *cobra.Command {
	return configured(use, short, args, config.BindDataDirFlags, config.LoadDataDir, run)
}

// newCertificateCheckCommand works on a server's data dir or an agent's: both hold certificates
// that kone renews, and a monitoring job runs the check on every machine.
func newCertificateCheckCommand() *cobra.Command {
	return onAnyNode("check", fmt.Sprintf("List this machine's certificates, a server's or an agent's, with their expiry; fail if one expires within %d days", checkWithin), cobra.NoArgs,
		func(c *cobra.Command, cfg *config.Config, _ []string) error {
			paths := node.Paths{Agent: cfg.AgentDir()}
			held, err := pki.Inventory(cfg.TLSDir(), paths.TLSDir(), paths.KubeletCertDir())
			if err != nil {
				return err
			}
			if len(held) == 0 {
				return fmt.Errorf("no certificates in %s: is this the data dir of a kone server or agent? (--data-dir)", cfg.DataDir)
			}
			return printCertificates(c.OutOrStdout(), held, cfg.DataDir, time.Now())
		})
}

// printCertificates prints held as a table, paths relative to dataDir, and fails naming those
// that expire within checkWithin days.
func printCertificates(out io.Writer, held []pki.Held, dataDir string, now time.Time) error {
	w := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "FILE\tSUBJECT\tISSUER\tEXPIRES\tDAYS LEFT")
	var leaves, cas []string
	for _, h := range held {
		file := h.File
		if rel, err := filepath.Rel(dataDir, h.File); err == nil && !strings.HasPrefix(rel, "..") {
			file = rel
		}
		days := h.DaysLeft(now)
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", file, h.Subject, h.Issuer, h.NotAfter.UTC().Format("2006-01-02T15:04:05Z"), days)
		if days < checkWithin {
			soon := fmt.Sprintf("%s (%s, %d days)", file, h.Subject, days)
			if h.IsCA {
				cas = append(cas, soon)
			} else {
				leaves = append(leaves, soon)
			}
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	var problems []string
	if len(leaves) > 0 {
		problems = append(problems, fmt.Sprintf("%d certificates expire within %d days or have expired: %s; kone renews them %d days ahead while it runs: see its log for why it could not, or run `kone certificate rotate`",
			len(leaves), checkWithin, strings.Join(leaves, ", "), int(pki.RenewBefore.Hours()/24)))
	}
	if len(cas) > 0 {
		problems = append(problems, fmt.Sprintf("%d certificate authorities expire within %d days or have expired: %s; replace them with `kone certificate rotate-ca`",
			len(cas), checkWithin, strings.Join(cas, ", ")))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}
