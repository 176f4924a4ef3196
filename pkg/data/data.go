// Package data carries the programs kone cannot link into itself (runc, the containerd shim, the
// CNI plugins, the pause program) and puts them on disk. scripts/build-helpers builds them, for
// each architecture, into assets/<arch>/helpers.tar.zst; a binary embeds its own architecture's
// archive (assets_<arch>.go), and Unpack writes it once into
// <data-dir>/data/<version>-<hash>/ and checks every file's SHA-256 at every start, so a
// damaged or tampered file is replaced rather than run.
package data

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// assets is set by assets_<arch>.go; archiveName is within it.
const archiveName = "helpers.tar.zst"

// Dir is an unpacked set of helpers.
type Dir struct{ Root string }

// BinDir holds runc, the shim and the CNI plugins.
func (d Dir) BinDir() string { return filepath.Join(d.Root, "bin") }

// Pause is the pause program, for the sandbox image.
func (d Dir) Pause() string { return filepath.Join(d.Root, "pause") }

// Unpack makes sure the helpers this binary carries are on disk under dataDir, and returns where.
func Unpack(dataDir, version string) (Dir, error) {
	archive, err := fs.ReadFile(assets, archiveName)
	if errors.Is(err, fs.ErrNotExist) {
		return Dir{}, errors.New("this kone binary was built without its node programs (runc, CNI plugins, pause); build it with scripts/build")
	}
	if err != nil {
		return Dir{}, err
	}
	return unpack(archive, filepath.Join(dataDir, "data"), version)
}

func unpack(archive []byte, parent, version string) (Dir, error) {
	sum := sha256.Sum256(archive)
	d := Dir{Root: filepath.Join(parent, version+"-"+hex.EncodeToString(sum[:6]))}
	if err := verify(d.Root); err == nil {
		return d, nil
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return Dir{}, fmt.Errorf("unpack node programs: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, ".unpack-")
	if err != nil {
		return Dir{}, fmt.Errorf("unpack node programs: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := extract(archive, tmp); err != nil {
		return Dir{}, fmt.Errorf("unpack node programs: %w", err)
	}
	if err := verify(tmp); err != nil {
		return Dir{}, fmt.Errorf("unpacked node programs are damaged: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Dir{}, err
	}
	// Replace a damaged copy as a whole: a rename cannot leave half of it behind.
	if err := os.RemoveAll(d.Root); err != nil {
		return Dir{}, fmt.Errorf("remove damaged node programs: %w", err)
	}
	if err := os.Rename(tmp, d.Root); err != nil {
		return Dir{}, fmt.Errorf("unpack node programs: %w", err)
	}
	return d, nil
}

func extract(archive []byte, dir string) error {
	zr, err := zstd.NewReader(bytes.NewReader(archive))
	if err != nil {
		return err
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.Clean("/"+hdr.Name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(hdr.Mode)&0o755)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
	}
}

// verify checks every file listed in dir/SHA256SUMS.
func verify(dir string) error {
	f, err := os.Open(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	n := 0
	for s.Scan() {
		want, name, ok := strings.Cut(s.Text(), "  ")
		if !ok {
			return fmt.Errorf("SHA256SUMS: bad line %q", s.Text())
		}
		got, err := fileSHA256(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("%s: sha256 %s, want %s", name, got, want)
		}
		n++
	}
	if err := s.Err(); err != nil {
		return err
	}
	if n == 0 {
		return errors.New("SHA256SUMS lists nothing")
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
