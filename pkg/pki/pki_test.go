package pki

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	now       = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	apiNames  = Names{DNSNames: append(InClusterNames("cluster.local"), "edge-1", "kone.example"), IPs: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.43.0.1"), net.ParseIP("192.0.2.10")}}
	etcdNames = Names{DNSNames: []string{"localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}}
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCert(data)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ensure(t *testing.T, c *Cluster, at time.Time) []string {
	t.Helper()
	issued, err := ensureAll(c, apiNames, etcdNames, etcdNames, at)
	if err != nil {
		t.Fatal(err)
	}
	return issued
}

func TestChainsVerify(t *testing.T) {
	c := Layout(t.TempDir())
	if issued := ensure(t, c, now); len(issued) != 11 {
		t.Fatalf("issued %d leaves, want 11: %v", len(issued), issued)
	}
	server, client := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	for _, tc := range []struct {
		ca    string
		leaf  File
		usage x509.ExtKeyUsage
	}{
		{c.ServerCA, c.APIServerServing, server},
		{c.ClientCA, c.Admin, client},
		{c.ClientCA, c.ControllerManager, client},
		{c.ClientCA, c.Scheduler, client},
		{c.ClientCA, c.APIServerKubelet, client},
		{c.RequestHeaderCA, c.AuthProxy, client},
		{c.EtcdServerCA, c.APIServerEtcd, client},
		{c.EtcdServerCA, c.EtcdServing, server},
		{c.EtcdPeerCA, c.EtcdPeer, server},
		{c.EtcdPeerCA, c.EtcdPeer, client},
		{c.ServerCA, c.MetricsServing, server},
		{c.ClientCA, c.MetricsClient, client},
	} {
		ca, leaf := readCert(t, tc.ca), readCert(t, tc.leaf.Cert)
		roots := x509.NewCertPool()
		roots.AddCert(ca)
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
			t.Errorf("%s does not verify against %s for %v: %v", tc.leaf.Cert, tc.ca, tc.usage, err)
		}
		if got := ca.NotAfter.Sub(now); got < CAValidity-2*time.Hour {
			t.Errorf("%s valid for %s, want 10 years", tc.ca, got)
		}
		if got := leaf.NotAfter.Sub(now); got != LeafValidity {
			t.Errorf("%s valid for %s, want %s", tc.leaf.Cert, got, LeafValidity)
		}
	}
	// A leaf must not verify against another CA.
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, c.ClientCA))
	if _, err := readCert(t, c.APIServerServing.Cert).Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now}); err == nil {
		t.Error("the serving certificate verified against the client CA")
	}
	// The metrics-server's serving certificate, from the CA that every client of the apiserver
	// trusts, serves its Service's name alone: it cannot pass for the apiserver.
	metrics := readCert(t, c.MetricsServing.Cert)
	if err := metrics.VerifyHostname(MetricsServiceName); err != nil {
		t.Error(err)
	}
	for _, name := range []string{"kubernetes.default.svc", "localhost", "127.0.0.1"} {
		if metrics.VerifyHostname(name) == nil {
			t.Errorf("the metrics-server's certificate serves %s", name)
		}
	}
	admin := readCert(t, c.Admin.Cert)
	if admin.Subject.CommonName != "system:admin" || !slices.Equal(admin.Subject.Organization, []string{"system:masters"}) {
		t.Errorf("admin subject %v", admin.Subject)
	}
}

func TestServingSANs(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	cert := readCert(t, c.APIServerServing.Cert)
	for _, name := range []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "edge-1", "kone.example"} {
		if err := cert.VerifyHostname(name); err != nil {
			t.Errorf("serving certificate lacks %s: %v", name, err)
		}
	}
	for _, ip := range []string{"127.0.0.1", "::1", "10.43.0.1", "192.0.2.10"} {
		if err := cert.VerifyHostname(ip); err != nil {
			t.Errorf("serving certificate lacks %s: %v", ip, err)
		}
	}
}

