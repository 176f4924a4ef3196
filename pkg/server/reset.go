package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/encryption"
	"github.com/kone-dev/kone/pkg/etcd"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/snapshot"
	"github.com/kone-dev/kone/pkg/token"
)

// prepareReset readies the data dir for --cluster-reset before the certificates are ensured,
// which would make the CA of a new cluster in a data dir that holds none. A data dir of the
// cluster is ready as it is. An empty one, on a machine new to the cluster, takes the cluster's
// files from the snapshot itself (restoreServerData).
func prepareReset(cfg *config.Config, ca *pki.Cluster, log *logrus.Logger) error {
	// An unpacked snapshot that a killed restore left holds every Secret of the cluster.
	if err := os.RemoveAll(restoreSeedDir(cfg)); err != nil {
		return fmt.Errorf("remove what an interrupted restore left: %w", err)
	}
	pending := restorePendingFile(cfg)
	_, err := os.Stat(pending)
	isPending := err == nil
	if !cfg.ClusterReset {
		if isPending {
			return fmt.Errorf("%s was being set up to restore a snapshot, which was not restored: start again with --cluster-reset, --cluster-reset-restore-path and --token, "+
				"or move %s away to start a new cluster", cfg.DataDir, cfg.ServerDir())
		}
		return nil
	}
	if _, err := os.Stat(ca.ServerCA); err == nil {
		return nil
	}
	if cfg.ClusterResetRestorePath == "" {
		return fmt.Errorf("--cluster-reset: %s holds no cluster (no %s), so there is no etcd data of its own to reset; "+
			"to restore a snapshot here, give --cluster-reset-restore-path and the cluster's server token (--token)", cfg.DataDir, ca.ServerCA)
	}
	if cfg.Token == "" {
		return fmt.Errorf("--cluster-reset: %s holds no cluster (no %s); to restore the snapshot on this machine, also give --token "+
			"with the cluster's server token as it was when the snapshot was taken (server/token in a server's data dir): the snapshot carries the cluster's keys sealed with it",
			cfg.DataDir, ca.ServerCA)
	}
	return restoreServerData(cfg, ca, log)
}

// restorePendingFile marks a data dir that took the cluster's files from a snapshot but whose
// etcd does not hold the snapshot yet: it must not start a cluster of its own.
func restorePendingFile(cfg *config.Config) string {
	return filepath.Join(cfg.ServerDir(), "db", "restore-pending")
}

// restoreSeedDir is where restoreServerData unpacks the snapshot to read the sealed data.
func restoreSeedDir(cfg *config.Config) string {
	return filepath.Join(cfg.ServerDir(), "db", "restore-seed")
}

// restoreServerData writes the cluster's CAs and keys, secrets-encryption configuration and
// server token into a data dir that holds no cluster, from the server data sealed in the
// snapshot (sealer.seal). Nothing is written unless --token opens it and it is of the
// cluster whose CA the token pins, when it pins one.
func restoreServerData(cfg *config.Config, ca *pki.Cluster, log *logrus.Logger) error {
	tok, err := token.Parse(cfg.Token)
	if err != nil {
		return fmt.Errorf("--token: %w", err)
	}
	src := restoreSource(cfg)
	seed := restoreSeedDir(cfg)
	defer os.RemoveAll(seed)
	db := filepath.Join(seed, "member", "snap", "db")
	if err := os.MkdirAll(filepath.Dir(db), 0o700); err != nil {
		return fmt.Errorf("--cluster-reset: %w", err)
	}
	if _, err := snapshot.Unpack(src, db); err != nil {
		return fmt.Errorf("--cluster-reset: %w", err)
	}
	value, err := etcd.ReadKey(seed, join.SealedServerDataKey)
	if err != nil {
		return fmt.Errorf("--cluster-reset: %w", err)
	}
	if value == nil {
		return fmt.Errorf("--cluster-reset: the snapshot %s holds none of the cluster's keys (its server token had been deleted, it was taken by a kone before they were kept in etcd, "+
			"or it is not of a kone cluster): restore it on a server of its cluster, whose data dir holds them; nothing was written", src)
	}
	data, err := join.OpenServerData(tok, value)
	if err != nil {
		return fmt.Errorf("--cluster-reset: --token: %w; nothing was written", err)
	}
	if err := completeServerData(cfg, ca, data); err != nil {
		return fmt.Errorf("--cluster-reset: the server data in the snapshot %w; nothing was written", err)
	}
	if tok.CAHash != "" {
		if err := tok.CheckCA(data["server-ca.crt"]); err != nil {
			return fmt.Errorf("--cluster-reset: --token pins another CA than the snapshot's cluster has (%w); nothing was written", err)
		}
	}
	// What opened with the token is whole: checked before anything is written.
	if _, err := token.CAHash(data["server-ca.crt"]); err != nil {
		return fmt.Errorf("--cluster-reset: the CA in the snapshot: %w; nothing was written", err)
	}
	if _, err := encryption.Parse(data[join.EncryptionConfigKey], "in the snapshot"); err != nil {
		return fmt.Errorf("--cluster-reset: %w; nothing was written", err)
	}
	if err := pki.WriteFile(restorePendingFile(cfg), []byte(src+"\n"), 0o600); err != nil {
		return err
	}
	if err := writeServerData(cfg, ca, data, tok); err != nil {
		return err
	}
	log.WithField("snapshot", src).Info("took the cluster's certificate authorities, keys and server token from the snapshot")
	return nil
}

