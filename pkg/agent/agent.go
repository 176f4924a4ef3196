// Package agent assembles a kone agent: a worker that joins a server with a token and runs the
// node side (pkg/node) and nothing of the control plane. Joining happens before any component
// starts; a restart reuses what the first join obtained, so the token and even the server may be
// gone by then.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/datadir"
	"github.com/kone-dev/kone/pkg/host"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/loadbalancer"
	"github.com/kone-dev/kone/pkg/logging"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/renew"
	"github.com/kone-dev/kone/pkg/sdnotify"
	"github.com/kone-dev/kone/pkg/token"
)

// Run joins the cluster (or reuses an earlier join) and runs the node side until ctx is done or
// a component fails.
// notify learns when the node is ready and when it stops.
func Run(ctx context.Context, cfg *config.Config, logs *logging.Logging, notify *sdnotify.Notifier) error {
	lock, err := datadir.Acquire(cfg.DataDir)
	if err != nil {
		return err
	}
	defer lock.Release()
	if err := host.Missing(host.Check(cfg.Node.Profile == config.ProfileCIS)); err != nil {
		return err
	}
	id, err := node.ResolveIdentity(&cfg.Node)
	if err != nil {
		return err
	}
	tok, err := token.Parse(cfg.Token)
	if err != nil {
		return fmt.Errorf("--token: %w", err)
	}
	t0 := time.Now()
	j := joiner{server: cfg.Server, local: loadbalancer.URL(cfg.Node.LoadBalancer()), tok: tok, id: id, paths: node.Paths{Agent: cfg.AgentDir()}, log: logs.Logger}
	creds, settings, err := j.join(ctx, t0)
	if err != nil {
		return fmt.Errorf("join %s as node %s: %w", cfg.Server, id.Name, err)
	}
	j.localStorage = settings.LocalStorage
	storageIdentity := j.tls("client-local-path")
	if j.localStorage && !join.Valid(storageIdentity, join.Subject(join.StorageGroup, id.Name), time.Now(), 0) {
		settings.LocalStorage = false
	}
	parsed, err := settings.Parse()
	if err != nil {
		return err
	}
	logs.Infof("joined in %s", time.Since(t0).Round(10*time.Millisecond))
	cluster := node.Cluster{
		ClusterCIDR: parsed.ClusterCIDR, ClusterDNS: parsed.ClusterDNS, ClusterDomain: settings.ClusterDomain,
		Overlay: settings.FlannelBackend, CoreDNS: settings.CoreDNS, LocalStorage: settings.LocalStorage,
		NetworkPolicy: settings.NetworkPolicy,
	}
	server, err := url.Parse(cfg.Server)
	if err != nil {
		return err
	}
	upstream := node.Upstream{Default: hostPort(server), CAFile: j.serverCA()}
	chain, err := node.Components(cfg, cluster, id, creds, upstream, logs)
	if err != nil {
		return err
	}
	renewer := renew.New(func(ctx context.Context, now time.Time) ([]string, error) {
		// Not beside a `kone certificate rotate` of this node.
		unlock, err := j.lock()
		if err != nil {
			return nil, err
		}
		defer unlock()
		// As the node: kubelet's identity, through the load balancer its kubeconfig names.
		cs, err := client(creds.Kubelet, "")
		if err != nil {
			return nil, err
		}
		secret, err := join.LoadOrCreateSecret(j.paths.NodeSecret())
		if err != nil {
			return nil, err
		}
		issued, err := j.renew(ctx, cs, secret, now)
		if err != nil {
			return issued, err
		}
		// After a rotate-ca the new CAs reach the node this way too, not only as it restarts.
		if settings, err := join.ReadSettings(ctx, cs); err != nil {
			logs.WithError(err).Warn("cannot read the cluster's CAs; trying again within the hour")
		} else if err := j.trust(settings); err != nil {
			return issued, err
		}
		return issued, nil
	}, []string{j.paths.TLSDir()}, logs.Logger)
	return node.Supervisor(logs, notify).Run(ctx, append(chain, renewer)...)
}

// joiner obtains the node's credentials and the cluster's settings. It talks to server; the
// kubeconfigs it writes name local, the node side's load balancer, which runs only once it
// has joined.
type joiner struct {
	server string
	local  string
	tok    token.Token
	id     node.Identity
	paths  node.Paths
	log    *logrus.Logger
	// localStorage: the cluster has the node serve local-path volumes, for which it needs an
	// identity of its own. A server that does not say so would refuse to sign one.
	localStorage bool
}

func (j joiner) file(name string) string { return filepath.Join(j.paths.Agent, name) }

// settingsFile keeps the cluster's settings from the last start, for a start while the
// servers are away.
func (j joiner) settingsFile() string { return filepath.Join(j.paths.Agent, "etc", "cluster.json") }
func (j joiner) serverCA() string     { return filepath.Join(j.paths.TLSDir(), "server-ca.crt") }
func (j joiner) clientCA() string     { return filepath.Join(j.paths.TLSDir(), "client-ca.crt") }

