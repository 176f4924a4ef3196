package cli

import (
	"bytes"
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
