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

// initScript orphans a process and waits until it is gone, failing if it stays a zombie for a
// second, then waits for SIGTERM, which it answers with exit code 9.
const initScript = `trap 'exit 9' TERM
orphan=$(sh -c 'sleep 0.2 >/dev/null 2>&1 & echo $!')
zombie=0
while [ -e /proc/$orphan ]; do
	read -r line </proc/$orphan/stat || break
	case $line in *") Z "*) zombie=$((zombie + 1)) ;; esac
	if [ $zombie -ge 20 ]; then echo "zombie: $line"; exit 3; fi
	sleep 0.05
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
	stuck := time.AfterFunc(20*time.Second, func() { _ = cmd.Process.Kill() })
	defer stuck.Stop()
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
	defer func() {
		_ = sleeper.Process.Kill()
		_ = sleeper.Wait() // gone before the test removes the cgroups
	}()
	moved, err := LeaveRootCgroup(mount)
	if err != nil {
		fmt.Println("LeaveRootCgroup:", err)
		return 2
	}
	root, _ := os.ReadFile(filepath.Join(mount, "cgroup.procs"))
	init, _ := os.ReadFile(filepath.Join(mount, "init", "cgroup.procs"))
	controllers, _ := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	handedDown, _ := os.ReadFile(filepath.Join(mount, "cgroup.subtree_control"))
	fmt.Printf("moved %d\nroot %q\ninit %s\nwant %d %d\ncontrollers %q\nsubtree %q\n", moved, root,
		strings.Join(strings.Fields(string(init)), " "), os.Getpid(), sleeper.Process.Pid,
		strings.TrimSpace(string(controllers)), strings.TrimSpace(string(handedDown)))
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
		// The helper in a cgroup namespace whose root is the machine's root: it is in "/",
		// as in a container, but this root may hold processes and must not be emptied.
		_, statErr := os.Stat(filepath.Join(hostRoot, "init"))
		hadInit := statErr == nil
		out := runCgroupHelper(t, hostRoot)
		if moved, _, _ := parseHelper(out); moved != 0 {
			t.Errorf("moved %d processes out of the machine's root cgroup\n%s", moved, out)
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
			// A cgroup whose last process just died may still be busy for a moment.
			var err error
			for range 40 {
				_ = os.Remove(filepath.Join(cg, "init"))
				if err = os.Remove(cg); err == nil || errors.Is(err, os.ErrNotExist) {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			t.Errorf("remove test cgroup: %v", err)
		}()
		out := runCgroupHelper(t, cg)
		moved, fields, want := parseHelper(out)
		if moved < 2 || fields["root"] != `""` {
			t.Errorf("moved %d processes, root cgroup holds %s; want at least 2 moved and none left\n%s", moved, fields["root"], out)
		}
		for _, pid := range strings.Fields(want) {
			if !strings.Contains(" "+fields["init"]+" ", " "+pid+" ") {
				t.Errorf("process %s is not in the init cgroup (it holds %s)\n%s", pid, fields["init"], out)
			}
		}
		if fields["subtree"] != fields["controllers"] {
			t.Errorf("controllers %s handed down, want all of %s\n%s", fields["subtree"], fields["controllers"], out)
		}
		if _, err := os.Stat(filepath.Join(cg, "init")); err != nil {
			t.Errorf("no init cgroup under the container's root: %v", err)
		}
	})
}

// runCgroupHelper runs cgroupHelper in the cgroup at dir, in a cgroup namespace rooted there:
// unshare, single-threaded, makes the namespace once it is in the cgroup, then runs the helper.
func runCgroupHelper(t *testing.T, dir string) string {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	cmd := exec.Command("unshare", "--cgroup", "--mount", "--propagation", "private", "--", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=cgroup")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	return string(out)
}

// parseHelper reads cgroupHelper's report: how many it moved, its lines by key, and the pids
// that had to move.
func parseHelper(out string) (moved int, fields map[string]string, want string) {
	fields = map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		key, value, _ := strings.Cut(line, " ")
		fields[key] = value
	}
	moved, _ = strconv.Atoi(fields["moved"])
	return moved, fields, fields["want"]
}
