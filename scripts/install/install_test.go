// Package install tests install.sh, the installer at the root of the repository, and the
// kone-killall.sh and uninstall scripts it writes.
//
// Every case runs in mount, network and PID namespaces of its own (util-linux unshare): empty
// tmpfs cover /usr/local/bin, /etc/systemd/system, /etc/init.d, /var/lib, /var/log and /run, an
// overlay with its upper layer in a tmpfs covers /etc, and the release files are served over the
// namespace's own loopback by this test binary, re-executed as the namespace's first process. So
// the scripts install, kill, unmount, delete links and rewrite iptables for real, and the host is
// untouched. systemctl, rc-update and rc-service are fakes that log their arguments.
package install

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// helperEnv names the plan file when this binary runs as a namespace's helper.
const helperEnv = "INSTALL_TEST_HELPER_PLAN"

func TestMain(m *testing.M) {
	if planFile := os.Getenv(helperEnv); planFile != "" {
		os.Exit(helper(planFile))
	}
	os.Exit(m.Run())
}

// plan is what the helper does inside the namespaces.
type plan struct {
	Dist    string   // served at http://127.0.0.1:PORT/, which INSTALL_KONE_DOWNLOAD_URL names
	Scratch string   // covered by a tmpfs holding the layers of /etc's overlay
	Hide    []string // commands to hide from the steps
	Path    string   // PATH of the steps
	Steps   []step
	Result  string // where the helper writes its outcome
}

type step struct {
	Argv []string
	Env  []string // on top of PATH, HOME, TMPDIR and INSTALL_KONE_DOWNLOAD_URL
}

type outcome struct {
	Error string // the helper's own failure
	Steps []stepOutcome
}

type stepOutcome struct {
	Output   string
	ExitCode int
	Requests []string             // the HTTP paths asked for during the step
	Files    map[string]fileState // everything under the watched directories after the step
	Mounts   []string             // mount points below them after the step
}

type fileState struct {
	Mode   fs.FileMode
	Link   string // a link's target
	SHA256 string // a regular file's
	Text   string // a regular file's content, up to 64 KiB
}

// Paths inside the namespace. tmpDir is the steps' TMPDIR, where the installer downloads to.
const (
	binDir     = "/usr/local/bin"
	systemdDir = "/etc/systemd/system"
	openrcDir  = "/etc/init.d"
	tmpDir     = "/run/kone-install-test-tmp"
)

// tmpfsDirs are covered by empty tmpfs; /etc is covered by an overlay whose changes are watched.
var tmpfsDirs = []string{binDir, systemdDir, openrcDir, "/var/lib", "/var/log", "/run"}

func helper(planFile string) int {
	data, err := os.ReadFile(planFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var p plan
	if err := json.Unmarshal(data, &p); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var out outcome
	if err := runPlan(&p, &out); err != nil {
		out.Error = err.Error()
	}
	data, err = json.Marshal(out)
	if err == nil {
		err = os.WriteFile(p.Result, data, 0o600)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func runPlan(p *plan, out *outcome) error {
	upper, err := isolate(p)
	if err != nil {
		return err
	}
	if err := checkIsolated(upper); err != nil {
		return err
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set lo up: %v: %s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var requests []string
	files := http.FileServer(http.Dir(p.Dist))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests = append(requests, r.URL.Path)
		mu.Unlock()
		files.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(l) }() // serves until the process ends
	env := []string{
		"PATH=" + p.Path,
		"HOME=/root",
		"LC_ALL=C",
		"TMPDIR=" + tmpDir,
		"INSTALL_KONE_DOWNLOAD_URL=http://" + l.Addr().String(),
		"INSTALL_KONE_GITHUB_URL=http://" + l.Addr().String() + "/github",
	}
	for _, s := range p.Steps {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, s.Argv[0], s.Argv[1:]...)
		cmd.Env = append(append([]string{}, env...), s.Env...)
		cmd.Dir = "/"
		output, err := cmd.CombinedOutput()
		cancel()
		var so stepOutcome
		so.Output = string(output)
		var exitErr *exec.ExitError
		switch {
		case errors.As(err, &exitErr):
			so.ExitCode = exitErr.ExitCode()
		case err != nil:
			return fmt.Errorf("%q: %v", s.Argv, err)
		}
		mu.Lock()
		so.Requests, requests = requests, nil
		mu.Unlock()
		if so.Files, err = snapshot(upper); err != nil {
			return err
		}
		if so.Mounts, err = mountsBelow(tmpfsDirs); err != nil {
			return err
		}
		out.Steps = append(out.Steps, so)
	}
	return nil
}

// isolate covers the installer's targets and returns the directory of /etc's changes.
func isolate(p *plan) (string, error) {
	if err := syscall.Mount("tmpfs", p.Scratch, "tmpfs", 0, "mode=0755"); err != nil {
		return "", fmt.Errorf("tmpfs on %s: %w", p.Scratch, err)
	}
	upper, work := filepath.Join(p.Scratch, "etc"), filepath.Join(p.Scratch, "work")
	for _, dir := range []string{upper, work} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return "", err
		}
	}
	opts := "lowerdir=/etc,upperdir=" + upper + ",workdir=" + work
	if err := syscall.Mount("overlay", "/etc", "overlay", 0, opts); err != nil {
		return "", fmt.Errorf("overlay on /etc: %w", err)
	}
	for _, dir := range tmpfsDirs {
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"); err != nil {
			return "", fmt.Errorf("tmpfs on %s: %w", dir, err)
		}
	}
	if err := os.Mkdir(tmpDir, 0o700); err != nil {
		return "", err
	}
	// Commands hidden in the PATH's system directories (not the first, the test's fakes): a file
	// without execute permission over each, so command -v no longer finds them.
	blank := filepath.Join(p.Scratch, "hidden")
	if err := os.WriteFile(blank, nil, 0o644); err != nil {
		return "", err
	}
	hidden := map[string]bool{}
	dirs := filepath.SplitList(p.Path)
	for _, name := range p.Hide {
		for _, dir := range dirs[1:] {
			path, err := filepath.EvalSymlinks(filepath.Join(dir, name))
			if err != nil || hidden[path] {
				continue
			}
			if err := syscall.Mount(blank, path, "", syscall.MS_BIND, ""); err != nil {
				return "", fmt.Errorf("hide %s: %w", path, err)
			}
			hidden[path] = true
		}
	}
	return upper, nil
}

