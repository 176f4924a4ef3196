package server_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kone-dev/kone/pkg/deploy"
)

// manifestsDir is a server's auto-deploy directory, as a test sees it.
type manifestsDir struct {
	t   *testing.T
	dir string
}

func (m manifestsDir) write(name, content string) {
	m.t.Helper()
	p := filepath.Join(m.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		m.t.Fatal(err)
	}
}

func (m manifestsDir) remove(name string) {
	m.t.Helper()
	if err := os.Remove(filepath.Join(m.dir, name)); err != nil {
		m.t.Fatal(err)
	}
}

// configMap is a manifest of a ConfigMap in namespace kone-deploy.
func configMap(name, value string) string {
	return "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: " + name + "\n  namespace: kone-deploy\ndata:\n  value: \"" + value + "\"\n"
}

// waitConfigMap waits up to 30 s for kone-deploy/name to hold value, or, with value "", to be gone.
func waitConfigMap(t *testing.T, cs kubernetes.Interface, name, value, why string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		cm, err := cs.CoreV1().ConfigMaps("kone-deploy").Get(context.Background(), name, metav1.GetOptions{})
		switch {
		case value == "" && apierrors.IsNotFound(err):
			return
		case value != "" && err == nil && cm.Data["value"] == value:
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: ConfigMap %s is %+v (%v) after 30 s, want value %q", why, name, cm.Data, err, value)
		}
	}
}

// waitEvent waits up to 30 s for a Warning Event with reason on the record of file, whose
// message names the file and holds want.
func waitEvent(t *testing.T, cs kubernetes.Interface, file, reason, want string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		events, err := cs.CoreV1().Events("kube-system").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + deploy.RecordName(file)})
		if err == nil {
			for _, e := range events.Items {
				if e.Reason == reason && e.Type == "Warning" && strings.Contains(e.Message, file) && strings.Contains(e.Message, want) {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s Event for %s saying %q within 30 s: %v %v", reason, file, want, events, err)
		}
	}
}

// checkManifestsDir works the auto-deploy directory of a running server: files in it and below
// it are applied within seconds, changes too; what a file no longer holds, and what a removed
// file held, is deleted; a .skip file holds one back; a file that does not parse, or that the
// apiserver refuses, is reported in the log and as an Event, and the others are applied still.
func checkManifestsDir(t *testing.T, n *node, cs kubernetes.Interface, m manifestsDir) {
	t.Helper()
	m.write("apps/web.yaml", configMap("web", "one")+"---\n"+configMap("web-extra", "x"))
	waitConfigMap(t, cs, "web", "one", "a new file in a subdirectory")
	waitConfigMap(t, cs, "web-extra", "x", "the second document of a file")

	m.write("broken.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: broken\n")
	m.write("refused.yaml", configMap("Not_A_Name", "y")+"---\n"+configMap("beside-refused", "z")+
		"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: mistyped, namespace: kone-deploy}\ndata: {value: 42}\n")
	m.write("held.yaml", configMap("held", "h"))
	m.write("held.yaml.skip", "")
	m.write("later.json", `{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later", "namespace": "kone-deploy"}, "data": {"value": "j"}}`)
	waitConfigMap(t, cs, "later", "j", "a JSON file beside broken ones")
	waitConfigMap(t, cs, "beside-refused", "z", "an object beside one the apiserver refuses")
	waitEvent(t, cs, "broken.yaml", "ManifestInvalid", "document 1")
	waitEvent(t, cs, "refused.yaml", "ManifestRefused", "Not_A_Name")
	waitEvent(t, cs, "refused.yaml", "ManifestRefused", "mistyped")
	for _, file := range []string{"broken.yaml", "refused.yaml"} {
		if !strings.Contains(n.log.String(), "file="+file) {
			t.Errorf("the log does not name %s:\n%s", file, n.log.String())
		}
	}
	if _, err := cs.CoreV1().ConfigMaps("kone-deploy").Get(context.Background(), "held", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a file with a .skip beside it was applied: %v", err)
	}

	// A change: one object changed, one dropped (and so deleted).
	m.write("apps/web.yaml", configMap("web", "two"))
	waitConfigMap(t, cs, "web", "two", "a changed file")
	waitConfigMap(t, cs, "web-extra", "", "an object dropped from its file")
	// A renamed file: its objects stay (the same objects), the old name's record goes.
	before, err := cs.CoreV1().ConfigMaps("kone-deploy").Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(m.dir, "apps", "web.yaml"), filepath.Join(m.dir, "apps", "web-renamed.yaml")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if _, err := cs.CoreV1().ConfigMaps("kube-system").Get(context.Background(), deploy.RecordName("apps/web.yaml"), metav1.GetOptions{}); apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the record of a renamed file stays")
		}
	}
	waitConfigMap(t, cs, "web", "two", "a renamed file")
	if after, err := cs.CoreV1().ConfigMaps("kone-deploy").Get(context.Background(), "web", metav1.GetOptions{}); err != nil || after.UID != before.UID {
		t.Errorf("a renamed file's object was deleted and made again: %v", err)
	}
	// An object the apiserver refuses now, that a file applied before, stays: a namespaced
	// object written without its namespace, given a value of the wrong type.
	m.write("plain.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: plain}\ndata: {value: \"p\"}\n")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if _, err := cs.CoreV1().ConfigMaps("default").Get(context.Background(), "plain", metav1.GetOptions{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a ConfigMap without a namespace did not land in default")
		}
	}
	m.write("plain.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: plain}\ndata: {value: 7}\n")
	waitEvent(t, cs, "plain.yaml", "ManifestRefused", "plain")
	if _, err := cs.CoreV1().ConfigMaps("default").Get(context.Background(), "plain", metav1.GetOptions{}); err != nil {
		t.Errorf("an object its file now gets refused for was deleted: %v", err)
	}
	m.remove("plain.yaml")
	// A removed file: its objects go.
	m.remove("later.json")
	waitConfigMap(t, cs, "later", "", "a removed file")
}

