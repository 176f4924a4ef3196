package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/kone-dev/kone/pkg/supervisor"
)

// Record keeping: each file of the directory has a ConfigMap in kube-system that lists the
// objects it applied, so that a file's removal (even while kone was down) deletes them, and an
// object dropped from a file is deleted too. The record lives in etcd beside the objects, so a
// restore brings back records and objects together. It names the server that last applied
// the file: with several servers, each applies its own directory, and only that server
// deletes the file's objects when the file goes from its directory; a server whose directory
// lacks the file leaves them alone.
const (
	recordNamespace  = metav1.NamespaceSystem
	recordLabel      = "kone.dev/manifest"
	appliedByKey     = "kone.dev/applied-by"
	recordFileKey    = "file"
	recordSumKey     = "sha256"
	recordObjectsKey = "objects"
)

// poll is how often the directory is looked at: a stat of each file, no read unless one changed.
const poll = 2 * time.Second

// Dir is the component that keeps the cluster in step with a directory of manifests: every
// .yaml, .yml and .json file in it or below it, applied as kone starts and within seconds of
// a change. A file with a NAME.skip beside it is left alone, and so are its objects.
type Dir struct {
	dir, server string
	applier     *Applier
	cs          kubernetes.Interface
	log         *logrus.Logger
	ready       *supervisor.Latch
	applied     map[string]string // file → the sha256 this kone applied last
}

// NewDir makes the component for dir, on the server named server.
func NewDir(dir, server string, rc *rest.Config, log *logrus.Logger) (*Dir, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("manifests directory %q: expected an absolute path", dir)
	}
	a, err := New(rc)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &Dir{dir: dir, server: server, applier: a, cs: cs, log: log, ready: supervisor.NewLatch(), applied: map[string]string{}}, nil
}

func (d *Dir) Name() string { return "manifests directory" }

// Ready once the files found at start were applied (or reported).
func (d *Dir) Ready(ctx context.Context) error { return d.ready.Wait(ctx) }

func (d *Dir) Run(ctx context.Context) error {
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return fmt.Errorf("manifests directory: %w", err)
	}
	seen := "\x00" // no directory's state: the first look syncs, even an empty directory
	// A file with objects the apiserver refused (a kind whose CRD is not served yet, a
	// namespace still to come) is tried again, less and less often, until it goes through or
	// changes.
	retry, wait := time.Time{}, time.Duration(0)
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		now := d.state()
		if now != seen || (!retry.IsZero() && time.Now().After(retry)) {
			pending, err := d.sync(ctx)
			switch {
			case err != nil:
				// The apiserver is away for now: the next look tries again.
				d.log.WithError(err).Warn("manifests directory: cannot bring the cluster in step yet")
			case pending && now == seen:
				wait = min(2*wait, maxRetry)
			case pending:
				wait = firstRetry
			}
			if err == nil {
				seen = now
				retry = time.Time{}
				if pending {
					retry = time.Now().Add(wait)
				}
			}
			d.ready.Open()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// The retry of refused objects starts at firstRetry and doubles up to maxRetry.
const (
	firstRetry = 10 * time.Second
	maxRetry   = 10 * time.Minute
)

// state sums up the directory: each file's name, size and time.
func (d *Dir) state() string {
	var b strings.Builder
	_ = filepath.WalkDir(d.dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if info, err := e.Info(); err == nil {
				fmt.Fprintf(&b, "%s %d %d\n", p, info.Size(), info.ModTime().UnixNano())
			}
		}
		return nil
	})
	return b.String()
}

