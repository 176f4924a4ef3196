package server_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kone-dev/kone/pkg/storage"
)

// checkLocalPath claims a volume of the default StorageClass in ns for a pod on nodeName: a
// first pod writes a file into it, a second pod on the same claim reads it, and the volume is a
// directory under storageRoot on that node (exists says whether a path is there). Deleting the
// claim removes the directory and the volume.
func checkLocalPath(t *testing.T, cs kubernetes.Interface, ns, nodeName, storageRoot string, exists func(path string) bool) {
	t.Helper()
	ctx := context.Background()
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}}},
	}
	if _, err := cs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := func(name, script string) {
		t.Helper()
		// Not root: the volume is writable by the pod's user, whoever it is.
		uid := int64(1000)
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.PodSpec{
				NodeSelector: map[string]string{corev1.LabelHostname: nodeName},
				Containers: []corev1.Container{{Name: "c", Image: busyboxImage, ImagePullPolicy: corev1.PullNever,
					Command:         []string{"sh", "-c", script + " && sleep 3600"},
					SecurityContext: &corev1.SecurityContext{RunAsUser: &uid},
					VolumeMounts:    []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
				Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
					PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}}},
			},
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod("writer", "echo written-by-writer > /data/file")
	waitPodsRunning(t, cs, ns, 1)
	pod("reader", "cat /data/file")
	waitPodsRunning(t, cs, ns, 2)
	var logs string
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs, "written-by-writer"); time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			t.Fatalf("the second pod on the claim read %q, want what the first wrote", logs)
		}
		data, _ := cs.CoreV1().Pods(ns).GetLogs("reader", &corev1.PodLogOptions{}).DoRaw(ctx)
		logs = string(data)
	}

	bound, err := cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
	if err != nil || bound.Spec.VolumeName == "" || bound.Spec.StorageClassName == nil || *bound.Spec.StorageClassName != "local-path" {
		t.Fatalf("the claim is not bound to a local-path volume: %+v, %v", bound, err)
	}
	pv, err := cs.CoreV1().PersistentVolumes().Get(ctx, bound.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if storage.NodeOf(pv) != nodeName || pv.Spec.Local == nil || filepath.Dir(pv.Spec.Local.Path) != storageRoot {
		t.Fatalf("volume %s: pinned to %q, at %+v; want a local volume of %s under %s", pv.Name, storage.NodeOf(pv), pv.Spec.PersistentVolumeSource, nodeName, storageRoot)
	}
	dir := pv.Spec.Local.Path
	if !exists(filepath.Join(dir, "file")) {
		t.Fatalf("%s has no file on %s", dir, nodeName)
	}

	for _, name := range []string{"writer", "reader"} {
		if err := cs.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := cs.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "data", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		_, err := cs.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && !exists(dir) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after the claim was deleted: the volume %v, the directory there %v", err, exists(dir))
		}
	}
}

// checkLocalPathHeld tries, as the local-path provisioner of node own (config), what the
// admission policy forbids it: a volume pinned to another node, a hostPath volume on its own,
// and a change to a claim whose pod went to another node. What it may do, a local volume on its
// own node and a change to its own node's claim, it can.
func checkLocalPathHeld(t *testing.T, config *rest.Config, admin kubernetes.Interface, own, ns string) {
	t.Helper()
	ctx := context.Background()
	cs, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	volume := func(name, node string, source corev1.PersistentVolumeSource) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:               corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Mi")},
				AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeSource: source, StorageClassName: "local-path",
				NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
				}}}},
			},
		}
	}
	local := corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/"}}
	hostPath := corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}
	for _, v := range []*corev1.PersistentVolume{volume("theft-other-node", "some-other-node", local), volume("theft-host-path", own, hostPath)} {
		if _, err := cs.CoreV1().PersistentVolumes().Create(ctx, v, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("the local-path provisioner of %s creating volume %s: %v, want Forbidden", own, v.Name, err)
			_ = admin.CoreV1().PersistentVolumes().Delete(ctx, v.Name, metav1.DeleteOptions{})
		}
	}
	if _, err := cs.CoreV1().PersistentVolumes().Create(ctx, volume("own-node", own, local), metav1.CreateOptions{}); err != nil {
		t.Errorf("the local-path provisioner of %s creating a local volume on its own node: %v", own, err)
	} else if err := cs.CoreV1().PersistentVolumes().Delete(ctx, "own-node", metav1.DeleteOptions{}); err != nil {
		t.Errorf("the local-path provisioner of %s deleting a volume of its own node: %v", own, err)
	}
	// Another node's volume, made by the administrator: not the provisioner's to delete.
	if _, err := admin.CoreV1().PersistentVolumes().Create(ctx, volume("another-nodes", "some-other-node", local), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().PersistentVolumes().Delete(ctx, "another-nodes", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the local-path provisioner of %s deleting another node's volume: %v, want Forbidden", own, err)
	}
	if err := admin.CoreV1().PersistentVolumes().Delete(ctx, "another-nodes", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}

	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "elsewhere", Namespace: ns, Annotations: map[string]string{"volume.kubernetes.io/selected-node": "some-other-node"}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: new(string), // no class: nothing provisions it
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Mi")}}},
	}
	if _, err := admin.CoreV1().PersistentVolumeClaims(ns).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "elsewhere", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got.Annotations["volume.kubernetes.io/selected-node"] = own
	if _, err := cs.CoreV1().PersistentVolumeClaims(ns).Update(ctx, got, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the local-path provisioner of %s taking a claim scheduled to another node: %v, want Forbidden", own, err)
	}
	// Its own node's claim it may send back to the scheduler, as the provisioner does when a
	// volume cannot be made there.
	claim.Name, claim.Annotations["volume.kubernetes.io/selected-node"] = "here", own
	if _, err := admin.CoreV1().PersistentVolumeClaims(ns).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, err = cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "here", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	delete(got.Annotations, "volume.kubernetes.io/selected-node")
	if _, err := cs.CoreV1().PersistentVolumeClaims(ns).Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Errorf("the local-path provisioner of %s rescheduling a claim of its own node: %v", own, err)
	}
	for _, name := range []string{"elsewhere", "here"} {
		if err := admin.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	}
}

// checkServerLocalPath: the server's own node serves local-path volumes under its data dir, and
// its provisioner's identity is held to that node.
func checkServerLocalPath(t *testing.T, n *node, cs kubernetes.Interface, nodeName string) {
	t.Helper()
	ctx := context.Background()
	ns := "kone-storage-it"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkLocalPath(t, cs, ns, nodeName, filepath.Join(n.dataDir, "storage"), func(path string) bool {
		_, err := os.Stat(path)
		return err == nil
	})
	tlsDir := filepath.Join(n.dataDir, "agent", "tls")
	checkLocalPathHeld(t, &rest.Config{Host: "https://127.0.0.1:" + n.https, TLSClientConfig: rest.TLSClientConfig{
		CertFile: filepath.Join(tlsDir, "client-local-path.crt"), KeyFile: filepath.Join(tlsDir, "client-local-path.key"),
		CAFile: filepath.Join(n.dataDir, "server", "tls", "server-ca.crt")}}, cs, nodeName, ns)
	if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
}