// checkDisable restarts a running server with --disable coredns, servicelb, local-storage,
// metrics-server and network-policy: what kone had deployed for CoreDNS, local storage, the
// metrics API and the nodes' policy enforcement goes,
// the rest stays, and a kube-dns
// Service of the user's own survives the next start; a LoadBalancer Service loses the finalizer
// kone's service controller gave it, so that it can be deleted. The server is running again
// without --disable when it returns.
func checkDisable(t *testing.T, n *node) {
	t.Helper()
	ctx := context.Background()
	cs := n.client()
	lb := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "lb", Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Port: 8082, Protocol: corev1.ProtocolTCP}}}}
	if _, err := cs.CoreV1().Services("default").Create(ctx, lb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	finalizers := func() []string {
		svc, err := n.client().CoreV1().Services("default").Get(ctx, "lb", metav1.GetOptions{})
		if err != nil {
			// Not an answer either way: neither wait below may end on it.
			return []string{"error: " + err.Error()}
		}
		return svc.Finalizers
	}
	for deadline := time.Now().Add(30 * time.Second); !slices.Contains(finalizers(), "service.kubernetes.io/load-balancer-cleanup"); time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("kone's service controller gave a LoadBalancer Service no finalizer within 30 s")
		}
	}
	if _, err := cs.StorageV1().StorageClasses().Get(ctx, "local-path", metav1.GetOptions{}); err != nil {
		t.Errorf("no local-path StorageClass: %v", err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, "system:kone:network-policy", metav1.GetOptions{}); err != nil {
		t.Errorf("no ClusterRole for the nodes' NetworkPolicy enforcement: %v", err)
	}
	metricsAt := metricsEndpoint(t, cs)
	n.stop()
	n.extra = []string{"--disable", "coredns", "--disable", "servicelb", "--disable", "local-storage", "--disable", "metrics-server", "--disable", "network-policy"}
	n.start()
	cs = n.client()
	for deadline := time.Now().Add(30 * time.Second); len(finalizers()) > 0; time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("--disable servicelb: the LoadBalancer Service keeps its finalizers %v", finalizers())
		}
	}
	if err := cs.CoreV1().Services("default").Delete(ctx, "lb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("--disable coredns: kone's kube-dns Service is still there: %v", err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, "system:kone:coredns", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("--disable coredns: CoreDNS's ClusterRole is still there: %v", err)
	}
	if _, err := cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, "kone-coredns-own-slice", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("--disable coredns: CoreDNS's admission policy is still there: %v", err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, "system:kone:flannel", metav1.GetOptions{}); err != nil {
		t.Errorf("--disable coredns removed flannel's ClusterRole: %v", err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, "system:kone:network-policy", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("--disable network-policy: the nodes' ClusterRole for it is still there: %v", err)
	}
	if _, err := cs.StorageV1().StorageClasses().Get(ctx, "local-path", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("--disable local-storage: the local-path StorageClass is still there: %v", err)
	}
	if _, err := cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, "kone-local-path-own-node", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("--disable local-storage: the provisioner's admission policy is still there: %v", err)
	}
	if _, err := cs.Discovery().RESTClient().Get().AbsPath("/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io").DoRaw(ctx); !apierrors.IsNotFound(err) {
		t.Errorf("--disable metrics-server: the metrics APIService is still there: %v", err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		slices, err := cs.DiscoveryV1().EndpointSlices("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=metrics-server"})
		if err == nil && len(slices.Items) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("--disable metrics-server: its EndpointSlice stays: %+v, %v", slices, err)
		}
	}
	if c, err := net.DialTimeout("tcp", metricsAt, time.Second); err == nil {
		c.Close()
		t.Errorf("--disable metrics-server: something still listens on %s", metricsAt)
	}
	// The user's own kube-dns Service, from the manifests directory: the same Service (its
	// UID) after the next start, though kone removes its own kube-dns at every start.
	m := manifestsDir{t, filepath.Join(n.dataDir, "server", "manifests")}
	m.write("dns/kube-dns.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\n"+
		"spec:\n  clusterIP: 10.43.0.10\n  ports: [{name: dns, protocol: UDP, port: 53}]\n")
	var own *corev1.Service
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		svc, err := cs.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
		if err == nil {
			own = svc
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the kube-dns Service of the manifests directory did not come within 30 s")
		}
	}
	n.stop()
	n.start()
	if again, err := n.client().CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{}); err != nil || again.UID != own.UID {
		t.Errorf("--disable coredns: the user's own kube-dns Service did not stay across a start: %v", err)
	}
	m.remove("dns/kube-dns.yaml")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if _, err := n.client().CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{}); apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the kube-dns Service of a removed manifest stays")
		}
	}
	// Another metrics-server's APIService, made while kone's was off, stays as it is when kone's
	// is on again, and kone runs none beside it.
	foreign := `{"apiVersion":"apiregistration.k8s.io/v1","kind":"APIService","metadata":{"name":"v1beta1.metrics.k8s.io"},` +
		`"spec":{"group":"metrics.k8s.io","version":"v1beta1","groupPriorityMinimum":100,"versionPriority":100,` +
		`"insecureSkipTLSVerify":true,"service":{"namespace":"kube-system","name":"their-metrics","port":443}}}`
	if err := cs.Discovery().RESTClient().Post().AbsPath("/apis/apiregistration.k8s.io/v1/apiservices").
		SetHeader("Content-Type", "application/json").Body([]byte(foreign)).Do(ctx).Error(); err != nil {
		t.Fatal(err)
	}
	n.stop()
	n.extra = nil
	n.start()
	checkForeignMetricsKept(t, n, metricsAt)
	if _, err := n.client().CoreV1().Services("default").Get(ctx, "lb", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a released LoadBalancer Service was not deleted: %v", err)
	}
	svc, err := n.client().CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
	if err != nil || svc.Spec.InternalTrafficPolicy == nil || *svc.Spec.InternalTrafficPolicy != corev1.ServiceInternalTrafficPolicyLocal || len(svc.Spec.Ports) != 2 {
		t.Errorf("CoreDNS enabled again: kube-dns is not kone's: %+v, %v", svc, err)
	}
	if _, err := n.client().StorageV1().StorageClasses().Get(ctx, "local-path", metav1.GetOptions{}); err != nil {
		t.Errorf("local storage enabled again: no local-path StorageClass: %v", err)
	}
}
