package dns

import (
	"net"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestCorefile(t *testing.T) {
	c := Config{ClusterDomain: "cluster.local", Kubeconfig: "/k/coredns.kubeconfig", Upstream: "/etc/resolv.conf"}
	text, err := Corefile(c, net.ParseIP("10.42.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"bind 10.42.0.1", "kubernetes cluster.local in-addr.arpa ip6.arpa", "kubeconfig /k/coredns.kubeconfig default",
		"forward . /etc/resolv.conf", "cache 30"} {
		if !strings.Contains(text, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "loop") {
		t.Error("the loop plugin would end kone on a forwarding loop")
	}
}

// The kube-dns Service is in manifests/coredns.yaml; its test checks that its ports pair with these.
func TestEndpoints(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-1", UID: "u-1"}}
	es := EndpointSlice(node, net.ParseIP("10.42.0.1"))
	if es.Labels["kubernetes.io/service-name"] != ServiceName || es.Namespace != Namespace {
		t.Errorf("slice labels: %v", es.Labels)
	}
	if len(es.Endpoints) != 1 || es.Endpoints[0].Addresses[0] != "10.42.0.1" || *es.Endpoints[0].NodeName != "edge-1" {
		t.Errorf("endpoints: %+v", es.Endpoints)
	}
	if es.OwnerReferences[0].Kind != "Node" || es.OwnerReferences[0].UID != "u-1" {
		t.Errorf("owner: %+v", es.OwnerReferences)
	}
}