// lock keeps the running agent's renewer and `kone certificate rotate` from writing the node's
// certificates at once.
func (j joiner) lock() (unlock func(), err error) {
	if err := os.MkdirAll(j.paths.Agent, 0o700); err != nil {
		return nil, err
	}
	// Beside the certificate directory, which the renewer watches, not in it.
	return datadir.LockFile(j.file(".tls.lock"), true)
}

func (j joiner) tls(name string) pki.File {
	dir := j.paths.TLSDir()
	return pki.File{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
}

func (j joiner) join(ctx context.Context, now time.Time) (creds node.Credentials, settings join.Settings, err error) {
	creds = node.Credentials{
		Kubelet:  j.file("kubelet.kubeconfig"),
		Proxy:    j.file("kube-proxy.kubeconfig"),
		DNS:      j.file("coredns.kubeconfig"),
		Flannel:  j.file("flannel.kubeconfig"),
		Storage:  j.file("local-path.kubeconfig"),
		ClientCA: j.clientCA(),
	}
	serverCA := j.serverCA()
	settingsFile := j.settingsFile()
	joined := exists(serverCA) && exists(creds.Kubelet) && exists(settingsFile)

	if !joined {
		// A first join that fails leaves nothing behind, so that the next try starts afresh.
		// The node secret stays: a claim it may already have made on the name is still its own.
		defer func() {
			if err != nil {
				for _, f := range []string{creds.Kubelet, creds.Proxy, creds.DNS, creds.Flannel, creds.Storage, settingsFile} {
					_ = os.Remove(f)
				}
				_ = os.RemoveAll(j.paths.TLSDir())
				_ = os.RemoveAll(j.paths.KubeletCertDir())
			}
		}()
		ca, err := join.Discover(ctx, j.server, j.tok, func(w error) { j.log.Warn(w.Error()) })
		if err != nil {
			return creds, settings, err
		}
		if err := pki.WriteFile(serverCA, ca, 0o644); err != nil {
			return creds, settings, err
		}
	}
	if err := dropServingFromServerCA(j.paths.KubeletCertDir(), serverCA); err != nil {
		return creds, settings, err
	}
	secret, err := join.LoadOrCreateSecret(j.paths.NodeSecret())
	if err != nil {
		return creds, settings, err
	}
	// A joined node asks with its own identity, which outlives the token it joined with. kubelet
	// renews that identity itself; a node that was away past its end needs the token again.
	kubeletCert := filepath.Join(j.paths.KubeletCertDir(), "kubelet-client-current.pem")
	identified := joined && join.Valid(pki.File{Cert: kubeletCert, Key: kubeletCert}, join.KubeletSubject(j.id.Name), now, 0)
	var cs kubernetes.Interface
	if identified {
		cs, err = client(creds.Kubelet, j.server)
	} else {
		cs, err = kubernetes.NewForConfig(&rest.Config{Host: j.server, BearerToken: j.tok.Bootstrap(),
			TLSClientConfig: rest.TLSClientConfig{CAFile: serverCA}, Timeout: 15 * time.Second})
	}
	if err != nil {
		return creds, settings, err
	}

	settings, err = join.ReadSettings(ctx, cs)
	switch {
	case err == nil:
		data, _ := json.Marshal(settings)
		if err := pki.WriteFile(settingsFile, data, 0o644); err != nil {
			return creds, settings, err
		}
	case joined:
		// The server may be away; the node keeps running its pods with what it knew.
		j.log.WithError(err).Warn("cannot read the cluster settings from the server; using the ones from the last start")
		data, rerr := os.ReadFile(settingsFile)
		if rerr != nil {
			return creds, settings, errors.Join(err, rerr)
		}
		if err := json.Unmarshal(data, &settings); err != nil {
			return creds, settings, fmt.Errorf("%s: %w", settingsFile, err)
		}
	default:
		return creds, settings, err
	}
	if err := j.trust(settings); err != nil {
		return creds, settings, err
	}
	j.localStorage = settings.LocalStorage

	if !identified {
		if _, err := join.KubeletCertificate(ctx, cs, j.paths.KubeletCertDir(), j.id.Name, secret); err != nil {
			return creds, settings, err
		}
	}
	// Rewritten at every start: an earlier kone named the server itself.
	kubeconfig := pki.Kubeconfig{Server: j.local, CAFile: serverCA, Client: pki.File{Cert: kubeletCert, Key: kubeletCert}}
	if err := kubeconfig.Write(creds.Kubelet, 0o600); err != nil {
		return creds, settings, err
	}
	if _, err := j.renew(ctx, cs, secret, now); err != nil {
		return creds, settings, err
	}
	for _, c := range j.components() {
		if err := (pki.Kubeconfig{Server: j.local, CAFile: serverCA, Client: j.tls(c.name)}).Write(c.kubeconfig, 0o600); err != nil {
			return creds, settings, err
		}
	}
	return creds, settings, nil
}

// trust takes the cluster's CAs from its settings: the client CA, which kubelet checks the
// apiserver's client certificate with, and the server CA, which the node's clients check the
// apiserver with (after a rotate-ca the new one with the old). The settings came over a
// connection that the CA the node had checked, so what they name is the cluster's.
func (j joiner) trust(s join.Settings) error {
	files := map[string]string{j.clientCA(): s.ClientCA, j.serverCA(): s.ServerCA}
	for path, pem := range files {
		if pem == "" {
			delete(files, path) // a server from before kone published its server CA
			continue
		}
		if _, err := pki.ParseCerts([]byte(pem)); err != nil {
			return fmt.Errorf("the cluster's settings: a CA %w", err)
		}
	}
	for path, pem := range files {
		if err := pki.WriteIfChanged(path, []byte(pem), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// component is a part of the node side with a client certificate that kone obtains for it;
// service is its name for `kone certificate rotate --service`.
type component struct{ component, name, kubeconfig, service string }

func (j joiner) components() []component {
	all := []component{
		{join.ProxyUser, "client-kube-proxy", j.file("kube-proxy.kubeconfig"), "kube-proxy"},
		{join.DNSGroup, "client-coredns", j.file("coredns.kubeconfig"), "coredns"},
		{join.FlannelGroup, "client-flannel", j.file("flannel.kubeconfig"), "flannel"},
	}
	if j.localStorage {
		all = append(all, component{join.StorageGroup, "client-local-path", j.file("local-path.kubeconfig"), "local-path"})
	}
	return all
}

// renew requests a client certificate for each component whose certificate is missing or ends
// within pki.RenewBefore, as the agent starts and while it runs (renew.Renewer), and returns
// those it obtained. A request that fails while the current certificate is still valid only
// warns: the server may be away for now. kubelet renews its own certificates.
func (j joiner) renew(ctx context.Context, cs kubernetes.Interface, secret join.NodeSecret, now time.Time) ([]string, error) {
	var issued []string
	for _, c := range j.components() {
		f, subject := j.tls(c.name), join.Subject(c.component, j.id.Name)
		if join.Valid(f, subject, now, pki.RenewBefore) {
			continue
		}
		err := join.ClientCertificate(ctx, cs, f, c.component, j.id.Name, secret)
		if err != nil && !join.Valid(f, subject, now, 0) && c.component == join.StorageGroup {
			// Not worth stopping the node for: a server of an older kone still approves
			// requests during an upgrade. The node runs without local storage meanwhile.
			j.log.WithError(err).Warn("cannot obtain the local-path identity yet; the node serves no local-path volumes until it has one")
			continue
		}
		if err != nil && !join.Valid(f, subject, now, 0) {
			return issued, err
		}
		if err != nil {
			j.log.WithError(err).Warn("cannot renew a certificate yet; the current one stays in use")
			continue
		}
		issued = append(issued, f.Cert)
		if !join.Valid(f, subject, now, pki.RenewBefore) {
			// Asked again at the next hourly check, not at once: a loop would flood the cluster
			// with requests.
			j.log.WithField("certificate", f.Cert).Warn("the certificate the cluster signed ends within 90 days, or starts after this machine's clock: " +
				"check the clock, and the cluster's signing duration (--kube-controller-manager-arg cluster-signing-duration) or its client CA's expiry")
		}
	}
	return issued, nil
}

// dropServingFromServerCA removes a kubelet serving certificate that an earlier kone had signed
// by the CA that clients trust for the apiserver. The apiserver now checks kubelets against a
// CA of their own, and would refuse that certificate until kubelet renewed it, months later;
// without it, kubelet asks for a new one at once.
func dropServingFromServerCA(certDir, serverCAFile string) error {
	current := filepath.Join(certDir, "kubelet-server-current.pem")
	data, err := os.ReadFile(current)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kubelet's serving certificate: %w", err)
	}
	caPEM, err := os.ReadFile(serverCAFile)
	if err != nil {
		return err
	}
	cas, err := certutil.ParseCertsPEM(caPEM)
	if err != nil {
		return fmt.Errorf("%s: %w", serverCAFile, err)
	}
	certs, err := certutil.ParseCertsPEM(data)
	if err != nil || len(certs) == 0 || certs[0].CheckSignatureFrom(cas[0]) != nil {
		return nil
	}
	target, err := filepath.EvalSymlinks(current)
	if err != nil {
		return fmt.Errorf("kubelet's serving certificate: %w", err)
	}
	for _, f := range []string{current, target} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("kubelet's serving certificate from an earlier kone: %w", err)
		}
	}
	return nil
}

// client uses the credentials of kubeconfig with server, before the load balancer runs.
func client(kubeconfig, server string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags(server, kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.Timeout = 15 * time.Second
	return kubernetes.NewForConfig(rc)
}

// hostPort is u's host and port, the port 443 when u has none.
func hostPort(u *url.URL) string {
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return u.Host
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
