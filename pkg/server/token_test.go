package server

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/token"
)

// The token file is the truth after the first start: a --token given then makes it, a
// different --token later is refused, and a --token that `kone token rotate` replaced is a
// warning, with the file's token used.
func TestLoadToken(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.EnsureCA(dir, "server-ca", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	files := token.ServerFiles{Token: filepath.Join(dir, "token"), Published: filepath.Join(dir, "token.published"), Superseded: filepath.Join(dir, "token.superseded")}
	var logged bytes.Buffer
	log := logrus.New()
	log.SetOutput(&logged)

	first, err := loadToken(files, "abcdef.0123456789abcdef", ca.CertFile, log)
	if err != nil || first.ID != "abcdef" || first.CAHash == "" {
		t.Fatalf("first start with --token: %+v %v", first, err)
	}
	if data, _ := os.ReadFile(files.Token); strings.TrimSpace(string(data)) != first.String() {
		t.Errorf("the token file holds %q", data)
	}
	if again, err := loadToken(files, "", ca.CertFile, log); err != nil || again != first {
		t.Errorf("a restart without --token: %+v %v", again, err)
	}
	_, err = loadToken(files, "zyxwvu.0123456789abcdef", ca.CertFile, log)
	if err == nil || !strings.Contains(err.Error(), "--token differs") {
		t.Errorf("another --token: %v", err)
	}

	if err := os.WriteFile(files.Superseded, []byte("abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rotated, err := token.Generate()
	if err == nil {
		rotated, err = rotated.WithCA(mustRead(t, ca.CertFile))
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files.Token, rotated.File(), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := loadToken(files, "abcdef.0123456789abcdef", ca.CertFile, log)
	if err != nil || got != rotated {
		t.Errorf("the --token a rotation replaced: %+v %v", got, err)
	}
	if !strings.Contains(logged.String(), "replaced") || strings.Contains(logged.String(), "0123456789abcdef") {
		t.Errorf("the warning (which must not hold the token's secret): %q", logged.String())
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
