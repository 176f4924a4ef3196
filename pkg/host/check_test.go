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
	for _, f := range Check() {
		if f.Detail == "" || f.Fix == "" && !f.OK {
			t.Errorf("finding without detail or fix: %+v", f)
		}
		if f.Essential && !f.OK {
			t.Errorf("%s is missing here: %s", f.Name, f.Detail)
		}
	}
}
