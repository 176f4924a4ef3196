package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

// Provisioner publishes the volumes of local-path claims, on the server that holds its lease.
type Provisioner struct {
	cs  kubernetes.Interface
	log *logrus.Logger
}

// NewProvisioner returns the component; cs must be allowed to read nodes, claims and classes,
// to create, change and delete volumes, to change claims and to record events.
func NewProvisioner(cs kubernetes.Interface, log *logrus.Logger) *Provisioner {
	return &Provisioner{cs: cs, log: log}
}

func (p *Provisioner) Name() string { return "local-path provisioner" }

// Ready at once: claims wait for the provisioner, not the other way round.
func (p *Provisioner) Ready(context.Context) error { return nil }

func (p *Provisioner) Run(ctx context.Context) error {
	ctrl := controller.NewProvisionController(ctx, p.cs, ProvisionerName, volumes{cs: p.cs, log: p.log},
		// kone elects the one that runs.
		controller.LeaderElection(false),
		controller.MetricsPort(0),
		controller.AddFinalizer(true),
	)
	ctrl.Run(ctx)
	return nil
}

// volumes makes and deletes the volume objects; the nodes make and remove the directories.
type volumes struct {
	cs  kubernetes.Interface
	log *logrus.Logger
}

var _ controller.Provisioner = volumes{}

func (v volumes) Provision(ctx context.Context, opts controller.ProvisionOptions) (*corev1.PersistentVolume, controller.ProvisioningState, error) {
	claim := opts.PVC
	if len(opts.StorageClass.Parameters) > 0 {
		return nil, controller.ProvisioningFinished, fmt.Errorf("StorageClass %s has parameters, which kone's local-path takes none of", opts.StorageClass.Name)
	}
	if claim.Spec.Selector != nil {
		return nil, controller.ProvisioningFinished, errors.New("a claim with a selector: local-path makes new volumes, which no selector picks; remove the selector")
	}
	if claim.Spec.DataSource != nil || claim.Spec.DataSourceRef != nil {
		return nil, controller.ProvisioningFinished, errors.New("a claim with a dataSource: local-path volumes start empty, and cannot be cloned or restored from a snapshot; remove dataSource")
	}
	if claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode == corev1.PersistentVolumeBlock {
		return nil, controller.ProvisioningFinished, errors.New("local-path volumes are directories: volumeMode Block is not possible")
	}
	for _, m := range claim.Spec.AccessModes {
		if m != corev1.ReadWriteOnce && m != corev1.ReadWriteOncePod {
			return nil, controller.ProvisioningFinished, fmt.Errorf("access mode %s: a local-path volume lives on one node, so only ReadWriteOnce and ReadWriteOncePod", m)
		}
	}
	name := opts.SelectedNodeName
	node, err := v.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, controller.ProvisioningReschedule, fmt.Errorf("node %s is gone; the claim's pod is scheduled again", name)
	}
	if err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("node %s: %w", name, err)
	}
	root := node.Annotations[PathAnnotation]
	if root == "" || !filepath.IsAbs(root) || filepath.Clean(root) != root {
		// Rescheduled: the scheduler may choose a node that serves.
		return nil, controller.ProvisioningReschedule, fmt.Errorf("node %s does not serve local-path volumes (its kone predates them, runs without them, or has not started since); the claim's pod is scheduled again", name)
	}
	dir := filepath.Join(root, dirName(opts.PVName, claim.Namespace, claim.Name))
	if filepath.Base(dir) != dirName(opts.PVName, claim.Namespace, claim.Name) || len(filepath.Base(dir)) > 255 {
		return nil, controller.ProvisioningFinished, fmt.Errorf("the claim's name makes a directory name longer than a file system takes (%d bytes); choose a shorter name", len(filepath.Base(dir)))
	}
	if node.Labels[PinLabel] != name {
		if errs := validation.IsValidLabelValue(name); len(errs) > 0 {
			return nil, controller.ProvisioningFinished, fmt.Errorf("node %s: its name cannot be a label value (%s), and local-path volumes are pinned by one", name, strings.Join(errs, "; "))
		}
		patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{PinLabel: name}}})
		if err != nil {
			return nil, controller.ProvisioningFinished, err
		}
		if _, err := v.cs.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return nil, controller.ProvisioningFinished, fmt.Errorf("label node %s for its local-path volumes: %w", name, err)
		}
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	filesystem := corev1.PersistentVolumeFilesystem
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName, Labels: map[string]string{NodeLabel: name}, Finalizers: []string{Finalizer}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: claim.Spec.Resources.Requests[corev1.ResourceStorage]},
			AccessModes:                   claim.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              opts.StorageClass.Name,
			MountOptions:                  opts.StorageClass.MountOptions,
			VolumeMode:                    &filesystem,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: dir}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: PinLabel, Operator: corev1.NodeSelectorOpIn, Values: []string{name}}},
			}}}},
		},
	}
	v.log.WithFields(logrus.Fields{"volume": opts.PVName, "claim": claim.Namespace + "/" + claim.Name, "node": name}).Info("published a local-path volume")
	return pv, controller.ProvisioningFinished, nil
}

// Delete has nothing to remove here: the volume's node removes the directory as the volume
// object goes, and kone's finalizer holds the object until it has.
func (v volumes) Delete(context.Context, *corev1.PersistentVolume) error { return nil }
