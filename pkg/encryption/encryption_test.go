package encryption

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// The first start makes a key; later starts keep it; turning encryption off keeps the keys so
// that what they encrypted still reads; a new key goes first and is the writer.
func TestEnsure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cred", "encryption-config.yaml")
	first, err := Ensure(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if first.Writer() != "kone-1" || len(first.Keys) != 1 {
		t.Fatalf("first start: writer %q, keys %v", first.Writer(), first.KeyNames())
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("configuration file: %v %v", fi, err)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), "secretbox") || strings.Index(string(data), "secretbox") > strings.Index(string(data), "identity") {
		t.Errorf("secretbox must be the first provider:\n%s", data)
	}
	again, err := Ensure(path, true)
	if err != nil || again.Keys[0] != first.Keys[0] {
		t.Fatalf("restart: %v, keys %v", err, again.KeyNames())
	}
	off, err := Ensure(path, false)
	if err != nil || off.Writer() != Identity || off.Keys[0] != first.Keys[0] {
		t.Fatalf("--secrets-encryption=false: %v, writer %q, keys %v", err, off.Writer(), off.KeyNames())
	}
	if loaded, err := Load(path); err != nil || loaded.Enabled {
		t.Errorf("reloaded with encryption off: %+v %v", loaded, err)
	}
	next, err := first.WithNewKey()
	if err != nil || !slices.Equal(next.KeyNames(), []string{"kone-2", "kone-1"}) || next.Writer() != "kone-2" || next.Keys[0].Secret == first.Keys[0].Secret {
		t.Fatalf("a new key: %v, keys %v", err, next.KeyNames())
	}
	// The step before: every server reads with the new key, none writes with it yet.
	if reading := next.WithReader(); !slices.Equal(reading.KeyNames(), []string{"kone-1", "kone-2"}) || reading.Writer() != "kone-1" || !slices.Equal(next.KeyNames(), []string{"kone-2", "kone-1"}) {
		t.Fatalf("reading with the new key: keys %v, writer %q; next keeps %v", reading.KeyNames(), reading.Writer(), next.KeyNames())
	}

	for content, want := range map[string]string{
		"garbage: [": "encryption configuration",
		"apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {}\n":                           "holds no key",
		"apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: a, secret: b}]}\n": "a provider kone does not write",
	} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Ensure(path, true); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error saying %q", content, err, want)
		}
		if data, _ := os.ReadFile(path); string(data) != content {
			t.Error("a configuration kone cannot read was overwritten: its keys would be lost")
		}
	}
}

func TestStoredWith(t *testing.T) {
	for value, want := range map[string]string{
		"k8s:enc:secretbox:v1:kone-2:\x00\x01ciphertext": "kone-2",
		"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret":        Identity,
	} {
		if got := storedWith([]byte(value)); got != want {
			t.Errorf("storedWith(%q) = %q, want %q", value, got, want)
		}
	}
}

// Rewrite puts every Secret back, across pages.
func TestRewrite(t *testing.T) {
	cs := fake.NewClientset()
	for _, name := range []string{"a", "b", "c"} {
		if _, err := cs.CoreV1().Secrets("default").Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := Rewrite(context.Background(), cs)
	if err != nil || n != 3 {
		t.Fatalf("rewrote %d: %v", n, err)
	}
	updates := 0
	for _, a := range cs.Actions() {
		if a.GetVerb() == "update" && a.GetResource().Resource == "secrets" {
			updates++
		}
	}
	if updates != 3 {
		t.Errorf("%d updates, want one a Secret", updates)
	}
}
