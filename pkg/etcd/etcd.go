// Package etcd runs kone's datastore: etcd, embedded in the kone process through
// go.etcd.io/etcd/server/v3/embed, with mutual TLS for clients and peers. Clients (the local
// apiserver) reach it on loopback only; other servers' members reach it on the node's address.
// It also lets new servers become members (Members, RequestMembership).
package etcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/membership"
	"go.etcd.io/etcd/server/v3/storage/backend"
	"go.uber.org/zap"
	"sigs.k8s.io/yaml"

	"github.com/kone-dev/kone/pkg/pki"
)

// Config is what the datastore needs from kone's configuration.
type Config struct {
	Name       string // the member's name: the server's node name
	DataDir    string // etcd's own data directory
	Address    net.IP // where other members reach this one; loopback when nil
	ClientPort int
	PeerPort   int
	// Join is the initial cluster (name=peer-URL,...) of the cluster this member was added to,
	// itself included, for its first start; empty for a member that starts a cluster of its
	// own or has joined before (its data says which cluster it belongs to).
	Join     string
	ServerCA string
	PeerCA   string
	Serving  pki.File
	Peer     pki.File
	// Args are --etcd-arg key=value settings, keys as in etcd's config file, applied last.
	Args []string
}

// ClientURL is where etcd serves clients.
func (c Config) ClientURL() string { return fmt.Sprintf("https://127.0.0.1:%d", c.ClientPort) }

// PeerURL is where other members reach this one.
func (c Config) PeerURL() string { return PeerURL(c.Address, c.PeerPort) }

// PeerURL is the peer URL of a member at address and port; loopback when address is nil.
func PeerURL(address net.IP, port int) string {
	if address == nil {
		address = net.IPv4(127, 0, 0, 1)
	}
	return "https://" + net.JoinHostPort(address.String(), fmt.Sprint(port))
}

// guarded are the settings an --etcd-arg may not change: where etcd listens and who it is, its
// TLS, and its durability. Giving them up would leave the cluster's data unprotected or lose it
// at a power cut, which edge machines see often.
type guarded struct {
	Name, Dir, WalDir, InitialCluster, ClusterState                          string
	ListenClientUrls, AdvertiseClientUrls, ListenPeerUrls, AdvertisePeerUrls []url.URL
	ListenClientHttpUrls, ListenMetricsUrls                                  []url.URL
	ClientTLSInfo, PeerTLSInfo                                               transport.TLSInfo
	ClientAutoTLS, PeerAutoTLS, UnsafeNoFsync                                bool
	CipherSuites                                                             []string
	TlsMinVersion, TlsMaxVersion                                             string
}

func guard(c *embed.Config) guarded {
	return guarded{
		Name: c.Name, Dir: c.Dir, WalDir: c.WalDir, InitialCluster: c.InitialCluster, ClusterState: c.ClusterState,
		ListenClientUrls: c.ListenClientUrls, AdvertiseClientUrls: c.AdvertiseClientUrls,
		ListenPeerUrls: c.ListenPeerUrls, AdvertisePeerUrls: c.AdvertisePeerUrls,
		ListenClientHttpUrls: c.ListenClientHttpUrls, ListenMetricsUrls: c.ListenMetricsUrls,
		ClientTLSInfo: c.ClientTLSInfo, PeerTLSInfo: c.PeerTLSInfo,
		ClientAutoTLS: c.ClientAutoTLS, PeerAutoTLS: c.PeerAutoTLS, UnsafeNoFsync: c.UnsafeNoFsync,
		CipherSuites: c.CipherSuites, TlsMinVersion: c.TlsMinVersion, TlsMaxVersion: c.TlsMaxVersion,
	}
}

