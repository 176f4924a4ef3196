package server_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kone-dev/kone/pkg/pki"
)

// TestServersJoin grows a one-server cluster that holds data into three servers, with a
// rotate-ca between the second and the third: each joins etcd and serves all the data; joins
// that must be refused are, before anything changes on either side; and a controller whose
// lease is taken from its server stops there and runs again, in the same process, once the
// server holds it back.
func TestServersJoin(t *testing.T) {
	bin := koneBinary(t)
	n, cs, tok := startClusterServer(t, bin)
	ctx := context.Background()
	before := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "before-join", Namespace: "default"}, StringData: map[string]string{"k": "written by the first server"}}
	if _, err := cs.CoreV1().Secrets("default").Create(ctx, before, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkRefusedServerJoins(t, n, tok)

	first := "https://" + bridgeHost + ":" + n.https
	server := func(name, ip string) *agentNode {
		s := newAgent(t, bin, name, ip, first, tok)
		// Every apiserver of a cluster serves on the same port: the kubernetes Service has one.
		s.args = []string{bin, "server", "--server", first, "--token", tok, "--node-ip", s.ip,
			"--https-listen-port", n.https, "--write-kubeconfig", "/var/lib/kone/admin.kubeconfig"}
		return s
	}
	servers := []*agentNode{server("server-2", nodeNet+"12"), server("server-3", nodeNet+"13")}
	// The first server stops while the others keep etcd's quorum, before they go down.
	t.Cleanup(func() { drainAndStop(n) })
	servers[0].up()
	waitNodesReady(t, cs, 2)
	servers[0].waitReady()
	// New CAs while the cluster has two servers: the second takes them; the third joins after,
	// with the token from before, which pins the CA that the new one replaced.
	checkRotateCAAcrossServers(t, n, servers[0])
	servers[1].up()
	waitNodesReady(t, cs, 3)
	for _, s := range servers {
		s.waitReady()
		if !strings.Contains(s.log(), "fetched the cluster's certificate authorities") {
			t.Errorf("%s did not join as a server:\n%s", s.name, s.log())
		}
	}
	// Every server serves all the data, the Secret encrypted by the first one included, and
	// what one server writes the others read.
	clients := map[string]kubernetes.Interface{"the first server": cs}
	for _, s := range servers {
		clients[s.name] = clientAt(t, n.kubeconfig, "https://"+s.ip+":"+n.https)
	}
	written := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "written-on-server-3", Namespace: "default"}}
	if _, err := clients["server-3"].CoreV1().ConfigMaps("default").Create(ctx, written, metav1.CreateOptions{}); err != nil {
		t.Fatalf("write through server-3: %v", err)
	}
	for name, c := range clients {
		s, err := c.CoreV1().Secrets("default").Get(ctx, "before-join", metav1.GetOptions{})
		if err != nil || string(s.Data["k"]) != "written by the first server" {
			t.Errorf("%s: the Secret from before the join: %v %v", name, s, err)
		}
		if _, err := c.CoreV1().ConfigMaps("default").Get(ctx, written.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("%s: what server-3 wrote: %v", name, err)
		}
	}
	// The kubernetes Service's endpoints are the three apiservers.
	eps := kubectlEventually(t, n, "get", "endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=kubernetes", "-o", "jsonpath={.items[*].endpoints[*].addresses[*]}")
	for _, ip := range []string{bridgeHost, nodeNet + "12", nodeNet + "13"} {
		if !strings.Contains(eps, ip) {
			t.Errorf("the kubernetes Service's endpoints %q lack %s", eps, ip)
		}
	}

	checkRotationsReachEveryServer(t, n, clients, servers)
	checkLeaseTakenAndRegained(t, n, cs, servers)
	checkServerLoss(t, n, cs, servers)
	checkServerRemoved(t, n, cs, servers)
}

