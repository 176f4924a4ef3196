// Package containerdtest starts a real containerd for tests, the way kone's node side starts it:
// the kone binary in $KONE_BIN re-executed as containerd, with the programs kone carries.
// It needs root.
package containerdtest

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/kone-dev/kone/pkg/containerd"
	"github.com/kone-dev/kone/pkg/data"
	"github.com/kone-dev/kone/pkg/images"
)

// Node is a containerd under test.
type Node struct {
	Dir     string
	Config  containerd.Config
	Helpers data.Dir
	c       *containerd.Containerd
	cancel  context.CancelFunc
	done    chan error
}

// New prepares a containerd in a fresh directory, removed (with any mount left under it) when
// the test ends.
func New(t *testing.T) *Node {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs containers: run it as root (scripts/test)")
	}
	bin := os.Getenv("KONE_BIN")
	if bin == "" {
		t.Fatal("KONE_BIN must name a kone binary built by scripts/build (scripts/test sets it)")
	}
	// Short paths: containerd's socket path must fit in a sockaddr_un.
	dir, err := os.MkdirTemp("/tmp", "kc")
	if err != nil {
		t.Fatal(err)
	}
	helpers, err := data.Unpack(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{Dir: dir, Helpers: helpers, Config: containerd.Config{
		Root: filepath.Join(dir, "root"), State: filepath.Join(dir, "state"), Socket: filepath.Join(dir, "c.sock"),
		RuncRoot: filepath.Join(dir, "runc"), BinDir: helpers.BinDir(), CNIConfDir: filepath.Join(dir, "cni"),
		SandboxImage: images.PauseImage, RestrictOOMScoreAdj: true,
	}}
	log := logrus.New()
	log.SetOutput(io.Discard)
	n.c = containerd.New(n.Config, filepath.Join(dir, "config.toml"), bin, log)
	t.Cleanup(func() {
		if n.cancel != nil {
			n.Stop(t)
		}
		unmountUnder(t, dir)
		os.RemoveAll(dir)
	})
	return n
}

// Start starts containerd and waits until it serves.
func (n *Node) Start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	go func() { n.done <- n.c.Run(ctx) }()
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	if err := n.c.Ready(rctx); err != nil {
		cancel()
		runErr := <-n.done
		// Stopped here: the cleanup must not wait for it a second time.
		n.cancel = nil
		t.Fatalf("containerd not ready: %v (run: %v)", err, runErr)
	}
}

// Stop stops containerd; containers keep running.
func (n *Node) Stop(t *testing.T) {
	t.Helper()
	n.cancel()
	n.cancel = nil
	if err := <-n.done; err != nil {
		t.Fatalf("containerd stopped with %v", err)
	}
}

// unmountUnder removes every mount below dir, and fails the test if there was one.
func unmountUnder(t *testing.T, dir string) {
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var left []string
	for _, line := range strings.Split(string(info), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			left = append(left, f[4])
		}
	}
	for i := len(left) - 1; i >= 0; i-- {
		_ = unix.Unmount(left[i], unix.MNT_DETACH)
	}
	if len(left) > 0 {
		t.Errorf("mounts left behind: %v", left)
	}
}
