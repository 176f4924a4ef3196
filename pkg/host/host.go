// Package host finds out what this machine allows, at run time rather than by assumption:
// which cgroup driver works and whether processes may lower their oom_score_adj.
package host

import (
	"os"
	"strings"

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

// CgroupV2 reports whether /sys/fs/cgroup is a pure cgroup v2 mount.
func CgroupV2() bool {
	var st unix.Statfs_t
	return unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
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
