package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
)

func TestTOMLLoadsWithContainerdsOwnLoader(t *testing.T) {
	c := Config{
		Root: "/var/lib/kone/agent/containerd", State: "/run/kone/containerd", Socket: "/run/kone/containerd/containerd.sock",
		RuncRoot: "/run/kone/runc", BinDir: "/var/lib/kone/data/v1/bin", CNIConfDir: "/var/lib/kone/agent/etc/cni/net.d",
		SandboxImage: "docker.io/kone/pause:3.10", RestrictOOMScoreAdj: true,
	}
	data, err := TOML(c)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(path, data, 0o600)
	var loaded srvconfig.Config
	if err := srvconfig.LoadConfig(context.Background(), path, &loaded); err != nil {
		t.Fatalf("containerd refuses kone's config: %v\n%s", err, data)
	}
	if loaded.Root != c.Root || loaded.State != c.State || loaded.Version != 4 {
		t.Errorf("loaded %+v", loaded)
	}
	for plugin, want := range map[string]string{
		"io.containerd.server.v1.grpc":  "address:/run/kone/containerd/containerd.sock]",
		"io.containerd.server.v1.ttrpc": "address:/run/kone/containerd/containerd.sock.ttrpc]",
		"io.containerd.nri.v1.nri":      "socket_path:/run/kone/containerd/nri.sock]",
	} {
		if got := fmt.Sprint(loaded.Plugins[plugin]); !strings.Contains(got, want) {
			t.Errorf("%s: want %s, got %s", plugin, want, got)
		}
	}
	runtime := fmt.Sprint(loaded.Plugins["io.containerd.cri.v1.runtime"])
	for _, want := range []string{"restrict_oom_score_adj:true", "BinaryName:/var/lib/kone/data/v1/bin/runc", "Root:/run/kone/runc", "SystemdCgroup:false", "conf_dir:/var/lib/kone/agent/etc/cni/net.d", "use_internal_loopback:true"} {
		if !strings.Contains(runtime, want) {
			t.Errorf("runtime plugin config lacks %s: %s", want, runtime)
		}
	}
	if got := fmt.Sprint(loaded.Plugins["io.containerd.cri.v1.images"]); !strings.Contains(got, "sandbox:docker.io/kone/pause:3.10") || !strings.Contains(got, "snapshotter:overlayfs") {
		t.Errorf("images plugin config: %s", got)
	}
}