// checkRotateCAAcrossServers runs rotate-ca on the first of two servers: the other takes the
// new CAs and the re-pinned server token within seconds, and serves a certificate from the new
// server CA.
func checkRotateCAAcrossServers(t *testing.T, n *node, other *agentNode) {
	t.Helper()
	out := n.run(nil, n.bin, append([]string{"certificate", "rotate-ca"}, n.args()[1:]...)...)
	if !strings.Contains(out, "certificate authorities replaced") || !strings.Contains(out, "other servers (1) take the new CAs") {
		t.Fatalf("rotate-ca:\n%s", out)
	}
	ours := filepath.Join(n.dataDir, "server")
	theirs := filepath.Join("/var/lib/kone-nodes", other.name, "lib", "kone", "server")
	newCA := readCert(t, filepath.Join(ours, "tls", "server-ca.crt"))
	var serving *x509.Certificate
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		same := true
		for _, f := range []string{"tls/server-ca.crt", "tls/client-ca.key", "tls/etcd/peer-ca.crt", "token"} {
			a, _ := os.ReadFile(filepath.Join(ours, f))
			b, _ := os.ReadFile(filepath.Join(theirs, f))
			same = same && len(a) > 0 && string(a) == string(b)
		}
		if data, err := os.ReadFile(filepath.Join(theirs, "tls", "serving-kube-apiserver.crt")); err == nil {
			serving, _ = pki.ParseCert(data)
		}
		if same && serving != nil && serving.CheckSignatureFrom(newCA) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has not taken the new CAs and token, or issued its serving certificate from them, in a minute:\n%s", other.name, other.log())
		}
	}
	waitServed(t, other.name+"'s apiserver", other.ip+":"+n.https, serving)
	if !strings.Contains(other.log(), "took the cluster's new certificate authorities") {
		t.Errorf("%s does not say that it took the new CAs:\n%s", other.name, other.log())
	}
}

// checkRotationsReachEveryServer rotates the Secrets' keys and the server token on the first
// server: every server takes both, every Secret reads through every server throughout and
// after, and etcd holds each with the new key only. The servers' restarts later in the test
// still give the replaced token as --token, which must then be taken as replaced.
func checkRotationsReachEveryServer(t *testing.T, n *node, clients map[string]kubernetes.Interface, servers []*agentNode) {
	t.Helper()
	ctx := context.Background()
	// A reader through every server while the keys change: none may meet a Secret it cannot read.
	stop := make(chan struct{})
	failures := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
			for name, c := range clients {
				if _, err := c.CoreV1().Secrets("default").List(ctx, metav1.ListOptions{}); err != nil {
					select {
					case failures <- fmt.Sprintf("%s: %v", name, err):
					default:
					}
				}
			}
		}
	}()
	out := secretsEncrypt(n, "rotate-keys")
	close(stop)
	<-done
	close(failures)
	for f := range failures {
		t.Errorf("a Secret did not read during the rotation, through %s", f)
	}
	for _, want := range []string{"Every server reads with the new key kone-2", "Retired kone-1; kone-2 is the only key"} {
		if !strings.Contains(out, want) {
			t.Errorf("rotate-keys lacks %q:\n%s", want, out)
		}
	}
	if out := secretsEncrypt(n, "status"); !strings.Contains(out, "Every Secret is encrypted with the current key, kone-2") {
		t.Errorf("status after rotate-keys:\n%s", out)
	}
	newToken := strings.TrimSpace(n.run(nil, n.bin, "token", "rotate", "--kubeconfig", n.kubeconfig, "--data-dir", n.dataDir))
	config := readFile(t, filepath.Join(n.dataDir, "server", "cred", "encryption-config.yaml"))
	for _, s := range servers {
		dir := filepath.Join("/var/lib/kone-nodes", s.name, "lib", "kone", "server")
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
			theirs, _ := os.ReadFile(filepath.Join(dir, "cred", "encryption-config.yaml"))
			tok, _ := os.ReadFile(filepath.Join(dir, "token"))
			if string(theirs) == config && strings.TrimSpace(string(tok)) == newToken {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s has not taken the rotated key and token in a minute:\n%s", s.name, s.log())
			}
		}
	}
	for name, c := range clients {
		s, err := c.CoreV1().Secrets("default").Get(ctx, "before-join", metav1.GetOptions{})
		if err != nil || string(s.Data["k"]) != "written by the first server" {
			t.Errorf("%s: the Secret after the rotation: %v %v", name, s, err)
		}
	}
}

