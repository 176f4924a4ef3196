package server

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// dirLock is an exclusive lock on a data dir, held for the life of the process; the kernel
// drops it when the process dies, so a crash never leaves a stale lock.
type dirLock struct{ f *os.File }

func acquireLock(path string) (*dirLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w; check --data-dir and that it is writable by this user", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		data, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := ""
			if pid := strings.TrimSpace(string(data)); pid != "" {
				holder = " (pid " + pid + ")"
			}
			return nil, fmt.Errorf("another kone server%s is already using data dir %s: stop it first, or give this one its own --data-dir", holder, dirOf(path))
		}
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &dirLock{f: f}, nil
}

func (l *dirLock) Release() {
	_ = l.f.Truncate(0)
	l.f.Close()
}

func dirOf(lockPath string) string {
	return strings.TrimSuffix(strings.TrimSuffix(lockPath, "/.lock"), "/server")
}
