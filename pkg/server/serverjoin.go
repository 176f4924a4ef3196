package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/encryption"
	"github.com/kone-dev/kone/pkg/etcd"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/token"
)

// sharedFiles are the files every server of a cluster holds alike, by their key in the server
// data that joining servers fetch (join.ServerDataName). The server token is not among them: a
// joining server keeps the one it joined with, which the cluster has just accepted, and follows
// it from then on (follower).
func sharedFiles(cfg *config.Config, ca *pki.Cluster) map[string]string {
	files := ca.Shared()
	files[join.EncryptionConfigKey] = cfg.EncryptionConfig()
	return files
}

// fetchServerData gives a server that joins the cluster of cfg.Server what every server of it
// shares, unless its data dir holds a cluster already. It pins the cluster's CA with the
// token, reads the server data with it (only the server token may), and checks that this
// server's settings are the cluster's, before it writes anything. The CA certificate is
// written last: a data dir with it holds all of them.
func fetchServerData(ctx context.Context, cfg *config.Config, ca *pki.Cluster, log *logrus.Logger) error {
	tok, err := token.Parse(cfg.Token)
	if err != nil {
		return fmt.Errorf("--token: %w", err)
	}
	if own, err := os.ReadFile(ca.ServerCA); err == nil {
		if err := tok.CheckCA(own); err != nil {
			return fmt.Errorf("--data-dir %s belongs to another cluster than the one of --server %s (%w); to join that cluster, start with an empty --data-dir", cfg.DataDir, cfg.Server, err)
		}
		return nil
	}
	caPEM, err := join.Discover(ctx, cfg.Server, tok, func(w error) { log.Warn(w.Error()) })
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: cfg.Server, BearerToken: tok.Bootstrap(),
		TLSClientConfig: rest.TLSClientConfig{CAData: caPEM}, Timeout: 15 * time.Second})
	if err != nil {
		return fmt.Errorf("server %s: %w", cfg.Server, err)
	}
	data, err := join.FetchServerData(ctx, cs)
	if err != nil {
		return err
	}
	theirs, err := join.ReadSettings(ctx, cs)
	if err != nil {
		return err
	}
	if err := completeServerData(cfg, ca, data); err != nil {
		return fmt.Errorf("the server data of %s %w; is every server of the cluster running this kone version?", cfg.Server, err)
	}
	secrets, err := encryption.Parse(data[join.EncryptionConfigKey], "of the cluster")
	if err != nil {
		return err
	}
	if err := sameSettings(clusterSettings(cfg), theirs, cfg.SecretsEncryption, secrets.Enabled); err != nil {
		return err
	}
	// After a rotate-ca the server data's CA file holds the old CA too, which a token pinned to
	// the new one does not vouch for (and discovery dropped).
	if vouched, err := tok.TrustedCA(data["server-ca.crt"]); err != nil || string(vouched) != string(caPEM) {
		return fmt.Errorf("the server data of %s holds another CA than the one the token pins; is something intercepting the connection?", cfg.Server)
	}
	// Written first: from here on this data dir belongs to the cluster it joins, and must never
	// start an etcd cluster of its own (etcdJoin).
	if err := pki.WriteFile(joinedFile(cfg), []byte(cfg.Server+"\n"), 0o600); err != nil {
		return err
	}
	// The server token joined this server; it is the cluster's, published already.
	if err := writeServerData(cfg, ca, data, tok); err != nil {
		return err
	}
	log.WithField("server", cfg.Server).Info("fetched the cluster's certificate authorities and keys to join as a server")
	return nil
}

// completeServerData checks that data holds every file that servers share.
func completeServerData(cfg *config.Config, ca *pki.Cluster, data map[string][]byte) error {
	for key := range sharedFiles(cfg, ca) {
		if len(data[key]) == 0 {
			return fmt.Errorf("lacks %s", key)
		}
	}
	return nil
}

// writeServerData writes the files that servers share from data, whose completeness was
// checked, and tok, the cluster's server token, as this server's. The CA certificate is
// written last: a data dir with it holds all of them.
func writeServerData(cfg *config.Config, ca *pki.Cluster, data map[string][]byte, tok token.Token) error {
	var caPEM []byte
	for key, path := range sharedFiles(cfg, ca) {
		if path == ca.ServerCA {
			caPEM = data[key]
			continue
		}
		if err := pki.WriteFile(path, data[key], 0o600); err != nil {
			return err
		}
	}
	pinned, err := tok.WithCA(caPEM)
	if err != nil {
		return fmt.Errorf("the server token: %w", err)
	}
	if err := pki.WriteFile(cfg.ServerToken().Token, pinned.File(), 0o600); err != nil {
		return err
	}
	if err := pki.WriteFile(cfg.ServerToken().Published, []byte(tok.ID+"\n"), 0o600); err != nil {
		return err
	}
	return pki.WriteFile(ca.ServerCA, caPEM, 0o644)
}

