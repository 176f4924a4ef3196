package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	"k8s.io/cluster-bootstrap/token/jws"

	"github.com/kone-dev/kone/pkg/token"
)

// koneBinary is $KONE_BIN (scripts/test sets it to the freshly built bin/kone), or a build of
// ./cmd/kone made for this test run.
func koneBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("KONE_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	bin := filepath.Join(t.TempDir(), "kone")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/kone-dev/kone/cmd/kone")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build kone: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	return freePorts(t, 1)[0]
}

// freePorts are n distinct free ports: each is held until all are chosen, or the kernel could
// hand out one port twice.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var ports []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, fmt.Sprint(l.Addr().(*net.TCPAddr).Port))
	}
	return ports
}

// node is one `kone server` process and the paths it uses.
type node struct {
	t                                    *testing.T
	bin, dir, dataDir, kubeconfig        string
	https, etcdClient, etcdPeer, cm, sch string
	nodeSide                             bool     // run the node side too (off: --disable-agent)
	extra                                []string // more arguments for start
	cmd                                  *exec.Cmd
	log                                  *syncBuffer
	exited                               chan error
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newNode(t *testing.T, bin, dir string) *node {
	ports := freePorts(t, 5)
	n := &node{t: t, bin: bin, dir: dir, dataDir: filepath.Join(dir, "data"), kubeconfig: filepath.Join(dir, "kone.yaml"),
		https: ports[0], etcdClient: ports[1], etcdPeer: ports[2], cm: ports[3], sch: ports[4]}
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs last: a test's own cleanups still find kone running.
	t.Cleanup(func() {
		if n.cmd != nil && n.cmd.Process != nil && n.cmd.ProcessState == nil {
			n.cmd.Process.Kill()
			<-n.exited
		}
	})
	return n
}

func (n *node) args(extra ...string) []string {
	args := []string{"server", "--config", filepath.Join(n.dir, "config.yaml"), "--data-dir", n.dataDir,
		"--write-kubeconfig", n.kubeconfig, "--https-listen-port", n.https,
		"--etcd-client-port", n.etcdClient, "--etcd-peer-port", n.etcdPeer,
		"--kube-controller-manager-arg", "secure-port=" + n.cm, "--kube-scheduler-arg", "secure-port=" + n.sch,
		"--tls-san", "kone-it.example"}
	if !n.nodeSide {
		args = append(args, "--disable-agent")
	}
	return append(args, extra...)
}

func (n *node) start() {
	n.t.Helper()
	n.log = &syncBuffer{}
	n.cmd = exec.Command(n.bin, n.args(n.extra...)...)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.exited = make(chan error, 1)
	go func() { n.exited <- n.cmd.Wait() }()
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(n.log.String(), "kone is ready") {
		select {
		case err := <-n.exited:
			n.t.Fatalf("kone exited (%v) before it was ready:\n%s", err, n.log.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("kone not ready in 3 minutes:\n%s", n.log.String())
		}
	}
}

// stop sends SIGTERM and requires a clean exit within 10 s.
func (n *node) stop() {
	n.t.Helper()
	t0 := time.Now()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		n.t.Fatal(err)
	}
	select {
	case err := <-n.exited:
		if err != nil {
			n.t.Fatalf("kone exited with %v after SIGTERM:\n%s", err, n.log.String())
		}
	case <-time.After(10 * time.Second):
		n.t.Fatalf("kone did not stop within 10 s of SIGTERM:\n%s", n.log.String())
	}
	n.t.Logf("stopped in %s", time.Since(t0).Round(time.Millisecond))
}

// kill ends kone at once (SIGKILL), as a power cut would; containers and files stay as they are.
func (n *node) kill() {
	n.t.Helper()
	if err := n.cmd.Process.Kill(); err != nil {
		n.t.Fatal(err)
	}
	<-n.exited
}

// runFail runs a kone command that must fail, and returns its output.
func (n *node) runFail(args ...string) string {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, n.bin, args...).CombinedOutput()
	if err == nil {
		n.t.Fatalf("kone %v succeeded; output:\n%s", args, out)
	}
	return string(out)
}

