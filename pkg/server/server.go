// Package server assembles a kone server from its components: it prepares the data dir (lock,
// free ports, PKI, join token, encryption keys, kubeconfigs) and then hands etcd,
// kube-apiserver, the cluster bootstrap, kube-controller-manager, kube-scheduler, the secrets
// rewrite, the join approver, the cloud node controller and (unless --disable-agent) its own
// node side to the supervisor, in that order. It also serves `kone secrets-encrypt`.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/kone-dev/kone/pkg/args"
	"github.com/kone-dev/kone/pkg/cloud"
	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/control"
	"github.com/kone-dev/kone/pkg/datadir"
	"github.com/kone-dev/kone/pkg/encryption"
	"github.com/kone-dev/kone/pkg/etcd"
	"github.com/kone-dev/kone/pkg/host"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/logging"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/sdnotify"
	"github.com/kone-dev/kone/pkg/supervisor"
)

// Run runs a server until ctx is done or a component fails.
// notify learns when kone is ready and when it stops.
func Run(ctx context.Context, cfg *config.Config, log *logging.Logging, notify *sdnotify.Notifier) error {
	lock, err := datadir.Acquire(cfg.DataDir)
	if err != nil {
		return err
	}
	defer lock.Release()
	dir := cfg.ServerDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w; check --data-dir and that it is writable by this user", err)
	}

	files := control.Files{
		EtcdURL:                     cfg.EtcdURL(),
		AuthenticationConfig:        filepath.Join(dir, "cred", "authentication-config.yaml"),
		EncryptionConfig:            cfg.EncryptionConfig(),
		AdmissionConfig:             filepath.Join(dir, "cred", "admission-config.yaml"),
		AuditPolicy:                 filepath.Join(dir, "cred", "audit-policy.yaml"),
		AuditLog:                    filepath.Join(dir, "logs", "audit.log"),
		ControllerManagerKubeconfig: filepath.Join(dir, "cred", "controller-manager.kubeconfig"),
		SchedulerKubeconfig:         filepath.Join(dir, "cred", "scheduler.kubeconfig"),
		CertDir:                     filepath.Join(dir, "tls", "temporary-certs"),
	}
	ca := pki.Layout(cfg.TLSDir())
	apiArgs := control.APIServerArgs(cfg, ca, files)
	cmArgs := control.ControllerManagerArgs(cfg, ca, files)
	schedArgs := control.SchedulerArgs(cfg, files)
	if err := checkPorts(cfg, cmArgs, schedArgs); err != nil {
		return err
	}

	t0 := time.Now()
	servers := apiserverNames(cfg)
	issued, err := ca.Ensure(servers, etcdNames(), t0)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	if len(issued) > 0 {
		log.WithField("certificates", len(issued)).Debugf("issued certificates: %v", issued)
	}
	tokenFiles := cfg.ServerToken()
	tok, err := loadToken(tokenFiles, cfg.Token, ca.ServerCA, log.Logger)
	if err != nil {
		return err
	}
	secrets, err := encryption.Ensure(files.EncryptionConfig, cfg.SecretsEncryption)
	if err != nil {
		return err
	}
	admin := adminConfig(cfg, ca)
	local := admin.Host
	if err := writeKubeconfigs(cfg, ca, files, local); err != nil {
		return err
	}
	profileFiles, err := control.ProfileFiles(cfg, files)
	if err != nil {
		return err
	}
	for path, data := range profileFiles {
		if err := pki.WriteFile(path, data, 0o600); err != nil {
			return err
		}
	}
	log.Infof("certificates and kubeconfigs ready in %s", time.Since(t0).Round(10*time.Millisecond))

	apiserver, err := control.NewAPIServer(apiArgs, control.UserAuthenticationConfig(cfg), admin)
	if err != nil {
		return err
	}
	cm, err := control.NewControllerManager(cmArgs)
	if err != nil {
		return err
	}
	sched, err := control.NewScheduler(schedArgs)
	if err != nil {
		return err
	}
	store, err := etcd.New(etcd.Config{
		Name:       "kone",
		DataDir:    filepath.Join(dir, "db", "etcd"),
		ClientPort: cfg.EtcdClientPort,
		PeerPort:   cfg.EtcdPeerPort,
		ServerCA:   ca.EtcdServerCA,
		PeerCA:     ca.EtcdPeerCA,
		Serving:    ca.EtcdServing,
		Peer:       ca.EtcdPeer,
		Args:       cfg.EtcdArgs,
	}, log.Zap("etcd"))
	if err != nil {
		return err
	}

	settings, err := clusterSettings(cfg, ca.ClientCA)
	if err != nil {
		return err
	}
	var dnsIP net.IP
	if settings.CoreDNS {
		dnsIP = cfg.ClusterDNS
	}
	adminClient, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return err
	}
	var nodeSide []supervisor.Component
	var own []join.Held
	if !cfg.DisableAgent {
		var held join.Held
		if nodeSide, held, err = nodeComponents(cfg, ca, local, log); err != nil {
			return err
		}
		own = append(own, held)
		nodeSide = append(nodeSide, newRoles(adminClient, held.Name))
	}
	chain := []supervisor.Component{
		store, apiserver, newBootstrap(admin, log.Logger, tok, tokenFiles, ca.ServerCA, clusterInfoServer(cfg), settings, dnsIP), cm, sched,
		encryption.NewRewriter(admin, secrets.Writer(), cfg.EncryptionDone(), log.Logger),
		join.NewApprover(adminClient, log.Logger, servers, own...), cloud.NewController(adminClient),
	}
	return node.Supervisor(log, notify).Run(ctx, append(chain, nodeSide...)...)
}

