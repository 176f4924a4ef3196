package cloud

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	cloudprovider "k8s.io/cloud-provider"
	cloudproviderapi "k8s.io/cloud-provider/api"
	servicehelper "k8s.io/cloud-provider/service/helpers"
)

func internal(ip string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
}

// lbNode is a Ready node.
func lbNode(name string, labels map[string]string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Status: corev1.NodeStatus{Addresses: addrs, Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
}

func ips(status *corev1.LoadBalancerStatus) string {
	var out []string
	for _, in := range status.Ingress {
		out = append(out, in.IP)
	}
	return strings.Join(out, ",")
}

func TestStatus(t *testing.T) {
	external := corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.2"}
	host := corev1.NodeAddress{Type: corev1.NodeHostName, Address: "a"}
	a := lbNode("a", nil, internal("10.0.0.2"), external, host)
	b := lbNode("b", nil, internal("10.0.0.1"), internal("fd00::1"))
	status := Status([]*corev1.Node{a, b})
	if got := ips(status); got != "10.0.0.1,10.0.0.2,203.0.113.2" {
		t.Errorf("every node's addresses: %s", got)
	}
	if m := status.Ingress[0].IPMode; m == nil || *m != corev1.LoadBalancerIPModeVIP {
		t.Errorf("ipMode %v, want VIP: kube-proxy takes the traffic to the address", m)
	}
	marked := lbNode("c", map[string]string{LBNodeLabel: "true"}, internal("10.0.0.3"))
	if got := ips(Status([]*corev1.Node{a, b, marked})); got != "10.0.0.3" {
		t.Errorf("with a node labelled, only it: %s", got)
	}
	notReady := lbNode("d", nil, internal("10.0.0.4"))
	notReady.Status.Conditions[0].Status = corev1.ConditionUnknown
	excluded := lbNode("e", map[string]string{corev1.LabelNodeExcludeBalancers: "true"}, internal("10.0.0.5"))
	unparsable := lbNode("f", map[string]string{corev1.LabelNodeExcludeBalancers: "maybe"}, internal("10.0.0.6"))
	included := lbNode("g", map[string]string{corev1.LabelNodeExcludeBalancers: "false"}, internal("10.0.0.7"))
	deleting := lbNode("h", nil, internal("10.0.0.8"))
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	if got := ips(Status([]*corev1.Node{notReady, excluded, unparsable, included, deleting})); got != "10.0.0.7" {
		t.Errorf("only a Ready node, not excluded nor being deleted: %s", got)
	}
}

// lbFixture is a load balancer whose listers hold objs, and whose client holds them too.
func lbFixture(t *testing.T, objs ...any) (lb *loadBalancers, cs *fake.Clientset, nodes, services cache.Indexer) {
	t.Helper()
	services = cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	nodes = cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	cs = fake.NewClientset()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Service:
			if err = services.Add(o); err == nil {
				_, err = cs.CoreV1().Services(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
			}
		case *corev1.Node:
			if err = nodes.Add(o); err == nil {
				_, err = cs.CoreV1().Nodes().Create(context.Background(), o, metav1.CreateOptions{})
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	reserved := Reserved{Ports: map[Port]string{{corev1.ProtocolTCP, 6443}: "the apiserver", {corev1.ProtocolUDP, 8472}: "the vxlan overlay"},
		NodePort: utilnet.PortRange{Base: 30000, Size: 2768}}
	return newLoadBalancers(cs, corelisters.NewServiceLister(services), corelisters.NewNodeLister(nodes), reserved), cs, nodes, services
}

func lbService(name string, served bool, ports ...int32) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps", UID: k8stypes.UID("uid-" + name)},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer}}
	for _, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p, Protocol: corev1.ProtocolTCP})
	}
	if served {
		s.Finalizers = []string{servicehelper.LoadBalancerCleanupFinalizer}
		s.Annotations = map[string]string{ServedAnnotation: "true"}
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "10.0.0.1"}}
	}
	return s
}

