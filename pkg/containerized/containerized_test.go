package containerized

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests run this test binary again, as a container's process would run, in namespaces of
// its own; helperEnv says which part it plays.
const helperEnv = "KONE_CONTAINERIZED_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "init":
		os.Exit(initHelper())
	case "cgroup":
		os.Exit(cgroupHelper())
	}
	os.Exit(2)
}

// initScript orphans a process, then reports whether it was left a zombie, then waits for
// SIGTERM, which it answers with exit code 9.
const initScript = `trap 'exit 9' TERM
sh -c 'sleep 0.2 &'
sleep 1
for f in /proc/[0-9]*/stat; do
	read -r line <"$f" || continue
	case $line in *") Z "*) echo "zombie: $line"; exit 3 ;; esac
done
echo ready
while :; do sleep 0.05; done`

// initHelper is PID 1 of a new PID namespace, with a /proc of its own, running initScript.
func initHelper() int {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Println("make / private:", err)
		return 2
	}
	if err := unix.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		fmt.Println("mount /proc:", err)
		return 2
	}
	if !IsInit() {
		fmt.Println("not PID 1")
		return 2
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		fmt.Println(err)
		return 2
	}
	code, err := RunAsInit(sh, []string{"sh", "-c", initScript})
	if err != nil {
		fmt.Println("RunAsInit:", err)
		return 2
	}
	return code
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test makes namespaces and cgroups: run it as root (scripts/test does)")
	}
}

func TestRunAsInitReapsOrphansAndPassesSignals(t *testing.T) {
	needRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=init")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	timeout := time.After(20 * time.Second)
	for ready := false; !ready; {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("the init helper ended before it was ready: %v", cmd.Wait())
			}
			if line != "ready" {
				t.Fatalf("init helper: %s", line)
			}
			ready = true
		case <-timeout:
			t.Fatal("the init helper was not ready in 20 s")
		}
	}
	// SIGTERM reaches the container's init from outside; the child must get it.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 9 {
		t.Fatalf("init helper ended with %v, want exit code 9 (the child's answer to SIGTERM)", err)
	}
}

// cgroupHelper runs in a cgroup namespace whose root is the test's cgroup, with a second
// process beside it, and moves them both out of the root.
func cgroupHelper() int {
	mount, err := os.MkdirTemp("", "kone-cgroup2-")
	if err != nil {
		fmt.Println(err)
		return 2
	}
	defer os.Remove(mount)
	if err := unix.Mount("none", mount, "cgroup2", 0, ""); err != nil {
		fmt.Println("mount cgroup2:", err)
		return 2
	}
	defer unix.Unmount(mount, 0)
	sleeper := exec.Command("sleep", "30")
	if err := sleeper.Start(); err != nil {
		fmt.Println(err)
		return 2
	}
	defer sleeper.Process.Kill()
	moved, err := LeaveRootCgroup(mount)
	if err != nil {
		fmt.Println("LeaveRootCgroup:", err)
		return 2
	}
	root, _ := os.ReadFile(filepath.Join(mount, "cgroup.procs"))
	init, _ := os.ReadFile(filepath.Join(mount, "init", "cgroup.procs"))
	fmt.Printf("moved %d\nroot %q\ninit %s\nwant %d %d\n", moved, root,
		strings.Join(strings.Fields(string(init)), " "), os.Getpid(), sleeper.Process.Pid)
	return 0
}

// cgroup2Root is where this machine mounts its cgroup v2 hierarchy.
func cgroup2Root(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" {
				return fields[4]
			}
		}
	}
	t.Fatal("no cgroup2 hierarchy is mounted")
	return ""
}

func TestLeaveRootCgroup(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatal("this test needs unshare (util-linux)")
	}
	hostRoot := cgroup2Root(t)

	t.Run("not cgroup2", func(t *testing.T) {
		if moved, err := LeaveRootCgroup(t.TempDir()); moved != 0 || err != nil {
			t.Errorf("LeaveRootCgroup(a plain directory) = %d, %v; want 0, nil", moved, err)
		}
	})

	t.Run("the machine's root is left alone", func(t *testing.T) {
		_, statErr := os.Stat(filepath.Join(hostRoot, "init"))
		hadInit := statErr == nil
		if moved, err := LeaveRootCgroup(hostRoot); moved != 0 || err != nil {
			t.Errorf("LeaveRootCgroup(%s) = %d, %v; want 0, nil", hostRoot, moved, err)
		}
		if _, err := os.Stat(filepath.Join(hostRoot, "init")); err == nil && !hadInit {
			t.Errorf("LeaveRootCgroup made %s/init on the machine's own root", hostRoot)
		}
	})

	t.Run("a container's root", func(t *testing.T) {
		cg := filepath.Join(hostRoot, "kone-test-"+strconv.Itoa(os.Getpid()))
		if err := os.Mkdir(cg, 0o755); err != nil {
			t.Fatal(err)
		}
		defer func() {
			_ = os.Remove(filepath.Join(cg, "init"))
			if err := os.Remove(cg); err != nil {
				t.Errorf("remove test cgroup: %v", err)
			}
		}()
		fd, err := unix.Open(cg, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		// unshare, single-threaded, makes the cgroup namespace in the test's cgroup and then
		// runs the helper in it.
		cmd := exec.Command("unshare", "--cgroup", "--mount", "--propagation", "private", "--", os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=cgroup")
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		var moved int
		var root, init, want string
		for _, line := range strings.Split(string(out), "\n") {
			key, value, _ := strings.Cut(line, " ")
			switch key {
			case "moved":
				moved, _ = strconv.Atoi(value)
			case "root":
				root = value
			case "init":
				init = value
			case "want":
				want = value
			}
		}
		if moved < 2 || root != `""` {
			t.Errorf("moved %d processes, root cgroup holds %s; want at least 2 moved and none left\n%s", moved, root, out)
		}
		for _, pid := range strings.Fields(want) {
			if !strings.Contains(" "+init+" ", " "+pid+" ") {
				t.Errorf("process %s is not in the init cgroup (it holds %s)\n%s", pid, init, out)
			}
		}
		if _, err := os.Stat(filepath.Join(cg, "init")); err != nil {
			t.Errorf("no init cgroup under the container's root: %v", err)
		}
	})
}
