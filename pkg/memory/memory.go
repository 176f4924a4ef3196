// Package memory keeps kone's resident memory small on machines where every MiB counts.
package memory

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// SteadyGCPercent is kone's GOGC once it is ready. A control plane keeps about 100 MiB of live
// heap; Go's default of 100 lets the heap grow to twice that before collecting, which is most of
// the difference between a 250 MiB and a 300 MiB process. At 30 an idle server spends about
// 0.4 s more CPU a minute (2.0 s instead of 1.6 s, measured with scripts/bench/server's setup).
// Start-up collects less often (StartGCPercent): it allocates a lot of short-lived memory.
const SteadyGCPercent = 30

// StartGCPercent is kone's GOGC while a server or agent starts. Start-up allocates several
// times the heap it keeps; with Go's default of 100 the heap peaks high and what survives is
// spread thinly over many spans that the collector cannot give back, which measured 45 MiB of
// such holes after 60 s on a server with its node side; at 50 it was half that, for ~0.2 s more
// on a warm restart and ~0.9 s on a first start (scripts/bench/server with GOGC=100 and 50).
const StartGCPercent = 50

// Start is called when a server or agent starts: it sets the start-up GOGC, unless the user set one.
func Start() { setGCPercent(StartGCPercent) }

// Settle is called once kone is ready: it tightens the garbage collector (unless the user set
// GOGC), returns what start-up freed to the kernel, and trims the file pages start-up mapped.
func Settle() {
	setGCPercent(SteadyGCPercent)
	debug.FreeOSMemory()
	_ = TrimFileMappings()
	if exe, err := os.Executable(); err == nil {
		_ = DropCache(exe)
	}
}

// DropNewExecutable drops kone's executable from the page cache when it starts as a server or
// agent for the first time since the machine booted or the file was replaced. marker is the
// file that records which executable was dropped last; it reports whether it dropped.
//
// A binary that was just written (installed, upgraded, linked), or read through read-ahead as
// a cold start's package initialisation reads it, sits in the page cache in large folios, and
// the kernel maps a whole folio into a process that touches one page of it. DropCache at settle
// cannot take those that kone and its containerd both map, so they stay whole for as long as
// the node runs and across restarts: a node measured 30-45 MiB more RSS after 60 s than one
// started from a cold cache. Dropped before containerd exists and after TrimFileMappings,
// every page comes back on its own (RandomAccessExecutable turns off read-ahead). Only once:
// on every start it would make each warm restart read the binary from disk again, which
// measured 4.6 s to ready instead of 3.3 s.
func DropNewExecutable(marker string) (bool, error) {
	// The file this process runs, even when its path names another one by now.
	return dropNew("/proc/self/exe", marker)
}

// dropNew drops the file from the page cache unless marker names this same file in this boot.
func dropNew(file, marker string) (bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false, err
	}
	// The boot, because the cache does not outlive it and /run may (in a container); the rest
	// changes when the file is replaced or rewritten in place.
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	id := fmt.Appendf(nil, "boot=%s dev=%d ino=%d size=%d mtime=%d ctime=%d\n",
		bytes.TrimSpace(boot), st.Dev, st.Ino, st.Size, st.Mtim.Nano(), st.Ctim.Nano())
	if last, err := os.ReadFile(marker); err == nil && bytes.Equal(last, id) {
		return false, nil
	}
	// Opened, and emptied, first: without a marker to keep, every start would drop the binary
	// and read it back, and a drop that fails half-way is tried again at the next start.
	if err := os.MkdirAll(filepath.Dir(marker), 0o711); err != nil {
		return false, err
	}
	m, err := os.OpenFile(marker, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return false, err
	}
	defer m.Close()
	// The kernel drops only clean pages, and a binary installed moments ago may not be on disk
	// yet: this start waits for that write, once. Written back before the trim, so that what
	// this process maps again meanwhile is not kept. A read-only file system (squashfs, erofs)
	// has nothing to write and no fsync.
	if err := unix.Fdatasync(int(f.Fd())); err != nil && err != unix.EINVAL && err != unix.EROFS {
		return false, fmt.Errorf("write %s back: %w", file, err)
	}
	if err := TrimFileMappings(); err != nil {
		return false, err
	}
	if err := DropCache(file); err != nil {
		return false, err
	}
	if _, err := m.Write(id); err != nil {
		return true, err
	}
	return true, m.Close()
}

