package containerd_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/sirupsen/logrus"

	"github.com/kone-dev/kone/pkg/containerd"
	"github.com/kone-dev/kone/pkg/containerd/containerdtest"
	"github.com/kone-dev/kone/pkg/images"
)

// TestContainersOutliveContainerd runs a real container from the pause image with the runc and
// shim kone carries, stops containerd, and checks that the container kept running and that a
// new containerd adopts it.
func TestContainersOutliveContainerd(t *testing.T) {
	node := containerdtest.New(t)
	node.Start(t)
	cfg, helpers := node.Config, node.Helpers

	ctx := namespaces.WithNamespace(context.Background(), "kone-test")
	cl, err := client.New(cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	pause, err := os.ReadFile(helpers.Pause())
	if err != nil {
		t.Fatal(err)
	}
	archive, err := images.PauseArchive(pause)
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := cl.Import(ctx, bytes.NewReader(archive))
	if err != nil || len(imgs) != 1 || imgs[0].Name != images.PauseImage {
		t.Fatalf("import: %v %v", imgs, err)
	}
	img := client.NewImage(cl, imgs[0])
	if err := img.Unpack(ctx, "overlayfs"); err != nil {
		t.Fatal(err)
	}
	ctr, err := cl.NewContainer(ctx, "pause", client.WithNewSnapshot("pause-snap", img), client.WithNewSpec(oci.WithImageConfig(img)),
		// runc keeps its state under the test's own directory, never in the machine-wide default.
		client.WithRuntime("io.containerd.runc.v2", &options.Options{BinaryName: filepath.Join(cfg.BinDir, "runc"), Root: cfg.RuncRoot}))
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid := int(task.Pid())
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if comm := commOf(pid, "pause", 5*time.Second); comm != "pause" {
		t.Fatalf("process %d is %q, not pause", pid, comm)
	}
	cl.Close()

	// containerd goes away; the container stays.
	node.Stop(t)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the container died with containerd: %v", err)
	}

	// A new containerd adopts it.
	node.Start(t)
	cl, err = client.New(cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctr, err = cl.LoadContainer(ctx, "pause")
	if err != nil {
		t.Fatal(err)
	}
	task, err = ctr.Task(ctx, nil)
	if err != nil {
		t.Fatalf("the restarted containerd does not know the task: %v", err)
	}
	status, err := task.Status(ctx)
	if err != nil || status.Status != client.Running || int(task.Pid()) != pid {
		t.Fatalf("after restart: %+v pid %d, %v; want running pid %d", status, task.Pid(), err, pid)
	}

	// Clean up: the task stops on SIGTERM (the pause program exits 0 on it).
	exit, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-exit:
		if st.ExitCode() != 0 {
			t.Errorf("pause exited %d on SIGTERM", st.ExitCode())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pause did not stop on SIGTERM")
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ctr.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		t.Fatal(err)
	}
}

// commOf returns the command name of process pid once it is want, or what it is when wait has
// passed: runc's start returns when the container's init has been told to exec, not when it
// has, so for a moment the process may still be runc's own init.
func commOf(pid int, want string, wait time.Duration) string {
	deadline := time.Now().Add(wait)
	for {
		comm, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
		name := strings.TrimSpace(string(comm))
		if name == want || time.Now().After(deadline) {
			return name
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestExitSaysWhy starts containerd where it cannot listen, and checks that the error kone
// returns carries containerd's own reason, not only its exit status.
func TestExitSaysWhy(t *testing.T) {
	node := containerdtest.New(t)
	cfg := node.Config
	// A non-empty directory where the socket goes: containerd can neither remove nor bind it.
	if err := os.MkdirAll(filepath.Join(cfg.Socket, "in-the-way"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := containerd.New(cfg, filepath.Join(node.Dir, "config.toml"), os.Getenv("KONE_BIN"), logrus.New())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := c.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "containerd exited") || !strings.Contains(err.Error(), cfg.Socket) {
		t.Fatalf("want containerd's exit with its reason naming %s, got %v", cfg.Socket, err)
	}
}

// TestSocketsAreKonesOwn checks that a running containerd keeps every socket it serves in kone's
// directories: a machine-wide one (NRI's /var/run/nri/nri.sock) let a second containerd on the
// machine fail to start, or take the first one's socket away.
func TestSocketsAreKonesOwn(t *testing.T) {
	node := containerdtest.New(t)
	node.Start(t)
	for _, path := range []string{node.Config.Socket, node.Config.Socket + ".ttrpc", filepath.Join(node.Config.State, "nri.sock")} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
			t.Errorf("%s: want a socket, got %v %v", path, fi, err)
		}
	}
}