func TestKeysArePrivate(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	err := filepath.Walk(c.Dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		if strings.HasSuffix(path, ".key") && info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", path, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSecondEnsureChangesNothing(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	before, _ := os.ReadFile(c.APIServerServing.Cert)
	if issued := ensure(t, c, now.Add(24*time.Hour)); len(issued) != 0 {
		t.Fatalf("second start re-issued %v", issued)
	}
	after, _ := os.ReadFile(c.APIServerServing.Cert)
	if !bytes.Equal(before, after) {
		t.Fatal("serving certificate changed")
	}
}

func TestRenewalNearExpiryKeepsKeyAndCA(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	caBefore, _ := os.ReadFile(c.ServerCA)
	keyBefore, _ := os.ReadFile(c.Admin.Key)
	old := readCert(t, c.Admin.Cert)

	// 91 days before expiry: nothing to do. 89 days before: every leaf is renewed.
	if issued := ensure(t, c, old.NotAfter.Add(-91*24*time.Hour)); len(issued) != 0 {
		t.Fatalf("renewed too early: %v", issued)
	}
	later := old.NotAfter.Add(-89 * 24 * time.Hour)
	if issued := ensure(t, c, later); len(issued) != 11 {
		t.Fatalf("renewed %d leaves, want 11", len(issued))
	}
	renewed := readCert(t, c.Admin.Cert)
	if !renewed.NotAfter.Equal(later.Add(LeafValidity).Truncate(time.Second)) {
		t.Errorf("renewed certificate expires %s, want %s", renewed.NotAfter, later.Add(LeafValidity))
	}
	if renewed.SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Error("renewal kept the serial number")
	}
	keyAfter, _ := os.ReadFile(c.Admin.Key)
	caAfter, _ := os.ReadFile(c.ServerCA)
	if !bytes.Equal(keyBefore, keyAfter) || !bytes.Equal(caBefore, caAfter) {
		t.Error("renewal changed the key or the CA")
	}
}

func TestNewSANReissuesServingCertOnly(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	more := apiNames
	more.DNSNames = append(slices.Clone(more.DNSNames), "new.example")
	issued, err := ensureAll(c, more, etcdNames, etcdNames, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(issued) != 1 || issued[0] != c.APIServerServing.Cert {
		t.Fatalf("issued %v, want only the serving certificate", issued)
	}
	if err := readCert(t, c.APIServerServing.Cert).VerifyHostname("new.example"); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptFilesAreRefusedAndKept(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt func(c *Cluster) string // returns the file it damaged
		want    string
	}{
		{"corrupt leaf", func(c *Cluster) string { return garble(t, c.Admin.Cert) }, "client-admin.crt"},
		{"corrupt CA", func(c *Cluster) string { return garble(t, c.ServerCA) }, "server-ca.crt"},
		{"corrupt key", func(c *Cluster) string { return garble(t, c.Scheduler.Key) }, "client-scheduler.key"},
		{"corrupt service-account key", func(c *Cluster) string { return garble(t, c.ServiceAccountKey) }, "service.key"},
		{"key of another cert", func(c *Cluster) string {
			other, _ := os.ReadFile(c.Admin.Key)
			os.WriteFile(c.Scheduler.Key, other, 0o600)
			return c.Scheduler.Key
		}, "does not belong"},
		{"CA key missing", func(c *Cluster) string {
			os.Remove(c.ClientCAKey)
			return c.ClientCA
		}, "only one of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Layout(t.TempDir())
			ensure(t, c, now)
			damaged := tc.corrupt(c)
			before, _ := os.ReadFile(damaged)
			_, err := ensureAll(c, apiNames, etcdNames, etcdNames, now)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "restore") {
				t.Errorf("error %q does not say how to fix it", err)
			}
			after, _ := os.ReadFile(damaged)
			if !bytes.Equal(before, after) {
				t.Error("the damaged file was overwritten")
			}
		})
	}
}

