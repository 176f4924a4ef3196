package renew

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// A change in a watched directory makes the renewer check within seconds, many changes in a row
// once, its own writes none; with no change it checks on its tick.
func TestRenewerChecksOnChangeAndTick(t *testing.T) {
	dir := t.TempDir()
	checks := make(chan time.Time, 10)
	// Each check writes, as one that renews would: its own writes make no further check.
	r := New(func(_ context.Context, now time.Time) ([]string, error) {
		checks <- now
		return []string{"own.crt"}, os.WriteFile(filepath.Join(dir, "own.crt"), []byte(now.String()), 0o600)
	}, []string{dir, filepath.Join(dir, "missing")}, logrus.New())
	r.every = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	time.Sleep(200 * time.Millisecond) // the watch is set up

	for i := range 3 {
		if err := os.WriteFile(filepath.Join(dir, "a.crt"), []byte{byte(i)}, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-checks:
	case <-time.After(10 * time.Second):
		t.Fatal("no check within 10 s of a changed certificate")
	}
	select {
	case <-checks:
		t.Error("three writes in a row, and the check's own write, made more than one check")
	case <-time.After(3 * settle):
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	r.every = 50 * time.Millisecond
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- r.Run(ctx) }()
	select {
	case <-checks:
	case <-time.After(10 * time.Second):
		t.Fatal("no check on the tick")
	}
}