// resetEtcd does what --cluster-reset asks of this server's etcd member before it starts, and
// finishes a reset that a crash interrupted. A reset is done once: a start that asks for it
// again is refused until one starts without it, as it would throw away what the cluster
// stored since.
func resetEtcd(ctx context.Context, cfg *config.Config, member etcd.Config, caFile, etcdPrefix string, log *logrus.Logger, etcdLog *zap.Logger) error {
	last, err := etcd.LastReset(member.DataDir)
	if err != nil {
		return err
	}
	if last != nil {
		// The snapshot is in: a data dir set up from it is the cluster's now.
		if err := removeFile(restorePendingFile(cfg)); err != nil {
			return err
		}
		if cfg.ClusterReset {
			from := "its own data"
			if last.Snapshot != "" {
				from = last.Snapshot
			}
			return fmt.Errorf("--cluster-reset: this server's etcd was reset already, at %s from %s (the data it replaced is in %s); "+
				"resetting again would lose what the cluster stored since: remove --cluster-reset and --cluster-reset-restore-path "+
				"from the command line and %s, and start again", last.At.Format(time.RFC3339), from,
				filepath.Join(filepath.Dir(member.DataDir), last.Aside), config.DefaultConfigFile)
		}
		return etcd.ForgetReset(member.DataDir)
	}
	if !cfg.ClusterReset {
		return nil
	}
	t0 := time.Now()
	reset := etcd.Reset{Member: member, Also: []string{etcdJoinFile(cfg)}, Log: etcdLog}
	fields := logrus.Fields{}
	if cfg.ClusterResetRestorePath != "" {
		// The member's own data is of this cluster; a snapshot may not be.
		reset.Snapshot, reset.Check = restoreSource(cfg), sameCluster(caFile, etcdPrefix, clusterSettings(cfg))
		fields["snapshot"] = reset.Snapshot
	}
	if err := reset.Run(ctx, time.Now()); err != nil {
		return err
	}
	if err := removeFile(restorePendingFile(cfg)); err != nil {
		return err
	}
	fields["took"] = time.Since(t0).Round(time.Millisecond)
	log.WithFields(fields).Warn("etcd was reset to a cluster of this server alone; the data it replaced is kept beside it. " +
		"Join the other servers anew: on each, move " + filepath.Join(cfg.ServerDir(), "db") + " aside and start kone with --server pointing here. " +
		"Remove --cluster-reset before kone's next start")
	return nil
}

// restoreSource is the snapshot file --cluster-reset-restore-path names: a path, or the name
// of a snapshot in the snapshot directory, as `kone etcd-snapshot ls` lists it.
func restoreSource(cfg *config.Config) string {
	p := cfg.ClusterResetRestorePath
	if !strings.Contains(p, "/") && snapshot.CheckName(p) == nil {
		named := snapshot.Dir(cfg.SnapshotDir()).File(p)
		if _, err := os.Stat(named); err == nil {
			return named
		}
	}
	return p
}

