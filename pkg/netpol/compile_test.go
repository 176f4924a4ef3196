package netpol

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go4.org/netipx"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

const here = "node-a"

func pod(ns, name, node, ip string, labels map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if ip != "" {
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	return p
}

func namespace(name string, labels map[string]string) *corev1.Namespace {
	l := map[string]string{"kubernetes.io/metadata.name": name}
	for k, v := range labels {
		l[k] = v
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
}

func policy(ns, name string, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

func sel(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

func addrs4(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func ranges(s ...string) []netipx.IPRange {
	var out []netipx.IPRange
	for _, r := range s {
		from, to, ok := strings.Cut(r, "-")
		if !ok {
			to = from
		}
		out = append(out, netipx.IPRangeFrom(netip.MustParseAddr(from), netip.MustParseAddr(to)))
	}
	return out
}

func tcp(p int32) networkingv1.NetworkPolicyPort {
	port := intstr.FromInt32(p)
	return networkingv1.NetworkPolicyPort{Port: &port}
}

// The cluster the cases share: web and db in "shop" (web on both nodes), a client in "tools",
// a host-network pod and a finished pod, which play no part.
func cluster(policies ...*networkingv1.NetworkPolicy) Cluster {
	hostNet := pod("shop", "agent", here, "192.168.1.10", map[string]string{"app": "web"})
	hostNet.Spec.HostNetwork = true
	done := pod("shop", "job", here, "10.42.0.9", map[string]string{"app": "web"})
	done.Status.Phase = corev1.PodSucceeded
	return Cluster{
		Node: here,
		Pods: []*corev1.Pod{
			pod("shop", "web-1", here, "10.42.0.5", map[string]string{"app": "web"}, corev1.ContainerPort{Name: "http", ContainerPort: 8080}),
			pod("shop", "web-2", "node-b", "10.42.1.5", map[string]string{"app": "web"}, corev1.ContainerPort{Name: "http", ContainerPort: 8081}),
			pod("shop", "db", here, "10.42.0.6", map[string]string{"app": "db"}, corev1.ContainerPort{Name: "sql", ContainerPort: 5432}),
			pod("tools", "client", "node-b", "10.42.1.7", map[string]string{"app": "client"}),
			pod("shop", "pending", here, "", map[string]string{"app": "web"}),
			hostNet, done,
		},
		Namespaces: []*corev1.Namespace{namespace("shop", nil), namespace("tools", map[string]string{"team": "ops"})},
		Policies:   policies,
	}
}

func compile(t *testing.T, c Cluster) Ruleset {
	t.Helper()
	rs, skipped := Compile(c)
	if len(skipped) > 0 {
		t.Fatalf("skipped: %v", skipped)
	}
	return rs
}

func TestCompile(t *testing.T) {
	udp := corev1.ProtocolUDP
	end := int32(9000)
	named := intstr.FromString("http")
	for _, tc := range []struct {
		name   string
		policy *networkingv1.NetworkPolicy
		want   Ruleset
	}{{
		name:   "default deny ingress isolates this node's running pods of the namespace only",
		policy: policy("shop", "deny", networkingv1.NetworkPolicySpec{}),
		want:   Ruleset{Ingress: []Policy{{Name: "shop/deny", Targets: addrs4("10.42.0.5", "10.42.0.6")}}},
	}, {
		name: "allow by pod label, in the policy's namespace",
		policy: policy("shop", "db", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("app", "db"),
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "web")}}, Ports: []networkingv1.NetworkPolicyPort{tcp(5432)}}},
		}),
		want: Ruleset{Ingress: []Policy{{Name: "shop/db", Targets: addrs4("10.42.0.6"), Rules: []Rule{{
			Peers: ranges("10.42.0.5", "10.42.1.5"), Ports: []Port{{Protocol: unix.IPPROTO_TCP, First: 5432, Last: 5432}},
		}}}}},
	}, {
		name: "namespace selector, and both selectors together",
		policy: policy("shop", "ops", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("app", "web"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("team", "ops")}}},
				{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("team", "ops"), PodSelector: sel("app", "nobody")}}},
				{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: sel("app", "db")}}},
			},
		}),
		want: Ruleset{Ingress: []Policy{{Name: "shop/ops", Targets: addrs4("10.42.0.5"), Rules: []Rule{
			{Peers: ranges("10.42.1.7"), AnyPort: true},
			// the second rule matches no pod and is left out
			{Peers: ranges("10.42.0.6"), AnyPort: true},
		}}}},
	}, {
		name: "ipBlock less its exceptions, UDP and a port range",
		policy: policy("shop", "block", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("app", "db"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}}, {IPBlock: &networkingv1.IPBlock{CIDR: "fd00::/8"}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp}, {Port: ptr.To(intstr.FromInt32(8000)), EndPort: &end}},
			}},
		}),
		want: Ruleset{Ingress: []Policy{{Name: "shop/block", Targets: addrs4("10.42.0.6"), Rules: []Rule{{
			Peers: ranges("192.168.0.0-192.168.0.255", "192.168.2.0-192.168.255.255"),
			Ports: []Port{{Protocol: unix.IPPROTO_UDP, First: 0, Last: 65535}, {Protocol: unix.IPPROTO_TCP, First: 8000, Last: 9000}},
		}}}}},
	}, {
		name: "an ingress named port is the target pod's",
		policy: policy("shop", "named", networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &named}}}},
		}),
		want: Ruleset{Ingress: []Policy{{Name: "shop/named", Targets: addrs4("10.42.0.5", "10.42.0.6"), Rules: []Rule{{
			AnyPeer: true, Ports: []Port{{Protocol: unix.IPPROTO_TCP, First: 8080, Last: 8080, To: netip.MustParseAddr("10.42.0.5")}},
		}}}}},
	}, {
		name: "egress only, with a named port on the destination pods",
		policy: policy("shop", "out", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("app", "db"),
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "web")}}, Ports: []networkingv1.NetworkPolicyPort{{Port: &named}},
			}},
		}),
		want: Ruleset{Egress: []Policy{{Name: "shop/out", Targets: addrs4("10.42.0.6"), Rules: []Rule{{
			Peers: ranges("10.42.0.5", "10.42.1.5"),
			Ports: []Port{{Protocol: unix.IPPROTO_TCP, First: 8080, Last: 8080, To: netip.MustParseAddr("10.42.0.5")}, {Protocol: unix.IPPROTO_TCP, First: 8081, Last: 8081, To: netip.MustParseAddr("10.42.1.5")}},
		}}}}},
	}, {
		name: "egress rules without policy types isolate both ways; deny all egress",
		policy: policy("shop", "both", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("app", "web"),
			Egress:      []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "nobody")}}}},
		}),
		want: Ruleset{
			Ingress: []Policy{{Name: "shop/both", Targets: addrs4("10.42.0.5")}},
			Egress:  []Policy{{Name: "shop/both", Targets: addrs4("10.42.0.5")}},
		},
	}, {
		name: "egress rules under policy types that name ingress alone isolate ingress alone",
		policy: policy("shop", "in", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("app", "db"),
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{}},
		}),
		want: Ruleset{Ingress: []Policy{{Name: "shop/in", Targets: addrs4("10.42.0.6")}}},
	}, {
		name:   "a policy that selects none of this node's pods",
		policy: policy("tools", "deny", networkingv1.NetworkPolicySpec{}),
		want:   Ruleset{},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			if got := compile(t, cluster(tc.policy)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// A policy that cannot be compiled is reported and left out; the others still apply, in the
// order of their names.
func TestCompileSkipsABrokenPolicy(t *testing.T) {
	icmp := corev1.Protocol("ICMP")
	broken := policy("shop", "broken", networkingv1.NetworkPolicySpec{
		Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &icmp}}}},
	})
	rs, skipped := Compile(cluster(policy("shop", "z", networkingv1.NetworkPolicySpec{}), broken, policy("shop", "a", networkingv1.NetworkPolicySpec{})))
	if len(skipped) != 1 || !strings.Contains(skipped[0].Error(), "shop/broken") || !strings.Contains(skipped[0].Error(), `"ICMP"`) {
		t.Errorf("skipped: %v", skipped)
	}
	if len(rs.Ingress) != 2 || rs.Ingress[0].Name != "shop/a" || rs.Ingress[1].Name != "shop/z" {
		t.Errorf("ingress: %+v", rs.Ingress)
	}
}

