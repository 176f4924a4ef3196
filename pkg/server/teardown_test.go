package server_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// hostState is what the node side may add to a host: links, iptables chains, nftables tables,
// mounts, cgroups.
type hostState struct {
	links, chains, tables, mounts, cgroups []string
	dirs                                   map[string]bool // directories the node side creates, present before?
}

var nodeDirs = []string{"/var/lib/kubelet", "/run/kone", "/var/log/pods", "/var/log/containers"}

func snapshotHost(t *testing.T) hostState {
	t.Helper()
	s := hostState{dirs: map[string]bool{}}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		s.links = append(s.links, l.Attrs().Name)
	}
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.NewWithProtocol(proto)
		if err != nil {
			t.Fatal(err)
		}
		for _, table := range []string{"filter", "nat", "mangle"} {
			chains, err := ipt.ListChains(table)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range chains {
				s.chains = append(s.chains, protoName(ipt.Proto())+"/"+table+"/"+c)
			}
		}
	}
	// kube-proxy's nftables mode keeps its rules in tables of its own.
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		t.Fatalf("nft list tables: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if name, ok := strings.CutPrefix(line, "table "); ok {
			s.tables = append(s.tables, name)
		}
	}
	info, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer info.Close()
	sc := bufio.NewScanner(info)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 4 {
			s.mounts = append(s.mounts, f[4])
		}
	}
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hierarchies {
		_ = filepath.WalkDir(h, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && path != h {
				s.cgroups = append(s.cgroups, path)
			}
			return nil
		})
	}
	for _, d := range nodeDirs {
		_, err := os.Stat(d)
		s.dirs[d] = err == nil
	}
	for _, l := range [][]string{s.links, s.chains, s.tables, s.mounts, s.cgroups} {
		sort.Strings(l)
	}
	return s
}

// added lists what is in now but not in before.
func added(before, now []string) []string {
	var out []string
	for _, x := range now {
		if !slices.Contains(before, x) {
			out = append(out, x)
		}
	}
	return out
}

// teardownNode deletes the test's workloads while kone still runs (so that kubelet and the CNI
// plugins undo their own work), stops kone, then removes what a node keeps by design across
// restarts (the pod bridge, kone's and kube-proxy's rules, kubelet's cgroups and directories),
// as `kone-killall.sh` does, and checks that the host is left as it was.
func teardownNode(t *testing.T, n *node, before hostState) {
	drainAndStop(n)
	killUnder(n.dataDir)
	now := snapshotHost(t)
	left := map[string][]string{
		"links": added(before.links, now.links), "chains": added(before.chains, now.chains), "tables": added(before.tables, now.tables),
		"mounts": added(before.mounts, now.mounts), "cgroups": added(before.cgroups, now.cgroups),
	}
	t.Logf("kept by the node side after its pods were deleted and kone stopped: %v", left)

	for _, name := range left["links"] {
		if l, err := netlink.LinkByName(name); err == nil {
			_ = netlink.LinkDel(l)
		}
	}
	removeChains(left["chains"])
	for _, table := range left["tables"] {
		_ = exec.Command("sh", "-c", "nft delete table "+table).Run()
	}
	mounts := left["mounts"]
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = unix.Unmount(mounts[i], unix.MNT_DETACH)
	}
	cgroups := left["cgroups"]
	sort.Sort(sort.Reverse(sort.StringSlice(cgroups))) // children before parents
	for _, c := range cgroups {
		killCgroup(c)
	}
	time.Sleep(time.Second)
	for _, c := range cgroups {
		_ = os.Remove(c)
	}
	for d, existed := range before.dirs {
		if !existed {
			_ = os.RemoveAll(d)
		}
	}

	after := snapshotHost(t)
	for kind, pair := range map[string][2][]string{
		"links": {before.links, after.links}, "iptables chains": {before.chains, after.chains}, "nftables tables": {before.tables, after.tables},
		"mounts": {before.mounts, after.mounts}, "cgroups": {before.cgroups, after.cgroups},
	} {
		if extra := added(pair[0], pair[1]); len(extra) > 0 {
			t.Errorf("%s left behind: %v", kind, extra)
		}
	}
}

// drainAndStop deletes the test's pods and stops kone, unless it has stopped already.
func drainAndStop(n *node) {
	if n.cmd == nil || n.cmd.Process == nil || n.cmd.ProcessState != nil {
		return
	}
	cs := n.client()
	ctx := context.Background()
	_ = cs.CoreV1().Namespaces().Delete(ctx, "kone-node-it", metav1.DeleteOptions{})
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		pods, err := cs.CoreV1().Pods("kone-node-it").List(ctx, metav1.ListOptions{})
		if err == nil && len(pods.Items) == 0 {
			break
		}
	}
	n.stop()
}

// removeChains deletes iptables chains (named proto/table/chain), after the rules in other
// chains that jump to them.
func removeChains(chains []string) {
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.NewWithProtocol(proto)
		if err != nil {
			continue
		}
		byTable := map[string][]string{}
		for _, pc := range chains {
			p, tc, _ := strings.Cut(pc, "/")
			table, chain, _ := strings.Cut(tc, "/")
			if p == protoName(ipt.Proto()) {
				byTable[table] = append(byTable[table], chain)
			}
		}
		removeTableChains(ipt, byTable)
	}
}

func removeTableChains(ipt *iptables.IPTables, byTable map[string][]string) {
	command := protoName(ipt.Proto())
	for table, doomed := range byTable {
		all, _ := ipt.ListChains(table)
		for _, c := range all {
			rules, _ := ipt.List(table, c)
			for _, r := range rules {
				if !strings.HasPrefix(r, "-A ") || !slices.ContainsFunc(doomed, func(d string) bool { return strings.HasSuffix(r, "-j "+d) }) {
					continue
				}
				// The shell undoes iptables' quoting of comments.
				_ = exec.Command("sh", "-c", command+" -t "+table+" -D "+strings.TrimPrefix(r, "-A ")).Run()
			}
		}
		for _, c := range doomed {
			_ = ipt.ClearChain(table, c)
		}
		for _, c := range doomed {
			_ = ipt.DeleteChain(table, c)
		}
	}
}

// killUnder kills what still runs from below dir after a failed test: containerd (kone run
// with a config under dir) and the shims (programs unpacked under dir).
func killUnder(dir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		cmdline, _ := os.ReadFile(p + "/cmdline")
		exe, _ := os.Readlink(p + "/exe")
		if strings.Contains(string(cmdline), dir) || strings.HasPrefix(exe, dir) {
			kill(filepath.Base(p))
		}
	}
}

// killCgroup kills the processes in a cgroup (containers left by a failed test).
func killCgroup(dir string) {
	procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	for _, pid := range strings.Fields(string(procs)) {
		kill(pid)
	}
}

func kill(pid string) {
	if n, err := strconv.Atoi(pid); err == nil {
		_ = unix.Kill(n, unix.SIGKILL)
	}
}

func protoName(p iptables.Protocol) string {
	if p == iptables.ProtocolIPv6 {
		return "ip6tables"
	}
	return "iptables"
}