func TestEnsureRefuses(t *testing.T) {
	ctx := context.Background()
	holder := lbService("holder", true, 80)
	first, next := lbService("first", false, 81), lbService("next", false, 81)
	lb, cs, _, _ := lbFixture(t, holder, first, next, lbNode("a", nil, internal("10.0.0.1")))
	refused := func(svc *corev1.Service, want string) {
		t.Helper()
		var retry *cloudproviderapi.RetryError
		if _, err := lb.EnsureLoadBalancer(ctx, clusterName, svc, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error saying %q", svc.Name, err, want)
		} else if !errors.As(err, &retry) || retry.RetryAfter() != refusedRetry {
			t.Errorf("%s: %v is not a flat retry", svc.Name, err)
		}
	}
	refused(lbService("api", false, 8080, 6443), "port TCP/6443 is kone's own on every node (the apiserver)")
	udp := lbService("vxlan", false)
	udp.Spec.Ports = []corev1.ServicePort{{Port: 8472, Protocol: corev1.ProtocolUDP}}
	refused(udp, "port UDP/8472 is kone's own")
	refused(lbService("nodeport", false, 30080), "port TCP/30080 is in the NodePort range 30000-32767")
	refused(lbService("second", false, 8080, 80), "port TCP/80 is held by LoadBalancer Service apps/holder")

	// Granted in this process, its status not yet in the lister: held all the same.
	if st, err := lb.EnsureLoadBalancer(ctx, clusterName, first, nil); err != nil || ips(st) != "10.0.0.1" {
		t.Fatalf("a free port: %+v, %v", st, err)
	}
	if got, _ := cs.CoreV1().Services("apps").Get(ctx, "first", metav1.GetOptions{}); got.Annotations[ServedAnnotation] != "true" {
		t.Errorf("a Service given addresses is not marked as kone's: %v", got.Annotations)
	}
	refused(next, "port TCP/81 is held by LoadBalancer Service apps/first")
	if err := lb.EnsureLoadBalancerDeleted(ctx, clusterName, first); err != nil {
		t.Fatal(err)
	}
	if _, err := lb.EnsureLoadBalancer(ctx, clusterName, next, nil); err != nil {
		t.Errorf("a port its holder gave up: %v", err)
	}
	// The holder itself, synced again, keeps its port.
	if _, err := lb.EnsureLoadBalancer(ctx, clusterName, holder, nil); err != nil {
		t.Errorf("the holder again: %v", err)
	}

	// A served Service that now asks for a held port loses its addresses: kube-proxy would
	// otherwise serve both on it.
	taker := lbService("taker", true, 82, 80)
	if _, err := cs.CoreV1().Services("apps").Create(ctx, taker, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	refused(taker, "port TCP/80 is held")
	if got, err := cs.CoreV1().Services("apps").Get(ctx, "taker", metav1.GetOptions{}); err != nil || len(got.Status.LoadBalancer.Ingress) > 0 {
		t.Errorf("a refused Service keeps its addresses: %+v, %v", got.Status.LoadBalancer, err)
	}

	bare, _, _, _ := lbFixture(t, lbNode("bare", nil))
	if _, err := bare.EnsureLoadBalancer(ctx, clusterName, lbService("x", false, 81), nil); err == nil || !strings.Contains(err.Error(), "no node serves") {
		t.Errorf("no node with an address: %v", err)
	}
}

func TestFollowNodes(t *testing.T) {
	ctx := context.Background()
	pending := lbService("pending", false, 81)
	pending.Finalizers = []string{servicehelper.LoadBalancerCleanupFinalizer}
	classed := lbService("classed", true, 82)
	class := "example.com/lb"
	classed.Spec.LoadBalancerClass = &class
	a := lbNode("a", nil, internal("10.0.0.1"))
	lb, cs, nodes, _ := lbFixture(t, lbService("web", true, 80), pending, classed, a)
	b := lbNode("b", nil, internal("10.0.0.2"))
	if err := nodes.Add(b); err != nil {
		t.Fatal(err)
	}
	if err := lb.followAll(); err != nil {
		t.Fatal(err)
	}
	get := func(name string) *corev1.Service {
		svc, err := cs.CoreV1().Services("apps").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	if got := ips(&get("web").Status.LoadBalancer); got != "10.0.0.1,10.0.0.2" {
		t.Errorf("a served Service after a node joined: %s", got)
	}
	if got := get("pending").Status.LoadBalancer.Ingress; len(got) > 0 {
		t.Errorf("a Service kone has not served got addresses: %v", got)
	}
	if got := ips(&get("classed").Status.LoadBalancer); got != "10.0.0.1" {
		t.Errorf("another class's Service was changed: %s", got)
	}
	// No node left: the last addresses stay.
	for _, n := range []*corev1.Node{a, b} {
		if err := nodes.Delete(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := lb.UpdateLoadBalancer(ctx, clusterName, lbService("web", true, 80), nil); err != nil {
		t.Fatal(err)
	}
	if got := ips(&get("web").Status.LoadBalancer); got != "10.0.0.1,10.0.0.2" {
		t.Errorf("with no node serving, the addresses became %q", got)
	}
}

func TestReleaseLoadBalancers(t *testing.T) {
	ctx := context.Background()
	// Another controller's: upstream's finalizer, which kone's controller gave it, goes; its
	// addresses stay.
	metallb := lbService("metallb", false, 81)
	metallb.Finalizers = []string{servicehelper.LoadBalancerCleanupFinalizer}
	metallb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.51"}}
	_, cs, _, _ := lbFixture(t, lbService("served", true, 80), metallb, lbNode("a", nil, internal("10.0.0.1")))
	if err := ReleaseLoadBalancers(ctx, cs); err != nil {
		t.Fatal(err)
	}
	got, err := cs.CoreV1().Services("apps").Get(ctx, "served", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Finalizers) > 0 || len(got.Status.LoadBalancer.Ingress) > 0 || got.Annotations[ServedAnnotation] != "" {
		t.Errorf("released: finalizers %v, addresses %q, annotations %v; want none of kone's", got.Finalizers, ips(&got.Status.LoadBalancer), got.Annotations)
	}
	if other, _ := cs.CoreV1().Services("apps").Get(ctx, "metallb", metav1.GetOptions{}); ips(&other.Status.LoadBalancer) != "192.0.2.51" || len(other.Finalizers) > 0 {
		t.Errorf("another controller's Service: %v, %+v", other.Finalizers, other.Status)
	}
}

// A Service with addresses kone did not give is another controller's; one that kone served
// keeps its addresses while no node serves, and one just refused is not given addresses back
// by a node change.
func TestOthersAndOutages(t *testing.T) {
	ctx := context.Background()
	foreign := lbService("foreign", false, 80)
	foreign.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.51"}}
	served := lbService("served", true, 81)
	notReady := lbNode("a", nil, internal("10.0.0.1"))
	notReady.Status.Conditions[0].Status = corev1.ConditionFalse
	lb, cs, nodes, services := lbFixture(t, foreign, served, notReady)
	if _, err := lb.EnsureLoadBalancer(ctx, clusterName, foreign, nil); !errors.Is(err, cloudprovider.ImplementedElsewhere) {
		t.Errorf("a Service with another controller's addresses: %v, want it left to that controller", err)
	}
	if _, err := lb.EnsureLoadBalancer(ctx, clusterName, lbService("fresh", false, 80), nil); err == nil || !strings.Contains(err.Error(), "no node serves") {
		t.Errorf("a new Service on the port of another controller's, with no node serving: %v", err)
	}
	if st, err := lb.EnsureLoadBalancer(ctx, clusterName, served, nil); err != nil || ips(st) != "10.0.0.1" {
		t.Errorf("a served Service while no node serves: %+v, %v; want it to keep its addresses", st, err)
	}

	// Refused once its port is kone's own (changed since), it is not given addresses back by
	// a node change that comes before the lister shows it refused.
	taker := lbService("taker", true, 6443)
	if _, err := cs.CoreV1().Services("apps").Create(ctx, taker, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := services.Add(taker); err != nil {
		t.Fatal(err)
	}
	if _, err := lb.EnsureLoadBalancer(ctx, clusterName, taker, nil); err == nil {
		t.Fatal("kone's port: no refusal")
	}
	if err := nodes.Add(lbNode("b", nil, internal("10.0.0.2"))); err != nil {
		t.Fatal(err)
	}
	if err := lb.followAll(); err != nil {
		t.Fatal(err)
	}
	if got, _ := cs.CoreV1().Services("apps").Get(ctx, "taker", metav1.GetOptions{}); len(got.Status.LoadBalancer.Ingress) > 0 {
		t.Errorf("a refused Service was given addresses back: %v", ips(&got.Status.LoadBalancer))
	}
	if got, _ := cs.CoreV1().Services("apps").Get(ctx, "served", metav1.GetOptions{}); ips(&got.Status.LoadBalancer) != "10.0.0.2" {
		t.Errorf("a served Service once a node serves again: %v", ips(&got.Status.LoadBalancer))
	}
}
