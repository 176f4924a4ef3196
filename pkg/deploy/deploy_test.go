package deploy

import (
	"strings"
	"testing"
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
