package server

import (
	"strings"
	"testing"

	"github.com/kone-dev/kone/pkg/join"
)

// A server joins only a cluster whose settings are its own; the error names every flag that
// differs.
func TestSameSettings(t *testing.T) {
	cluster := join.Settings{ClusterCIDR: "10.42.0.0/16", ServiceCIDR: "10.43.0.0/16", ClusterDNS: "10.43.0.10",
		ClusterDomain: "cluster.local", FlannelBackend: "vxlan", CoreDNS: true, ClientCA: "ignored"}
	ours := cluster
	ours.ClientCA = ""
	if err := sameSettings(ours, cluster); err != nil {
		t.Fatalf("equal settings: %v", err)
	}
	ours.ServiceCIDR, ours.CoreDNS = "10.53.0.0/16", false
	err := sameSettings(ours, cluster)
	if err == nil || !strings.Contains(err.Error(), "--service-cidr is 10.53.0.0/16 here but 10.43.0.0/16") ||
		!strings.Contains(err.Error(), "--disable=coredns is true here but false") || strings.Contains(err.Error(), "--cluster-cidr") {
		t.Errorf("got %v", err)
	}
}
