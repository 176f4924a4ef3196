package agent

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

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
