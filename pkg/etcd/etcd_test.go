package etcd

import (
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	logtest "github.com/sirupsen/logrus/hooks/test"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/membership"
	"go.etcd.io/etcd/server/v3/storage/backend"
	"go.etcd.io/etcd/server/v3/storage/schema"
	"go.uber.org/zap"

	"github.com/kone-dev/kone/pkg/pki"
)

func TestSettings(t *testing.T) {
	c := Config{Name: "kone", DataDir: "/d/etcd", ClientPort: 2379, PeerPort: 2380, ServerCA: "/ca.crt"}
	cfg, err := Settings(c)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ListenClientUrls[0].String() != "https://127.0.0.1:2379" || cfg.ListenPeerUrls[0].String() != "https://127.0.0.1:2380" {
		t.Errorf("etcd must listen on loopback only: %v %v", cfg.ListenClientUrls, cfg.ListenPeerUrls)
	}
	if !cfg.ClientTLSInfo.ClientCertAuth || !cfg.PeerTLSInfo.ClientCertAuth || cfg.ClientTLSInfo.TrustedCAFile != "/ca.crt" {
		t.Errorf("etcd must require client certificates: %+v", cfg.ClientTLSInfo)
	}
	if cfg.InitialCluster != "kone=https://127.0.0.1:2380" || cfg.Dir != "/d/etcd" {
		t.Errorf("cluster %q, dir %q", cfg.InitialCluster, cfg.Dir)
	}

	// A single member's election: the shortest timeout etcd accepts for its heartbeat.
	if cfg.TickMs != 100 || cfg.ElectionMs != 500 || cfg.Validate() != nil {
		t.Errorf("heartbeat %d ms, election %d ms (%v); want 100 and 500", cfg.TickMs, cfg.ElectionMs, cfg.Validate())
	}

	c.Args = []string{"quota-backend-bytes=4294967296", "--snapshot-count=100", "auto-compaction-mode=revision", "election-timeout=1000", "unsafe-no-fsync=false"}
	cfg, err = Settings(c)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.QuotaBackendBytes != 4294967296 || cfg.SnapshotCount != 100 || cfg.AutoCompactionMode != "revision" || cfg.ElectionMs != 1000 {
		t.Errorf("overrides not applied: quota %d, snapshots %d, compaction %q, election %d ms", cfg.QuotaBackendBytes, cfg.SnapshotCount, cfg.AutoCompactionMode, cfg.ElectionMs)
	}

	for arg, want := range map[string]string{
		"quota-backend-bytse=1":        "no setting",
		"listen-client-urls=http://x":  "--etcd-client-port",
		"quota-backend-bytes=lots":     "quota-backend-bytes=lots",
		"client-transport-security=no": "no setting",
		// What would give up durability or kone's TLS is refused, by name.
		"unsafe-no-fsync=true":                         `does not let "unsafe-no-fsync" change`,
		"tls-min-version=TLS1.0":                       `does not let "tls-min-version" change`,
		"cipher-suites=[TLS_RSA_WITH_AES_128_CBC_SHA]": `does not let "cipher-suites" change`,
		"ClientTLSInfo={ClientCertAuth: false}":        `does not let "ClientTLSInfo" change`,
		"PeerAutoTLS=true":                             `does not let "PeerAutoTLS" change`,
		"data-dir=/tmp/elsewhere":                      `does not let "data-dir" change`,
		"initial-cluster=kone=http://192.0.2.1:2380":   `does not let "initial-cluster" change`,
		"initial-cluster-state=existing":               `does not let "initial-cluster-state" change`,
	} {
		c.Args = []string{arg}
		if _, err := Settings(c); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--etcd-arg %s: got %v, want an error mentioning %q", arg, err, want)
		}
	}
}

// A server's member serves its peers on the node's address, with clients on loopback still;
// a member that joins starts into the cluster it was added to.
func TestSettingsForPeers(t *testing.T) {
	c := Config{Name: "s2", DataDir: "/d/etcd", Address: net.ParseIP("192.0.2.12"), ClientPort: 2379, PeerPort: 2380,
		Join: "s1=https://192.0.2.11:2380,s2=https://192.0.2.12:2380"}
	cfg, err := Settings(c)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ListenClientUrls[0].String() != "https://127.0.0.1:2379" || cfg.ListenPeerUrls[0].String() != "https://192.0.2.12:2380" ||
		cfg.AdvertisePeerUrls[0].String() != "https://192.0.2.12:2380" {
		t.Errorf("clients on %v, peers on %v (advertised %v)", cfg.ListenClientUrls, cfg.ListenPeerUrls, cfg.AdvertisePeerUrls)
	}
	if cfg.InitialCluster != c.Join || cfg.ClusterState != "existing" || cfg.Validate() != nil {
		t.Errorf("initial cluster %q, state %q (%v)", cfg.InitialCluster, cfg.ClusterState, cfg.Validate())
	}
}