// checkServerLoss adds an agent that knows only the first server and a pod on every node, and
// kills the server that leads etcd with SIGKILL while a writer creates ConfigMaps through
// another: every write acknowledged is there on every remaining server, the agent keeps
// renewing its node's lease through another server, no pod restarts, logs and exec work
// through the remaining servers, and the killed server comes back into the cluster.
func checkServerLoss(t *testing.T, n *node, cs kubernetes.Interface, servers []*agentNode) {
	t.Helper()
	ctx := context.Background()
	agent := newAgent(t, n.bin, "agent-1", nodeNet+"21", "https://"+bridgeHost+":"+n.https, strings.TrimSpace(readFile(t, filepath.Join(n.dataDir, "server", "token"))))
	agent.up()
	waitNodesReady(t, cs, 4)
	agent.waitReady()
	ns := "kone-node-it"
	if _, err := cs.AppsV1().Deployments(ns).Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"replicas":4}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := waitPodsRunning(t, cs, ns, 4)

	// The etcd leader is the server that said so last.
	logs := map[string]string{"vm": n.log.String()}
	for _, s := range servers {
		logs[s.name] = s.log()
	}
	leader, latest := "", ""
	for name, l := range logs {
		for _, line := range strings.Split(l, "\n") {
			if strings.Contains(line, "etcd member leads the cluster") && line > latest {
				leader, latest = name, line
			}
		}
	}
	if leader == "" {
		t.Fatalf("no server says that it leads etcd:\n%v", logs)
	}
	var survivors []*agentNode
	for _, s := range servers {
		if s.name != leader {
			survivors = append(survivors, s)
		}
	}
	via := clientAt(t, n.kubeconfig, "https://"+survivors[0].ip+":"+n.https)

	const writes = 500
	acked := make(chan string, writes)
	go func() {
		defer close(acked)
		for i := range writes {
			name := fmt.Sprintf("write-%03d", i)
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
				cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}}
				_, err := via.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{})
				if err == nil || apierrors.IsAlreadyExists(err) {
					acked <- name
					break
				}
				if time.Now().After(deadline) {
					return
				}
			}
		}
	}()
	for deadline := time.Now().Add(2 * time.Minute); len(acked) < 100; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the writer made only %d writes in 2 minutes before any server was killed", len(acked))
		}
	}
	restarts := restartCounts(t, via, ns)
	killed := time.Now()
	if leader == "vm" {
		n.kill()
	} else {
		for _, s := range servers {
			if s.name == leader {
				s.kill()
			}
		}
	}
	var written []string
	for name := range acked {
		written = append(written, name)
	}
	if len(written) != writes {
		t.Errorf("only %d of %d writes were acknowledged within a minute each after %s was killed", len(written), writes, leader)
	}
	for _, s := range survivors {
		c := clientAt(t, n.kubeconfig, "https://"+s.ip+":"+n.https)
		list, err := c.CoreV1().ConfigMaps("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("list through %s: %v", s.name, err)
		}
		have := map[string]bool{}
		for _, cm := range list.Items {
			have[cm.Name] = true
		}
		for _, w := range written {
			if !have[w] {
				t.Errorf("%s lacks the acknowledged write %s", s.name, w)
			}
		}
	}
	// The agent renews its node's lease through another server since the kill.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
		l, err := via.CoordinationV1().Leases("kube-node-lease").Get(ctx, agent.name, metav1.GetOptions{})
		if err == nil && l.Spec.RenewTime != nil && l.Spec.RenewTime.After(killed.Add(time.Second)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent has not renewed its node's lease since %s was killed (%v):\n%s", leader, err, agent.log())
		}
	}
	node, err := via.CoreV1().Nodes().Get(ctx, agent.name, metav1.GetOptions{})
	if err != nil || !nodeReady(node) {
		t.Errorf("the agent's node is not Ready after %s was killed: %v", leader, err)
	}
	for pod, before := range restarts {
		if after := restartCounts(t, via, ns)[pod]; after != before {
			t.Errorf("pod %s restarted: %d before the kill, %d after", pod, before, after)
		}
	}
	through := []string{"--server", "https://" + survivors[0].ip + ":" + n.https}
	for _, p := range pods {
		if p.Spec.NodeName == leader {
			continue // its kubelet died with the server
		}
		if out := kubectlEventually(t, n, append(through, "logs", "-n", ns, p.Name)...); !strings.Contains(out, "serving "+p.Name) {
			t.Errorf("logs of %s through %s: %q", p.Name, survivors[0].name, out)
		}
		if out := kubectlEventually(t, n, append(through, "exec", "-n", ns, p.Name, "--", "echo", "exec works")...); strings.TrimSpace(out) != "exec works" {
			t.Errorf("exec in %s through %s: %q", p.Name, survivors[0].name, out)
		}
	}

	// The killed server comes back and reads what was written without it.
	if leader == "vm" {
		n.start()
	} else {
		for _, s := range servers {
			if s.name == leader {
				s.start()
				s.waitReady()
			}
		}
	}
	back := cs
	for _, s := range servers {
		if s.name == leader {
			back = clientAt(t, n.kubeconfig, "https://"+s.ip+":"+n.https)
		}
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		list, err := back.CoreV1().ConfigMaps("default").List(ctx, metav1.ListOptions{})
		if err == nil && countPrefix(list.Items, "write-") == len(written) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s restarted without the writes made while it was away (%v)", leader, err)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func countPrefix(cms []corev1.ConfigMap, prefix string) int {
	n := 0
	for _, cm := range cms {
		if strings.HasPrefix(cm.Name, prefix) {
			n++
		}
	}
	return n
}

