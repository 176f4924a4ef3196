package server

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kone-dev/kone/pkg/cloud"
	"github.com/kone-dev/kone/pkg/config"
)

// The ports a LoadBalancer Service may not take follow the server's flags, the NodePort range
// given with or without dashes among them.
func TestLoadBalancerReserved(t *testing.T) {
	cfg := &config.Config{HTTPSPort: 7443, EtcdPeerPort: 7380, FlannelBackend: config.FlannelHostGW,
		APIServerArgs: []string{"--service-node-port-range=20000-20100"}}
	r := loadBalancerReserved(cfg)
	for _, p := range []int32{7443, 7380, 10250, 22} {
		if _, ok := r.Ports[cloud.Port{Protocol: corev1.ProtocolTCP, Port: p}]; !ok {
			t.Errorf("TCP %d is not reserved", p)
		}
	}
	if _, ok := r.Ports[cloud.Port{Protocol: corev1.ProtocolUDP, Port: 8472}]; ok {
		t.Error("UDP 8472 is reserved with host-gw, which does not use it")
	}
	if r.NodePort.Base != 20000 || r.NodePort.Size != 101 {
		t.Errorf("NodePort range %s, want 20000-20100", r.NodePort.String())
	}
	cfg.FlannelBackend, cfg.APIServerArgs = config.FlannelVXLAN, nil
	r = loadBalancerReserved(cfg)
	if _, ok := r.Ports[cloud.Port{Protocol: corev1.ProtocolUDP, Port: 8472}]; !ok || r.NodePort.String() != "30000-32767" {
		t.Errorf("with vxlan and no range given: %v, %s", r.Ports, r.NodePort.String())
	}
}
