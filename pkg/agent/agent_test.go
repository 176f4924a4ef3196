package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
)

// servingPair writes a kubelet serving certificate signed by ca into certDir the way kubelet
// stores it: a timestamped file and the current link to it.
func servingPair(t *testing.T, ca *pki.CA, certDir string) string {
	t.Helper()
	tmp := t.TempDir()
	f := pki.File{Cert: filepath.Join(tmp, "s.crt"), Key: filepath.Join(tmp, "s.key")}
	if _, err := ca.EnsureLeaf(f, pki.LeafSpec{CommonName: "system:node:edge-1", Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	cert, _ := os.ReadFile(f.Cert)
	key, _ := os.ReadFile(f.Key)
	pair := filepath.Join(certDir, "kubelet-server-2026-01-01-00-00-00.pem")
	if err := os.WriteFile(pair, append(cert, key...), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(filepath.Join(certDir, "kubelet-server-current.pem"))
	if err := os.Symlink(pair, filepath.Join(certDir, "kubelet-server-current.pem")); err != nil {
		t.Fatal(err)
	}
	return pair
}

// A serving certificate an earlier kone had signed by the apiserver's CA goes, so that kubelet
// asks for one from the kubelet serving CA; one from any other CA stays.
func TestDropServingFromServerCA(t *testing.T) {
	dir := t.TempDir()
	serverCA, err := pki.EnsureCA(dir, "server-ca", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	servingCA, err := pki.EnsureCA(dir, "kubelet-serving-ca", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certDir := t.TempDir()
	current := filepath.Join(certDir, "kubelet-server-current.pem")

	kept := servingPair(t, servingCA, certDir)
	if err := dropServingFromServerCA(certDir, serverCA.CertFile); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(current); err != nil {
		t.Errorf("a certificate from the kubelet serving CA was removed: %v", err)
	}
	if err := os.Remove(kept); err != nil {
		t.Fatal(err)
	}

	old := servingPair(t, serverCA, certDir)
	if err := dropServingFromServerCA(certDir, serverCA.CertFile); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{current, old} {
		if _, err := os.Lstat(f); !os.IsNotExist(err) {
			t.Errorf("%s from the apiserver's CA is still there: %v", f, err)
		}
	}
	if err := dropServingFromServerCA(certDir, serverCA.CertFile); err != nil {
		t.Errorf("no serving certificate at all: %v", err)
	}
}

// The cluster's CAs reach a joined node through its settings: a new server CA (after a
// rotate-ca) replaces the node's, one from a server that does not publish it leaves the node's
// as it is, and a setting that is not a certificate changes nothing.
func TestTrustTakesTheClusterCAs(t *testing.T) {
	dir := t.TempDir()
	j := joiner{paths: node.Paths{Agent: dir}}
	ca, err := pki.EnsureCA(t.TempDir(), "server-ca", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	caPEM := string(pki.EncodeCert(ca.Cert))
	if err := j.trust(join.Settings{ClientCA: caPEM, ServerCA: caPEM}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{j.clientCA(), j.serverCA()} {
		if data, _ := os.ReadFile(f); string(data) != caPEM {
			t.Errorf("%s does not hold the cluster's CA", f)
		}
	}
	if err := j.trust(join.Settings{ClientCA: caPEM}); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(j.serverCA()); string(data) != caPEM {
		t.Error("settings without a server CA emptied the node's")
	}
	if err := j.trust(join.Settings{ClientCA: caPEM, ServerCA: "not a certificate"}); err == nil {
		t.Error("a server CA that is no certificate was taken")
	}
	if data, _ := os.ReadFile(j.serverCA()); string(data) != caPEM {
		t.Error("a bad server CA replaced the node's")
	}
}

// `kone certificate rotate` on an agent refuses, changing nothing, where it cannot finish: an
// unknown service, a data dir of no joined agent, a cluster that does not answer.
func TestRotateCertificatesRefuses(t *testing.T) {
	dataDir := t.TempDir()
	paths := node.Paths{Agent: filepath.Join(dataDir, "agent")}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := "https://" + l.Addr().String()
	l.Close()
	cfg := &config.Config{DataDir: dataDir, Server: gone, Node: config.Node{Name: "edge-1", IP: net.ParseIP("192.0.2.10")}}
	rotate := func(services ...string) error {
		return RotateCertificates(context.Background(), cfg, services, time.Now(), io.Discard)
	}
	if err := rotate("etcd"); err == nil || !strings.Contains(err.Error(), "coredns, flannel, kube-proxy, kubelet") {
		t.Errorf("--service etcd: %v", err)
	}
	if err := rotate(); err == nil || !strings.Contains(err.Error(), "no joined agent") {
		t.Errorf("a data dir with no agent: %v", err)
	}

	ca, err := pki.EnsureCA(paths.TLSDir(), "server-ca", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	client := pki.File{Cert: filepath.Join(paths.TLSDir(), "client-kube-proxy.crt"), Key: filepath.Join(paths.TLSDir(), "client-kube-proxy.key")}
	if _, err := ca.EnsureLeaf(client, pki.LeafSpec{CommonName: "system:kube-proxy", Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	kubelet := pki.File{Cert: filepath.Join(paths.KubeletCertDir(), "kubelet-client-current.pem"), Key: filepath.Join(paths.KubeletCertDir(), "kubelet.key")}
	if _, err := ca.EnsureLeaf(kubelet, pki.LeafSpec{CommonName: "system:node:edge-1", Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := join.LoadOrCreateSecret(paths.NodeSecret()); err != nil {
		t.Fatal(err)
	}
	kubeconfig := pki.Kubeconfig{Server: "https://127.0.0.1:6444", CAFile: filepath.Join(paths.TLSDir(), "server-ca.crt"), Client: client}
	if err := kubeconfig.Write(filepath.Join(paths.Agent, "kubelet.kubeconfig"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadDir(paths.Agent)
	if err != nil {
		t.Fatal(err)
	}
	certBefore, _ := os.ReadFile(client.Cert)
	if err := rotate(); err == nil || !strings.Contains(err.Error(), "does not answer at "+gone) || !strings.Contains(err.Error(), "nothing changed") {
		t.Errorf("a cluster that does not answer: %v", err)
	}
	// Nothing kept aside, no lock file, the certificate as it was.
	after, _ := os.ReadDir(paths.Agent)
	if certAfter, _ := os.ReadFile(client.Cert); len(after) != len(before) || !bytes.Equal(certAfter, certBefore) {
		t.Errorf("a refused rotation changed the agent's data: %v, then %v", before, after)
	}
}
