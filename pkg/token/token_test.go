package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	"k8s.io/cluster-bootstrap/token/jws"

	"github.com/kone-dev/kone/pkg/pki"
)

func testCA(t *testing.T) ([]byte, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true, NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), hex.EncodeToString(sum[:])
}

func TestGenerateAndFormat(t *testing.T) {
	caPEM, hash := testCA(t)
	tok, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	tok, err = tok.WithCA(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	full := tok.String()
	if !regexp.MustCompile(`^K10[0-9a-f]{64}::[a-z0-9]{6}\.[a-z0-9]{16}$`).MatchString(full) {
		t.Fatalf("token %q has the wrong form", full)
	}
	if !strings.HasPrefix(full, "K10"+hash+"::") {
		t.Fatalf("token %q does not carry the CA hash %s", full, hash)
	}
	back, err := Parse(full)
	if err != nil || back != tok {
		t.Fatalf("round trip: got %+v, %v; want %+v", back, err, tok)
	}
	if other, _ := Generate(); other.ID == tok.ID && other.Secret == tok.Secret {
		t.Fatal("two generated tokens are equal")
	}
}

func TestParseForms(t *testing.T) {
	tok, err := Parse("abcdef.0123456789abcdef")
	if err != nil || tok.ID != "abcdef" || tok.Secret != "0123456789abcdef" || tok.CAHash != "" {
		t.Fatalf("bootstrap form: %+v, %v", tok, err)
	}
	p1, err1 := Parse("correct horse battery staple")
	p2, err2 := Parse("  correct horse battery staple\n")
	p3, _ := Parse("correct horse battery stapler")
	if err1 != nil || err2 != nil || p1 != p2 {
		t.Fatalf("a passphrase must derive the same token every time: %+v %v / %+v %v", p1, err1, p2, err2)
	}
	if p1 == p3 {
		t.Fatal("different passphrases derived the same token")
	}
	if !regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`).MatchString(p1.Bootstrap()) {
		t.Fatalf("derived token %q is not a bootstrap token", p1.Bootstrap())
	}
}

func TestParseBadInput(t *testing.T) {
	hash := strings.Repeat("a", 64)
	for in, want := range map[string]string{
		"":      "empty",
		"short": "too short",
		"K10" + hash[:10] + "::abcdef.0123456789abcdef":             "64 lower-case hex",
		"K10" + strings.ToUpper(hash) + "::abcdef.0123456789abcdef": "64 lower-case hex",
		"K10" + hash + "::abc.def":                                  "malformed",
		"K10" + hash + "::a long passphrase here":                   "malformed",
		"X10" + hash + "::abcdef.0123456789abcdef":                  "malformed",
		"K10" + hash + "::ABCDEF.0123456789abcdef-and-more":         "malformed",
	} {
		if _, err := Parse(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error mentioning %q", in, err, want)
		}
	}
}

func TestCheckCA(t *testing.T) {
	caPEM, _ := testCA(t)
	otherPEM, _ := testCA(t)
	tok, _ := Generate()
	pinned, _ := tok.WithCA(caPEM)
	if err := pinned.CheckCA(caPEM); err != nil {
		t.Fatalf("the right CA was refused: %v", err)
	}
	err := pinned.CheckCA(otherPEM)
	if err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("another CA: got %v", err)
	}
	if err := tok.CheckCA(otherPEM); err != nil {
		t.Fatalf("an unpinned token checks nothing, got %v", err)
	}
	if err := pinned.CheckCA([]byte("garbage")); err == nil {
		t.Fatal("garbage accepted as a CA")
	}
}

// A token handed out before a rotate-ca (baked into a machine image, say) still joins after
// it, and no longer once the old CA is dropped.
func TestCheckCAAcrossRotations(t *testing.T) {
	ca := pki.Layout(t.TempDir())
	if err := ca.EnsureAuthorities(time.Now()); err != nil {
		t.Fatal(err)
	}
	read := func() []byte {
		data, err := os.ReadFile(ca.ServerCA)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	tok, _ := Generate()
	before, err := tok.WithCA(read())
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.StageRotation(time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := ca.FinishRotation(); err != nil {
		t.Fatal(err)
	}
	if err := before.CheckCA(read()); err != nil {
		t.Fatalf("a token from before the rotation was refused: %v", err)
	}
	after, err := tok.WithCA(read())
	if err != nil || after.CAHash == before.CAHash {
		t.Fatalf("a token made after the rotation pins %s, as before it (%v)", after.CAHash, err)
	}
	// Once the old CA is no longer in the file, a pin of it vouches for nothing.
	newOnly, err := pki.ParseCert(read())
	if err != nil {
		t.Fatal(err)
	}
	if err := before.CheckCA(pki.EncodeCert(newOnly)); err == nil || !strings.Contains(err.Error(), "no longer trusts") {
		t.Fatalf("a token of a CA no longer trusted: got %v", err)
	}
	if trusted, err := after.TrustedCA(read()); err != nil || string(trusted) != string(pki.EncodeCert(newOnly)) {
		t.Fatalf("a token of the new CA trusts %q (%v), want the new CA alone", trusted, err)
	}
}

func TestSecrets(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tok, _ := Parse("abcdef.0123456789abcdef")
	if err := Create(ctx, cs, tok, Options{TTL: time.Hour, Description: "edge"}, now); err != nil {
		t.Fatal(err)
	}
	s, err := cs.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-abcdef", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Type != bootstrapapi.SecretTypeBootstrapToken || string(s.Data["token-secret"]) != "0123456789abcdef" ||
		string(s.Data["usage-bootstrap-authentication"]) != "true" || string(s.Data["usage-bootstrap-signing"]) != "true" ||
		string(s.Data["expiration"]) != "2026-01-01T01:00:00Z" || string(s.Data["auth-extra-groups"]) != NodeGroup {
		t.Fatalf("secret %+v", s)
	}
	if err := Create(ctx, cs, tok, Options{}, now); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate: %v", err)
	}
	if err := Ensure(ctx, cs, tok, Options{}, now); err != nil {
		t.Fatalf("Ensure of the same token: %v", err)
	}
	clash, _ := Parse("abcdef.ffffffffffffffff")
	if err := Ensure(ctx, cs, clash, Options{}, now); err == nil || !strings.Contains(err.Error(), "another secret") {
		t.Fatalf("Ensure with another secret: %v", err)
	}
	infos, err := List(ctx, cs)
	if err != nil || len(infos) != 1 || infos[0].ID != "abcdef" || infos[0].Description != "edge" ||
		!infos[0].Expires.Equal(now.Add(time.Hour)) || strings.Join(infos[0].Usages, ",") != "authentication,signing" {
		t.Fatalf("list: %+v, %v", infos, err)
	}
	if err := Delete(ctx, cs, "nope!"); err == nil || !strings.Contains(err.Error(), "not a token id") {
		t.Fatalf("bad id: %v", err)
	}
	if err := Delete(ctx, cs, "abcdef"); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, cs, "abcdef"); err == nil || !strings.Contains(err.Error(), "no token") {
		t.Fatalf("second delete: %v", err)
	}
}

func TestPublishClusterInfo(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	tok := Token{ID: "abcdef", Secret: "0123456789abcdef"}
	for _, content := range []string{"first", "second"} {
		if err := PublishClusterInfo(ctx, cs, []byte(content), tok); err != nil {
			t.Fatal(err)
		}
		cm, err := cs.CoreV1().ConfigMaps("kube-public").Get(ctx, "cluster-info", metav1.GetOptions{})
		if err != nil || cm.Data["kubeconfig"] != content {
			t.Fatalf("cluster-info %+v, %v", cm, err)
		}
		// Signed for the token, as a joining node checks it.
		want, err := jws.ComputeDetachedSignature(content, tok.ID, tok.Secret)
		if err != nil {
			t.Fatal(err)
		}
		if got := cm.Data["jws-kubeconfig-abcdef"]; got != want {
			t.Fatalf("signature of %q: %q, want %q", content, got, want)
		}
	}
}

// Another writer's update between the read and the write (the bootstrapsigner, another server
// after a rotate-ca) is read again, not returned as an error.
func TestPublishClusterInfoRacesAnotherWriter(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	tok := Token{ID: "abcdef", Secret: "0123456789abcdef"}
	if err := PublishClusterInfo(ctx, cs, []byte("first"), tok); err != nil {
		t.Fatal(err)
	}
	raced := 0
	cs.PrependReactor("update", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		if raced++; raced == 1 {
			return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, "cluster-info", errors.New("modified"))
		}
		return false, nil, nil
	})
	if err := PublishClusterInfo(ctx, cs, []byte("second"), tok); err != nil || raced != 2 {
		t.Fatalf("after a conflict: %v (%d updates)", err, raced)
	}
	cm, err := cs.CoreV1().ConfigMaps("kube-public").Get(ctx, "cluster-info", metav1.GetOptions{})
	if err != nil || cm.Data["kubeconfig"] != "second" {
		t.Fatalf("cluster-info after a conflict: %+v, %v", cm, err)
	}
}

// The server's token is created in the cluster at the first start only: deleted, it stays
// deleted across restarts; rotated, the old one is gone and the new one is in the token file.
func TestServerToken(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	caPEM, _ := testCA(t)
	dir := t.TempDir()
	files := ServerFiles{Token: filepath.Join(dir, "token"), Published: filepath.Join(dir, "token.published"), Superseded: filepath.Join(dir, "token.superseded")}
	tok, err := Generate()
	if err == nil {
		tok, err = tok.WithCA(caPEM)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files.Token, tok.File(), 0o600); err != nil {
		t.Fatal(err)
	}
	secretOf := func(id string) error {
		_, err := cs.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+id, metav1.GetOptions{})
		return err
	}
	for start := range 2 {
		if usable, err := files.Publish(ctx, cs, tok, time.Now()); err != nil || !usable {
			t.Fatalf("start %d: usable %v, %v", start, usable, err)
		}
	}
	if err := secretOf(tok.ID); err != nil {
		t.Fatalf("the server's token is not in the cluster: %v", err)
	}
	// The server token alone joins servers. One that an earlier kone made gains the group.
	groupsOf := func() string {
		s, _ := cs.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+tok.ID, metav1.GetOptions{})
		return string(s.Data["auth-extra-groups"])
	}
	if g := groupsOf(); g != NodeGroup+","+ServerGroup {
		t.Errorf("the server token's groups: %q", g)
	}
	older, _ := cs.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+tok.ID, metav1.GetOptions{})
	older.Data["auth-extra-groups"] = []byte(NodeGroup)
	if _, err := cs.CoreV1().Secrets("kube-system").Update(ctx, older, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if usable, err := files.Publish(ctx, cs, tok, time.Now()); err != nil || !usable || groupsOf() != NodeGroup+","+ServerGroup {
		t.Errorf("a server token from an earlier kone: usable %v, %v, groups %q", usable, err, groupsOf())
	}
	if err := Delete(ctx, cs, tok.ID); err != nil {
		t.Fatal(err)
	}
	if usable, err := files.Publish(ctx, cs, tok, time.Now()); err != nil || usable {
		t.Errorf("after delete: usable %v, %v", usable, err)
	}
	if err := secretOf(tok.ID); !apierrors.IsNotFound(err) {
		t.Errorf("a deleted server token came back at the next start: %v", err)
	}

	// A start killed after the Secret was made but before it was recorded: the next one records it.
	if err := os.Remove(files.Published); err != nil {
		t.Fatal(err)
	}
	// As the apiserver stores it: StringData becomes Data, which the fake client does not do.
	if _, err := cs.CoreV1().Secrets("kube-system").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + tok.ID, Namespace: "kube-system"},
		Type:       bootstrapapi.SecretTypeBootstrapToken,
		Data:       map[string][]byte{bootstrapapi.BootstrapTokenIDKey: []byte(tok.ID), bootstrapapi.BootstrapTokenSecretKey: []byte(tok.Secret)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if usable, err := files.Publish(ctx, cs, tok, time.Now()); err != nil || !usable {
		t.Fatalf("after an unrecorded publish: usable %v, %v", usable, err)
	}

	// A rotation the cluster's servers cannot follow changes nothing.
	refuse := func(Token, Token) error { return errors.New("another server changed it") }
	if _, err := files.Rotate(ctx, cs, caPEM, time.Now(), refuse); err == nil || !strings.Contains(err.Error(), "nothing changed") {
		t.Errorf("a rotation that could not be published: %v", err)
	}
	if data, _ := os.ReadFile(files.Token); strings.TrimSpace(string(data)) != tok.String() || files.WasSuperseded(tok.ID) {
		t.Error("a rotation that could not be published changed the token file or retired the token")
	}
	if all, err := cs.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{}); err != nil || len(all.Items) != 1 {
		t.Errorf("a rotation that could not be published left Secrets behind: %v, %v", all, err)
	}
	var published Token
	rotated, err := files.Rotate(ctx, cs, caPEM, time.Now(), func(old, t Token) error {
		if old.ID != tok.ID {
			return fmt.Errorf("published as replacing %s", old.ID)
		}
		published = t
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if published.ID != rotated.ID {
		t.Errorf("published %q, rotated to %q", published.ID, rotated.ID)
	}
	if rotated.ID == tok.ID || rotated.CheckCA(caPEM) != nil {
		t.Fatalf("rotated token %s does not replace %s, or does not pin the CA", rotated.ID, tok.ID)
	}
	if data, _ := os.ReadFile(files.Token); strings.TrimSpace(string(data)) != rotated.String() {
		t.Error("the token file does not hold the new token")
	}
	if err := secretOf(tok.ID); !apierrors.IsNotFound(err) {
		t.Errorf("the old token survives its rotation: %v", err)
	}
	if !files.WasSuperseded(tok.ID) || files.WasSuperseded(rotated.ID) {
		t.Error("the rotation did not record which token it replaced")
	}
	// A rotation killed before it deleted the old token: the next start deletes it.
	if err := Create(ctx, cs, tok, Options{}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if usable, err := files.Publish(ctx, cs, rotated, time.Now()); err != nil || !usable || secretOf(rotated.ID) != nil {
		t.Errorf("the new token at the next start: usable %v, %v", usable, err)
	}
	if err := secretOf(tok.ID); !apierrors.IsNotFound(err) {
		t.Errorf("the replaced token survives the next start: %v", err)
	}
	otherCA, _ := testCA(t)
	if _, err := files.Rotate(ctx, cs, otherCA, time.Now(), func(Token, Token) error { return nil }); err == nil || !strings.Contains(err.Error(), "does not belong to the cluster") {
		t.Errorf("rotate against another cluster's CA: %v", err)
	}
	if data, _ := os.ReadFile(files.Token); strings.TrimSpace(string(data)) != rotated.String() {
		t.Error("a refused rotation changed the token file")
	}
}
