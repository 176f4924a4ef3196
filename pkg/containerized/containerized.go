// Package containerized does what kone needs when it is itself a container's process, as in
// `docker run --privileged kone server`: as the container's init it reaps orphaned processes,
// and on a cgroup v2 host it leaves the container's root cgroup so that kubelet and runc can
// make cgroups for pods below it.
package containerized

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kone-dev/kone/pkg/host"
	"github.com/kone-dev/kone/pkg/memory"
)

// LeaveRootCgroup moves every process of the cgroup namespace's root cgroup into a child
// cgroup named "init" and lets the root's children use its controllers. cgroup v2 lets a
// cgroup either hold processes or give controllers to children, not both; a container's
// processes start in its root, so without this the first pod cgroup fails (EBUSY). It does
// nothing, and returns 0, unless mount is a cgroup v2 mount of a namespace root other than the
// machine's own (the machine's root cgroup is exempt from the rule) and this process is in it.
func LeaveRootCgroup(mount string) (moved int, err error) {
	if !host.IsCgroup2(mount) {
		return 0, nil
	}
	// Only a non-root cgroup has a type: the machine's root has none.
	if _, err := os.Stat(filepath.Join(mount, "cgroup.type")); err != nil {
		return 0, nil
	}
	own, err := ownCgroup()
	if err != nil || own != "/" {
		return 0, err
	}
	init := filepath.Join(mount, "init")
	if err := os.Mkdir(init, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return 0, fmt.Errorf("make cgroup %s (run the container with --privileged and its own cgroup namespace): %w", init, err)
	}
	// Other processes of the container may start meanwhile (a docker exec): move until the
	// root is empty and its controllers are handed down.
	for range 10 {
		n, err := emptyInto(mount, init)
		moved += n
		if err != nil {
			return moved, err
		}
		if err := enableControllers(mount); !errors.Is(err, unix.EBUSY) {
			return moved, err
		}
	}
	return moved, fmt.Errorf("processes keep appearing in %s: could not empty it", mount)
}

// emptyInto moves the processes of the cgroup at mount into the cgroup init.
func emptyInto(mount, init string) (moved int, err error) {
	procs, err := os.ReadFile(filepath.Join(mount, "cgroup.procs"))
	if err != nil {
		return 0, fmt.Errorf("read %s/cgroup.procs: %w", mount, err)
	}
	for _, pid := range strings.Fields(string(procs)) {
		if pid == "0" {
			continue // outside this PID namespace: not the container's to move
		}
		err := os.WriteFile(filepath.Join(init, "cgroup.procs"), []byte(pid), 0o644)
		switch {
		case err == nil:
			moved++
		case errors.Is(err, syscall.ESRCH):
			// It exited meanwhile.
		default:
			return moved, fmt.Errorf("move process %s into %s: %w", pid, init, err)
		}
	}
	return moved, nil
}

// ownCgroup is this process's cgroup v2 path, as its cgroup namespace shows it.
func ownCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read own cgroup: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if path, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return path, nil
		}
	}
	return "", nil
}

// neededControllers are those without which kubelet cannot limit or account for pods.
var neededControllers = map[string]bool{"cpu": true, "memory": true, "pids": true}

// enableControllers hands the root's controllers to its children, one by one: a controller
// the kernel will not hand down (cpu with real-time processes, say) matters only when pods
// need it. EBUSY means a process appeared in the root again.
func enableControllers(mount string) error {
	controllers, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("read %s/cgroup.controllers: %w", mount, err)
	}
	for _, name := range strings.Fields(string(controllers)) {
		err := os.WriteFile(filepath.Join(mount, "cgroup.subtree_control"), []byte("+"+name), 0o644)
		if errors.Is(err, unix.EBUSY) {
			return err
		}
		if err != nil && neededControllers[name] {
			return fmt.Errorf("enable the %s controller for pods in %s: %w", name, mount, err)
		}
	}
	return nil
}

// RunAsInit runs the program at path with argv as the child of this process, which is a
// container's init (PID 1): it passes on the signals a container runtime sends, reaps every
// process that ends up as its child (a container has no other init to do it, and shims and
// their children are orphaned by design), and returns the child's exit code once the child
// ends; the container ends with it.
func RunAsInit(path string, argv []string) (int, error) {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(signals)
	child, err := os.StartProcess(path, argv, &os.ProcAttr{
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		// A process group of its own: a terminal's Ctrl-C reaches the child once, through
		// this process, and a second signal would make kone give up its clean stop.
		Sys: &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", path, err)
	}
	// This process ran every package's initialisation of kone's binary and needs none of it;
	// the child drops kone's executable from the page cache (memory.DropNewExecutable) and
	// cannot while this process maps its pages.
	debug.FreeOSMemory()
	_ = memory.TrimFileMappings()
	go func() {
		for sig := range signals {
			_ = child.Signal(sig)
		}
	}()
	for {
		var status unix.WaitStatus
		pid, err := unix.Wait4(-1, &status, 0, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return 0, fmt.Errorf("wait for %s: %w", path, err)
		case pid != child.Pid:
			continue // an orphan, now reaped
		case status.Signaled():
			return 128 + int(status.Signal()), nil
		default:
			return status.ExitStatus(), nil
		}
	}
}

// IsInit reports whether this process is its PID namespace's init.
func IsInit() bool { return os.Getpid() == 1 }
