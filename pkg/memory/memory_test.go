package memory

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

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
	path, want := testFile(t)
	data := mapShared(t, path)
	if !bytes.Equal(data, want) {
		t.Fatal("the mapping does not read as the file")
	}
	before := rssFileKiB(t)
	if err := TrimFileMappings(); err != nil {
		t.Fatal(err)
	}
	after := rssFileKiB(t)
	t.Logf("file-backed RSS %d KiB -> %d KiB", before, after)
	if before-after < testFileSize/1024/2 {
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

// TestDropCacheEvictsUnmappedPages reads a file into the page cache and checks that DropCache
// takes its pages out again, without changing what the file reads.
func TestDropCacheEvictsUnmappedPages(t *testing.T) {
	path, want := testFile(t)
	// Written back first, as an installed binary is: the kernel drops only clean pages.
	syncFile(t, path)
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, want) {
		t.Fatal("the file does not read back")
	}
	before := cachedPages(t, path)
	if err := DropCache(path); err != nil {
		t.Fatal(err)
	}
	after := cachedPages(t, path)
	t.Logf("cached pages %d -> %d", before, after)
	if before < len(want)/os.Getpagesize()/2 || after > before/10 {
		t.Fatalf("cached pages %d -> %d: want most cached before and few after", before, after)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, want) {
		t.Fatal("the file reads differently after its pages were dropped")
	}
}

// syncFile writes the file's dirty pages to disk.
func syncFile(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal("cannot write the file back: ", err)
	}
}

// cachedPages counts the file's pages in the page cache.
func cachedPages(t *testing.T, path string) int {
	t.Helper()
	// Mapped but never touched: mincore reports the page cache, and maps nothing in.
	m := mapShared(t, path)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

const testFileSize = 8 << 20

// testFile writes testFileSize bytes of a known pattern to a new file; it returns its path and
// contents.
func testFile(t *testing.T) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "file")
	data := bytes.Repeat([]byte("kone"), testFileSize/4)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// mapShared maps the file at path shared and read-only, the way bbolt maps its database, until
// the test ends.
func mapShared(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(m) })
	return m
}

// TestDropNewDropsOncePerFile checks that a file is dropped from the page cache the first time
// only, and again once it is rewritten.
func TestDropNewDropsOncePerFile(t *testing.T) {
	// Not written back: a binary installed moments ago is still dirty in the page cache.
	path, want := testFile(t)
	marker := filepath.Join(t.TempDir(), "run", "dropped")
	drop := func(wantDropped bool) {
		t.Helper()
		if _, err := os.ReadFile(path); err != nil {
			t.Fatal(err)
		}
		before := cachedPages(t, path)
		dropped, err := dropNew(path, marker)
		if err != nil {
			t.Fatal(err)
		}
		after := cachedPages(t, path)
		t.Logf("dropped=%v, cached pages %d -> %d", dropped, before, after)
		if dropped != wantDropped {
			t.Fatalf("dropped=%v, want %v", dropped, wantDropped)
		}
		if wantDropped && after > before/10 || !wantDropped && after < before {
			t.Fatalf("cached pages %d -> %d with dropped=%v", before, after, dropped)
		}
	}
	drop(true)
	drop(false)
	drop(false)
	// Rewritten in place: same inode, new contents (a new size, which a coarse clock cannot hide).
	if err := os.WriteFile(path, append(want, "kone"...), 0o600); err != nil {
		t.Fatal(err)
	}
	drop(true)
	drop(false)
}

// TestDropNewNeedsItsMarker checks that nothing is dropped where the marker cannot be kept:
// each start would drop the binary and read it back from disk.
func TestDropNewNeedsItsMarker(t *testing.T) {
	path, _ := testFile(t)
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	before := cachedPages(t, path)
	dropped, err := dropNew(path, filepath.Join(notDir, "dropped"))
	if err == nil || dropped {
		t.Fatalf("dropped=%v err=%v, want an error and no drop", dropped, err)
	}
	if after := cachedPages(t, path); after < before {
		t.Fatalf("cached pages %d -> %d: dropped without a marker", before, after)
	}
}

// TestDropNewExecutable drops the running test binary, found through /proc/self/exe, once.
func TestDropNewExecutable(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "dropped")
	for i, want := range []bool{true, false} {
		dropped, err := DropNewExecutable(marker)
		if err != nil || dropped != want {
			t.Fatalf("call %d: dropped=%v err=%v, want dropped=%v", i+1, dropped, err, want)
		}
	}
}

// TestDropNewWithoutFsync drops a file of a file system that has no fsync, as squashfs and
// erofs have none; procfs stands in for them here.
func TestDropNewWithoutFsync(t *testing.T) {
	dropped, err := dropNew("/proc/self/stat", filepath.Join(t.TempDir(), "dropped"))
	if err != nil || !dropped {
		t.Fatalf("dropped=%v err=%v, want a drop without a write-back", dropped, err)
	}
}
