package pki

import (
	"crypto/x509"
	"os"
	"path/filepath"
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

	// The next rotation drops the CA before: what it signed passes no more.
	if _, err := c.RotateAuthorities(later.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	ensure(t, c, later.Add(time.Hour))
	if err := verifies(t, c.APIServerServing.Cert, server, later.Add(time.Hour), oldServer); err == nil {
		t.Error("two rotations on, the first CA still verifies the serving certificate")
	}
	if err := verifies(t, c.APIServerServing.Cert, server, later.Add(time.Hour), next); err != nil {
		t.Errorf("the CA of the first rotation no longer verifies: %v", err)
	}
	for _, cert := range fileCerts(t, c.ServerCA) {
		if cert.Equal(oldServer) {
			t.Error("server-ca.crt still holds the CA of two rotations ago")
		}
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
	if err := os.Remove(f.ServerCA); err != nil {
		t.Fatal(err)
	}
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

func TestPinnable(t *testing.T) {
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
	pins, err := Pinnable(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(pins) != 2 || !pins[0].Equal(fileCerts(t, c.ServerCA)[0]) || !pins[1].Equal(old) {
		t.Fatalf("pinnable: %d certificates, want the new CA and the old one", len(pins))
	}

	// An attacker who holds no old CA key puts the old CA in a file of their own, with a
	// "cross-signature" made with their own key under the old CA's name.
	attacker, err := newCA("server-ca", now)
	if err != nil {
		t.Fatal(err)
	}
	posing := *old
	posing.PublicKey = attacker.Key.Public()
	forged, err := crossSign(attacker, &CA{Cert: &posing, Key: attacker.Key}, now)
	if err != nil {
		t.Fatal(err)
	}
	if string(forged.RawIssuer) != string(old.RawSubject) {
		t.Fatal("the forgery does not name the old CA as its issuer")
	}
	if pins, err := Pinnable(encodeCerts([]*x509.Certificate{attacker.Cert, forged, old})); err == nil {
		t.Fatalf("a forged cross-signature gave %d pins, want an error", len(pins))
	}

	// Nor may they put their CA after the pinned one: a node would trust it too.
	if pins, err := Pinnable(encodeCerts([]*x509.Certificate{old, attacker.Cert})); err == nil {
		t.Fatalf("a file with the pinned CA and another gives %d pins, want an error", len(pins))
	}
}
