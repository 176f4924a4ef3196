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

// rotate stages a rotation and puts it in place, as rotate-ca does on its server.
func rotate(c *Cluster, at time.Time) error {
	if err := c.StageRotation(at); err != nil {
		return err
	}
	return c.FinishRotation()
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
	if err := rotate(c, later); err != nil {
		t.Fatal(err)
	}
	if issued := ensure(t, c, later); len(issued) != 11 {
		t.Fatalf("after the rotation %d leaves were issued, want all 11: %v", len(issued), issued)
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
	if err := c.StageRotation(later.Add(time.Hour)); err == nil || !strings.Contains(err.Error(), "still trusted") {
		t.Fatalf("a second rotation: %v", err)
	}
	if c.RotationStaged() {
		t.Error("a refused rotation was staged")
	}
	if after, _ := os.ReadFile(c.ServerCA); string(after) != string(before) {
		t.Error("a refused rotation changed server-ca.crt")
	}
}

func TestInterruptedRotationIsFinished(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	if err := c.StageRotation(now); err != nil {
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
	// Its stage is left, marked, as a kill between the two steps leaves it. The next start
	// finishes it, rather than leaving the other CAs as they were.
	if err := WriteFile(filepath.Join(c.Dir, stagedDir, stagedComplete), nil, 0o600); err != nil {
		t.Fatal(err)
	}
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

	// A stage without its mark was killed before the cluster had its CAs: a start leaves it,
	// and the next rotation makes its own.
	c = Layout(t.TempDir())
	ensure(t, c, now)
	before := readCert(t, c.EtcdPeerCA)
	if err := c.StageRotation(now); err != nil {
		t.Fatal(err)
	}
	abandoned := fileCerts(t, filepath.Join(c.Dir, stagedDir, "etcd-peer-ca.crt"))[0]
	if err := c.EnsureAuthorities(now); err != nil {
		t.Fatal(err)
	}
	if !readCert(t, c.EtcdPeerCA).Equal(before) {
		t.Error("a start put in place a stage that was never marked")
	}
	if err := rotate(c, now); err != nil {
		t.Fatal(err)
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
	if err := c.StageRotation(now); err != nil {
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
	if err := c.FinishRotation(); err == nil || !strings.Contains(err.Error(), "replaces another CA") {
		t.Fatalf("a stale stage: %v", err)
	}
	if after, _ := os.ReadFile(c.ServerCA); string(after) != string(before) || c.RotationStaged() {
		t.Error("a stale stage replaced the server CA, or was marked to be finished at the next start")
	}
}

func TestVouched(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	old := readCert(t, c.ServerCA)
	if err := rotate(c, now); err != nil {
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

// joined is a second server of c's cluster: the CAs and keys that a joining server fetches,
// and its own leaves issued from them.
func joined(t *testing.T, c *Cluster) *Cluster {
	t.Helper()
	other := Layout(t.TempDir())
	for key, path := range c.Shared() {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteFile(other.Shared()[key], data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ensure(t, other, now)
	return other
}

// A server takes the rotation that another server of its cluster staged and published, and
// issues its leaves from the new CAs; they chain to the old CA for a party that trusts only
// that one.
func TestTakeRotation(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	other := joined(t, c)
	oldServer := readCert(t, c.ServerCA)

	later := now.Add(time.Hour)
	if err := c.StageRotation(later); err != nil {
		t.Fatal(err)
	}
	published, err := c.Staged()
	if err != nil {
		t.Fatal(err)
	}
	// Read from its place once it is there: a rotate-ca killed while it moved its CAs
	// publishes the same.
	if err := c.FinishRotation(); err != nil {
		t.Fatal(err)
	}
	if took, err := other.TakeRotation(published); err != nil || !took {
		t.Fatalf("TakeRotation: took %t, %v", took, err)
	}
	for key, path := range c.Shared() {
		ours, _ := os.ReadFile(path)
		theirs, _ := os.ReadFile(other.Shared()[key])
		if string(ours) != string(theirs) || string(published[key]) != string(ours) && key != "service.key" {
			t.Errorf("%s differs between the server that rotated and the one that took the rotation", key)
		}
	}
	if issued := ensure(t, other, later); len(issued) != 11 {
		t.Fatalf("after it took the rotation, the server issued %d leaves, want all 11", len(issued))
	}
	next := readCert(t, c.ServerCA)
	for _, root := range []*x509.Certificate{oldServer, next} {
		if err := verifies(t, other.APIServerServing.Cert, x509.ExtKeyUsageServerAuth, later, root); err != nil {
			t.Errorf("the serving certificate of the server that took the rotation does not verify against %s: %v", root.Subject.CommonName, err)
		}
	}
	if took, err := other.TakeRotation(published); err != nil || took {
		t.Errorf("the same rotation again: took %t, %v", took, err)
	}
}

// What a server takes must be a rotation of its own CAs, made with their keys: another
// cluster's CAs, a forged successor, a key that is not the new CA's are refused before any CA
// moves, and nothing is left staged.
func TestTakeRotationRefuses(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	if err := c.StageRotation(now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	published, err := c.Staged()
	if err != nil {
		t.Fatal(err)
	}
	other := joined(t, c)
	oldServer := readCert(t, other.ServerCA)
	attacker, err := newCA("etcd/peer-ca", now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	attackerKey, err := encodeKey(attacker.Key)
	if err != nil {
		t.Fatal(err)
	}
	oldPeer := readCert(t, other.EtcdPeerCA)
	// Only the last CA is bad in each: the others must not move either.
	for what, change := range map[string]func(map[string][]byte){
		"another cluster's CA": func(m map[string][]byte) {
			m["etcd-peer-ca.crt"], m["etcd-peer-ca.key"] = EncodeCert(attacker.Cert), attackerKey
		},
		"a successor not signed by this server's CA": func(m map[string][]byte) {
			m["etcd-peer-ca.crt"], m["etcd-peer-ca.key"] = EncodeCerts([]*x509.Certificate{attacker.Cert, attacker.Cert, oldPeer}), attackerKey
		},
		"a key that is not the new CA's": func(m map[string][]byte) {
			m["etcd-peer-ca.key"] = attackerKey
		},
	} {
		bad := map[string][]byte{}
		for k, v := range published {
			bad[k] = v
		}
		change(bad)
		if took, err := other.TakeRotation(bad); err == nil || took || !strings.Contains(err.Error(), "not a rotate-ca of it") {
			t.Errorf("%s: took %t, %v", what, took, err)
		}
		if !readCert(t, other.ServerCA).Equal(oldServer) || other.RotationStaged() {
			t.Errorf("%s: a CA moved, or a stage was left", what)
		}
	}
	if err := c.DropRotation(); err != nil || c.RotationStaged() {
		t.Errorf("DropRotation: %v, still staged %t", err, c.RotationStaged())
	}
}
