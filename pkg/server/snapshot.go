package server

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"
	k8sversion "k8s.io/component-base/version"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/etcd"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/snapshot"
	"github.com/kone-dev/kone/pkg/token"
	"github.com/kone-dev/kone/pkg/version"
)

// snapshotSaver saves the snapshots of this server's etcd member, named for node.
func snapshotSaver(cfg *config.Config, ca *pki.Cluster, node string, kube kubernetes.Interface, log *logrus.Logger) (snapshot.Saver, error) {
	caPEM, err := os.ReadFile(ca.ServerCA)
	if err != nil {
		return snapshot.Saver{}, fmt.Errorf("the cluster's CA: %w; run this on a server, or give its --data-dir", err)
	}
	cluster, err := token.CAHash(caPEM)
	if err != nil {
		return snapshot.Saver{}, err
	}
	return snapshot.Saver{
		Dir:  snapshot.Dir(cfg.SnapshotDir()),
		Dial: etcdClient(cfg, ca).Dial,
		Template: snapshot.Meta{Node: node, Kone: version.Version, Kubernetes: k8sversion.Get().GitVersion,
			Cluster: cluster},
		Kube: kube, Log: log,
	}, nil
}

func etcdClient(cfg *config.Config, ca *pki.Cluster) etcd.Client {
	return etcd.Client{URL: cfg.EtcdURL(), CA: ca.EtcdServerCA, Cert: ca.APIServerEtcd}
}

// Snapshots saves, lists and deletes the snapshots of the running server on this machine, as
// `kone etcd-snapshot` does: found by the server's configuration, and named for the node its
// etcd member says it is.
func Snapshots(ctx context.Context, cfg *config.Config, log *logrus.Logger) (snapshot.Saver, error) {
	ca := pki.Layout(cfg.TLSDir())
	ec := etcdClient(cfg, ca)
	cli, err := ec.Dial()
	if err != nil {
		return snapshot.Saver{}, err
	}
	defer cli.Close()
	node, err := ec.MemberName(ctx, cli)
	if err != nil {
		return snapshot.Saver{}, err
	}
	admin := adminConfig(cfg, ca)
	admin.Timeout = 15 * time.Second
	kube, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return snapshot.Saver{}, err
	}
	return snapshotSaver(cfg, ca, node, kube, log)
}
