// Package dist tests what scripts/release and scripts/image make: the release binaries for each
// architecture with their sums and compressed copies, and the container image. scripts/test runs
// scripts/release first and points KONE_DIST at its output.
package dist

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

const compressedLimit = 70 << 20 // k3s's own limit for its amd64 binary

// arches maps each release architecture to its ELF machine and the qemu-user-static program
// that runs it on an amd64 host ("" where no emulation is needed).
var arches = []struct {
	name    string
	machine elf.Machine
	qemu    string
}{
	{"amd64", elf.EM_X86_64, ""},
	{"arm64", elf.EM_AARCH64, "qemu-aarch64-static"},
	{"arm", elf.EM_ARM, "qemu-arm-static"},
}

func distDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("KONE_DIST")
	if dir == "" {
		t.Fatal("KONE_DIST must name the dist/ directory scripts/release wrote (scripts/test sets it)")
	}
	return dir
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func TestReleaseArtifacts(t *testing.T) {
	dist := distDir(t)
	for _, a := range arches {
		t.Run(a.name, func(t *testing.T) {
			bin := filepath.Join(dist, "kone-linux-"+a.name)
			sums := readSums(t, filepath.Join(dist, "sha256sum-"+a.name+".txt"))
			for _, name := range []string{"kone-linux-" + a.name, "kone-linux-" + a.name + ".zst"} {
				want, ok := sums[name]
				if !ok {
					t.Fatalf("sha256sum-%s.txt has no line for %s", a.name, name)
				}
				if got := fileSum(t, filepath.Join(dist, name)); got != want {
					t.Errorf("%s: sha256 %s, sums file says %s", name, got, want)
				}
			}

			raw, err := os.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			compressed, err := os.ReadFile(bin + ".zst")
			if err != nil {
				t.Fatal(err)
			}
			if got := decompress(t, compressed); !bytes.Equal(got, raw) {
				t.Errorf("%s.zst does not decompress to %s", bin, bin)
			}
			t.Logf("%s: %.1f MiB, compressed %.1f MiB", filepath.Base(bin), mib(len(raw)), mib(len(compressed)))
			if a.name == "amd64" && len(compressed) > compressedLimit {
				t.Errorf("%s.zst is %.1f MiB, over the 70 MiB limit", bin, mib(len(compressed)))
			}

			checkMachine(t, filepath.Base(bin), bytes.NewReader(raw), a.machine)
			checkHelpers(t, raw, filepath.Join(repoRoot(t), "pkg/data/assets", a.name, "helpers.tar.zst"), a.machine)

			cmd := exec.Command(bin, "--version")
			if a.qemu != "" {
				cmd = exec.Command(a.qemu, bin, "--version")
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
			}
			for _, want := range []string{"kone version v", "kubernetes v1.", "etcd v3.", "containerd v2."} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s printed %q, want it to contain %q", strings.Join(cmd.Args, " "), out, want)
				}
			}
			if strings.Contains(string(out), "v0.0.0") {
				t.Errorf("versions are not stamped: %s", out)
			}
		})
	}
}

// The installer is published with the binaries: install.sh's default URL is the latest
// release's install.sh.
func TestReleaseHasInstaller(t *testing.T) {
	published, err := os.ReadFile(filepath.Join(distDir(t), "install.sh"))
	if err != nil {
		t.Fatal(err)
	}
	source, err := os.ReadFile(filepath.Join(repoRoot(t), "install.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(published, source) {
		t.Error("dist/install.sh differs from install.sh: scripts/release did not publish the installer")
	}
	if info, err := os.Stat(filepath.Join(distDir(t), "install.sh")); err == nil && info.Mode().Perm() != 0o755 {
		t.Errorf("dist/install.sh: mode %v, want -rwxr-xr-x", info.Mode())
	}
}

// checkHelpers checks that the binary embeds the helpers archive built for its architecture and
// that every program in that archive is built for the same machine.
func checkHelpers(t *testing.T, binary []byte, archive string, machine elf.Machine) {
	t.Helper()
	data, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(binary, data) {
		t.Fatalf("the binary does not embed %s", archive)
	}
	tr := tar.NewReader(bytes.NewReader(decompress(t, data)))
	programs := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", archive, err)
		}
		if hdr.Typeflag != tar.TypeReg || hdr.Name == "SHA256SUMS" {
			continue
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		checkMachine(t, hdr.Name, bytes.NewReader(body), machine)
		programs++
	}
	// runc, the shim, five CNI plugins and pause.
	if programs != 8 {
		t.Errorf("%s holds %d programs, want 8", archive, programs)
	}
}