// checkIsolated makes sure every target is an empty tmpfs (or, for /etc, an overlay whose
// upper layer is empty) before any script runs, and that there is no OpenRC to find.
func checkIsolated(upper string) error {
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	fsType := map[string]string{} // the last mount at each point is the one on top
	for _, line := range strings.Split(string(info), "\n") {
		fields := strings.Fields(line)
		for i, f := range fields {
			if f == "-" && i > 4 && i+1 < len(fields) {
				fsType[fields[4]] = fields[i+1]
			}
		}
	}
	want := map[string]string{"/etc": "overlay"}
	for _, dir := range tmpfsDirs {
		want[dir] = "tmpfs"
	}
	for dir, typ := range want {
		if fsType[dir] != typ {
			return fmt.Errorf("%s is %q, not a %s of this test", dir, fsType[dir], typ)
		}
	}
	files, err := snapshot(upper)
	if err != nil {
		return err
	}
	delete(files, tmpDir)
	if len(files) > 0 {
		return fmt.Errorf("targets not empty before the install: %v", sortedKeys(files))
	}
	if _, err := os.Stat("/sbin/openrc-run"); err == nil {
		return errors.New("/sbin/openrc-run exists: this test expects a host without OpenRC")
	}
	return nil
}

// snapshot describes everything under the tmpfs targets and the changes to /etc.
func snapshot(upper string) (map[string]fileState, error) {
	files := map[string]fileState{}
	walk := func(root, shownAs string) error {
		return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if path == root {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			st := fileState{Mode: info.Mode()}
			switch {
			case info.Mode()&fs.ModeSymlink != 0:
				if st.Link, err = os.Readlink(path); err != nil {
					return err
				}
			case info.Mode().IsRegular() && info.Size() > 64<<10:
				if st.SHA256, err = bigFileSHA256(path, info); err != nil {
					return err
				}
			case info.Mode().IsRegular():
				data, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				sum := sha256.Sum256(data)
				st.SHA256 = hex.EncodeToString(sum[:])
				st.Text = string(data)
			}
			files[shownAs+strings.TrimPrefix(path, root)] = st
			return nil
		})
	}
	for _, dir := range tmpfsDirs {
		if err := walk(dir, dir); err != nil {
			return nil, err
		}
	}
	if err := walk(upper, "/etc"); err != nil {
		return nil, err
	}
	return files, nil
}

// bigSums remembers the sums of big files (kone) between snapshots, by inode, size and time.
var bigSums = map[string]string{}

func bigFileSHA256(path string, info fs.FileInfo) (string, error) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("%s: no inode", path)
	}
	key := fmt.Sprint(path, st.Dev, st.Ino, info.Size(), info.ModTime().UnixNano())
	if sum, ok := bigSums[key]; ok {
		return sum, nil
	}
	sum, err := sha256File(path)
	if err != nil {
		return "", err
	}
	bigSums[key] = sum
	return sum, nil
}

// mountsBelow lists the mount points below dirs that were mounted over the test's tmpfs on each
// of them. Mounts that were there before (a kubelet's, from a test running beside this one) lie
// under the tmpfs, hidden, and are listed before it in /proc/self/mounts, which is in mount order.
func mountsBelow(dirs []string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		if fields := strings.Fields(line); len(fields) >= 2 {
			points = append(points, fields[1])
		}
	}
	var below []string
	for _, dir := range dirs {
		top := -1
		for i, p := range points {
			if p == dir {
				top = i
			}
		}
		for _, p := range points[top+1:] {
			if strings.HasPrefix(p, dir+"/") {
				below = append(below, p)
			}
		}
	}
	return below, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// --- the test's side ---

// release is a directory with what scripts/release publishes for this machine's architecture.
type release struct {
	dir, arch, binSum string
}

