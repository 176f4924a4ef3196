package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kone-dev/kone/pkg/images"
)

const busyboxImage = "docker.io/library/busybox:kone-test"

// busyboxArchive is an OCI image of Debian's static busybox, built here: no registry is needed.
// The applets kubectl's tools call by name (tar for cp) are links to it.
func busyboxArchive(t *testing.T) []byte {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("this test needs Debian's busybox-static (apt-get install busybox-static): %v", err)
	}
	files := []images.File{{Name: "bin/busybox", Mode: 0o755, Data: bb}}
	for _, applet := range []string{"sh", "tar", "cat", "ls", "mkdir", "sleep", "wget", "httpd", "echo", "timeout"} {
		files = append(files, images.File{Name: "bin/" + applet, Mode: 0o777, Link: "busybox"})
	}
	archive, err := images.OCIArchive(busyboxImage, []string{"/bin/busybox"}, files)
	if err != nil {
		t.Fatal(err)
	}
	return archive
}

// addBusybox puts the busybox image into a node's images directory, made if needed.
func addBusybox(t *testing.T, imagesDir string) {
	t.Helper()
	if err := os.MkdirAll(imagesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(imagesDir, "busybox.tar"), busyboxArchive(t), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestNodeSide runs real pods on a one-node kone server: an image from the images directory,
// a Deployment behind a Service reached by DNS name, ClusterIP, NodePort and hairpin, logs,
// exec, attach, port-forward and cp, a NetworkPolicy, and a restart of kone, into kube-proxy's
// nftables mode and with --disable network-policy, that no container notices. Then it removes everything and checks that the host is as it was.
func TestNodeSide(t *testing.T) {
	bin := koneBinary(t)
	before := snapshotHost(t)
	n := newNode(t, bin, t.TempDir())
	n.nodeSide = true
	imagesDir := filepath.Join(n.dataDir, "agent", "images")
	addBusybox(t, imagesDir)
	// A broken archive is skipped; the others still import.
	if err := os.WriteFile(filepath.Join(imagesDir, "broken.tar.gz"), []byte("not a tarball"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { teardownNode(t, n, before) })

	n.start()
	for _, stage := range []string{"containerd ready in", "kubelet ready in", "kube-proxy ready in", "coredns ready in"} {
		if !strings.Contains(n.log.String(), stage) {
			t.Errorf("log lacks %q", stage)
		}
	}
	if !strings.Contains(n.log.String(), "broken.tar.gz") {
		t.Errorf("the broken archive is not named in the log:\n%s", n.log.String())
	}
	cs := n.client()
	ctx := context.Background()
	nodeName := waitNodesReady(t, cs, 1)[0]
	// The server's node carries its roles, as k3s's does.
	if out := n.kubectl("get", "node", nodeName); !strings.Contains(out, " control-plane,etcd ") {
		t.Errorf("kubectl get node: the server's node lacks its roles:\n%s", out)
	}
	checkPortTLS(t, "kubelet", "10250", nil)
	// Every certificate of the server and of its node is listed, a year or more from expiry.
	certs := n.run(nil, bin, append([]string{"certificate", "check"}, n.args()[1:]...)...)
	for _, want := range []string{"server/tls/server-ca.crt", "server/tls/etcd/peer.crt", "agent/tls/", "system:admin"} {
		if !strings.Contains(certs, want) {
			t.Errorf("kone certificate check lacks %q:\n%s", want, certs)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(certs), "\n")[1:] {
		f := strings.Fields(line)
		if days, err := strconv.Atoi(f[len(f)-1]); err != nil || days < 363 {
			t.Errorf("kone certificate check: a fresh certificate with %q days left: %s", f[len(f)-1], line)
		}
	}
	checkNodeAddresses(t, cs, nodeName, "InternalIP="+nodeInternalIP(t, cs, nodeName)+" Hostname="+nodeName)

	ns := "kone-node-it"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := serveWeb(t, cs, ns, 2, false)
	// The client serves too, behind a Service of its own: it reaching itself through that
	// Service is the hairpin case.
	client := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: ns, Labels: map[string]string{"app": "client"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "client", Image: busyboxImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"sh", "-c", "mkdir -p /www && echo client > /www/index.html && httpd -p 8080 -h /www && exec sleep 3600"},
		}}},
	}
	ticker := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ticker", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "ticker", Image: busyboxImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"sh", "-c", "while true; do echo tick; sleep 1; done"},
		}}},
	}
	for _, p := range []*corev1.Pod{client, ticker} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "self", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "client"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := waitPodsRunning(t, cs, ns, 4)

	// From another pod: the Service by DNS name and by ClusterIP.
	for _, url := range []string{"http://web." + ns + ".svc.cluster.local/", "http://web." + ns + "/", "http://" + svc.Spec.ClusterIP + "/"} {
		out := kubectlEventually(t, n, "exec", "-n", ns, "client", "--", "/bin/busybox", "timeout", "5", "/bin/busybox", "wget", "-q", "-O-", url)
		if !strings.Contains(out, "hello from web-") {
			t.Errorf("GET %s from a pod: %q", url, out)
		}
	}
	if out := kubectlEventually(t, n, "exec", "-n", ns, "client", "--", "timeout", "5", "wget", "-q", "-O-", "http://self/"); strings.TrimSpace(out) != "client" {
		t.Errorf("hairpin, a pod through its own Service: %q", out)
	}
	// From the host: the NodePort on the node's address.
	nodeIP := nodeInternalIP(t, cs, nodeName)
	if body := httpGetEventually(t, fmt.Sprintf("http://%s:%d/", nodeIP, svc.Spec.Ports[0].NodePort)); !strings.Contains(body, "hello from web-") {
		t.Errorf("NodePort: %q", body)
	}
	checkLoadBalancer(t, cs, ns, svc.Spec.Selector, nodeIP)
	checkServerLocalPath(t, n, cs, nodeName)
	// logs and exec return what the pods printed and wrote.
	for _, p := range pods {
		if !strings.HasPrefix(p.Name, "web-") {
			continue
		}
		if out := n.kubectl("logs", "-n", ns, p.Name); !strings.Contains(out, "serving "+p.Name) {
			t.Errorf("logs %s: %q", p.Name, out)
		}
		if out := n.kubectl("exec", "-n", ns, p.Name, "--", "/bin/busybox", "cat", "/www/index.html"); strings.TrimSpace(out) != "hello from "+p.Name {
			t.Errorf("exec %s: %q", p.Name, out)
		}
	}

	checkStreaming(t, n, ns, pods)

	// A policy that isolates the web pods: the client no longer reaches them, through their
	// Service either. The restart below turns enforcement off, and they are reached again.
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-web", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: svc.Spec.Selector}}}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, deny, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
		// Dropped: the connection hangs until timeout ends wget (exit 143). By address: a DNS
		// lookup that hangs would end the same way.
		out, _ := n.command("kubectl", "--kubeconfig", n.kubeconfig, "exec", "-n", ns, "client", "--", "timeout", "3", "wget", "-q", "-O-", "http://"+svc.Spec.ClusterIP+"/").CombinedOutput()
		if strings.Contains(string(out), "exit code 143") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a default-deny ingress policy on the web pods: the client's connections are not dropped after 30 s: %s", out)
		}
	}
	if !netpolTable(t) {
		t.Error("policies are enforced, but kone's nftables table is not there")
	}

	// A restart of kone, into kube-proxy's nftables mode and with --disable network-policy:
	// every container keeps running, none is restarted or replaced, and Services work as before.
	containers := containerIDs(t, cs, ns)
	n.stop()
	n.extra = []string{"--kube-proxy-arg", "proxy-mode=nftables", "--disable", "network-policy"}
	n.start()
	waitNodesReady(t, cs, 1)
	for deadline := time.Now().Add(30 * time.Second); netpolTable(t); time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			t.Fatal("--disable network-policy: kone's nftables table is still there after 30 s")
		}
	}
	time.Sleep(10 * time.Second) // long enough for kubelet to have noticed a dead container
	if after := containerIDs(t, cs, ns); strings.Join(after, ",") != strings.Join(containers, ",") {
		t.Errorf("containers changed across a restart of kone:\nbefore %v\nafter  %v", containers, after)
	}
	if out := kubectlEventually(t, n, "exec", "-n", ns, "client", "--", "timeout", "5", "wget", "-q", "-O-", "http://web/"); !strings.Contains(out, "hello from web-") {
		t.Errorf("the Service after a restart, in nftables mode: %q", out)
	}
	if body := httpGetEventually(t, fmt.Sprintf("http://%s:%d/", nodeIP, svc.Spec.Ports[0].NodePort)); !strings.Contains(body, "hello from web-") {
		t.Errorf("NodePort in nftables mode: %q", body)
	}
}

