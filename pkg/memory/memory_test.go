package memory

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func rssFileKiB(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

func TestTrimFileMappingsReleasesCodePages(t *testing.T) {
	if err := RandomAccessExecutable(); err != nil {
		t.Fatal(err)
	}
	before := rssFileKiB(t)
	if err := TrimFileMappings(); err != nil {
		t.Fatal(err)
	}
	after := rssFileKiB(t)
	t.Logf("file-backed RSS %d KiB -> %d KiB", before, after)
	if after >= before {
		t.Fatalf("trimming released nothing: %d KiB -> %d KiB", before, after)
	}
	// The program's variables survive: only read-only mappings are touched.
	if trimCanary != "still here" || len(trimTable) != 3 || trimTable[2] != 30 {
		t.Fatalf("trimming changed the program's variables: %q %v", trimCanary, trimTable)
	}
}

// TestTrimFileMappingsReleasesSharedFiles maps a file the way bbolt maps its database (shared,
// read-only), reads all of it, and checks that trimming unmaps it and that it still reads the same.
func TestTrimFileMappingsReleasesSharedFiles(t *testing.T) {
	const size = 8 << 20
	path := filepath.Join(t.TempDir(), "db")
	want := bytes.Repeat([]byte("kone"), size/4)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(data)
	if !bytes.Equal(data, want) {
		t.Fatal("the mapping does not read as the file")
	}
	before := rssFileKiB(t)
	if err := TrimFileMappings(); err != nil {
		t.Fatal(err)
	}
	after := rssFileKiB(t)
	t.Logf("file-backed RSS %d KiB -> %d KiB", before, after)
	if before-after < size/1024/2 {
		t.Fatalf("the shared mapping was not released: %d KiB -> %d KiB", before, after)
	}
	if !bytes.Equal(data, want) {
		t.Fatal("after trimming the mapping no longer reads as the file")
	}
}

var (
	trimCanary = "initial"
	trimTable  = []int{1, 2, 3}
)

func init() {
	trimCanary = "still here"
	trimTable[2] = 30
}
