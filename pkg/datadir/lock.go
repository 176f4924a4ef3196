// Package datadir guards kone's data dir: one kone process, server or agent, uses it at a time.
package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Lock is an exclusive lock on a data dir, held for the life of the process; the kernel drops
// it when the process dies, so a crash never leaves a stale lock.
type Lock struct{ f *os.File }

// Acquire creates dir if needed and locks it, or says which process holds it.
func Acquire(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w; check --data-dir and that it is writable by this user", err)
	}
	path := filepath.Join(dir, ".lock")
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
			return nil, fmt.Errorf("another kone server or agent%s is already using data dir %s: stop it first, or give this one its own --data-dir", holder, dir)
		}
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Release gives the data dir up.
func (l *Lock) Release() {
	_ = l.f.Truncate(0)
	l.f.Close()
}