func nodeReady(node *corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func restartCounts(t *testing.T, cs kubernetes.Interface, ns string) map[string]int32 {
	t.Helper()
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int32{}
	for _, p := range pods.Items {
		for _, c := range p.Status.ContainerStatuses {
			counts[p.Name] += c.RestartCount
		}
	}
	return counts
}

// checkServerRemoved deletes the third server's node: its etcd member goes, kone there stops
// saying so, and a restart is refused the same way; the two servers left keep taking writes.
func checkServerRemoved(t *testing.T, n *node, cs kubernetes.Interface, servers []*agentNode) {
	t.Helper()
	ctx := context.Background()
	gone := servers[1]
	if err := cs.CoreV1().Nodes().Delete(ctx, gone.name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	const removed = "was removed from the cluster's etcd"
	waitLog := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); !strings.Contains(gone.log(), what); time.Sleep(500 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s does not say %q:\n%s", gone.name, what, gone.log())
			}
		}
	}
	waitLog(removed)
	if !strings.Contains(n.log.String(), "removed the etcd member of a deleted server node") && !strings.Contains(servers[0].log(), "removed the etcd member of a deleted server node") {
		t.Errorf("no server says it removed %s's member", gone.name)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "after-removal", Namespace: "default"}}
	if _, err := cs.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Errorf("the two servers left take no writes: %v", err)
	}
	before := strings.Count(gone.log(), removed)
	gone.start()
	for deadline := time.Now().Add(time.Minute); strings.Count(gone.log(), removed) == before; time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the removed server started again without refusing:\n%s", gone.log())
		}
	}
	if nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
		for _, node := range nodes.Items {
			if node.Name == gone.name {
				t.Errorf("the removed server registered its node again")
			}
		}
	}
}

// clientAt is a client of the server at url, with the admin credentials of kubeconfig: every
// server's certificates come from the same CAs.
func clientAt(t *testing.T, kubeconfig, url string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags(url, kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timeout = 20 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// checkRefusedServerJoins tries the joins a server must refuse, each before it writes the
// cluster's keys or asks for an etcd member: an agent token, settings that differ from the
// cluster's (a joiner here, beside the first server, needs a port of its own, so each is also
// refused for that), Secrets stored otherwise than the cluster stores them, a data dir of another
// cluster, an unreachable first server.
func checkRefusedServerJoins(t *testing.T, n *node, tok string) {
	t.Helper()
	server := "https://127.0.0.1:" + n.https
	agentToken := strings.TrimSpace(n.run(nil, n.bin, "token", "create", "--kubeconfig", n.kubeconfig))
	otherCluster := t.TempDir()
	if _, err := pki.EnsureCA(filepath.Join(otherCluster, "server", "tls"), "server-ca", time.Now()); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, dataDir, server, token, want string
		extra                              []string
	}{
		{name: "agent token", server: server, token: agentToken, want: "agent token"},
		{name: "other cluster CIDR", server: server, token: tok, want: "--cluster-cidr is 10.52.0.0/16 here but 10.42.0.0/16 in the cluster", extra: []string{"--cluster-cidr", "10.52.0.0/16"}},
		{name: "other apiserver port", server: server, token: tok, want: " here but " + n.https + " in the cluster"},
		{name: "secrets stored otherwise", server: server, token: tok, want: "--secrets-encryption is false here but true in the cluster", extra: []string{"--secrets-encryption=false"}},
		{name: "data dir of another cluster", dataDir: otherCluster, server: server, token: tok, want: "belongs to another cluster"},
		{name: "unreachable server", server: "https://127.0.0.1:" + freePort(t), token: tok, want: "cannot reach the server"},
	}
	for _, c := range cases {
		dataDir := c.dataDir
		if dataDir == "" {
			dataDir = t.TempDir()
		}
		ports := freePorts(t, 5)
		args := append([]string{"server", "--data-dir", dataDir, "--server", c.server, "--token", c.token, "--disable-agent",
			"--write-kubeconfig", filepath.Join(dataDir, "kone.yaml"), "--https-listen-port", ports[0],
			"--etcd-client-port", ports[1], "--etcd-peer-port", ports[2],
			"--kube-controller-manager-arg", "secure-port=" + ports[3], "--kube-scheduler-arg", "secure-port=" + ports[4]}, c.extra...)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, n.bin, args...).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%s: got %v, want an error mentioning %q:\n%s", c.name, err, c.want, out)
		}
		if c.dataDir == "" {
			if _, err := os.Stat(filepath.Join(dataDir, "server", "tls", "server-ca.crt")); err == nil {
				t.Errorf("%s: the refused server wrote the cluster's CA", c.name)
			}
		}
	}
	if out := n.kubectl("get", "configmaps", "-n", "kube-system", "-l", "kone.dev/etcd-member-request", "-o", "name"); strings.TrimSpace(out) != "" {
		t.Errorf("a refused server asked for an etcd member: %s", out)
	}
	if strings.Contains(n.log.String(), "etcd member added") {
		t.Errorf("a refused server became an etcd member:\n%s", n.log.String())
	}
}

