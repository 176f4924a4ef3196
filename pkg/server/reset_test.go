package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/pki"
)

// A reset is refused up front in a data dir that holds no cluster, unless it can take the
// cluster from the snapshot with the token, before anything is written.
func TestPrepareReset(t *testing.T) {
	cfg := &config.Config{DataDir: t.TempDir(), ClusterReset: true}
	ca := pki.Layout(cfg.TLSDir())
	if err := prepareReset(cfg, ca, logrus.New()); err == nil || !strings.Contains(err.Error(), "--cluster-reset-restore-path") {
		t.Errorf("a reset of its own data in a data dir without a cluster: %v", err)
	}
	cfg.ClusterResetRestorePath = "/nonexistent/s.db.gz"
	if err := prepareReset(cfg, ca, logrus.New()); err == nil || !strings.Contains(err.Error(), "--token") {
		t.Errorf("a restore in a data dir without a cluster, without --token: %v", err)
	}
	cfg.Token = "a-passphrase-of-some-length"
	if err := prepareReset(cfg, ca, logrus.New()); err == nil || !strings.Contains(err.Error(), "/nonexistent/s.db.gz") {
		t.Errorf("a restore of a missing snapshot: %v", err)
	}
	if entries, _ := os.ReadDir(cfg.ServerDir()); len(entries) != 1 || entries[0].Name() != "db" {
		t.Errorf("refused restores left files behind: %v", entries)
	}
	if entries, _ := os.ReadDir(filepath.Join(cfg.ServerDir(), "db")); len(entries) != 0 {
		t.Errorf("refused restores left files behind in db: %v", entries)
	}
	cfg.Token, cfg.ClusterResetRestorePath = "", ""
	if err := os.MkdirAll(filepath.Dir(ca.ServerCA), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca.ServerCA, []byte("a CA"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := prepareReset(cfg, ca, logrus.New()); err != nil {
		t.Errorf("a reset in a server's data dir: %v", err)
	}
	cfg.ClusterReset = false
	if err := prepareReset(&config.Config{DataDir: t.TempDir()}, ca, logrus.New()); err != nil {
		t.Errorf("no reset asked for: %v", err)
	}
	// A data dir that took the cluster's files for a restore that did not happen stays unusable
	// without one.
	if err := os.WriteFile(restorePendingFile(cfg), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := prepareReset(cfg, ca, logrus.New()); err == nil || !strings.Contains(err.Error(), "--cluster-reset") {
		t.Errorf("a start of a data dir whose restore did not happen: %v", err)
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
