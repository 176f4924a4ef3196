package server_test

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/token"
)

// checkRotateCA runs `kone certificate rotate-ca` on the running server of a cluster with
// agents that joined before: the apiserver serves a certificate from the new CA, and every
// agent, which trusts only the old CAs, goes on talking to it with the certificates the old
// CAs signed (its node lease is renewed), the apiserver reaches the agents' kubelets (logs of
// pod), a kubeconfig copied before the rotation still works, and the server token is pinned
// to the new CA while the token from before still passes discovery. It returns the new server
// CA.
func checkRotateCA(t *testing.T, n *node, cs kubernetes.Interface, agents []string, pod corev1.Pod) *x509.Certificate {
	t.Helper()
	tlsDir := filepath.Join(n.dataDir, "server", "tls")
	oldCA := readCert(t, filepath.Join(tlsDir, "server-ca.crt"))
	oldToken := readFile(t, filepath.Join(n.dataDir, "server", "token"))
	copied := filepath.Join(t.TempDir(), "copied.kubeconfig")
	if err := os.WriteFile(copied, []byte(readFile(t, n.kubeconfig)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if got := agentCerts(t, a, "server-ca.crt"); len(got) != 1 || !got[0].Equal(oldCA) {
			t.Fatalf("before the rotation, agent %s trusts %d CAs, want the one server CA", a, len(got))
		}
	}

	out := n.run(nil, n.bin, append([]string{"certificate", "rotate-ca"}, n.args()[1:]...)...)
	if !strings.Contains(out, "certificate authorities replaced") {
		t.Fatalf("rotate-ca:\n%s", out)
	}
	rotated := time.Now()
	bundle := fileCerts(t, filepath.Join(tlsDir, "server-ca.crt"))
	newCA := bundle[0]
	if newCA.Equal(oldCA) || len(bundle) != 3 || !bundle[2].Equal(oldCA) {
		t.Fatalf("server-ca.crt after rotate-ca holds %d certificates, the first the old CA: %t", len(bundle), newCA.Equal(oldCA))
	}
	serving := readCert(t, filepath.Join(tlsDir, "serving-kube-apiserver.crt"))
	if serving.CheckSignatureFrom(newCA) != nil {
		t.Fatal("the apiserver's certificate is not signed by the new CA")
	}
	waitServed(t, "apiserver", "127.0.0.1:"+n.https, serving)
	served := time.Now()

	// Every agent's kubelet checked the new certificate with the old CA, and the apiserver took
	// the kubelet's certificate from the old one.
	waitLeasesRenewed(t, cs, agents, served, 40*time.Second, "the apiserver serving a certificate from the new CA")
	for _, a := range agents {
		node, err := cs.CoreV1().Nodes().Get(context.Background(), a, metav1.GetOptions{})
		if err != nil || !nodeReady(node) {
			t.Fatalf("node %s after rotate-ca: ready %t, %v", a, err == nil && nodeReady(node), err)
		}
	}
	// The apiserver reaches the kubelet with its client certificate from the new CA, which the
	// kubelet, trusting the old one, takes through the cross-signed certificate.
	if logs := kubectlEventually(t, n, "logs", "-n", pod.Namespace, pod.Name); logs == "" {
		t.Errorf("no logs of %s on %s after rotate-ca", pod.Name, pod.Spec.NodeName)
	}
	if got := n.run(nil, n.bin, "kubectl", "--kubeconfig", copied, "get", "node", agents[0], "-o", "name"); !strings.Contains(got, agents[0]) {
		t.Errorf("a kubeconfig copied before rotate-ca: %s", got)
	}
	tok := readFile(t, filepath.Join(n.dataDir, "server", "token"))
	if tok == oldToken || !strings.Contains(out, strings.TrimSpace(tok)) {
		t.Errorf("the server token %q was not pinned to the new CA (was %q), or not printed:\n%s", tok, oldToken, out)
	}
	_, oldCred, _ := strings.Cut(oldToken, "::")
	if _, cred, _ := strings.Cut(tok, "::"); cred != oldCred {
		t.Error("rotate-ca changed the server token's secret, not only its pin")
	}
	// A node joining with the token from before (baked into a machine image, say) trusts the
	// new CA, which the one it pins vouches for; with the new token, the new CA alone.
	for _, c := range []struct {
		tok, when string
		want      int
	}{{oldToken, "before", 3}, {tok, "after", 1}} {
		pinned, err := token.Parse(c.tok)
		if err != nil {
			t.Fatal(err)
		}
		ca, err := join.Discover(context.Background(), "https://127.0.0.1:"+n.https, pinned, func(error) {})
		if err != nil {
			t.Errorf("discovery with a token pinned to the CA %s rotate-ca: %v", c.when, err)
			continue
		}
		if got, err := pki.ParseCerts(ca); err != nil || len(got) != c.want || !got[0].Equal(newCA) {
			t.Errorf("discovery with a token pinned to the CA %s rotate-ca trusts %d certificates, want %d, the new CA first", c.when, len(got), c.want)
		}
	}
	t.Logf("rotate-ca: agents renewed their leases %s after the new certificate was served (%s after the command)",
		time.Since(served).Round(100*time.Millisecond), time.Since(rotated).Round(100*time.Millisecond))
	return newCA
}

// agentCerts reads the certificates in a file of agent's TLS directory.
func agentCerts(t *testing.T, agent, name string) []*x509.Certificate {
	t.Helper()
	return fileCerts(t, filepath.Join("/var/lib/kone-nodes", agent, "lib", "kone", "agent", "tls", name))
}

func fileCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCerts(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return certs
}
