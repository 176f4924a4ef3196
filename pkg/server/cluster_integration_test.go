package server_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	cloudproviderapi "k8s.io/cloud-provider/api"
	"k8s.io/utils/ptr"

	"github.com/kone-dev/kone/pkg/pki"
)

// The extra nodes' network: the host is .1 on the bridge that scripts/node makes.
const (
	bridgeHost = "172.31.254.1"
	nodeNet    = "172.31.254."
)

// agentNode is a `kone agent` in namespaces of its own, run by scripts/node.
type agentNode struct {
	t          *testing.T
	script     string
	name, ip   string
	args       []string
	machineLog string
}

func newAgent(t *testing.T, bin, name, ip, server, tok string) *agentNode {
	t.Helper()
	script, err := filepath.Abs("../../scripts/node")
	if err != nil {
		t.Fatal(err)
	}
	a := &agentNode{t: t, script: script, name: name, ip: ip,
		args:       []string{bin, "agent", "--server", server, "--token", tok, "--node-ip", ip},
		machineLog: filepath.Join("/var/lib/kone-nodes", name, "kone.log")}
	// The node's images directory, ready before it starts.
	images := filepath.Join("/var/lib/kone-nodes", name, "lib", "kone", "agent", "images")
	addBusybox(t, images)
	t.Cleanup(func() { a.run("down", name) })
	return a
}

func (a *agentNode) run(args ...string) {
	a.t.Helper()
	if out, err := exec.Command(a.script, args...).CombinedOutput(); err != nil {
		a.t.Errorf("scripts/node %v: %v\n%s", args, err, out)
	}
}

// exec runs a command inside the node's namespaces, where its /var/lib/kone is the node's.
func (a *agentNode) exec(args ...string) (string, error) {
	out, err := exec.Command(a.script, append([]string{"exec", a.name}, args...)...).CombinedOutput()
	return string(out), err
}

// readFile reads the node's file at path, as the node sees it, through the host's view of the
// node's /var/lib, following a link that points inside the node (kubelet's current
// certificates are such links).
func (a *agentNode) readFile(path string) ([]byte, error) {
	host := func(p string) string {
		return filepath.Join("/var/lib/kone-nodes", a.name, "lib", strings.TrimPrefix(p, "/var/lib/"))
	}
	p := host(path)
	if target, err := os.Readlink(p); err == nil && filepath.IsAbs(target) {
		p = host(target)
	}
	return os.ReadFile(p)
}

func (a *agentNode) up() { a.run(append([]string{"up", a.name, a.ip, "--"}, a.args...)...) }

// kill ends the node's kone with SIGKILL, as a power cut would; its containers keep running.
func (a *agentNode) kill() {
	a.t.Helper()
	pid, err := os.ReadFile(filepath.Join("/var/lib/kone-nodes", a.name, "pid"))
	if err != nil {
		a.t.Fatal(err)
	}
	if out, err := exec.Command("kill", "-KILL", strings.TrimSpace(string(pid))).CombinedOutput(); err != nil {
		a.t.Fatalf("kill %s: %v %s", a.name, err, out)
	}
}
func (a *agentNode) stop()  { a.run("stop", a.name) }
func (a *agentNode) start() { a.run(append([]string{"start", a.name, "--"}, a.args...)...) }

// waitReady waits for the agent's ready line, which may follow its node's Ready condition.
func (a *agentNode) waitReady() {
	a.t.Helper()
	for deadline := time.Now().Add(3 * time.Minute); !strings.Contains(a.log(), "kone is ready"); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			a.t.Fatalf("%s is not ready within 3 minutes:\n%s", a.name, a.log())
		}
	}
}

func (a *agentNode) log() string {
	data, _ := os.ReadFile(a.machineLog)
	return string(data)
}

