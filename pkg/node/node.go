// Package node assembles the node side of kone, the same for a server and an agent:
// containerd (a child process), the image importer, kubelet, the node's addresses, the pod
// network, kube-proxy, the node's CoreDNS, its local-path directories and its NetworkPolicy
// enforcement, in that order. It only wires components; each lives in its own package. The
// caller provides the node's credentials: a server issues them from its own CAs, an agent gets
// them by joining.
package node

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kone-dev/kone/pkg/cloud"
	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/containerd"
	"github.com/kone-dev/kone/pkg/containerized"
	"github.com/kone-dev/kone/pkg/data"
	"github.com/kone-dev/kone/pkg/dns"
	"github.com/kone-dev/kone/pkg/host"
	"github.com/kone-dev/kone/pkg/images"
	"github.com/kone-dev/kone/pkg/kubelet"
	"github.com/kone-dev/kone/pkg/loadbalancer"
	"github.com/kone-dev/kone/pkg/logging"
	"github.com/kone-dev/kone/pkg/memory"
	"github.com/kone-dev/kone/pkg/netpol"
	"github.com/kone-dev/kone/pkg/network"
	"github.com/kone-dev/kone/pkg/proxy"
	"github.com/kone-dev/kone/pkg/sdnotify"
	"github.com/kone-dev/kone/pkg/storage"
	"github.com/kone-dev/kone/pkg/supervisor"
	"github.com/kone-dev/kone/pkg/version"
)

// Runtime paths: every node has one containerd, whose socket `kone ctr` finds by default.
const (
	RunDir           = "/run/kone"
	ContainerdSocket = RunDir + "/containerd/containerd.sock"
)

// Identity is who this node is.
type Identity struct {
	Name string
	IP   net.IP
}

// ResolveIdentity applies the defaults for --node-name and --node-ip.
func ResolveIdentity(n *config.Node) (Identity, error) {
	id := Identity{Name: n.Name, IP: n.IP}
	var err error
	if id.Name == "" {
		if id.Name, err = host.NodeName(); err != nil {
			return id, err
		}
	}
	if id.IP == nil {
		if id.IP, err = host.DefaultIPv4(); err != nil {
			return id, err
		}
	}
	return id, nil
}

// Credentials are the node's identities with the apiserver, as kubeconfig files, and what
// kubelet serves and trusts.
type Credentials struct {
	Kubelet, Proxy, DNS, Flannel, Storage string // kubeconfigs
	ClientCA                              string // the CA of the apiserver's client certificate for kubelets
	// ServingCert and ServingKey are kubelet's serving certificate; empty, kubelet asks for one.
	ServingCert, ServingKey string
}

// Cluster are the settings every node of a cluster shares: a server's own, or what an agent
// learned from its server.
type Cluster struct {
	ClusterCIDR   *net.IPNet
	ClusterDNS    net.IP
	ClusterDomain string
	Overlay       string // flannel's backend, or none
	CoreDNS       bool   // false when the user runs their own cluster DNS
	LocalStorage  bool   // the node makes local-path volumes
	NetworkPolicy bool   // the node enforces NetworkPolicies
}

// Upstream is the apiserver the node side knows first (a server's own, an agent's --server),
// as host:port, and the CA of the apiservers. The node side reaches them all through its load
// balancer (pkg/loadbalancer), whose URL its kubeconfigs name.
type Upstream struct{ Default, CAFile string }

// Paths are where the node side keeps its files, all derived from the data dir.
type Paths struct{ Agent string }

func (p Paths) ContainerdRoot() string { return filepath.Join(p.Agent, "containerd") }
func (p Paths) ContainerdConfig() string {
	return filepath.Join(p.Agent, "etc", "containerd", "config.toml")
}
func (p Paths) CNIConfDir() string     { return filepath.Join(p.Agent, "etc", "cni", "net.d") }
func (p Paths) IPAMDir() string        { return filepath.Join(p.Agent, "cni", "networks") }
func (p Paths) KubeletConfig() string  { return filepath.Join(p.Agent, "etc", "kubelet.yaml") }
func (p Paths) KubeletCertDir() string { return filepath.Join(p.Agent, "kubelet", "pki") }
func (p Paths) TLSDir() string         { return filepath.Join(p.Agent, "tls") }
func (p Paths) FlannelDir() string     { return filepath.Join(p.Agent, "etc", "flannel") }

// LoadBalancerState keeps the apiservers the load balancer learned.
func (p Paths) LoadBalancerState() string { return filepath.Join(p.Agent, "etc", "loadbalancer.json") }

// NodeSecret is where the node keeps the secret that holds its name (join.NodeSecret).
func (p Paths) NodeSecret() string { return filepath.Join(p.Agent, "node-secret.key") }

