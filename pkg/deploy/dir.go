package deploy

import (
	"context"
	"crypto/rand"
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
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/supervisor"
)

// Record keeping: each file of the directory has a ConfigMap in kube-system that lists the
// objects it applied, so that a file's removal (even while kone was down) deletes them, and an
// object dropped from a file is deleted too. The record lives in etcd beside the objects, so a
// restore brings back records and objects together. It names the server that last applied the
// file by an identity of its data dir (not its host name, which a rebuilt machine shares):
// with several servers, each applies its own directory, and only that server deletes the
// file's objects when the file goes from its directory. An object that another file's record
// lists is never deleted, and only objects the directory's field manager applied are.
const (
	recordNamespace  = metav1.NamespaceSystem
	recordLabel      = "kone.dev/manifest"
	appliedByKey     = "kone.dev/applied-by"
	appliedOnKey     = "kone.dev/applied-on" // the server's node name, for people
	recordFileKey    = "file"
	recordSumKey     = "sha256"
	recordObjectsKey = "objects"
)

// poll is how often the directory is looked at: a stat of each file, no read unless one
// changed. A change is acted on once the directory looks the same at two looks in a row, so
// that a file half written, or briefly gone while an editor or git replaces it, is not taken
// for what the user meant.
const poll = 2 * time.Second

// The retry of refused objects starts at firstRetry and doubles up to maxRetry.
const (
	firstRetry = 10 * time.Second
	maxRetry   = 10 * time.Minute
)

// Dir is the component that keeps the cluster in step with a directory of manifests: every
// .yaml, .yml and .json file in it or below it (not those whose name, or a directory's on the
// way, starts with a dot), applied as kone starts and within seconds of a change. A file with a
// NAME.skip beside it is left alone, and so are its objects.
type Dir struct {
	dir, idFile, node string
	owner             string // this server's identity in records; read from idFile in Run
	applier           *Applier
	cs                kubernetes.Interface
	log               *logrus.Logger
	ready             *supervisor.Latch
	applied           map[string]string // file → the sha256 this kone applied last
}

// NewDir makes the component for dir, on the server whose node is named node; idFile holds its
// identity in records, made at the first start.
func NewDir(dir, idFile, node string, rc *rest.Config, log *logrus.Logger) (*Dir, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("manifests directory %q: expected an absolute path", dir)
	}
	a, err := New(rc, DirFieldManager)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &Dir{dir: dir, idFile: idFile, node: node, applier: a, cs: cs, log: log, ready: supervisor.NewLatch(), applied: map[string]string{}}, nil
}

func (d *Dir) Name() string { return "manifests directory" }

// Ready once the files found at start were applied (or reported), or the first try failed.
func (d *Dir) Ready(ctx context.Context) error { return d.ready.Wait(ctx) }

func (d *Dir) Run(ctx context.Context) error {
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return fmt.Errorf("manifests directory: %w", err)
	}
	owner, err := ownerID(d.idFile)
	if err != nil {
		return err
	}
	d.owner = owner
	seen, last, first := "", "", true
	retry, wait := time.Time{}, time.Duration(0)
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		now := d.state()
		stable := now == last || first
		last = now
		if stable && (now != seen || first || (!retry.IsZero() && time.Now().After(retry))) {
			pending, err := d.sync(ctx)
			switch {
			case err != nil:
				// The apiserver is away for now, or the directory cannot be read: tried
				// again, less and less often.
				d.log.WithError(err).Warn("manifests directory: cannot bring the cluster in step yet")
				wait = min(max(2*wait, firstRetry), maxRetry)
				seen, retry = now, time.Now().Add(wait)
			case !pending:
				seen, retry, wait = now, time.Time{}, 0
			default:
				if now != seen || wait == 0 {
					wait = firstRetry
				} else {
					wait = min(2*wait, maxRetry)
				}
				seen, retry = now, time.Now().Add(wait)
			}
			first = false
			d.ready.Open()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// ownerID reads this server's identity in records, or makes it.
func ownerID(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err == nil && len(strings.TrimSpace(string(data))) > 0 {
		return strings.TrimSpace(string(data)), nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("manifests directory: %w", err)
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b)
	if err := pki.WriteFile(file, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("manifests directory: %w", err)
	}
	return id, nil
}

// state sums up the directory: each file's name, size and time.
func (d *Dir) state() string {
	var b strings.Builder
	_ = filepath.WalkDir(d.dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && p != d.dir && e.IsDir() && strings.HasPrefix(e.Name(), ".") {
			return filepath.SkipDir
		}
		if err == nil && !e.IsDir() {
			if info, err := e.Info(); err == nil {
				fmt.Fprintf(&b, "%s %d %d\n", p, info.Size(), info.ModTime().UnixNano())
			}
		}
		return nil
	})
	return b.String()
}

