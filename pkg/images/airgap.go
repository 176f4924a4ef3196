package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"

	"github.com/kone-dev/kone/pkg/supervisor"
)

// Namespace is containerd's namespace for Kubernetes' images and containers.
const Namespace = "k8s.io"

// pinned is the label with which the CRI reports an image as pinned: kubelet's image garbage
// collection never removes it. Imported images are the node's only copy, with no registry to
// pull them from again.
var pinned = map[string]string{"io.cri-containerd.pinned": "pinned"}

// Archive suffixes the importer reads; each may hold an OCI image layout or a docker-archive.
var suffixes = []string{".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"}

// Importer is the component that loads images without a registry: the pause image kone
// carries, and every archive in Dir, at start and whenever a file appears or changes there.
type Importer struct {
	Dir          string
	Socket       string
	Snapshotter  string
	PauseArchive []byte
	Log          *logrus.Logger

	ready *supervisor.Latch
	seen  map[string]stamp
}

// stamp is what tells a changed file from an imported one.
type stamp struct {
	size  int64
	mtime time.Time
}

// NewImporter returns the component.
func NewImporter(dir, socket string, pauseArchive []byte, log *logrus.Logger) *Importer {
	return &Importer{Dir: dir, Socket: socket, Snapshotter: "overlayfs", PauseArchive: pauseArchive, Log: log,
		ready: supervisor.NewLatch(), seen: map[string]stamp{}}
}

func (im *Importer) Name() string { return "images" }

// Ready returns once the pause image and the archives present at start are imported.
func (im *Importer) Ready(ctx context.Context) error {
	return im.ready.Wait(ctx)
}

// Run imports, then watches Dir until ctx ends.
func (im *Importer) Run(ctx context.Context) error {
	cl, err := client.New(im.Socket, client.WithDefaultNamespace(Namespace))
	if err != nil {
		return fmt.Errorf("connect to containerd: %w", err)
	}
	defer cl.Close()
	if _, err := im.load(ctx, cl, bytes.NewReader(im.PauseArchive)); err != nil {
		return fmt.Errorf("import the pause image: %w", err)
	}
	if err := os.MkdirAll(im.Dir, 0o755); err != nil {
		return fmt.Errorf("images directory: %w", err)
	}
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", im.Dir, err)
	}
	defer watcher.Close()
	if err := watcher.Add(im.Dir); err != nil {
		return fmt.Errorf("watch %s: %w", im.Dir, err)
	}
	im.scan(ctx, cl)
	im.ready.Open()

	// A file being copied in fires many events; import once it has been quiet for a moment.
	const settle = time.Second
	var quiet <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-watcher.Events:
			if isArchive(ev.Name) {
				quiet = time.After(settle)
			}
		case err := <-watcher.Errors:
			im.Log.WithError(err).Warn("watching the images directory")
		case <-quiet:
			im.scan(ctx, cl)
		}
	}
}

// scan imports every archive that is new or changed since it was last seen. A broken one is
// logged and skipped; the others still import.
func (im *Importer) scan(ctx context.Context, cl *client.Client) {
	entries, err := os.ReadDir(im.Dir)
	if err != nil {
		im.Log.WithError(err).Warn("reading the images directory")
		return
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.Type().IsRegular() && isArchive(e.Name()) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for _, name := range names {
		path := filepath.Join(im.Dir, name)
		info, err := os.Stat(path)
		if err != nil {
			continue
		}
		st := stamp{size: info.Size(), mtime: info.ModTime()}
		if im.seen[path] == st {
			continue
		}
		im.seen[path] = st
		t0 := time.Now()
		imported, err := im.importFile(ctx, cl, path)
		if err != nil {
			im.Log.WithField("file", path).WithError(err).Error("cannot import image archive; skipping it (fix or replace the file and it is tried again)")
			continue
		}
		im.Log.WithFields(logrus.Fields{"file": name, "images": strings.Join(imported, ","), "elapsed": time.Since(t0).Round(time.Millisecond).String()}).Info("imported images")
	}
}

func (im *Importer) importFile(ctx context.Context, cl *client.Client, path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return im.load(ctx, cl, f)
}

// load imports one archive, compressed or not, pinned and unpacked for the CRI's snapshotter.
func (im *Importer) load(ctx context.Context, cl *client.Client, r io.Reader) ([]string, error) {
	stream, err := compression.DecompressStream(r)
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	imgs, err := cl.Import(ctx, stream, client.WithImageLabels(pinned))
	if err != nil {
		return nil, err
	}
	if len(imgs) == 0 {
		return nil, errors.New("the archive names no image")
	}
	var names []string
	for _, img := range imgs {
		if err := client.NewImage(cl, img).Unpack(ctx, im.Snapshotter); err != nil {
			return nil, fmt.Errorf("unpack %s: %w", img.Name, err)
		}
		names = append(names, img.Name)
	}
	return names, nil
}

func isArchive(name string) bool {
	for _, s := range suffixes {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}
