package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/host"
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
			findings := host.Check(profile == config.ProfileCIS)
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
