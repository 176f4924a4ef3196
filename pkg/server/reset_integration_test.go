package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// dirState lists the files under dir with their sizes and times, and the directories: what a
// refused reset must leave as it was (it may add and remove files of its own meanwhile).
func dirState(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		switch {
		case err != nil:
		case info.IsDir():
			lines = append(lines, fmt.Sprint(p, " ", info.Mode()))
		default:
			lines = append(lines, fmt.Sprint(p, " ", info.ModTime(), " ", info.Mode(), " ", info.Size()))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// TestClusterReset restores a snapshot into a server whose node runs pods: the pod from
// before the snapshot is adopted with its container, what was created after it is gone, and
// the restore is refused while the server runs, from a damaged file, from another cluster's
// snapshot, with other networks than the snapshot's, and a second time. Then it rotates certificates while the server is stopped.
func TestClusterReset(t *testing.T) {
	bin := koneBinary(t)
	n, cs, _ := startNodeServer(t, bin)
	ctx := context.Background()
	ns := "kone-node-it" // which teardownNode drains
	sleeper := func(name string) { startSleeper(t, cs, ns, name) }
	sleeper("kept")
	waitPodsRunning(t, cs, ns, 1)
	kept := containerIDs(t, cs, ns)
	etcdSnapshot(n, "save", "--name", "before")
	saved := listed(n, "before-")
	if len(saved) != 1 {
		t.Fatalf("ls: %v", saved)
	}

	sleeper("later")
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "later"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := waitPodsRunning(t, cs, ns, 2)
	var later string
	for _, p := range pods {
		if p.Name == "later" {
			later = strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
		}
	}
	reset := []string{"--cluster-reset", "--cluster-reset-restore-path", saved[0]}

	// While the server runs on the data dir: refused, nothing touched.
	db := filepath.Join(n.dataDir, "server", "db")
	if out := n.runFail(n.args(reset...)...); !strings.Contains(out, "already using data dir") {
		t.Errorf("a reset while the server runs:\n%s", out)
	}
	n.stop()
	state := dirState(t, db)

	// A snapshot of another cluster: a server of its own saves one.
	other := newNode(t, bin, t.TempDir())
	other.start()
	etcdSnapshot(other, "save", "--name", "other")
	foreign := filepath.Join(other.dataDir, "server", "db", "snapshots", listed(other, "other-")[0]+".db.gz")
	other.stop()
	whole, err := os.ReadFile(filepath.Join(db, "snapshots", saved[0]+".db.gz"))
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.db.gz")
	if err := os.WriteFile(cut, whole[:len(whole)*2/3], 0o600); err != nil {
		t.Fatal(err)
	}
	for _, refused := range []struct{ file, want string }{
		{foreign, "another cluster"},
		{cut, "truncated or corrupt"},
		{filepath.Join(db, "snapshots", "no-such.db.gz"), "no-such.db.gz"},
	} {
		out := n.runFail(n.args("--cluster-reset", "--cluster-reset-restore-path", refused.file)...)
		if !strings.Contains(out, refused.want) {
			t.Errorf("restore of %s: want %q in:\n%s", refused.file, refused.want, out)
		}
	}
	// This cluster's snapshot, into a server given other networks than the cluster's.
	if out := n.runFail(n.args(append(reset, "--cluster-cidr", "10.99.0.0/16")...)...); !strings.Contains(out, "--cluster-cidr is 10.99.0.0/16 here but") {
		t.Errorf("a restore with another --cluster-cidr:\n%s", out)
	}
	if now := dirState(t, db); now != state {
		t.Errorf("refused restores changed %s:\nbefore:\n%s\nafter:\n%s", db, state, now)
	}

	// The restore.
	n.extra = reset
	n.start()
	if !strings.Contains(n.log.String(), "etcd was reset") {
		t.Errorf("the log does not say that etcd was reset:\n%s", n.log.String())
	}
	if aside, _ := filepath.Glob(filepath.Join(db, "reset-*", "etcd", "member")); len(aside) != 1 {
		t.Errorf("the replaced etcd data is not kept aside: %v", aside)
	}
	if _, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "later", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a ConfigMap created after the snapshot survived the restore: %v", err)
	}
	var gone bool
	for deadline := time.Now().Add(2 * time.Minute); !gone && time.Now().Before(deadline); time.Sleep(time.Second) {
		_, err := cs.CoreV1().Pods(ns).Get(ctx, "later", metav1.GetOptions{})
		tasks := n.run(nil, bin, "ctr", "-n", "k8s.io", "tasks", "ls")
		gone = apierrors.IsNotFound(err) && !strings.Contains(tasks, later[:12])
	}
	if !gone {
		t.Errorf("the pod created after the snapshot, or its container %s, is still there", later)
	}
	waitPodsRunning(t, cs, ns, 1)
	time.Sleep(5 * time.Second) // long enough for kubelet to have replaced a container it did not adopt
	if after := containerIDs(t, cs, ns); strings.Join(after, ",") != strings.Join(kept, ",") {
		t.Errorf("the pod from before the snapshot was not adopted:\nbefore %v\nafter  %v", kept, after)
	}
	// The cluster takes writes.
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "after-restore"}}, metav1.CreateOptions{}); err != nil {
		t.Errorf("a write after the restore: %v", err)
	}

	// Asked again, with the flags still given: refused, until a start without them.
	n.stop()
	if out := n.runFail(n.args(reset...)...); !strings.Contains(out, "reset already") || !strings.Contains(out, "remove --cluster-reset") {
		t.Errorf("a second reset:\n%s", out)
	}
	oldAdmin, err := os.ReadFile(n.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kubeletCert := filepath.Join(n.dataDir, "agent", "tls", "client-kubelet.crt")
	oldKubelet, err := os.ReadFile(kubeletCert)
	if err != nil {
		t.Fatal(err)
	}
	// Certificates rotated while kone is stopped are the ones its next start uses.
	n.run(nil, bin, append([]string{"certificate", "rotate", "--service", "admin", "--service", "kubelet"}, n.args()[1:]...)...)
	n.extra = nil
	restarted := time.Now()
	n.start()
	if newAdmin, _ := os.ReadFile(n.kubeconfig); string(newAdmin) == string(oldAdmin) {
		t.Error("the admin kubeconfig has the same certificate after certificate rotate")
	}
	if newKubelet, _ := os.ReadFile(kubeletCert); string(newKubelet) == string(oldKubelet) {
		t.Error("the kubelet's client certificate is the same after certificate rotate")
	}
	// The new admin certificate works, and so does the node's kubelet with its new one.
	cs = n.client()
	if _, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "after-restore", metav1.GetOptions{}); err != nil {
		t.Errorf("what was written after the restore is lost: %v", err)
	}
	nodeName := waitNodesReady(t, cs, 1)[0]
	renewed := false
	for deadline := time.Now().Add(time.Minute); !renewed && time.Now().Before(deadline); time.Sleep(time.Second) {
		lease, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, nodeName, metav1.GetOptions{})
		renewed = err == nil && lease.Spec.RenewTime != nil && lease.Spec.RenewTime.After(restarted)
	}
	if !renewed {
		t.Error("the kubelet did not renew its lease with its rotated certificate")
	}
	waitPodsRunning(t, cs, ns, 1)
	// The apiserver reaches the kubelet, whose new serving certificate it trusts.
	n.run(nil, bin, "kubectl", "--kubeconfig", n.kubeconfig, "logs", "-n", ns, "kept")
}

