package server_test

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/pki"
)

// checkOwnNodeOnly: the flannel and CoreDNS identities of node edge-a, as the server issues
// them, do what their component needs on edge-a and nothing on edge-b.
func checkOwnNodeOnly(t *testing.T, n *node) {
	t.Helper()
	ctx := context.Background()
	admin := n.client()
	for _, name := range []string{"edge-a", "edge-b"} {
		if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer admin.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	}
	tlsDir := filepath.Join(n.dataDir, "server", "tls")
	clientCA, err := pki.EnsureCA(tlsDir, "client-ca", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	as := func(component string) kubernetes.Interface {
		s := join.Subject(component, "edge-a")
		f := pki.File{Cert: filepath.Join(t.TempDir(), "c.crt"), Key: filepath.Join(t.TempDir(), "c.key")}
		if _, err := clientCA.EnsureLeaf(f, pki.LeafSpec{CommonName: s.CommonName, Organization: s.Organization,
			Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, time.Now()); err != nil {
			t.Fatal(err)
		}
		cs, err := kubernetes.NewForConfig(&rest.Config{Host: "https://127.0.0.1:" + n.https, TLSClientConfig: rest.TLSClientConfig{
			CAFile: filepath.Join(tlsDir, "server-ca.crt"), CertFile: f.Cert, KeyFile: f.Key}})
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}
	// expect waits for the admission policies, which the apiserver loads a moment after kone
	// creates them, to give the wanted answer: allowed, or forbidden saying deny.
	expect := func(what, deny string, call func() error) {
		t.Helper()
		var err error
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
			err = call()
			if deny == "" && err == nil || deny != "" && apierrors.IsForbidden(err) && strings.Contains(err.Error(), deny) {
				return
			}
		}
		if deny == "" {
			t.Errorf("%s: want it allowed, got %v", what, err)
		} else {
			t.Errorf("%s: want it forbidden (%q), got %v", what, deny, err)
		}
	}

	flannel := as(join.FlannelGroup).CoreV1().Nodes()
	patch := func(node, body string, sub ...string) func() error {
		return func() error {
			_, err := flannel.Patch(ctx, node, types.StrategicMergePatchType, []byte(body), metav1.PatchOptions{}, sub...)
			return err
		}
	}
	annotate := `{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"192.0.2.1"}}}`
	condition := `{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp"}]}}`
	expect("flannel annotating its own node", "", patch("edge-a", annotate))
	expect("flannel setting its own node's network condition", "", patch("edge-a", condition, "status"))
	expect("flannel annotating another node", "only its own node", patch("edge-b", annotate))
	expect("flannel setting another node's condition", "only its own node", patch("edge-b", condition, "status"))
	expect("flannel labelling its own node", "neither a node's spec nor its labels", patch("edge-a", `{"metadata":{"labels":{"x":"y"}}}`))
	expect("flannel cordoning its own node", "neither a node's spec nor its labels", patch("edge-a", `{"spec":{"unschedulable":true}}`))
	expect("flannel deleting its own node", "cannot delete", func() error { return flannel.Delete(ctx, "edge-a", metav1.DeleteOptions{}) })

	slices := as(join.DNSGroup).DiscoveryV1().EndpointSlices("kube-system")
	slice := func(name, service string) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system",
			Labels: map[string]string{discoveryv1.LabelServiceName: service}}, AddressType: discoveryv1.AddressTypeIPv4}
	}
	create := func(s *discoveryv1.EndpointSlice) func() error {
		return func() error { _, err := slices.Create(ctx, s, metav1.CreateOptions{}); return err }
	}
	expect("CoreDNS publishing another node's endpoint", "only its own node's endpoints", create(slice("kube-dns-edge-b", "kube-dns")))
	expect("CoreDNS publishing endpoints under another name", "only its own node's endpoints", create(slice("metrics-server-x", "kube-dns")))
	expect("CoreDNS publishing endpoints of another Service", "only endpoints of kube-dns", create(slice("kube-dns-edge-a", "metrics-server")))
	expect("CoreDNS publishing its own node's endpoint", "", create(slice("kube-dns-edge-a", "kube-dns")))
	expect("CoreDNS moving its slice to another Service", "only endpoints of kube-dns", func() error {
		s, err := slices.Get(ctx, "kube-dns-edge-a", metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Labels[discoveryv1.LabelServiceName] = "metrics-server"
		_, err = slices.Update(ctx, s, metav1.UpdateOptions{})
		return err
	})
	_ = admin.DiscoveryV1().EndpointSlices("kube-system").Delete(ctx, "kube-dns-edge-a", metav1.DeleteOptions{})
}
