package server_test

import (
	"context"
	"crypto/x509/pkix"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate/csr"
	"k8s.io/client-go/util/keyutil"

	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/pki"
)

// tokenClient is what any machine holding the join token tok can do with the server.
func tokenClient(t *testing.T, n *node, tok string) kubernetes.Interface {
	t.Helper()
	_, cred, _ := strings.Cut(tok, "::")
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: "https://127.0.0.1:" + n.https, BearerToken: cred,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true}, Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// requestRaw asks signer for a certificate for subject with no proof of any node secret, as a
// kubelet's own TLS bootstrap or a hand-made request would, and returns how it ended.
func requestRaw(t *testing.T, cs kubernetes.Interface, signer string, subject pkix.Name, dns []string, ips []net.IP, usage certificatesv1.KeyUsage) error {
	t.Helper()
	keyPEM, err := keyutil.MakeEllipticPrivateKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := keyutil.ParsePrivateKeyPEM(keyPEM)
	req, err := certutil.MakeCSR(key, &subject, dns, ips)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	created, err := cs.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "thief-"},
		Spec: certificatesv1.CertificateSigningRequestSpec{Request: req, SignerName: signer,
			Usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, usage}},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	_, err = csr.WaitForCertificate(ctx, cs, created.Name, created.UID)
	return err
}

// checkIdentityTheft: a third machine holding a valid join token asks, by every route, for the
// identities of a node that has joined. Every request is refused, with the reason; so is a
// fresh `kone agent` (a reinstall: its node secret is gone) that asks for the node's name.
func checkIdentityTheft(t *testing.T, n *node, tok, victim, victimIP string) {
	t.Helper()
	thief := tokenClient(t, n, tok)
	secret, err := join.LoadOrCreateSecret(filepath.Join(t.TempDir(), "node-secret.key"))
	if err != nil {
		t.Fatal(err)
	}
	const held = "held by another machine, or this machine has lost the node secret"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := join.KubeletCertificate(ctx, thief, t.TempDir(), victim, secret); err == nil || !strings.Contains(err.Error(), held) {
		t.Errorf("another secret asking for %s's kubelet client certificate: %v, want a denial saying %q", victim, err, held)
	}
	for _, component := range []string{join.ProxyUser, join.DNSGroup, join.FlannelGroup, join.StorageGroup} {
		dir := t.TempDir()
		f := pki.File{Cert: filepath.Join(dir, "c.crt"), Key: filepath.Join(dir, "c.key")}
		if err := join.ClientCertificate(ctx, thief, f, component, victim, secret); err == nil || !strings.Contains(err.Error(), held) {
			t.Errorf("another secret asking for %s's %s certificate: %v, want a denial saying %q", victim, component, err, held)
		}
	}
	err = requestRaw(t, thief, certificatesv1.KubeAPIServerClientKubeletSignerName, join.KubeletSubject(victim), nil, nil, certificatesv1.UsageClientAuth)
	if err == nil || !strings.Contains(err.Error(), "no proof of the node's secret") {
		t.Errorf("kubelet's own bootstrap request for %s's client certificate: %v", victim, err)
	}
	err = requestRaw(t, thief, certificatesv1.KubeletServingSignerName, join.KubeletSubject(victim), []string{victim},
		[]net.IP{net.ParseIP(victimIP)}, certificatesv1.UsageServerAuth)
	if err == nil || !strings.Contains(err.Error(), "asked for by its own node") {
		t.Errorf("a token holder asking for %s's serving certificate: %v", victim, err)
	}

	// A reinstalled machine has no secret: kone agent is refused and says what to do.
	cmdCtx, cancelCmd := context.WithTimeout(context.Background(), time.Minute)
	defer cancelCmd()
	out, err := exec.CommandContext(cmdCtx, n.bin, "agent", "--data-dir", t.TempDir(), "--server", "https://127.0.0.1:"+n.https,
		"--token", tok, "--node-name", victim).CombinedOutput()
	if err == nil || !strings.Contains(string(out), held) || !strings.Contains(string(out), "kubectl delete node "+victim) {
		t.Errorf("a reinstalled %s joining without its secret: %v\n%s", victim, err, out)
	}
}

// checkIdentityAfterDelete: once a node is deleted, its name is free for the next machine.
func checkIdentityAfterDelete(t *testing.T, n *node, cs kubernetes.Interface, tok, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	secret, err := join.LoadOrCreateSecret(filepath.Join(t.TempDir(), "node-secret.key"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pair, err := join.KubeletCertificate(ctx, tokenClient(t, n, tok), dir, name, secret)
	if err != nil {
		t.Fatalf("a new machine taking the name of the deleted node %s: %v", name, err)
	}
	if !join.Valid(pki.File{Cert: pair, Key: pair}, join.KubeletSubject(name), time.Now(), 0) {
		t.Errorf("the new machine's kubelet certificate in %s is not for %s", pair, name)
	}
	if _, err := os.Stat(filepath.Join(dir, "kubelet-client-current.pem")); err != nil {
		t.Errorf("the kubelet certificate is not where kubelet looks for it: %v", err)
	}
}

// checkServingForServers: a node, with its own credentials (root on that machine), asks for a
// serving certificate under a server's address or the first service IP, which would let it
// pass for the apiserver; both are refused.
func checkServingForServers(t *testing.T, n *node, agent string, serverIPs ...string) {
	t.Helper()
	// The current pair is a link to a path inside the node's mount namespace.
	dir := filepath.Join("/var/lib/kone-nodes", agent, "lib", "kone", "agent", "kubelet", "pki")
	target, err := os.Readlink(filepath.Join(dir, "kubelet-client-current.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pair := filepath.Join(dir, filepath.Base(target))
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: "https://127.0.0.1:" + n.https,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true, CertFile: pair, KeyFile: pair}, Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range serverIPs {
		err := requestRaw(t, cs, certificatesv1.KubeletServingSignerName, join.KubeletSubject(agent), []string{agent},
			[]net.IP{net.ParseIP(ip)}, certificatesv1.UsageServerAuth)
		if err == nil || !strings.Contains(err.Error(), "belongs to the cluster's servers") {
			t.Errorf("node %s asking for a serving certificate for %s: %v", agent, ip, err)
		}
	}
}