func makeRelease(t *testing.T, bin string) release {
	t.Helper()
	arch := runtime.GOARCH
	dir := t.TempDir()
	name := "kone-linux-" + arch
	if err := os.Symlink(bin, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("zstd", "-q", "-1", "-T0", "-o", filepath.Join(dir, name+".zst"), bin).CombinedOutput(); err != nil {
		t.Fatalf("zstd: %v\n%s", err, out)
	}
	binSum := fileSHA256(t, bin)
	sums := fmt.Sprintf("%s  %s\n%s  %s\n", fileSHA256(t, filepath.Join(dir, name+".zst")), name+".zst", binSum, name)
	if err := os.WriteFile(filepath.Join(dir, "sha256sum-"+arch+".txt"), []byte(sums), 0o644); err != nil {
		t.Fatal(err)
	}
	return release{dir: dir, arch: arch, binSum: binSum}
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	sum, err := sha256File(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// env holds one case's namespace settings and its fake init tools' log.
type env struct {
	t         *testing.T
	rel       release
	dist      string
	hideZstd  bool
	installer string
	fakeBin   string
	initLog   string
}

func newEnv(t *testing.T, rel release) *env {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", "install.sh"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, rel: rel, dist: rel.dir, installer: root, fakeBin: t.TempDir()}
	e.initLog = filepath.Join(e.fakeBin, "init.log")
	if err := os.WriteFile(e.initLog, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"systemctl", "rc-update", "rc-service"} {
		script := fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' \"%s $*\" >>'%s'\n", tool, e.initLog)
		if err := os.WriteFile(filepath.Join(e.fakeBin, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// run runs the steps in fresh namespaces and returns what each did.
func (e *env) run(steps ...step) []stepOutcome {
	t := e.t
	t.Helper()
	dir := t.TempDir()
	p := plan{
		Dist:    e.dist,
		Scratch: filepath.Join(dir, "scratch"),
		Hide:    []string{"kubectl", "ctr"},
		Path:    e.fakeBin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		Steps:   steps,
		Result:  filepath.Join(dir, "result.json"),
	}
	if e.hideZstd {
		p.Hide = append(p.Hide, "zstd") // the installer downloads the raw binary
	}
	if err := os.Mkdir(p.Scratch, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	planFile := filepath.Join(dir, "plan.json")
	if err := os.WriteFile(planFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--propagation", "private", self)
	cmd.Env = append(os.Environ(), helperEnv+"="+planFile)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("unshare helper: %v\n%s", err, out)
	}
	data, err = os.ReadFile(p.Result)
	if err != nil {
		t.Fatal(err)
	}
	var out outcome
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	if out.Error != "" {
		t.Fatalf("helper in the namespaces: %s", out.Error)
	}
	for i, s := range out.Steps {
		t.Logf("step %d %q: exit %d\n%s", i+1, steps[i].Argv, s.ExitCode, s.Output)
	}
	return out.Steps
}

// install is a step that runs install.sh with the arguments and environment given.
func (e *env) install(environ []string, args ...string) step {
	return step{Argv: append([]string{"sh", e.installer}, args...), Env: environ}
}

func shell(script string, environ ...string) step {
	return step{Argv: []string{"sh", "-c", script}, Env: environ}
}

func (e *env) initCalls() string {
	data, err := os.ReadFile(e.initLog)
	if err != nil {
		e.t.Fatal(err)
	}
	return string(data)
}

func koneBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("KONE_BIN")
	if bin == "" {
		t.Fatal("KONE_BIN is not set: run this test through scripts/test, which builds bin/kone and sets KONE_BIN to it")
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: the installer test needs %s", tool, strings.Join(tools, ", "))
		}
	}
}

func wantExit(t *testing.T, s stepOutcome, code int) {
	t.Helper()
	if code == 0 && s.ExitCode != 0 {
		t.Fatalf("exit %d, want success; output:\n%s", s.ExitCode, s.Output)
	}
	if code != 0 && s.ExitCode == 0 {
		t.Fatalf("succeeded, want failure; output:\n%s", s.Output)
	}
}

// wantEmpty checks that nothing is left in the targets but what keep allows.
func wantEmpty(t *testing.T, s stepOutcome, keep ...string) {
	t.Helper()
	var left []string
	for _, path := range sortedKeys(s.Files) {
		// What the tools leave: iptables' lock, util-linux mount's table.
		if path == tmpDir || path == "/run/xtables.lock" || path == "/run/mount" || strings.HasPrefix(path, "/run/mount/") {
			continue
		}
		kept := false
		for _, k := range keep {
			kept = kept || path == k
		}
		if !kept {
			left = append(left, path)
		}
	}
	if len(left) > 0 {
		t.Fatalf("left behind: %v\noutput:\n%s", left, s.Output)
	}
	if len(s.Mounts) > 0 {
		t.Fatalf("still mounted: %v", s.Mounts)
	}
}

func file(t *testing.T, s stepOutcome, path string) fileState {
	t.Helper()
	f, ok := s.Files[path]
	if !ok {
		t.Fatalf("%s does not exist; there are %v\noutput:\n%s", path, sortedKeys(s.Files), s.Output)
	}
	return f
}

func wantContains(t *testing.T, what, text string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(text, sub) {
			t.Errorf("%s lacks %q:\n%s", what, sub, text)
		}
	}
}

func wantRequests(t *testing.T, s stepOutcome, paths ...string) {
	t.Helper()
	got := append([]string{}, s.Requests...)
	sort.Strings(got)
	want := append([]string{}, paths...)
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("HTTP requests %q, want %q", got, want)
	}
}

// wantInstalled checks the binary, the links (kubectl and ctr unless said otherwise) and the
// scripts.
func wantInstalled(t *testing.T, rel release, s stepOutcome, uninstall string, links ...string) {
	t.Helper()
	if links == nil {
		links = []string{"kubectl", "ctr"}
	}
	kone := file(t, s, binDir+"/kone")
	if kone.Mode != 0o755 || kone.SHA256 != rel.binSum {
		t.Errorf("%s/kone: mode %v, sha256 %s; want -rwxr-xr-x and KONE_BIN's %s", binDir, kone.Mode, kone.SHA256, rel.binSum)
	}
	for _, name := range links {
		if link := file(t, s, binDir+"/"+name); link.Link != binDir+"/kone" {
			t.Errorf("%s/%s: mode %v, link %q; want a link to %s/kone", binDir, name, link.Mode, link.Link, binDir)
		}
	}
	for _, name := range []string{"kone-killall.sh", uninstall} {
		if f := file(t, s, binDir+"/"+name); f.Mode != 0o755 {
			t.Errorf("%s/%s: mode %v, want -rwxr-xr-x", binDir, name, f.Mode)
		}
	}
	if _, ok := s.Files[binDir+"/.kone.tmp"]; ok {
		t.Errorf("%s/.kone.tmp left behind", binDir)
	}
}

// envFile checks that a service's environment file is root's only and returns the variables it
// sets, read back by sh the way OpenRC reads it.
func envFile(t *testing.T, s stepOutcome, path string) map[string]string {
	t.Helper()
	f := file(t, s, path)
	if f.Mode != 0o600 {
		t.Errorf("%s: mode %v, want -rw-------", path, f.Mode)
	}
	copyPath := filepath.Join(t.TempDir(), "env")
	if err := os.WriteFile(copyPath, []byte(f.Text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `set -a; . "$1"; env -0`, "sh", copyPath)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sh cannot read %s: %v\n%s", path, err, f.Text)
	}
	vars := map[string]string{}
	for _, kv := range strings.Split(string(out), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "KONE_") {
			vars[k] = v
		}
	}
	return vars
}

// execStart returns the words of a unit's ExecStart= as systemd reads them.
func execStart(t *testing.T, unit string) []string {
	t.Helper()
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			return splitSystemd(t, v)
		}
	}
	t.Fatalf("no ExecStart= in\n%s", unit)
	return nil
}

// splitSystemd splits a systemd command line into words: double-quoted words with C escapes,
// $$ for $ and %% for %, which is what the installer writes.
func splitSystemd(t *testing.T, line string) []string {
	t.Helper()
	line = strings.ReplaceAll(strings.ReplaceAll(line, "%%", "%"), "$$", "$")
	var words []string
	var w strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line):
			i++
			w.WriteByte(line[i])
		case quoted && c == '"':
			quoted = false
		case !quoted && c == '"':
			quoted, inWord = true, true
		case !quoted && c == ' ':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		t.Fatalf("unterminated quote in %q", line)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

func wantWords(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
		t.Errorf("%s: %q, want %q", what, got, want)
	}
}

