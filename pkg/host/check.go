package host

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/component-helpers/node/util/sysctl"
)

// Finding is the result of one check of what the node side needs from the host.
type Finding struct {
	Name      string
	OK        bool
	Essential bool   // without it no pod runs
	Detail    string // what was found
	Fix       string // what to do when it is missing
}

// Check looks at what the node side needs from this host: cgroup controllers, overlayfs,
// iptables, bridge netfilter, forwarding, network namespaces, and the kernel settings that
// kubelet protects under --profile=cis (essential only with cis). It changes nothing.
func Check(cis bool) []Finding {
	return append([]Finding{
		checkCgroups(),
		checkFilesystem("overlay", "overlayfs", "containerd's snapshotter needs it: enable CONFIG_OVERLAY_FS or load the overlay module (modprobe overlay)"),
		checkCommand("iptables", true, "kone and kube-proxy write their rules with it: install iptables (apt-get install iptables, apk add iptables)"),
		checkCommand("nft", false, "needed only for --kube-proxy-arg=proxy-mode=nftables: install nftables"),
		checkFile("br_netfilter", "/proc/sys/net/bridge/bridge-nf-call-iptables", true,
			"Services need bridged pod traffic to pass through iptables: enable CONFIG_BRIDGE_NETFILTER or load br_netfilter (modprobe br_netfilter)"),
		checkFile("network namespaces", "/proc/self/ns/net", true, "enable CONFIG_NET_NS in the kernel"),
		checkForwarding(),
	}, kernelDefaults(cis)...)
}

// kernelDefaults are the settings kubelet requires of the kernel when it protects them
// (protectKernelDefaults, which --profile=cis turns on): it then refuses to start rather than
// change them itself.
func kernelDefaults(essential bool) []Finding {
	want := []struct {
		name  string
		value int
	}{
		{sysctl.VMOvercommitMemory, sysctl.VMOvercommitMemoryAlways},
		{sysctl.VMPanicOnOOM, sysctl.VMPanicOnOOMInvokeOOMKiller},
		{sysctl.KernelPanic, sysctl.KernelPanicRebootTimeout},
		{sysctl.KernelPanicOnOops, sysctl.KernelPanicOnOopsAlways},
		{sysctl.RootMaxKeys, sysctl.RootMaxKeysSetting},
		{sysctl.RootMaxBytes, sysctl.RootMaxBytesSetting},
	}
	s := sysctl.New()
	var findings []Finding
	for _, w := range want {
		key := strings.ReplaceAll(w.name, "/", ".")
		f := Finding{Name: key, Essential: essential,
			Fix: fmt.Sprintf("--profile=cis needs it: sysctl -w %s=%d, and the same line in /etc/sysctl.d/90-kone-cis.conf", key, w.value)}
		got, err := s.GetSysctl(w.name)
		switch {
		case err != nil:
			f.Detail = err.Error()
		case got != w.value:
			f.Detail = fmt.Sprintf("%d (kubelet's protectKernelDefaults wants %d)", got, w.value)
		default:
			f.OK, f.Detail = true, fmt.Sprint(got)
		}
		findings = append(findings, f)
	}
	return findings
}

// Missing returns an error that lists every essential finding that failed, with its fix.
func Missing(findings []Finding) error {
	var lines []string
	for _, f := range findings {
		if f.Essential && !f.OK {
			lines = append(lines, fmt.Sprintf("  %s: %s; %s", f.Name, f.Detail, f.Fix))
		}
	}
	if len(lines) == 0 {
		return nil
	}
	return errors.New("this host lacks what the node side needs (see `kone check-config`; --disable-agent runs only the control plane):\n" + strings.Join(lines, "\n"))
}

// requiredControllers are the cgroup controllers kubelet and runc cannot do without.
var requiredControllers = []string{"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "pids"}

func checkCgroups() Finding {
	f := Finding{Name: "cgroup controllers", Essential: true,
		Fix: "enable the missing controllers in the kernel (CONFIG_CGROUPS, CONFIG_MEMCG, CONFIG_CGROUP_PIDS …) and on the kernel command line (cgroup_enable=memory on Raspberry Pi OS)"}
	have := map[string]bool{}
	mode := "v1"
	if CgroupV2() {
		mode = "v2"
		data, err := os.ReadFile(filepath.Join(CgroupMount, "cgroup.controllers"))
		if err != nil {
			f.Detail = err.Error()
			return f
		}
		for _, c := range strings.Fields(string(data)) {
			have[c] = true
		}
		// cgroup v2 accounts CPU usage in the cpu controller and has no devices or freezer
		// controllers: runc uses BPF and cgroup.freeze instead.
		have["cpuacct"], have["devices"], have["freezer"] = have["cpu"], true, true
	} else {
		mounts, err := os.Open("/proc/self/mountinfo")
		if err != nil {
			f.Detail = err.Error()
			return f
		}
		defer mounts.Close()
		s := bufio.NewScanner(mounts)
		for s.Scan() {
			fields := strings.Fields(s.Text())
			sep := slices.Index(fields, "-")
			if sep < 0 || sep+3 >= len(fields) || fields[sep+1] != "cgroup" {
				continue
			}
			for _, opt := range strings.Split(fields[sep+3], ",") {
				have[opt] = true
			}
		}
	}
	var missing []string
	for _, c := range requiredControllers {
		if !have[c] {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		f.Detail = fmt.Sprintf("cgroup %s without %s", mode, strings.Join(missing, ", "))
		return f
	}
	f.OK, f.Detail = true, fmt.Sprintf("cgroup %s: %s", mode, strings.Join(requiredControllers, ", "))
	return f
}

func checkFilesystem(fs, name, fix string) Finding {
	f := Finding{Name: name, Essential: true, Fix: fix}
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		f.Detail = err.Error()
		return f
	}
	for _, line := range strings.Split(string(data), "\n") {
		if fields := strings.Fields(line); len(fields) > 0 && fields[len(fields)-1] == fs {
			f.OK, f.Detail = true, "in /proc/filesystems"
			return f
		}
	}
	f.Detail = "not in /proc/filesystems"
	return f
}

func checkCommand(name string, essential bool, fix string) Finding {
	f := Finding{Name: name, Essential: essential, Fix: fix}
	path, err := exec.LookPath(name)
	if err != nil {
		f.Detail = "not found on PATH"
		return f
	}
	f.OK, f.Detail = true, path
	if target, err := filepath.EvalSymlinks(path); err == nil && target != path {
		f.Detail += " -> " + target
	}
	return f
}

func checkFile(name, path string, essential bool, fix string) Finding {
	f := Finding{Name: name, Essential: essential, Fix: fix}
	if _, err := os.Stat(path); err != nil {
		f.Detail = path + " is missing"
		return f
	}
	f.OK, f.Detail = true, path
	return f
}

func checkForwarding() Finding {
	f := Finding{Name: "ip_forward", Fix: "kone turns it on at start; make sure nothing (a firewall, a sysctl.d file) turns it off again"}
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		f.Detail = err.Error()
		return f
	}
	f.OK = true
	f.Detail = "net.ipv4.ip_forward=" + strings.TrimSpace(string(data))
	if f.Detail == "net.ipv4.ip_forward=0" {
		f.Detail += " (kone sets 1)"
	}
	return f
}