// Settings returns etcd's configuration for c, --etcd-arg included. The listen URLs, TLS and
// durability are kone's to set (its port flags and PKI); an --etcd-arg that would change them
// is refused. Every other key of etcd's config file may be overridden.
func Settings(c Config) (*embed.Config, error) {
	client := url.URL{Scheme: "https", Host: fmt.Sprintf("127.0.0.1:%d", c.ClientPort)}
	peer, err := url.Parse(c.PeerURL())
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.DataDir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = c.Name + "=" + peer.String()
	cfg.ClusterState = embed.ClusterStateFlagNew
	if c.Join != "" {
		cfg.InitialCluster, cfg.ClusterState = c.Join, embed.ClusterStateFlagExisting
	}
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: c.Serving.Cert, KeyFile: c.Serving.Key, TrustedCAFile: c.ServerCA, ClientCertAuth: true}
	cfg.PeerTLSInfo = transport.TLSInfo{CertFile: c.Peer.Cert, KeyFile: c.Peer.Key, TrustedCAFile: c.PeerCA, ClientCertAuth: true}
	cfg.TlsMinVersion, cfg.CipherSuites = "TLS1.2", pki.StrongCipherSuites()
	// etcd keeps this many raft entries in memory between snapshots; its default of 10000 costs
	// tens of MiB that a small cluster never needs.
	cfg.SnapshotCount = 5000
	// A restarted single member skips all but one tick of its election timeout, but raft draws
	// the timeout at random from one to two times the setting: with etcd's 1 s, a restart
	// waited 0.1 to 1 s for its own election. The shortest timeout etcd allows for its 100 ms
	// heartbeat (five beats) halves that. It also keeps a failover among servers short: the
	// members elect a new leader within a second of losing theirs. Servers that join each other
	// over slow links will want more (--etcd-arg election-timeout=…).
	cfg.ElectionMs = 5 * cfg.TickMs
	for _, arg := range c.Args {
		key, raw, _ := strings.Cut(arg, "=")
		key = strings.TrimLeft(key, "-")
		var value any
		if err := yaml.Unmarshal([]byte(raw), &value); err != nil || value == nil {
			value = raw
		}
		doc, err := yaml.Marshal(map[string]any{key: value})
		if err == nil {
			before := guard(cfg)
			if err = yaml.UnmarshalStrict(doc, cfg); err == nil && !reflect.DeepEqual(before, guard(cfg)) {
				return nil, fmt.Errorf("--etcd-arg %s: kone does not let %q change: it sets where etcd listens, its TLS and its durability itself "+
					"(listen ports: --etcd-client-port, --etcd-peer-port; data: --data-dir)", arg, key)
			}
		}
		if err != nil {
			if strings.Contains(err.Error(), "unknown field") {
				return nil, fmt.Errorf("--etcd-arg %s: etcd has no setting %q that kone lets you change; use a key of etcd's config file such as quota-backend-bytes (listen URLs: --etcd-client-port, --etcd-peer-port)", arg, key)
			}
			return nil, fmt.Errorf("--etcd-arg %s: %w", arg, err)
		}
	}
	return cfg, nil
}

// Etcd is the datastore component.
type Etcd struct {
	cfg     *embed.Config
	log     *logrus.Logger
	dataDir string
	started chan struct{}
	server  *embed.Etcd
}

// New checks c, --etcd-arg included, and returns the component; nothing starts until Run.
// etcd logs to etcdLog; kone's own lines about it go to log.
func New(c Config, etcdLog *zap.Logger, log *logrus.Logger) (*Etcd, error) {
	cfg, err := Settings(c)
	if err != nil {
		return nil, err
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcdLog)
	return &Etcd{cfg: cfg, log: log, dataDir: c.DataDir, started: make(chan struct{})}, nil
}

func (e *Etcd) Name() string { return "etcd" }

// Run starts etcd, then waits for ctx and closes it cleanly.
func (e *Etcd) Run(ctx context.Context) error {
	if err := os.MkdirAll(e.dataDir, 0o700); err != nil {
		return fmt.Errorf("create etcd data dir: %w", err)
	}
	server, err := embed.StartEtcd(e.cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	e.server = server
	close(e.started)
	defer func() {
		select {
		case <-server.Server.ReadyNotify():
		default:
			// etcd's Close first waits for its client servers, which start only once the
			// member is ready: a member that never was (its cluster without quorum) would keep
			// kone from stopping. Stopped first, it lets them go.
			server.Server.HardStop()
		}
		server.Close()
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var leader leadership
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-server.Err():
			return fmt.Errorf("etcd: %w", err)
		case <-server.Server.StopNotify():
			return e.stopped()
		case now := <-tick.C:
			leader.observe(server.Server.Leader(), server.Server.MemberID(), now, e.log)
		}
	}
}

// Alone reports whether this member is its cluster's only one; only once Ready.
func (e *Etcd) Alone() bool { return len(e.server.Server.Cluster().Members()) == 1 }

// Put stores value at key through this member, once Ready: for kone's own keys, outside the
// apiserver's, with no client connection.
func (e *Etcd) Put(ctx context.Context, key string, value []byte) error {
	_, err := e.server.Server.Put(ctx, &etcdserverpb.PutRequest{Key: []byte(key), Value: value})
	return err
}

