package snapshot

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// startEtcd runs a real one-member etcd on loopback and returns a client of it.
func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.LogLevel = "fatal"
	free := func() url.URL {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return url.URL{Scheme: "http", Host: l.Addr().String()}
	}
	client, peer := free(), free()
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd did not start")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{client.String()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// unpack returns the database in a saved snapshot, checking the file against its metadata.
func unpack(t *testing.T, d Dir, m Meta) string {
	t.Helper()
	data, err := os.ReadFile(d.File(m.Name))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != m.SHA256 || int64(len(data)) != m.Size {
		t.Fatalf("snapshot %s: file does not match its metadata (sha256, size %d vs %d)", m.Name, len(data), m.Size)
	}
	gz, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	db, err := io.ReadAll(gz)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(db)) != m.DBSize {
		t.Fatalf("snapshot %s: database of %d bytes, metadata says %d", m.Name, len(db), m.DBSize)
	}
	path := filepath.Join(t.TempDir(), "db")
	if err := os.WriteFile(path, db, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSaveListPruneDelete(t *testing.T) {
	ctx := context.Background()
	cli := startEtcd(t)
	for i := range 50 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/registry/configmaps/default/cm-%d", i), strings.Repeat("x", 1024)); err != nil {
			t.Fatal(err)
		}
	}
	d := Dir(filepath.Join(t.TempDir(), "snapshots"))
	tmpl := Meta{Node: "server-1", Kone: "v1.2.3", Kubernetes: "v1.36.4", Cluster: "sha256:abc"}
	start := time.Unix(1_700_000_000, 0)
	var saved []Meta
	for i := range 3 {
		m, err := d.Save(ctx, cli.Maintenance, ScheduledName, tmpl, start.Add(time.Duration(i)*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		saved = append(saved, m)
	}
	if _, err := d.Save(ctx, cli.Maintenance, ScheduledName, tmpl, start); err == nil {
		t.Error("a second snapshot of the same name and second replaced the first")
	}
	m := saved[0]
	if m.Name != "etcd-snapshot-server-1-1700000000" || m.Node != "server-1" || m.Kone != "v1.2.3" || m.Cluster != "sha256:abc" || m.Etcd == "" || !m.CreatedAt.Equal(start) {
		t.Errorf("metadata: %+v", m)
	}
	// The snapshot is etcd's database: bbolt opens it and it holds the keys written.
	db, err := bolt.Open(unpack(t, d, m), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("the snapshot is not a database: %v", err)
	}
	keys := 0
	if err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("key"))
		if b == nil {
			return fmt.Errorf("no key bucket")
		}
		keys = b.Stats().KeyN
		return nil
	}); err != nil || keys < 50 {
		t.Errorf("the snapshot holds %d revisions, want 50 or more: %v", keys, err)
	}
	db.Close()

	list, err := d.List()
	if err != nil || len(list) != 3 || list[0].Name != saved[0].Name || list[2].Name != saved[2].Name {
		t.Fatalf("List: %v, %v", list, err)
	}
	// Another node's snapshots and on-demand ones are not pruned with the scheduled ones.
	other := tmpl
	other.Node = "server-2"
	if _, err := d.Save(ctx, cli.Maintenance, ScheduledName, other, start); err != nil {
		t.Fatal(err)
	}
	mine, err := d.Save(ctx, cli.Maintenance, OnDemandName, tmpl, start)
	if err != nil {
		t.Fatal(err)
	}
	// A longer name that starts as the scheduled ones do is not theirs either.
	longer, err := d.Save(ctx, cli.Maintenance, ScheduledName+"-server-1-x", tmpl, start)
	if err != nil {
		t.Fatal(err)
	}
	// Leftovers of a save killed before its data was linked, an hour old, go; a file of the
	// user's stays.
	orphan := Meta{Name: "on-demand-server-1-1600000000", Node: "server-1"}
	data, _ := json.Marshal(orphan)
	userFile := filepath.Join(string(d), "notes.json")
	for _, f := range []string{d.meta(orphan.Name), userFile} {
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(f, start, start); err != nil {
			t.Fatal(err)
		}
	}
	gone, err := d.Prune(ScheduledName, "server-1", 2)
	if err != nil || len(gone) != 1 || gone[0] != saved[0].Name {
		t.Fatalf("Prune to 2: deleted %v, %v", gone, err)
	}
	if list, _ := d.List(); len(list) != 5 {
		t.Errorf("after Prune: %d snapshots, want 5 (two scheduled, another node's, an on-demand one, %s)", len(list), longer.Name)
	}
	if _, err := os.Stat(d.meta(orphan.Name)); !os.IsNotExist(err) {
		t.Errorf("Prune left the metadata of a snapshot without data: %v", err)
	}
	if _, err := os.Stat(userFile); err != nil {
		t.Errorf("Prune removed a file that is not kone's: %v", err)
	}
	if err := os.Remove(userFile); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.File(saved[0].Name)); !os.IsNotExist(err) {
		t.Errorf("a pruned snapshot's file is still there: %v", err)
	}

	if err := d.Delete(longer.Name); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(mine.Name, "no-such-snapshot"); err == nil || !strings.Contains(err.Error(), "no-such-snapshot") {
		t.Errorf("Delete of a missing snapshot: %v", err)
	}
	if _, err := os.Stat(d.File(mine.Name)); !os.IsNotExist(err) {
		t.Errorf("Delete left the snapshot: %v", err)
	}
	if err := d.Delete("../snapshots/" + saved[1].Name); err == nil {
		t.Error("Delete took a path for a name")
	}
	if entries, _ := os.ReadDir(string(d)); len(entries) != 6 {
		t.Errorf("the directory holds %d files, want 3 snapshots with their metadata", len(entries))
	}
}

