package server_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestFlannelBackends runs a server and one agent with each backend besides vxlan (TestAgents):
// with host-gw each node routes the other's pod subnet to the other's node IP, with no tunnel
// device, and pods reach each other across the nodes; with none kone routes nothing between
// nodes and makes no flannel device, while pods still get addresses from their node's podCIDR.
// No traffic is sent across nodes with none: it would leave by the host's default route.
func TestFlannelBackends(t *testing.T) {
	bin := koneBinary(t)
	for _, backend := range []string{"host-gw", "none"} {
		t.Run(backend, func(t *testing.T) { checkBackend(t, bin, backend) })
	}
}

func checkBackend(t *testing.T, bin, backend string) {
	n, cs, tok := startClusterServer(t, bin, "--flannel-backend", backend)
	agentIP := nodeNet + "4"
	agent := newAgent(t, bin, "agent-gw", agentIP, "https://"+bridgeHost+":"+n.https, tok)
	agent.up()
	waitNodesReady(t, cs, 2)
	agent.waitReady()

	ctx := context.Background()
	agentNode, err := cs.CoreV1().Nodes().Get(ctx, "agent-gw", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, agentPods, err := net.ParseCIDR(agentNode.Spec.PodCIDR)
	if err != nil {
		t.Fatalf("agent's podCIDR %q: %v", agentNode.Spec.PodCIDR, err)
	}
	if _, err := netlink.LinkByName("flannel.1"); err == nil {
		t.Errorf("%s made a vxlan device", backend)
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: agentPods}, netlink.RT_FILTER_DST)
	if err != nil {
		t.Fatal(err)
	}
	var via []string
	for _, r := range routes {
		via = append(via, r.Gw.String())
	}
	switch backend {
	case "host-gw":
		if len(routes) != 1 || !routes[0].Gw.Equal(net.ParseIP(agentIP)) {
			t.Errorf("route to the agent's pods %s: via %v, want via %s", agentPods, via, agentIP)
		}
	case "none":
		if len(routes) != 0 {
			t.Errorf("with no overlay, a route to the agent's pods %s via %v", agentPods, via)
		}
	}

	ns := "kone-node-it"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	serveWeb(t, cs, ns, 2, true)
	pods := waitPodsRunning(t, cs, ns, 2)
	for _, p := range pods {
		node, err := cs.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, cidr, _ := net.ParseCIDR(node.Spec.PodCIDR); cidr == nil || !cidr.Contains(net.ParseIP(p.Status.PodIP)) {
			t.Errorf("pod %s on %s has %s, outside its node's podCIDR %s", p.Name, p.Spec.NodeName, p.Status.PodIP, node.Spec.PodCIDR)
		}
	}
	if backend == "host-gw" {
		for i, from := range pods {
			to := pods[1-i]
			url := "http://" + to.Status.PodIP + ":8080/"
			if out := kubectlEventually(t, n, "exec", "-n", ns, from.Name, "--", "timeout", "5", "wget", "-q", "-O-", url); strings.TrimSpace(out) != "hello from "+to.Name {
				t.Errorf("%s (on %s) GET %s (on %s): %q", from.Name, from.Spec.NodeName, url, to.Spec.NodeName, out)
			}
		}
	}
	// While the agent still runs: its pods go only through it.
	_ = cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	waitPodsGone(t, cs, ns)
}
