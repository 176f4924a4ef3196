// Package version reports what this kone binary is and what it carries. scripts/build stamps
// Version and Commit at link time.
package version

import (
	"fmt"
	"runtime"

	containerdversion "github.com/containerd/containerd/v2/version"
	etcdversion "go.etcd.io/etcd/api/v3/version"
	k8sversion "k8s.io/component-base/version"
)

var (
	Version = "dev"
	Commit  = "unknown"
)

// String is what `kone --version` prints.
func String() string {
	return fmt.Sprintf("kone version %s (%s)\nkubernetes %s\netcd v%s\ncontainerd v%s\ngo %s\n",
		Version, Commit, k8sversion.Get().GitVersion, etcdversion.Version, containerdversion.Version, runtime.Version())
}
