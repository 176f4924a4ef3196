package pki

import (
	"bytes"
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
// the caller re-issues the leaves (Renew issues every leaf that its CA did not sign).
//
// It reports whether it finished a rotation that a crash interrupted instead of starting one.
// It refuses a rotation while the CAs of the last one are still trusted: some nodes may hold
// only certificates they signed.
func (c *Cluster) RotateAuthorities(now time.Time) (resumed bool, err error) {
	if c.RotationStaged() {
		return true, c.finishRotation()
	}
	if err := c.CanRotate(); err != nil {
		return false, err
	}
	if err := c.stageRotation(now); err != nil {
		return false, err
	}
	return false, c.finishRotation()
}

// CanRotate refuses a rotation while the CAs of the last one are still trusted.
func (c *Cluster) CanRotate() error {
	for _, name := range caNames() {
		data, err := os.ReadFile(filepath.Join(c.Dir, name+".crt"))
		if err != nil {
			return err
		}
		if certs, err := ParseCerts(data); err == nil && len(certs) > 1 {
			return fmt.Errorf("certificate authority %s was replaced by an earlier rotate-ca, and the one before it is still trusted: "+
				"a second rotation would end that trust while nodes may still hold certificates from it, which kone does not check yet; nothing changed", name)
		}
	}
	return nil
}

// RotationStaged reports whether a rotation is staged, complete, and not yet in place: one that
// a crash interrupted, which the next RotateAuthorities or start finishes.
func (c *Cluster) RotationStaged() bool {
	return exists(filepath.Join(c.Dir, stagedDir, stagedComplete))
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
		if err := WriteFile(f.Cert, EncodeCerts([]*x509.Certificate{next.Cert, cross, old.Cert}), 0o644); err != nil {
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
	type move struct {
		staged, place   File
		certPEM, keyPEM []byte
	}
	// All checked before any moves: a stage from before a restore of the data dir, say, must
	// not replace CAs it was not made for, not even some of them.
	var moves []move
	for _, name := range caNames() {
		f := staged(stage, name)
		certPEM, err := os.ReadFile(f.Cert)
		if errors.Is(err, os.ErrNotExist) {
			continue // in place already
		}
		if err != nil {
			return fmt.Errorf("finish the rotation of %s: %w", name, err)
		}
		place := File{filepath.Join(c.Dir, name+".crt"), filepath.Join(c.Dir, name+".key")}
		certs, err := ParseCerts(certPEM)
		if err != nil || len(certs) != 3 {
			return fmt.Errorf("finish the rotation of %s: %s is not a staged CA; remove %s and run rotate-ca again", name, f.Cert, stage)
		}
		current, err := LoadCA(c.Dir, name)
		if err != nil {
			return err
		}
		if current.Cert.Equal(certs[0]) {
			continue // in place, killed before its stage was removed
		}
		if !current.Cert.Equal(certs[2]) {
			return fmt.Errorf("finish the rotation of %s: the rotation staged in %s replaces another CA than %s; remove %s and run rotate-ca again", name, stage, place.Cert, stage)
		}
		keyPEM, err := os.ReadFile(f.Key)
		if err != nil {
			return fmt.Errorf("finish the rotation of %s: %w", name, err)
		}
		moves = append(moves, move{f, place, certPEM, keyPEM})
	}
	for _, m := range moves {
		if err := WritePair(m.place, m.certPEM, m.keyPEM); err != nil {
			return fmt.Errorf("put %s in place: %w; the next rotate-ca or start of kone finishes the rotation", m.place.Cert, err)
		}
		// Gone once in place: a crash after this finds the CA there, not its stage.
		if err := os.Remove(m.staged.Cert); err != nil {
			return fmt.Errorf("finish the rotation of %s: %w", m.place.Cert, err)
		}
	}
	// Unmarked first: a crash while the stage is removed leaves one that is never taken up.
	if err := os.Remove(filepath.Join(stage, stagedComplete)); err != nil {
		return err
	}
	if err := SyncDir(stage); err != nil {
		return err
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

// Vouched are the certificates of a CA's file that a join token's pin vouches for, the first
// first: the pinned CA when it is the file's first, the CA the file is for; or, when the pin
// names the CA that a rotate-ca replaced, that CA, its cross-signature of the first, and the
// first, so that tokens made before a rotate-ca keep joining. None when the pin vouches for the
// first CA neither way. Trust flows from the pinned certificate only: nothing else in the
// file, which its sender chose, is taken on its own word.
func Vouched(caPEM []byte, pinned func(*x509.Certificate) bool) ([]*x509.Certificate, error) {
	certs, err := ParseCerts(caPEM)
	if err != nil {
		return nil, err
	}
	first := certs[0]
	if pinned(first) {
		return certs[:1], nil
	}
	// The new CA is its own, made with its key: a certificate of the old CA's key under another
	// name or term would extend the old CA's trust beyond what it signed.
	if !first.IsCA || first.CheckSignatureFrom(first) != nil {
		return nil, nil
	}
	for _, old := range certs[1:] {
		if !pinned(old) || !old.IsCA || publicKeysEqual(old.PublicKey, first.PublicKey) {
			continue
		}
		for _, cross := range certs[1:] {
			if cross.IsCA && bytes.Equal(cross.RawSubject, first.RawSubject) && publicKeysEqual(cross.PublicKey, first.PublicKey) &&
				cross.CheckSignatureFrom(old) == nil {
				return []*x509.Certificate{first, cross, old}, nil
			}
		}
	}
	return nil, nil
}
