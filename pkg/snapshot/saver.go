package snapshot

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// ConfigMapName is the ConfigMap in kube-system that lists every server's snapshots for the
// API, a key per snapshot with its metadata as JSON. A ConfigMap, not a resource of kone's own:
// it needs no CRD installed and served, any kubectl reads it, and k3s listed its snapshots the
// same way before it had a CRD.
const ConfigMapName = "kone-etcd-snapshots"

// Saver saves, deletes and prunes the snapshots of this server's etcd member, and keeps the
// API's list of them (ConfigMapName) up to date.
type Saver struct {
	Dir Dir
	// Dial connects to this server's etcd member, and to it alone: a snapshot is one member's.
	Dial func() (*clientv3.Client, error)
	// Node, Kone, Kubernetes and Cluster describe every snapshot saved.
	Template Meta
	Kube     kubernetes.Interface
	Log      *logrus.Logger
}

// Save saves a snapshot named prefix-NODE-UNIXTIME.
func (s Saver) Save(ctx context.Context, prefix string) (Meta, error) {
	m, err := s.save(ctx, prefix)
	if err == nil {
		s.Publish(ctx)
	}
	return m, err
}

func (s Saver) save(ctx context.Context, prefix string) (Meta, error) {
	if err := CheckName(prefix); err != nil {
		return Meta{}, err
	}
	cli, err := s.Dial()
	if err != nil {
		return Meta{}, err
	}
	defer cli.Close()
	return s.Dir.Save(ctx, cli, prefix, s.Template, time.Now())
}

// Prune keeps the newest keep snapshots this server saved under prefix.
func (s Saver) Prune(ctx context.Context, prefix string, keep int) ([]string, error) {
	if keep < 1 {
		return nil, fmt.Errorf("retention %d: keep at least one snapshot", keep)
	}
	gone, err := s.Dir.Prune(prefix, s.Template.Node, keep)
	if len(gone) > 0 || err != nil {
		s.Publish(ctx)
	}
	return gone, err
}

// Publish makes the API's list hold this server's snapshots as they are in its directory. The
// directory is the truth: a failure is logged, and the next change or start publishes again.
func (s Saver) Publish(ctx context.Context) {
	if s.Kube == nil {
		return
	}
	all, err := s.Dir.List()
	if err == nil {
		err = publish(ctx, s.Kube, s.Template.Node, all)
	}
	if err != nil {
		s.Log.WithError(err).Warn("cannot update the list of etcd snapshots in the API (ConfigMap kube-system/" + ConfigMapName + "); the snapshots themselves are saved")
	}
}

// publish sets node's keys of the ConfigMap to its snapshots, all, and leaves other nodes' keys.
func publish(ctx context.Context, cs kubernetes.Interface, node string, all []Meta) error {
	want := map[string]string{}
	for _, m := range all {
		if m.Node != node {
			continue
		}
		data, err := json.Marshal(m)
		if err != nil {
			return err
		}
		want[m.Name] = string(data)
	}
	configMaps := cs.CoreV1().ConfigMaps(metav1.NamespaceSystem)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := configMaps.Get(ctx, ConfigMapName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: metav1.NamespaceSystem}, Data: want}
			_, err = configMaps.Create(ctx, cm, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("configmaps"), ConfigMapName, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		data := map[string]string{}
		for key, value := range cm.Data {
			var m Meta
			if json.Unmarshal([]byte(value), &m) == nil && m.Node == node {
				continue
			}
			data[key] = value
		}
		maps.Copy(data, want)
		if maps.Equal(data, cm.Data) {
			return nil
		}
		cm.Data = data
		_, err = configMaps.Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
}
