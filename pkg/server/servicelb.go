package server

import (
	corev1 "k8s.io/api/core/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/kubernetes/pkg/cluster/ports"
	kubeapiserveroptions "k8s.io/kubernetes/pkg/kubeapiserver/options"

	"github.com/kone-dev/kone/pkg/args"
	"github.com/kone-dev/kone/pkg/cloud"
	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/flannel"
	"github.com/kone-dev/kone/pkg/metrics"
)

// loadBalancerReserved is what kone serves on the nodes' addresses, which a LoadBalancer
// Service may not take: this server's apiserver and etcd peer ports (other servers are
// expected to use the same), kubelet's, the overlay's, and the NodePort range; and SSH's, as
// a Service there would cut an edge machine off from whoever looks after it.
func loadBalancerReserved(cfg *config.Config) cloud.Reserved {
	tcp := func(p int) cloud.Port { return cloud.Port{Protocol: corev1.ProtocolTCP, Port: int32(p)} }
	r := cloud.Reserved{
		Ports: map[cloud.Port]string{
			tcp(cfg.HTTPSPort):     "the apiserver",
			tcp(cfg.EtcdPeerPort):  "etcd's peers",
			tcp(ports.KubeletPort): "kubelet",
			tcp(22):                "SSH, by which the machine is looked after",
		},
		NodePort: kubeapiserveroptions.DefaultServiceNodePortRange,
	}
	if !cfg.Node.Disabled(config.DisableMetrics) {
		r.Ports[tcp(metrics.Port)] = "the metrics API"
	}
	if cfg.FlannelBackend == config.FlannelVXLAN {
		r.Ports[cloud.Port{Protocol: corev1.ProtocolUDP, Port: flannel.VXLANPort}] = "the vxlan overlay"
	}
	if v, given := args.Override(cfg.APIServerArgs, "service-node-port-range"); given {
		if pr, err := utilnet.ParsePortRange(v); err == nil {
			r.NodePort = *pr
		}
	}
	return r
}
