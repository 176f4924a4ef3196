package cli

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kone-dev/kone/pkg/agent"
	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/logging"
	"github.com/kone-dev/kone/pkg/memory"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/sdnotify"
	"github.com/kone-dev/kone/pkg/server"
)

func newServerCommand() *cobra.Command {
	return nodeCommand("server",
		"Run a control-plane node: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and the node side",
		config.BindServerFlags, server.Run)
}

func newAgentCommand() *cobra.Command {
	return nodeCommand("agent --server https://HOST:6443 --token TOKEN",
		"Run a worker node that joins a kone server: containerd, kubelet, kube-proxy, pod network, DNS",
		config.BindAgentFlags, agent.Run)
}

// nodeCommand is a command that runs kone until SIGTERM: it loads the configuration once and
// hands it to run.
func nodeCommand(use, short string, bind func(*pflag.FlagSet, *config.Config),
	run func(context.Context, *config.Config, *logging.Logging, *sdnotify.Notifier) error) *cobra.Command {
	cfg := &config.Config{}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			memory.Start()
			notify := sdnotify.Take()
			if err := config.Load(cmd.Flags(), cfg, os.LookupEnv); err != nil {
				return err
			}
			log := logging.Setup(os.Stderr, cfg.Debug)
			if _, err := memory.DropNewExecutable(filepath.Join(node.RunDir, "executable-dropped")); err != nil {
				log.WithError(err).Debug("cannot drop kone's executable from the page cache; its memory use may be higher")
			}
			ctx, stop := signalContext()
			defer stop()
			return run(ctx, cfg, log, notify)
		},
	}
	bind(cmd.Flags(), cfg)
	return cmd
}

// signalContext ends on the first SIGTERM or SIGINT; a second one kills the process, for when
// a clean stop hangs.
func signalContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}
