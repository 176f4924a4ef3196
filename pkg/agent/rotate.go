package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
)

// kubeletService is kubelet's name for `kone certificate rotate --service`.
const kubeletService = "kubelet"

// RotateCertificates is `kone certificate rotate` on an agent: the client certificates kone
// keeps for the node's components (kube-proxy, coredns, flannel) and kubelet's client
// certificate are issued anew by the cluster, with new keys, after the old files are copied
// into agent/tls-rotated-TIME. It asks as the node, through the agent's --server, so the
// agent need not run, but a server must answer; if none does, nothing changes.
//
// A running agent's components take their new certificates from disk within minutes. kubelet
// reads its certificates only as it starts: it takes the new client certificate, and asks for a
// new serving certificate (the old one is removed here), at the agent's next start, which keeps
// the node's pods running.
func RotateCertificates(ctx context.Context, cfg *config.Config, services []string, now time.Time, out io.Writer) error {
	id, err := node.ResolveIdentity(&cfg.Node)
	if err != nil {
		return err
	}
	paths := node.Paths{Agent: cfg.AgentDir()}
	j := joiner{server: cfg.Server, id: id, paths: paths}
	known := []string{kubeletService}
	for _, c := range j.components() {
		known = append(known, c.service)
	}
	slices.Sort(known)
	if len(services) == 0 {
		services = known
	}
	services = slices.Compact(slices.Sorted(slices.Values(services)))
	for _, s := range services {
		if !slices.Contains(known, s) {
			return fmt.Errorf("--service %q: an agent has no certificate for it; choose among %s", s, strings.Join(known, ", "))
		}
	}
	kubeconfig := j.file("kubelet.kubeconfig")
	if _, err := os.Stat(kubeconfig); err != nil {
		return fmt.Errorf("%s holds no joined agent's credentials (%w); run this on a server or an agent, with its --data-dir", cfg.DataDir, err)
	}
	// As the node, kubelet's identity, straight to the server rather than through the agent's
	// load balancer, which runs only while the agent does.
	cs, err := client(kubeconfig, cfg.Server)
	if err != nil {
		return err
	}
	if _, err := cs.Discovery().ServerVersion(); err != nil {
		return fmt.Errorf("the cluster signs the new certificates, and it does not answer at %s (%w); nothing changed", cfg.Server, err)
	}
	unlock, err := j.lock()
	if err != nil {
		return err
	}
	defer unlock()
	secret, err := join.LoadOrCreateSecret(paths.NodeSecret())
	if err != nil {
		return err
	}
	aside := filepath.Join(paths.Agent, "tls-rotated-"+now.UTC().Format("20060102T150405.000000000Z"))
	kubeletCerts := []string{filepath.Join(paths.KubeletCertDir(), "kubelet-client-current.pem"),
		filepath.Join(paths.KubeletCertDir(), "kubelet-server-current.pem")}
	var keep []string
	for _, c := range j.components() {
		if slices.Contains(services, c.service) {
			f := j.tls(c.name)
			if err := pki.RecoverPair(f); err != nil {
				return fmt.Errorf("rotate certificates: %w", err)
			}
			keep = append(keep, f.Cert, f.Key)
		}
	}
	if slices.Contains(services, kubeletService) {
		keep = append(keep, kubeletCerts...)
	}
	if _, err := pki.CopyAside(cfg.DataDir, aside, keep...); err != nil {
		return fmt.Errorf("rotate certificates: keep the old ones: %w", err)
	}
	for _, s := range services {
		if s == kubeletService {
			if _, err := join.KubeletCertificate(ctx, cs, paths.KubeletCertDir(), id.Name, secret); err != nil {
				return fmt.Errorf("rotate kubelet's client certificate: %w; the old certificates are in %s", err, aside)
			}
			if err := os.Remove(kubeletCerts[1]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("rotate kubelet's serving certificate: %w", err)
			}
			fmt.Fprintf(out, "%s: a new client certificate; kubelet takes it, and asks for a new serving certificate, at the next start of kone agent (pods keep running)\n", s)
			continue
		}
		for _, c := range j.components() {
			if c.service != s {
				continue
			}
			if err := join.ClientCertificate(ctx, cs, j.tls(c.name), c.component, id.Name, secret); err != nil {
				return fmt.Errorf("rotate %s's certificate: %w; the old certificates are in %s", s, err, aside)
			}
			fmt.Fprintf(out, "%s: issued with a new key\n", s)
		}
	}
	fmt.Fprintf(out, "the old certificates and keys are in %s; a running kone takes the new ones of its components from disk without a restart\n", aside)
	return nil
}