// Files lists the manifests under dir, as paths relative to it, and those a .skip file holds
// back. Names that start with a dot (an editor's lock and swap files, .git) are passed over. A
// directory that cannot be read, or a dir that is not there, is an error: its files would look
// removed.
func Files(dir string) (apply, skip []string, err error) {
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if p == dir {
			return err
		}
		if strings.HasPrefix(e.Name(), ".") {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if err != nil {
			// A directory that cannot be read would look like files removed.
			return err
		}
		if e.IsDir() || !isManifest(p) {
			return nil
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
	return apply, skip, err
}

// ref is an object a file applied.
type ref struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
}

// key names the object r refers to, whatever version of its kind a file wrote.
func (r ref) key() string {
	gv, _ := schema.ParseGroupVersion(r.APIVersion)
	return gv.Group + "/" + r.Kind + "/" + r.Namespace + "/" + r.Name
}

func refOf(o *unstructured.Unstructured) ref {
	return ref{APIVersion: o.GetAPIVersion(), Kind: o.GetKind(), Namespace: o.GetNamespace(), Name: o.GetName()}
}

func refsOf(rec *corev1.ConfigMap) []ref {
	var refs []ref
	if rec != nil {
		_ = json.Unmarshal([]byte(rec.Data[recordObjectsKey]), &refs)
	}
	return refs
}

func has(refs []ref, r ref) bool {
	return slices.ContainsFunc(refs, func(o ref) bool { return o.key() == r.key() })
}

// outcome is what a pass did with one file: refs is what its record lists afterwards.
type outcome struct {
	file, sum string
	old       *corev1.ConfigMap
	refs      []ref
	drop      []ref // what the file no longer holds
	gone      bool  // the file went; its record goes once its objects have
	problems  []error
	reason    string // of the problems
	done      bool   // nothing to try again until the file changes
}

// sync applies the files that changed since this kone last applied them, and deletes what the
// files no longer hold and what removed files held. A file that cannot be read or parsed, an
// object the apiserver refuses, or a record it refuses, is reported, and the rest goes on; only
// an apiserver that cannot be reached (or answers that it cannot serve now) stops the pass.
// pending says that something is to be tried again.
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
	var outs []*outcome
	for _, file := range apply {
		data, err := os.ReadFile(filepath.Join(d.dir, file))
		if err != nil {
			outs = append(outs, &outcome{file: file, old: records[file], refs: refsOf(records[file]), problems: []error{err}, reason: "ManifestUnreadable"})
			continue
		}
		sum := sha256.Sum256(data)
		hexSum := hex.EncodeToString(sum[:])
		if d.applied[file] == hexSum && records[file] != nil && records[file].Data[recordSumKey] == hexSum {
			continue
		}
		out, err := d.applyFile(ctx, file, data, hexSum, records[file])
		if err != nil {
			return false, err
		}
		outs = append(outs, out)
	}
	for file, rec := range records {
		if !slices.Contains(apply, file) && !slices.Contains(skip, file) && rec.Annotations[appliedByKey] == d.owner {
			outs = append(outs, &outcome{file: file, sum: rec.Data[recordSumKey], old: rec, drop: refsOf(rec), gone: true, done: true})
		}
	}

	// Who holds each object once this pass is done: no object that another file holds is deleted.
	holders := map[string][]string{}
	acted := map[string]bool{}
	for _, out := range outs {
		acted[out.file] = true
		if !out.gone {
			for _, r := range out.refs {
				holders[r.key()] = append(holders[r.key()], out.file)
			}
		}
	}
	for file, rec := range records {
		if !acted[file] {
			for _, r := range refsOf(rec) {
				holders[r.key()] = append(holders[r.key()], file)
			}
		}
	}
	for _, out := range outs {
		for _, r := range out.drop {
			if slices.ContainsFunc(holders[r.key()], func(f string) bool { return f != out.file }) {
				continue
			}
			u := &unstructured.Unstructured{}
			u.SetAPIVersion(r.APIVersion)
			u.SetKind(r.Kind)
			u.SetNamespace(r.Namespace)
			u.SetName(r.Name)
			if err := d.applier.DeleteOwn(ctx, u); err != nil {
				if transient(err) {
					return false, err
				}
				// Kept in the record, and tried again.
				out.problems, out.reason, out.done = append(out.problems, err), "ManifestRefused", false
				out.refs = append(out.refs, r)
			}
		}
	}

	for _, out := range outs {
		log := d.log.WithField("file", out.file)
		rec := out.old
		if out.gone && len(out.refs) == 0 {
			if err := d.cs.CoreV1().ConfigMaps(recordNamespace).Delete(ctx, out.old.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				if transient(err) {
					return false, err
				}
				log.WithError(err).Warn("cannot delete the record of a removed manifest")
				pending = true
				continue
			}
			log.WithField("objects", len(out.drop)).Info("deleted the objects of a removed manifest")
			delete(d.applied, out.file)
			continue
		}
		if out.sum != "" {
			written, err := d.record(ctx, out)
			if err != nil {
				if transient(err) {
					return false, err
				}
				log.WithError(err).Warn("cannot write the record of a manifest; trying again")
				pending = true
				continue
			}
			rec = written
		}
		if len(out.problems) > 0 {
			d.report(ctx, rec, out.file, log, out.reason, errors.Join(out.problems...))
		} else if !out.gone {
			log.WithField("objects", len(out.refs)).Info("applied manifest")
		}
		if out.done && !out.gone {
			d.applied[out.file] = out.sum
		}
		pending = pending || !out.done
	}
	return pending, nil
}