func checkMachine(t *testing.T, name string, r io.ReaderAt, want elf.Machine) {
	t.Helper()
	f, err := elf.NewFile(r)
	if err != nil {
		t.Errorf("%s: not an ELF file: %v", name, err)
		return
	}
	if f.Machine != want {
		t.Errorf("%s is built for %v, want %v", name, f.Machine, want)
	}
}

func readSums(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sums := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			t.Fatalf("%s: malformed line %q", path, sc.Text())
		}
		sums[strings.TrimPrefix(fields[1], "*")] = fields[0]
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sums
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func decompress(t *testing.T, data []byte) []byte {
	t.Helper()
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	out, err := dec.DecodeAll(data, nil)
	if err != nil {
		t.Fatalf("zstd: %v", err)
	}
	return out
}

func mib(n int) float64 { return float64(n) / (1 << 20) }

// TestImage builds the container image the offline way (scripts/image, FROM scratch, with
// buildah) from the amd64 release binary and runs what kone needs inside its root filesystem.
func TestImage(t *testing.T) {
	bin := filepath.Join(distDir(t), "kone-linux-amd64")
	tag := "localhost/kone-test:" + filepath.Base(t.TempDir())
	run(t, filepath.Join(repoRoot(t), "scripts/image"), "amd64", bin, tag)
	t.Cleanup(func() { exec.Command("buildah", "--storage-driver", "vfs", "rmi", "-f", tag).Run() })

	var image struct {
		OCIv1 struct {
			Config struct {
				Entrypoint []string
				Cmd        []string
			} `json:"config"`
		}
	}
	inspect := run(t, "buildah", "--storage-driver", "vfs", "inspect", "--type", "image", tag)
	if err := json.Unmarshal([]byte(inspect), &image); err != nil {
		t.Fatalf("buildah inspect: %v\n%s", err, inspect)
	}
	config := image.OCIv1.Config
	if got := strings.Join(config.Entrypoint, " "); got != "/usr/bin/kone" {
		t.Errorf("entrypoint %q, want /usr/bin/kone", got)
	}
	if got := strings.Join(config.Cmd, " "); got != "server" {
		t.Errorf("cmd %q, want server", got)
	}

	container := strings.TrimSpace(run(t, "buildah", "--storage-driver", "vfs", "from", tag))
	t.Cleanup(func() { exec.Command("buildah", "--storage-driver", "vfs", "rm", container).Run() })
	root := strings.TrimSpace(run(t, "buildah", "--storage-driver", "vfs", "mount", container))
	t.Cleanup(func() { exec.Command("buildah", "--storage-driver", "vfs", "umount", container).Run() })

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"/usr/bin/kone", "--version"}, "kone version v"},
		{[]string{"/usr/bin/kubectl", "version", "--client"}, "Client Version: v1."},
		{[]string{"/usr/sbin/iptables", "--version"}, "nf_tables"},
		{[]string{"/usr/sbin/iptables-legacy", "--version"}, "legacy"},
		{[]string{"/usr/sbin/nft", "--version"}, "nftables"},
		{[]string{"/usr/bin/mount", "--version"}, "util-linux"},
	} {
		out := run(t, "chroot", append([]string{root}, c.args...)...)
		if !strings.Contains(out, c.want) {
			t.Errorf("%s in the image printed %q, want %q", strings.Join(c.args, " "), out, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt")); err != nil {
		t.Errorf("the image has no CA certificates: %v", err)
	}

	// As a container's PID 1, kone runs itself as its child and passes on its exit code.
	if err := os.MkdirAll(filepath.Join(root, "proc"), 0o555); err != nil {
		t.Fatal(err)
	}
	asInit := func(args ...string) *exec.Cmd {
		return exec.Command("unshare", append([]string{"--pid", "--fork", "--mount", "--mount-proc=" + filepath.Join(root, "proc"),
			"chroot", root, "/usr/bin/kone"}, args...)...)
	}
	if out, err := asInit("--version").CombinedOutput(); err != nil || !strings.Contains(string(out), "kone version v") {
		t.Errorf("kone --version as PID 1 in the image: %v\n%s", err, out)
	}
	out, err := asInit("no-such-command").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 || !strings.Contains(string(out), "no-such-command") {
		t.Errorf("kone no-such-command as PID 1 in the image: %v, want its failure passed on\n%s", err, out)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
