// Package node assembles the node side of kone, the same for a server and an agent:
// containerd (a child process), the image importer, kubelet, the pod network, kube-proxy and
// the node's CoreDNS, in that order. It only wires components; each lives in its own package.
// The caller provides the node's credentials: a server issues them from its own CAs, an agent
// gets them by joining.
package node

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/containerd"
	"github.com/kone-dev/kone/pkg/data"
	"github.com/kone-dev/kone/pkg/dns"
	"github.com/kone-dev/kone/pkg/host"
	"github.com/kone-dev/kone/pkg/images"
	"github.com/kone-dev/kone/pkg/kubelet"
	"github.com/kone-dev/kone/pkg/logging"
	"github.com/kone-dev/kone/pkg/network"
	"github.com/kone-dev/kone/pkg/proxy"
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
	Kubelet, Proxy, DNS     string // kubeconfigs
	ClientCA                string // the CA of the apiserver's client certificate for kubelets
	ServingCert, ServingKey string // kubelet's serving certificate
}

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

// Components returns the node side's chain for the supervisor, in start order.
func Components(cfg *config.Config, id Identity, creds Credentials, logs *logging.Logging) ([]supervisor.Component, error) {
	log := logs.Logger
	paths := Paths{Agent: cfg.AgentDir()}
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
		NodeName:      id.Name,
		NodeIP:        id.IP,
		Labels:        cfg.Node.Labels,
		Taints:        cfg.Node.Taints,
		Kubeconfig:    creds.Kubelet,
		ClientCAFile:  creds.ClientCA,
		ServingCert:   creds.ServingCert,
		ServingKey:    creds.ServingKey,
		CertDir:       paths.KubeletCertDir(),
		RuntimeSocket: ContainerdSocket,
		CgroupDriver:  cgroupDriver,
		CgroupV1:      !host.CgroupV2(),
		ClusterDNS:    cfg.ClusterDNS,
		ClusterDomain: cfg.ClusterDomain,
		ResolvConf:    resolvConf,
		ConfigFile:    paths.KubeletConfig(),
		Args:          cfg.Node.KubeletArgs,
	})

	nodeClient, err := client(creds.Kubelet)
	if err != nil {
		return nil, err
	}
	podNetwork := network.New(network.Config{
		NodeName: id.Name, ClusterCIDR: cfg.ClusterCIDR, CNIConfDir: paths.CNIConfDir(), IPAMDir: paths.IPAMDir(),
		Client: nodeClient, Log: log,
	})
	kubeProxy, err := proxy.New(proxy.Config{
		NodeName: id.Name, NodeIP: id.IP, ClusterCIDR: cfg.ClusterCIDR, Kubeconfig: creds.Proxy, Args: cfg.Node.ProxyArgs,
	})
	if err != nil {
		return nil, err
	}
	chain := []supervisor.Component{
		runtime,
		images.NewImporter(cfg.ImagesDir(), ContainerdSocket, pauseArchive, log),
		kl, podNetwork, kubeProxy,
	}
	if !cfg.Node.Disabled(config.DisableCoreDNS) {
		dnsClient, err := client(creds.DNS)
		if err != nil {
			return nil, err
		}
		chain = append(chain, dns.New(dns.Config{
			NodeName: id.Name, ClusterDomain: cfg.ClusterDomain, Address: podNetwork.Gateway,
			Kubeconfig: creds.DNS, Upstream: resolvConf, Client: dnsClient, Log: log, ClaimKlog: logs.ClaimKlog,
		}))
	}
	return chain, nil
}

func client(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return kubernetes.NewForConfig(rc)
}