// checkStreaming: attach, port-forward and cp, which go through kubelet's streaming server.
func checkStreaming(t *testing.T, n *node, ns string, pods []corev1.Pod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	attach := exec.CommandContext(ctx, n.bin, "kubectl", "--kubeconfig", n.kubeconfig, "attach", "-n", ns, "ticker")
	out, _ := attach.CombinedOutput() // ended by the timeout
	if !strings.Contains(string(out), "tick") {
		t.Errorf("attach: %q", out)
	}

	var web string
	for _, p := range pods {
		if strings.HasPrefix(p.Name, "web-") {
			web = p.Name
		}
	}
	port := freePort(t)
	forward := n.command("kubectl", "--kubeconfig", n.kubeconfig, "port-forward", "-n", ns, "pod/"+web, port+":8080")
	forward.Stdout, forward.Stderr = io.Discard, io.Discard
	if err := forward.Start(); err != nil {
		t.Fatal(err)
	}
	if body := httpGetEventually(t, "http://127.0.0.1:"+port+"/"); strings.TrimSpace(body) != "hello from "+web {
		t.Errorf("port-forward: %q", body)
	}
	forward.Process.Kill()
	forward.Wait()

	local := filepath.Join(t.TempDir(), "note.txt")
	if err := os.WriteFile(local, []byte("copied by kubectl cp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n.kubectl("cp", local, ns+"/client:/www/note.txt")
	if out := n.kubectl("exec", "-n", ns, "client", "--", "cat", "/www/note.txt"); out != "copied by kubectl cp\n" {
		t.Errorf("cp: %q", out)
	}
}

func (n *node) kubectl(args ...string) string {
	n.t.Helper()
	return n.run(nil, n.bin, append([]string{"kubectl", "--kubeconfig", n.kubeconfig}, args...)...)
}

// kubectlEventually retries a kubectl command for up to a minute: a Service's rules and DNS
// records follow its creation by a moment.
func kubectlEventually(t *testing.T, n *node, args ...string) string {
	t.Helper()
	var out []byte
	var err error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		cmd := n.command(append([]string{"kubectl", "--kubeconfig", n.kubeconfig}, args...)...)
		if out, err = cmd.CombinedOutput(); err == nil {
			return string(out)
		}
	}
	t.Fatalf("kubectl %v: %v\n%s", args, err, out)
	return ""
}

func httpGetEventually(t *testing.T, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	var last error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		resp, err := client.Get(url)
		if err != nil {
			last = err
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return string(body)
		}
		last = fmt.Errorf("%s", resp.Status)
	}
	t.Fatalf("GET %s: %v", url, last)
	return ""
}

