package server_test

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// checkLoadBalancer makes web, a Service of the pods that selector picks, into a LoadBalancer
// on port 8081: it gets the node's address and answers there. A second one on the same port
// stays Pending with an Event naming the first, and gets the port once the first is deleted.
func checkLoadBalancer(t *testing.T, cs kubernetes.Interface, ns string, selector map[string]string, nodeIP string) {
	t.Helper()
	ctx := context.Background()
	lb := func(name string) *corev1.Service {
		svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: selector,
				Ports: []corev1.ServicePort{{Port: 8081, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	addresses := func(name string) []string {
		svc, err := cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		var ips []string
		for _, in := range svc.Status.LoadBalancer.Ingress {
			ips = append(ips, in.IP)
		}
		return ips
	}
	waitAddress := func(name string, within time.Duration) {
		t.Helper()
		for deadline := time.Now().Add(within); !slices.Contains(addresses(name), nodeIP); time.Sleep(time.Second) {
			if time.Now().After(deadline) {
				t.Fatalf("LoadBalancer Service %s has addresses %v after %s, want %s among them", name, addresses(name), within, nodeIP)
			}
		}
	}
	lb("web-lb")
	waitAddress("web-lb", 30*time.Second)
	if body := httpGetEventually(t, "http://"+net.JoinHostPort(nodeIP, "8081")+"/"); !strings.Contains(body, "hello from web-") {
		t.Errorf("the LoadBalancer Service on the node's address: %q", body)
	}
	lb("web-lb2")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
		events, _ := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=web-lb2"})
		if events != nil && slices.ContainsFunc(events.Items, func(e corev1.Event) bool {
			return e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, "port TCP/8081 is held by LoadBalancer Service "+ns+"/web-lb")
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Event on web-lb2 naming web-lb within 30 s: %+v", events)
		}
	}
	if ips := addresses("web-lb2"); len(ips) > 0 {
		t.Errorf("a second LoadBalancer Service on a held port got addresses %v", ips)
	}
	if err := cs.CoreV1().Services(ns).Delete(ctx, "web-lb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The service controller tries again with a growing backoff.
	waitAddress("web-lb2", 2*time.Minute)
	if err := cs.CoreV1().Services(ns).Delete(ctx, "web-lb2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}
