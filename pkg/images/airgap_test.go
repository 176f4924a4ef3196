package images_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/sirupsen/logrus"

	"github.com/kone-dev/kone/pkg/containerd/containerdtest"
	"github.com/kone-dev/kone/pkg/images"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func archive(t *testing.T, name string) []byte {
	t.Helper()
	a, err := images.OCIArchive(name, []string{"/x"}, []images.File{{Name: "x", Mode: 0o755, Data: []byte(name)}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func gzipped(t *testing.T, data []byte) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	return b.Bytes()
}

// TestImporter imports the pause image and every archive in the directory into a real
// containerd, pinned; skips a broken archive and names it; and imports archives that appear or
// change while it runs.
func TestImporter(t *testing.T) {
	node := containerdtest.New(t)
	node.Start(t)
	dir := t.TempDir()
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.tar", archive(t, "docker.io/kone/test-a:1"))
	write("broken.tar.zst", []byte("not an archive"))
	write("notes.txt", []byte("not an image"))

	logs := &syncBuffer{}
	log := logrus.New()
	log.SetOutput(logs)
	im := images.NewImporter(dir, node.Config.Socket, archive(t, images.PauseImage), log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- im.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("importer: %v", err)
		}
	}()
	rctx, rcancel := context.WithTimeout(ctx, time.Minute)
	defer rcancel()
	if err := im.Ready(rctx); err != nil {
		t.Fatal(err)
	}

	cl, err := client.New(node.Config.Socket, client.WithDefaultNamespace(images.Namespace))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pinned := func(name string) bool {
		img, err := cl.ImageService().Get(ctx, name)
		return err == nil && img.Labels["io.cri-containerd.pinned"] == "pinned"
	}
	for _, name := range []string{images.PauseImage, "docker.io/kone/test-a:1"} {
		if !pinned(name) {
			t.Errorf("%s is not imported and pinned", name)
		}
	}
	if !strings.Contains(logs.String(), "broken.tar.zst") {
		t.Errorf("the broken archive is not named in the log:\n%s", logs.String())
	}

	// Archives that appear, or change, while kone runs.
	write("b.tar.gz", gzipped(t, archive(t, "docker.io/kone/test-b:1")))
	write("a.tar", archive(t, "docker.io/kone/test-a:2"))
	deadline := time.Now().Add(30 * time.Second)
	for !pinned("docker.io/kone/test-b:1") || !pinned("docker.io/kone/test-a:2") {
		if time.Now().After(deadline) {
			t.Fatalf("archives written while running were not imported:\n%s", logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
