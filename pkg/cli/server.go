package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/logging"
	"github.com/kone-dev/kone/pkg/sdnotify"
	"github.com/kone-dev/kone/pkg/server"
)

func newServerCommand() *cobra.Command {
	cfg := &config.Config{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a control-plane node: etcd, kube-apiserver, kube-controller-manager, kube-scheduler",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			notify := sdnotify.Take()
			if err := config.Load(cmd.Flags(), cfg, os.LookupEnv); err != nil {
				return err
			}
			log := logging.Setup(os.Stderr, cfg.Debug)
			ctx, stop := signalContext()
			defer stop()
			return server.Run(ctx, cfg, log, notify)
		},
	}
	config.BindServerFlags(cmd.Flags(), cfg)
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
