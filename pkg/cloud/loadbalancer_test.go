package cloud

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

func lbNode(name string, labels map[string]string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Status: corev1.NodeStatus{Addresses: addrs}}
}

func TestStatus(t *testing.T) {
	internal := func(ip string) corev1.NodeAddress {
		return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
	}
	external := func(ip string) corev1.NodeAddress {
		return corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: ip}
	}
	host := corev1.NodeAddress{Type: corev1.NodeHostName, Address: "a"}
	ips := func(nodes ...*corev1.Node) string {
		var out []string
		for _, in := range Status(nodes).Ingress {
			out = append(out, in.IP)
		}
		return strings.Join(out, ",")
	}
	a := lbNode("a", nil, internal("10.0.0.2"), external("203.0.113.2"), host)
	b := lbNode("b", nil, internal("10.0.0.1"), internal("fd00::1"))
	if got := ips(a, b); got != "10.0.0.1,10.0.0.2,203.0.113.2" {
		t.Errorf("every node's addresses: %s", got)
	}
	marked := lbNode("c", map[string]string{LBNodeLabel: "true"}, internal("10.0.0.3"))
	if got := ips(a, b, marked); got != "10.0.0.3" {
		t.Errorf("with a node labelled, only it: %s", got)
	}
}

func TestPortsHeld(t *testing.T) {
	now := time.Now()
	svc := func(name string, created time.Time, served bool, ports ...int32) *corev1.Service {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps", UID: k8stypes.UID("uid-" + name), CreationTimestamp: metav1.NewTime(created)},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer}}
		for _, p := range ports {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p, Protocol: corev1.ProtocolTCP})
		}
		if served {
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "10.0.0.1"}}
		}
		return s
	}
	holder := svc("holder", now, true, 80)
	older := svc("older", now.Add(-time.Hour), false, 443)
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, s := range []*corev1.Service{holder, older} {
		if err := indexer.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	lb := loadBalancers{cs: fake.NewClientset(), services: corelisters.NewServiceLister(indexer)}
	nodes := []*corev1.Node{lbNode("a", nil, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.0.0.1"})}
	ctx := context.Background()
	// The Service that has a port keeps it, even against an older one.
	if _, err := lb.EnsureLoadBalancer(ctx, clusterName, svc("newer", now.Add(-2*time.Hour), false, 8080, 80), nodes); err == nil ||
		!strings.Contains(err.Error(), "port TCP/80 is held by LoadBalancer Service apps/holder") {
		t.Errorf("a port a served Service holds: %v", err)
	}
	// Of two that want one, the older gets it.
	if _, err := lb.EnsureLoadBalancer(ctx, clusterName, svc("young", now, false, 443), nodes); err == nil || !strings.Contains(err.Error(), "apps/older") {
		t.Errorf("a port an older Service wants: %v", err)
	}
	if st, err := lb.EnsureLoadBalancer(ctx, clusterName, older, nodes); err != nil || len(st.Ingress) != 1 || st.Ingress[0].IP != "10.0.0.1" {
		t.Errorf("the older Service: %+v, %v", st, err)
	}
	// The holder itself, re-synced, and a Service on other ports.
	if _, err := lb.EnsureLoadBalancer(ctx, clusterName, holder, nodes); err != nil {
		t.Errorf("the holder again: %v", err)
	}
	if _, err := lb.EnsureLoadBalancer(ctx, clusterName, svc("other", now, false, 81), nodes); err != nil {
		t.Errorf("another port: %v", err)
	}
	if _, err := lb.EnsureLoadBalancer(ctx, clusterName, svc("other", now, false, 81), []*corev1.Node{lbNode("bare", nil)}); err == nil {
		t.Error("no node with an address: no error")
	}
}
