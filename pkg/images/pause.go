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

// PauseArchive returns the pause image as an OCI image layout in a tar: the pause program at
// /pause as its entrypoint.
func PauseArchive(pause []byte) ([]byte, error) {
	return OCIArchive(PauseImage, []string{"/pause"}, []File{{Name: "pause", Mode: 0o755, Data: pause}})
}

// File is a file of a one-layer image: a regular file with Data, or a symbolic link to Link.
type File struct {
	Name string
	Mode int64
	Data []byte
	Link string
}

// OCIArchive returns an OCI image layout, as a tar, holding one image named name, with one
// uncompressed layer of files. The same input always gives the same bytes.
func OCIArchive(name string, entrypoint []string, files []File) ([]byte, error) {
	var layer bytes.Buffer
	if err := writeTar(&layer, files); err != nil {
		return nil, err
	}
	layerDesc := descriptor(ocispec.MediaTypeImageLayer, layer.Bytes())
	platform := ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"}

	config, err := json.Marshal(ocispec.Image{
		Created:  &epoch,
		Platform: platform,
		Config:   ocispec.ImageConfig{Entrypoint: entrypoint},
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
	manifestDesc.Platform = &platform
	manifestDesc.Annotations = map[string]string{"io.containerd.image.name": name}
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
	err = writeTar(&out, []File{
		{Name: ocispec.ImageLayoutFile, Mode: 0o644, Data: layout},
		{Name: "index.json", Mode: 0o644, Data: index},
		{Name: blobPath(layerDesc), Mode: 0o644, Data: layer.Bytes()},
		{Name: blobPath(configDesc), Mode: 0o644, Data: config},
		{Name: blobPath(manifestDesc), Mode: 0o644, Data: manifest},
	})
	return out.Bytes(), err
}

func writeTar(w *bytes.Buffer, files []File) error {
	tw := tar.NewWriter(w)
	for _, f := range files {
		hdr := &tar.Header{Name: f.Name, Mode: f.Mode, Size: int64(len(f.Data)), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if f.Link != "" {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeSymlink, f.Link, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar %s: %w", f.Name, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return fmt.Errorf("tar %s: %w", f.Name, err)
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
