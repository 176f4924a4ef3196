// Package storage is kone's local-path storage: the default StorageClass local-path, served on
// every node by a provisioner inside kone, with no helper pod and no image. A claim of the class
// waits for its first pod (WaitForFirstConsumer); once the scheduler has chosen the pod's node,
// that node's kone makes a directory under its storage path and publishes it as a `local`
// PersistentVolume pinned to the node. When the claim goes, a Delete volume's directory is
// removed by the same node, and a Retain volume's is kept.
//
// Each node runs upstream's provision controller (sigs.k8s.io/sig-storage-lib-external-provisioner)
// for the claims and volumes of its own node only, with an identity of its own
// (system:kone:local-path:NODE) that an admission policy of the server holds to that node.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

const (
	// Provisioner is the provisioner name of the local-path StorageClass.
	Provisioner = "kone.dev/local-path"
	// selectedNode is where the scheduler writes the node it chose for a claim's first pod.
	selectedNode = "volume.kubernetes.io/selected-node"
	// hostnameLabel is the node label a volume's node affinity names; kubelet sets it to the
	// node's name (kone runs it with --hostname-override).
	hostnameLabel = corev1.LabelHostname
)

// Config is what a node's provisioner needs.
type Config struct {
	NodeName string
	// Root is the directory the volumes' directories are made in.
	Root   string
	Client kubernetes.Interface // the node's local-path identity
	Log    *logrus.Logger
}

// Local is the node's provisioner, a component.
type Local struct {
	cfg Config
}

// New checks the configuration.
func New(cfg Config) (*Local, error) {
	if cfg.NodeName == "" || !filepath.IsAbs(cfg.Root) || cfg.Client == nil {
		return nil, fmt.Errorf("local-path storage: a node name, an absolute storage path and a client are needed (got %q, %q)", cfg.NodeName, cfg.Root)
	}
	return &Local{cfg: Config{NodeName: cfg.NodeName, Root: filepath.Clean(cfg.Root), Client: cfg.Client, Log: cfg.Log}}, nil
}

func (l *Local) Name() string { return "local-path storage" }

// Ready at once: claims wait for the provisioner, not the other way round.
func (l *Local) Ready(context.Context) error { return nil }

func (l *Local) Run(ctx context.Context) error {
	// Only the owner may enter: a volume's files are its pods'.
	if err := os.MkdirAll(l.cfg.Root, 0o700); err != nil {
		return fmt.Errorf("local-path storage: %w; choose another --default-local-storage-path", err)
	}
	ctrl := controller.NewProvisionController(ctx, l.cfg.Client, Provisioner, provisioner{l.cfg},
		// One per node, each for its own node's claims: no leader.
		controller.LeaderElection(false),
		controller.MetricsPort(0),
		// The directory is removed before the volume goes.
		controller.AddFinalizer(true),
	)
	ctrl.Run(ctx)
	return nil
}

// provisioner makes and removes the directories of one node's volumes.
type provisioner struct{ cfg Config }

var (
	_ controller.Provisioner   = provisioner{}
	_ controller.Qualifier     = provisioner{}
	_ controller.DeletionGuard = provisioner{}
)

// ShouldProvision: only a claim whose first pod was scheduled to this node.
func (p provisioner) ShouldProvision(_ context.Context, claim *corev1.PersistentVolumeClaim) bool {
	return claim.Annotations[selectedNode] == p.cfg.NodeName
}

// ShouldDelete: only a volume of this node.
func (p provisioner) ShouldDelete(_ context.Context, pv *corev1.PersistentVolume) bool {
	return NodeOf(pv) == p.cfg.NodeName
}