// nodeComponents are the server's own node side, with credentials from the cluster's CAs, and
// the node name it holds: no joining machine may take it, even while the node is deleted.
func nodeComponents(cfg *config.Config, ca *pki.Cluster, local string, log *logging.Logging) ([]supervisor.Component, join.Held, error) {
	if err := host.Missing(host.Check(cfg.Node.Profile == config.ProfileCIS)); err != nil {
		return nil, join.Held{}, err
	}
	id, err := node.ResolveIdentity(&cfg.Node)
	if err != nil {
		return nil, join.Held{}, err
	}
	paths := node.Paths{Agent: cfg.AgentDir()}
	creds, err := nodeCredentials(ca, paths, id, local, time.Now())
	if err != nil {
		return nil, join.Held{}, fmt.Errorf("node certificates: %w", err)
	}
	secret, err := join.LoadOrCreateSecret(paths.NodeSecret())
	if err != nil {
		return nil, join.Held{}, err
	}
	cluster := node.Cluster{
		ClusterCIDR: cfg.ClusterCIDR, ClusterDNS: cfg.ClusterDNS, ClusterDomain: cfg.ClusterDomain,
		Overlay: cfg.FlannelBackend, CoreDNS: !cfg.Node.Disabled(config.DisableCoreDNS),
	}
	chain, err := node.Components(cfg, cluster, id, creds, log)
	return chain, join.Held{Name: id.Name, SecretHash: secret.Hash()}, err
}

// clusterSettings are what this server tells joining agents.
func clusterSettings(cfg *config.Config, clientCAFile string) (join.Settings, error) {
	clientCA, err := os.ReadFile(clientCAFile)
	if err != nil {
		return join.Settings{}, fmt.Errorf("client CA: %w", err)
	}
	return join.Settings{
		ClusterCIDR: cfg.ClusterCIDR.String(), ServiceCIDR: cfg.ServiceCIDR.String(), ClusterDNS: cfg.ClusterDNS.String(),
		ClusterDomain: cfg.ClusterDomain, FlannelBackend: cfg.FlannelBackend, CoreDNS: !cfg.Node.Disabled(config.DisableCoreDNS),
		ClientCA: string(clientCA),
	}, nil
}

func writeKubeconfigs(cfg *config.Config, ca *pki.Cluster, files control.Files, local string) error {
	for path, client := range map[string]pki.File{
		files.ControllerManagerKubeconfig: ca.ControllerManager,
		files.SchedulerKubeconfig:         ca.Scheduler,
	} {
		if err := (pki.Kubeconfig{Server: local, CAFile: ca.ServerCA, Client: client}).Write(path, 0o600); err != nil {
			return err
		}
	}
	if cfg.WriteKubeconfig == "" {
		return nil
	}
	admin := pki.Kubeconfig{Server: local, CAFile: ca.ServerCA, Client: ca.Admin, Embed: true}
	if err := admin.Write(cfg.WriteKubeconfig, os.FileMode(cfg.WriteKubeconfigMode)); err != nil {
		return fmt.Errorf("%w; choose another path with --write-kubeconfig", err)
	}
	return nil
}

// apiserverNames are the names on the apiserver's serving certificate: the in-cluster names,
// this host's name and addresses, the first service IP, and every --tls-san.
func apiserverNames(cfg *config.Config) pki.Names {
	n := pki.Names{DNSNames: pki.InClusterNames(cfg.ClusterDomain)}
	if host, err := os.Hostname(); err == nil {
		n.DNSNames = append(n.DNSNames, host)
	}
	n.IPs = append(hostIPs(), firstServiceIP(cfg.ServiceCIDR))
	if cfg.AdvertiseAddress != nil {
		n.IPs = append(n.IPs, cfg.AdvertiseAddress)
	}
	for _, san := range cfg.TLSSANs {
		if ip := net.ParseIP(san); ip != nil {
			n.IPs = append(n.IPs, ip)
		} else {
			n.DNSNames = append(n.DNSNames, san)
		}
	}
	return n
}

func etcdNames() pki.Names {
	return pki.Names{DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}}
}

// hostIPs are loopback and interfaceIPs.
func hostIPs() []net.IP {
	return append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, interfaceIPs()...)
}

// interfaceIPs are the addresses of this host's interfaces but loopback and link-local ones.
func interfaceIPs() []net.IP {
	var ips []net.IP
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			ips = append(ips, n.IP)
		}
	}
	return ips
}

func firstServiceIP(n *net.IPNet) net.IP {
	ip := append(net.IP(nil), n.IP...)
	ip[len(ip)-1]++
	return ip
}

// checkPorts fails early, naming the flag to change, when a port kone needs is taken.
func checkPorts(cfg *config.Config, cmArgs, schedArgs []string) error {
	ports := []struct{ host, port, flag string }{
		{cfg.BindAddress.String(), fmt.Sprint(cfg.HTTPSPort), "--https-listen-port"},
		{"127.0.0.1", fmt.Sprint(cfg.EtcdClientPort), "--etcd-client-port"},
		{"127.0.0.1", fmt.Sprint(cfg.EtcdPeerPort), "--etcd-peer-port"},
		{"127.0.0.1", args.Value(cmArgs, "secure-port"), "--kube-controller-manager-arg=secure-port=PORT"},
		{"127.0.0.1", args.Value(schedArgs, "secure-port"), "--kube-scheduler-arg=secure-port=PORT"},
	}
	for _, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(p.host, p.port))
		if err != nil {
			if errors.Is(err, os.ErrPermission) {
				return fmt.Errorf("cannot listen on port %s: %w; run kone as root", p.port, err)
			}
			return fmt.Errorf("port %s on %s is already in use: stop whatever holds it (is another kone or Kubernetes running?) or pick another port with %s", p.port, p.host, p.flag)
		}
		l.Close()
	}
	return nil
}
