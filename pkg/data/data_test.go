package data

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// testArchive builds an archive the way scripts/build-helpers does; sums, if not empty, replaces
// the checksum list it would write.
func testArchive(t *testing.T, files map[string]string, sums string) []byte {
	t.Helper()
	if sums == "" {
		var b strings.Builder
		for name, content := range files {
			fmt.Fprintf(&b, "%x  %s\n", sha256.Sum256([]byte(content)), name)
		}
		sums = b.String()
	}
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	add := func(name, content string, mode int64) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	add("SHA256SUMS", sums, 0o644)
	for name, content := range files {
		add(name, content, 0o755)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestUnpackOnceAndRepair(t *testing.T) {
	parent := t.TempDir()
	archive := testArchive(t, map[string]string{"bin/runc": "runc binary", "pause": "pause binary"}, "")
	d, err := unpack(archive, parent, "v1")
	if err != nil {
		t.Fatal(err)
	}
	runc := filepath.Join(d.BinDir(), "runc")
	if got, _ := os.ReadFile(runc); string(got) != "runc binary" {
		t.Fatalf("runc: %q", got)
	}
	if info, _ := os.Stat(runc); info.Mode().Perm() != 0o755 {
		t.Errorf("runc mode %v", info.Mode().Perm())
	}
	if !strings.HasPrefix(filepath.Base(d.Root), "v1-") {
		t.Errorf("dir %s does not name the version", d.Root)
	}

	// A second start with an intact copy extracts nothing: the file keeps its inode.
	before, _ := os.Stat(runc)
	if _, err := unpack(archive, parent, "v1"); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(runc)
	if !os.SameFile(before, after) {
		t.Error("an intact copy was unpacked again")
	}

	// A tampered file is detected and the whole copy replaced.
	os.WriteFile(runc, []byte("evil"), 0o755)
	if _, err := unpack(archive, parent, "v1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(runc); string(got) != "runc binary" {
		t.Fatalf("tampered runc not replaced: %q", got)
	}
	entries, _ := os.ReadDir(parent)
	if len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
}

func TestDamagedArchiveIsRefused(t *testing.T) {
	lying := fmt.Sprintf("%x  pause\n", sha256.Sum256([]byte("something else")))
	bad := testArchive(t, map[string]string{"pause": "pause"}, lying)
	parent := t.TempDir()
	if _, err := unpack(bad, parent, "v1"); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("got %v", err)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Errorf("a damaged unpack left %v", entries)
	}
}
