package network

import (
	"encoding/json"
	"net"
	"testing"
)

func TestGateway(t *testing.T) {
	_, cidr, _ := net.ParseCIDR("10.42.3.0/24")
	if got := Gateway(cidr).String(); got != "10.42.3.1" {
		t.Errorf("gateway %s", got)
	}
}

func TestConfList(t *testing.T) {
	_, cidr, _ := net.ParseCIDR("10.42.3.0/24")
	data, err := ConfList(cidr, "/var/lib/kone/agent/cni/networks", 1450)
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type        string `json:"type"`
			Bridge      string `json:"bridge"`
			IsGateway   bool   `json:"isGateway"`
			IPMasq      bool   `json:"ipMasq"`
			HairpinMode bool   `json:"hairpinMode"`
			MTU         int    `json:"mtu"`
			IPAM        struct {
				Type    string                      `json:"type"`
				Ranges  [][]struct{ Subnet string } `json:"ranges"`
				DataDir string                      `json:"dataDir"`
			} `json:"ipam"`
			Capabilities map[string]bool `json:"capabilities"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	if conf.CNIVersion != "1.0.0" || len(conf.Plugins) != 3 {
		t.Fatalf("conflist: %s", data)
	}
	br := conf.Plugins[0]
	if br.Type != "bridge" || br.Bridge != Bridge || !br.IsGateway || br.IPMasq || !br.HairpinMode || br.MTU != 1450 {
		t.Errorf("bridge plugin: %+v", br)
	}
	if br.IPAM.Type != "host-local" || br.IPAM.Ranges[0][0].Subnet != "10.42.3.0/24" || br.IPAM.DataDir != "/var/lib/kone/agent/cni/networks" {
		t.Errorf("ipam: %+v", br.IPAM)
	}
	if conf.Plugins[1].Type != "portmap" || !conf.Plugins[1].Capabilities["portMappings"] {
		t.Errorf("portmap: %+v", conf.Plugins[1])
	}
	if conf.Plugins[2].Type != "bandwidth" || !conf.Plugins[2].Capabilities["bandwidth"] {
		t.Errorf("bandwidth: %+v", conf.Plugins[2])
	}
}

func TestConfListWithoutOverlayKeepsTheHostMTU(t *testing.T) {
	_, cidr, _ := net.ParseCIDR("10.42.3.0/24")
	data, err := ConfList(cidr, "/ipam", 0)
	if err != nil {
		t.Fatal(err)
	}
	var conf struct{ Plugins []map[string]any }
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	if _, ok := conf.Plugins[0]["mtu"]; ok {
		t.Errorf("mtu set without an overlay: %s", data)
	}
}