// TestRestoreOnNewMachine restores a server's snapshot on a machine that holds none of its
// cluster's files, with the cluster's server token: the cluster's CA is back with its objects
// and its Secrets, which were encrypted at rest. Without the token, or with another, the
// restore is refused and nothing of the cluster is written.
func TestRestoreOnNewMachine(t *testing.T) {
	bin := koneBinary(t)
	ctx := context.Background()
	old := newNode(t, bin, t.TempDir())
	old.extra = []string{"--secrets-encryption"}
	old.start()
	cs := old.client()
	if _, err := cs.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kept"}, Data: map[string]string{"a": "b"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "kept"}, Data: map[string][]byte{"password": []byte("s3cret")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	etcdSnapshot(old, "save", "--name", "moving")
	saved := listed(old, "moving-")
	if len(saved) != 1 {
		t.Fatalf("ls: %v", saved)
	}
	file := filepath.Join(old.dataDir, "server", "db", "snapshots", saved[0]+".db.gz")
	tok, err := os.ReadFile(filepath.Join(old.dataDir, "server", "token"))
	if err != nil {
		t.Fatal(err)
	}
	old.stop()

	fresh := newNode(t, bin, t.TempDir())
	reset := []string{"--cluster-reset", "--cluster-reset-restore-path", file, "--secrets-encryption"}
	for _, refused := range []struct {
		args []string
		want string
	}{
		{nil, "--token"},
		{[]string{"--token", "not-the-cluster-token-at-all"}, "does not open"},
	} {
		if out := fresh.runFail(fresh.args(append(reset, refused.args...)...)...); !strings.Contains(out, refused.want) {
			t.Errorf("a restore on a new machine with %v: want %q in:\n%s", refused.args, refused.want, out)
		}
		held, err := filepath.Glob(filepath.Join(fresh.dataDir, "server", "*", "*"))
		if err != nil {
			t.Fatal(err)
		}
		if len(held) != 0 {
			t.Errorf("a refused restore wrote %v", held)
		}
	}

	fresh.extra = append(reset, "--token", strings.TrimSpace(string(tok)))
	fresh.start()
	cs = fresh.client()
	if cm, err := cs.CoreV1().ConfigMaps("default").Get(ctx, "kept", metav1.GetOptions{}); err != nil || cm.Data["a"] != "b" {
		t.Errorf("the ConfigMap from the snapshot: %v %v", cm, err)
	}
	if s, err := cs.CoreV1().Secrets("default").Get(ctx, "kept", metav1.GetOptions{}); err != nil || string(s.Data["password"]) != "s3cret" {
		t.Errorf("the Secret from the snapshot, encrypted at rest with the cluster's key: %v %v", s, err)
	}
	for _, f := range []string{"server-ca.crt", "server-ca.key", "service.key"} {
		a, err1 := os.ReadFile(filepath.Join(old.dataDir, "server", "tls", f))
		b, err2 := os.ReadFile(filepath.Join(fresh.dataDir, "server", "tls", f))
		if err1 != nil || err2 != nil || string(a) != string(b) {
			t.Errorf("%s is not the cluster's on the new machine (%v, %v)", f, err1, err2)
		}
	}
	if _, err := os.Stat(filepath.Join(fresh.dataDir, "server", "db", "restore-pending")); !os.IsNotExist(err) {
		t.Errorf("the data dir is still marked as waiting for its restore: %v", err)
	}
}
