package pki

import (
	"crypto/x509"
	"encoding/pem"
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
// A file that is not a certificate is an error that names it.
func Inventory(dirs ...string) ([]Held, error) {
	var held []Held
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) && path == dir {
				return filepath.SkipDir
			}
			if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".crt") || strings.HasSuffix(path, "-current.pem")) {
				return err
			}
			certs, err := readCerts(path)
			if err != nil {
				return err
			}
			for _, c := range certs {
				held = append(held, Held{File: path, Subject: c.Subject.CommonName, Issuer: c.Issuer.CommonName, NotAfter: c.NotAfter, IsCA: c.IsCA})
			}
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
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue // kubelet keeps its key in the same file
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: corrupt certificate: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return certs, nil
}
