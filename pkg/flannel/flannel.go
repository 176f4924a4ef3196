// Package flannel runs flannel's overlay inside kone: its Kubernetes subnet manager, which takes
// each node's subnet from the podCIDR the controller-manager gave it and publishes the node's
// tunnel endpoint in the Node's annotations, and a backend (vxlan or host-gw) that routes every
// other node's pod subnet. Pods still attach to kone's CNI bridge; flannel only carries traffic
// between nodes. Masquerading and forwarding rules stay kone's own (pkg/network).
package flannel

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/flannel-io/flannel/pkg/backend"
	"github.com/flannel-io/flannel/pkg/ipmatch"
	"github.com/flannel-io/flannel/pkg/subnet/kube"

	"github.com/kone-dev/kone/pkg/pki"

	// The backends kone offers register themselves.
	_ "github.com/flannel-io/flannel/pkg/backend/hostgw"
	_ "github.com/flannel-io/flannel/pkg/backend/vxlan"
)

// annotationPrefix is flannel's own, so that nodes of a kone cluster read like any flannel cluster's.
const annotationPrefix = "flannel.alpha.coreos.com"

// VXLANPort is the UDP port of the vxlan backend: flannel's configuration names none, so the
// kernel's default for Linux, which is flannel's.
const VXLANPort = 8472

// Config is what the overlay needs to know about the node and the cluster.
type Config struct {
	NodeName    string
	NodeIP      net.IP // the tunnel's endpoint; flannel uses the interface that holds it
	ClusterCIDR *net.IPNet
	Backend     string // vxlan or host-gw
	Kubeconfig  string // flannel's identity: it watches all nodes and annotates its own
	ConfDir     string // where kone writes flannel's network configuration
}

// Overlay is a running flannel backend.
type Overlay struct {
	network backend.Network
	wg      sync.WaitGroup
}

// Start acquires the node's lease, sets up the backend's device and starts routing to the other
// nodes until ctx ends.
func Start(ctx context.Context, c Config) (*Overlay, error) {
	conf, err := json.Marshal(map[string]any{
		"Network": c.ClusterCIDR.String(), "EnableIPv4": true, "Backend": map[string]string{"Type": c.Backend},
	})
	if err != nil {
		return nil, err
	}
	confPath := filepath.Join(c.ConfDir, "net-conf.json")
	if err := pki.WriteFile(confPath, conf, 0o644); err != nil {
		return nil, fmt.Errorf("flannel configuration: %w", err)
	}
	// flannel's subnet manager learns its node only from this variable; one node runs per process.
	if err := os.Setenv("NODE_NAME", c.NodeName); err != nil {
		return nil, err
	}
	sm, err := kube.NewSubnetManager(ctx, "", c.Kubeconfig, annotationPrefix, confPath, false)
	if err != nil {
		return nil, fmt.Errorf("flannel subnet manager: %w", err)
	}
	netConf, err := sm.GetNetworkConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("flannel network configuration: %w", err)
	}
	stack, err := ipmatch.GetIPFamily(true, false)
	if err != nil {
		return nil, err
	}
	ip := c.NodeIP.String()
	iface, err := ipmatch.LookupExtIface(ip, "", "", stack, ipmatch.PublicIPOpts{PublicIP: ip})
	if err != nil {
		return nil, fmt.Errorf("flannel: no interface holds the node IP %s: %w; check --node-ip", ip, err)
	}
	be, err := backend.NewManager(ctx, sm, iface).GetBackend(netConf.BackendType)
	if err != nil {
		return nil, fmt.Errorf("flannel backend %s: %w", netConf.BackendType, err)
	}
	o := &Overlay{}
	if o.network, err = be.RegisterNetwork(ctx, &o.wg, netConf); err != nil {
		return nil, fmt.Errorf("flannel %s network: %w", netConf.BackendType, err)
	}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		o.network.Run(ctx)
	}()
	return o, nil
}

// MTU is what pod interfaces must use so that their packets fit the tunnel.
func (o *Overlay) MTU() int { return o.network.MTU() }

// Wait returns once the backend has stopped, after its context ended.
func (o *Overlay) Wait() { o.wg.Wait() }