// TestAgents runs a cluster of one server and two agents on this machine: joins that must be
// refused are, a Deployment spread over the three nodes reaches every pod by IP and the
// Service by name from every node, NetworkPolicies hold on the same node and across nodes,
// pod traffic leaving the cluster network is masqueraded, NodePorts answer on every node, the
// agents keep working through a rotate-ca, and an agent restart leaves its pods untouched.
func TestAgents(t *testing.T) {
	bin := koneBinary(t)
	n, cs, first := startClusterServer(t, bin)
	server := "https://" + bridgeHost + ":" + n.https
	// The server's token, rotated: the new one is printed once and is in the token file; the
	// old one joins nothing.
	tok := strings.TrimSpace(n.run(nil, bin, "token", "rotate", "--kubeconfig", n.kubeconfig, "--data-dir", n.dataDir))
	if data, _ := os.ReadFile(filepath.Join(n.dataDir, "server", "token")); strings.TrimSpace(string(data)) != tok || tok == first {
		t.Fatalf("token rotate printed %q; the token file holds %q; the token was %q", tok, data, first)
	}
	checkRefusedJoins(t, n, cs, tok, first)

	agents := []*agentNode{newAgent(t, bin, "agent-1", nodeNet+"2", server, tok), newAgent(t, bin, "agent-2", nodeNet+"3", server, tok)}
	// An address from a documentation range: published, never sent to. A label and a taint
	// that leaves the node schedulable, as a user gives them.
	agents[1].args = append(agents[1].args, "--node-external-ip", "203.0.113.20",
		"--node-label", "kone.dev/zone=edge-2", "--node-taint", "kone.dev/slow=yes:PreferNoSchedule")
	for _, a := range agents {
		a.up()
	}
	waitNodesReady(t, cs, 3)
	checkNodeAddresses(t, cs, "agent-1", "InternalIP="+nodeNet+"2 Hostname=agent-1")
	checkNodeAddresses(t, cs, "agent-2", "InternalIP="+nodeNet+"3 ExternalIP=203.0.113.20 Hostname=agent-2")
	if node, err := cs.CoreV1().Nodes().Get(context.Background(), "agent-2", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if node.Labels["kone.dev/zone"] != "edge-2" || !slices.ContainsFunc(node.Spec.Taints, func(taint corev1.Taint) bool {
		return taint.Key == "kone.dev/slow" && taint.Value == "yes" && taint.Effect == corev1.TaintEffectPreferNoSchedule
	}) {
		t.Errorf("agent-2 lacks its --node-label or --node-taint: labels %v, taints %v", node.Labels, node.Spec.Taints)
	}
	// Agents have no role; the server's node is the control plane.
	for _, line := range strings.Split(n.kubectl("get", "nodes", "--no-headers"), "\n") {
		if f := strings.Fields(line); len(f) > 2 && strings.HasPrefix(f[0], "agent-") && f[2] != "<none>" {
			t.Errorf("agent node with roles: %s", line)
		}
	}
	for _, a := range agents {
		a.waitReady()
		// An agent runs no control plane.
		for _, component := range []string{"etcd ready", "kube-apiserver ready"} {
			if strings.Contains(a.log(), component) {
				t.Errorf("agent %s runs %s", a.name, component)
			}
		}
	}

	// `kone certificate check` on an agent's machine, given the agent's own flags, lists what kone
	// keeps there: the CAs, the components' certificates and kubelet's.
	certs, err := agents[0].exec(append([]string{bin, "certificate", "check"}, agents[0].args[2:]...)...)
	if err != nil {
		t.Errorf("kone certificate check on agent-1: %v\n%s", err, certs)
	}
	for _, want := range []string{"agent/tls/server-ca.crt", "agent/tls/client-kube-proxy.crt", "agent/tls/client-flannel.crt", "agent/tls/client-local-path.crt",
		"agent/kubelet/pki/kubelet-client-current.pem", "system:node:agent-1"} {
		if !strings.Contains(certs, want) {
			t.Errorf("kone certificate check on agent-1 lacks %q:\n%s", want, certs)
		}
	}

	checkIdentityTheft(t, n, tok, "agent-1", nodeNet+"2")
	checkServingForServers(t, n, "agent-1", bridgeHost, "10.43.0.1")

	ns := "kone-node-it"
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := serveWeb(t, cs, ns, 3, true)
	pods := waitPodsRunning(t, cs, ns, 3)
	onNode := map[string]corev1.Pod{}
	for _, p := range pods {
		onNode[p.Spec.NodeName] = p
	}
	if len(onNode) != 3 {
		t.Fatalf("the Deployment's pods are not spread over the three nodes: %v", onNode)
	}
	// Every pod reaches every other pod by IP, and the Service by name through its own node's DNS.
	// The apiserver reaches every kubelet, checking its serving certificate, for logs and exec.
	for _, from := range pods {
		if out := kubectlEventually(t, n, "logs", "-n", ns, from.Name); !strings.Contains(out, "serving "+from.Name) {
			t.Errorf("logs of %s (on %s): %q", from.Name, from.Spec.NodeName, out)
		}
		for _, to := range pods {
			url := "http://" + to.Status.PodIP + ":8080/"
			if out := kubectlEventually(t, n, "exec", "-n", ns, from.Name, "--", "timeout", "5", "wget", "-q", "-O-", url); strings.TrimSpace(out) != "hello from "+to.Name {
				t.Errorf("%s (on %s) GET %s: %q", from.Name, from.Spec.NodeName, url, out)
			}
		}
		if out := kubectlEventually(t, n, "exec", "-n", ns, from.Name, "--", "timeout", "5", "wget", "-q", "-O-", "http://web."+ns+"/"); !strings.HasPrefix(out, "hello from web-") {
			t.Errorf("%s (on %s): the Service by name: %q", from.Name, from.Spec.NodeName, out)
		}
	}
	for _, ip := range []string{bridgeHost, nodeNet + "2", nodeNet + "3"} {
		if body := httpGetEventually(t, fmt.Sprintf("http://%s:%d/", ip, svc.Spec.Ports[0].NodePort)); !strings.HasPrefix(body, "hello from web-") {
			t.Errorf("NodePort on %s: %q", ip, body)
		}
	}
	checkNetworkPolicy(t, n, cs, ns, onNode["agent-1"], onNode["agent-2"], "web."+ns+".svc.cluster.local", svc.Spec.ClusterIP)
	checkMasquerade(t, n, ns, onNode["agent-1"], bridgeHost, nodeNet+"2")
	internalIPs := []string{bridgeHost, nodeNet + "2", nodeNet + "3"}
	checkLoadBalancerNodes(t, cs, ns, svc.Spec.Selector, append(internalIPs, "203.0.113.20"), internalIPs, "agent-1", nodeNet+"2")
	storageNS := "kone-storage-it"
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: storageNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkLocalPath(t, cs, storageNS, "agent-1", "/var/lib/kone/storage", func(path string) bool {
		_, err := agents[0].exec("test", "-e", path)
		return err == nil
	})
	checkTop(t, n, cs, waitNodesReady(t, cs, 3))

	containers := containerIDs(t, cs, ns)
	// `kone certificate rotate` on agent-2, with its flags, while it runs; kubelet takes its new
	// client certificate, and asks for a new serving certificate, as the agent restarts.
	checkRotateOnAgent(t, cs, agents[1], onNode["agent-2"], func(args ...string) string { return kubectlEventually(t, n, args...) })

	// New CAs while the agents run; the restart below has the first take them.
	newCA := checkRotateCA(t, n, cs, []string{agents[0].name, agents[1].name}, onNode["agent-1"])
	checkMetricsAfterRotation(t, n, cs, newCA)

	// An agent restart, after the token it joined with was deleted: its pods keep running,
	// untouched, and it is Ready again with the credentials it got when it joined.
	_, cred, _ := strings.Cut(tok, "::")
	id, _, _ := strings.Cut(cred, ".")
	if err := cs.CoreV1().Secrets("kube-system").Delete(context.Background(), "bootstrap-token-"+id, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// With a certificate gone, the restarted agent asks for it again, with its own credentials
	// and its node secret.
	flannelCert := filepath.Join("/var/lib/kone-nodes", agents[0].name, "lib", "kone", "agent", "tls", "client-flannel.crt")
	restarted := time.Now()
	agents[0].stop()
	if err := os.Remove(flannelCert); err != nil {
		t.Fatal(err)
	}
	agents[0].start()
	waitNodesReady(t, cs, 3)
	checkRenewedBySelf(t, cs, agents[0].name, flannelCert, restarted)
	if got := agentCerts(t, agents[0].name, "server-ca.crt"); len(got) != 3 || !got[0].Equal(newCA) {
		t.Errorf("the restarted agent trusts %d server CAs, the first the new one: %t", len(got), len(got) > 0 && got[0].Equal(newCA))
	}
	time.Sleep(10 * time.Second) // long enough for kubelet to have noticed a dead container
	if after := containerIDs(t, cs, ns); strings.Join(after, ",") != strings.Join(containers, ",") {
		t.Errorf("containers changed across a restart of an agent:\nbefore %v\nafter  %v", containers, after)
	}
	from := onNode["agent-1"]
	if out := kubectlEventually(t, n, "exec", "-n", ns, from.Name, "--", "timeout", "5", "wget", "-q", "-O-", "http://web/"); !strings.HasPrefix(out, "hello from web-") {
		t.Errorf("the Service from the restarted agent: %q", out)
	}

	// A running agent renews a certificate of its that has 10 days left, through the cluster.
	agentTLS := filepath.Join("/var/lib/kone-nodes", agents[1].name, "lib", "kone", "agent", "tls")
	proxyCert := pki.File{Cert: filepath.Join(agentTLS, "client-kube-proxy.crt"), Key: filepath.Join(agentTLS, "client-kube-proxy.key")}
	short := shorten(t, filepath.Join(n.dataDir, "server", "tls"), "client-ca", proxyCert)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		c := readCert(t, proxyCert.Cert)
		if c.SerialNumber.Cmp(short) != 0 && c.NotAfter.After(time.Now().Add(300*24*time.Hour)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s did not renew its kube-proxy certificate with 10 days left within a minute:\n%s", agents[1].name, agents[1].log())
		}
	}

	// A server restart: the agents' pods keep running and their nodes are Ready again soon after.
	// The server's token, deleted above, stays deleted.
	n.stop()
	time.Sleep(5 * time.Second)
	n.start()
	if _, err := cs.CoreV1().Secrets("kube-system").Get(context.Background(), "bootstrap-token-"+id, metav1.GetOptions{}); err == nil {
		t.Errorf("the server's deleted token %s came back with the server's restart", id)
	}
	back := time.Now()
	// Ready again: every kubelet has renewed its node's lease with the returned server.
	waitNodesReady(t, cs, 3)
	waitLeasesRenewed(t, cs, []string{agents[0].name, agents[1].name}, back, 30*time.Second, "the server's return")
	t.Logf("every agent renewed its node lease %s after the server returned", time.Since(back).Round(100*time.Millisecond))
	if after := containerIDs(t, cs, ns); strings.Join(after, ",") != strings.Join(containers, ",") {
		t.Errorf("containers changed across a restart of the server:\nbefore %v\nafter  %v", containers, after)
	}

	_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	waitPodsGone(t, cs, ns)

	// Once its node is deleted, a machine's name is free for the next one to join with it.
	agents[1].stop()
	newToken := strings.TrimSpace(n.run(nil, bin, "token", "create", "--kubeconfig", n.kubeconfig, "--ttl", "1h"))
	checkIdentityAfterDelete(t, n, cs, newToken, agents[1].name)
}

// checkRotateOnAgent runs `kone certificate rotate` on a running agent, with the agent's flags,
// and checks that its components' certificates and kubelet's client certificate are new, with
// new keys, the old ones copied aside, and kubelet's serving certificate removed; then that the
// restarted agent's kubelet uses the new client certificate and a new serving certificate, which
// the apiserver accepts for exec into pod, a pod on that node.
func checkRotateOnAgent(t *testing.T, cs kubernetes.Interface, a *agentNode, pod corev1.Pod, kubectl func(...string) string) {
	t.Helper()
	const kubeletDir = "/var/lib/kone/agent/kubelet/pki"
	files := []string{filepath.Join(kubeletDir, "kubelet-client-current.pem")}
	for _, c := range []string{"kube-proxy", "coredns", "flannel"} {
		files = append(files, "/var/lib/kone/agent/tls/client-"+c+".crt")
	}
	before := map[string][]byte{}
	for _, f := range files {
		data, err := a.readFile(f)
		if err != nil {
			t.Fatal(err)
		}
		before[f] = data
	}
	serving := agentCert(t, a, filepath.Join(kubeletDir, "kubelet-server-current.pem"))
	out, err := a.exec(append([]string{a.args[0], "certificate", "rotate"}, a.args[2:]...)...)
	if err != nil {
		t.Fatalf("kone certificate rotate on %s: %v\n%s", a.name, err, out)
	}
	for _, want := range []string{"kube-proxy: issued with a new key", "coredns: issued", "flannel: issued", "kubelet: a new client certificate", "tls-rotated-"} {
		if !strings.Contains(out, want) {
			t.Errorf("kone certificate rotate on %s: the output lacks %q:\n%s", a.name, want, out)
		}
	}
	for _, f := range files {
		old, err := pki.ParseCert(before[f])
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		c := agentCert(t, a, f)
		if c.SerialNumber.Cmp(old.SerialNumber) == 0 || bytes.Equal(c.RawSubjectPublicKeyInfo, old.RawSubjectPublicKeyInfo) ||
			c.Subject.CommonName != old.Subject.CommonName {
			t.Errorf("%s: not issued anew with a new key for %s (was %s)", f, c.Subject.CommonName, old.Subject.CommonName)
		}
		rel, _ := filepath.Rel("/var/lib/kone", f)
		kept, _ := filepath.Glob(filepath.Join("/var/lib/kone-nodes", a.name, "lib", "kone", "agent", "tls-rotated-*", rel))
		if len(kept) != 1 {
			t.Errorf("the old %s is not kept aside once: %v", rel, kept)
		} else if data, _ := os.ReadFile(kept[0]); !bytes.Equal(data, before[f]) {
			t.Errorf("%s kept aside differs from the old file", kept[0])
		}
	}
	if _, err := os.Lstat(filepath.Join("/var/lib/kone-nodes", a.name, "lib", "kone", "agent", "kubelet", "pki", "kubelet-server-current.pem")); err == nil {
		t.Errorf("kubelet's serving certificate is still in place after the rotation")
	}
	// A service an agent has no certificate of is refused.
	if out, err := a.exec(append([]string{a.args[0], "certificate", "rotate", "--service", "etcd"}, a.args[2:]...)...); err == nil || !strings.Contains(out, "coredns, flannel, kube-proxy, kubelet") {
		t.Errorf("rotate --service etcd on an agent: %v %s", err, out)
	}
	rotated := agentCert(t, a, files[0])

	restarted := time.Now()
	a.stop()
	a.start()
	waitLeasesRenewed(t, cs, []string{a.name}, restarted, time.Minute, a.name+"'s restart")
	if c := agentCert(t, a, files[0]); c.SerialNumber.Cmp(rotated.SerialNumber) != 0 {
		t.Errorf("after the restart, kubelet's client certificate is not the one rotate made")
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		if data, err := a.readFile(filepath.Join(kubeletDir, "kubelet-server-current.pem")); err == nil {
			if c, err := pki.ParseCert(data); err == nil && c.SerialNumber.Cmp(serving.SerialNumber) != 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubelet of %s has no new serving certificate a minute after its restart", a.name)
		}
	}
	if out := kubectl("exec", "-n", pod.Namespace, pod.Name, "--", "echo", "rotated"); strings.TrimSpace(out) != "rotated" {
		t.Errorf("exec into %s on %s after its rotation: %q", pod.Name, a.name, out)
	}
}

// agentCert is the first certificate in a's file at path, as the node sees it.
func agentCert(t *testing.T, a *agentNode, path string) *x509.Certificate {
	t.Helper()
	data, err := a.readFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.ParseCert(data)
	if err != nil {
		t.Fatalf("%s of %s: %v", path, a.name, err)
	}
	return c
}

// waitLeasesRenewed waits until each node of names has renewed its lease after since, which
// its kubelet does every 10 s while it reaches the apiserver, for up to within after since.
func waitLeasesRenewed(t *testing.T, cs kubernetes.Interface, names []string, since time.Time, within time.Duration, event string) {
	t.Helper()
	for _, name := range names {
		for {
			lease, err := cs.CoordinationV1().Leases("kube-node-lease").Get(context.Background(), name, metav1.GetOptions{})
			if err == nil && lease.Spec.RenewTime != nil && lease.Spec.RenewTime.After(since) {
				break
			}
			if time.Since(since) > within {
				t.Fatalf("node %s has not renewed its lease within %s of %s", name, within, event)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// checkRenewedBySelf: node name asks for its flannel certificate again after since, with its
// own credentials, and gets it.
func checkRenewedBySelf(t *testing.T, cs kubernetes.Interface, name, certFile string, since time.Time) {
	t.Helper()
	approved := func() bool {
		csrs, err := cs.CertificatesV1().CertificateSigningRequests().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, r := range csrs.Items {
			if r.CreationTimestamp.Time.Before(since.Truncate(time.Second)) || r.Annotations["kone.dev/node-name"] != name ||
				!strings.Contains(r.Name, "flannel") || r.Spec.Username != "system:node:"+name {
				continue
			}
			for _, c := range r.Status.Conditions {
				if c.Type == "Approved" {
					return true
				}
			}
		}
		return false
	}
	for deadline := time.Now().Add(time.Minute); !approved(); time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			t.Fatalf("no approved request of %s's own for its flannel certificate within a minute of its restart", name)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
		if _, err := os.Stat(certFile); err == nil {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("%s's flannel certificate after its restart: %v", name, err)
		}
	}
}

// startClusterServer starts a server with its node on the bridge that scripts/node makes for
// agents, busybox in its images directory, and returns it Ready with its admin client and join
// token. The test's cleanup takes the bridge down and checks that the node left nothing behind.
func startClusterServer(t *testing.T, bin string, extra ...string) (*node, kubernetes.Interface, string) {
	t.Helper()
	before := snapshotHost(t)
	script, _ := filepath.Abs("../../scripts/node")
	if out, err := exec.Command(script, "bridge-up").CombinedOutput(); err != nil {
		t.Fatalf("bridge: %v\n%s", err, out)
	}
	n := newNode(t, bin, t.TempDir())
	n.nodeSide = true
	n.extra = append([]string{"--node-ip", bridgeHost}, extra...)
	addBusybox(t, filepath.Join(n.dataDir, "agent", "images"))
	t.Cleanup(func() { teardownNode(t, n, before) })
	// Runs before the teardown: the agents are gone by then.
	t.Cleanup(func() { _ = exec.Command(script, "bridge-down").Run() })
	n.start()
	cs := n.client()
	waitNodesReady(t, cs, 1)
	tok, err := os.ReadFile(filepath.Join(n.dataDir, "server", "token"))
	if err != nil {
		t.Fatal(err)
	}
	return n, cs, strings.TrimSpace(string(tok))
}

// checkNodeAddresses waits until kone's cloud node controller has initialised node name: its
// addresses are want, its provider ID kone's, and the taint that kept pods off it is gone.
func checkNodeAddresses(t *testing.T, cs kubernetes.Interface, name, want string) {
	t.Helper()
	var got []string
	var node *corev1.Node
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		if node, err = cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, a := range node.Status.Addresses {
			got = append(got, string(a.Type)+"="+a.Address)
		}
		initialised := node.Spec.ProviderID == "kone://"+name
		for _, taint := range node.Spec.Taints {
			if taint.Key == cloudproviderapi.TaintExternalCloudProvider {
				initialised = false
			}
		}
		if initialised && strings.Join(got, " ") == want {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Errorf("node %s: addresses %v, provider ID %q, taints %v; want addresses %s, provider ID kone://%s, no %s taint",
		name, got, node.Spec.ProviderID, node.Spec.Taints, want, name, cloudproviderapi.TaintExternalCloudProvider)
}

// checkRefusedJoins: joins that must fail do, say why, send no secret where the CA is not the
// pinned one, and register nothing. rotated is a token that `kone token rotate` replaced.
func checkRefusedJoins(t *testing.T, n *node, cs kubernetes.Interface, tok, rotated string) {
	t.Helper()
	pinned, cred, _ := strings.Cut(strings.TrimPrefix(tok, "K10"), "::")
	id, _, _ := strings.Cut(cred, ".")
	server := "https://127.0.0.1:" + n.https
	expired := strings.TrimSpace(n.run(nil, n.bin, "token", "create", "--kubeconfig", n.kubeconfig, "--ttl", "1s"))
	expires := time.Now().Add(time.Second)
	cases := []struct{ name, server, token, want string }{
		{"forged CA hash", server, "K10" + strings.Repeat("0", 64) + "::" + cred, "does not match the hash in the token"},
		{"wrong secret", server, "K10" + pinned + "::" + id + ".0123456789abcdef", "secret is wrong"},
		{"unknown token", server, "K10" + pinned + "::zzzzzz.0123456789abcdef", "knows no valid token with id zzzzzz"},
		{"rotated token", server, rotated, "expired or was deleted"},
		{"expired token", server, expired, "expired or was deleted"},
		{"unreachable server", "https://127.0.0.1:" + freePort(t), tok, "cannot reach the server"},
		// The server's own node holds its name: a machine asking for it is refused.
		{"taken node name", server, tok, "--node-name"},
	}
	nodes, err := cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	taken := nodes.Items[0].Name
	time.Sleep(time.Until(expires.Add(time.Second))) // past the TTL, with the expiry's second rounded
	for _, c := range cases {
		dataDir := t.TempDir()
		args := []string{"agent", "--data-dir", dataDir, "--server", c.server, "--token", c.token, "--node-name", "refused"}
		if c.name == "taken node name" {
			args[len(args)-1] = taken
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, n.bin, args...).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%s: want a refusal saying %q, got %v:\n%s", c.name, c.want, err, out)
		}
		if strings.Contains(string(out), cred) {
			t.Errorf("%s: the token's secret is in the output", c.name)
		}
		// A refused first join leaves no credentials behind.
		if left, _ := filepath.Glob(filepath.Join(dataDir, "agent", "*.kubeconfig")); len(left) > 0 {
			t.Errorf("%s: a refused join left %v", c.name, left)
		}
	}
	// The forged hash was refused before anything was sent: no request for a certificate came.
	csrs, err := cs.CertificatesV1().CertificateSigningRequests().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range csrs.Items {
		if r.Annotations["kone.dev/node-name"] == "refused" {
			t.Errorf("a refused join asked for a certificate: %s", r.Name)
		}
	}
	if nodes, _ := cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{}); len(nodes.Items) != 1 {
		t.Errorf("a refused join registered a node: %d nodes", len(nodes.Items))
	}
}

// serveWeb creates a Deployment of busybox web servers that answer "hello from <pod>" (and
// print "serving <pod>") behind a NodePort Service; spread puts at most one pod on a node.
func serveWeb(t *testing.T, cs kubernetes.Interface, ns string, replicas int32, spread bool) *corev1.Service {
	t.Helper()
	labels := map[string]string{"app": "web"}
	serve := `mkdir -p /www && echo "hello from $HOSTNAME" > /www/index.html && echo "serving $HOSTNAME" && exec /bin/busybox httpd -f -p 8080 -h /www`
	pod := corev1.PodSpec{Containers: []corev1.Container{{
		Name: "web", Image: busyboxImage, ImagePullPolicy: corev1.PullNever,
		Command: []string{"/bin/busybox", "sh", "-c", serve},
		Ports:   []corev1.ContainerPort{{ContainerPort: 8080}},
	}}}
	if spread {
		pod.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
				LabelSelector: &metav1.LabelSelector{MatchLabels: labels}, TopologyKey: "kubernetes.io/hostname",
			}},
		}}
	}
	web := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: pod},
		},
	}
	ctx := context.Background()
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, web, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: labels,
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func waitNodesReady(t *testing.T, cs kubernetes.Interface, want int) []string {
	t.Helper()
	var names []string
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		nodes, err := cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			continue
		}
		names = names[:0]
		for _, n := range nodes.Items {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					names = append(names, n.Name)
				}
			}
		}
		if len(names) == want && len(nodes.Items) == want {
			return names
		}
	}
	t.Fatalf("want %d Ready nodes within 3 minutes, have %v", want, names)
	return nil
}

func waitPodsGone(t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		if err == nil && len(pods.Items) == 0 {
			return
		}
	}
	t.Errorf("pods of %s still there after 2 minutes", ns)
}

// checkMasquerade: a pod's traffic to an address outside the cluster network leaves its node
// with the node's address (README: "pod traffic leaving the cluster network is masqueraded").
// The other end is a listener of the test's on the test bridge.
func checkMasquerade(t *testing.T, n *node, ns string, from corev1.Pod, listenHost, nodeIP string) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(listenHost, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		_, _ = io.WriteString(w, host)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	url := "http://" + ln.Addr().String() + "/"
	if out := kubectlEventually(t, n, "exec", "-n", ns, from.Name, "--", "timeout", "5", "wget", "-q", "-O-", url); strings.TrimSpace(out) != nodeIP {
		t.Errorf("%s (pod address %s, on %s) reached %s from %q, want its node's address %s", from.Name, from.Status.PodIP, from.Spec.NodeName, url, out, nodeIP)
	}
}
