// Package storage is kone's local-path storage: the default StorageClass local-path, with no
// helper pod and no image. A claim of the class waits for its first pod (WaitForFirstConsumer);
// once the scheduler has chosen the pod's node, the server that holds the provisioner's lease
// publishes a `local` PersistentVolume pinned to that node, at a directory under the storage
// path the node announced on its Node (PathAnnotation). The node makes the directory as the
// volume appears, and removes it (for a Delete volume) as the volume is deleted, which a
// finalizer of kone's holds back until it has.
//
// The server creates the volumes (Provisioner, upstream's provision controller from
// sigs.k8s.io/sig-storage-lib-external-provisioner), not the nodes: a node that could create a
// volume could pre-bind it to any pending claim and so draw another namespace's pods and data
// onto itself. A node (Directories) only reads the volumes pinned to it and removes kone's
// finalizer from them, with an identity of its own (system:kone:local-path:NODE) that an
// admission policy of the server holds to exactly that.
package storage

import (
	"fmt"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

const (
	// ProvisionerName is the provisioner name of the local-path StorageClass.
	ProvisionerName = "kone.dev/local-path"
	// PathAnnotation on a Node is the node's storage path: the node serves local-path
	// volumes while it is there.
	PathAnnotation = "storage.kone.dev/local-path"
	// NodeLabel on a volume names its node, so that each node watches only its own.
	NodeLabel = "storage.kone.dev/node"
	// Finalizer holds a local-path volume until its node has removed its directory.
	Finalizer = "storage.kone.dev/directory"

	// PinLabel is the node label a volume's node affinity names, set by the server to the
	// node's name. Not kubernetes.io/hostname: a kubelet may set that on its own Node, and so
	// draw the pods of another node's volumes onto itself; labels under
	// node-restriction.kubernetes.io/ it may not set.
	PinLabel = "node-restriction.kubernetes.io/kone-node"
)

// NodeOf is the node a volume is pinned to, or empty.
func NodeOf(pv *corev1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil || len(pv.Spec.NodeAffinity.Required.NodeSelectorTerms) != 1 {
		return ""
	}
	exprs := pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions
	if len(exprs) != 1 || exprs[0].Key != PinLabel || exprs[0].Operator != corev1.NodeSelectorOpIn || len(exprs[0].Values) != 1 {
		return ""
	}
	return exprs[0].Values[0]
}

// dirName is the name of a volume's directory in its node's storage path.
func dirName(pvName, namespace, claim string) string {
	return strings.Join([]string{pvName, namespace, claim}, "_")
}

// directoryOf is the volume's directory if it is one that kone makes for it, directly in
// root; otherwise it says why not.
func directoryOf(pv *corev1.PersistentVolume, root string) (string, error) {
	if pv.Spec.Local == nil {
		return "", fmt.Errorf("volume %s is not a local volume", pv.Name)
	}
	dir := filepath.Clean(pv.Spec.Local.Path)
	if filepath.Dir(dir) != root || !strings.HasPrefix(filepath.Base(dir), pv.Name+"_") {
		return "", fmt.Errorf("volume %s is at %s, which is not a directory kone makes in this node's storage path %s", pv.Name, dir, root)
	}
	return dir, nil
}
