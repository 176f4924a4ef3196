package server

import (
	"context"
	"testing"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/token"
)

// fakeEtcd records what is stored at each key.
type fakeEtcd struct {
	values map[string][]byte
	puts   int
}

func (e *fakeEtcd) Put(_ context.Context, key string, value []byte) error {
	e.values[key] = value
	e.puts++
	return nil
}

func (e *fakeEtcd) Delete(_ context.Context, key string) error {
	delete(e.values, key)
	return nil
}

// The sealed copy of the server data follows the data and the token that seals it, is written
// once per change, not at every resync of the follower, and goes when its token is deleted.
func TestSealer(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	newToken := func() token.Token {
		tok, err := token.Generate()
		if err != nil {
			t.Fatal(err)
		}
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: bootstraputil.BootstrapTokenSecretName(tok.ID), Namespace: metav1.NamespaceSystem}}
		if _, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		return tok
	}
	kv := &fakeEtcd{values: map[string][]byte{}}
	s := newSealer(cs, kv, logrus.New())
	first := newToken()
	data := map[string][]byte{"server-ca.key": []byte("key 1"), join.ServerTokenKey: first.File()}
	for range 2 {
		if err := s.seal(ctx, data); err != nil {
			t.Fatal(err)
		}
	}
	if kv.puts != 1 {
		t.Fatalf("the same data twice: stored %d times, want once", kv.puts)
	}
	if got, err := join.OpenServerData(first, kv.values[join.SealedServerDataKey]); err != nil || string(got["server-ca.key"]) != "key 1" {
		t.Errorf("the sealed data: %q, %v", got, err)
	}

	second := newToken()
	data[join.ServerTokenKey] = second.File()
	if err := s.seal(ctx, data); err != nil {
		t.Fatal(err)
	}
	sealed := kv.values[join.SealedServerDataKey]
	if _, err := join.OpenServerData(second, sealed); err != nil {
		t.Errorf("sealed after a rotation: the new token does not open it: %v", err)
	}
	if _, err := join.OpenServerData(first, sealed); err == nil {
		t.Error("sealed after a rotation: the old token still opens it")
	}

	// The token deleted, as after a leak: what it sealed is removed, and a change after that is
	// not sealed with it.
	if err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, bootstraputil.BootstrapTokenSecretName(second.ID), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	data["server-ca.key"] = []byte("key 2")
	if err := s.seal(ctx, data); err != nil {
		t.Fatal(err)
	}
	if v, ok := kv.values[join.SealedServerDataKey]; ok {
		t.Errorf("the data sealed with a deleted token is still stored: %q", v)
	}
	// A new server token seals it again.
	third := newToken()
	data[join.ServerTokenKey] = third.File()
	if err := s.seal(ctx, data); err != nil {
		t.Fatal(err)
	}
	if got, err := join.OpenServerData(third, kv.values[join.SealedServerDataKey]); err != nil || string(got["server-ca.key"]) != "key 2" {
		t.Errorf("sealed with the next token: %q, %v", got, err)
	}
}
