package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/etcd"
	"github.com/kone-dev/kone/pkg/snapshot"
	"github.com/kone-dev/kone/pkg/token"
)

// checkResettable refuses --cluster-reset in a data dir that holds no cluster: a snapshot
// restores into a server of the cluster it was taken from, whose CAs are in its data dir.
// Called before the certificates are ensured, which would make a CA of a new cluster.
func checkResettable(cfg *config.Config, caFile string) error {
	if !cfg.ClusterReset {
		return nil
	}
	if _, err := os.Stat(caFile); err != nil {
		return fmt.Errorf("--cluster-reset: %s holds no cluster's certificates (%s); a snapshot is restored on a server of the cluster it was taken from, "+
			"with that server's data dir (--data-dir)", cfg.DataDir, caFile)
	}
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
		reset.Snapshot, reset.Check = restoreSource(cfg), sameCluster(caFile, etcdPrefix)
		fields["snapshot"] = reset.Snapshot
	}
	if err := reset.Run(ctx, time.Now()); err != nil {
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

// sameCluster checks that etcd data is of the cluster whose CA is caFile: kone's cluster-info,
// which every kone server publishes as it first starts, names the CA.
func sameCluster(caFile, etcdPrefix string) func(string) error {
	return func(dataDir string) error {
		key := path.Join(etcdPrefix, "configmaps", "kube-public", "cluster-info")
		value, err := etcd.ReadKey(dataDir, key)
		if err != nil {
			return fmt.Errorf("--cluster-reset: %w", err)
		}
		if value == nil {
			return errors.New("--cluster-reset: the snapshot holds no kone cluster (no kube-public/cluster-info in it): nothing was restored")
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(value, nil, nil)
		cm, ok := obj.(*corev1.ConfigMap)
		if err == nil && !ok {
			err = fmt.Errorf("it is a %T", obj)
		}
		if err != nil {
			return fmt.Errorf("--cluster-reset: the snapshot's kube-public/cluster-info is not a ConfigMap that kone can read (%v): nothing was restored", err)
		}
		theirs, err := token.ClusterInfoCA(cm)
		if err != nil {
			return fmt.Errorf("--cluster-reset: the snapshot's kube-public/cluster-info: %w: nothing was restored", err)
		}
		ours, err := os.ReadFile(caFile)
		if err != nil {
			return fmt.Errorf("--cluster-reset: this server's CA: %w", err)
		}
		theirHash, err1 := token.CAHash(theirs)
		ourHash, err2 := token.CAHash(ours)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("--cluster-reset: compare the snapshot's cluster with this one: %w", err)
		}
		if theirHash != ourHash {
			return errors.New("--cluster-reset: the snapshot is of another cluster (its CA is not this server's): nothing was restored; " +
				"restore a snapshot of this cluster, or restore this one on a server of its own cluster")
		}
		return nil
	}
}
