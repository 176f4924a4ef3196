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

// stagedDir holds the CAs of a rotation (StageRotation, TakeRotation) until they take their
// places, and complete marks it as one to finish (FinishRotation): a rotation killed before
// then left nothing in place and is made anew; one killed after is finished.
const (
	stagedDir      = ".rotate-ca"
	stagedComplete = "complete"
)

// StageRotation makes a new CA for each of the layout (not the service-account key), with a
// cross-signed transition: the new CA's certificate signed by the old CA, which leaves issued
// from then on carry after their own (CA.Chain). A party that trusts only the old CA, an
// agent's kubelet say, still accepts them; one that reads the CA's file trusts both. Each
// CA's file will hold, in this order, the new CA, its cross-signed certificate, and the old
// CA. They are staged beside the PKI, and nothing is in place until FinishRotation puts them
// there; the caller then re-issues the leaves (Renew issues every leaf that its CA did not
// sign).
//
// It refuses a rotation while the CAs of the last one are still trusted: some nodes may hold
// only certificates they signed.
func (c *Cluster) StageRotation(now time.Time) error {
	if err := c.canRotate(); err != nil {
		return err
	}
	pairs := map[string]pemPair{}
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
		pairs[name] = pemPair{EncodeCerts([]*x509.Certificate{next.Cert, cross, old.Cert}), keyPEM}
	}
	return c.writeStage(pairs)
}

// canRotate refuses a rotation while the CAs of the last one are still trusted.
func (c *Cluster) canRotate() error {
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

// RotationStaged reports whether a rotation is marked complete and not yet all in place: one
// that a crash interrupted, which FinishRotation or the next start finishes.
func (c *Cluster) RotationStaged() bool {
	return exists(filepath.Join(c.Dir, stagedDir, stagedComplete))
}

// pemPair is a CA's certificate file and its key.
type pemPair struct{ cert, key []byte }

// writeStage stages pairs (by CA name) in place of any stage there was, unmarked: no start
// puts them in place until FinishRotation marks them.
func (c *Cluster) writeStage(pairs map[string]pemPair) error {
	stage := filepath.Join(c.Dir, stagedDir)
	if err := c.DropRotation(); err != nil {
		return err
	}
	for name, p := range pairs {
		f := staged(stage, name)
		if err := WriteFile(f.Key, p.key, 0o600); err != nil {
			return err
		}
		if err := WriteFile(f.Cert, p.cert, 0o644); err != nil {
			return err
		}
	}
	return SyncDir(stage)
}

// DropRotation removes a staged rotation, which then never takes place: one that the cluster
// refused, as another server's came first.
func (c *Cluster) DropRotation() error {
	if err := os.RemoveAll(filepath.Join(c.Dir, stagedDir)); err != nil {
		return fmt.Errorf("remove the staged rotation: %w", err)
	}
	return nil
}

// Staged are the CAs of the staged rotation with their keys, by the names Shared gives them:
// what the cluster's other servers take (TakeRotation); nil when none is staged. A CA that
// FinishRotation put in place already is read from its place.
func (c *Cluster) Staged() (map[string][]byte, error) {
	stage := filepath.Join(c.Dir, stagedDir)
	if !exists(stage) {
		return nil, nil
	}
	files := map[string][]byte{}
	for _, name := range caNames() {
		f := staged(stage, name)
		if !exists(f.Cert) {
			f = File{filepath.Join(c.Dir, name+".crt"), filepath.Join(c.Dir, name+".key")}
		}
		for ext, path := range map[string]string{".crt": f.Cert, ".key": f.Key} {
			data, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("the rotation of %s: %w", name, err)
			}
			files[flat(name)+ext] = data
		}
	}
	return files, nil
}

