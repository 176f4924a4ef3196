// Package kubelet runs the node's kubelet inside kone, from upstream's options and Run function.
// kone writes a KubeletConfiguration file (the detected cgroup driver, cluster DNS, webhook
// authentication and authorization, certificate rotation) and passes only what a file cannot
// say as flags, followed by the user's --kubelet-arg.
//
// The upstream cobra command is not used: it installs a process-wide signal handler, which
// panics when kone's other components have installed theirs, and it re-applies the process's
// logging configuration, which component-base refuses to do twice.
package kubelet

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/pflag"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/kubernetes/cmd/kubelet/app"
	"k8s.io/kubernetes/cmd/kubelet/app/options"
	kubeletconfiginternal "k8s.io/kubernetes/pkg/kubelet/apis/config"
	kubeletvalidation "k8s.io/kubernetes/pkg/kubelet/apis/config/validation"
	"k8s.io/kubernetes/pkg/kubelet/eviction"
	"k8s.io/kubernetes/pkg/kubelet/kubeletconfig/configfiles"
	utilfs "k8s.io/kubernetes/pkg/util/filesystem"

	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/probe"
)

// Kubelet is the kubelet component.
type Kubelet struct{ cfg Config }

// New returns the component.
func New(cfg Config) *Kubelet { return &Kubelet{cfg: cfg} }

func (k *Kubelet) Name() string { return "kubelet" }

// Run writes kubelet's configuration and runs kubelet until ctx ends. Upstream's kubelet has no
// way to stop all of its loops; they end with the process, which stops soon after.
func (k *Kubelet) Run(ctx context.Context) error {
	data, err := Configuration(k.cfg)
	if err != nil {
		return err
	}
	if err := pki.WriteFile(k.cfg.ConfigFile, data, 0o600); err != nil {
		return fmt.Errorf("kubelet configuration: %w", err)
	}
	server, err := load(ctx, k.cfg.ConfigFile, Flags(k.cfg))
	if err != nil {
		return err
	}
	deps, err := app.UnsecuredDependencies(ctx, server, utilfeature.DefaultFeatureGate)
	if err != nil {
		return fmt.Errorf("kubelet dependencies: %w", err)
	}
	return app.Run(ctx, server, deps, utilfeature.DefaultFeatureGate)
}

// load reads the configuration file and then the flags over it, as kubelet's own command does.
func load(ctx context.Context, file string, args []string) (*options.KubeletServer, error) {
	loader, err := configfiles.NewFsLoader(&utilfs.DefaultFs{}, file)
	if err != nil {
		return nil, fmt.Errorf("kubelet configuration %s: %w", file, err)
	}
	kc, err := loader.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("kubelet configuration %s: %w", file, err)
	}
	if kc.EvictionHard == nil {
		kc.EvictionHard = eviction.DefaultEvictionHard
	}
	flags := options.NewKubeletFlags()
	fs := pflag.NewFlagSet("kubelet", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	flags.AddFlags(fs)
	options.AddKubeletConfigFlags(fs, kc)
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("kubelet arguments: %w (check --kubelet-arg)", err)
	}
	if err := validate(flags, kc); err != nil {
		return nil, err
	}
	return &options.KubeletServer{KubeletFlags: *flags, KubeletConfiguration: *kc}, nil
}

func validate(flags *options.KubeletFlags, kc *kubeletconfiginternal.KubeletConfiguration) error {
	if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(kc.FeatureGates); err != nil {
		return fmt.Errorf("kubelet feature gates: %w", err)
	}
	if err := options.ValidateKubeletFlags(flags); err != nil {
		return fmt.Errorf("kubelet flags: %w (check --kubelet-arg)", err)
	}
	if err := kubeletvalidation.ValidateKubeletConfiguration(kc, utilfeature.DefaultFeatureGate); err != nil {
		return fmt.Errorf("kubelet configuration: %w (check --kubelet-arg)", err)
	}
	return nil
}

// Ready waits for kubelet's /healthz on loopback.
func (k *Kubelet) Ready(ctx context.Context) error {
	return probe.HTTP(ctx, &http.Client{Timeout: 2 * time.Second}, fmt.Sprintf("http://127.0.0.1:%d/healthz", HealthzPort))
}
