package cli

import (
	"os"
	"time"

	"github.com/containerd/containerd/v2/cmd/containerd/command"
	ctrapp "github.com/containerd/containerd/v2/cmd/ctr/app"
	"github.com/spf13/cobra"

	"github.com/kone-dev/kone/pkg/memory"
	"github.com/kone-dev/kone/pkg/node"

	// containerd's plugins, the CRI among them, register themselves.
	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"
)

// Containerd runs containerd's daemon with args (argv without the program name). kone runs
// itself this way as a child process.
func Containerd(args []string) error {
	// containerd has no hook for the end of its start-up, which takes a few seconds; by this
	// time it is long over, and what it allocated and ran only then can go.
	memory.Start()
	time.AfterFunc(containerdSettleAfter, memory.Settle)
	return command.App().Run(append([]string{"containerd"}, args...))
}

const containerdSettleAfter = 30 * time.Second

// Ctr runs containerd's ctr with args, talking to kone's containerd unless told otherwise.
func Ctr(args []string) error {
	if os.Getenv("CONTAINERD_ADDRESS") == "" {
		os.Setenv("CONTAINERD_ADDRESS", node.ContainerdSocket)
	}
	return ctrapp.New().Run(append([]string{"ctr"}, args...))
}

func newCtrCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "ctr",
		Short:              "Run containerd's ctr against this node's containerd",
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			return Ctr(args)
		},
	}
}