// The informer keeps a slim copy of each pod, from which the same rules compile.
func TestSlimPodCompilesTheSame(t *testing.T) {
	c := cluster(policy("shop", "named", networkingv1.NetworkPolicySpec{
		Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "web")}},
			Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromString("http"))}},
		}},
	}))
	want := compile(t, c)
	for i, p := range c.Pods {
		p.Spec.Containers[0].Image = "example/big:1"
		p.Annotations = map[string]string{"big": strings.Repeat("x", 1000)}
		slim, err := slimPod(p)
		if err != nil {
			t.Fatal(err)
		}
		c.Pods[i] = slim.(*corev1.Pod)
		if c.Pods[i].Annotations != nil || slices.ContainsFunc(c.Pods[i].Spec.Containers, func(c corev1.Container) bool { return c.Image != "" }) {
			t.Fatalf("slim pod keeps more than it needs: %+v", c.Pods[i])
		}
	}
	if got := compile(t, c); !reflect.DeepEqual(got, want) || len(want.Ingress) != 1 || len(want.Ingress[0].Rules) != 1 {
		t.Errorf("slim pods compile to %+v, want %+v", got, want)
	}
}

// An update of a pod's status alone does not make the node compile its policies again; a
// change of its labels or address does.
func TestSamePod(t *testing.T) {
	slim := func(p *corev1.Pod) any {
		s, err := slimPod(p)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := pod("shop", "web-1", here, "10.42.0.5", map[string]string{"app": "web"})
	before.ResourceVersion = "1"
	ready := before.DeepCopy()
	ready.ResourceVersion = "2"
	ready.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	relabelled := ready.DeepCopy()
	relabelled.Labels = map[string]string{"app": "db"}
	moved := ready.DeepCopy()
	moved.Status.PodIPs = []corev1.PodIP{{IP: "10.42.0.7"}}
	if !samePod(slim(before), slim(ready)) {
		t.Error("a status update alone counts as a change")
	}
	if samePod(slim(ready), slim(relabelled)) || samePod(slim(ready), slim(moved)) {
		t.Error("a change of labels or address does not count")
	}
}
