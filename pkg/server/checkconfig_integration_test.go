package server_test

import (
	"errors"
	"os/exec"
	"regexp"
	"testing"
)

// TestCheckConfigOnABareHost runs `kone check-config` where no host program is on PATH, as on
// a minimal image: iptables, which pods need, is MISSING with its fix and the command exits 1;
// nft, needed only for kube-proxy's nftables mode, is listed as optional; what the kernel
// provides is still found.
func TestCheckConfigOnABareHost(t *testing.T) {
	cmd := exec.Command(koneBinary(t), "check-config")
	cmd.Env = []string{"PATH=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("kone check-config without iptables: %v, want exit status 1\n%s", err, out)
	}
	for _, want := range []string{
		`(?m)^iptables\s+MISSING\s+.*\n\s+fix: kone and kube-proxy write their rules with it: install iptables`,
		`(?m)^nft\s+missing \(optional\)`,
		`(?m)^nf_tables\s+ok\s`,
		`(?m)^network namespaces\s+ok\s`,
		`lacks what the node side needs .*\n\s+iptables: not found on PATH; `,
	} {
		if !regexp.MustCompile(want).Match(out) {
			t.Errorf("kone check-config's output lacks %s:\n%s", want, out)
		}
	}
}