// The initial cluster of a joining member names every member by its peer URL: the joiner by
// its own name, a member added but never started by its id.
func TestInitialCluster(t *testing.T) {
	now := time.Now()
	member := func(name, peer string) *membership.Member {
		urls, err := types.NewURLs([]string{peer})
		if err != nil {
			t.Fatal(err)
		}
		return membership.NewMember(name, urls, "", &now)
	}
	s1, joiner, stale := member("s1", "https://192.0.2.11:2380"), member("", "https://192.0.2.12:2380"), member("", "https://192.0.2.13:2380")
	got := InitialCluster([]*membership.Member{stale, joiner, s1}, "s2", "https://192.0.2.12:2380")
	want := stale.ID.String() + "=https://192.0.2.13:2380,s1=https://192.0.2.11:2380,s2=https://192.0.2.12:2380"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// The log says when this member takes the lead, and once, not at every round, when the cluster
// has had no leader for a while and when it has one again.
func TestLeadership(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	var l leadership
	t0 := time.Now()
	l.observe(2, 1, t0, log)
	l.observe(1, 1, t0.Add(time.Second), log)
	l.observe(1, 1, t0.Add(2*time.Second), log)
	for i := range 10 {
		l.observe(0, 1, t0.Add(time.Duration(3+i)*time.Second), log)
	}
	l.observe(3, 1, t0.Add(20*time.Second), log)
	var got []string
	for _, e := range hook.AllEntries() {
		got = append(got, e.Message)
	}
	if len(got) != 3 || !strings.Contains(got[0], "leads") || !strings.Contains(got[1], "quorum lost") || !strings.Contains(got[2], "leader again") {
		t.Errorf("log: %q", got)
	}
}

// A membership request proves that its server holds the cluster's keys: the peer certificate
// for its address, issued by the cluster's peer CA. One for another address, or from another
// CA, is refused.
func TestCheckPeerCert(t *testing.T) {
	now := time.Now()
	issue := func(dir string, ip string) []byte {
		t.Helper()
		ca, err := pki.EnsureCA(dir, "peer-ca", now)
		if err != nil {
			t.Fatal(err)
		}
		f := pki.File{Cert: filepath.Join(dir, ip+".crt"), Key: filepath.Join(dir, ip+".key")}
		if _, err := ca.EnsureLeaf(f, pki.LeafSpec{CommonName: "etcd-peer", IPs: []net.IP{net.ParseIP(ip)},
			Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, now); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(f.Cert)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	cluster, other := t.TempDir(), t.TempDir()
	cert := issue(cluster, "192.0.2.12")
	forged := issue(other, "192.0.2.12")
	m := &Members{store: &Etcd{cfg: &embed.Config{PeerTLSInfo: transport.TLSInfo{TrustedCAFile: filepath.Join(cluster, "peer-ca.crt")}}}}
	if err := m.checkPeerCert("https://192.0.2.12:2380", cert); err != nil {
		t.Errorf("the cluster's certificate: %v", err)
	}
	for name, c := range map[string]struct {
		peer string
		cert []byte
	}{
		"another address": {"https://192.0.2.13:2380", cert},
		"another CA":      {"https://192.0.2.12:2380", forged},
		"none":            {"https://192.0.2.12:2380", nil},
	} {
		if err := m.checkPeerCert(c.peer, c.cert); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A database that compaction left mostly empty is defragmented, and one that is not is left.
func TestDefragIfBloated(t *testing.T) {
	b := backend.NewDefaultBackend(zap.NewNop(), filepath.Join(t.TempDir(), "db"))
	defer b.Close()
	value := []byte(strings.Repeat("x", 1024))
	write := func(f func(tx backend.BatchTx, key []byte)) {
		tx := b.BatchTx()
		tx.LockOutsideApply()
		tx.UnsafeCreateBucket(schema.Key)
		for i := range 20000 {
			f(tx, fmt.Appendf(nil, "key-%06d", i))
		}
		tx.Unlock()
		b.ForceCommit()
	}
	write(func(tx backend.BatchTx, key []byte) { tx.UnsafePut(schema.Key, key, value) })
	log, hook := logtest.NewNullLogger()
	full := b.Size()
	if err := defragIfBloated(b, b.Defrag, log); err != nil || b.Size() != full || len(hook.AllEntries()) != 0 {
		t.Fatalf("a database in use was defragmented: %d -> %d bytes, %v", full, b.Size(), err)
	}
	write(func(tx backend.BatchTx, key []byte) { tx.UnsafeDelete(schema.Key, key) })
	// Pages freed by a commit are counted free once no reader holds them: at the writes after.
	for i := range 2 {
		tx := b.BatchTx()
		tx.LockOutsideApply()
		tx.UnsafePut(schema.Key, fmt.Appendf(nil, "after-%d", i), value)
		tx.Unlock()
		b.ForceCommit()
	}
	if b.Size() <= 2*b.SizeInUse() {
		t.Fatalf("deleting every key left %d bytes in use of %d: the test cannot see a defragmentation", b.SizeInUse(), b.Size())
	}
	if err := defragIfBloated(b, b.Defrag, log); err != nil {
		t.Fatal(err)
	}
	if b.Size() > full/4 {
		t.Errorf("after defragmentation the file is %d bytes of %d before", b.Size(), full)
	}
	if e := hook.LastEntry(); e == nil || e.Data["reclaimed"] == nil {
		t.Errorf("the space reclaimed is not logged: %v", e)
	}
}