// source sends what it is given as etcd's snapshot.
type source []byte

func (s source) SnapshotWithVersion(context.Context) (*clientv3.SnapshotResponse, error) {
	return &clientv3.SnapshotResponse{Snapshot: io.NopCloser(bytes.NewReader(s)), Version: "3.6.16"}, nil
}

// A stream that is cut short or damaged saves nothing, and leaves nothing behind.
func TestSaveRefusesABrokenStream(t *testing.T) {
	db := bytes.Repeat([]byte{7}, 4096)
	sum := sha256.Sum256(db)
	good := append(db, sum[:]...)
	damaged := bytes.Clone(good)
	damaged[100] ^= 1
	d := Dir(t.TempDir())
	for name, s := range map[string]source{"truncated": good[:3000], "damaged": damaged, "empty": nil} {
		if _, err := d.Save(context.Background(), s, OnDemandName, Meta{Node: "n"}, time.Now()); err == nil {
			t.Errorf("%s stream: saved", name)
		}
	}
	if entries, _ := os.ReadDir(string(d)); len(entries) != 0 {
		t.Errorf("failed saves left %d files", len(entries))
	}
	m, err := d.Save(context.Background(), source(good), OnDemandName, Meta{Node: "n"}, time.Now())
	if err != nil || m.DBSize != int64(len(good)) {
		t.Fatalf("a whole stream: %+v, %v", m, err)
	}
}

func TestPublishKeepsOtherServers(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	a1 := Meta{Name: "on-demand-a-1", Node: "a"}
	a2 := Meta{Name: "on-demand-a-2", Node: "a"}
	b1 := Meta{Name: "on-demand-b-1", Node: "b"}
	for _, step := range []struct {
		node string
		all  []Meta
	}{{"a", []Meta{a1, a2}}, {"b", []Meta{a1, a2, b1}}, {"a", []Meta{a2, b1}}} {
		if err := publish(ctx, cs, step.node, step.all); err != nil {
			t.Fatal(err)
		}
	}
	cm, err := cs.CoreV1().ConfigMaps("kube-system").Get(ctx, ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cm.Data) != 2 || cm.Data[a2.Name] == "" || cm.Data[b1.Name] == "" {
		t.Fatalf("the API lists %v, want %s and %s", cm.Data, a2.Name, b1.Name)
	}
	var got Meta
	if err := json.Unmarshal([]byte(cm.Data[b1.Name]), &got); err != nil || got.Node != "b" {
		t.Errorf("the listed metadata: %+v, %v", got, err)
	}
}

func TestParseSchedule(t *testing.T) {
	for _, spec := range []string{"0 */12 * * *", "*/5 * * * * *", "@daily"} {
		if _, err := ParseSchedule(spec); err != nil {
			t.Errorf("%q: %v", spec, err)
		}
	}
	for _, spec := range []string{"", "every hour", "61 * * * *"} {
		if _, err := ParseSchedule(spec); err == nil || !strings.Contains(err.Error(), "--etcd-snapshot-schedule-cron") {
			t.Errorf("%q: %v", spec, err)
		}
	}
}
