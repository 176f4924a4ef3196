package proxy

import (
	"net"
	"slices"
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	_, cidr, _ := net.ParseCIDR("10.42.0.0/16")
	c := Config{NodeName: "edge-1", NodeIP: net.ParseIP("192.168.1.10"), ClusterCIDR: cidr, Kubeconfig: "/k/proxy.kubeconfig",
		Args: []string{"proxy-mode=nftables", "--v=3"}}
	args := Args(c)
	for _, want := range []string{"--kubeconfig=/k/proxy.kubeconfig", "--hostname-override=edge-1", "--cluster-cidr=10.42.0.0/16",
		"--bind-address=192.168.1.10", "--conntrack-max-per-core=0", "--proxy-mode=nftables", "--v=3"} {
		if !slices.Contains(args, want) {
			t.Errorf("args lack %s: %v", want, args)
		}
	}
	if slices.Contains(args, "--proxy-mode=iptables") {
		t.Error("the user's proxy mode did not replace kone's")
	}
	if !slices.IsSorted(args) {
		t.Error("args are not in a stable order")
	}
}

func TestNewChecksArguments(t *testing.T) {
	_, cidr, _ := net.ParseCIDR("10.42.0.0/16")
	if _, err := New(Config{NodeName: "n", ClusterCIDR: cidr, Args: []string{"no-such-flag=1"}}); err == nil || !strings.Contains(err.Error(), "--kube-proxy-arg") {
		t.Errorf("an unknown kube-proxy flag: %v", err)
	}
	if _, err := New(Config{NodeName: "n", ClusterCIDR: cidr}); err != nil {
		t.Errorf("kone's own arguments: %v", err)
	}
}