func garble(t *testing.T, path string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestKubeconfig(t *testing.T) {
	c := Layout(t.TempDir())
	ensure(t, c, now)
	path := filepath.Join(t.TempDir(), "kone.yaml")
	k := Kubeconfig{Server: "https://127.0.0.1:6443", CAFile: c.ServerCA, Client: c.Admin, Embed: true}
	if err := k.Write(path, 0o640); err != nil {
		t.Fatal(err)
	}
	info, _ := os.Stat(path)
	data, _ := os.ReadFile(path)
	if info.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", info.Mode().Perm())
	}
	for _, want := range []string{"server: https://127.0.0.1:6443", "certificate-authority-data:", "client-key-data:"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("kubeconfig lacks %q", want)
		}
	}
	if strings.Contains(string(data), c.Dir) {
		t.Error("an embedded kubeconfig refers to files")
	}
}

// A pair's write killed at any step leaves, once read again, the old pair or the new one,
// never a key without its certificate or a key of another certificate; and the next Ensure
// succeeds.
func TestPairSurvivesACrashAtEveryStep(t *testing.T) {
	issue := func(t *testing.T, dir, cn string) (cert, key []byte) {
		t.Helper()
		ca, err := EnsureCA(dir, "ca", now)
		if err != nil {
			t.Fatal(err)
		}
		return leafPEM(t, ca, cn)
	}
	// Each step of WritePair, as a crash right after it would leave the files.
	steps := []struct {
		name    string
		crash   func(f File, cert, key []byte)
		wantNew bool
	}{
		{"new key written beside", func(f File, cert, key []byte) { os.WriteFile(next(f.Key), key, 0o600) }, false},
		{"both written beside", func(f File, cert, key []byte) {
			os.WriteFile(next(f.Key), key, 0o600)
			os.WriteFile(next(f.Cert), cert, 0o644)
		}, true},
		{"key moved into place", func(f File, cert, key []byte) {
			os.WriteFile(f.Key, key, 0o600)
			os.WriteFile(next(f.Cert), cert, 0o644)
		}, true},
	}
	for _, first := range []bool{true, false} {
		for _, s := range steps {
			t.Run(fmt.Sprintf("%s, first write %v", s.name, first), func(t *testing.T) {
				dir := t.TempDir()
				f := File{Cert: filepath.Join(dir, "leaf.crt"), Key: filepath.Join(dir, "leaf.key")}
				oldCert, oldKey := issue(t, dir, "old")
				if !first {
					if err := WritePair(f, oldCert, oldKey); err != nil {
						t.Fatal(err)
					}
				}
				newCert, newKey := issue(t, dir, "new")
				s.crash(f, newCert, newKey)
				if err := RecoverPair(f); err != nil {
					t.Fatal(err)
				}
				cert, key := oldCert, oldKey
				if s.wantNew {
					cert, key = newCert, newKey
				}
				gotCert, certErr := os.ReadFile(f.Cert)
				gotKey, keyErr := os.ReadFile(f.Key)
				switch {
				case first && !s.wantNew:
					if certErr == nil || keyErr == nil {
						t.Errorf("an unfinished first write left files: cert %v, key %v", certErr, keyErr)
					}
				case !bytes.Equal(gotCert, cert) || !bytes.Equal(gotKey, key):
					t.Errorf("want the %s pair, have another (cert %v, key %v)", map[bool]string{true: "new", false: "old"}[s.wantNew], certErr, keyErr)
				}
				for _, p := range []string{next(f.Cert), next(f.Key)} {
					if _, err := os.Stat(p); err == nil {
						t.Errorf("%s is left behind", p)
					}
				}
			})
		}
	}
}

