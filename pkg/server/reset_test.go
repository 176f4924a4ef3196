package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/pki"
)

// A reset is refused up front in a data dir that holds no cluster, before anything is written.
func TestCheckResettable(t *testing.T) {
	cfg := &config.Config{DataDir: t.TempDir(), ClusterReset: true}
	ca := pki.Layout(cfg.TLSDir())
	if err := checkResettable(cfg, ca.ServerCA); err == nil || !strings.Contains(err.Error(), "--data-dir") {
		t.Errorf("a reset in a data dir without certificates: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(ca.ServerCA), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca.ServerCA, []byte("a CA"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkResettable(cfg, ca.ServerCA); err != nil {
		t.Errorf("a reset in a server's data dir: %v", err)
	}
	cfg.ClusterReset = false
	if err := checkResettable(&config.Config{DataDir: t.TempDir()}, ca.ServerCA+".missing"); err != nil {
		t.Errorf("no reset asked for: %v", err)
	}
	// The restore path may name a snapshot in the snapshot directory.
	cfg.ClusterResetRestorePath = "etcd-snapshot-s1-1"
	if got := restoreSource(cfg); got != "etcd-snapshot-s1-1" {
		t.Errorf("a name with no such snapshot: %s", got)
	}
	named := filepath.Join(cfg.SnapshotDir(), "etcd-snapshot-s1-1.db.gz")
	if err := os.MkdirAll(filepath.Dir(named), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(named, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := restoreSource(cfg); got != named {
		t.Errorf("the name of a snapshot: %s, want %s", got, named)
	}
}
