package cli

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/server"
)

// newSecretsEncryptCommand works on the running server of this machine; it reads the server's
// own configuration (flags, config file, environment), so it finds the same data dir and etcd.
func newSecretsEncryptCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "secrets-encrypt", Short: "Show or rotate the keys that encrypt Secrets at rest"}
	sub := func(use, short string, run func(*cobra.Command, *config.Config) error) *cobra.Command {
		cfg := &config.Config{}
		c := &cobra.Command{
			Use: use, Short: short, Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error {
				if err := config.Load(c.Flags(), cfg, os.LookupEnv); err != nil {
					return err
				}
				return run(c, cfg)
			},
		}
		config.BindServerFlags(c.Flags(), cfg)
		return c
	}
	cmd.AddCommand(
		sub("status", "Show the keys, and how the stored Secrets are encrypted",
			func(c *cobra.Command, cfg *config.Config) error {
				return server.SecretsStatus(c.Context(), cfg, c.OutOrStdout())
			}),
		sub("rotate-keys", "Add a new key, store every Secret with it, and retire the old keys, while the cluster serves",
			func(c *cobra.Command, cfg *config.Config) error {
				return server.RotateSecretsKeys(c.Context(), cfg, c.OutOrStdout())
			}),
	)
	return cmd
}
