package images

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func untar(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[hdr.Name] = b
	}
}

func TestPauseArchiveIsAValidLayout(t *testing.T) {
	program := []byte("\x7fELF pretend pause")
	archive, err := PauseArchive(program)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := PauseArchive(program)
	if !bytes.Equal(archive, again) {
		t.Fatal("the same program gave two different archives: every start would import a new image")
	}
	files := untar(t, archive)
	// Every blob is named by its digest.
	for name, content := range files {
		if len(name) > 13 && name[:13] == "blobs/sha256/" {
			if got := fmt.Sprintf("%x", sha256.Sum256(content)); got != name[13:] {
				t.Errorf("%s has digest %s", name, got)
			}
		}
	}
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %+v", err, index)
	}
	if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != PauseImage {
		t.Errorf("image name %q", got)
	}
	var manifest ocispec.Manifest
	json.Unmarshal(files["blobs/sha256/"+index.Manifests[0].Digest.Encoded()], &manifest)
	var config ocispec.Image
	json.Unmarshal(files["blobs/sha256/"+manifest.Config.Digest.Encoded()], &config)
	if len(config.Config.Entrypoint) != 1 || config.Config.Entrypoint[0] != "/pause" {
		t.Errorf("entrypoint %v", config.Config.Entrypoint)
	}
	layer := untar(t, files["blobs/sha256/"+manifest.Layers[0].Digest.Encoded()])
	if !bytes.Equal(layer["pause"], program) {
		t.Error("the layer does not hold the program at /pause")
	}
	if config.RootFS.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Error("diff id of an uncompressed layer must be its digest")
	}
}
