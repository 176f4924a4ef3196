package server

import (
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/datadir"
	"github.com/kone-dev/kone/pkg/loadbalancer"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
)

// certificateServices are the leaf certificates of a server and of its own node by the name of
// what uses them, k3s's names where they match: what `kone certificate rotate --service` takes.
func certificateServices(cfg *config.Config) map[string][]pki.File {
	ca := pki.Layout(cfg.TLSDir())
	paths := node.Paths{Agent: cfg.AgentDir()}
	return map[string][]pki.File{
		"admin":              {ca.Admin},
		"api-server":         {ca.APIServerServing, ca.APIServerKubelet},
		"auth-proxy":         {ca.AuthProxy},
		"controller-manager": {ca.ControllerManager},
		"scheduler":          {ca.Scheduler},
		"etcd":               {ca.EtcdServing, ca.EtcdPeer, ca.APIServerEtcd},
		"kubelet":            {nodeLeaf(paths, kubeletClientLeaf), nodeLeaf(paths, kubeletServingLeaf)},
		"kube-proxy":         {nodeLeaf(paths, proxyClientLeaf)},
		"coredns":            {nodeLeaf(paths, dnsClientLeaf)},
		"flannel":            {nodeLeaf(paths, flannelClientLeaf)},
		"local-path":         {nodeLeaf(paths, storageClientLeaf)},
		"metrics-server":     {ca.MetricsServing, ca.MetricsClient},
	}
}

// serverCertificates issues, renews and rotates the leaf certificates of a server and of its
// own node, and writes the kubeconfigs that carry them. The server does so as it starts and
// while it runs (renewer); `kone certificate rotate` does so beside it or while it is stopped.
// The components reload what it writes from disk.
type serverCertificates struct {
	cfg  *config.Config
	ca   *pki.Cluster
	self node.Identity // the server's name and address, which its node shares
}

// lock is taken by whoever issues, for the length of an issue; without wait, it fails with
// datadir.ErrBusy while another holds it.
func (c serverCertificates) lock(wait bool) (unlock func(), err error) {
	if err := os.MkdirAll(c.ca.Dir, 0o700); err != nil {
		return nil, err
	}
	return datadir.LockFile(filepath.Join(c.ca.Dir, ".lock"), wait)
}

// issue renews every leaf certificate that needs it, rotates those in rotate, and returns
// those it issued.
func (c serverCertificates) issue(now time.Time, rotate ...pki.File) ([]string, error) {
	unlock, err := c.lock(true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return c.issueLocked(now, rotate...)
}

func (c serverCertificates) issueLocked(now time.Time, rotate ...pki.File) ([]string, error) {
	issued, err := c.ca.Renew(apiserverNames(c.cfg), etcdNames(), peerNames(c.self), now, rotate...)
	if err != nil {
		return issued, fmt.Errorf("certificates: %w", err)
	}
	if !c.cfg.DisableAgent {
		paths := node.Paths{Agent: c.cfg.AgentDir()}
		more, err := issueNodeCertificates(c.ca, paths, c.self, loadbalancer.URL(c.cfg.Node.LoadBalancer()), now, rotate...)
		issued = append(issued, more...)
		if err != nil {
			return issued, fmt.Errorf("node certificates: %w", err)
		}
	}
	if c.cfg.WriteKubeconfig != "" {
		// The one kubeconfig that holds its certificate rather than naming its file: it leaves
		// the machine.
		admin := pki.Kubeconfig{Server: adminConfig(c.cfg, c.ca).Host, CAFile: c.ca.ServerCA, Client: c.ca.Admin, Embed: true}
		if err := admin.Write(c.cfg.WriteKubeconfig, os.FileMode(c.cfg.WriteKubeconfigMode)); err != nil {
			return issued, fmt.Errorf("%w; choose another path with --write-kubeconfig", err)
		}
	}
	return issued, nil
}

// RotateCertificates issues the leaf certificates of services (all when none is named) anew,
// with new keys, in place, after copying the old ones into a directory beside the PKI,
// tls-rotated-TIME. A running kone takes the new ones from disk: its servers at once, its
// clients within minutes. The old certificates stay valid until they expire: rotation replaces
// a certificate, it does not revoke one (Kubernetes has no revocation list).
func RotateCertificates(cfg *config.Config, services []string, now time.Time, out io.Writer) error {
	all := certificateServices(cfg)
	names := slices.Sorted(maps.Keys(all))
	if len(services) == 0 {
		services = slices.Clone(names)
	}
	slices.Sort(services)
	for _, s := range services {
		if _, ok := all[s]; !ok {
			return fmt.Errorf("--service %q: kone has no certificate for it; choose among %s", s, strings.Join(names, ", "))
		}
	}
	certs, aside, unlock, err := openServerCertificates(cfg, now)
	if err != nil {
		return err
	}
	defer unlock()
	var rotate []pki.File
	kept := 0
	for _, s := range slices.Compact(services) {
		for _, f := range all[s] {
			// A pair that a crash left half-replaced is finished or undone first, so that what
			// is kept aside is a certificate with its own key.
			if err := pki.RecoverPair(f); err != nil {
				return fmt.Errorf("rotate certificates: %w", err)
			}
			n, err := pki.CopyAside(cfg.DataDir, aside, f.Cert, f.Key)
			if err != nil {
				return fmt.Errorf("rotate certificates: keep the old ones: %w", err)
			}
			kept += n
			rotate = append(rotate, f)
		}
	}
	issued, err := certs.issueLocked(now, rotate...)
	if err != nil {
		return err
	}
	for _, s := range slices.Compact(services) {
		n := 0
		for _, f := range all[s] {
			if slices.Contains(issued, f.Cert) {
				n++
			}
		}
		if n == 0 {
			fmt.Fprintf(out, "%s: none, this server runs no node side (--disable-agent)\n", s)
			continue
		}
		fmt.Fprintf(out, "%s: %d issued with new keys\n", s, n)
	}
	if kept > 0 {
		fmt.Fprintf(out, "the old certificates and keys are in %s; a running kone takes the new ones from disk without a restart\n", aside)
	}
	return nil
}

// openServerCertificates is where `kone certificate rotate` and `rotate-ca` start: this
// server's certificates, locked against a running kone's renewer, and the directory beside
// them that the files they replace are copied into. Two rotations within a second each keep
// their own copies.
func openServerCertificates(cfg *config.Config, now time.Time) (certs serverCertificates, aside string, unlock func(), err error) {
	ca := pki.Layout(cfg.TLSDir())
	if _, err := os.Stat(ca.ServerCA); err != nil {
		return certs, "", nil, fmt.Errorf("%s holds no server's certificates (%w); run this on a server, with its --data-dir", cfg.DataDir, err)
	}
	self, err := serverIdentity(cfg)
	if err != nil {
		return certs, "", nil, err
	}
	certs = serverCertificates{cfg: cfg, ca: ca, self: self}
	if unlock, err = certs.lock(true); err != nil {
		return certs, "", nil, err
	}
	return certs, filepath.Join(cfg.ServerDir(), "tls-rotated-"+now.UTC().Format("20060102T150405.000000000Z")), unlock, nil
}
