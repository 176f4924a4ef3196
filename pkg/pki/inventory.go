package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Held is one certificate that kone keeps in a file.
type Held struct {
	File            string
	Subject, Issuer string
	NotAfter        time.Time
	IsCA            bool
}

// DaysLeft is the number of whole days until the certificate expires, negative once it has.
func (h Held) DaysLeft(now time.Time) int {
	return int(math.Floor(h.NotAfter.Sub(now).Hours() / 24))
}

// Inventory lists the certificates in the files under dirs that kone and kubelet keep
// certificates in: every .crt, and kubelet's current serving certificate (*-current.pem, the
// link that kubelet moves to each one it obtains). A directory that does not exist holds none.
// A file that is not a certificate is an error that names it. Of each file it lists the first
// certificate, the one the file is for: what follows is a chain to a CA that rotate-ca replaced,
// or in a CA's file that CA, trusted until the next rotate-ca; they end when it ends.
func Inventory(dirs ...string) ([]Held, error) {
	var held []Held
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) && path == dir {
				return filepath.SkipDir
			}
			// A rotate-ca's stage (.rotate-ca) holds CAs that are not in use yet.
			if err == nil && d.IsDir() && path != dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".crt") || strings.HasSuffix(path, "-current.pem")) {
				return err
			}
			certs, err := readCerts(path)
			if err != nil {
				return err
			}
			c := certs[0]
			held = append(held, Held{File: path, Subject: c.Subject.CommonName, Issuer: c.Issuer.CommonName, NotAfter: c.NotAfter, IsCA: c.IsCA})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	slices.SortStableFunc(held, func(a, b Held) int { return strings.Compare(a.File, b.File) })
	return held, nil
}

// readCerts decodes every certificate in the PEM file at path.
func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}