// sameCluster checks that etcd data is of the cluster whose CA is caFile, and that its
// settings are ours: kone's cluster-info, which every kone server publishes as it first
// starts, names the CA, and its settings give the networks that its Services and Pods have
// addresses from.
func sameCluster(caFile, etcdPrefix string, ours join.Settings) func(string) error {
	return func(dataDir string) error {
		info, err := snapshotConfigMap(dataDir, etcdPrefix, metav1.NamespacePublic, bootstrapapi.ConfigMapClusterInfo)
		if err != nil {
			return err
		}
		if info == nil {
			return errors.New("--cluster-reset: the snapshot holds no kone cluster (no kube-public/cluster-info in it): nothing was restored")
		}
		theirs, err := token.ClusterInfo(info)
		if err != nil {
			return fmt.Errorf("--cluster-reset: the snapshot's kube-public/cluster-info: %w: nothing was restored", err)
		}
		ca, err := os.ReadFile(caFile)
		if err != nil {
			return fmt.Errorf("--cluster-reset: this server's CA: %w", err)
		}
		same, err := sameAuthority(theirs.CertificateAuthorityData, ca)
		if err != nil {
			return fmt.Errorf("--cluster-reset: compare the snapshot's cluster with this one: %w", err)
		}
		if !same {
			return errors.New("--cluster-reset: the snapshot is of another cluster (its CA is not this server's): nothing was restored; " +
				"restore a snapshot of this cluster, or restore this one on a server of its own cluster")
		}
		cm, err := snapshotConfigMap(dataDir, etcdPrefix, metav1.NamespaceSystem, join.SettingsName)
		if err != nil || cm == nil {
			return err // a kone before the settings did not publish them
		}
		settings, err := join.SettingsOf(cm)
		if err != nil {
			return fmt.Errorf("--cluster-reset: the snapshot's %s/%s: %w: nothing was restored", metav1.NamespaceSystem, join.SettingsName, err)
		}
		// Only what the stored objects depend on: their addresses come from the networks, and
		// the pods' from the overlay. Whether kone runs CoreDNS, on which port it serves and
		// whether it encrypts Secrets may change from one start to the next.
		settings.CoreDNS, settings.APIServerPort = ours.CoreDNS, ours.APIServerPort
		if err := sameSettings(ours, settings, false, false); err != nil {
			return fmt.Errorf("--cluster-reset: the snapshot's Services and Pods have addresses from its cluster's networks, and %w: nothing was restored", err)
		}
		return nil
	}
}

// snapshotConfigMap reads the ConfigMap namespace/name from the etcd data in dataDir; nil if
// there is none.
func snapshotConfigMap(dataDir, etcdPrefix, namespace, name string) (*corev1.ConfigMap, error) {
	value, err := etcd.ReadKey(dataDir, path.Join(etcdPrefix, "configmaps", namespace, name))
	if err != nil {
		return nil, fmt.Errorf("--cluster-reset: %w", err)
	}
	if value == nil {
		return nil, nil
	}
	obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(value, nil, nil)
	cm, ok := obj.(*corev1.ConfigMap)
	if err == nil && !ok {
		err = fmt.Errorf("it is a %T", obj)
	}
	if err != nil {
		return nil, fmt.Errorf("--cluster-reset: the snapshot's %s/%s is not a ConfigMap that kone can read (%v): nothing was restored", namespace, name, err)
	}
	return cm, nil
}

// sameAuthority reports whether two CA files are of one cluster: the CA of one is in the other,
// as after a rotate-ca the CA before it is, beside the new one.
func sameAuthority(a, b []byte) (bool, error) {
	as, err := pki.ParseCerts(a)
	if err != nil {
		return false, err
	}
	bs, err := pki.ParseCerts(b)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(bs, as[0].Equal) || slices.ContainsFunc(as, bs[0].Equal), nil
}

// removeFile removes path, which may be gone already.
func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