func shellcheck(t *testing.T, s stepOutcome, paths ...string) {
	t.Helper()
	dir := t.TempDir()
	for _, path := range paths {
		copyPath := filepath.Join(dir, filepath.Base(path))
		if err := os.WriteFile(copyPath, []byte(file(t, s, path).Text), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("shellcheck", "-s", "sh", copyPath).CombinedOutput(); err != nil {
			t.Errorf("shellcheck %s: %v\n%s", path, err, out)
		}
	}
}

const (
	// An odd argument and an odd variable, to check the quoting of the unit and the env file.
	oddArg   = `--node-label=note=100% "sure" $x \ 'y'`
	oddValue = "it's \"quoted\" $HOME \\ `tick` %n\nsecond line"
	token    = "K10f00dbabef00dbabef00dbabef00dbabef00dbabef00dbabef00dbabef00dbabe::abcdef.0123456789abcdef"
	secret   = "0123456789abcdef"
)

func TestInstall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the installer test must run as root: it makes namespaces and mounts (run it through scripts/test as root)")
	}
	needTools(t, "unshare", "zstd", "shellcheck", "ip", "curl", "sha256sum")
	rel := makeRelease(t, koneBin(t))
	zst := "/kone-linux-" + rel.arch + ".zst"
	raw := "/kone-linux-" + rel.arch
	sums := "/sha256sum-" + rel.arch + ".txt"
	systemd := "INSTALL_KONE_SYSTEMD_DIR=" + systemdDir

	t.Run("shellcheck", func(t *testing.T) {
		if out, err := exec.Command("shellcheck", "-s", "sh", filepath.Join("..", "..", "install.sh")).CombinedOutput(); err != nil {
			t.Fatalf("shellcheck -s sh install.sh: %v\n%s", err, out)
		}
	})

	t.Run("server", func(t *testing.T) {
		e := newEnv(t, rel)
		steps := e.run(
			e.install([]string{systemd, "KONE_NODE_NAME=n1", "KONE_ODD=" + oddValue, "INSTALL_KONE_OTHER=x"},
				"server", "--tls-san", "kone.example", oddArg),
			shell(binDir+"/kone --version"),
			shell(binDir+"/kone-killall.sh"),
		)
		s := steps[0]
		wantExit(t, s, 0)
		wantRequests(t, s, sums, zst)
		wantInstalled(t, rel, s, "kone-uninstall.sh")
		unit := file(t, s, systemdDir+"/kone.service").Text
		wantContains(t, "kone.service", unit, "Type=notify\n", "Delegate=yes\n", "KillMode=process\n",
			"Restart=always\n", "RestartSec=5s\n", "LimitNOFILE=1048576\n", "LimitNPROC=infinity\n", "TasksMax=infinity\n",
			"TimeoutStartSec=0\n", "EnvironmentFile=-"+systemdDir+"/kone.service.env\n",
			"ExecStartPre=-/sbin/modprobe br_netfilter\n", "ExecStartPre=-/sbin/modprobe overlay\n",
			"After=network-online.target\n", "WantedBy=multi-user.target\n")
		wantWords(t, "ExecStart", execStart(t, unit), binDir+"/kone", "server", "--tls-san", "kone.example", oddArg)
		vars := envFile(t, s, systemdDir+"/kone.service.env")
		if vars["KONE_NODE_NAME"] != "n1" || vars["KONE_ODD"] != oddValue || len(vars) != 2 {
			t.Errorf("kone.service.env sets %q, want KONE_NODE_NAME=n1 and KONE_ODD=%q", vars, oddValue)
		}
		shellcheck(t, s, binDir+"/kone-killall.sh", binDir+"/kone-uninstall.sh")
		wantContains(t, "systemctl calls", e.initCalls(), "systemctl daemon-reload\n", "systemctl enable kone\n", "systemctl restart kone\n")

		wantExit(t, steps[1], 0)
		wantExit(t, steps[2], 0)
		wantContains(t, "systemctl calls", e.initCalls(), "systemctl stop kone.service\n")
	})

	t.Run("bad checksum", func(t *testing.T) {
		e := newEnv(t, rel)
		e.dist = t.TempDir()
		for _, name := range []string{zst, raw} {
			if err := os.Symlink(filepath.Join(rel.dir, name), filepath.Join(e.dist, name)); err != nil {
				t.Fatal(err)
			}
		}
		bad := strings.Repeat("0", 64)
		wrong := fmt.Sprintf("%s  %s\n%s  %s\n", bad, zst[1:], bad, raw[1:])
		if err := os.WriteFile(filepath.Join(e.dist, sums), []byte(wrong), 0o644); err != nil {
			t.Fatal(err)
		}
		s := e.run(e.install([]string{systemd}, "server"))[0]
		wantExit(t, s, 1)
		wantContains(t, "output", s.Output, "sha256")
		wantEmpty(t, s)
		if e.initCalls() != "" {
			t.Errorf("systemctl called: %s", e.initCalls())
		}
	})

	t.Run("agent without token", func(t *testing.T) {
		e := newEnv(t, rel)
		steps := e.run(
			e.install([]string{systemd, "KONE_URL=https://127.0.0.1:6443"}),
			e.install([]string{systemd, "KONE_URL=https://127.0.0.1:6443", "KONE_TOKEN_FILE="}, "agent", "--node-name", "a1"),
			e.install([]string{systemd, "KONE_URL=http://127.0.0.1:6443", "KONE_TOKEN=" + token}, "agent"),
			e.install([]string{systemd, "KONE_TOKEN=" + token}, "agent"),
			e.install([]string{systemd, "KONE_URL=https://127.0.0.1:6443", "KONE_TOKEN_FILE=/etc/kone/no-such-token"}),
			e.install([]string{systemd, "KONE_URL=https://127.0.0.1:6443", "KONE_TOKEN_FILE=token"}),
		)
		for i, want := range []string{"KONE_TOKEN", "KONE_TOKEN", "https://", "KONE_URL", "/etc/kone/no-such-token", "absolute path"} {
			s := steps[i]
			wantExit(t, s, 1)
			wantContains(t, "output", s.Output, want)
			wantRequests(t, s)
			wantEmpty(t, s)
			if strings.Contains(s.Output, secret) {
				t.Errorf("the output shows the token:\n%s", s.Output)
			}
		}
	})

	t.Run("agent", func(t *testing.T) {
		e := newEnv(t, rel)
		e.hideZstd = true
		steps := e.run(
			e.install([]string{systemd, "KONE_URL=https://127.0.0.1:6443", "KONE_TOKEN=" + token}),
			e.install([]string{systemd, "KONE_URL=https://127.0.0.1:6443", "INSTALL_KONE_SKIP_DOWNLOAD=true"},
				"agent", "--token", token),
		)
		s := steps[0]
		wantExit(t, s, 0)
		wantRequests(t, s, sums, raw)
		wantInstalled(t, rel, s, "kone-agent-uninstall.sh")
		if strings.Contains(s.Output, secret) {
			t.Errorf("the output shows the token:\n%s", s.Output)
		}
		unit := file(t, s, systemdDir+"/kone-agent.service").Text
		wantWords(t, "ExecStart", execStart(t, unit), binDir+"/kone", "agent")
		wantContains(t, "kone-agent.service", unit, "EnvironmentFile=-"+systemdDir+"/kone-agent.service.env\n")
		vars := envFile(t, s, systemdDir+"/kone-agent.service.env")
		if vars["KONE_URL"] != "https://127.0.0.1:6443" || vars["KONE_TOKEN"] != token {
			t.Errorf("kone-agent.service.env sets %q, want KONE_URL and KONE_TOKEN", vars)
		}
		if _, ok := s.Files[systemdDir+"/kone.service"]; ok {
			t.Error("an agent install wrote kone.service")
		}
		wantContains(t, "systemctl calls", e.initCalls(), "systemctl daemon-reload\n", "systemctl enable kone-agent\n", "systemctl restart kone-agent\n")

		// The token on the command line is accepted, and hidden in the output.
		s = steps[1]
		wantExit(t, s, 0)
		wantRequests(t, s)
		if strings.Contains(s.Output, secret) {
			t.Errorf("the output shows the token:\n%s", s.Output)
		}
		unit = file(t, s, systemdDir+"/kone-agent.service").Text
		wantWords(t, "ExecStart", execStart(t, unit), binDir+"/kone", "agent", "--token", token)
	})

	t.Run("killall", func(t *testing.T) {
		e := newEnv(t, rel)
		// A node at work, in the namespaces: a kone server (dash under kone's name, running a
		// script called server) with a child, a shim with two containers' processes, another
		// from a data dir elsewhere that serves kone's containerd, a shim of another containerd
		// that must live on, the pod network's links, rules of kube-proxy and kone next to one
		// of the host's, kube-proxy's nftables tables next to another, mounts.
		node := shell(`set -e
mkdir -p /run/fake/data/v1/bin /run/fake/other /var/lib/kone/data/v1/bin /var/lib/kubelet/pods/p1/volumes/v1 \
	/run/kone/containerd/io /var/lib/cni/networks /run/netns
cp /bin/dash /run/fake/kone
cp /bin/dash /var/lib/kone/data/v1/bin/containerd-shim-runc-v2
cp /bin/dash /run/fake/data/v1/bin/containerd-shim-runc-v2
cp /bin/dash /run/fake/other/containerd-shim-runc-v2
echo 'sleep 1000' >/run/fake/server
echo 'sleep 1000 & sleep 1000' >/run/fake/shim
echo 'sleep 1001' >/run/fake/foreign
cd /run/fake
./kone server >/dev/null 2>&1 &
/var/lib/kone/data/v1/bin/containerd-shim-runc-v2 shim >/dev/null 2>&1 &
/run/fake/data/v1/bin/containerd-shim-runc-v2 shim -address /run/kone/containerd/containerd.sock >/dev/null 2>&1 &
/run/fake/other/containerd-shim-runc-v2 foreign -address /run/containerd/containerd.sock >/dev/null 2>&1 &
unshare --mount /run/fake/kone server >/dev/null 2>&1 &
ip link add cni0 type bridge
ip link add veth1 type veth peer name eth0x
ip link set veth1 master cni0
ip link add flannel.1 type vxlan id 1 dstport 8472
iptables -t nat -N KONE-POSTROUTING
iptables -t nat -A POSTROUTING -j KONE-POSTROUTING
iptables -N KUBE-FORWARD
iptables -A FORWARD -j KUBE-FORWARD
iptables -A INPUT -s 10.9.9.9 -j ACCEPT
ip6tables -N KUBE-FORWARD
ip6tables -A FORWARD -j KUBE-FORWARD
nft add table ip kube-proxy
nft add table ip6 kube-proxy
nft add table ip kone-netpol
nft add table ip other
mount -t tmpfs tmpfs /var/lib/kubelet/pods/p1/volumes/v1
mount -t tmpfs tmpfs /run/kone/containerd/io
touch /run/netns/cni-1234
mount --bind /run/netns/cni-1234 /run/netns/cni-1234
sleep 0.2`)
		check := shell(`
fail() { echo "$*"; exit 1; }
foreign=
elsewhere=
self=$(readlink /proc/self/ns/mnt)
exes=$(for p in /proc/[0-9]*; do
	exe=$(readlink "$p/exe") || continue
	case $exe in /run/fake/other/*) continue ;; esac
	[ "$(readlink "$p/ns/mnt")" = "$self" ] || continue # a kone in a container of its own
	case $(tr '\0' ' ' <"$p/cmdline") in "sleep 1001 ") continue ;; esac # the other shim's container
	printf '%s\n' "$exe"
done)
case $exes in *sleep* | */run/fake/kone* | *containerd-shim*) fail "still running: $exes" ;; esac
for p in /proc/[0-9]*; do
	[ "$(readlink "$p/exe")" = /run/fake/other/containerd-shim-runc-v2 ] && foreign=yes
done
[ -n "$foreign" ] || fail "the other containerd's shim was killed"
for p in /proc/[0-9]*; do
	[ "$(readlink "$p/exe")" = /run/fake/kone ] && [ "$(readlink "$p/ns/mnt")" != "$self" ] && elsewhere=yes
done
[ -n "$elsewhere" ] || fail "the kone in another mount namespace was stopped"
for link in cni0 veth1 flannel.1; do
	if ip link show "$link" >/dev/null 2>&1; then fail "link $link left"; fi
done
if iptables-save | grep -e KUBE- -e KONE-; then fail "iptables rules left"; fi
if ip6tables-save | grep -e KUBE- -e KONE-; then fail "ip6tables rules left"; fi
iptables-save | grep -q 10.9.9.9 || fail "the host's rule is gone"
if nft list table ip kube-proxy || nft list table ip6 kube-proxy || nft list table ip kone-netpol; then fail "nftables tables left"; fi
nft list table ip other >/dev/null || fail "the host's nftables table is gone"
echo checked`)
		steps := e.run(
			e.install([]string{systemd, "INSTALL_KONE_SKIP_START=true"}, "server"),
			node,
			check,
			shell(binDir+"/kone-killall.sh"),
			check,
			shell(binDir+"/kone-killall.sh"),
		)
		wantExit(t, steps[0], 0)
		wantExit(t, steps[1], 0)
		wantExit(t, steps[2], 1) // the check sees the node
		if len(steps[1].Mounts) != 3 {
			t.Fatalf("the node's mounts: %v", steps[1].Mounts)
		}
		s := steps[3]
		wantExit(t, s, 0)
		wantContains(t, "kone-killall.sh's output", s.Output, "Stopping kone processes", "Killing the containers' shims",
			"Deleting link cni0", "Deleting link flannel.1", "Deleting kone's rules from iptables",
			"Deleting nftables table ip kube-proxy", "Deleting nftables table ip kone-netpol")
		wantExit(t, steps[4], 0)
		if len(s.Mounts) != 0 {
			t.Errorf("still mounted: %v", s.Mounts)
		}
		for _, path := range sortedKeys(s.Files) {
			if strings.HasPrefix(path, "/var/lib/cni") {
				t.Errorf("%s left", path)
			}
		}
		wantExit(t, steps[5], 0) // again, with nothing to do
	})

	t.Run("uninstall", func(t *testing.T) {
		e := newEnv(t, rel)
		// What a node leaves behind: data, a kubeconfig, a pod's volume mounted, a network
		// namespace, logs.
		leftovers := shell(`set -e
mkdir -p /etc/kone /var/lib/kone/server /run/kone/containerd /var/lib/kubelet/pods/p1/volumes/v1 \
	/var/lib/cni/networks /var/log/pods/p1 /var/log/containers /run/netns
echo data >/var/lib/kone/server/token
echo config >/etc/kone/kone.yaml
echo state >/var/lib/cni/networks/last
echo log >/var/log/pods/p1/0.log
ln -s /var/log/pods/p1/0.log /var/log/containers/c1.log
mount -t tmpfs tmpfs /var/lib/kubelet/pods/p1/volumes/v1
echo secret >/var/lib/kubelet/pods/p1/volumes/v1/key
touch /run/netns/cni-1234
mount --bind /run/netns/cni-1234 /run/netns/cni-1234`)
		steps := e.run(
			e.install([]string{systemd, "KONE_NODE_NAME=n1"}, "server"),
			leftovers,
			shell(binDir+"/kone-uninstall.sh"),
			e.install([]string{systemd, "KONE_URL=https://127.0.0.1:6443", "KONE_TOKEN=" + token}, "agent"),
			leftovers,
			shell(binDir+"/kone-agent-uninstall.sh"),
		)
		for i := range steps {
			wantExit(t, steps[i], 0)
		}
		wantInstalled(t, rel, steps[0], "kone-uninstall.sh")
		if len(steps[1].Mounts) != 2 {
			t.Fatalf("the leftovers' mounts: %v", steps[1].Mounts)
		}
		wantEmpty(t, steps[2], "/run/netns")
		wantInstalled(t, rel, steps[3], "kone-agent-uninstall.sh")
		wantEmpty(t, steps[5], "/run/netns")
		wantContains(t, "systemctl calls", e.initCalls(), "systemctl disable kone\n", "systemctl disable kone-agent\n")
	})

	t.Run("server and agent", func(t *testing.T) {
		e := newEnv(t, rel)
		steps := e.run(
			e.install([]string{systemd}, "server"),
			e.install([]string{systemd, "KONE_URL=https://127.0.0.1:6443", "KONE_TOKEN=" + token}),
			shell(binDir+"/kone-agent-uninstall.sh"),
			shell(binDir+"/kone-uninstall.sh"),
		)
		for i := range steps {
			wantExit(t, steps[i], 0)
		}
		// The second install made no links, but records those the first made.
		wantInstalled(t, rel, steps[1], "kone-agent-uninstall.sh")
		s := steps[2]
		wantInstalled(t, rel, s, "kone-uninstall.sh")
		file(t, s, systemdDir+"/kone.service")
		for _, gone := range []string{systemdDir + "/kone-agent.service", systemdDir + "/kone-agent.service.env", binDir + "/kone-agent-uninstall.sh"} {
			if _, ok := s.Files[gone]; ok {
				t.Errorf("%s left after the agent's uninstall", gone)
			}
		}
		wantEmpty(t, steps[3])
	})

	t.Run("version and bin dir", func(t *testing.T) {
		e := newEnv(t, rel)
		// A mirror laid out like GitHub's release pages.
		e.dist = t.TempDir()
		for _, dir := range []string{"github/releases/download/v9.9.9", "github/releases/latest/download"} {
			path := filepath.Join(e.dist, dir)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(rel.dir, path); err != nil {
				t.Fatal(err)
			}
		}
		const bin = "/var/lib/extra/bin"
		settings := []string{systemd, "INSTALL_KONE_DOWNLOAD_URL=", "INSTALL_KONE_BIN_DIR=" + bin,
			"INSTALL_KONE_SKIP_SYMLINK=true", "INSTALL_KONE_SKIP_ENABLE=true"}
		steps := e.run(
			e.install(append(settings, "INSTALL_KONE_VERSION=v9.9.9"), "server"),
			e.install(settings, "server"),
			shell(bin+"/kone-uninstall.sh"),
		)
		s := steps[0]
		wantExit(t, s, 0)
		wantRequests(t, s, "/github/releases/download/v9.9.9"+sums, "/github/releases/download/v9.9.9"+zst)
		if kone := file(t, s, bin+"/kone"); kone.Mode != 0o755 || kone.SHA256 != rel.binSum {
			t.Errorf("%s/kone: mode %v, sha256 %s; want -rwxr-xr-x and %s", bin, kone.Mode, kone.SHA256, rel.binSum)
		}
		for _, name := range []string{"kone-killall.sh", "kone-uninstall.sh"} {
			if f := file(t, s, bin+"/"+name); f.Mode != 0o755 {
				t.Errorf("%s/%s: mode %v, want -rwxr-xr-x", bin, name, f.Mode)
			}
		}
		for path := range s.Files {
			if strings.HasPrefix(path, binDir+"/") || strings.HasSuffix(path, "/kubectl") || strings.HasSuffix(path, "/ctr") {
				t.Errorf("%s written: INSTALL_KONE_BIN_DIR is %s and INSTALL_KONE_SKIP_SYMLINK is set", path, bin)
			}
		}
		unit := file(t, s, systemdDir+"/kone.service").Text
		wantWords(t, "ExecStart", execStart(t, unit), bin+"/kone", "server")
		wantRequests(t, steps[1], "/github/releases/latest/download"+sums, "/github/releases/latest/download"+zst)
		wantExit(t, steps[1], 0)
		calls := e.initCalls()
		wantContains(t, "systemctl calls", calls, "systemctl daemon-reload\n")
		if strings.Contains(calls, "enable") || strings.Contains(calls, "restart") {
			t.Errorf("INSTALL_KONE_SKIP_ENABLE=true, but kone was enabled or started:\n%s", calls)
		}
		wantExit(t, steps[2], 0)
		wantEmpty(t, steps[2], "/var/lib/extra", bin)
	})

	t.Run("airgap", func(t *testing.T) {
		e := newEnv(t, rel)
		airgap := []string{systemd, "INSTALL_KONE_SKIP_DOWNLOAD=true", "INSTALL_KONE_SKIP_START=true"}
		steps := e.run(
			e.install(airgap, "server"),
			shell(`cp "$KONE_BIN" `+binDir+`/kone`, "KONE_BIN="+koneBin(t)),
			e.install(append(airgap, "INSTALL_KONE_EXEC=server --tls-san  from-exec"), "--node-name", "n1"),
		)
		wantExit(t, steps[0], 1)
		wantContains(t, "output", steps[0].Output, binDir+"/kone")
		wantEmpty(t, steps[0])
		wantExit(t, steps[2], 0)
		wantInstalled(t, rel, steps[2], "kone-uninstall.sh")
		unit := file(t, steps[2], systemdDir+"/kone.service").Text
		wantWords(t, "ExecStart", execStart(t, unit), binDir+"/kone", "server", "--tls-san", "from-exec", "--node-name", "n1")
		for _, s := range steps {
			wantRequests(t, s)
		}
		calls := e.initCalls()
		wantContains(t, "systemctl calls", calls, "systemctl enable kone\n")
		if strings.Contains(calls, "restart") {
			t.Errorf("INSTALL_KONE_SKIP_START=true, but kone was started:\n%s", calls)
		}
	})

	t.Run("no init system", func(t *testing.T) {
		e := newEnv(t, rel)
		// A kubectl of the host's own, which the installer leaves alone.
		if err := os.WriteFile(filepath.Join(e.fakeBin, "kubectl"), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		steps := e.run(
			e.install([]string{"KONE_TOKEN=" + token}, "server", "--tls-san", "kone.example"),
			shell(binDir+"/kone-killall.sh"),
			shell(binDir+"/kone-uninstall.sh"),
		)
		s := steps[0]
		wantExit(t, s, 0)
		wantInstalled(t, rel, s, "kone-uninstall.sh", "ctr")
		if _, ok := s.Files[binDir+"/kubectl"]; ok {
			t.Errorf("%s/kubectl made, though there is a kubectl on PATH", binDir)
		}
		wantContains(t, "output", s.Output, e.fakeBin+"/kubectl exists", ". /etc/kone/kone.env; exec "+binDir+"/kone server --tls-san kone.example)")
		if strings.Contains(s.Output, secret) {
			t.Errorf("the output shows the token:\n%s", s.Output)
		}
		if vars := envFile(t, s, "/etc/kone/kone.env"); vars["KONE_TOKEN"] != token {
			t.Errorf("/etc/kone/kone.env sets %q, want KONE_TOKEN", vars)
		}
		for path := range s.Files {
			if strings.HasPrefix(path, systemdDir+"/") || strings.HasPrefix(path, openrcDir+"/") {
				t.Errorf("%s written without an init system", path)
			}
		}
		wantExit(t, steps[1], 0)
		wantExit(t, steps[2], 0)
		wantEmpty(t, steps[2])
		if calls := e.initCalls(); calls != "" {
			t.Errorf("init tools called without an init system:\n%s", calls)
		}
	})

	t.Run("openrc", func(t *testing.T) {
		e := newEnv(t, rel)
		steps := e.run(
			e.install([]string{"INSTALL_KONE_OPENRC_DIR=" + openrcDir, "KONE_NODE_NAME=n1"}, "server", "--tls-san", "kone.example", oddArg),
			// What supervise-daemon would have written while kone ran.
			shell("echo started >/var/log/kone.log && "+binDir+"/kone-uninstall.sh"),
		)
		s := steps[0]
		wantExit(t, s, 0)
		wantInstalled(t, rel, s, "kone-uninstall.sh")
		script := file(t, s, openrcDir+"/kone")
		if script.Mode != 0o755 {
			t.Errorf("%s/kone: mode %v, want -rwxr-xr-x", openrcDir, script.Mode)
		}
		wantContains(t, openrcDir+"/kone", script.Text, "#!/sbin/openrc-run\n", "supervisor=supervise-daemon\n",
			`command="`+binDir+`/kone"`, `output_log="/var/log/kone.log"`, "respawn_max=0\n", "/etc/kone/kone.env")
		// supervise-daemon evals the command line: read it back the same way.
		copyPath := filepath.Join(t.TempDir(), "kone")
		if err := os.WriteFile(copyPath, []byte(script.Text), 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("sh", "-c", `. "$1"; eval "set -- $command_args"; printf '%s\0' "$@"`, "sh", copyPath).Output()
		if err != nil {
			t.Fatalf("sh cannot read %s/kone: %v\n%s", openrcDir, err, script.Text)
		}
		wantWords(t, "command_args", strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00"),
			"server", "--tls-san", "kone.example", oddArg)
		if vars := envFile(t, s, "/etc/kone/kone.env"); vars["KONE_NODE_NAME"] != "n1" {
			t.Errorf("/etc/kone/kone.env sets %q, want KONE_NODE_NAME=n1", vars)
		}
		wantContains(t, "OpenRC calls", e.initCalls(), "rc-update add kone default\n", "rc-service kone restart\n")

		wantExit(t, steps[1], 0)
		wantEmpty(t, steps[1])
		wantContains(t, "OpenRC calls", e.initCalls(), "rc-update delete kone default\n")
	})
}
