package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/kone-dev/kone/pkg/queue"
)

// Config is what a node's part of local storage needs.
type Config struct {
	NodeName string
	// Root is the directory the volumes' directories are made in.
	Root   string
	Client kubernetes.Interface // the node's local-path identity
	Log    *logrus.Logger
}

// Directories makes and removes the directories of the local-path volumes pinned to its node,
// a component of the node side.
type Directories struct {
	cfg Config
}

// NewDirectories checks the configuration.
func NewDirectories(cfg Config) (*Directories, error) {
	if cfg.NodeName == "" || cfg.Client == nil || !filepath.IsAbs(cfg.Root) || filepath.Clean(cfg.Root) == "/" {
		return nil, fmt.Errorf("local-path storage: a node name, a client and an absolute storage path other than / are needed (got %q, %q)", cfg.NodeName, cfg.Root)
	}
	cfg.Root = filepath.Clean(cfg.Root)
	return &Directories{cfg: cfg}, nil
}

func (d *Directories) Name() string { return "local-path directories" }

// Ready at once: a volume waits for its directory, kubelet retrying the mount meanwhile.
func (d *Directories) Ready(context.Context) error { return nil }

func (d *Directories) Run(ctx context.Context) error {
	// The volumes' files are their pods': no other user of the machine may enter the storage
	// path kone makes. One that is there already keeps its mode: it may be the user's.
	if err := os.MkdirAll(d.cfg.Root, 0o700); err != nil {
		return fmt.Errorf("local-path storage: %w; choose another --default-local-storage-path", err)
	}
	factory := informers.NewSharedInformerFactoryWithOptions(d.cfg.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = labels.Set{NodeLabel: d.cfg.NodeName}.String()
	}))
	volumes := factory.Core().V1().PersistentVolumes()
	changes := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer changes.ShutDown()
	enqueue := func(obj any) {
		if pv, ok := obj.(*corev1.PersistentVolume); ok {
			changes.Add(pv.Name)
		}
	}
	if _, err := volumes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	factory.WaitForCacheSync(ctx.Done())
	go queue.Work(changes, func(name string) error { return d.sync(ctx, volumes.Lister(), name) }, func(name string, err error) {
		d.cfg.Log.WithError(err).WithField("volume", name).Warn("local-path volume; trying again")
	}, 0)
	<-ctx.Done()
	return nil
}

// sync makes the directory of a volume that is there, and removes that of one being deleted
// (for a Delete volume) before letting the volume go.
func (d *Directories) sync(ctx context.Context, lister corelisters.PersistentVolumeLister, name string) error {
	pv, err := lister.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if NodeOf(pv) != d.cfg.NodeName || !slices.Contains(pv.Finalizers, Finalizer) {
		return nil
	}
	dir, pathErr := directoryOf(pv, d.cfg.Root)
	if pv.DeletionTimestamp != nil && (pv.Status.Phase == corev1.VolumeBound || slices.Contains(pv.Finalizers, pvProtection)) {
		// Deleted while a pod may still use it: its data stays until Kubernetes lets it go.
		return nil
	}
	if pv.DeletionTimestamp == nil {
		if pathErr != nil {
			// Not retried: the volume does not change its path.
			d.cfg.Log.WithField("volume", pv.Name).Warn(pathErr.Error() + "; no directory made for it")
			return nil
		}
		return makeDirectory(dir)
	}
	switch {
	case pathErr != nil:
		d.cfg.Log.WithField("volume", pv.Name).Warn(pathErr.Error() + "; nothing removed, the volume goes")
	case pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete:
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove %s: %w", dir, err)
		}
		d.cfg.Log.WithFields(logrus.Fields{"volume": pv.Name, "path": dir}).Info("removed a local-path volume's directory")
	}
	return d.release(ctx, pv)
}

// pvProtection is Kubernetes' finalizer of a volume that a claim still uses.
const pvProtection = "kubernetes.io/pv-protection"

// makeDirectory makes a volume's directory, writable by the pod's user, whoever it is, as with
// k3s's local-path: the storage path itself is closed to other users of the machine.
func makeDirectory(dir string) error {
	if err := os.Mkdir(dir, 0o777); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	// Mkdir's mode is cut by the umask.
	return os.Chmod(dir, 0o777)
}

// release removes kone's finalizer from the volume, and no other change: all that the node's
// identity may do to a volume.
func (d *Directories) release(ctx context.Context, pv *corev1.PersistentVolume) error {
	rest := slices.DeleteFunc(slices.Clone(pv.Finalizers), func(f string) bool { return f == Finalizer })
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": rest, "resourceVersion": pv.ResourceVersion}})
	if err != nil {
		return err
	}
	_, err = d.cfg.Client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