func nodeInternalIP(t *testing.T, cs kubernetes.Interface, name string) string {
	t.Helper()
	node, err := cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	t.Fatalf("node %s has no InternalIP: %v", name, node.Status.Addresses)
	return ""
}

func waitPodsRunning(t *testing.T, cs kubernetes.Interface, ns string, want int) []corev1.Pod {
	t.Helper()
	var last []string
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			continue
		}
		running := 0
		last = last[:0]
		for _, p := range pods.Items {
			last = append(last, p.Name+"="+string(p.Status.Phase))
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		if running == want && len(pods.Items) == want {
			return pods.Items
		}
	}
	t.Fatalf("pods not all Running within 3 minutes: %v", last)
	return nil
}

// containerIDs are the namespace's containers with their restart counts.
func containerIDs(t *testing.T, cs kubernetes.Interface, ns string) []string {
	t.Helper()
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range pods.Items {
		for _, c := range p.Status.ContainerStatuses {
			ids = append(ids, fmt.Sprintf("%s/%s=%s restarts=%d", p.Name, c.Name, c.ContainerID, c.RestartCount))
		}
	}
	sort.Strings(ids)
	return ids
}

// startNodeServer starts a server with its node side, which can run the busybox image, and
// waits until its node is Ready. After the test, the host is cleaned and checked.
func startNodeServer(t *testing.T, bin string) (n *node, cs kubernetes.Interface, nodeName string) {
	t.Helper()
	before := snapshotHost(t)
	n = newNode(t, bin, t.TempDir())
	n.nodeSide = true
	addBusybox(t, filepath.Join(n.dataDir, "agent", "images"))
	t.Cleanup(func() { teardownNode(t, n, before) })
	n.start()
	cs = n.client()
	return n, cs, waitNodesReady(t, cs, 1)[0]
}

// startSleeper creates a pod in ns, which it creates first if need be, whose container sleeps
// for an hour.
func startSleeper(t *testing.T, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	ctx := context.Background()
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "c", Image: busyboxImage, ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"},
		}}},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
