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
		ClusterDomain: "cluster.local", FlannelBackend: "vxlan", CoreDNS: true, ClientCA: "ignored", APIServerPort: 6443}
	ours := cluster
	ours.ClientCA = ""
	if err := sameSettings(ours, cluster, true, true); err != nil {
		t.Fatalf("equal settings: %v", err)
	}
	ours.ServiceCIDR, ours.CoreDNS = "10.53.0.0/16", false
	err := sameSettings(ours, cluster, true, true)
	if err == nil || !strings.Contains(err.Error(), "--service-cidr is 10.53.0.0/16 here but 10.43.0.0/16") ||
		!strings.Contains(err.Error(), "--disable=coredns is true here but false") || strings.Contains(err.Error(), "--cluster-cidr") {
		t.Errorf("got %v", err)
	}
	// Every apiserver serves on the cluster's one port, which a kone before it did not publish.
	ours = cluster
	ours.APIServerPort = 7443
	if err := sameSettings(ours, cluster, true, true); err == nil || !strings.Contains(err.Error(), "--https-listen-port is 7443 here but 6443") {
		t.Errorf("another apiserver port: %v", err)
	}
	cluster.APIServerPort = 0
	if err := sameSettings(ours, cluster, true, true); err != nil {
		t.Errorf("a cluster that did not publish its port: %v", err)
	}
	if err := sameSettings(ours, cluster, false, true); err == nil || !strings.Contains(err.Error(), "--secrets-encryption is false here but true") {
		t.Errorf("Secrets stored otherwise: %v", err)
	}
}

// A rotation step waits for the apiserver's own word that it has loaded a configuration: the
// hash in its metrics, for whichever apiserver identity.
func TestLoadedConfig(t *testing.T) {
	metrics := []byte(`# HELP apiserver_encryption_config_controller_last_config_info [ALPHA] Information about the last applied encryption configuration
# TYPE apiserver_encryption_config_controller_last_config_info gauge
apiserver_encryption_config_controller_last_config_info{apiserver_id_hash="sha256:aa",hash="sha256:1234"} 1
apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:aa",status="success"} 2
`)
	if !loadedConfig(metrics, "sha256:1234") {
		t.Error("the loaded configuration was not found")
	}
	for _, other := range []string{"sha256:12", "sha256:5678", "sha256:aa"} {
		if loadedConfig(metrics, other) {
			t.Errorf("%s taken for the loaded configuration", other)
		}
	}
}
