package sdnotify

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestReadyReachesTheSocketAndNotChildren(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	n := Take()
	if v, ok := os.LookupEnv("NOTIFY_SOCKET"); ok {
		t.Errorf("NOTIFY_SOCKET still set (%q): in-process components would report readiness", v)
	}
	if err := n.Ready(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, err := conn.Read(buf)
	if err != nil || string(buf[:k]) != "READY=1" {
		t.Errorf("got %q, %v", buf[:k], err)
	}
}

func TestWithoutSocketNothingHappens(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Take().Ready(); err != nil {
		t.Error(err)
	}
}
