package server_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// inEtcdFiles reports the files under the server's etcd data dir that hold value.
func inEtcdFiles(t *testing.T, n *node, value string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(filepath.Join(n.dataDir, "server", "db"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err == nil && bytes.Contains(data, []byte(value)) {
			found = append(found, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// secretsEncrypt runs `kone secrets-encrypt SUB` with the server's own settings.
func secretsEncrypt(n *node, sub string) string {
	n.t.Helper()
	return n.run(nil, n.bin, append([]string{"secrets-encrypt", sub}, n.args()[1:]...)...)
}

func createSecret(t *testing.T, cs kubernetes.Interface, name, value string) {
	t.Helper()
	if _, err := cs.CoreV1().Secrets("default").Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name}, StringData: map[string]string{"value": value},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func checkSecret(t *testing.T, cs kubernetes.Interface, name, want, when string) {
	t.Helper()
	s, err := cs.CoreV1().Secrets("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil || string(s.Data["value"]) != want {
		t.Errorf("Secret %s %s: %v, %q", name, when, err, s.Data["value"])
	}
}

// TestSecretsEncryption: Secrets are encrypted at rest by default, read back after a restart
// and a key rotation, and a cluster that ran with encryption off has every Secret encrypted
// once it runs with it on.
func TestSecretsEncryption(t *testing.T) {
	bin := koneBinary(t)

	// Off first: the value is in etcd's files, as the check below must be able to see.
	n := newNode(t, bin, t.TempDir())
	n.extra = []string{"--secrets-encryption=false"}
	n.start()
	cs := n.client()
	checkTLS(t, n) // without --profile=cis too
	const plain = "kone-it-plain-7d1c0e5a"
	createSecret(t, cs, "plain", plain)
	if found := inEtcdFiles(t, n, plain); len(found) == 0 {
		t.Fatal("with encryption off, the Secret's value is not in etcd's files: the check cannot see a value")
	}
	if out := secretsEncrypt(n, "status"); !strings.Contains(out, "Encryption at rest: off") || !strings.Contains(out, "Every Secret is stored in plain text") {
		t.Errorf("status with encryption off:\n%s", out)
	}
	n.stop()

	// On (the default): the next start stores every Secret encrypted; a new one never reaches
	// the disk in plain text.
	n.extra = nil
	n.start()
	// The rewrite runs in the background once the server is ready.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		out := secretsEncrypt(n, "status")
		if strings.Contains(out, "Every Secret is encrypted with the current key, kone-1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status a minute after the start with encryption on:\n%s", out)
		}
	}
	checkSecret(t, cs, "plain", plain, "after encryption was turned on")
	const secret = "kone-it-secret-5f3b9a21"
	createSecret(t, cs, "secret", secret)
	n.stop()
	n.start()
	checkSecret(t, cs, "secret", secret, "after a restart")

	out := secretsEncrypt(n, "rotate-keys")
	if !strings.Contains(out, "Retired kone-1; kone-2 is the only key") {
		t.Errorf("rotate-keys:\n%s", out)
	}
	if out := secretsEncrypt(n, "status"); !strings.Contains(out, "Keys: kone-2 (current)\n") || !strings.Contains(out, "Every Secret is encrypted with the current key, kone-2") {
		t.Errorf("status after rotate-keys:\n%s", out)
	}
	checkSecret(t, cs, "secret", secret, "after rotate-keys")
	checkSecret(t, cs, "plain", plain, "after rotate-keys")
	n.stop()
	n.start()
	checkSecret(t, cs, "secret", secret, "after rotate-keys and a restart")
	if found := inEtcdFiles(t, n, secret); len(found) > 0 {
		t.Errorf("a Secret's value is in plain text in %v", found)
	}
	if strings.Contains(n.log.String(), secret) {
		t.Error("a Secret's value is in kone's log")
	}
}