func (p provisioner) Provision(_ context.Context, opts controller.ProvisionOptions) (*corev1.PersistentVolume, controller.ProvisioningState, error) {
	if opts.SelectedNodeName != p.cfg.NodeName {
		return nil, controller.ProvisioningFinished, &controller.IgnoredError{Reason: "the claim's pod was scheduled to another node"}
	}
	claim := opts.PVC
	if len(opts.StorageClass.Parameters) > 0 {
		return nil, controller.ProvisioningFinished, fmt.Errorf("StorageClass %s has parameters, which kone's local-path takes none of", opts.StorageClass.Name)
	}
	if claim.Spec.Selector != nil {
		return nil, controller.ProvisioningFinished, errors.New("a claim with a selector: local-path makes new volumes, which no selector picks; remove the selector")
	}
	if claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode == corev1.PersistentVolumeBlock {
		return nil, controller.ProvisioningFinished, errors.New("local-path volumes are directories: volumeMode Block is not possible")
	}
	for _, m := range claim.Spec.AccessModes {
		if m != corev1.ReadWriteOnce && m != corev1.ReadWriteOncePod {
			return nil, controller.ProvisioningFinished, fmt.Errorf("access mode %s: a local-path volume lives on one node, so only ReadWriteOnce and ReadWriteOncePod", m)
		}
	}
	dir := filepath.Join(p.cfg.Root, strings.Join([]string{opts.PVName, claim.Namespace, claim.Name}, "_"))
	if err := os.Mkdir(dir, 0o777); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, controller.ProvisioningFinished, fmt.Errorf("node %s: %w", p.cfg.NodeName, err)
	}
	// Writable by the pod's user, whoever it is, as with k3s's local-path: the storage path
	// itself is closed to other users of the machine. Mkdir's mode is cut by the umask.
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("node %s: %w", p.cfg.NodeName, err)
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	filesystem := corev1.PersistentVolumeFilesystem
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: claim.Spec.Resources.Requests[corev1.ResourceStorage]},
			AccessModes:                   claim.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              opts.StorageClass.Name,
			MountOptions:                  opts.StorageClass.MountOptions,
			VolumeMode:                    &filesystem,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: dir}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: hostnameLabel, Operator: corev1.NodeSelectorOpIn, Values: []string{p.cfg.NodeName}}},
			}}}},
		},
	}
	p.cfg.Log.WithFields(logrus.Fields{"volume": opts.PVName, "claim": claim.Namespace + "/" + claim.Name, "path": dir}).Info("made a local-path volume")
	return pv, controller.ProvisioningFinished, nil
}

// Delete removes the volume's directory, which must be one that this node made: directly in
// its storage path. A volume that names another path (an administrator's, or one from before
// the storage path moved) is refused rather than removed.
func (p provisioner) Delete(_ context.Context, pv *corev1.PersistentVolume) error {
	if NodeOf(pv) != p.cfg.NodeName {
		return &controller.IgnoredError{Reason: "the volume is another node's"}
	}
	if pv.Spec.Local == nil {
		return fmt.Errorf("volume %s is not a local volume; kone's local-path did not make it, and removes nothing", pv.Name)
	}
	dir := filepath.Clean(pv.Spec.Local.Path)
	if filepath.Dir(dir) != p.cfg.Root || !strings.HasPrefix(filepath.Base(dir), pv.Name+"_") {
		return fmt.Errorf("volume %s is at %s, which is not a directory this node made in its storage path %s; remove it by hand, then the volume's finalizer", pv.Name, dir, p.cfg.Root)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("node %s: %w", p.cfg.NodeName, err)
	}
	p.cfg.Log.WithFields(logrus.Fields{"volume": pv.Name, "path": dir}).Info("removed a local-path volume")
	return nil
}

// NodeOf is the node a volume is pinned to, or empty.
func NodeOf(pv *corev1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil || len(pv.Spec.NodeAffinity.Required.NodeSelectorTerms) != 1 {
		return ""
	}
	exprs := pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions
	if len(exprs) != 1 || exprs[0].Key != hostnameLabel || exprs[0].Operator != corev1.NodeSelectorOpIn || len(exprs[0].Values) != 1 {
		return ""
	}
	return exprs[0].Values[0]
}
