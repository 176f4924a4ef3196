// Package server assembles a kone server from its components: it prepares the data dir (lock,
// free ports, PKI, join token, encryption keys, kubeconfigs; for a server that joins another
// with --server, the cluster's CAs and keys and its etcd membership, first) and then hands
// etcd, kube-apiserver, the certificate renewer, the cluster bootstrap, the server data
// follower, etcd membership, kube-controller-manager,
// kube-scheduler, the secrets rewrite, the join approver, the cloud node controller and
// (unless --disable-agent) its own node side to the supervisor, in that order. The controllers
// run under leader election (pkg/leader): one of each is active among the servers. It also
// serves `kone secrets-encrypt`.
package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset/typed/apiregistration/v1"

	"github.com/kone-dev/kone/pkg/args"
	"github.com/kone-dev/kone/pkg/cloud"
	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/control"
	"github.com/kone-dev/kone/pkg/datadir"
	"github.com/kone-dev/kone/pkg/deploy"
	"github.com/kone-dev/kone/pkg/encryption"
	"github.com/kone-dev/kone/pkg/etcd"
	"github.com/kone-dev/kone/pkg/host"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/leader"
	"github.com/kone-dev/kone/pkg/logging"
	"github.com/kone-dev/kone/pkg/memory"
	"github.com/kone-dev/kone/pkg/metrics"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/renew"
	"github.com/kone-dev/kone/pkg/sdnotify"
	"github.com/kone-dev/kone/pkg/snapshot"
	"github.com/kone-dev/kone/pkg/storage"
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

	self, err := serverIdentity(cfg)
	if err != nil {
		return err
	}
	advertise := cfg.AdvertiseAddress
	if advertise == nil {
		advertise = self.IP
	}
	files := control.Files{
		Advertise:                   advertise,
		EtcdURL:                     cfg.EtcdURL(),
		AuthenticationConfig:        filepath.Join(dir, "cred", "authentication-config.yaml"),
		EncryptionConfig:            cfg.EncryptionConfig(),
		AdmissionConfig:             filepath.Join(dir, "cred", "admission-config.yaml"),
		AuditPolicy:                 filepath.Join(dir, "cred", "audit-policy.yaml"),
		AuditLog:                    filepath.Join(dir, "logs", "audit.log"),
		ControllerManagerKubeconfig: filepath.Join(dir, "cred", "controller-manager.kubeconfig"),
		SchedulerKubeconfig:         filepath.Join(dir, "cred", "scheduler.kubeconfig"),
		MetricsKubeconfig:           filepath.Join(dir, "cred", "metrics-server.kubeconfig"),
		CertDir:                     filepath.Join(dir, "tls", "temporary-certs"),
	}
	ca := pki.Layout(cfg.TLSDir())
	apiArgs := control.APIServerArgs(cfg, ca, files)
	cmArgs := control.ControllerManagerArgs(cfg, ca, files)
	schedArgs := control.SchedulerArgs(cfg, files)
	if err := checkPorts(cfg, self, cmArgs, schedArgs); err != nil {
		return err
	}
	if err := prepareReset(cfg, ca, log.Logger); err != nil {
		return err
	}
	if cfg.Server != "" {
		if err := fetchServerData(ctx, cfg, ca, log.Logger); err != nil {
			return fmt.Errorf("join %s as a server: %w", cfg.Server, err)
		}
	}

	t0 := time.Now()
	servers := apiserverNames(cfg)
	if err := ca.EnsureAuthorities(t0); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	certs := serverCertificates{cfg: cfg, ca: ca, self: self}
	issued, err := certs.issue(t0)
	if err != nil {
		return err
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
	if err := writeKubeconfigs(ca, files, local); err != nil {
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

	member := etcd.Config{
		Name:       self.Name,
		DataDir:    filepath.Join(dir, "db", "etcd"),
		Address:    self.IP,
		ClientPort: cfg.EtcdClientPort,
		PeerPort:   cfg.EtcdPeerPort,
		ServerCA:   ca.EtcdServerCA,
		PeerCA:     ca.EtcdPeerCA,
		Serving:    ca.EtcdServing,
		Peer:       ca.EtcdPeer,
		Args:       cfg.EtcdArgs,
	}
	etcdPrefix := args.Value(apiArgs, "etcd-prefix")
	if etcdPrefix == "" {
		etcdPrefix = "/registry"
	}
	if err := resetEtcd(ctx, cfg, member, ca.ServerCA, etcdPrefix, log.Logger, log.Zap("etcd")); err != nil {
		return err
	}
	if member.Join, err = etcdJoin(ctx, cfg, ca, self.Name, member.PeerURL()); err != nil {
		return err
	}
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
	store, err := etcd.New(member, log.Zap("etcd"), log.Logger)
	if err != nil {
		return err
	}

	settings := clusterSettings(cfg)
	if settings.ClientCA, err = readFile(ca.ClientCA); err != nil {
		return fmt.Errorf("client CA: %w", err)
	}
	if settings.ServerCA, err = readFile(ca.ServerCA); err != nil {
		return fmt.Errorf("server CA: %w", err)
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
	// A controller that starts here long after the server did (its lease taken over from a lost
	// server), a member added to etcd and a node that joins leave memory and code behind that
	// the server does not need afterwards: kone settles after each.
	settler := &memory.Settler{}
	// One of each controller runs in the cluster, on the server that holds its lease.
	elect := func(c supervisor.Component, lease string) supervisor.Component {
		return leader.Elect(settleWhenReady{c, settler.Soon}, adminClient, lease, self.Name, log.Logger)
	}
	sealer := newSealer(adminClient, store, log.Logger)
	chain := []supervisor.Component{
		store, apiserver,
		renew.New(func(_ context.Context, now time.Time) ([]string, error) { return certs.issue(now) },
			[]string{ca.Dir, filepath.Dir(ca.EtcdServerCA), node.Paths{Agent: cfg.AgentDir()}.TLSDir()}, log.Logger),
		newBootstrap(admin, log.Logger, tok, tokenFiles, ca.ServerCA, clusterInfoServer(cfg), settings,
			map[string]string{"CLUSTER_DNS": cfg.ClusterDNS.String(), "SERVER_CA_BUNDLE": base64.StdEncoding.EncodeToString([]byte(settings.ServerCA))}, cfg.Node.Disable, sharedFiles(cfg, ca), store.Alone, own, sealer),
		newFollower(adminClient, cfg.EncryptionConfig(), tokenFiles, certs, sealer, log.Logger),
		etcd.NewMembers(store, adminClient, log.Logger, settler.Soon),
		elect(cm, "kube-controller-manager"), elect(sched, "kube-scheduler"),
		encryption.NewRewriter(admin, secrets.Writer(), cfg.EncryptionDone(), log.Logger),
		elect(join.NewApprover(adminClient, log.Logger, servers, settler.Soon), "kone-join-approver"),
		elect(cloud.NewController(adminClient), "kone-cloud-node-controller"),
		elect(cloud.NewServiceController(adminClient, loadBalancerReserved(cfg), cfg.Node.Disabled(config.DisableServiceLB), log.Logger),
			"kone-service-lb-controller"),
	}
	if !cfg.Node.Disabled(config.DisableLocalStorage) {
		chain = append(chain, elect(storage.NewProvisioner(adminClient, log.Logger), "kone-local-path-provisioner"))
	}
	var late []supervisor.Component
	if !cfg.Node.Disabled(config.DisableMetrics) {
		aggregator, err := apiregistrationv1.NewForConfig(admin)
		if err != nil {
			return err
		}
		ms, err := metrics.New(metrics.Config{
			Kubeconfig: files.MetricsKubeconfig, Address: metricsAddress(cfg, self), Port: metrics.Port,
			Serving: ca.MetricsServing, ServingCA: ca.ServerCA, KubeletCA: ca.KubeletServingCA, AuthProxy: ca.AuthProxy,
		}, adminClient, aggregator.APIServices(), log.Logger)
		if err != nil {
			return err
		}
		// After the node side, which need not wait for it.
		late = append(late, elect(ms, "kone-metrics-server"))
	}
	manifestsDir, err := deploy.NewDir(cfg.ManifestsDir(), filepath.Join(cfg.ServerDir(), "manifests.owner"), self.Name, admin, log.Logger)
	if err != nil {
		return err
	}
	chain = append(chain, manifestsDir)
	if !cfg.EtcdDisableSnapshots {
		saver, err := snapshotSaver(cfg, ca, self.Name, adminClient, log.Logger)
		if err != nil {
			return err
		}
		snapshots, err := snapshot.NewScheduler(saver, cfg.EtcdSnapshotCron, cfg.EtcdSnapshotRetention)
		if err != nil {
			return err
		}
		chain = append(chain, snapshots)
	}
	return node.Supervisor(log, notify).Run(ctx, slices.Concat(chain, nodeSide, late)...)
}

// settleWhenReady settles kone's memory each time its component is ready.
type settleWhenReady struct {
	supervisor.Component
	settle func()
}

func (s settleWhenReady) Ready(ctx context.Context) error {
	err := s.Component.Ready(ctx)
	if err == nil {
		s.settle()
	}
	return err
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
	// The node side reaches this server's apiserver, and the others once it knows them,
	// through its load balancer.
	// Issued with the server's own (serverCertificates).
	creds := nodeCredentials(ca, paths)
	// kubelet on a server's node no longer renews its client certificate itself (the renewer
	// does): what it kept from then would only expire, unused, in `kone certificate check`.
	stale, _ := filepath.Glob(filepath.Join(paths.KubeletCertDir(), "kubelet-client-*.pem"))
	for _, f := range stale {
		if err := os.Remove(f); err != nil {
			return nil, join.Held{}, err
		}
	}
	secret, err := join.LoadOrCreateSecret(paths.NodeSecret())
	if err != nil {
		return nil, join.Held{}, err
	}
	cluster := node.Cluster{
		ClusterCIDR: cfg.ClusterCIDR, ClusterDNS: cfg.ClusterDNS, ClusterDomain: cfg.ClusterDomain,
		Overlay: cfg.FlannelBackend, CoreDNS: !cfg.Node.Disabled(config.DisableCoreDNS),
		LocalStorage: !cfg.Node.Disabled(config.DisableLocalStorage), NetworkPolicy: !cfg.Node.Disabled(config.DisableNetworkPolicy),
	}
	upstream := node.Upstream{Default: strings.TrimPrefix(local, "https://"), CAFile: ca.ServerCA}
	chain, err := node.Components(cfg, cluster, id, creds, upstream, log)
	return chain, join.Held{Name: id.Name, SecretHash: secret.Hash()}, err
}

// clusterSettings are what this server tells joining agents, but for the CAs.
func clusterSettings(cfg *config.Config) join.Settings {
	return join.Settings{
		ClusterCIDR: cfg.ClusterCIDR.String(), ServiceCIDR: cfg.ServiceCIDR.String(), ClusterDNS: cfg.ClusterDNS.String(),
		ClusterDomain: cfg.ClusterDomain, FlannelBackend: cfg.FlannelBackend, CoreDNS: !cfg.Node.Disabled(config.DisableCoreDNS),
		LocalStorage: !cfg.Node.Disabled(config.DisableLocalStorage), NetworkPolicy: !cfg.Node.Disabled(config.DisableNetworkPolicy),
		APIServerPort: cfg.HTTPSPort,
	}
}

func readFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	return string(data), err
}

// serverIdentity is this server's name, as etcd member, lease holder and node, and the address
// its etcd member serves the others on: the node's name and address. A server without a node
// side that finds no address (no default route) serves its etcd peers on loopback, alone; one
// that joins another must have an address (etcdJoin says so).
func serverIdentity(cfg *config.Config) (node.Identity, error) {
	id, err := node.ResolveIdentity(&cfg.Node)
	if err != nil && (!cfg.DisableAgent || id.Name == "") {
		return id, err
	}
	return id, nil
}

func writeKubeconfigs(ca *pki.Cluster, files control.Files, local string) error {
	for path, client := range map[string]pki.File{
		files.ControllerManagerKubeconfig: ca.ControllerManager,
		files.SchedulerKubeconfig:         ca.Scheduler,
		files.MetricsKubeconfig:           ca.MetricsClient,
	} {
		if err := (pki.Kubeconfig{Server: local, CAFile: ca.ServerCA, Client: client}).Write(path, 0o600); err != nil {
			return err
		}
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

// peerNames are the names on the etcd peer certificate: the server's name and the address
// other members reach it at.
func peerNames(self node.Identity) pki.Names {
	n := etcdNames()
	n.DNSNames = append(n.DNSNames, self.Name)
	if self.IP != nil {
		n.IPs = append(n.IPs, self.IP)
	}
	return n
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

// metricsAddress is where the metrics-server listens for the apiservers of all servers: the
// server's node address, on which its etcd peers listen too; --advertise-address may be one
// that only reaches this machine through NAT.
func metricsAddress(cfg *config.Config, self node.Identity) net.IP {
	if self.IP != nil {
		return self.IP
	}
	return cfg.AdvertiseAddress
}

// checkPorts fails early, naming the flag to change, when a port kone needs is taken.
func checkPorts(cfg *config.Config, self node.Identity, cmArgs, schedArgs []string) error {
	peer := "127.0.0.1"
	if self.IP != nil {
		peer = self.IP.String()
	}
	type port struct{ host, port, instead string }
	ports := []port{
		{cfg.BindAddress.String(), fmt.Sprint(cfg.HTTPSPort), "pick another port with --https-listen-port"},
		{"127.0.0.1", fmt.Sprint(cfg.EtcdClientPort), "pick another port with --etcd-client-port"},
		{peer, fmt.Sprint(cfg.EtcdPeerPort), "pick another port with --etcd-peer-port"},
		{"127.0.0.1", args.Value(cmArgs, "secure-port"), "pick another port with --kube-controller-manager-arg=secure-port=PORT"},
		{"127.0.0.1", args.Value(schedArgs, "secure-port"), "pick another port with --kube-scheduler-arg=secure-port=PORT"},
	}
	if !cfg.DisableAgent {
		ports = append(ports, port{"127.0.0.1", fmt.Sprint(cfg.Node.LBServerPort), "pick another port with --lb-server-port"})
	}
	if ip := metricsAddress(cfg, self); ip != nil && !cfg.Node.Disabled(config.DisableMetrics) {
		ports = append(ports, port{ip.String(), fmt.Sprint(metrics.Port), "run without kone's metrics API (--disable metrics-server)"})
	}
	for _, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(p.host, p.port))
		if err != nil {
			if errors.Is(err, os.ErrPermission) {
				return fmt.Errorf("cannot listen on port %s: %w; run kone as root", p.port, err)
			}
			if errors.Is(err, syscall.EADDRNOTAVAIL) {
				return fmt.Errorf("cannot listen on %s: it is not an address of this machine; check --bind-address and --node-ip", p.host)
			}
			return fmt.Errorf("port %s on %s is already in use: stop whatever holds it (is another kone or Kubernetes running?) or %s", p.port, p.host, p.instead)
		}
		l.Close()
	}
	return nil
}
