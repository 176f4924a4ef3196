package storage

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

func quiet() *logrus.Logger {
	log := logrus.New()
	log.SetOutput(io.Discard)
	return log
}

func claim(modes ...corev1.PersistentVolumeAccessMode) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: "apps"},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: modes,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}},
	}
}

func options(c *corev1.PersistentVolumeClaim, class *storagev1.StorageClass, node string) controller.ProvisionOptions {
	if class == nil {
		class = &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "local-path"}, Provisioner: ProvisionerName}
	}
	return controller.ProvisionOptions{StorageClass: class, PVName: "pvc-1234", PVC: c, SelectedNodeName: node}
}

func storageNode(name, path string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if path != "" {
		n.Annotations = map[string]string{PathAnnotation: path}
	}
	return n
}

func TestProvision(t *testing.T) {
	ctx := context.Background()
	v := volumes{cs: fake.NewClientset(storageNode("edge-1", "/var/lib/kone/storage"), storageNode("old", "")), log: quiet()}
	retain := corev1.PersistentVolumeReclaimRetain
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "keep"}, Provisioner: ProvisionerName, ReclaimPolicy: &retain}
	pv, state, err := v.Provision(ctx, options(claim(corev1.ReadWriteOnce), class, "edge-1"))
	if err != nil || state != controller.ProvisioningFinished {
		t.Fatalf("%v, %v", state, err)
	}
	if pv.Spec.Local == nil || pv.Spec.Local.Path != "/var/lib/kone/storage/pvc-1234_apps_data" || NodeOf(pv) != "edge-1" ||
		pv.Labels[NodeLabel] != "edge-1" || !slices.Contains(pv.Finalizers, Finalizer) ||
		pv.Spec.PersistentVolumeReclaimPolicy != retain || pv.Spec.StorageClassName != "keep" || pv.Spec.Capacity.Storage().String() != "1Gi" {
		t.Errorf("the volume: %+v %+v", pv.ObjectMeta, pv.Spec)
	}
	// A node that does not say where it keeps volumes does not serve: the pod goes elsewhere.
	if _, state, err := v.Provision(ctx, options(claim(corev1.ReadWriteOnce), nil, "old")); err == nil || state != controller.ProvisioningReschedule ||
		!strings.Contains(err.Error(), "node old does not serve local-path volumes") {
		t.Errorf("a node that does not serve: %v, %v", state, err)
	}

	block := claim(corev1.ReadWriteOnce)
	mode := corev1.PersistentVolumeBlock
	block.Spec.VolumeMode = &mode
	selector := claim(corev1.ReadWriteOnce)
	selector.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}}
	clone := claim(corev1.ReadWriteOnce)
	clone.Spec.DataSource = &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "other"}
	long := claim(corev1.ReadWriteOnce)
	long.Name = strings.Repeat("n", 253)
	params := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "tuned"}, Provisioner: ProvisionerName, Parameters: map[string]string{"nodePath": "/"}}
	for name, c := range map[string]struct {
		opts controller.ProvisionOptions
		says string
	}{
		"many nodes": {options(claim(corev1.ReadWriteOnce, corev1.ReadWriteMany), nil, "edge-1"), "access mode ReadWriteMany"},
		"block":      {options(block, nil, "edge-1"), "volumeMode Block"},
		"selector":   {options(selector, nil, "edge-1"), "remove the selector"},
		"clone":      {options(clone, nil, "edge-1"), "remove dataSource"},
		"long name":  {options(long, nil, "edge-1"), "choose a shorter name"},
		"parameters": {options(claim(corev1.ReadWriteOnce), params, "edge-1"), "StorageClass tuned has parameters"},
	} {
		if _, _, err := v.Provision(ctx, c.opts); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want an error saying %q", name, err, c.says)
		}
	}
}

