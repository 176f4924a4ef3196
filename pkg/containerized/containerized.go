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
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// CgroupMount is where the cgroup v2 hierarchy is mounted in a container.
const CgroupMount = "/sys/fs/cgroup"

// LeaveRootCgroup moves every process of the cgroup namespace's root cgroup into a child
// cgroup named "init" and lets the root's children use all its controllers. cgroup v2 lets a
// cgroup either hold processes or give controllers to children, not both; a container's
// processes start in its root, so without this the first pod cgroup fails (EBUSY). It does
// nothing, and returns 0, unless mount is a cgroup v2 mount of a namespace root other than the
// machine's own (the machine's root cgroup is exempt from the rule) and this process is in it.
func LeaveRootCgroup(mount string) (moved int, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(mount, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
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
		return 0, fmt.Errorf("make cgroup %s: %w", init, err)
	}
	// Processes may start while this runs (kone starts none yet, other processes of the
	// container might): move until the root is empty.
	for range 10 {
		procs, err := os.ReadFile(filepath.Join(mount, "cgroup.procs"))
		if err != nil {
			return moved, fmt.Errorf("read %s/cgroup.procs: %w", mount, err)
		}
		pids := strings.Fields(string(procs))
		if len(pids) == 0 {
			return moved, enableControllers(mount)
		}
		for _, pid := range pids {
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
	}
	return moved, fmt.Errorf("processes keep appearing in %s: could not empty it", mount)
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

// enableControllers hands every controller the root has to its children.
func enableControllers(mount string) error {
	controllers, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("read %s/cgroup.controllers: %w", mount, err)
	}
	names := strings.Fields(string(controllers))
	if len(names) == 0 {
		return nil
	}
	enable := "+" + strings.Join(names, " +")
	if err := os.WriteFile(filepath.Join(mount, "cgroup.subtree_control"), []byte(enable), 0o644); err != nil {
		return fmt.Errorf("enable controllers %q in %s: %w", enable, mount, err)
	}
	return nil
}

// RunAsInit runs the program at path with argv as the child of this process, which is a
// container's init (PID 1): it
// passes on the signals a container runtime sends, reaps every process that ends up as its
// child (a container has no other init to do it, and shims and their children are orphaned
// by design), and returns the child's exit code once the child ends; the container ends with
// it.
func RunAsInit(path string, argv []string) (int, error) {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(signals)
	child, err := os.StartProcess(path, argv, &os.ProcAttr{
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
	})
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", path, err)
	}
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
