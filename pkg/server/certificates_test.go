package server

import (
	"bytes"
	"context"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
)

// testServer is the configuration of a server with its node side, with a name and address of
// its own, in a temporary data dir.
func testServer(t *testing.T) *config.Config {
	dir := t.TempDir()
	cfg := &config.Config{DataDir: filepath.Join(dir, "data"), WriteKubeconfig: filepath.Join(dir, "kone.yaml"), WriteKubeconfigMode: 0o600,
		HTTPSPort: 6443, ClusterDomain: "cluster.local"}
	cfg.Node.Name, cfg.Node.IP = "n1", net.IPv4(127, 0, 0, 1)
	_, cfg.ServiceCIDR, _ = net.ParseCIDR("10.43.0.0/16")
	return cfg
}

// firstStart issues what a server's first start does.
func firstStart(t *testing.T, certs serverCertificates, now time.Time) {
	t.Helper()
	if err := certs.ca.EnsureAuthorities(now); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.issue(now); err != nil {
		t.Fatal(err)
	}
}

func TestRotateCertificates(t *testing.T) {
	cfg := testServer(t)
	now := time.Now()
	var out bytes.Buffer
	if err := RotateCertificates(cfg, nil, now, &out); err == nil || !strings.Contains(err.Error(), "--data-dir") {
		t.Errorf("a data dir without certificates: %v", err)
	}
	certs := serverCertificates{cfg: cfg, ca: pki.Layout(cfg.TLSDir()), self: node.Identity{Name: cfg.Node.Name, IP: cfg.Node.IP}}
	firstStart(t, certs, now)
	ca := certs.ca
	read := func(path string) string {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	kubelet := nodeLeaf(node.Paths{Agent: cfg.AgentDir()}, kubeletClientLeaf)
	before := map[string]string{}
	for _, f := range []string{ca.Admin.Key, ca.EtcdPeer.Key, ca.Scheduler.Key, kubelet.Key, cfg.WriteKubeconfig} {
		before[f] = read(f)
	}

	if err := RotateCertificates(cfg, []string{"admin", "kubelets"}, now, &out); err == nil || !strings.Contains(err.Error(), "kubelets") || !strings.Contains(err.Error(), "kube-proxy") {
		t.Errorf("an unknown service: %v", err)
	}
	if read(ca.Admin.Key) != before[ca.Admin.Key] {
		t.Fatal("a refused rotation rotated the admin certificate")
	}

	if err := RotateCertificates(cfg, []string{"admin", "etcd", "kubelet"}, now, &out); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ca.Admin.Key, ca.EtcdPeer.Key, kubelet.Key, cfg.WriteKubeconfig} {
		if read(f) == before[f] {
			t.Errorf("%s is the same after the rotation", f)
		}
	}
	if read(ca.Scheduler.Key) != before[ca.Scheduler.Key] {
		t.Error("the scheduler's key changed, though it was not asked for")
	}
	if !strings.Contains(out.String(), "etcd: 3 issued") || !strings.Contains(out.String(), "kubelet: 2 issued") {
		t.Errorf("the output does not say what was issued:\n%s", out.String())
	}
	// The old ones are kept aside, each with its key.
	kept, err := filepath.Glob(filepath.Join(cfg.ServerDir(), "tls-rotated-*", "server", "tls", "client-admin.key"))
	if err != nil || len(kept) != 1 {
		t.Fatalf("the old admin key is not kept aside: %v %v", kept, err)
	}
	if read(kept[0]) != before[ca.Admin.Key] {
		t.Error("what was kept aside is not the old admin key")
	}
	// The new pairs are whole and are the ones the start keeps.
	if issued, err := certs.issue(now); err != nil || len(issued) != 0 {
		t.Errorf("after the rotation a start issues %v (%v), want none", issued, err)
	}

	// A server without its node side has no node certificates to rotate.
	cfg.DisableAgent = true
	out.Reset()
	if err := RotateCertificates(cfg, []string{"flannel", "scheduler"}, now, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "flannel: none") || !strings.Contains(out.String(), "scheduler: 1 issued") {
		t.Errorf("without a node side:\n%s", out.String())
	}
}

