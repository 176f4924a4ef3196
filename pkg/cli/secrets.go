package cli

import (
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/server"
)

// onServer is a command that works on the running server of this machine; it reads the
// server's own configuration (flags, config file, environment), so it finds the same data dir
// and etcd.
func onServer(use, short string, args cobra.PositionalArgs, run func(*cobra.Command, *config.Config, []string) error) *cobra.Command {
	return configured(use, short, args, config.BindServerFlags, config.Load, run)
}

// configured is a command that loads its configuration with load from the flags bind registers.
func configured(use, short string, args cobra.PositionalArgs, bind func(*pflag.FlagSet, *config.Config),
	load func(*pflag.FlagSet, *config.Config, func(string) (string, bool)) error, run func(*cobra.Command, *config.Config, []string) error) *cobra.Command {
	cfg := &config.Config{}
	c := &cobra.Command{
		Use: use, Short: short, Args: args,
		RunE: func(c *cobra.Command, args []string) error {
			if err := load(c.Flags(), cfg, os.LookupEnv); err != nil {
				return err
			}
			return run(c, cfg, args)
		},
	}
	bind(c.Flags(), cfg)
	return c
}

func newSecretsEncryptCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "secrets-encrypt", Short: "Show or rotate the keys that encrypt Secrets at rest"}
	cmd.AddCommand(
		onServer("status", "Show the keys, and how the stored Secrets are encrypted", cobra.NoArgs,
			func(c *cobra.Command, cfg *config.Config, _ []string) error {
				return server.SecretsStatus(c.Context(), cfg, c.OutOrStdout())
			}),
		onServer("rotate-keys", "Add a new key, store every Secret with it, and retire the old keys, while the cluster serves", cobra.NoArgs,
			func(c *cobra.Command, cfg *config.Config, _ []string) error {
				return server.RotateSecretsKeys(c.Context(), cfg, c.OutOrStdout())
			}),
	)
	return cmd
}
