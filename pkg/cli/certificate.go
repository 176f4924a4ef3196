package cli

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
)

// checkWithin is how close to its expiry a certificate makes `certificate check` fail: a
// running kone renews leaves 90 days ahead, so one this close has not been renewed.
const checkWithin = 30

func newCertificateCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "certificate", Short: "Inspect the certificates kone keeps"}
	cmd.AddCommand(onServer("check", fmt.Sprintf("List this machine's certificates with their expiry; fail if one expires within %d days", checkWithin), cobra.NoArgs,
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
		}))
	return cmd
}

// printCertificates prints held as a table, paths relative to dataDir, and fails naming those
// that expire within checkWithin days.
func printCertificates(out io.Writer, held []pki.Held, dataDir string, now time.Time) error {
	w := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "FILE\tSUBJECT\tISSUER\tEXPIRES\tDAYS LEFT")
	var soon []string
	for _, h := range held {
		file := h.File
		if rel, err := filepath.Rel(dataDir, h.File); err == nil && !strings.HasPrefix(rel, "..") {
			file = rel
		}
		days := h.DaysLeft(now)
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", file, h.Subject, h.Issuer, h.NotAfter.UTC().Format("2006-01-02T15:04:05Z"), days)
		if days < checkWithin {
			soon = append(soon, fmt.Sprintf("%s (%s, %d days)", file, h.Subject, days))
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(soon) > 0 {
		return fmt.Errorf("%d certificates expire within %d days or have expired: %s; kone renews leaf certificates 90 days ahead as it starts: restart it",
			len(soon), checkWithin, strings.Join(soon, ", "))
	}
	return nil
}
