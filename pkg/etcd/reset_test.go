package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/kone-dev/kone/pkg/pki"
)

// testMember is a member's configuration with a PKI of its own and free loopback ports.
func testMember(t *testing.T) (Config, *pki.Cluster) {
	t.Helper()
	dir := t.TempDir()
	ca := pki.Layout(filepath.Join(dir, "tls"))
	names := pki.Names{DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}
	if err := ca.EnsureAuthorities(time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Renew(names, names, names, time.Now()); err != nil {
		t.Fatal(err)
	}
	free := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	return Config{
		Name: "s1", DataDir: filepath.Join(dir, "db", "etcd"), ClientPort: free(), PeerPort: free(),
		ServerCA: ca.EtcdServerCA, PeerCA: ca.EtcdPeerCA, Serving: ca.EtcdServing, Peer: ca.EtcdPeer,
	}, ca
}

// startMember runs the member until cancel is called; done then says how Run ended.
func startMember(t *testing.T, c Config) (e *Etcd, cancel func(), done <-chan error) {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	e, err := New(c, zap.NewNop(), log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // a test that fails before it stops the member does not leave it running
	ended := make(chan error, 1)
	go func() { ended <- e.Run(ctx) }()
	return e, cancel, ended
}

// runMember runs the member until the test ends or stop is called, once it is ready.
func runMember(t *testing.T, c Config) (stop func()) {
	t.Helper()
	e, cancel, done := startMember(t, c)
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("etcd: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	ready, cancelReady := context.WithTimeout(context.Background(), time.Minute)
	defer cancelReady()
	if err := e.Ready(ready); err != nil {
		t.Fatalf("etcd not ready: %v", err)
	}
	return stop
}

func put(t *testing.T, c Config, ca *pki.Cluster, kvs ...string) {
	t.Helper()
	cli, err := Client{URL: c.ClientURL(), CA: ca.EtcdServerCA, Cert: ca.APIServerEtcd}.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for i := 0; i < len(kvs); i += 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := cli.Put(ctx, kvs[i], kvs[i+1])
		cancel()
		if err != nil {
			t.Fatalf("put %s: %v", kvs[i], err)
		}
	}
}

func value(t *testing.T, dataDir, key string) string {
	t.Helper()
	v, err := ReadKey(dataDir, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(v)
}

// saveSnapshot writes a snapshot of the running member to a file, as etcdctl does.
func saveSnapshot(t *testing.T, c Config, ca *pki.Cluster) string {
	t.Helper()
	cli, err := Client{URL: c.ClientURL(), CA: ca.EtcdServerCA, Cert: ca.APIServerEtcd}.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	r, err := cli.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	path := filepath.Join(t.TempDir(), "snapshot.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, r); err != nil {
		t.Fatal(err)
	}
	return path
}

// tree lists the files under dir with their sizes, to tell whether anything changed.
func tree(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	files := map[string]int64{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil {
			files[p] = info.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestResetFromSnapshot(t *testing.T) {
	c, ca := testMember(t)
	db := filepath.Dir(c.DataDir)
	stop := runMember(t, c)
	put(t, c, ca, "/before", "1")
	snap := saveSnapshot(t, c, ca)
	put(t, c, ca, "/after", "2")
	stop()
	join := filepath.Join(db, "etcd-join")
	if err := os.WriteFile(join, []byte("s0=https://127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Refused by the check, or from a damaged file: nothing changes.
	before := tree(t, db)
	refuse := errors.New("another cluster")
	r := Reset{Member: c, Snapshot: snap, Also: []string{join}, Log: zap.NewNop(),
		Check: func(dir string) error {
			if value(t, dir, "/before") != "1" || value(t, dir, "/after") != "" {
				t.Error("the data checked is not the snapshot's")
			}
			return refuse
		}}
	if err := r.Run(context.Background(), time.Now()); !errors.Is(err, refuse) {
		t.Fatalf("a refused reset: %v", err)
	}
	damaged := filepath.Join(t.TempDir(), "damaged.db")
	data, _ := os.ReadFile(snap)
	data[len(data)/2] ^= 1
	if err := os.WriteFile(damaged, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r2 := r
	r2.Snapshot, r2.Check = damaged, nil
	if err := r2.Run(context.Background(), time.Now()); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("a damaged snapshot: %v", err)
	}
	if after := tree(t, db); !reflect.DeepEqual(after, before) {
		t.Fatalf("refused resets changed the data dir: %v, was %v", after, before)
	}
	if rec, err := LastReset(c.DataDir); rec != nil || err != nil {
		t.Fatalf("refused resets recorded one: %+v, %v", rec, err)
	}

	r.Check = nil
	at := time.Now()
	if err := r.Run(context.Background(), at); err != nil {
		t.Fatal(err)
	}
	if value(t, c.DataDir, "/before") != "1" || value(t, c.DataDir, "/after") != "" {
		t.Error("the restored data is not the snapshot's")
	}
	aside := filepath.Join(db, "reset-"+at.UTC().Format("20060102T150405Z"))
	if value(t, filepath.Join(aside, "etcd"), "/after") != "2" {
		t.Error("the replaced data is not kept aside whole")
	}
	if _, err := os.Stat(filepath.Join(aside, "etcd-join")); err != nil {
		t.Errorf("the old member's join answer did not go aside with it: %v", err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(db, ".reset*")); len(leftovers) > 0 {
		t.Errorf("the reset left %v", leftovers)
	}
	rec, err := LastReset(c.DataDir)
	if err != nil || rec == nil || rec.Snapshot != snap || rec.Aside != filepath.Base(aside) {
		t.Fatalf("LastReset: %+v, %v", rec, err)
	}

	// The replaced data taken away by the user, a start that still finds the record leaves the
	// data in place.
	if err := os.RemoveAll(aside); err != nil {
		t.Fatal(err)
	}
	if rec, err := LastReset(c.DataDir); err != nil || rec == nil || value(t, c.DataDir, "/before") != "1" {
		t.Fatalf("LastReset after the replaced data was removed: %+v, %v", rec, err)
	}

	// The restored member runs as a cluster of one, with its revisions beyond any seen before.
	runMember(t, c)
	cli, err := Client{URL: c.ClientURL(), CA: ca.EtcdServerCA, Cert: ca.APIServerEtcd}.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Put(ctx, "/new", "3")
	if err != nil || resp.Header.Revision < revisionBump {
		t.Fatalf("a write after the restore: %v (revision %v)", err, resp)
	}
	members, err := cli.MemberList(ctx)
	if err != nil || len(members.Members) != 1 || members.Members[0].Name != "s1" {
		t.Fatalf("members after the restore: %v, %v", members, err)
	}
	if err := ForgetReset(c.DataDir); err != nil {
		t.Fatal(err)
	}
	if rec, err := LastReset(c.DataDir); rec != nil || err != nil {
		t.Errorf("a forgotten reset: %+v, %v", rec, err)
	}
}

// A reset stopped between its moves is finished by the next start.
func TestLastResetFinishesMoves(t *testing.T) {
	db := t.TempDir()
	data := filepath.Join(db, "etcd")
	for _, d := range []string{filepath.Join(db, "reset-x", "etcd"), filepath.Join(db, stagedName, "member")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// The old data went aside, the join answer did not yet, the staged data is not in place.
	if err := os.WriteFile(filepath.Join(db, "etcd-join"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(ResetRecord{At: time.Now(), Aside: "reset-x", Moved: []string{"etcd", "etcd-join"}})
	if err := os.WriteFile(filepath.Join(db, resetRecordName), rec, 0o600); err != nil {
		t.Fatal(err)
	}
	if r, err := LastReset(data); err != nil || r == nil {
		t.Fatalf("LastReset: %+v, %v", r, err)
	}
	for _, want := range []string{filepath.Join(data, "member"), filepath.Join(db, "reset-x", "etcd-join")} {
		if _, err := os.Stat(want); err != nil {
			t.Errorf("the interrupted reset was not finished: %v", err)
		}
	}
	// Without a record, what a reset killed while staging left goes.
	if err := os.Remove(filepath.Join(db, resetRecordName)); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(db, stagedName, "member"), 0o700); err != nil {
		t.Fatal(err)
	}
	if r, err := LastReset(data); err != nil || r != nil {
		t.Fatalf("LastReset without a record: %+v, %v", r, err)
	}
	if _, err := os.Stat(filepath.Join(db, stagedName)); !os.IsNotExist(err) {
		t.Errorf("a reset killed while staging left %s: %v", stagedName, err)
	}
	// A record that names a path outside the data dir is not followed.
	bad, _ := json.Marshal(ResetRecord{At: time.Now(), Aside: "reset-x", Moved: []string{"../../etc"}})
	if err := os.WriteFile(filepath.Join(db, resetRecordName), bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LastReset(data); err == nil {
		t.Error("a record naming ../../etc was followed")
	}
}

// loseQuorum leaves the member's data as that of one of two voting members, the other never
// seen again, with /before-loss=1 written before.
func loseQuorum(t *testing.T, c Config, ca *pki.Cluster) {
	t.Helper()
	// The member adds a second that never comes: one of two voters, it has lost its quorum.
	cfg, err := Settings(c)
	if err != nil {
		t.Fatal(err)
	}
	cfg.StrictReconfigCheck = false
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(time.Minute):
		t.Fatal("etcd did not start")
	}
	cli, err := Client{URL: c.ClientURL(), CA: ca.EtcdServerCA, Cert: ca.APIServerEtcd}.Dial()
	if err != nil {
		t.Fatal(err)
	}
	put(t, c, ca, "/before-loss", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if _, err := cli.MemberAdd(ctx, []string{"https://127.0.0.1:9"}); err != nil {
		t.Fatal(err)
	}
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Second)
	if _, err := cli.Put(ctx, "/lost", "x"); err == nil {
		t.Fatal("a member without quorum took a write")
	}
	cancel()
	cli.Close()
	e.Close()
}

// After losing the other members for good, a reset without a snapshot makes the member a
// cluster of one from its own data, which takes writes again.
func TestResetOwnDataAfterQuorumLoss(t *testing.T) {
	c, ca := testMember(t)
	loseQuorum(t, c, ca)

	at := time.Now()
	if err := (Reset{Member: c, Log: zap.NewNop()}).Run(context.Background(), at); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(c.DataDir), "reset-"+at.UTC().Format("20060102T150405Z"), "etcd", "member")); err != nil {
		t.Errorf("the member's data before the reset is not kept: %v", err)
	}
	if value(t, c.DataDir, "/before-loss") != "1" {
		t.Error("the reset member lost the data it had")
	}
	runMember(t, c)
	put(t, c, ca, "/after-reset", "1")

	// Nothing to reset in an empty data dir.
	empty, _ := testMember(t)
	if err := (Reset{Member: empty, Log: zap.NewNop()}).Run(context.Background(), at); err == nil || !strings.Contains(err.Error(), "--cluster-reset-restore-path") {
		t.Errorf("a reset of no data: %v", err)
	}
}

// A member that cannot become ready (no quorum at its start) still stops when asked: etcd's
// Close alone would wait for it to be ready forever.
func TestStopWithoutQuorum(t *testing.T) {
	c, ca := testMember(t)
	loseQuorum(t, c, ca)
	e, cancel, done := startMember(t, c)
	ready, cancelReady := context.WithTimeout(context.Background(), 3*time.Second)
	if err := e.Ready(ready); err == nil {
		t.Fatal("a member without quorum became ready")
	}
	cancelReady()
	cancel()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("etcd without quorum did not stop within 15 s of being asked")
	}
}
