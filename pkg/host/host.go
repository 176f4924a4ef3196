// Package host finds out what this machine is and allows, at run time rather than by
// assumption: its name and address, which cgroup driver works and whether processes may lower
// their oom_score_adj.
package host

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// CgroupDriver is "systemd" only where systemd is PID 1 and cgroup v2 is the unified hierarchy;
// everywhere else (cgroup v1 or hybrid hosts, openrc, containers) it is "cgroupfs".
func CgroupDriver() string {
	if CgroupV2() && systemdIsInit() {
		return "systemd"
	}
	return "cgroupfs"
}

// CgroupMount is where a host (or a container) mounts its cgroups.
const CgroupMount = "/sys/fs/cgroup"

// CgroupV2 reports whether CgroupMount is a pure cgroup v2 mount.
func CgroupV2() bool { return IsCgroup2(CgroupMount) }

// IsCgroup2 reports whether path is a mount of the cgroup v2 hierarchy.
func IsCgroup2(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

func systemdIsInit() bool {
	comm, err := os.ReadFile("/proc/1/comm")
	return err == nil && strings.TrimSpace(string(comm)) == "systemd"
}

// OOMScoreAdjRestricted reports whether this process may not lower its oom_score_adj, as when
// root lacks CAP_SYS_RESOURCE (in some containers and sandboxes). containerd must then be told
// not to give containers negative scores, or every pod fails to start.
func OOMScoreAdjRestricted() bool {
	const path = "/proc/self/oom_score_adj"
	old, err := os.ReadFile(path)
	if err != nil {
		return true
	}
	current := strings.TrimSpace(string(old))
	if current == "-999" {
		return false
	}
	if err := os.WriteFile(path, []byte("-999"), 0o644); err != nil {
		return true
	}
	_ = os.WriteFile(path, []byte(current), 0o644)
	return false
}

// NodeName is the name a node registers under by default: the host name, lower-cased, as
// Kubernetes requires.
func NodeName() (string, error) {
	name, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("host name: %w; set --node-name", err)
	}
	return strings.ToLower(name), nil
}

// DefaultIPv4 is the IPv4 address of the interface that holds the default route, which is
// what other machines most likely reach this one on. It only reads the routing table.
func DefaultIPv4() (net.IP, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("read routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && !r.Dst.IP.IsUnspecified() {
			continue
		}
		if r.Src != nil {
			return r.Src, nil
		}
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err == nil && len(addrs) > 0 {
			return addrs[0].IP, nil
		}
	}
	return nil, errors.New("this host has no default route with an IPv4 address; set --node-ip")
}
