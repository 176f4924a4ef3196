// Package network gives the node its pod network: it waits for the pod CIDR that the
// controller-manager allocates to the node, starts the flannel overlay that carries pod traffic
// to the other nodes, writes the CNI configuration (a bridge with host-local addresses from that
// CIDR and the overlay's MTU, portmap and bandwidth), creates the bridge with its
// gateway address so that node-local services such as DNS can bind to it before the first pod
// starts, masquerades pod traffic that leaves the cluster network, and sets the sysctls that
// forwarding needs.
package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kone-dev/kone/pkg/flannel"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/supervisor"
)

// Bridge is the pod bridge on every node.
const Bridge = "cni0"

// Config is what the pod network needs.
type Config struct {
	NodeName    string
	NodeIP      net.IP
	ClusterCIDR *net.IPNet
	CNIConfDir  string
	IPAMDir     string // host-local's record of the addresses it handed out
	// Kubeconfig holds the node's credentials, which kubelet may only just have obtained.
	Kubeconfig string
	// Overlay is flannel's backend (vxlan, host-gw), or none when the user brings their own.
	Overlay        string
	OverlayConfDir string
	// OverlayKubeconfig is flannel's identity: it watches every node, which a node's own
	// credentials may not.
	OverlayKubeconfig string
	Log               *logrus.Logger
}

// Network is the pod network component.
type Network struct {
	cfg     Config
	podCIDR *net.IPNet
	ready   *supervisor.Latch
}

// New returns the component.
func New(cfg Config) *Network { return &Network{cfg: cfg, ready: supervisor.NewLatch()} }

func (n *Network) Name() string { return "pod network" }

// Gateway is the node's own address on the pod bridge, once the component is ready.
func (n *Network) Gateway() net.IP { return Gateway(n.podCIDR) }

// Gateway is the first address of a pod CIDR: the bridge's.
func Gateway(podCIDR *net.IPNet) net.IP {
	ip := append(net.IP(nil), podCIDR.IP.To4()...)
	ip[3]++
	return ip
}

func (n *Network) Run(ctx context.Context) error {
	if err := setSysctls(); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", n.cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("node credentials %s: %w", n.cfg.Kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	podCIDR, err := n.waitForPodCIDR(ctx, cs)
	if err != nil {
		return err
	}
	n.podCIDR = podCIDR
	mtu := 0 // the bridge plugin's default, the host's
	if n.cfg.Overlay != "" && n.cfg.Overlay != "none" {
		overlay, err := flannel.Start(ctx, flannel.Config{
			NodeName: n.cfg.NodeName, NodeIP: n.cfg.NodeIP, ClusterCIDR: n.cfg.ClusterCIDR, Backend: n.cfg.Overlay,
			Kubeconfig: n.cfg.OverlayKubeconfig, ConfDir: n.cfg.OverlayConfDir,
		})
		if err != nil {
			return err
		}
		defer overlay.Wait()
		mtu = overlay.MTU()
	}
	if err := ensureBridge(Gateway(podCIDR), podCIDR); err != nil {
		return err
	}
	conf, err := ConfList(podCIDR, n.cfg.IPAMDir, mtu)
	if err != nil {
		return err
	}
	if err := pki.WriteFile(filepath.Join(n.cfg.CNIConfDir, "10-kone.conflist"), conf, 0o644); err != nil {
		return fmt.Errorf("CNI configuration: %w", err)
	}
	if err := ensureMasquerade(n.cfg.ClusterCIDR); err != nil {
		return err
	}
	n.cfg.Log.WithFields(logrus.Fields{"podCIDR": podCIDR.String(), "overlay": n.cfg.Overlay, "mtu": mtu}).Debug("pod network configured")
	n.ready.Open()
	<-ctx.Done()
	return nil
}

func (n *Network) Ready(ctx context.Context) error {
	return n.ready.Wait(ctx)
}

