package host

import (
	"os"
	"strings"
	"testing"
)

func TestOOMScoreAdjRestrictedLeavesScoreAlone(t *testing.T) {
	before, _ := os.ReadFile("/proc/self/oom_score_adj")
	restricted := OOMScoreAdjRestricted()
	after, _ := os.ReadFile("/proc/self/oom_score_adj")
	if strings.TrimSpace(string(before)) != strings.TrimSpace(string(after)) {
		t.Fatalf("oom_score_adj changed from %s to %s", before, after)
	}
	// Whatever the answer, it must match what the kernel does with a negative score.
	err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1"), 0o644)
	if (err != nil) != restricted {
		t.Fatalf("restricted=%v, but writing -1 gave %v", restricted, err)
	}
	os.WriteFile("/proc/self/oom_score_adj", before, 0o644)
}

func TestCgroupV2AgreesWithMounts(t *testing.T) {
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	unified := false
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[1] == "/sys/fs/cgroup" {
			unified = f[2] == "cgroup2"
		}
	}
	if CgroupV2() != unified {
		t.Fatalf("CgroupV2() = %v, but /proc/self/mounts says cgroup2 at /sys/fs/cgroup is %v", CgroupV2(), unified)
	}
	if CgroupDriver() == "systemd" && !unified {
		t.Fatal("the systemd driver was chosen on a host without unified cgroup v2")
	}
}