// Files lists the manifests under dir, as paths relative to it, and those a .skip file holds back.
func Files(dir string) (apply, skip []string, err error) {
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || !slices.Contains([]string{".yaml", ".yml", ".json"}, filepath.Ext(p)) {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if _, err := os.Stat(p + ".skip"); err == nil {
			skip = append(skip, rel)
		} else {
			apply = append(apply, rel)
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return apply, skip, err
}

// sync applies the files that changed since this kone last applied them, and deletes the
// objects of files that went. A file that does not parse, or an object the apiserver refuses,
// is reported, and the rest goes on; only an apiserver that cannot be reached stops it.
// pending says that some objects were refused, and are to be tried again.
func (d *Dir) sync(ctx context.Context) (pending bool, err error) {
	apply, skip, err := Files(d.dir)
	if err != nil {
		return false, err
	}
	list, err := d.cs.CoreV1().ConfigMaps(recordNamespace).List(ctx, metav1.ListOptions{LabelSelector: recordLabel})
	if err != nil {
		return false, err
	}
	records := map[string]*corev1.ConfigMap{}
	for i := range list.Items {
		records[list.Items[i].Data[recordFileKey]] = &list.Items[i]
	}
	for _, file := range apply {
		data, err := os.ReadFile(filepath.Join(d.dir, file))
		if err != nil {
			return false, err
		}
		sum := sha256.Sum256(data)
		hexSum := hex.EncodeToString(sum[:])
		if d.applied[file] == hexSum {
			continue
		}
		done, err := d.applyFile(ctx, file, data, hexSum, records[file])
		if err != nil {
			return false, err
		}
		if done {
			d.applied[file] = hexSum
		} else {
			pending = true
		}
	}
	for file, rec := range records {
		if slices.Contains(apply, file) || slices.Contains(skip, file) || rec.Annotations[appliedByKey] != d.server {
			continue
		}
		if err := d.remove(ctx, file, rec); err != nil {
			return false, err
		}
		delete(d.applied, file)
	}
	return pending, nil
}

// ref is an object a file applied.
type ref struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
}

// applyFile applies the objects of file and deletes those it held before and no longer does.
// done is false when the apiserver refused some, to be tried again; a file that does not parse
// is done, until it changes.
func (d *Dir) applyFile(ctx context.Context, file string, data []byte, sum string, old *corev1.ConfigMap) (done bool, err error) {
	log := d.log.WithField("file", file)
	var before []ref
	if old != nil {
		_ = json.Unmarshal([]byte(old.Data[recordObjectsKey]), &before)
	}
	objs, err := Decode(file, data)
	if err != nil {
		// The objects applied before stay as they were.
		rec, rerr := d.record(ctx, file, sum, before, old)
		if rerr != nil {
			return false, rerr
		}
		d.report(ctx, rec, log, "ManifestInvalid", err)
		return true, nil
	}
	var now []ref
	var refused []error
	for _, o := range objs {
		r := d.applier.namespaced(ref{APIVersion: o.GetAPIVersion(), Kind: o.GetKind(), Namespace: o.GetNamespace(), Name: o.GetName()})
		if err := d.applier.Apply(ctx, o); err != nil {
			if unreachable(err) {
				return false, err
			}
			refused = append(refused, err)
			// Refused now, perhaps applied before: it stays in the record.
			if slices.Contains(before, r) {
				now = append(now, r)
			}
			continue
		}
		now = append(now, r)
	}
	// Objects the file no longer holds.
	for _, r := range before {
		if !slices.Contains(now, r) {
			if err := d.applier.Delete(ctx, r); err != nil {
				if unreachable(err) {
					return false, err
				}
				refused = append(refused, err)
				now = append(now, r)
			}
		}
	}
	rec, err := d.record(ctx, file, sum, now, old)
	if err != nil {
		return false, err
	}
	if len(refused) > 0 {
		d.report(ctx, rec, log, "ManifestRefused", errors.Join(refused...))
		return false, nil
	}
	log.WithField("objects", len(now)).Info("applied manifest")
	return true, nil
}

// remove deletes the objects of a file that went, then its record.
func (d *Dir) remove(ctx context.Context, file string, rec *corev1.ConfigMap) error {
	var objs []ref
	_ = json.Unmarshal([]byte(rec.Data[recordObjectsKey]), &objs)
	var left []ref
	var refused []error
	for _, r := range objs {
		if err := d.applier.Delete(ctx, r); err != nil {
			if unreachable(err) {
				return err
			}
			refused = append(refused, err)
			left = append(left, r)
		}
	}
	log := d.log.WithField("file", file)
	if len(left) > 0 {
		rec, err := d.record(ctx, file, rec.Data[recordSumKey], left, rec)
		if err != nil {
			return err
		}
		d.report(ctx, rec, log, "ManifestNotDeleted", errors.Join(refused...))
		return nil
	}
	if err := d.cs.CoreV1().ConfigMaps(recordNamespace).Delete(ctx, rec.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	log.WithField("objects", len(objs)).Info("deleted the objects of a removed manifest")
	return nil
}

// record writes the record of file, which holds objs, as applied by this server.
func (d *Dir) record(ctx context.Context, file, sum string, objs []ref, old *corev1.ConfigMap) (*corev1.ConfigMap, error) {
	list, err := json.Marshal(objs)
	if err != nil {
		return nil, err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: RecordName(file), Namespace: recordNamespace,
			Labels: map[string]string{recordLabel: "true"}, Annotations: map[string]string{appliedByKey: d.server}},
		Data: map[string]string{recordFileKey: file, recordSumKey: sum, recordObjectsKey: string(list)},
	}
	cms := d.cs.CoreV1().ConfigMaps(recordNamespace)
	if old == nil {
		created, err := cms.Create(ctx, cm, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			// Another server's, made since the list: this server's file is the one it applies.
			current, gerr := cms.Get(ctx, cm.Name, metav1.GetOptions{})
			if gerr != nil {
				return nil, gerr
			}
			return d.record(ctx, file, sum, objs, current)
		}
		return created, err
	}
	cm.ResourceVersion = old.ResourceVersion
	return cms.Update(ctx, cm, metav1.UpdateOptions{})
}

// report logs a problem with a file and records it as a Warning Event on the file's record,
// where `kubectl get events -n kube-system` and `kubectl describe configmap` show it.
func (d *Dir) report(ctx context.Context, rec *corev1.ConfigMap, log *logrus.Entry, reason string, problem error) {
	log.WithField("reason", reason).Warn(problem.Error())
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: rec.Name + ".", Namespace: recordNamespace},
		InvolvedObject: corev1.ObjectReference{Kind: "ConfigMap", APIVersion: "v1", Namespace: recordNamespace, Name: rec.Name,
			UID: rec.UID, ResourceVersion: rec.ResourceVersion},
		Reason: reason, Message: fmt.Sprintf("%s: %v", rec.Data[recordFileKey], problem), Type: corev1.EventTypeWarning,
		Source: corev1.EventSource{Component: "kone", Host: d.server}, FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	if _, err := d.cs.CoreV1().Events(recordNamespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		log.WithError(err).Debug("cannot record an event")
	}
}