// What an earlier kone, which wrote a pair's key first, may have left: a key alone. A CA or a
// leaf is then created anew, where such a start used to fail until files were removed by hand;
// a temporary file of a killed write goes with the next write of its file.
func TestLeftoversOfAnEarlierCrash(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca, err := EnsureCA(dir, "ca", now)
	if err != nil {
		t.Fatalf("a CA key without its certificate: %v", err)
	}
	if aside, _ := filepath.Glob(filepath.Join(dir, "ca.key.orphaned-*")); len(aside) != 1 {
		t.Errorf("the lone CA key was not kept aside: %v", aside)
	}
	f := File{Cert: filepath.Join(dir, "leaf.crt"), Key: filepath.Join(dir, "leaf.key")}
	if err := os.WriteFile(f.Key, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.EnsureLeaf(f, LeafSpec{CommonName: "leaf", Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, now); err != nil {
		t.Fatalf("a leaf key without its certificate: %v", err)
	}
	if _, _, err := load(f); err != nil {
		t.Errorf("the leaf issued anew: %v", err)
	}
	stale := filepath.Join(dir, ".token.tmp12345")
	if err := os.WriteFile(stale, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(filepath.Join(dir, "token"), []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Error("a killed write's temporary file is still there")
	}
}

// A write on top of an earlier one that was committed but not finished finishes that one first,
// and ends with its own pair.
func TestWritePairOverAnUnfinishedOne(t *testing.T) {
	dir := t.TempDir()
	ca, err := EnsureCA(dir, "ca", now)
	if err != nil {
		t.Fatal(err)
	}
	f := File{Cert: filepath.Join(dir, "leaf.crt"), Key: filepath.Join(dir, "leaf.key")}
	c1, k1 := leafPEM(t, ca, "one")
	os.WriteFile(next(f.Key), k1, 0o600)
	os.WriteFile(next(f.Cert), c1, 0o644)
	c2, k2 := leafPEM(t, ca, "two")
	if err := WritePair(f, c2, k2); err != nil {
		t.Fatal(err)
	}
	certs, key, err := load(f)
	if err != nil || certs[0].Subject.CommonName != "two" || key == nil {
		t.Fatalf("after a write over an unfinished one: %v, %v", certs, err)
	}
}

// leafPEM issues a client certificate for cn from ca and returns it and its key as PEM.
func leafPEM(t *testing.T, ca *CA, cn string) (cert, key []byte) {
	t.Helper()
	tmp := t.TempDir()
	f := File{Cert: filepath.Join(tmp, "x.crt"), Key: filepath.Join(tmp, "x.key")}
	if _, err := ca.EnsureLeaf(f, LeafSpec{CommonName: cn, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, now); err != nil {
		t.Fatal(err)
	}
	cert, _ = os.ReadFile(f.Cert)
	key, _ = os.ReadFile(f.Key)
	return cert, key
}

// ensureAll does what a server's start does: the authorities, then the leaves.
func ensureAll(c *Cluster, apiserver, etcd, peer Names, now time.Time) ([]string, error) {
	if err := c.EnsureAuthorities(now); err != nil {
		return nil, err
	}
	return c.Renew(apiserver, etcd, peer, now)
}

// Leaves are renewed from the CAs there are: a CA that is gone is an error, never a new CA.
func TestRenewNeedsTheAuthorities(t *testing.T) {
	c := Layout(t.TempDir())
	names := Names{DNSNames: []string{"localhost"}}
	now := time.Now()
	if _, err := c.Renew(names, names, names, now); err == nil {
		t.Fatal("leaves renewed without CAs")
	}
	if _, err := ensureAll(c, names, names, names, now); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(c.ClientCA); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadDir(c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Renew(names, names, names, now.Add(LeafValidity)); err == nil || !strings.Contains(err.Error(), "client-ca") {
		t.Errorf("a renewal with the client CA gone: %v", err)
	}
	after, _ := os.ReadDir(c.Dir)
	if len(after) != len(before) {
		t.Errorf("a refused renewal changed %s: %d entries, then %d", c.Dir, len(before), len(after))
	}
	if _, err := os.Stat(c.ClientCAKey); err != nil {
		t.Errorf("the client CA's key was moved: %v", err)
	}
}
