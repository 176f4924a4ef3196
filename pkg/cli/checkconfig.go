package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kone-dev/kone/pkg/host"
)

func newCheckConfigCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check-config",
		Short: "List what this host lacks for running pods, with a fix for each",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			findings := host.Check()
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
}
