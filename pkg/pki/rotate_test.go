package pki

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// verifies reports whether the leaf in leafFile (with the chain after it) verifies against
// exactly the roots given.
func verifies(t *testing.T, leafFile string, usage x509.ExtKeyUsage, at time.Time, roots ...*x509.Certificate) error {
	t.Helper()
	certs := fileCerts(t, leafFile)
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func fileCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func TestRotatedAuthoritiesKeepTheOldTrust(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	oldServer, oldClient := readCert(t, c.ServerCA), readCert(t, c.ClientCA)
	oldKey, err := os.ReadFile(filepath.Join(c.Dir, "server-ca.key"))
	if err != nil {
		t.Fatal(err)
	}

	later := now.Add(24 * time.Hour)
	if resumed, err := c.RotateAuthorities(later); err != nil || resumed {
		t.Fatalf("RotateAuthorities: resumed %t, %v", resumed, err)
	}
	if issued := ensure(t, c, later); len(issued) != 9 {
		t.Fatalf("after the rotation %d leaves were issued, want all 9: %v", len(issued), issued)
	}
	// The controller-manager signs with a file of the CA alone.
	for signer, ca := range map[string]string{c.ClientCASigner: c.ClientCA, c.KubeletServingCASigner: c.KubeletServingCA} {
		if got := fileCerts(t, signer); len(got) != 1 || !got[0].Equal(fileCerts(t, ca)[0]) {
			t.Errorf("%s holds %d certificates, want the new CA alone", signer, len(got))
		}
	}
	bundle := fileCerts(t, c.ServerCA)
	if len(bundle) != 3 || bundle[0].Equal(oldServer) || !bundle[2].Equal(oldServer) {
		t.Fatalf("server-ca.crt holds %d certificates, want the new CA, its cross-signature, the old CA", len(bundle))
	}
	if newKey, _ := os.ReadFile(filepath.Join(c.Dir, "server-ca.key")); string(newKey) == string(oldKey) {
		t.Fatal("the CA's key did not change")
	}
	next := bundle[0]
	server, client := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	// A node that joined before the rotation trusts only the old CAs: the new leaves still pass.
	if err := verifies(t, c.APIServerServing.Cert, server, later, oldServer); err != nil {
		t.Errorf("the new serving certificate does not verify for a client that trusts only the old CA: %v", err)
	}
	if err := verifies(t, c.APIServerKubelet.Cert, client, later, oldClient); err != nil {
		t.Errorf("the apiserver's new client certificate does not verify for a kubelet that trusts only the old CA: %v", err)
	}
	if err := verifies(t, c.APIServerServing.Cert, server, later, next); err != nil {
		t.Errorf("the new serving certificate does not verify against the new CA: %v", err)
	}
	if leaf := readCert(t, c.APIServerServing.Cert); leaf.CheckSignatureFrom(next) != nil {
		t.Error("the serving certificate is not signed by the new CA")
	}

	// A second rotation would end the trust in the first CA, which nodes may still depend on.
	before, err := os.ReadFile(c.ServerCA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RotateAuthorities(later.Add(time.Hour)); err == nil || !strings.Contains(err.Error(), "still trusted") {
		t.Fatalf("a second rotation: %v", err)
	}
	if after, _ := os.ReadFile(c.ServerCA); string(after) != string(before) {
		t.Error("a refused rotation changed server-ca.crt")
	}
}

func TestInterruptedRotationIsFinished(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	if err := c.stageRotation(now); err != nil {
		t.Fatal(err)
	}
	staged := fileCerts(t, filepath.Join(c.Dir, stagedDir, "etcd-peer-ca.crt"))[0]
	// As if killed after it put the first CA in place.
	f := Layout(filepath.Join(c.Dir, stagedDir))
	first, err := os.ReadFile(f.ServerCA)
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(c.Dir, stagedDir, "server-ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := WritePair(File{c.ServerCA, filepath.Join(c.Dir, "server-ca.key")}, first, key); err != nil {
		t.Fatal(err)
	}
	// Its stage is left, as a kill between the two steps leaves it.
	// The next start finishes it, rather than leaving the other CAs as they were.
	if err := c.EnsureAuthorities(now); err != nil {
		t.Fatal(err)
	}
	if !readCert(t, c.EtcdPeerCA).Equal(staged) {
		t.Error("the start did not finish the interrupted rotation")
	}
	if _, err := os.Stat(filepath.Join(c.Dir, stagedDir)); !os.IsNotExist(err) {
		t.Errorf("the stage is still there: %v", err)
	}
	if _, err := LoadCA(c.Dir, "server-ca"); err != nil {
		t.Error(err)
	}

	// A stage without its mark was killed before anything took its place: made anew.
	c = Layout(t.TempDir())
	ensure(t, c, now)
	if err := c.stageRotation(now); err != nil {
		t.Fatal(err)
	}
	abandoned := fileCerts(t, filepath.Join(c.Dir, stagedDir, "etcd-peer-ca.crt"))[0]
	if err := os.Remove(filepath.Join(c.Dir, stagedDir, stagedComplete)); err != nil {
		t.Fatal(err)
	}
	if resumed, err := c.RotateAuthorities(now); err != nil || resumed {
		t.Fatalf("resumed %t, %v", resumed, err)
	}
	if readCert(t, c.EtcdPeerCA).Equal(abandoned) {
		t.Error("an unfinished stage was put in place")
	}
}

// A complete stage that was not made for the CAs in place (left beside a data dir that was
// restored since, say) is refused, and the CAs stay.
func TestStaleStageIsRefused(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	if err := c.stageRotation(now); err != nil {
		t.Fatal(err)
	}
	// Only the last CA it would move differs: the others must not move either.
	other := Layout(t.TempDir())
	ensure(t, other, now)
	for _, ext := range []string{".crt", ".key"} {
		data, err := os.ReadFile(filepath.Join(other.Dir, "etcd/peer-ca"+ext))
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteFile(filepath.Join(c.Dir, "etcd/peer-ca"+ext), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := os.ReadFile(c.ServerCA)
	if _, err := c.RotateAuthorities(now); err == nil || !strings.Contains(err.Error(), "replaces another CA") {
		t.Fatalf("a stale stage: %v", err)
	}
	if after, _ := os.ReadFile(c.ServerCA); string(after) != string(before) {
		t.Error("a stale stage replaced the server CA")
	}
}

func TestVouched(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	old := readCert(t, c.ServerCA)
	if _, err := c.RotateAuthorities(now); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(c.ServerCA)
	if err != nil {
		t.Fatal(err)
	}
	bundle := fileCerts(t, c.ServerCA)
	pin := func(want *x509.Certificate) func(*x509.Certificate) bool {
		return func(c *x509.Certificate) bool { return c.Equal(want) }
	}
	// A pin of the new CA vouches for it alone; one of the old CA, for the transition.
	if got, err := Vouched(data, pin(bundle[0])); err != nil || len(got) != 1 || !got[0].Equal(bundle[0]) {
		t.Fatalf("pinned to the new CA: %d certificates, %v; want the new CA alone", len(got), err)
	}
	if got, err := Vouched(data, pin(old)); err != nil || len(got) != 3 || !got[0].Equal(bundle[0]) || !got[2].Equal(old) {
		t.Fatalf("pinned to the old CA: %d certificates, %v; want the new CA, its cross-signature and the old CA", len(got), err)
	}

	// An attacker who knows a token but holds no CA key serves the pinned CA followed by their
	// own CA and a "cross-signature" of the pinned CA's key made with theirs: only the pinned
	// CA is vouched for.
	attacker, err := newCA("server-ca", now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := *old
	forged, err := sign(&tmpl, attacker.Cert, old.PublicKey, attacker.Key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Vouched(EncodeCerts([]*x509.Certificate{old, forged, attacker.Cert}), pin(old))
	if err != nil || len(got) != 1 || !got[0].Equal(old) {
		t.Fatalf("a file of the pinned CA, a forgery and the attacker's CA vouches for %d certificates (%v), want the pinned CA alone", len(got), err)
	}
	// Nor a certificate of the old CA's own key under a name and term of their choosing, put
	// first as if it were the new CA, with the old CA standing in for its cross-signature.
	longer := *old
	longer.NotAfter = old.NotAfter.Add(10 * 365 * 24 * time.Hour)
	longer.SignatureAlgorithm = x509.UnknownSignatureAlgorithm
	reissued, err := sign(&longer, attacker.Cert, old.PublicKey, attacker.Key)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Vouched(EncodeCerts([]*x509.Certificate{reissued, old, old}), pin(old)); err != nil || len(got) != 0 {
		t.Fatalf("the old CA's key presented as the new CA vouches for %d certificates (%v), want none", len(got), err)
	}

	// Nor can they pass their CA off as the pinned CA's successor without its key.
	posing := *old
	posing.PublicKey = attacker.Key.Public()
	fakeCross, err := crossSign(attacker, &CA{Cert: &posing, Key: attacker.Key}, now)
	if err != nil {
		t.Fatal(err)
	}
	if string(fakeCross.RawIssuer) != string(old.RawSubject) {
		t.Fatal("the forgery does not name the old CA as its issuer")
	}
	if got, err := Vouched(EncodeCerts([]*x509.Certificate{attacker.Cert, fakeCross, old}), pin(old)); err != nil || len(got) != 0 {
		t.Fatalf("a forged cross-signature vouches for %d certificates (%v), want none", len(got), err)
	}
}
