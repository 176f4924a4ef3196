package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Lifetimes of what Ensure issues.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 365 * 24 * time.Hour
	RenewBefore  = 90 * 24 * time.Hour
)

// CA is a certificate authority whose key is at hand for signing.
type CA struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	CertFile string
	// Chain is Cert cross-signed by the CA it replaced (StageRotation), which every leaf
	// carries after its own certificate: a party that still trusts only the old CA accepts
	// the leaf through it.
	Chain []*x509.Certificate
}

// LeafSpec describes one certificate to issue.
type LeafSpec struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []net.IP
	Usages       []x509.ExtKeyUsage
}

// File is a certificate and its key on disk.
type File struct{ Cert, Key string }

// EnsureCA loads the CA in dir/name.crt and dir/name.key, or creates it when neither exists.
func EnsureCA(dir, name string, now time.Time) (*CA, error) {
	f := File{filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")}
	if err := RecoverPair(f); err != nil {
		return nil, err
	}
	certOK, keyOK := exists(f.Cert), exists(f.Key)
	// A key without its certificate is most likely a creation that an earlier kone, which wrote
	// the key first, did not finish; but it may be a CA whose certificate was lost. It is kept
	// aside, never overwritten, and a new CA is made.
	if keyOK && !certOK {
		aside := fmt.Sprintf("%s.orphaned-%d", f.Key, now.Unix())
		if err := os.Rename(f.Key, aside); err != nil {
			return nil, fmt.Errorf("certificate authority %s: move its key without a certificate aside: %w", name, err)
		}
		keyOK = false
	}
	if certOK && !keyOK {
		return nil, fmt.Errorf("certificate authority %s: only one of %s and %s exists; restore the other from a backup, or remove both to create a new CA (every certificate it signed must then be re-issued)", name, f.Cert, f.Key)
	}
	if certOK {
		return loadCA(f)
	}
	ca, err := newCA(name, now)
	if err != nil {
		return nil, err
	}
	if err := write(f, ca.Cert, ca.Key); err != nil {
		return nil, err
	}
	ca.CertFile = f.Cert
	return ca, nil
}

func caName(name string, now time.Time) string { return fmt.Sprintf("kone-%s@%d", name, now.Unix()) }

// newCA makes a self-signed CA named for name and the time.
func newCA(name string, now time.Time) (*CA, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: caName(name, now)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	cert, err := sign(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA %s: %w", name, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA loads the CA in dir/name.crt and dir/name.key, which must both exist.
func LoadCA(dir, name string) (*CA, error) {
	f := File{filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")}
	if err := RecoverPair(f); err != nil {
		return nil, err
	}
	if !exists(f.Cert) || !exists(f.Key) {
		return nil, fmt.Errorf("certificate authority %s: %s or %s is missing; kone makes a CA only as it starts, and one made now would not be the cluster's: "+
			"restore both from a backup, or from a server of the cluster", name, f.Cert, f.Key)
	}
	return loadCA(f)
}

func loadCA(f File) (*CA, error) {
	certs, key, err := load(f)
	if err != nil {
		return nil, err
	}
	if !certs[0].IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate; restore it from a backup", f.Cert)
	}
	return &CA{Cert: certs[0], Key: key, CertFile: f.Cert, Chain: crossSigned(certs)}, nil
}

// EnsureLeaf makes sure f holds a certificate for spec signed by ca that is valid for at least
// RenewBefore. It reports whether it issued a new one. An existing key is kept on renewal.
func (ca *CA) EnsureLeaf(f File, spec LeafSpec, now time.Time) (bool, error) {
	if err := RecoverPair(f); err != nil {
		return false, err
	}
	var key crypto.Signer
	// A key without its certificate is an issue that an earlier kone did not finish.
	if exists(f.Cert) {
		certs, k, err := load(f)
		if err != nil {
			return false, err
		}
		if cert := certs[0]; cert.CheckSignatureFrom(ca.Cert) == nil && now.Add(RenewBefore).Before(cert.NotAfter) && covers(cert, spec) {
			return false, nil
		}
		key = k
	} else {
		var err error
		if key, err = newKey(); err != nil {
			return false, err
		}
	}
	return true, ca.issue(f, spec, key, now)
}

// RotateLeaf replaces f with a new certificate for spec signed by ca, with a new key
// (WritePair). A process that reads the pair while it is replaced may find the new key with
// the old certificate for an instant, and fails to load it; kone's components keep the pair
// they had and read it again.
func (ca *CA) RotateLeaf(f File, spec LeafSpec, now time.Time) error {
	if err := RecoverPair(f); err != nil {
		return err
	}
	key, err := newKey()
	if err != nil {
		return err
	}
	return ca.issue(f, spec, key, now)
}

func (ca *CA) issue(f File, spec LeafSpec, key crypto.Signer, now time.Time) error {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: spec.CommonName, Organization: spec.Organization},
		DNSNames:              spec.DNSNames,
		IPAddresses:           spec.IPs,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(LeafValidity),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           spec.Usages,
	}
	cert, err := sign(tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return fmt.Errorf("issue %s: %w", f.Cert, err)
	}
	return write(f, cert, key, ca.Chain...)
}

// EnsureKey makes sure path holds a private key, for signing service-account tokens.
func EnsureKey(path string) error {
	if exists(path) {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if _, err := parseKey(data); err != nil {
			return fmt.Errorf("%s: %w; restore it from a backup (a new key invalidates every service-account token)", path, err)
		}
		return nil
	}
	key, err := newKey()
	if err != nil {
		return err
	}
	// SEC1, not PKCS#8: kube-apiserver's --service-account-key-file reader takes only SEC1 EC keys.
	der, err := x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	if err != nil {
		return err
	}
	return WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// covers reports whether cert already carries spec's identity and every name spec asks for.
func covers(cert *x509.Certificate, spec LeafSpec) bool {
	if cert.Subject.CommonName != spec.CommonName || !slices.Equal(cert.Subject.Organization, spec.Organization) {
		return false
	}
	for _, d := range spec.DNSNames {
		if !slices.Contains(cert.DNSNames, d) {
			return false
		}
	}
	for _, ip := range spec.IPs {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

func newKey() (crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// load reads a certificate with what its file holds after it (a leaf's chain, what a rotated
// CA keeps), and its key, and checks that the key is the first certificate's.
func load(f File) ([]*x509.Certificate, crypto.Signer, error) {
	fix := "restore it from a backup, or remove it together with its key to have kone issue a new one"
	certPEM, err := os.ReadFile(f.Cert)
	if err != nil {
		return nil, nil, fmt.Errorf("read certificate: %w; %s", err, fix)
	}
	certs, err := ParseCerts(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w; %s", f.Cert, err, fix)
	}
	keyPEM, err := os.ReadFile(f.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("read key: %w; %s", err, fix)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w; %s", f.Key, err, fix)
	}
	if !publicKeysEqual(certs[0].PublicKey, key.Public()) {
		return nil, nil, fmt.Errorf("%s does not belong to %s; %s", f.Key, f.Cert, fix)
	}
	return certs, key, nil
}

// ParseCerts decodes every PEM certificate in data, in order; it skips other PEM blocks (kubelet
// keeps its key in the file of its certificate).
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("corrupt certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("holds no PEM certificate")
	}
	return certs, nil
}

// ParseCert decodes the first PEM certificate in data.
func ParseCert(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("corrupt certificate: %w", err)
	}
	return cert, nil
}

func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("not a PEM private key")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q, expected a private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("corrupt private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("unsupported private key type")
	}
	return signer, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}

// EncodeCert returns cert as PEM.
func EncodeCert(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// write writes cert, followed by the certificates of chain, and its key.
func write(f File, cert *x509.Certificate, key crypto.Signer, chain ...*x509.Certificate) error {
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	return WritePair(f, EncodeCerts(append([]*x509.Certificate{cert}, chain...)), keyPEM)
}

// EncodeCerts returns certs as PEM, in order.
func EncodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, EncodeCert(c)...)
	}
	return out
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// next is where WritePair puts a file of the new pair before it takes its place.
func next(path string) string { return path + ".next" }

// WritePair replaces a certificate and its key together: a crash at any moment leaves the old
// pair, the new pair, or (on a first write) none, once RecoverPair has run, never a key without
// its certificate. Both are first written beside their places; the certificate's file there
// is the commit point, after which the key and then the certificate are moved into place.
func WritePair(f File, certPEM, keyPEM []byte) error {
	// An earlier write's key beside its place must not be paired with this write's certificate.
	if err := RecoverPair(f); err != nil {
		return err
	}
	if err := WriteFile(next(f.Key), keyPEM, 0o600); err != nil {
		return err
	}
	if err := SyncDir(filepath.Dir(f.Key)); err != nil {
		return err
	}
	if err := WriteFile(next(f.Cert), certPEM, 0o644); err != nil {
		return err
	}
	if err := SyncDir(filepath.Dir(f.Cert)); err != nil {
		return err
	}
	return RecoverPair(f)
}

// RecoverPair finishes a WritePair that a crash interrupted after its commit point, or undoes
// one interrupted before it. Every reader of a pair calls it first.
func RecoverPair(f File) error {
	if !exists(next(f.Cert)) {
		if err := os.Remove(next(f.Key)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove an unfinished key: %w", err)
		}
		return nil
	}
	if exists(next(f.Key)) {
		if err := os.Rename(next(f.Key), f.Key); err != nil {
			return fmt.Errorf("write %s: %w", f.Key, err)
		}
	}
	if err := os.Rename(next(f.Cert), f.Cert); err != nil {
		return fmt.Errorf("write %s: %w", f.Cert, err)
	}
	return SyncDir(filepath.Dir(f.Cert))
}

// SyncDir makes the renames and links in dir survive a power cut.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// WriteFile replaces path atomically: a crash leaves either the old file or the new one. kone
// writes every file that holds a secret or state this way.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create directory for %s: %w", path, err)
	}
	// Temporary files of an earlier write of path that was killed before its rename.
	if entries, err := os.ReadDir(filepath.Dir(path)); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "."+filepath.Base(path)+".tmp") {
				_ = os.Remove(filepath.Join(filepath.Dir(path), e.Name()))
			}
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err = tmp.Chmod(mode); err == nil {
		if _, err = tmp.Write(data); err == nil {
			err = tmp.Sync()
		}
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// CopyAside copies the files at paths that exist, all under root, to the same places under
// aside, and says how many it copied. Copied, not moved: a running kone reads them until new
// ones replace them.
func CopyAside(root, aside string, paths ...string) (int, error) {
	copied := 0
	for _, p := range paths {
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return copied, err
		}
		data, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return copied, err
		}
		if err := WriteFile(filepath.Join(aside, rel), data, 0o600); err != nil {
			return copied, err
		}
		copied++
	}
	return copied, nil
}

// WriteIfChanged writes data to path (WriteFile) unless it holds it already: flash wears with
// each write.
func WriteIfChanged(path string, data []byte, mode os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	return WriteFile(path, data, mode)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// StrongCipherSuites are the TLS 1.2 cipher suites kone's ports accept (none serves TLS older
// than 1.2): forward secrecy
// (ECDHE) and authenticated encryption (GCM, ChaCha20-Poly1305) only. TLS 1.3's own suites are
// all strong and need no list.
func StrongCipherSuites() []string {
	var names []string
	for _, c := range tls.CipherSuites() {
		if strings.HasPrefix(c.Name, "TLS_ECDHE_") && (strings.Contains(c.Name, "_GCM_") || strings.Contains(c.Name, "CHACHA20_POLY1305")) &&
			slices.Contains(c.SupportedVersions, tls.VersionTLS12) {
			names = append(names, c.Name)
		}
	}
	return names
}
