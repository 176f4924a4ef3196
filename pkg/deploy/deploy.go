// Package deploy applies manifests (YAML or JSON files of Kubernetes objects, several to a file)
// to the cluster with server-side apply, under kone's field manager: kone's own objects from
// the manifests folder as a server starts, and later the files an administrator drops in.
package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
)

// Field managers: what kone applied of its own manifests, and what it applied from the
// manifests directory. Apart, so that kone never takes for its own an object of the
// directory's (a kube-dns Service of the user's, with --disable coredns), and the two never
// fight over fields.
const (
	FieldManager    = "kone"
	DirFieldManager = "kone-manifests"
)

// Applier applies manifests to one cluster as one field manager.
type Applier struct {
	dyn     dynamic.Interface
	mapper  *restmapper.DeferredDiscoveryRESTMapper
	manager string
}

// New makes an Applier that talks to the cluster as rc and applies as manager.
func New(rc *rest.Config, manager string) (*Applier, error) {
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &Applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), manager: manager}, nil
}

// Decode reads the objects of a manifest, named name in errors: YAML documents separated by
// "---", or JSON. Empty documents are passed over; an object without a kind, an API version or
// a name is an error naming the document.
func Decode(name string, data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for doc := 1; ; doc++ {
		var o map[string]any
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, doc, err)
		}
		if len(o) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: o}
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("%s: document %d: an object needs apiVersion, kind and metadata.name", name, doc)
		}
		objs = append(objs, u)
	}
}

// ApplyFS applies kone's own manifests, every .yaml, .yml and .json file of fsys in name order,
// after Render with values, and stops at the first error. A file named after a part of kone
// that disabled names (coredns.yaml for coredns) is that part's: its objects are removed
// instead, those kone had applied. A part that left names is neither applied nor removed.
func (a *Applier) ApplyFS(ctx context.Context, fsys fs.FS, values map[string]string, disabled, left []string) error {
	names, err := fs.Glob(fsys, "*")
	if err != nil {
		return err
	}
	for _, name := range names {
		part := strings.TrimSuffix(name, path.Ext(name))
		if !isManifest(name) || slices.Contains(left, part) {
			continue
		}
		data, err := fs.ReadFile(fsys, name)
		if err != nil {
			return err
		}
		if data, err = Render(name, data, values); err != nil {
			return err
		}
		objs, err := Decode(name, data)
		if err != nil {
			return err
		}
		off := slices.Contains(disabled, part)
		if off {
			// Taken down in the reverse of the order it goes up: the rights a policy holds in
			// go before the policy.
			slices.Reverse(objs)
		}
		for _, o := range objs {
			if off {
				err = a.DeleteOwn(ctx, o)
			} else {
				_, err = a.Apply(ctx, o)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	return nil
}

// placeholder is a value kone fills into its manifests, such as %{CLUSTER_DNS}%.
var placeholder = regexp.MustCompile(`%\{[A-Z_]+\}%`)

// Render fills the placeholders %{NAME}% of a manifest with values[NAME]; one without a value
// is an error.
func Render(name string, data []byte, values map[string]string) ([]byte, error) {
	var missing []string
	out := placeholder.ReplaceAllFunc(data, func(p []byte) []byte {
		v, ok := values[string(p[2:len(p)-2])]
		if !ok {
			missing = append(missing, string(p))
		}
		return []byte(v)
	})
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s: no value for %s", name, strings.Join(slices.Compact(missing), ", "))
	}
	return out, nil
}

// isManifest says whether a file's name is that of a manifest.
func isManifest(name string) bool {
	return slices.Contains([]string{".yaml", ".yml", ".json"}, path.Ext(name))
}

// DeleteOwn deletes obj (only its group, kind, namespace and name matter) if this Applier's
// field manager applied it and no other manager applies it too; an object of the same name
// that someone else made, such as a kube-dns Service of a DNS the user runs instead, stays.
// One already gone, or of a kind the cluster no longer serves, is no error.
func (a *Applier) DeleteOwn(ctx context.Context, obj *unstructured.Unstructured) error {
	mapping, err := a.mapping(obj.GroupVersionKind().GroupKind())
	if meta.IsNoMatchError(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", obj.GetKind(), describe(obj), err)
	}
	client := a.client(mapping, obj.GetNamespace())
	current, err := client.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", obj.GetKind(), describe(obj), err)
	}
	ours, others := false, false
	for _, e := range current.GetManagedFields() {
		if e.Operation != metav1.ManagedFieldsOperationApply || e.Subresource != "" {
			continue
		}
		if e.Manager == a.manager {
			ours = true
		} else {
			others = true
		}
	}
	if !ours || others {
		return nil
	}
	err = client.Delete(ctx, obj.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: ptr.To(current.GetUID())},
		PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s %s: %w", obj.GetKind(), describe(obj), err)
	}
	return nil
}

// Apply makes the fields obj sets the cluster's, taking them from any other manager that
// changed them, and returns the object as applied. Fields obj leaves out that this manager had
// set are removed; fields others added stay.
func (a *Applier) Apply(ctx context.Context, obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	client, err := a.resource(obj)
	if err != nil {
		return nil, err
	}
	applied, err := client.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: a.manager, Force: true})
	if err != nil {
		return nil, fmt.Errorf("apply %s %s: %w", obj.GetKind(), describe(obj), err)
	}
	return applied, nil
}

// resource is the client of obj's kind, in obj's namespace (default, where a namespaced
// object names none).
func (a *Applier) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := a.mapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	return a.client(mapping, obj.GetNamespace()), nil
}

// mapping finds the resource of a kind, in the versions given or else any the cluster serves.
func (a *Applier) mapping(gk schema.GroupKind, versions ...string) (*meta.RESTMapping, error) {
	mapping, err := a.mapper.RESTMapping(gk, versions...)
	if meta.IsNoMatchError(err) {
		// A kind the cached discovery did not know yet, such as one a CRD just added.
		a.mapper.Reset()
		mapping, err = a.mapper.RESTMapping(gk, versions...)
	}
	return mapping, err
}

func (a *Applier) client(mapping *meta.RESTMapping, namespace string) dynamic.ResourceInterface {
	if mapping.Scope.Name() != meta.RESTScopeNameNamespace {
		return a.dyn.Resource(mapping.Resource)
	}
	if namespace == "" {
		namespace = metav1.NamespaceDefault
	}
	return a.dyn.Resource(mapping.Resource).Namespace(namespace)
}

// normalize names an object as the cluster does: in default when it is of a namespaced kind
// and names no namespace, in none when its kind is cluster-scoped. A kind the cluster does not
// serve is left as it is.
func (a *Applier) normalize(obj *unstructured.Unstructured) *unstructured.Unstructured {
	gvk := obj.GroupVersionKind()
	mapping, err := a.mapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return obj
	}
	switch namespaced := mapping.Scope.Name() == meta.RESTScopeNameNamespace; {
	case namespaced && obj.GetNamespace() == "":
		obj = obj.DeepCopy()
		obj.SetNamespace(metav1.NamespaceDefault)
	case !namespaced && obj.GetNamespace() != "":
		obj = obj.DeepCopy()
		obj.SetNamespace("")
	}
	return obj
}

func describe(obj *unstructured.Unstructured) string {
	if obj.GetNamespace() == "" {
		return obj.GetName()
	}
	return obj.GetNamespace() + "/" + obj.GetName()
}
