// Package datadir guards kone's data dir and the files in it that several processes change: one
// kone process, server or agent, uses a data dir at a time, and commands run beside it take turns
// with it on shared files.
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

// ErrBusy is returned by LockFile without wait when another process holds the lock.
var ErrBusy = errors.New("held by another process")

// lockFile opens path, creating it, and takes an exclusive flock on it. The kernel drops the
// lock when the process dies, so a crash never leaves a stale lock.
func lockFile(path string, wait bool) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_EX
	if !wait {
		how |= unix.LOCK_NB
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrBusy
		}
		return nil, err
	}
	return f, nil
}

// LockFile takes the lock file at path for changes that processes make in turn. With wait it
// waits for another holder to let go; without, it returns ErrBusy at once.
func LockFile(path string, wait bool) (unlock func(), err error) {
	f, err := lockFile(path, wait)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// Lock is an exclusive lock on a data dir, held for the life of the process.
type Lock struct{ f *os.File }

// Acquire creates dir if needed and locks it, or says which process holds it.
func Acquire(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w; check --data-dir and that it is writable by this user", err)
	}
	path := filepath.Join(dir, ".lock")
	f, err := lockFile(path, false)
	if errors.Is(err, ErrBusy) {
		holder := ""
		data, _ := os.ReadFile(path)
		if pid := strings.TrimSpace(string(data)); pid != "" {
			holder = " (pid " + pid + ")"
		}
		return nil, fmt.Errorf("another kone server or agent%s is already using data dir %s: stop it first, or give this one its own --data-dir", holder, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w; check --data-dir and that it is writable by this user", err)
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