// waitForPodCIDR polls the node until the controller-manager has given it a pod CIDR.
func (n *Network) waitForPodCIDR(ctx context.Context, cs kubernetes.Interface) (*net.IPNet, error) {
	var last error
	for {
		node, err := cs.CoreV1().Nodes().Get(ctx, n.cfg.NodeName, metav1.GetOptions{})
		switch {
		case err == nil && node.Spec.PodCIDR != "":
			_, cidr, err := net.ParseCIDR(node.Spec.PodCIDR)
			if err != nil {
				return nil, fmt.Errorf("node %s has a bad pod CIDR %q: %w", n.cfg.NodeName, node.Spec.PodCIDR, err)
			}
			if cidr.IP.To4() == nil {
				return nil, fmt.Errorf("node %s has the IPv6 pod CIDR %s; kone's node side is IPv4 only", n.cfg.NodeName, cidr)
			}
			return cidr, nil
		case err == nil:
			last = fmt.Errorf("node %s has no pod CIDR yet", n.cfg.NodeName)
		case apierrors.IsNotFound(err):
			last = fmt.Errorf("node %s is not registered yet", n.cfg.NodeName)
		default:
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// ConfList is the CNI configuration for a node's pod CIDR. Hairpin mode lets a pod reach itself
// through a Service; masquerading is kone's own rule for the whole cluster network, not the
// bridge plugin's, so that pods on different nodes see each other's real addresses. mtu, when
// not 0, leaves room for the overlay's encapsulation.
func ConfList(podCIDR *net.IPNet, ipamDir string, mtu int) ([]byte, error) {
	type obj = map[string]any
	bridge := obj{
		"type":        "bridge",
		"bridge":      Bridge,
		"isGateway":   true,
		"ipMasq":      false,
		"hairpinMode": true,
		"ipam": obj{
			"type":    "host-local",
			"ranges":  [][]obj{{{"subnet": podCIDR.String()}}},
			"routes":  []obj{{"dst": "0.0.0.0/0"}},
			"dataDir": ipamDir,
		},
	}
	if mtu > 0 {
		bridge["mtu"] = mtu
	}
	return json.MarshalIndent(obj{
		"cniVersion": "1.0.0",
		"name":       "kone",
		"plugins": []obj{
			bridge,
			{"type": "portmap", "capabilities": obj{"portMappings": true}, "snat": true},
			{"type": "bandwidth", "capabilities": obj{"bandwidth": true}},
		},
	}, "", "  ")
}

// setSysctls turns on forwarding and makes bridged traffic pass through iptables, which
// kube-proxy's rules need. The bridge setting exists only where br_netfilter is present.
func setSysctls() error {
	for _, s := range []struct{ path, fix string }{
		{"/proc/sys/net/ipv4/ip_forward", "is /proc/sys writable?"},
		{"/proc/sys/net/bridge/bridge-nf-call-iptables", "load the br_netfilter module (modprobe br_netfilter); `kone check-config` lists what the host lacks"},
	} {
		if err := os.WriteFile(s.path, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("set %s: %w; %s", s.path, err, s.fix)
		}
	}
	return nil
}

// ensureBridge creates the pod bridge with the gateway address, or checks the one there.
func ensureBridge(gateway net.IP, podCIDR *net.IPNet) error {
	link, err := netlink.LinkByName(Bridge)
	if err != nil {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create bridge %s: %w", Bridge, err)
		}
		if link, err = netlink.LinkByName(Bridge); err != nil {
			return fmt.Errorf("bridge %s: %w", Bridge, err)
		}
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return fmt.Errorf("%s exists and is a %s, not a bridge; delete it (ip link delete %s)", Bridge, link.Type(), Bridge)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", Bridge, err)
	}
	want := &net.IPNet{IP: gateway, Mask: podCIDR.Mask}
	found := false
	for _, a := range addrs {
		if a.IPNet.String() == want.String() {
			found = true
			continue
		}
		// An address from an earlier pod CIDR (the node was re-registered) would route pods wrongly.
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, Bridge, err)
		}
	}
	if !found {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: want}); err != nil {
			return fmt.Errorf("address %s on %s: %w", want, Bridge, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up %s: %w", Bridge, err)
	}
	return nil
}

// Chains kone owns in the nat and filter tables.
const (
	postroutingChain = "KONE-POSTROUTING"
	forwardChain     = "KONE-FORWARD"
)

// ensureMasquerade makes pod traffic leaving the cluster network appear to come from the node,
// and lets pod traffic through a FORWARD policy of DROP (as Docker sets it).
func ensureMasquerade(clusterCIDR *net.IPNet) error {
	ipt, err := iptables.New()
	if err != nil {
		return fmt.Errorf("iptables: %w; install iptables (kone check-config lists what the host lacks)", err)
	}
	cidr := clusterCIDR.String()
	rules := []struct {
		table, chain, parent string
		specs                [][]string
	}{
		{"nat", postroutingChain, "POSTROUTING", [][]string{
			{"-s", cidr, "-d", cidr, "-j", "RETURN"},
			{"-s", cidr, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE", "--random-fully"},
		}},
		{"filter", forwardChain, "FORWARD", [][]string{
			{"-s", cidr, "-j", "ACCEPT"},
			{"-d", cidr, "-j", "ACCEPT"},
		}},
	}
	for _, r := range rules {
		// Rewriting the chain whole keeps it right after a change of --cluster-cidr.
		if err := ipt.ClearChain(r.table, r.chain); err != nil {
			return fmt.Errorf("iptables %s %s: %w", r.table, r.chain, err)
		}
		for _, spec := range r.specs {
			if err := ipt.Append(r.table, r.chain, spec...); err != nil {
				return fmt.Errorf("iptables %s %s: %w", r.table, r.chain, err)
			}
		}
		jump := []string{"-m", "comment", "--comment", "kone pod network", "-j", r.chain}
		if err := ipt.AppendUnique(r.table, r.parent, jump...); err != nil {
			return fmt.Errorf("iptables %s %s: %w", r.table, r.parent, err)
		}
	}
	return nil
}
