package server_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// etcdSnapshot runs `kone etcd-snapshot ARGS...` with the server's own settings.
func etcdSnapshot(n *node, args ...string) string {
	n.t.Helper()
	return n.run(nil, n.bin, append(append([]string{"etcd-snapshot"}, args...), n.args()[1:]...)...)
}

// listed returns the names `kone etcd-snapshot ls` prints that start with prefix.
func listed(n *node, prefix string) []string {
	n.t.Helper()
	var names []string
	for _, line := range strings.Split(etcdSnapshot(n, "ls"), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			names = append(names, f[0])
		}
	}
	return names
}

// TestEtcdSnapshots: scheduled snapshots keep exactly the retention, on-demand ones are saved,
// listed, deleted and pruned, and the API lists what the directory holds.
func TestEtcdSnapshots(t *testing.T) {
	bin := koneBinary(t)
	n := newNode(t, bin, t.TempDir())
	n.extra = []string{"--etcd-snapshot-schedule-cron", "*/2 * * * * *", "--etcd-snapshot-retention", "2"}
	n.start()
	cs := n.client()
	ctx := context.Background()
	dir := filepath.Join(n.dataDir, "server", "db", "snapshots")

	// A schedule every two seconds: after ten, two scheduled snapshots, and newer ones than
	// those seen first.
	var first []string
	deadline := time.Now().Add(time.Minute)
	for len(first) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Second)
		first = listed(n, "etcd-snapshot-")
	}
	if len(first) != 2 {
		t.Fatalf("scheduled snapshots after a minute: %v\n%s", first, n.log.String())
	}
	// A listing taken between a save and its prune shows one more: the two newest, in time.
	var later []string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		if later = listed(n, "etcd-snapshot-"); len(later) == 2 && !slices.Contains(later, first[0]) && !slices.Contains(later, first[1]) {
			break
		}
	}
	if len(later) != 2 || slices.Contains(later, first[0]) || slices.Contains(later, first[1]) {
		t.Fatalf("scheduled snapshots later: %v (first %v); want the 2 newest", later, first)
	}
	if left, err := os.ReadDir(dir); err != nil || len(left) > 8 {
		t.Errorf("the snapshot directory holds %d files (%v): pruned snapshots leave files behind", len(left), err)
	}

	out := etcdSnapshot(n, "save", "--name", "before-upgrade")
	if !strings.Contains(out, "saved snapshot before-upgrade-") || !strings.Contains(out, dir) {
		t.Fatalf("save: %s", out)
	}
	saved := listed(n, "before-upgrade-")
	if len(saved) != 1 {
		t.Fatalf("ls after save: %v", saved)
	}
	inAPI := func(name string) bool {
		cm, err := cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "kone-etcd-snapshots", metav1.GetOptions{})
		return err == nil && cm.Data[name] != ""
	}
	if !inAPI(saved[0]) {
		t.Errorf("the API does not list %s", saved[0])
	}

	for range 3 {
		etcdSnapshot(n, "save", "--name", "pr")
		time.Sleep(1100 * time.Millisecond) // names are made to the second
	}
	if out := etcdSnapshot(n, "prune", "--name", "pr", "--retention", "1"); strings.Count(out, "deleted snapshot pr-") != 2 {
		t.Errorf("prune to 1 of 3:\n%s", out)
	}
	if left := listed(n, "pr-"); len(left) != 1 {
		t.Errorf("after prune: %v", left)
	}
	if left := listed(n, "before-upgrade-"); len(left) != 1 {
		t.Errorf("prune of pr took another name's snapshot: %v", left)
	}

	etcdSnapshot(n, "delete", saved[0])
	if slices.Contains(listed(n, "before-upgrade-"), saved[0]) || inAPI(saved[0]) {
		t.Errorf("%s is still listed after delete", saved[0])
	}
	out = n.runFail(append([]string{"etcd-snapshot", "delete", "no-such-snapshot"}, n.args()[1:]...)...)
	if !strings.Contains(out, "no snapshot named no-such-snapshot") {
		t.Errorf("delete of a snapshot that does not exist:\n%s", out)
	}
}
