package images

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"runtime"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// PauseImage is the name of the sandbox image kone carries; containerd's CRI uses it for every pod.
const PauseImage = "docker.io/kone/pause:3.10"

// epoch is the timestamp of every file in the image, so that the same pause binary always makes
// the same image digest and a restart imports nothing new.
var epoch = time.Unix(0, 0).UTC()

// PauseArchive returns an OCI image layout, as a tar, holding one image: the pause program at
// /pause as its entrypoint.
func PauseArchive(pause []byte) ([]byte, error) {
	var layer bytes.Buffer
	if err := writeTar(&layer, []tarFile{{name: "pause", mode: 0o755, data: pause}}); err != nil {
		return nil, err
	}
	layerDesc := descriptor(ocispec.MediaTypeImageLayer, layer.Bytes())

	config, err := json.Marshal(ocispec.Image{
		Created:  &epoch,
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config:   ocispec.ImageConfig{Entrypoint: []string{"/pause"}, User: "65535:65535"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDesc.Digest}},
	})
	if err != nil {
		return nil, err
	}
	configDesc := descriptor(ocispec.MediaTypeImageConfig, config)

	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    configDesc,
		Layers:    []ocispec.Descriptor{layerDesc},
	})
	if err != nil {
		return nil, err
	}
	manifestDesc := descriptor(ocispec.MediaTypeImageManifest, manifest)
	manifestDesc.Platform = &ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"}
	manifestDesc.Annotations = map[string]string{
		"io.containerd.image.name": PauseImage,
		ocispec.AnnotationRefName:  "3.10",
	}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifestDesc},
	})
	if err != nil {
		return nil, err
	}
	layout, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})

	var out bytes.Buffer
	err = writeTar(&out, []tarFile{
		{name: ocispec.ImageLayoutFile, mode: 0o644, data: layout},
		{name: "index.json", mode: 0o644, data: index},
		{name: blobPath(layerDesc), mode: 0o644, data: layer.Bytes()},
		{name: blobPath(configDesc), mode: 0o644, data: config},
		{name: blobPath(manifestDesc), mode: 0o644, data: manifest},
	})
	return out.Bytes(), err
}

type tarFile struct {
	name string
	mode int64
	data []byte
}

func writeTar(w *bytes.Buffer, files []tarFile) error {
	tw := tar.NewWriter(w)
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return fmt.Errorf("tar %s: %w", f.name, err)
		}
	}
	return tw.Close()
}

func descriptor(mediaType string, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.Digest(fmt.Sprintf("sha256:%x", sha256.Sum256(data))), Size: int64(len(data))}
}

func blobPath(d ocispec.Descriptor) string {
	return "blobs/" + d.Digest.Algorithm().String() + "/" + d.Digest.Encoded()
}
