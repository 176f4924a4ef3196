package snapshot

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
)

var gzipMagic = []byte{0x1f, 0x8b}

// Unpack writes the etcd database of the snapshot file src to dst, a file it creates, and
// checks it whole first: a kone snapshot (gzip-compressed) or etcd's own, as `etcdctl snapshot
// save` writes it, each ending with etcd's sha256 of the rest. A truncated or corrupt file is
// an error that says so, and dst is then removed. It returns the database's size.
func Unpack(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, fmt.Errorf("snapshot: %w", err)
	}
	defer in.Close()
	buffered := bufio.NewReader(in)
	var r io.Reader = buffered
	if head, _ := buffered.Peek(len(gzipMagic)); bytes.Equal(head, gzipMagic) {
		gz, err := gzip.NewReader(buffered)
		if err != nil {
			return 0, corrupt(src, err)
		}
		defer gz.Close()
		r = gz
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, fmt.Errorf("unpack the snapshot: %w", err)
	}
	n, err := unpackTo(out, r)
	if cerr := out.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("unpack the snapshot: %w", cerr)
	}
	var bad badSnapshot
	if errors.As(err, &bad) {
		err = corrupt(src, bad.err)
	}
	if err != nil {
		os.Remove(dst)
		return 0, err
	}
	return n, nil
}

// badSnapshot is a fault of the snapshot file, not of the disk it is unpacked to.
type badSnapshot struct{ err error }

func (b badSnapshot) Error() string { return b.err.Error() }

func unpackTo(out *os.File, r io.Reader) (int64, error) {
	check := &checksum{sum: sha256.New()}
	n, err := io.Copy(io.MultiWriter(out, check), readErrors{r})
	if err != nil {
		var bad badSnapshot
		if errors.As(err, &bad) {
			return 0, bad
		}
		return 0, fmt.Errorf("unpack the snapshot: %w", err)
	}
	if err := check.verify(n); err != nil {
		return 0, badSnapshot{err}
	}
	if err := out.Sync(); err != nil {
		return 0, fmt.Errorf("unpack the snapshot: %w", err)
	}
	return n, nil
}

// readErrors marks what fails while reading as the snapshot's fault (a truncated or damaged
// gzip stream), apart from what fails while writing.
type readErrors struct{ r io.Reader }

func (r readErrors) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = badSnapshot{err}
	}
	return n, err
}

func corrupt(src string, err error) error {
	return fmt.Errorf("snapshot %s is truncated or corrupt (%v): nothing was restored; restore another snapshot (`kone etcd-snapshot ls` lists them)", src, err)
}
