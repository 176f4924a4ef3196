package server_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
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

// checkLocalPathHeld tries, as node own's local-path identity (config), what it may not do:
// create or delete a volume (one pre-bound to a claim would draw the claim's pods onto the
// node), change a volume of its own node, let go of one not being deleted or of another node's,
// or take another finalizer off. What it may do, take kone's finalizer off a volume of its own
// node that is being deleted, it can.
func checkLocalPathHeld(t *testing.T, config *rest.Config, admin kubernetes.Interface, own string) {
	t.Helper()
	ctx := context.Background()
	cs, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	const held = "x.example/held"
	volume := func(name, node string) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{storage.NodeLabel: node}, Finalizers: []string{storage.Finalizer, held}},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:               corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Mi")},
				AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeSource: corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/nonexistent/" + name}},
				StorageClassName:       "manual", // no provisioner of kone's takes it
				ClaimRef:               &corev1.ObjectReference{Namespace: "kube-system", Name: "victim"},
				NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchExpressions: []corev1.NodeSelectorRequirement{{Key: storage.PinLabel, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
				}}}},
			},
		}
	}
	if _, err := cs.CoreV1().PersistentVolumes().Create(ctx, volume("lure", own), metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the local-path identity of %s creating a volume pre-bound to another namespace's claim: %v, want Forbidden", own, err)
	}
	for _, v := range []*corev1.PersistentVolume{volume("lure", own), volume("mine", own), volume("theirs", "some-other-node")} {
		if _, err := admin.CoreV1().PersistentVolumes().Create(ctx, v, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	patch := func(name, body string) error {
		_, err := cs.CoreV1().PersistentVolumes().Patch(ctx, name, k8stypes.MergePatchType, []byte(body), metav1.PatchOptions{})
		return err
	}
	// finalizers is a patch that leaves name's finalizers but kone's and drop.
	finalizers := func(name string, drop ...string) string {
		pv, err := admin.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		keep := []string{}
		for _, f := range pv.Finalizers {
			if f != storage.Finalizer && !slices.Contains(drop, f) {
				keep = append(keep, f)
			}
		}
		data, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": keep}})
		return string(data)
	}
	denied := func(what string, try func() error) {
		t.Helper()
		if err := try(); !apierrors.IsForbidden(err) {
			t.Errorf("the local-path identity of %s %s: %v, want Forbidden", own, what, err)
		}
	}
	denied("letting go of a volume not being deleted", func() error { return patch("mine", finalizers("mine")) })
	for _, name := range []string{"lure", "mine", "theirs"} {
		if err := admin.CoreV1().PersistentVolumes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	denied("pointing a volume of its own at another claim", func() error {
		return patch("mine", `{"spec":{"claimRef":{"namespace":"default","name":"other","uid":null,"resourceVersion":null}}}`)
	})
	denied("changing a volume of its own", func() error { return patch("mine", `{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}`) })
	denied("relabelling a volume of its own", func() error { return patch("mine", `{"metadata":{"labels":{"`+storage.NodeLabel+`":"x"}}}`) })
	denied("giving a volume of its own an owner", func() error {
		return patch("mine", `{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"Node","name":"gone","uid":"1"}]}}`)
	})
	denied("taking another finalizer off", func() error { return patch("mine", finalizers("mine", held)) })
	denied("letting go of another node's volume", func() error { return patch("theirs", finalizers("theirs")) })
	denied("deleting a volume", func() error { return cs.CoreV1().PersistentVolumes().Delete(ctx, "lure", metav1.DeleteOptions{}) })
	denied("changing a claim", func() error {
		_, err := cs.CoreV1().PersistentVolumeClaims("default").Patch(ctx, "x", k8stypes.MergePatchType, []byte(`{}`), metav1.PatchOptions{})
		return err
	})
	if err := patch("mine", finalizers("mine")); err != nil {
		t.Errorf("the local-path identity of %s taking kone's finalizer off a volume of its node being deleted: %v", own, err)
	}
	for _, name := range []string{"lure", "mine", "theirs"} {
		if _, err := admin.CoreV1().PersistentVolumes().Patch(ctx, name, k8stypes.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	}
}

// checkServerLocalPath: the server's own node serves local-path volumes under its data dir, and
// its local-path identity is held to what its directories need.
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
		CAFile: filepath.Join(n.dataDir, "server", "tls", "server-ca.crt")}}, cs, nodeName)
	if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
}
