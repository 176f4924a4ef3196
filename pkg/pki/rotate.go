package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// stagedDir holds the CAs of a RotateAuthorities until every one of them is ready to take its
// place, and complete marks it so: a rotation killed before then left nothing in place and is
// made anew; one killed after is finished.
const (
	stagedDir      = ".rotate-ca"
	stagedComplete = "complete"
)

// RotateAuthorities replaces each CA of the layout (not the service-account key) with a new one
// and a cross-signed transition: the new CA's certificate signed by the old CA, which leaves
// issued from then on carry after their own (CA.Chain). A party that trusts only the old CA,
// an agent's kubelet say, still accepts them; one that reads the CA's file trusts both. Each
// CA's file holds, in this order, the new CA, its cross-signed certificate, and the old CA;
// the CA the old one replaced in turn, and its chain, are dropped. The caller re-issues the
// leaves (Renew issues every leaf that its CA did not sign).
//
// It reports whether it finished a rotation that a crash interrupted instead of starting one.
func (c *Cluster) RotateAuthorities(now time.Time) (resumed bool, err error) {
	if exists(filepath.Join(c.Dir, stagedDir, stagedComplete)) {
		return true, c.finishRotation()
	}
	if err := c.stageRotation(now); err != nil {
		return false, err
	}
	return false, c.finishRotation()
}

// stageRotation writes the new CAs beside the PKI and marks them complete.
func (c *Cluster) stageRotation(now time.Time) error {
	stage := filepath.Join(c.Dir, stagedDir)
	if err := os.RemoveAll(stage); err != nil {
		return fmt.Errorf("remove an unfinished rotation: %w", err)
	}
	for _, name := range caNames() {
		old, err := LoadCA(c.Dir, name)
		if err != nil {
			return err
		}
		// Named for the time as the first CA is; a rotation within the second the old one was
		// made takes the next, as a chain needs the two names apart.
		at := now
		for old.Cert.Subject.CommonName == caName(name, at) {
			at = at.Add(time.Second)
		}
		next, err := newCA(name, at)
		if err != nil {
			return err
		}
		cross, err := crossSign(next, old, now)
		if err != nil {
			return fmt.Errorf("certificate authority %s: %w", name, err)
		}
		keyPEM, err := encodeKey(next.Key)
		if err != nil {
			return err
		}
		f := staged(stage, name)
		if err := WriteFile(f.Key, keyPEM, 0o600); err != nil {
			return err
		}
		if err := WriteFile(f.Cert, encodeCerts([]*x509.Certificate{next.Cert, cross, old.Cert}), 0o644); err != nil {
			return err
		}
	}
	if err := WriteFile(filepath.Join(stage, stagedComplete), nil, 0o600); err != nil {
		return err
	}
	return SyncDir(stage)
}

// finishRotation moves the staged CAs into place, each with its key (WritePair), and removes
// the stage once all are.
func (c *Cluster) finishRotation() error {
	stage := filepath.Join(c.Dir, stagedDir)
	for _, name := range caNames() {
		f := staged(stage, name)
		certPEM, err := os.ReadFile(f.Cert)
		if errors.Is(err, os.ErrNotExist) {
			continue // in place already
		}
		if err != nil {
			return fmt.Errorf("finish the rotation of %s: %w", name, err)
		}
		keyPEM, err := os.ReadFile(f.Key)
		if err != nil {
			return fmt.Errorf("finish the rotation of %s: %w", name, err)
		}
		place := File{filepath.Join(c.Dir, name+".crt"), filepath.Join(c.Dir, name+".key")}
		if err := WritePair(place, certPEM, keyPEM); err != nil {
			return fmt.Errorf("finish the rotation of %s: %w", name, err)
		}
		if err := os.Remove(f.Cert); err != nil {
			return err
		}
	}
	return os.RemoveAll(stage)
}

func staged(stage, name string) File {
	flat := strings.ReplaceAll(name, "/", "-")
	return File{filepath.Join(stage, flat+".crt"), filepath.Join(stage, flat+".key")}
}

// crossSign certifies next's key and name with old: a chain from a leaf of next through this
// certificate ends at old.
func crossSign(next, old *CA, now time.Time) (*x509.Certificate, error) {
	notAfter := next.Cert.NotAfter
	if old.Cert.NotAfter.Before(notAfter) {
		notAfter = old.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		RawSubject:            next.Cert.RawSubject,
		SubjectKeyId:          next.Cert.SubjectKeyId,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              next.Cert.KeyUsage,
	}
	return sign(tmpl, old.Cert, next.Key.Public(), old.Key)
}

// crossSigned picks from a CA's file (first the CA, then what RotateAuthorities kept) the CA's
// certificates signed with another CA's key: the chain its leaves carry.
func crossSigned(certs []*x509.Certificate) []*x509.Certificate {
	var chain []*x509.Certificate
	for _, c := range certs[1:] {
		if c.IsCA && publicKeysEqual(c.PublicKey, certs[0].PublicKey) && c.CheckSignatureFrom(c) != nil {
			chain = append(chain, c)
		}
	}
	return chain
}

// Pinnable are the CA certificates of a CA's file that a join token may pin: the first, the CA
// itself, and the CA that cross-signed it, found in the file, so that tokens made before a
// rotate-ca keep joining until the next one. A certificate in the file that claims to be the
// cross-signature but is not signed by that CA's key pins nothing: only the holder of the old
// CA's key can make the new one pass for it. A file with any other certificate is refused: a
// joining node trusts every certificate of it, and a pin must vouch for each.
func Pinnable(caPEM []byte) ([]*x509.Certificate, error) {
	certs, err := ParseCerts(caPEM)
	if err != nil {
		return nil, err
	}
	pins := certs[:1]
	vouched := map[*x509.Certificate]bool{certs[0]: true}
	for _, cross := range crossSigned(certs) {
		for _, old := range certs[1:] {
			if old != cross && old.IsCA && cross.CheckSignatureFrom(old) == nil {
				pins = append(pins, old)
				vouched[cross], vouched[old] = true, true
			}
		}
	}
	if len(vouched) != len(certs) {
		return nil, errors.New("holds certificates besides the CA and the one it replaced, which no pin vouches for")
	}
	return pins, nil
}
