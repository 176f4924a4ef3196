package memory

import (
	"os"
	"strconv"
	"strings"
	"testing"
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

func TestTrimExecutableReleasesCodePages(t *testing.T) {
	if err := RandomAccessExecutable(); err != nil {
		t.Fatal(err)
	}
	before := rssFileKiB(t)
	if err := TrimExecutable(); err != nil {
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

var (
	trimCanary = "initial"
	trimTable  = []int{1, 2, 3}
)

func init() {
	trimCanary = "still here"
	trimTable[2] = 30
}
