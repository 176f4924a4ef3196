// Package etcd runs kone's datastore: etcd, embedded in the kone process through
// go.etcd.io/etcd/server/v3/embed, with TLS for clients and peers, listening on loopback.
package etcd

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"reflect"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"sigs.k8s.io/yaml"

	"github.com/kone-dev/kone/pkg/pki"
)

// Config is what the datastore needs from kone's configuration.
type Config struct {
	Name       string
	DataDir    string // etcd's own data directory
	ClientPort int
	PeerPort   int
	ServerCA   string
	PeerCA     string
	Serving    pki.File
	Peer       pki.File
	// Args are --etcd-arg key=value settings, keys as in etcd's config file, applied last.
	Args []string
}

// ClientURL is where etcd serves clients.
func (c Config) ClientURL() string { return fmt.Sprintf("https://127.0.0.1:%d", c.ClientPort) }

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
	peer := url.URL{Scheme: "https", Host: fmt.Sprintf("127.0.0.1:%d", c.PeerPort)}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.DataDir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = c.Name + "=" + peer.String()
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: c.Serving.Cert, KeyFile: c.Serving.Key, TrustedCAFile: c.ServerCA, ClientCertAuth: true}
	cfg.PeerTLSInfo = transport.TLSInfo{CertFile: c.Peer.Cert, KeyFile: c.Peer.Key, TrustedCAFile: c.PeerCA, ClientCertAuth: true}
	cfg.TlsMinVersion, cfg.CipherSuites = "TLS1.2", pki.StrongCipherSuites()
	// etcd keeps this many raft entries in memory between snapshots; its default of 10000 costs
	// tens of MiB that a small cluster never needs.
	cfg.SnapshotCount = 5000
	// A restarted single member skips all but one tick of its election timeout, but raft draws
	// the timeout at random from one to two times the setting: with etcd's 1 s, a restart
	// waited 0.1 to 1 s for its own election. The shortest timeout etcd allows for its 100 ms
	// heartbeat (five beats) halves that. Servers that join each other over slow links will want
	// more (--etcd-arg election-timeout=…).
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
	dataDir string
	started chan struct{}
	server  *embed.Etcd
}

// New checks c, --etcd-arg included, and returns the component; nothing starts until Run.
func New(c Config, log *zap.Logger) (*Etcd, error) {
	cfg, err := Settings(c)
	if err != nil {
		return nil, err
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(log)
	return &Etcd{cfg: cfg, dataDir: c.DataDir, started: make(chan struct{})}, nil
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
	defer server.Close()
	select {
	case <-ctx.Done():
		return nil
	case err := <-server.Err():
		return fmt.Errorf("etcd: %w", err)
	}
}

// Ready waits for etcd to join its cluster and serve.
func (e *Etcd) Ready(ctx context.Context) error {
	select {
	case <-e.started:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-e.server.Server.ReadyNotify():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
