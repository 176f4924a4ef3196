package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/host"
	"github.com/kone-dev/kone/pkg/netpol"
)

func newCheckConfigCommand() *cobra.Command {
	var profile string
	cmd := &cobra.Command{
		Use:   "check-config",
		Short: "List what this host lacks for running pods, with a fix for each",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if profile != "" && profile != config.ProfileCIS {
				return fmt.Errorf("--profile %q: kone knows only %s", profile, config.ProfileCIS)
			}
			findings := append(host.Check(profile == config.ProfileCIS), nfTables())
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			for _, f := range findings {
				status := "ok"
				switch {
				case !f.OK && f.Essential:
					status = "MISSING"
				case !f.OK:
					status = "missing (optional)"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\n", f.Name, status, f.Detail)
				if !f.OK {
					fmt.Fprintf(w, "\t\tfix: %s\n", f.Fix)
				}
			}
			if err := w.Flush(); err != nil {
				return err
			}
			return host.Missing(findings)
		},
	}
	cmd.Flags().StringVar(&profile, "profile", "", "check for the hardening profile too: cis")
	return cmd
}

// nfTables runs the check NetworkPolicy enforcement makes as it starts, which a node without
// --disable network-policy needs to pass.
func nfTables() host.Finding {
	f := host.Finding{Name: "nf_tables", Fix: "NetworkPolicy enforcement needs it: enable CONFIG_NF_TABLES or load nf_tables (modprobe nf_tables), or start kone with --disable network-policy"}
	if err := netpol.Available(-1); err != nil {
		f.Detail = err.Error()
	} else {
		f.OK, f.Detail = true, "a table like kone's NetworkPolicy table can be written"
	}
	return f
}