// setGCPercent sets GOGC to percent, unless the user chose one in the environment.
func setGCPercent(percent int) {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(percent)
	}
}

// SettleAgainAfter is how long after Settle a process that keeps starting things once it is
// ready settles once more: a node registers, imports images and starts its first pods after
// kone is ready, and the memory that work freed stays with the process otherwise (Go's
// scavenger keeps up to a tenth over the heap goal).
const SettleAgainAfter = 30 * time.Second

// SettleTwice settles now and once more after SettleAgainAfter.
func SettleTwice() {
	Settle()
	time.AfterFunc(SettleAgainAfter, Settle)
}

// Settler settles once a burst of work is over. A server that adds an etcd member (sending it
// a snapshot of the data) or takes a controller over from a lost server touches memory and code
// it does not need afterwards, long after its own start settled.
type Settler struct {
	mu    sync.Mutex
	timer *time.Timer
}

// Soon settles SettleAgainAfter from now, or from the last call if there is another meanwhile.
func (s *Settler) Soon() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timer = time.AfterFunc(SettleAgainAfter, Settle)
}

// RandomAccessExecutable tells the kernel that kone's own code and read-only data are read at
// random, which turns off read-ahead and fault-around for them. kone links all of Kubernetes,
// and a single process uses a fraction of it (kubectl, the node side or the control plane); with
// read-ahead, neighbouring pages that never run are mapped in and counted in the RSS.
func RandomAccessExecutable() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return advise(unix.MADV_RANDOM, func(_, path string) bool { return path == exe })
}

// TrimFileMappings unmaps from this process the pages of the files it maps read-only, so that
// only what steady state reads comes back: kone's own code and read-only data, of which start-up
// touched much that it never needs again (package initialisation of all of Kubernetes, flag
// parsing, certificate creation), and the databases that etcd and containerd map whole (bbolt),
// which they read through once when they open them. The pages stay in the page cache, clean, and
// what is still used is mapped again by a minor fault. Unmapping, not paging out: kone and its
// containerd run the same executable, and the kernel pages out no page that two processes map.
func TrimFileMappings() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return advise(unix.MADV_DONTNEED, func(perms, path string) bool {
		// A private mapping may hold pages the process changed before it was made read-only;
		// dropping them would bring back the file's contents. Shared mappings never differ from
		// the file, and kone's executable is static, with no such mapping.
		return path == exe || (strings.HasSuffix(perms, "s") && strings.HasPrefix(path, "/"))
	})
}

// DropCache drops the pages of the file at path that no process maps from the page cache. A
// binary that was just written (installed, copied, linked) sits in the page cache in large
// folios, and the kernel maps a whole folio into a process that touches one page of it: an
// agent started from a freshly linked binary had 131 MiB of RSS after a minute, against 106 MiB
// with this (Linux 6.18). Dropped after TrimFileMappings, the code kone still runs comes back
// from disk page by page (RandomAccessExecutable turns off read-ahead). Only clean pages go;
// a binary written moments ago is dropped at the second settle.
func DropCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// advise gives advice on the mappings of this process for which match(permissions, path)
// holds. Never on writable mappings: MADV_DONTNEED would reset a program's variables to the
// file's contents.
func advise(advice int, match func(perms, path string) bool) error {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 6 || strings.Contains(fields[1], "w") || !match(fields[1], fields[5]) {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("parse /proc/self/maps line %q", s.Text())
		}
		// The raw syscall takes the address as a number: these pages are not Go memory. A
		// mapping that went away since the file was read (bbolt remaps when its file grows)
		// is no error.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), uintptr(advice)); errno != 0 && errno != unix.ENOMEM {
			return fmt.Errorf("madvise: %w", errno)
		}
	}
	return s.Err()
}
