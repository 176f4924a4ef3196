package agent

import (
	"context"
	"encoding/json"
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
// keeps for the node's components (kube-proxy, coredns, flannel, local-path) and kubelet's client
// certificate are issued anew by the cluster, with new keys, after the old files are copied
// into agent/tls-rotated-TIME. It asks as the node, through the agent's --server, so the
// agent need not run, but a server must answer; if none does, nothing changes.
//
// A running agent's components take their new certificates from disk within minutes. kubelet
// reads its certificates only as it starts: it takes the new client certificate, and asks for a
// new serving certificate (the old one is removed here), at the agent's next start, which keeps
// the node's pods running.
func RotateCertificates(ctx context.Context, cfg *config.Config, services []string, now time.Time, out io.Writer) error {
	paths := node.Paths{Agent: cfg.AgentDir()}
	kubeletCerts := []string{filepath.Join(paths.KubeletCertDir(), "kubelet-client-current.pem"),
		filepath.Join(paths.KubeletCertDir(), "kubelet-server-current.pem")}
	j := joiner{server: cfg.Server, paths: paths}
	// The cluster's settings as of the agent's last start say whether it has a local-path
	// identity; an agent that never started has no certificates to rotate either.
	if data, err := os.ReadFile(j.settingsFile()); err == nil {
		var settings join.Settings
		if err := json.Unmarshal(data, &settings); err != nil {
			return fmt.Errorf("%s: %w; the agent rewrites it at its next start", j.settingsFile(), err)
		}
		j.localStorage = settings.LocalStorage
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("the cluster settings of the agent's last start: %w", err)
	}
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
	for _, f := range []string{kubeconfig, paths.NodeSecret()} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s holds no joined agent's credentials (%w); run this on a server or an agent, with its --data-dir", cfg.DataDir, err)
		}
	}
	// The node's name as the cluster knows it, from kubelet's own certificate: the flags may
	// not say it (a host name changed since, a --node-name the command was not given).
	name, err := nodeName(kubeletCerts[0])
	if err != nil {
		return err
	}
	j.id = node.Identity{Name: name}
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
	secret, err := join.LoadOrCreateSecret(paths.NodeSecret()) // there, as checked above
	if err != nil {
		return err
	}
	aside := filepath.Join(paths.Agent, "tls-rotated-"+now.UTC().Format("20060102T150405.000000000Z"))
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
	replaced := 0
	failed := func(what string, err error) error {
		if replaced == 0 {
			_ = os.RemoveAll(aside)
			return fmt.Errorf("rotate %s: %w; nothing changed", what, err)
		}
		return fmt.Errorf("rotate %s: %w; the certificates before it are new, and the old ones are in %s", what, err, aside)
	}
	for _, s := range services {
		if s == kubeletService {
			if _, err := join.KubeletCertificate(ctx, cs, paths.KubeletCertDir(), j.id.Name, secret); err != nil {
				return failed("kubelet's client certificate", err)
			}
			replaced++
			if err := os.Remove(kubeletCerts[1]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return failed("kubelet's serving certificate", err)
			}
			fmt.Fprintf(out, "%s: a new client certificate; kubelet takes it, and asks for a new serving certificate, at the next start of kone agent (pods keep running)\n", s)
			continue
		}
		for _, c := range j.components() {
			if c.service != s {
				continue
			}
			if err := join.ClientCertificate(ctx, cs, j.tls(c.name), c.component, j.id.Name, secret); err != nil {
				return failed(s+"'s certificate", err)
			}
			replaced++
			fmt.Fprintf(out, "%s: issued with a new key\n", s)
		}
	}
	fmt.Fprintf(out, "the old certificates and keys are in %s; a running kone takes the new ones of its components from disk without a restart\n", aside)
	return nil
}

// nodeName is the node that kubelet's client certificate at path is for.
func nodeName(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("kubelet's client certificate: %w", err)
	}
	cert, err := pki.ParseCert(data)
	if err != nil {
		return "", fmt.Errorf("kubelet's client certificate %s: %w", path, err)
	}
	name, ok := strings.CutPrefix(cert.Subject.CommonName, join.KubeletSubject("").CommonName)
	if !ok || name == "" {
		return "", fmt.Errorf("kubelet's client certificate %s is for %q, not a node", path, cert.Subject.CommonName)
	}
	return name, nil
}
