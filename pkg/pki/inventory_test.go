package pki

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestInventory(t *testing.T) {
	now := time.Now()
	dir := t.TempDir()
	c := Layout(filepath.Join(dir, "server", "tls"))
	names := Names{DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}
	if _, err := ensureAll(c, names, names, names, now); err != nil {
		t.Fatal(err)
	}
	// kubelet keeps its serving certificate with its key in one file, behind a link.
	kubelet := filepath.Join(dir, "agent", "kubelet", "pki")
	if err := os.MkdirAll(kubelet, 0o700); err != nil {
		t.Fatal(err)
	}
	cert, _ := os.ReadFile(c.APIServerServing.Cert)
	key, _ := os.ReadFile(c.APIServerServing.Key)
	dated := filepath.Join(kubelet, "kubelet-server-2026-01-01-00-00-00.pem")
	if err := os.WriteFile(dated, append(key, cert...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dated, filepath.Join(kubelet, "kubelet-server-current.pem")); err != nil {
		t.Fatal(err)
	}

	held, err := Inventory(c.Dir, filepath.Join(dir, "agent", "tls"), kubelet)
	if err != nil {
		t.Fatal(err)
	}
	var cas, leaves int
	for _, h := range held {
		if h.IsCA {
			cas++
		} else {
			leaves++
		}
		if h.File == c.Admin.Cert && (h.Subject != "system:admin" || !strings.HasPrefix(h.Issuer, "kone-client-ca@")) {
			t.Errorf("admin certificate: %+v", h)
		}
		if days := h.DaysLeft(now); (h.IsCA && days < 3640) || (!h.IsCA && (days < 364 || days > 365)) {
			t.Errorf("%s: %d days left", h.File, days)
		}
	}
	// Six CAs, eleven leaves, and kubelet's current serving certificate once (not the dated file).
	if cas != 6 || leaves != 12 {
		t.Errorf("Inventory found %d CAs and %d leaves, want 6 and 12: %+v", cas, leaves, held)
	}

	if err := os.WriteFile(filepath.Join(c.Dir, "broken.crt"), []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Inventory(c.Dir); err == nil || !strings.Contains(err.Error(), "broken.crt") {
		t.Errorf("a broken certificate file: %v", err)
	}
	if held, err := Inventory(filepath.Join(dir, "missing")); err != nil || len(held) != 0 {
		t.Errorf("a missing directory: %v, %v", held, err)
	}
	expired := Held{NotAfter: now.Add(-36 * time.Hour)}
	if d := expired.DaysLeft(now); d != -2 {
		t.Errorf("expired 36 hours ago: %d days left, want -2", d)
	}
	if d := (Held{NotAfter: now.Add(-time.Hour)}).DaysLeft(now); d != -1 {
		t.Errorf("expired an hour ago: %d days left, want -1", d)
	}
}