// TakeRotation puts in place the CAs that a rotation on another server of the cluster made,
// given by the names Shared gives them, and reports whether it replaced any. Each must be this
// server's CA or, with its key, the successor that StageRotation makes of it: the new CA, its
// certificate signed by this server's, and this server's. Anything else (CAs left from before
// a restore, another cluster's) is refused before any CA moves. This keeps the servers'
// CAs one lineage; it is no defence against whoever may write the server data, who holds the
// CAs' keys already.
func (c *Cluster) TakeRotation(shared map[string][]byte) (bool, error) {
	pairs := map[string]pemPair{}
	for _, name := range caNames() {
		theirs, theirKey := shared[flat(name)+".crt"], shared[flat(name)+".key"]
		place := filepath.Join(c.Dir, name+".crt")
		ours, err := os.ReadFile(place)
		if err != nil {
			return false, err
		}
		// None: server data from a kone before this one, which its servers complete as they start.
		if len(theirs) == 0 || bytes.Equal(ours, theirs) {
			continue
		}
		current, err := LoadCA(c.Dir, name)
		if err != nil {
			return false, err
		}
		refuse := func(why string) (bool, error) {
			return false, fmt.Errorf("certificate authority %s: the cluster's is not this server's, and not a rotate-ca of it (%s); this server keeps its own. "+
				"If its CAs were replaced by hand, put back the cluster's: stop kone here, move its data dir aside, and join the cluster again with the server token", name, why)
		}
		certs, err := ParseCerts(theirs)
		if err != nil {
			return refuse(err.Error())
		}
		if !succeeds(certs, current.Cert) {
			return refuse("it does not end with this server's CA")
		}
		if vouched, err := Vouched(theirs, current.Cert.Equal); err != nil || len(vouched) != 3 {
			return refuse("this server's CA did not sign it")
		}
		key, err := parseKey(theirKey)
		if err != nil || !publicKeysEqual(key.Public(), certs[0].PublicKey) {
			return refuse("its key is not the new CA's")
		}
		pairs[name] = pemPair{theirs, theirKey}
	}
	if len(pairs) == 0 {
		return false, nil
	}
	if err := c.writeStage(pairs); err != nil {
		return false, err
	}
	return true, c.FinishRotation()
}

// FinishRotation marks the staged rotation complete and moves its CAs into place, each with
// its key (WritePair), and removes the stage once all are. Marked, a rotation that a crash
// interrupts is finished by the next start; the caller marks it only once the cluster has its
// CAs (rotate-ca gives them to the other servers first), so that a start never puts in place
// CAs that the cluster does not know.
func (c *Cluster) FinishRotation() error {
	stage := filepath.Join(c.Dir, stagedDir)
	if !exists(stage) {
		return errors.New("no rotation of the certificate authorities is staged")
	}
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
		if !succeeds(certs, current.Cert) {
			return fmt.Errorf("finish the rotation of %s: the rotation staged in %s replaces another CA than %s; remove %s and run rotate-ca again", name, stage, place.Cert, stage)
		}
		keyPEM, err := os.ReadFile(f.Key)
		if err != nil {
			return fmt.Errorf("finish the rotation of %s: %w", name, err)
		}
		moves = append(moves, move{f, place, certPEM, keyPEM})
	}
	mark := filepath.Join(stage, stagedComplete)
	if err := WriteFile(mark, nil, 0o600); err != nil {
		return err
	}
	if err := SyncDir(stage); err != nil {
		return err
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
	if err := os.Remove(mark); err != nil {
		return err
	}
	if err := SyncDir(stage); err != nil {
		return err
	}
	return os.RemoveAll(stage)
}

// succeeds reports whether certs are a CA's file as a rotation of current leaves it: the new
// CA, its cross-signature, and current.
func succeeds(certs []*x509.Certificate, current *x509.Certificate) bool {
	return len(certs) == 3 && certs[2].Equal(current)
}

func staged(stage, name string) File {
	return File{filepath.Join(stage, flat(name)+".crt"), filepath.Join(stage, flat(name)+".key")}
}

// flat is a CA's name without slashes, as Shared and the stage name its files.
func flat(name string) string { return strings.ReplaceAll(name, "/", "-") }

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

// crossSigned picks from a CA's file (first the CA, then what a rotation kept) the CA's
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
