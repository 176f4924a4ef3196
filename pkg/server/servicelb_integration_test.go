package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kone-dev/kone/pkg/cloud"
)

// checkLoadBalancer makes web, a Service of the pods that selector picks, into a LoadBalancer
// on port 8081: it gets the node's address and answers there. A second one on the same port
// stays Pending with an Event naming the first, and gets the port once the first is deleted;
// one that asks for kubelet's port is refused, and kubelet still answers there.
func checkLoadBalancer(t *testing.T, cs kubernetes.Interface, ns string, selector map[string]string, nodeIP string) {
	t.Helper()
	ctx := context.Background()
	lb := func(name string, port int32) { createLoadBalancer(t, cs, ns, name, selector, port) }
	addresses := func(name string) []string { return loadBalancerAddresses(cs, ns, name) }
	waitAddress := func(name string, within time.Duration) {
		t.Helper()
		for deadline := time.Now().Add(within); !slices.Contains(addresses(name), nodeIP); time.Sleep(time.Second) {
			if time.Now().After(deadline) {
				t.Fatalf("LoadBalancer Service %s has addresses %v after %s, want %s among them", name, addresses(name), within, nodeIP)
			}
		}
	}
	lb("web-lb", 8081)
	waitAddress("web-lb", 30*time.Second)
	if svc, err := cs.CoreV1().Services(ns).Get(ctx, "web-lb", metav1.GetOptions{}); err != nil || svc.Annotations[cloud.ServedAnnotation] != "true" {
		t.Errorf("a Service kone gave addresses is not marked %s: %v", cloud.ServedAnnotation, err)
	}
	if body := httpGetEventually(t, "http://"+net.JoinHostPort(nodeIP, "8081")+"/"); !strings.Contains(body, "hello from web-") {
		t.Errorf("the LoadBalancer Service on the node's address: %q", body)
	}
	waitWarning := func(name, says string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
			events, _ := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
			if events != nil && slices.ContainsFunc(events.Items, func(e corev1.Event) bool {
				return e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, says)
			}) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no Warning Event on %s saying %q within 30 s: %+v", name, says, events)
			}
		}
	}
	lb("web-lb2", 8081)
	waitWarning("web-lb2", "port TCP/8081 is held by LoadBalancer Service "+ns+"/web-lb")
	if ips := addresses("web-lb2"); len(ips) > 0 {
		t.Errorf("a second LoadBalancer Service on a held port got addresses %v", ips)
	}

	// kubelet's port on the node's address stays kubelet's.
	lb("kubelet-lb", 10250)
	waitWarning("kubelet-lb", "port TCP/10250 is kone's own on every node (kubelet)")
	if ips := addresses("kubelet-lb"); len(ips) > 0 {
		t.Errorf("a LoadBalancer Service on kubelet's port has addresses %v", ips)
	}
	// The web pods answer plain HTTP: a TLS handshake there is kubelet's.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(nodeIP, "10250"), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Errorf("kubelet on the node's address, beside a LoadBalancer Service refused its port: %v", err)
	} else {
		conn.Close()
	}

	if err := cs.CoreV1().Services(ns).Delete(ctx, "web-lb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// A refused Service is tried again every 15 s.
	waitAddress("web-lb2", 45*time.Second)
	for _, name := range []string{"web-lb2", "kubelet-lb"} {
		if err := cs.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// checkLoadBalancerNodes makes a LoadBalancer Service of the pods that selector picks: it gets
// every node's addresses (all) and answers on those in reach, then has only marked's (at
// markedIP) once that node is labelled to serve, and all again once the label goes.
func checkLoadBalancerNodes(t *testing.T, cs kubernetes.Interface, ns string, selector map[string]string, all, reach []string, marked, markedIP string) {
	t.Helper()
	ctx := context.Background()
	createLoadBalancer(t, cs, ns, "nodes-lb", selector, 8090)
	addresses := func() []string { return loadBalancerAddresses(cs, ns, "nodes-lb") }
	want := func(ips []string, why string) {
		t.Helper()
		ips = slices.Sorted(slices.Values(ips))
		for deadline := time.Now().Add(30 * time.Second); !slices.Equal(addresses(), ips); time.Sleep(time.Second) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the LoadBalancer Service has addresses %v, want %v", why, addresses(), ips)
			}
		}
	}
	label := func(value *string) {
		t.Helper()
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, cloud.LBNodeLabel)
		if value != nil {
			patch = fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, cloud.LBNodeLabel, *value)
		}
		if _, err := cs.CoreV1().Nodes().Patch(ctx, marked, k8stypes.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	want(all, "every node serves")
	for _, ip := range reach {
		if body := httpGetEventually(t, "http://"+net.JoinHostPort(ip, "8090")+"/"); !strings.Contains(body, "hello from web-") {
			t.Errorf("the LoadBalancer Service on %s: %q", ip, body)
		}
	}
	yes := "true"
	label(&yes)
	want([]string{markedIP}, "once "+marked+" is labelled "+cloud.LBNodeLabel+"=true")
	if body := httpGetEventually(t, "http://"+net.JoinHostPort(markedIP, "8090")+"/"); !strings.Contains(body, "hello from web-") {
		t.Errorf("the LoadBalancer Service on %s: %q", markedIP, body)
	}
	label(nil)
	want(all, "once the label is gone")
	if err := cs.CoreV1().Services(ns).Delete(ctx, "nodes-lb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createLoadBalancer creates name, a LoadBalancer Service on port of the pods that selector
// picks, which serve on 8080.
func createLoadBalancer(t *testing.T, cs kubernetes.Interface, ns, name string, selector map[string]string, port int32) {
	t.Helper()
	if _, err := cs.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: selector,
			Ports: []corev1.ServicePort{{Port: port, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// loadBalancerAddresses are the addresses in Service name's status, in order; none if it cannot
// be read.
func loadBalancerAddresses(cs kubernetes.Interface, ns, name string) []string {
	svc, err := cs.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	var ips []string
	for _, in := range svc.Status.LoadBalancer.Ingress {
		ips = append(ips, in.IP)
	}
	slices.Sort(ips)
	return ips
}