// Delete removes key through this member, once Ready.
func (e *Etcd) Delete(ctx context.Context, key string) error {
	_, err := e.server.Server.DeleteRange(ctx, &etcdserverpb.DeleteRangeRequest{Key: []byte(key)})
	return err
}

// stopped explains why etcd stopped by itself: mostly, because this member was removed.
func (e *Etcd) stopped() error {
	s := e.server.Server
	if !s.IsMemberExist(s.MemberID()) {
		return fmt.Errorf("etcd: this server was removed from the cluster's etcd (its node was deleted), so it cannot start back into the cluster as it is; "+
			"to join again, stop kone, move %s away and start kone with --server https://ANOTHER-SERVER:6443 and the server token", filepath.Dir(e.dataDir))
	}
	return errors.New("etcd stopped; its log above says why")
}

// Ready waits for etcd to join its cluster and serve, to advertise its current peer URL, and,
// for a member that has just joined, to be promoted to a voting member: a learner serves no
// writes, so the apiserver could not use it.
func (e *Etcd) Ready(ctx context.Context) error {
	select {
	case <-e.started:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-e.server.Server.ReadyNotify():
	case <-e.server.Server.StopNotify():
		return e.stopped()
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := e.advertise(ctx); err != nil {
		return err
	}
	// Before the apiserver starts: defragmentation stops every read and write while it runs.
	if err := defragIfBloated(e.server.Server.Backend(), e.server.Server.Defragment, e.log); err != nil {
		return err
	}
	if e.server.Server.IsLearner() {
		e.log.Info("etcd member joined as a learner; waiting to be promoted once it has caught up")
	}
	for e.server.Server.IsLearner() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-e.server.Server.StopNotify():
			return e.stopped()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// defragIfBloated defragments etcd's database when its file is more than twice the size it
// uses. The apiserver compacts old revisions every five minutes, which frees pages inside the
// file but never shrinks it; on flash, every byte of it is read at start, copied into each
// snapshot and sent to a joining server. defrag is the server's own, which keeps a snapshot
// sent by the leader from replacing the backend meanwhile.
func defragIfBloated(b backend.Backend, defrag func() error, log *logrus.Logger) error {
	size, used := b.Size(), b.SizeInUse()
	if size <= 2*used {
		return nil
	}
	t0 := time.Now()
	if err := defrag(); err != nil {
		return fmt.Errorf("etcd: defragment the database (%d bytes, %d in use): %w", size, used, err)
	}
	log.WithFields(logrus.Fields{"before": size, "after": b.Size(), "reclaimed": size - b.Size(), "took": time.Since(t0).Round(time.Millisecond)}).
		Info("defragmented etcd's database, which was more than twice the size it uses")
	return nil
}

// advertise records the peer URL this member listens on in the cluster's membership when it
// differs: an earlier kone advertised loopback, which no other server can reach, and a server
// whose address changed must tell the others.
func (e *Etcd) advertise(ctx context.Context) error {
	s := e.server.Server
	self := s.Cluster().Member(s.MemberID())
	want := e.cfg.AdvertisePeerUrls[0].String()
	if self == nil || (len(self.PeerURLs) == 1 && self.PeerURLs[0] == want) {
		return nil
	}
	updated := *self
	updated.RaftAttributes = membership.RaftAttributes{PeerURLs: []string{want}, IsLearner: self.IsLearner}
	if _, err := s.UpdateMember(ctx, updated); err != nil {
		return fmt.Errorf("etcd: advertise the peer URL %s: %w", want, err)
	}
	return nil
}

// leaderless is how long a cluster may have no etcd leader before a server says that it has
// lost its quorum: an election takes a second at most.
const leaderless = 3 * time.Second

// leadership tells the log when this member leads, and when the cluster has lost its quorum
// and found it again: writes stop in between.
type leadership struct {
	last         types.ID
	noneSince    time.Time
	quorumLogged bool
}

func (l *leadership) observe(leader, self types.ID, now time.Time, log *logrus.Logger) {
	if leader == 0 {
		if l.noneSince.IsZero() {
			l.noneSince = now
		}
		if !l.quorumLogged && now.Sub(l.noneSince) >= leaderless {
			log.Warn("etcd has no leader: a majority of the servers cannot be reached (quorum lost), so the cluster takes no writes until enough of them are back")
			l.quorumLogged = true
		}
		return
	}
	if l.quorumLogged {
		log.Info("etcd has a leader again: the cluster takes writes")
	}
	l.noneSince, l.quorumLogged = time.Time{}, false
	if leader != l.last && leader == self {
		log.WithField("member", self.String()).Info("this server's etcd member leads the cluster")
	}
	l.last = leader
}