// A running server renews what is close to its end: a leaf left with 10 days, and the admin
// kubeconfig that carries a copy of its certificate.
func TestIssueRenews(t *testing.T) {
	cfg := testServer(t)
	now := time.Now()
	certs := serverCertificates{cfg: cfg, ca: pki.Layout(cfg.TLSDir()), self: node.Identity{Name: cfg.Node.Name, IP: cfg.Node.IP}}
	firstStart(t, certs, now.Add(-(pki.LeafValidity - 10*24*time.Hour)))
	admin, _ := os.ReadFile(cfg.WriteKubeconfig)
	issued, err := certs.issue(now)
	if err != nil {
		t.Fatal(err)
	}
	if len(issued) != len(certificateFiles(cfg)) {
		t.Errorf("renewed %d certificates with 10 days left, want all %d: %v", len(issued), len(certificateFiles(cfg)), issued)
	}
	if again, _ := os.ReadFile(cfg.WriteKubeconfig); bytes.Equal(again, admin) {
		t.Error("the admin kubeconfig still holds the old certificate")
	}
	held, err := pki.Inventory(cfg.TLSDir(), node.Paths{Agent: cfg.AgentDir()}.TLSDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range held {
		if !h.IsCA && h.DaysLeft(now) < 300 {
			t.Errorf("%s has %d days left after the renewal", h.File, h.DaysLeft(now))
		}
	}
	// Nothing more to do, nothing written: not even the kubeconfigs.
	info, _ := os.Stat(cfg.WriteKubeconfig)
	if issued, err := certs.issue(now); err != nil || len(issued) != 0 {
		t.Errorf("a second check issued %v (%v)", issued, err)
	}
	if again, _ := os.Stat(cfg.WriteKubeconfig); !again.ModTime().Equal(info.ModTime()) {
		t.Error("a check with nothing to renew rewrote the admin kubeconfig")
	}
}

// certificateFiles are the certificates of every service.
func certificateFiles(cfg *config.Config) map[string]bool {
	files := map[string]bool{}
	for _, fs := range certificateServices(cfg) {
		for _, f := range fs {
			files[f.Cert] = true
		}
	}
	return files
}

// Every leaf certificate that a server issues for itself and its node can be rotated: a
// certificate added later without a service would be left out of `rotate` unnoticed.
func TestEveryLeafHasAService(t *testing.T) {
	cfg := testServer(t)
	certs := serverCertificates{cfg: cfg, ca: pki.Layout(cfg.TLSDir()), self: node.Identity{Name: cfg.Node.Name, IP: cfg.Node.IP}}
	firstStart(t, certs, time.Now())
	held, err := pki.Inventory(cfg.TLSDir(), node.Paths{Agent: cfg.AgentDir()}.TLSDir())
	if err != nil {
		t.Fatal(err)
	}
	rotatable := certificateFiles(cfg)
	leaves := 0
	for _, h := range held {
		if h.IsCA {
			continue
		}
		leaves++
		if !rotatable[h.File] {
			t.Errorf("%s (%s) belongs to no service of `kone certificate rotate`", h.File, h.Subject)
		}
	}
	if leaves != len(rotatable) {
		t.Errorf("found %d leaf certificates, want the %d that services name", leaves, len(rotatable))
	}
}

// rotate-ca without a running kone on the machine is refused, and changes nothing: the
// cluster would never learn the new CAs.
func TestRotateAuthoritiesNeedsARunningServer(t *testing.T) {
	cfg := testServer(t)
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.EtcdClientPort = free.Addr().(*net.TCPAddr).Port
	free.Close()
	certs := serverCertificates{cfg: cfg, ca: pki.Layout(cfg.TLSDir()), self: node.Identity{Name: "n1", IP: net.IPv4(127, 0, 0, 1)}}
	firstStart(t, certs, time.Now())
	before := dataDirFiles(t, cfg.DataDir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = RotateAuthorities(ctx, cfg, time.Now(), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "needs kone running") {
		t.Fatalf("rotate-ca with no server running: %v", err)
	}
	if after := dataDirFiles(t, cfg.DataDir); !maps.Equal(before, after) {
		t.Error("rotate-ca without a running server changed the data dir")
	}
}

// dataDirFiles are the contents of every file under dir, by path.
func dataDirFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		files[path] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
