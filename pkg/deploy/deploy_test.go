package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

func TestDecode(t *testing.T) {
	objs, err := Decode("two.yaml", []byte(`
# a comment alone is an empty document
---
apiVersion: v1
kind: ConfigMap
metadata: {name: a, namespace: kube-system}
---
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
`))
	if err != nil || len(objs) != 2 || objs[0].GetName() != "a" || objs[0].GetNamespace() != "kube-system" || objs[1].GetKind() != "Namespace" {
		t.Fatalf("two objects among empty documents: %v, %v", objs, err)
	}
	objs, err = Decode("one.json", []byte(`{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}`))
	if err != nil || len(objs) != 1 || objs[0].GetName() != "c" {
		t.Fatalf("JSON: %v, %v", objs, err)
	}
	for name, data := range map[string]string{
		"noname.yaml": "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
		"broken.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\n kind: [\n",
	} {
		if _, err := Decode(name, []byte(data)); err == nil || !strings.Contains(err.Error(), name+": document ") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"a.yaml", "b.yml", "c.json", "notes.txt", "sub/d.yaml", "held.yaml", "held.yaml.skip", ".#a.yaml", ".git/x.yaml"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	apply, skip, err := Files(dir)
	if err != nil || strings.Join(apply, ",") != "a.yaml,b.yml,c.json,sub/d.yaml" || strings.Join(skip, ",") != "held.yaml" {
		t.Errorf("apply %v, skip %v, %v", apply, skip, err)
	}
	// A directory that is not there must not look empty: its files would look removed.
	if _, _, err := Files(filepath.Join(dir, "none")); err == nil {
		t.Error("a directory that does not exist: no error")
	}
}

func TestRecordName(t *testing.T) {
	a, b := RecordName("apps/Web_1.yaml"), RecordName("apps-web-1.yaml")
	if !strings.HasPrefix(a, "kone-manifest-apps-web-1-yaml-") || a == b {
		t.Errorf("records %q and %q: readable, and apart for files whose names read alike", a, b)
	}
	for _, file := range []string{"sub/.x.yaml", "a..b.yaml", "-.yaml", "Ü.yaml", strings.Repeat("x.", 200) + "yaml"} {
		if name := RecordName(file); len(validation.IsDNS1123Subdomain(name)) > 0 {
			t.Errorf("the record of %q is %q, which the apiserver refuses: %v", file, name, validation.IsDNS1123Subdomain(name))
		}
	}
}
