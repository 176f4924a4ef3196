package server

import (
	"bytes"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/datadir"
	"github.com/kone-dev/kone/pkg/pki"
)

func TestRotateCertificates(t *testing.T) {
	cfg := &config.Config{DataDir: t.TempDir()}
	now := time.Now()
	var out bytes.Buffer
	if err := RotateCertificates(cfg, nil, now, &out); err == nil || !strings.Contains(err.Error(), "--data-dir") {
		t.Errorf("a data dir without certificates: %v", err)
	}
	ca := pki.Layout(cfg.TLSDir())
	names := pki.Names{DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}
	if _, err := ca.Ensure(names, names, names, now); err != nil {
		t.Fatal(err)
	}
	oldAdmin, _ := os.ReadFile(ca.Admin.Key)

	if err := RotateCertificates(cfg, []string{"admin", "kubelets"}, now, &out); err == nil || !strings.Contains(err.Error(), "kubelets") || !strings.Contains(err.Error(), "kube-proxy") {
		t.Errorf("an unknown service: %v", err)
	}
	lock, err := datadir.Acquire(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := RotateCertificates(cfg, []string{"admin"}, now, &out); err == nil || !strings.Contains(err.Error(), "stop") {
		t.Errorf("while kone runs: %v", err)
	}
	lock.Release()
	if _, err := os.Stat(ca.Admin.Cert); err != nil {
		t.Fatalf("refused rotations moved the admin certificate: %v", err)
	}

	if err := RotateCertificates(cfg, []string{"admin", "etcd"}, now, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "tls-rotated-") {
		t.Errorf("the output does not say where the old certificates went:\n%s", out.String())
	}
	issued, err := ca.Ensure(names, names, names, now)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(issued)
	want := []string{ca.Admin.Cert, ca.APIServerEtcd.Cert, ca.EtcdPeer.Cert, ca.EtcdServing.Cert}
	slices.Sort(want)
	if !slices.Equal(issued, want) {
		t.Errorf("the next start issued %v, want %v", issued, want)
	}
	if newAdmin, _ := os.ReadFile(ca.Admin.Key); bytes.Equal(newAdmin, oldAdmin) {
		t.Error("the rotated admin certificate kept its key")
	}
}