// command is kone with args, to run as the test sees fit.
// waitLog reports whether kone's log says s within d.
func (n *node) waitLog(s string, d time.Duration) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(200 * time.Millisecond) {
		if strings.Contains(n.log.String(), s) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

func (n *node) command(args ...string) *exec.Cmd { return exec.Command(n.bin, args...) }

func (n *node) run(env []string, name string, args ...string) string {
	n.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		n.t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func (n *node) client() kubernetes.Interface {
	n.t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", n.kubeconfig)
	if err != nil {
		n.t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		n.t.Fatal(err)
	}
	return cs
}

func TestServer(t *testing.T) {
	bin := koneBinary(t)
	n := newNode(t, bin, t.TempDir())
	ctx := context.Background()

	// A manifest waiting in the auto-deploy directory, and one with a hand change to undo later.
	manifests := manifestsDir{t, filepath.Join(n.dataDir, "server", "manifests")}
	manifests.write("0-namespace.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kone-deploy\n")
	manifests.write("at-start.yaml", configMap("at-start", "s"))
	manifests.write("kept.yaml", configMap("kept", "k"))

	// Cold start.
	n.start()
	for _, stage := range []string{"certificates and kubeconfigs ready in", "etcd ready in", "kube-apiserver ready in", "kube-controller-manager ready in", "kube-scheduler ready in"} {
		if !strings.Contains(n.log.String(), stage) {
			t.Errorf("log lacks %q", stage)
		}
	}
	if strings.Contains(n.log.String(), "level=error") {
		t.Errorf("a clean start logged errors:\n%s", n.log.String())
	}
	info, err := os.Stat(n.kubeconfig)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("admin kubeconfig: %v, %v", info, err)
	}
	cs := n.client()
	body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil || string(body) != "ok" {
		t.Fatalf("/readyz: %q, %v", body, err)
	}
	checkMetricsAPI(t, n)

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kone-it"}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "survivor", Namespace: "kone-it"}, Data: map[string]string{"answer": "42"}}
	if _, err := cs.CoreV1().ConfigMaps("kone-it").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The join token: K10<sha256 of the CA>::<id>.<secret>, 0600, and a signed cluster-info.
	tokenFile := filepath.Join(n.dataDir, "server", "token")
	tokenBytes, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(tokenFile); st.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v", st.Mode().Perm())
	}
	tok, err := token.Parse(string(tokenBytes))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(n.dataDir, "server", "tls", "server-ca.crt"))
	if tok.CAHash == "" || tok.CheckCA(caPEM) != nil {
		t.Fatalf("token %s... does not pin the cluster CA", string(tokenBytes)[:10])
	}
	if strings.Contains(n.log.String(), tok.Secret) {
		t.Error("the token's secret appears in the log")
	}
	// The manifests found at start were applied before kone was ready.
	for name, value := range map[string]string{"at-start": "s", "kept": "k"} {
		if got, err := cs.CoreV1().ConfigMaps("kone-deploy").Get(ctx, name, metav1.GetOptions{}); err != nil || got.Data["value"] != value {
			t.Errorf("ConfigMap %s from the manifests directory at start: %+v, %v", name, got, err)
		}
	}
	checkManifestsDir(t, n, cs, manifests)
	checkClusterInfoSigned(t, n, tok)
	checkAnonymous(t, n)
	checkOwnNodeOnly(t, n)

	// Tools: kubectl as a subcommand and through a symlink, and the token commands.
	out := n.run(nil, bin, "kubectl", "--kubeconfig", n.kubeconfig, "get", "configmap", "survivor", "-n", "kone-it", "-o", "jsonpath={.data.answer}")
	if out != "42" {
		t.Errorf("kone kubectl: %q", out)
	}
	link := filepath.Join(t.TempDir(), "kubectl")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	if out := n.run([]string{"KUBECONFIG=" + n.kubeconfig}, link, "get", "ns", "kone-it", "-o", "name"); strings.TrimSpace(out) != "namespace/kone-it" {
		t.Errorf("kubectl symlink: %q", out)
	}
	newToken := strings.TrimSpace(n.run(nil, bin, "token", "create", "--kubeconfig", n.kubeconfig, "--ttl", "1h", "--description", "for the test"))
	created, err := token.Parse(newToken)
	if err != nil || created.CheckCA(caPEM) != nil || created.CAHash == "" {
		t.Fatalf("token create printed %q: %v", newToken, err)
	}
	list := n.run(nil, bin, "token", "list", "--kubeconfig", n.kubeconfig)
	if !strings.Contains(list, created.ID) || !strings.Contains(list, tok.ID) || !strings.Contains(list, "for the test") || strings.Contains(list, created.Secret) {
		t.Errorf("token list:\n%s", list)
	}
	n.run(nil, bin, "token", "delete", "--kubeconfig", n.kubeconfig, created.ID)
	if list := n.run(nil, bin, "token", "list", "--kubeconfig", n.kubeconfig); strings.Contains(list, created.ID) {
		t.Errorf("deleted token still listed:\n%s", list)
	}

	// A second server on the same data dir, and one on a busy port, refuse clearly.
	other := newNode(t, bin, t.TempDir())
	other.dataDir = n.dataDir
	if out := other.runFail(other.args()...); !strings.Contains(out, "already using data dir "+n.dataDir) {
		t.Errorf("second server on the same data dir:\n%s", out)
	}
	busy := newNode(t, bin, t.TempDir())
	busy.https = n.https
	if out := busy.runFail(busy.args()...); !strings.Contains(out, "port "+n.https) || !strings.Contains(out, "--https-listen-port") {
		t.Errorf("busy port:\n%s", out)
	}
	if _, err := os.Stat(busy.dataDir + "/server/tls"); err == nil {
		t.Error("a refused start created certificates")
	}

	unwritable := newNode(t, bin, t.TempDir())
	unwritable.dataDir = "/proc/kone-no-such-dir"
	if out := unwritable.runFail(unwritable.args()...); !strings.Contains(out, "data dir") || !strings.Contains(out, "--data-dir") {
		t.Errorf("unwritable data dir:\n%s", out)
	}

	// A hand change to an object of a manifest, and a manifest removed while kone is down.
	if _, err := cs.CoreV1().ConfigMaps("kone-deploy").Patch(ctx, "kept", types.MergePatchType, []byte(`{"data":{"value":"by hand"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	n.stop()
	if !strings.Contains(n.log.String(), "stopped in") {
		t.Errorf("no stop line:\n%s", n.log.String())
	}
	manifests.remove("at-start.yaml")

	// Warm restart: same CA, same token, the ConfigMap is still there.
	n.start()
	got, err := n.client().CoreV1().ConfigMaps("kone-it").Get(ctx, "survivor", metav1.GetOptions{})
	if err != nil || got.Data["answer"] != "42" {
		t.Fatalf("after restart: %+v, %v", got, err)
	}
	// The start put the manifest's object back, and deleted what the removed one held.
	waitConfigMap(t, n.client(), "kept", "k", "a hand change, at the next start")
	waitConfigMap(t, n.client(), "at-start", "", "a manifest removed while kone was down")
	if again, _ := os.ReadFile(tokenFile); !bytes.Equal(again, tokenBytes) {
		t.Error("the token changed across a restart")
	}
	if again, _ := os.ReadFile(filepath.Join(n.dataDir, "server", "tls", "server-ca.crt")); !bytes.Equal(again, caPEM) {
		t.Error("the CA changed across a restart")
	}
	checkDisable(t, n)
	n.stop()

	// A corrupt certificate stops the start, names the file, and is left as it was.
	adminCert := filepath.Join(n.dataDir, "server", "tls", "client-admin.crt")
	garbage := []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
	if err := os.WriteFile(adminCert, garbage, 0o644); err != nil {
		t.Fatal(err)
	}
	if out := n.runFail(n.args()...); !strings.Contains(out, adminCert) || !strings.Contains(out, "restore") {
		t.Errorf("corrupt certificate:\n%s", out)
	}
	if after, _ := os.ReadFile(adminCert); !bytes.Equal(after, garbage) {
		t.Error("the corrupt certificate was overwritten")
	}
}

// checkClusterInfoSigned waits for the controller-manager's bootstrapsigner to sign
// kube-public/cluster-info for the server's token, and checks the signature.
func checkClusterInfoSigned(t *testing.T, n *node, tok token.Token) {
	t.Helper()
	cs := n.client()
	deadline := time.Now().Add(60 * time.Second)
	for {
		cm, err := cs.CoreV1().ConfigMaps("kube-public").Get(context.Background(), "cluster-info", metav1.GetOptions{})
		if err == nil {
			if sig, ok := cm.Data[bootstrapapi.JWSSignatureKeyPrefix+tok.ID]; ok {
				if !jws.DetachedTokenIsValid(sig, cm.Data[bootstrapapi.KubeConfigKey], tok.ID, tok.Secret) {
					t.Fatal("cluster-info's signature does not verify with the server's token")
				}
				if jws.DetachedTokenIsValid(sig, cm.Data[bootstrapapi.KubeConfigKey], tok.ID, "0000000000000000") {
					t.Fatal("cluster-info's signature verifies with a wrong secret")
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster-info not signed for token %s within 60 s (%v)", tok.ID, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkAnonymous: without credentials, a client reaches health and cluster-info, nothing else.
func checkAnonymous(t *testing.T, n *node) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for path, want := range map[string]int{
		"/readyz": 200,
		"/api/v1/namespaces/kube-public/configmaps/cluster-info": 200,
		"/api/v1/namespaces/kube-system/secrets":                 401,
		"/api/v1/namespaces/kube-public/configmaps":              401,
		"/apis": 401,
	} {
		resp, err := client.Get("https://127.0.0.1:" + n.https + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("anonymous GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}
