// Package cli holds kone's commands. Each is thin: it parses flags and configuration and calls
// into the package that does the work. Errors are returned, never turned into an exit here.
package cli

import (
	"github.com/spf13/cobra"

	"github.com/kone-dev/kone/pkg/version"
)

// New returns kone's root command.
func New() *cobra.Command {
	root := &cobra.Command{
		Use:           "kone",
		Short:         "A small, offline-first Kubernetes distribution in one binary",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("{{ printVersion }}")
	cobra.AddTemplateFunc("printVersion", version.String)
	root.AddCommand(newServerCommand(), newAgentCommand(), newKubectlCommand(), newCtrCommand(), newTokenCommand(), newSecretsEncryptCommand(), newEtcdSnapshotCommand(), newCertificateCommand(), newCheckConfigCommand())
	return root
}