// etcdJoinFile holds the answer to this server's request to join the etcd cluster.
func etcdJoinFile(cfg *config.Config) string {
	return filepath.Join(cfg.ServerDir(), "db", "etcd-join")
}

// joinedFile marks a data dir that joined a cluster through cfg.Server.
func joinedFile(cfg *config.Config) string { return filepath.Join(cfg.ServerDir(), "joined") }

// sameSettings refuses to join a cluster whose settings differ from this server's flags, all
// differences named at once; whether Secrets are encrypted comes from the cluster's server data.
func sameSettings(ours, theirs join.Settings, ourSecrets, theirSecrets bool) error {
	var diffs []string
	for _, d := range []struct{ flag, ours, theirs string }{
		{"--cluster-cidr", ours.ClusterCIDR, theirs.ClusterCIDR},
		{"--service-cidr", ours.ServiceCIDR, theirs.ServiceCIDR},
		{"--cluster-dns", ours.ClusterDNS, theirs.ClusterDNS},
		{"--cluster-domain", ours.ClusterDomain, theirs.ClusterDomain},
		{"--flannel-backend", ours.FlannelBackend, theirs.FlannelBackend},
		{"--disable=coredns", fmt.Sprint(!ours.CoreDNS), fmt.Sprint(!theirs.CoreDNS)},
		{"--https-listen-port", fmt.Sprint(ours.APIServerPort), fmt.Sprint(theirs.APIServerPort)},
		{"--secrets-encryption", fmt.Sprint(ourSecrets), fmt.Sprint(theirSecrets)},
	} {
		// A kone before this one did not publish its port.
		unpublished := d.flag == "--https-listen-port" && d.theirs == "0"
		if d.ours != d.theirs && !unpublished {
			diffs = append(diffs, fmt.Sprintf("%s is %s here but %s in the cluster", d.flag, d.ours, d.theirs))
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("this server's settings differ from the cluster's: %s; give it the cluster's", strings.Join(diffs, "; "))
	}
	return nil
}

// etcdJoin is the initial cluster this server's etcd member starts into: the answer to its
// membership request, kept in a file so that a member whose first start failed never starts
// a cluster of its own instead. It is empty for a server that started the cluster, or one
// whose etcd holds data from before this file existed.
func etcdJoin(ctx context.Context, cfg *config.Config, ca *pki.Cluster, name, peerURL string) (string, error) {
	file := etcdJoinFile(cfg)
	data, err := os.ReadFile(file)
	if err == nil {
		return strings.TrimSpace(string(data)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("etcd membership: %w", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.ServerDir(), "db", "etcd", "member")); err == nil {
		return "", nil
	}
	if cfg.Server == "" {
		if _, err := os.Stat(joinedFile(cfg)); err == nil {
			return "", fmt.Errorf("this server joined a cluster but has no etcd data (a first start that did not finish, or %s moved away): "+
				"start it with --server https://ANOTHER-SERVER:6443 and the server token to join again", filepath.Join(cfg.ServerDir(), "db"))
		}
		return "", nil
	}
	if peerURL == etcd.PeerURL(nil, cfg.EtcdPeerPort) {
		return "", errors.New("this server has no address that other servers can reach (no default route): give it --node-ip")
	}
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: cfg.Server, Timeout: 15 * time.Second,
		TLSClientConfig: rest.TLSClientConfig{CAFile: ca.ServerCA, CertFile: ca.Admin.Cert, KeyFile: ca.Admin.Key}})
	if err != nil {
		return "", fmt.Errorf("etcd membership: %w", err)
	}
	peerCert, err := os.ReadFile(ca.EtcdPeer.Cert)
	if err != nil {
		return "", fmt.Errorf("etcd membership: %w", err)
	}
	initial, err := etcd.RequestMembership(ctx, cs, name, peerURL, peerCert)
	if err != nil {
		return "", fmt.Errorf("join the etcd cluster through %s: %w", cfg.Server, err)
	}
	return initial, pki.WriteFile(file, []byte(initial+"\n"), 0o600)
}