// applyFile applies the objects of file. A file that does not parse is done until it changes,
// and its objects stay as they were; objects the apiserver refuses are tried again.
func (d *Dir) applyFile(ctx context.Context, file string, data []byte, sum string, old *corev1.ConfigMap) (*outcome, error) {
	before := refsOf(old)
	out := &outcome{file: file, sum: sum, old: old, done: true}
	objs, err := Decode(file, data)
	if err != nil {
		out.refs, out.problems, out.reason = before, []error{err}, "ManifestInvalid"
		return out, nil
	}
	for _, o := range objs {
		applied, err := d.applier.Apply(ctx, o)
		if err != nil {
			if transient(err) {
				return nil, err
			}
			out.problems, out.reason, out.done = append(out.problems, err), "ManifestRefused", false
			// Refused now, perhaps applied before: it stays in the record.
			if r := refOf(d.applier.normalize(o)); has(before, r) && !has(out.refs, r) {
				out.refs = append(out.refs, r)
			}
			continue
		}
		// As applied: with the namespace a namespaced object without one landed in.
		if r := refOf(applied); !has(out.refs, r) {
			out.refs = append(out.refs, r)
		}
	}
	for _, r := range before {
		if !has(out.refs, r) {
			out.drop = append(out.drop, r)
		}
	}
	return out, nil
}

// record writes the record of a file as this pass leaves it, as applied by this server.
func (d *Dir) record(ctx context.Context, out *outcome) (*corev1.ConfigMap, error) {
	list, err := json.Marshal(out.refs)
	if err != nil {
		return nil, err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: RecordName(out.file), Namespace: recordNamespace,
			Labels: map[string]string{recordLabel: "true"}, Annotations: map[string]string{appliedByKey: d.owner, appliedOnKey: d.node}},
		Data: map[string]string{recordFileKey: out.file, recordSumKey: out.sum, recordObjectsKey: string(list)},
	}
	if out.gone {
		cm.Annotations = out.old.Annotations // still the removing server's, to finish later
	}
	cms := d.cs.CoreV1().ConfigMaps(recordNamespace)
	if out.old == nil {
		created, err := cms.Create(ctx, cm, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			// Another server's, made since the list: the objects it lists stay listed.
			current, gerr := cms.Get(ctx, cm.Name, metav1.GetOptions{})
			if gerr != nil {
				return nil, gerr
			}
			for _, r := range refsOf(current) {
				if !has(out.refs, r) {
					out.refs = append(out.refs, r)
				}
			}
			out.old = current
			return d.record(ctx, out)
		}
		return created, err
	}
	cm.ResourceVersion = out.old.ResourceVersion
	return cms.Update(ctx, cm, metav1.UpdateOptions{})
}

// report logs a problem with a file and records it as a Warning Event on the file's record,
// where `kubectl get events -n kube-system` and `kubectl describe configmap` show it.
func (d *Dir) report(ctx context.Context, rec *corev1.ConfigMap, file string, log *logrus.Entry, reason string, problem error) {
	log.WithField("reason", reason).Warn(problem.Error())
	if rec == nil {
		return
	}
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: rec.Name + ".", Namespace: recordNamespace},
		InvolvedObject: corev1.ObjectReference{Kind: "ConfigMap", APIVersion: "v1", Namespace: recordNamespace, Name: rec.Name,
			UID: rec.UID, ResourceVersion: rec.ResourceVersion},
		Reason: reason, Message: fmt.Sprintf("%s: %v", file, problem), Type: corev1.EventTypeWarning,
		Source: corev1.EventSource{Component: "kone", Host: d.node}, FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	if _, err := d.cs.CoreV1().Events(recordNamespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		log.WithError(err).Debug("cannot record an event")
	}
}

var nameUnsafe = regexp.MustCompile(`[^a-z0-9]+`)

// RecordName is the name of the ConfigMap that records what file applied: readable where the
// file's name allows, and unique through a hash of the whole path.
func RecordName(file string) string {
	sum := sha256.Sum256([]byte(file))
	hash := hex.EncodeToString(sum[:4])
	readable := strings.Trim(nameUnsafe.ReplaceAllString(strings.ToLower(file), "-"), "-")
	if len(readable) > 200 {
		readable = strings.Trim(readable[:200], "-")
	}
	name := "kone-manifest-" + readable + "-" + hash
	if readable == "" || len(validation.IsDNS1123Subdomain(name)) > 0 {
		name = "kone-manifest-" + hash
	}
	return name
}

// transient says whether err means the apiserver did not answer, or answered that it cannot
// serve now, rather than refused: the pass stops and the next look tries again. A 500 is a
// refusal: server-side apply answers a value of the wrong type with one.
func transient(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return !meta.IsNoMatchError(err)
	}
	return apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err)
}
