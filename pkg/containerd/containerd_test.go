package containerd_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/kone-dev/kone/pkg/containerd"
	"github.com/kone-dev/kone/pkg/data"
	"github.com/kone-dev/kone/pkg/images"
)

// running is a containerd started through the component, as kone's node side starts it.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, c *containerd.Containerd) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx) }()
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	if err := c.Ready(rctx); err != nil {
		cancel()
		t.Fatalf("containerd not ready: %v (run: %v)", err, <-r.done)
	}
	return r
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Fatalf("containerd stopped with %v", err)
	}
}

// TestContainersOutliveContainerd runs a real container from the pause image with the runc and
// shim kone carries, stops containerd, and checks that the container kept running and that a
// new containerd adopts it.
func TestContainersOutliveContainerd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test starts containers: run it as root (scripts/test)")
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
	defer func() {
		unmountUnder(t, dir)
		os.RemoveAll(dir)
	}()
	helpers, err := data.Unpack(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	cfg := containerd.Config{
		Root: filepath.Join(dir, "root"), State: filepath.Join(dir, "state"), Socket: filepath.Join(dir, "c.sock"),
		RuncRoot: filepath.Join(dir, "runc"), BinDir: helpers.BinDir(), CNIConfDir: filepath.Join(dir, "cni"),
		SandboxImage: images.PauseImage, RestrictOOMScoreAdj: true,
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	c := containerd.New(cfg, filepath.Join(dir, "config.toml"), bin, log)
	r := start(t, c)

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
	ctr, err := cl.NewContainer(ctx, "pause", client.WithNewSnapshot("pause-snap", img), client.WithNewSpec(oci.WithImageConfig(img)))
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
	if comm, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm")); strings.TrimSpace(string(comm)) != "pause" {
		t.Fatalf("process %d is %q, not pause", pid, comm)
	}
	cl.Close()

	// containerd goes away; the container stays.
	r.stop(t)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the container died with containerd: %v", err)
	}

	// A new containerd adopts it.
	r = start(t, c)
	defer r.stop(t)
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

// unmountUnder removes every mount below dir that the test may have left.
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
		unix.Unmount(left[i], unix.MNT_DETACH)
	}
	if len(left) > 0 {
		t.Errorf("mounts left behind: %v", left)
	}
}
