// Package proxy runs kube-proxy inside kone, from upstream's options, in iptables mode unless
// the user asks for nftables (--kube-proxy-arg=proxy-mode=nftables).
//
// The upstream cobra command is not used: it re-applies the process's logging configuration,
// which component-base refuses to do twice in one process.
package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/spf13/pflag"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"

	"github.com/kone-dev/kone/pkg/args"
	"github.com/kone-dev/kone/pkg/probe"
)

// HealthzPort is where kube-proxy answers /healthz on loopback.
const HealthzPort = 10256

// Config is what kone tells kube-proxy.
type Config struct {
	NodeName    string
	NodeIP      net.IP
	ClusterCIDR *net.IPNet
	Kubeconfig  string
	Args        []string // the user's --kube-proxy-arg, key=value, applied last
}

// Args are kube-proxy's flags for c.
func Args(c Config) []string {
	a := map[string]string{
		"kubeconfig":           c.Kubeconfig,
		"hostname-override":    c.NodeName,
		"cluster-cidr":         c.ClusterCIDR.String(),
		"proxy-mode":           "iptables",
		"healthz-bind-address": fmt.Sprintf("127.0.0.1:%d", HealthzPort),
		"metrics-bind-address": "127.0.0.1:10249",
		// Leave the conntrack table's size to the kernel: kube-proxy's sizing fails in a
		// container or a node's own network namespace, where the sysctl is read-only.
		"conntrack-max-per-core": "0",
		"profiling":              "false",
	}
	if c.NodeIP != nil {
		a["bind-address"] = c.NodeIP.String()
	}
	return args.Merge(a, c.Args)
}

// Proxy is the kube-proxy component.
type Proxy struct{ args []string }

// New checks c's arguments and returns the component.
func New(c Config) (*Proxy, error) {
	p := &Proxy{args: Args(c)}
	if _, _, err := p.options(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Proxy) options() (*proxyapp.Options, *pflag.FlagSet, error) {
	opts := proxyapp.NewOptions()
	fs := pflag.NewFlagSet("kube-proxy", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	opts.AddFlags(fs)
	if err := fs.Parse(p.args); err != nil {
		return nil, nil, fmt.Errorf("kube-proxy arguments: %w (check --kube-proxy-arg)", err)
	}
	return opts, fs, nil
}

func (p *Proxy) Name() string { return "kube-proxy" }

// Run runs kube-proxy until ctx ends. Upstream's proxy server has no stop: its loops end with
// the process, and the rules it wrote stay, so that Services keep working while kone restarts.
func (p *Proxy) Run(ctx context.Context) error {
	opts, fs, err := p.options()
	if err != nil {
		return err
	}
	if err := opts.Complete(fs); err != nil {
		return fmt.Errorf("kube-proxy: %w", err)
	}
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("kube-proxy configuration: %w (check --kube-proxy-arg)", err)
	}
	failed := make(chan error, 1)
	go func() { failed <- opts.Run(ctx) }()
	select {
	case err := <-failed:
		return fmt.Errorf("kube-proxy: %w", err)
	case <-ctx.Done():
		return nil
	}
}

// Ready waits until kube-proxy has written its rules once (its /healthz).
func (p *Proxy) Ready(ctx context.Context) error {
	return probe.HTTP(ctx, &http.Client{Timeout: 2 * time.Second}, fmt.Sprintf("http://127.0.0.1:%d/healthz", HealthzPort))
}