// checkLeaseTakenAndRegained takes the controller-manager's, the scheduler's and the
// metrics-server's leases from the servers that hold them: each stops its component and stands
// by. Handed back, the lease makes it run the component again in the same process, which then
// does its work.
func checkLeaseTakenAndRegained(t *testing.T, n *node, cs kubernetes.Interface, servers []*agentNode) {
	t.Helper()
	ctx := context.Background()
	leases := cs.CoordinationV1().Leases("kube-system")
	logOf := func(holder string) string {
		for _, s := range servers {
			if s.name == holder {
				return s.log()
			}
		}
		return n.log.String()
	}
	take := func(lease, who string, seconds int32) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			l, err := leases.Get(ctx, lease, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			now := metav1.NewMicroTime(time.Now())
			l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &who, &seconds, &now
			if _, err = leases.Update(ctx, l, metav1.UpdateOptions{}); err == nil {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("give lease %s to %s: %v", lease, who, err)
			}
		}
	}
	metricsAt := metricsEndpoint(t, cs)
	holders := map[string]string{}
	for _, lease := range []string{"kube-controller-manager", "kube-scheduler", "kone-metrics-server"} {
		l, err := leases.Get(ctx, lease, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			t.Fatalf("lease %s: %v %v", lease, l, err)
		}
		holder := *l.Spec.HolderIdentity
		holders[lease] = holder
		take(lease, "intruder", 3600)
		lost := regexp.MustCompile(`lost the lease.*lease=` + lease)
		for deadline := time.Now().Add(30 * time.Second); !lost.MatchString(logOf(holder)); time.Sleep(500 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s kept running %s without the lease:\n%s", holder, lease, logOf(holder))
			}
		}
		if lease == "kone-metrics-server" {
			// Stopped, it listens no more; its published address, deleted meanwhile, comes back
			// with the next run.
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				c, err := net.DialTimeout("tcp", metricsAt, time.Second)
				if err != nil {
					break
				}
				c.Close()
				if time.Now().After(deadline) {
					t.Fatalf("the metrics-server of %s, which lost its lease, still listens on %s", holder, metricsAt)
				}
			}
			if err := cs.DiscoveryV1().EndpointSlices("kube-system").DeleteCollection(ctx, metav1.DeleteOptions{},
				metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=metrics-server"}); err != nil {
				t.Fatal(err)
			}
		}
		take(lease, holder, 15)
	}
	// Both work again: a Deployment gets its pod, scheduled.
	ns := "kone-node-it"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	serveWeb(t, cs, ns, 1, true)
	waitPodsRunning(t, cs, ns, 1)
	// The metrics-server, run again, has scraped the nodes.
	var err error
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		if err = nodeMetricsServed(cs); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no node metrics a minute after the metrics-server's server got its lease back: %v\n%s", err, logOf(holders["kone-metrics-server"]))
		}
	}
	if again := metricsEndpoint(t, cs); again != metricsAt {
		t.Errorf("the metrics-server, run again, published %s, not %s", again, metricsAt)
	}
	for lease, holder := range holders {
		if l, err := leases.Get(ctx, lease, metav1.GetOptions{}); err != nil || *l.Spec.HolderIdentity != holder {
			t.Errorf("lease %s went to %v (%v), not back to %s", lease, l.Spec.HolderIdentity, err, holder)
		}
	}
	for _, s := range servers {
		if strings.Contains(s.log(), "kone: ") {
			t.Errorf("%s stopped:\n%s", s.name, s.log())
		}
	}
}