// Components returns the node side's chain for the supervisor, in start order.
func Components(cfg *config.Config, cluster Cluster, id Identity, creds Credentials, upstream Upstream, logs *logging.Logging) ([]supervisor.Component, error) {
	log := logs.Logger
	paths := Paths{Agent: cfg.AgentDir()}
	moved, err := containerized.LeaveRootCgroup(host.CgroupMount)
	if err != nil {
		return nil, fmt.Errorf("leave the container's root cgroup, which pods need: %w", err)
	}
	if moved > 0 {
		log.WithField("processes", moved).Info("moved the container's processes into its init cgroup, so that pods can have cgroups")
	}
	helpers, err := data.Unpack(cfg.DataDir, version.Version)
	if err != nil {
		return nil, err
	}
	pause, err := os.ReadFile(helpers.Pause())
	if err != nil {
		return nil, fmt.Errorf("pause program: %w", err)
	}
	pauseArchive, err := images.PauseArchive(pause)
	if err != nil {
		return nil, fmt.Errorf("pause image: %w", err)
	}
	lb, err := loadbalancer.New(loadbalancer.Config{
		Listen: cfg.Node.LoadBalancer(), Default: upstream.Default, CAFile: upstream.CAFile,
		Kubeconfig: creds.Proxy, State: paths.LoadBalancerState(), Log: log,
	})
	if err != nil {
		return nil, err
	}
	cgroupDriver, resolvConf := host.CgroupDriver(), kubelet.ResolvConf()
	runtime := containerd.New(containerd.Config{
		Root:                paths.ContainerdRoot(),
		State:               filepath.Join(RunDir, "containerd"),
		Socket:              ContainerdSocket,
		RuncRoot:            filepath.Join(RunDir, "runc"),
		BinDir:              helpers.BinDir(),
		CNIConfDir:          paths.CNIConfDir(),
		SandboxImage:        images.PauseImage,
		SystemdCgroup:       cgroupDriver == "systemd",
		RestrictOOMScoreAdj: host.OOMScoreAdjRestricted(),
	}, paths.ContainerdConfig(), "", log)

	kl := kubelet.New(kubelet.Config{
		NodeName:              id.Name,
		NodeIP:                id.IP,
		Labels:                cfg.Node.Labels,
		Taints:                cfg.Node.Taints,
		Kubeconfig:            creds.Kubelet,
		ClientCAFile:          creds.ClientCA,
		ServingCert:           creds.ServingCert,
		ServingKey:            creds.ServingKey,
		CertDir:               paths.KubeletCertDir(),
		RuntimeSocket:         ContainerdSocket,
		CgroupDriver:          cgroupDriver,
		CgroupV1:              !host.CgroupV2(),
		ClusterDNS:            cluster.ClusterDNS,
		ClusterDomain:         cluster.ClusterDomain,
		ResolvConf:            resolvConf,
		ConfigFile:            paths.KubeletConfig(),
		Args:                  cfg.Node.KubeletArgs,
		ProtectKernelDefaults: cfg.Node.Profile == config.ProfileCIS,
	})

	podNetwork := network.New(network.Config{
		NodeName: id.Name, NodeIP: id.IP, ClusterCIDR: cluster.ClusterCIDR, CNIConfDir: paths.CNIConfDir(), IPAMDir: paths.IPAMDir(),
		Kubeconfig: creds.Kubelet, Overlay: cluster.Overlay, OverlayKubeconfig: creds.Flannel, OverlayConfDir: paths.FlannelDir(), Log: log,
	})
	kubeProxy, err := proxy.New(proxy.Config{
		NodeName: id.Name, NodeIP: id.IP, ClusterCIDR: cluster.ClusterCIDR, Kubeconfig: creds.Proxy, Args: cfg.Node.ProxyArgs,
	})
	if err != nil {
		return nil, err
	}
	// The node's storage path tells the local-path provisioner that the node serves; gone, that
	// it does not (any more).
	annotations := map[string]*string{storage.PathAnnotation: nil}
	if cluster.LocalStorage {
		root := cfg.LocalStoragePath()
		annotations[storage.PathAnnotation] = &root
	}
	chain := []supervisor.Component{
		lb, runtime,
		images.NewImporter(cfg.ImagesDir(), ContainerdSocket, pauseArchive, log),
		kl, cloud.NewAnnotator(creds.Kubelet, id.Name, cfg.Node.ExternalIPs, annotations), podNetwork, kubeProxy,
	}
	if cluster.CoreDNS {
		dnsClient, err := client(creds.DNS)
		if err != nil {
			return nil, err
		}
		chain = append(chain, dns.New(dns.Config{
			NodeName: id.Name, ClusterDomain: cluster.ClusterDomain, Address: podNetwork.Gateway,
			Kubeconfig: creds.DNS, Upstream: resolvConf, Client: dnsClient, Log: log, ClaimKlog: logs.ClaimKlog,
		}))
	}
	if cluster.LocalStorage {
		storageClient, err := client(creds.Storage)
		if err != nil {
			return nil, err
		}
		dirs, err := storage.NewDirectories(storage.Config{NodeName: id.Name, Root: cfg.LocalStoragePath(), Client: storageClient, Log: log})
		if err != nil {
			return nil, err
		}
		chain = append(chain, dirs)
	}
	// Disabled, it stays in the chain to remove the rules it wrote before.
	var policyClient kubernetes.Interface
	if cluster.NetworkPolicy {
		if policyClient, err = client(creds.Flannel); err != nil {
			return nil, err
		}
	}
	policies, err := netpol.New(netpol.Config{NodeName: id.Name, Client: policyClient, Disabled: !cluster.NetworkPolicy, Log: log})
	if err != nil {
		return nil, err
	}
	return append(chain, policies), nil
}

// Supervisor runs a kone process's components, server or agent: once all are ready it says so
// in the log and to systemd, and lets go of start-up memory.
func Supervisor(logs *logging.Logging, notify *sdnotify.Notifier) *supervisor.Supervisor {
	return &supervisor.Supervisor{
		Log: logs.Logger, ReadyTimeout: 3 * time.Minute, StopTimeout: 8 * time.Second,
		OnReady: func() {
			logs.Serving()
			if err := notify.Ready(); err != nil {
				logs.WithError(err).Warn("cannot tell systemd that kone is ready")
			}
			// After telling systemd: settling (a full GC, trimming, dropping cached pages) takes a while.
			memory.SettleTwice()
		},
		OnStopping: func() {
			logs.Stopping()
			_ = notify.Stopping()
		},
	}
}

func client(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return kubernetes.NewForConfig(rc)
}
