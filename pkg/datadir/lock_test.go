package datadir

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLockFileTakesTurns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "files.lock")
	unlock, err := LockFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	// A second open file is another holder to flock, as another process would be.
	if _, err := LockFile(path, false); !errors.Is(err, ErrBusy) {
		t.Fatalf("a second lock without waiting: got %v, want ErrBusy", err)
	}
	got := make(chan error, 1)
	go func() {
		unlock2, err := LockFile(path, true)
		if err == nil {
			unlock2()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a waiting lock returned while the first was held: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("a waiting lock, once the first let go: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting lock was not given the lock when the first let go")
	}
}

func TestAcquireNamesTheHolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	l, err := Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(dir)
	if err == nil || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("a second Acquire: got %v, want an error naming this pid and --data-dir", err)
	}
	l.Release()
	l, err = Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	l.Release()
}
