package containerd

import (
	"bytes"
	"strconv"
	"text/template"
)

// Config is what the node's containerd needs from kone.
type Config struct {
	Root       string // persistent state: images, snapshots
	State      string // runtime state, under /run
	Socket     string
	RuncRoot   string // runc's own state; every node on a machine needs its own
	BinDir     string // runc, the shim and the CNI plugins
	CNIConfDir string
	// SandboxImage is the pause image every pod's sandbox runs.
	SandboxImage string
	// SystemdCgroup selects the systemd cgroup driver instead of cgroupfs.
	SystemdCgroup bool
	// RestrictOOMScoreAdj keeps containers from lowering their oom_score_adj, for hosts that
	// refuse it; without it every pod fails to start there.
	RestrictOOMScoreAdj bool
}

var configTemplate = template.Must(template.New("config.toml").Funcs(template.FuncMap{"q": strconv.Quote}).Parse(`# Written by kone at every start; changes here are lost.
version = 4
root = {{q .Root}}
state = {{q .State}}

# Every path that containerd would otherwise share machine-wide is kone's own: another
# containerd on this machine (Docker's, or a second kone node) keeps its sockets.
[plugins.'io.containerd.server.v1.grpc']
  address = {{q .Socket}}
[plugins.'io.containerd.server.v1.ttrpc']
  address = {{q (printf "%s.ttrpc" .Socket)}}
[plugins.'io.containerd.nri.v1.nri']
  socket_path = {{q (printf "%s/nri.sock" .State)}}
[plugins.'io.containerd.internal.v1.opt']
  path = {{q (printf "%s/opt" .Root)}}

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = {{q .SandboxImage}}

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  restrict_oom_score_adj = {{.RestrictOOMScoreAdj}}
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = {{q (printf "%s/runc" .BinDir)}}
        Root = {{q .RuncRoot}}
        SystemdCgroup = {{.SystemdCgroup}}
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [{{q .BinDir}}]
    conf_dir = {{q .CNIConfDir}}
    # containerd brings up each sandbox's lo itself instead of running the loopback plugin:
    # one process less per pod.
    use_internal_loopback = true
`))

// TOML renders c as containerd's config.toml.
func TOML(c Config) ([]byte, error) {
	var b bytes.Buffer
	err := configTemplate.Execute(&b, c)
	return b.Bytes(), err
}
