// Package memory keeps kone's resident memory small on machines where every MiB counts.
package memory

import (
	"bufio"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// SteadyGCPercent is kone's GOGC once it is ready. A control plane keeps about 100 MiB of live
// heap; Go's default of 100 lets the heap grow to twice that before collecting, which is most of
// the difference between a 250 MiB and a 300 MiB process. At 30 an idle server spends about
// 0.4 s more CPU a minute (2.0 s instead of 1.6 s, measured with scripts/bench/server's setup).
// Start-up keeps Go's default: it allocates a lot of short-lived memory, and collecting it more
// often would slow it down.
const SteadyGCPercent = 30

// Settle is called once kone is ready: it tightens the garbage collector (unless the user set
// GOGC), returns what start-up freed to the kernel, and trims start-up's code pages.
func Settle() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(SteadyGCPercent)
	}
	debug.FreeOSMemory()
	_ = TrimExecutable()
}

// RandomAccessExecutable tells the kernel that kone's own code and read-only data are read at
// random, which turns off read-ahead and fault-around for them. kone links all of Kubernetes,
// and a single process uses a fraction of it (kubectl, the node side or the control plane); with
// read-ahead, neighbouring pages that never run are mapped in and counted in the RSS.
func RandomAccessExecutable() error { return adviseExecutable(unix.MADV_RANDOM) }

// TrimExecutable unmaps the pages of kone's code and read-only data from this process, so that
// only what steady state runs comes back: start-up touched much that it never needs again
// (package initialisation of all of Kubernetes, flag parsing, certificate creation). The pages
// stay in the page cache, clean, and what is still used is mapped again by a minor fault.
// Unmapping, not paging out: kone and its containerd run the same executable, and the kernel
// pages out no page that two processes map.
func TrimExecutable() error { return adviseExecutable(unix.MADV_DONTNEED) }

// adviseExecutable gives advice on the executable's read-only mappings. Never its writable
// ones: those hold the program's variables, which MADV_DONTNEED would reset to the file's contents.
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
		if len(fields) < 6 || fields[5] != exe || strings.Contains(fields[1], "w") {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("parse /proc/self/maps line %q", s.Text())
		}
		// The raw syscall takes the address as a number: these pages are not Go memory.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), uintptr(advice)); errno != 0 {
			return fmt.Errorf("madvise: %w", errno)
		}
	}
	return s.Err()
}
