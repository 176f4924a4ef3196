// Package memory keeps kone's resident memory small on machines where every MiB counts.
package memory

import (
	"bufio"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultGCPercent is kone's GOGC. A control plane keeps about 100 MiB of live heap; Go's
// default of 100 lets the heap grow to twice that before collecting, which is most of the
// difference between a 250 MiB and a 300 MiB process. At 40 an idle server spends about 0.3 s
// more CPU a minute on collection.
const DefaultGCPercent = 40

// TuneGC applies DefaultGCPercent unless the user chose with GOGC.
func TuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(DefaultGCPercent)
	}
}

// RandomAccessExecutable tells the kernel that kone's own code and read-only data are read at
// random, which turns off read-ahead and fault-around for them. kone links all of Kubernetes,
// and a single process uses a fraction of it (kubectl, the node side or the control plane); with
// read-ahead, neighbouring pages that never run are mapped in and counted in the RSS.
func RandomAccessExecutable() error { return adviseExecutable(unix.MADV_RANDOM) }

// TrimExecutable releases the pages of kone's code that start-up touched and steady state does
// not use (package initialisation of all of Kubernetes, flag parsing, certificate creation).
// They are clean file pages: whatever is still needed is read back from the page cache.
func TrimExecutable() error { return adviseExecutable(unix.MADV_PAGEOUT) }

func adviseExecutable(advice int) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 6 || fields[5] != exe {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("parse /proc/self/maps line %q", s.Text())
		}
		region := unsafe.Slice((*byte)(unsafe.Pointer(uintptr(start))), end-start)
		if err := unix.Madvise(region, advice); err != nil {
			return fmt.Errorf("madvise: %w", err)
		}
	}
	return s.Err()
}
