package server_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kone-dev/kone/pkg/pki"
)

// TestServersJoin grows a one-server cluster that holds data into three servers, two of them
// started at once: each joins etcd and serves all the data; joins that must be refused are,
// before anything changes on either side; and a controller whose lease is taken from its
// server stops there and runs again, in the same process, once the server holds it back.
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
	servers := []*agentNode{newAgent(t, bin, "server-2", nodeNet+"12", first, tok), newAgent(t, bin, "server-3", nodeNet+"13", first, tok)}
	for _, s := range servers {
		s.args = []string{bin, "server", "--server", first, "--token", tok, "--node-ip", s.ip,
			"--write-kubeconfig", "/var/lib/kone/admin.kubeconfig"}
		s.up()
	}
	// The first server stops while the others keep etcd's quorum, before they go down.
	t.Cleanup(func() { drainAndStop(n) })
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
		clients[s.name] = clientAt(t, n.kubeconfig, "https://"+s.ip+":6443")
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

	checkLeaseTakenAndRegained(t, n, cs, servers)
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
// cluster's, a data dir of another cluster, an unreachable first server.
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
		{name: "data dir of another cluster", dataDir: otherCluster, server: server, token: tok, want: "belongs to another cluster"},
		{name: "unreachable server", server: "https://127.0.0.1:" + freePort(t), token: tok, want: "cannot reach the server"},
	}
	for _, c := range cases {
		dataDir := c.dataDir
		if dataDir == "" {
			dataDir = t.TempDir()
		}
		args := append([]string{"server", "--data-dir", dataDir, "--server", c.server, "--token", c.token, "--disable-agent",
			"--write-kubeconfig", filepath.Join(dataDir, "kone.yaml"), "--https-listen-port", freePort(t),
			"--etcd-client-port", freePort(t), "--etcd-peer-port", freePort(t),
			"--kube-controller-manager-arg", "secure-port=" + freePort(t), "--kube-scheduler-arg", "secure-port=" + freePort(t)}, c.extra...)
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

// checkLeaseTakenAndRegained takes the controller-manager's and the scheduler's leases from the
// servers that hold them: each stops its component and stands by. Handed back, the lease makes
// it run the component again in the same process, which then does its work.
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
		for {
			l, err := leases.Get(ctx, lease, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			now := metav1.NewMicroTime(time.Now())
			l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &who, &seconds, &now
			if _, err = leases.Update(ctx, l, metav1.UpdateOptions{}); err == nil {
				return
			}
		}
	}
	holders := map[string]string{}
	for _, lease := range []string{"kube-controller-manager", "kube-scheduler"} {
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
		take(lease, holder, 15)
	}
	// Both work again: a Deployment gets its pod, scheduled.
	ns := "kone-node-it"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	serveWeb(t, cs, ns, 1, false)
	waitPodsRunning(t, cs, ns, 1)
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
