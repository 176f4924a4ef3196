package cli

import (
	"errors"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"

	"github.com/kone-dev/kone/pkg/config"
)

func newKubectlCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "kubectl",
		Short:              "Run kubectl against this node's cluster",
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			return Kubectl(args)
		},
	}
}

// ExitError carries a message and an exit code that kubectl asked for.
type ExitError struct {
	Message string
	Code    int
}

func (e *ExitError) Error() string { return e.Message }

// Kubectl runs upstream kubectl with args. With neither KUBECONFIG nor --kubeconfig, it uses
// kone's admin kubeconfig when that exists, as k3s users expect.
func Kubectl(args []string) error {
	if os.Getenv("KUBECONFIG") == "" && !slices.ContainsFunc(args, isKubeconfigFlag) {
		if _, err := os.Stat(config.DefaultKubeconfig); err == nil {
			os.Setenv("KUBECONFIG", config.DefaultKubeconfig)
		}
	}
	cmd := kubectlcmd.NewDefaultKubectlCommand()
	cmd.SetArgs(args)
	var exit *ExitError
	// kubectl reports its errors through this hook; keep the exit in main.
	cmdutil.BehaviorOnFatal(func(msg string, code int) { exit = &ExitError{Message: strings.TrimSpace(msg), Code: code} })
	if err := cli.RunNoErrOutput(cmd); err != nil {
		cmdutil.CheckErr(err)
	}
	if exit != nil {
		return exit
	}
	return nil
}

func isKubeconfigFlag(a string) bool {
	return a == "--kubeconfig" || strings.HasPrefix(a, "--kubeconfig=")
}

// AsExit returns the exit code an error asks for: kubectl's own, or 1.
func AsExit(err error) (string, int) {
	var e *ExitError
	if errors.As(err, &e) {
		return e.Message, e.Code
	}
	return "kone: " + err.Error(), 1
}
