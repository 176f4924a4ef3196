package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kone-dev/kone/pkg/pki"
)

func TestPrintCertificates(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	fine := []pki.Held{
		{File: "/var/lib/kone/server/tls/server-ca.crt", Subject: "kone-server-ca@1", Issuer: "kone-server-ca@1", NotAfter: now.AddDate(9, 0, 0), IsCA: true},
		{File: "/var/lib/kone/server/tls/client-admin.crt", Subject: "system:admin", Issuer: "kone-client-ca@1", NotAfter: now.Add(31 * 24 * time.Hour)},
	}
	var out bytes.Buffer
	if err := printCertificates(&out, fine, "/var/lib/kone", now); err != nil {
		t.Errorf("31 days left: %v", err)
	}
	table := out.String()
	for _, want := range []string{"FILE", "DAYS LEFT", "server/tls/client-admin.crt", "system:admin", "kone-client-ca@1", "2027-01-01T00:00:00Z", " 31\n"} {
		if !strings.Contains(table, want) {
			t.Errorf("the table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "/var/lib/kone/server") {
		t.Errorf("paths are not relative to the data dir:\n%s", table)
	}

	soon := append(fine, pki.Held{File: "/var/lib/kone/agent/tls/kubelet.crt", Subject: "system:node:n1", NotAfter: now.Add(29 * 24 * time.Hour)},
		pki.Held{File: "/var/lib/kone/agent/tls/kube-proxy.crt", Subject: "system:kube-proxy", NotAfter: now.Add(-time.Hour)})
	err := printCertificates(&bytes.Buffer{}, soon, "/var/lib/kone", now)
	if err == nil || !strings.Contains(err.Error(), "2 certificates") || !strings.Contains(err.Error(), "agent/tls/kubelet.crt") ||
		!strings.Contains(err.Error(), "kube-proxy.crt") || strings.Contains(err.Error(), "client-admin") || !strings.Contains(err.Error(), "certificate rotate") {
		t.Errorf("29 days left and expired: %v", err)
	}
	ca := []pki.Held{{File: "/var/lib/kone/server/tls/server-ca.crt", Subject: "kone-server-ca@1", NotAfter: now.Add(10 * 24 * time.Hour), IsCA: true}}
	if err := printCertificates(&bytes.Buffer{}, ca, "/var/lib/kone", now); err == nil || !strings.Contains(err.Error(), "certificate authorities") ||
		!strings.Contains(err.Error(), "certificate rotate-ca") {
		t.Errorf("a CA 10 days from expiry: %v", err)
	}
}

// An agent's machine is checked with the agent's flags or config file, which a server's would refuse.
func TestCertificateCheckOnAnAgent(t *testing.T) {
	dataDir := t.TempDir()
	if _, err := pki.EnsureCA(filepath.Join(dataDir, "agent", "tls"), "server-ca", time.Now()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	configFile := filepath.Join(dir, "config.yaml")
	write := func(content string) {
		if err := os.WriteFile(configFile, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	check := func(args ...string) (string, error) {
		c := newCertificateCheckCommand()
		var out bytes.Buffer
		c.SetOut(&out)
		c.SetErr(&bytes.Buffer{})
		c.SetArgs(append([]string{"--config", configFile}, args...))
		err := c.Execute()
		return out.String(), err
	}

	write("server: https://10.0.0.1:6443\ntoken-file: " + filepath.Join(dir, "token") + "\nnode-label: [zone=a]\ndata-dir: " + dataDir + "\n")
	if out, err := check(); err != nil || !strings.Contains(out, "agent/tls/server-ca.crt") {
		t.Errorf("an agent's config file: %v\n%s", err, out)
	}
	// The flags of either role on the command line, as a user copies them from the unit file.
	if out, err := check("--token-file", "/nowhere", "--https-listen-port", "7443", "--data-dir", dataDir); err != nil || !strings.Contains(out, "server-ca") {
		t.Errorf("an agent's and a server's flags: %v\n%s", err, out)
	}
	write("data-dir: " + dataDir + "\nnode-lable: [zone=a]\n")
	if _, err := check(); err == nil || !strings.Contains(err.Error(), `"node-lable"`) {
		t.Errorf("a key that is no flag of either role: %v", err)
	}
	write("data-dir: " + t.TempDir() + "\n")
	if _, err := check(); err == nil || !strings.Contains(err.Error(), "no certificates") {
		t.Errorf("a data dir without certificates: %v", err)
	}
	write("data-dir: var/lib/kone\n")
	if _, err := check(); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("a relative data dir: %v", err)
	}
}
