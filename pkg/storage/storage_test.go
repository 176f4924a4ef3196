package storage

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

func testProvisioner(t *testing.T) provisioner {
	log := logrus.New()
	log.SetOutput(io.Discard)
	return provisioner{Config{NodeName: "edge-1", Root: t.TempDir(), Log: log}}
}

func claim(modes ...corev1.PersistentVolumeAccessMode) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: "apps", Annotations: map[string]string{selectedNode: "edge-1"}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: modes,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}},
	}
}

func options(c *corev1.PersistentVolumeClaim, class *storagev1.StorageClass) controller.ProvisionOptions {
	if class == nil {
		class = &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "local-path"}, Provisioner: Provisioner}
	}
	return controller.ProvisionOptions{StorageClass: class, PVName: "pvc-1234", PVC: c, SelectedNodeName: c.Annotations[selectedNode]}
}

func TestProvision(t *testing.T) {
	p := testProvisioner(t)
	ctx := context.Background()
	retain := corev1.PersistentVolumeReclaimRetain
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "keep"}, Provisioner: Provisioner, ReclaimPolicy: &retain}
	pv, state, err := p.Provision(ctx, options(claim(corev1.ReadWriteOnce), class))
	if err != nil || state != controller.ProvisioningFinished {
		t.Fatalf("%v, %v", state, err)
	}
	dir := filepath.Join(p.cfg.Root, "pvc-1234_apps_data")
	if pv.Spec.Local == nil || pv.Spec.Local.Path != dir || NodeOf(pv) != "edge-1" || pv.Spec.PersistentVolumeReclaimPolicy != retain ||
		pv.Spec.StorageClassName != "keep" || pv.Spec.Capacity.Storage().String() != "1Gi" {
		t.Errorf("the volume: %+v", pv.Spec)
	}
	info, err := os.Stat(dir)
	if err != nil || info.Mode().Perm() != 0o777 {
		t.Errorf("the directory: %v, %v; want one that any user of the pod can write", info, err)
	}
	// Asked again (a retry after the volume could not be saved): the same directory.
	if _, _, err := p.Provision(ctx, options(claim(corev1.ReadWriteOnce), class)); err != nil {
		t.Errorf("provisioned again: %v", err)
	}
	if !p.ShouldProvision(ctx, claim()) || !p.ShouldDelete(ctx, pv) {
		t.Error("this node's claim or volume is not this node's")
	}
}

func TestProvisionRefuses(t *testing.T) {
	p := testProvisioner(t)
	ctx := context.Background()
	elsewhere := claim(corev1.ReadWriteOnce)
	elsewhere.Annotations[selectedNode] = "edge-2"
	var ignored *controller.IgnoredError
	if _, _, err := p.Provision(ctx, options(elsewhere, nil)); !errors.As(err, &ignored) {
		t.Errorf("another node's claim: %v, want it ignored", err)
	}
	if p.ShouldProvision(ctx, elsewhere) {
		t.Error("another node's claim is this node's to provision")
	}
	block := claim(corev1.ReadWriteOnce)
	mode := corev1.PersistentVolumeBlock
	block.Spec.VolumeMode = &mode
	selector := claim(corev1.ReadWriteOnce)
	selector.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}}
	params := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "tuned"}, Provisioner: Provisioner, Parameters: map[string]string{"nodePath": "/"}}
	for name, c := range map[string]struct {
		opts controller.ProvisionOptions
		says string
	}{
		"many nodes": {options(claim(corev1.ReadWriteOnce, corev1.ReadWriteMany), nil), "access mode ReadWriteMany"},
		"block":      {options(block, nil), "volumeMode Block"},
		"selector":   {options(selector, nil), "remove the selector"},
		"parameters": {options(claim(corev1.ReadWriteOnce), params), "StorageClass tuned has parameters"},
	} {
		if _, _, err := p.Provision(ctx, c.opts); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want an error saying %q", name, err, c.says)
		}
	}
	if entries, _ := os.ReadDir(p.cfg.Root); len(entries) > 0 {
		t.Errorf("refused claims left directories: %v", entries)
	}
}

func TestDelete(t *testing.T) {
	p := testProvisioner(t)
	ctx := context.Background()
	pv, _, err := p.Provision(ctx, options(claim(corev1.ReadWriteOnce), nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pv.Spec.Local.Path, "file"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Paths this node did not make in its storage path: refused, and left alone.
	outside := t.TempDir()
	for name, path := range map[string]string{
		"outside":     outside,
		"the root":    p.cfg.Root,
		"deeper":      filepath.Join(pv.Spec.Local.Path, "file"),
		"other name":  filepath.Join(p.cfg.Root, "pvc-9999_apps_data"),
		"climbing up": filepath.Join(p.cfg.Root, "..", filepath.Base(outside)),
	} {
		forged := pv.DeepCopy()
		forged.Spec.Local.Path = path
		if err := p.Delete(ctx, forged); err == nil || !strings.Contains(err.Error(), "remove it by hand") {
			t.Errorf("%s (%s): %v, want a refusal", name, path, err)
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("a refused delete removed %s: %v", outside, err)
	}
	other := pv.DeepCopy()
	other.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values = []string{"edge-2"}
	var ignored *controller.IgnoredError
	if err := p.Delete(ctx, other); !errors.As(err, &ignored) || p.ShouldDelete(ctx, other) {
		t.Errorf("another node's volume: %v, want it ignored", err)
	}
	if err := p.Delete(ctx, pv); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pv.Spec.Local.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the directory is still there: %v", err)
	}
}
