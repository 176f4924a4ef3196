package host

import (
	"strings"
	"testing"
)

func TestMissingNamesEssentialsAndFixes(t *testing.T) {
	findings := []Finding{
		{Name: "overlayfs", OK: true, Essential: true},
		{Name: "nft", OK: false, Essential: false, Detail: "not found", Fix: "install nftables"},
		{Name: "iptables", OK: false, Essential: true, Detail: "not found on PATH", Fix: "install iptables"},
	}
	err := Missing(findings)
	if err == nil {
		t.Fatal("a missing essential must be an error")
	}
	for _, want := range []string{"iptables: not found on PATH; install iptables", "kone check-config", "--disable-agent"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "nftables") || strings.Contains(err.Error(), "overlayfs") {
		t.Errorf("error names what is optional or present:\n%v", err)
	}
	if err := Missing(findings[:2]); err != nil {
		t.Errorf("only an optional item missing: %v", err)
	}
}

// TestCheckOnThisHost: the machine the tests run on has what the node side needs (the
// integration tests run pods on it), and every finding says what it looked at.
func TestCheckOnThisHost(t *testing.T) {
	for _, f := range Check(false) {
		if f.Detail == "" || f.Fix == "" && !f.OK {
			t.Errorf("finding without detail or fix: %+v", f)
		}
		if f.Essential && !f.OK {
			t.Errorf("%s is missing here: %s", f.Name, f.Detail)
		}
	}
}

// The kernel settings kubelet protects under --profile=cis are listed always, and are
// essential only with the profile; each says the value kubelet wants and how to set it.
func TestKernelDefaults(t *testing.T) {
	plain, cis := Check(false), Check(true)
	if len(cis) != len(plain) {
		t.Fatalf("%d findings with cis, %d without", len(cis), len(plain))
	}
	seen := 0
	for i, f := range cis {
		if !strings.Contains(f.Name, "vm.") && !strings.Contains(f.Name, "kernel.") {
			continue
		}
		seen++
		if !f.Essential || plain[i].Essential {
			t.Errorf("%s: essential %v with cis, %v without", f.Name, f.Essential, plain[i].Essential)
		}
		if !strings.Contains(f.Fix, "sysctl -w "+f.Name+"=") {
			t.Errorf("%s: fix %q does not say how to set it", f.Name, f.Fix)
		}
	}
	if seen != 6 {
		t.Errorf("%d kernel settings listed, want kubelet's 6", seen)
	}
}
