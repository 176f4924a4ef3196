package cli

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/kone-dev/kone/pkg/agent"
	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/logging"
	"github.com/kone-dev/kone/pkg/sdnotify"
)

func newAgentCommand() *cobra.Command {
	cfg := &config.Config{}
	cmd := &cobra.Command{
		Use:   "agent --server https://HOST:6443 --token TOKEN",
		Short: "Run a worker node that joins a kone server: containerd, kubelet, kube-proxy, pod network, DNS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			notify := sdnotify.Take()
			if err := config.Load(cmd.Flags(), cfg, os.LookupEnv); err != nil {
				return err
			}
			log := logging.Setup(os.Stderr, cfg.Debug)
			ctx, stop := signalContext()
			defer stop()
			return agent.Run(ctx, cfg, log, notify)
		},
	}
	config.BindAgentFlags(cmd.Flags(), cfg)
	return cmd
}