var nameUnsafe = regexp.MustCompile(`[^a-z0-9.-]+`)

// RecordName is the name of the ConfigMap that records what file applied: readable, and
// unique through a hash of the whole path.
func RecordName(file string) string {
	sum := sha256.Sum256([]byte(file))
	readable := strings.Trim(nameUnsafe.ReplaceAllString(strings.ToLower(file), "-"), "-.")
	if len(readable) > 200 {
		readable = readable[:200]
	}
	return "kone-manifest-" + readable + "-" + hex.EncodeToString(sum[:4])
}

// unreachable says whether err means the apiserver did not answer, rather than refused.
func unreachable(err error) bool {
	var status apierrors.APIStatus
	return !errors.As(err, &status) && !meta.IsNoMatchError(err)
}

// namespaced fills in the namespace a namespaced object lands in when its manifest names none.
func (a *Applier) namespaced(r ref) ref {
	if r.Namespace != "" {
		return r
	}
	gv, err := schema.ParseGroupVersion(r.APIVersion)
	if err != nil {
		return r
	}
	if m, err := a.mapper.RESTMapping(gv.WithKind(r.Kind).GroupKind(), gv.Version); err == nil && m.Scope.Name() == meta.RESTScopeNameNamespace {
		r.Namespace = metav1.NamespaceDefault
	}
	return r
}

// Delete deletes the object r names; one already gone, or of a kind the cluster no longer
// has, is not an error.
func (a *Applier) Delete(ctx context.Context, r ref) error {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(r.APIVersion)
	u.SetKind(r.Kind)
	u.SetNamespace(r.Namespace)
	u.SetName(r.Name)
	client, err := a.resource(u)
	if meta.IsNoMatchError(err) {
		return nil
	}
	if err != nil {
		return err
	}
	err = client.Delete(ctx, r.Name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s %s: %w", r.Kind, describe(u), err)
	}
	return nil
}