// directoriesFixture is node edge-1's Directories over the storage path root, and the lister
// and client that hold pvs.
func directoriesFixture(t *testing.T, root string, pvs ...*corev1.PersistentVolume) (*Directories, corelisters.PersistentVolumeLister, *fake.Clientset) {
	t.Helper()
	cs := fake.NewClientset()
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, pv := range pvs {
		if err := indexer.Add(pv); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().PersistentVolumes().Create(context.Background(), pv, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	d, err := NewDirectories(Config{NodeName: "edge-1", Root: root, Client: cs, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return d, corelisters.NewPersistentVolumeLister(indexer), cs
}

func published(t *testing.T, root, node string, reclaim corev1.PersistentVolumeReclaimPolicy) *corev1.PersistentVolume {
	t.Helper()
	v := volumes{cs: fake.NewClientset(storageNode(node, root)), log: quiet()}
	pv, _, err := v.Provision(context.Background(), options(claim(corev1.ReadWriteOnce), nil, node))
	if err != nil {
		t.Fatal(err)
	}
	pv.Spec.PersistentVolumeReclaimPolicy = reclaim
	pv.Finalizers = append(pv.Finalizers, "external-provisioner.volume.kubernetes.io/finalizer")
	return pv
}

func TestDirectories(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	pv := published(t, root, "edge-1", corev1.PersistentVolumeReclaimDelete)
	d, lister, _ := directoriesFixture(t, root, pv)
	if err := d.sync(ctx, lister, pv.Name); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(pv.Spec.Local.Path)
	if err != nil || info.Mode().Perm() != 0o777 {
		t.Fatalf("the volume's directory: %v, %v; want one that any user of the pod can write", info, err)
	}
	if err := os.WriteFile(filepath.Join(pv.Spec.Local.Path, "file"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Deleted: the directory goes, then kone's finalizer, and no other.
	deleting := pv.DeepCopy()
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	d, lister, cs := directoriesFixture(t, root, deleting)
	if err := d.sync(ctx, lister, pv.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pv.Spec.Local.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a deleted volume's directory is still there: %v", err)
	}
	got, err := cs.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
	if err != nil || slices.Contains(got.Finalizers, Finalizer) || !slices.Contains(got.Finalizers, "external-provisioner.volume.kubernetes.io/finalizer") {
		t.Errorf("finalizers after the directory went: %v, %v", got.Finalizers, err)
	}
}

func TestDirectoriesKeep(t *testing.T) {
	ctx := context.Background()
	root, outside := t.TempDir(), t.TempDir()

	retained := published(t, root, "edge-1", corev1.PersistentVolumeReclaimRetain)
	if err := makeDirectory(retained.Spec.Local.Path); err != nil {
		t.Fatal(err)
	}
	// Named for the volume, but elsewhere; in the storage path, but another volume's.
	elsewhere := published(t, root, "edge-1", corev1.PersistentVolumeReclaimDelete)
	elsewhere.Name, elsewhere.Spec.Local.Path = "pvc-elsewhere", filepath.Join(outside, "pvc-elsewhere_apps_data")
	anothers := published(t, root, "edge-1", corev1.PersistentVolumeReclaimDelete)
	anothers.Name = "pvc-anothers" // its path is retained's
	climbing := published(t, root, "edge-1", corev1.PersistentVolumeReclaimDelete)
	climbing.Name, climbing.Spec.Local.Path = "pvc-climbing", filepath.Join(root, "..", filepath.Base(outside), "pvc-climbing_apps_data")
	// Another node's, whose directory here is not this node's to remove.
	others := published(t, root, "edge-2", corev1.PersistentVolumeReclaimDelete)
	others.Name, others.Spec.Local.Path = "pvc-others", filepath.Join(root, "pvc-others_apps_data")
	// Still bound to its claim: a pod may be using it.
	bound := published(t, root, "edge-1", corev1.PersistentVolumeReclaimDelete)
	bound.Name, bound.Spec.Local.Path, bound.Status.Phase = "pvc-bound", filepath.Join(root, "pvc-bound_apps_data"), corev1.VolumeBound
	for _, pv := range []*corev1.PersistentVolume{elsewhere, climbing, others, bound} {
		if err := os.MkdirAll(pv.Spec.Local.Path, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var all []*corev1.PersistentVolume
	for _, pv := range []*corev1.PersistentVolume{retained, elsewhere, anothers, climbing, others, bound} {
		pv.DeletionTimestamp = &metav1.Time{Time: time.Now()}
		all = append(all, pv)
	}
	d, lister, cs := directoriesFixture(t, root, all...)
	for _, pv := range all {
		if err := d.sync(ctx, lister, pv.Name); err != nil {
			t.Errorf("%s: %v", pv.Name, err)
		}
	}
	for _, kept := range []string{retained.Spec.Local.Path, elsewhere.Spec.Local.Path, climbing.Spec.Local.Path, others.Spec.Local.Path, bound.Spec.Local.Path} {
		if _, err := os.Stat(kept); err != nil {
			t.Errorf("%s was removed: %v", kept, err)
		}
	}
	// The volumes of this node go, their directories kept; another node's, and one still
	// bound, are not this node's to let go.
	for name, want := range map[string]bool{retained.Name: false, elsewhere.Name: false, anothers.Name: false, climbing.Name: false,
		others.Name: true, bound.Name: true} {
		got, err := cs.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
		if err != nil || slices.Contains(got.Finalizers, Finalizer) != want {
			t.Errorf("%s: finalizers %v, %v", name, got.Finalizers, err)
		}
	}
}
