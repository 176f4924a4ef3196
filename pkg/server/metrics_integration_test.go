package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kone-dev/kone/pkg/metrics"
	"github.com/kone-dev/kone/pkg/pki"
)

// metricsAPIAvailable says whether the apiserver reports the metrics API Available, with the
// reason it gives otherwise.
func metricsAPIAvailable(cs kubernetes.Interface) error {
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io").DoRaw(context.Background())
	if err != nil {
		return err
	}
	var svc struct {
		Status struct {
			Conditions []struct{ Type, Status, Message string }
		}
	}
	if err := json.Unmarshal(raw, &svc); err != nil {
		return err
	}
	for _, c := range svc.Status.Conditions {
		if c.Type == "Available" {
			if c.Status == "True" {
				return nil
			}
			return fmt.Errorf("not available: %s", c.Message)
		}
	}
	return fmt.Errorf("no Available condition yet")
}

// nodeMetricsServed says whether the metrics API, through the apiserver, has metrics of a node.
func nodeMetricsServed(cs kubernetes.Interface) error {
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/apis/metrics.k8s.io/v1beta1/nodes").DoRaw(context.Background())
	if err != nil {
		return err
	}
	var list struct{ Items []json.RawMessage }
	if err := json.Unmarshal(raw, &list); err != nil {
		return err
	}
	if len(list.Items) == 0 {
		return fmt.Errorf("no node has metrics yet")
	}
	return nil
}

// metricsEndpoint is the address that kone published for its metrics-server.
func metricsEndpoint(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	slices, err := cs.DiscoveryV1().EndpointSlices(metrics.Namespace).List(context.Background(),
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + metrics.ServiceName})
	if err != nil || len(slices.Items) != 1 || len(slices.Items[0].Endpoints) != 1 || len(slices.Items[0].Ports) != 1 {
		t.Fatalf("the metrics-server's EndpointSlice: %+v, %v", slices, err)
	}
	s := slices.Items[0]
	return net.JoinHostPort(s.Endpoints[0].Addresses[0], strconv.Itoa(int(*s.Ports[0].Port)))
}

// checkMetricsAPI: the aggregator reaches kone's metrics-server, which answers the metrics API;
// and the metrics-server, reached directly, refuses whoever has no credentials, and whoever
// claims to be an administrator in the headers that only the aggregator may set.
func checkMetricsAPI(t *testing.T, n *node) {
	t.Helper()
	cs := n.client()
	var err error
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		if err = metricsAPIAvailable(cs); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the metrics API is not available a minute after the start: %v\n%s", err, n.log.String())
		}
	}
	if _, err := cs.Discovery().RESTClient().Get().AbsPath("/apis/metrics.k8s.io/v1beta1/nodes").DoRaw(context.Background()); err != nil {
		t.Errorf("GET the nodes' metrics through the apiserver: %v", err)
	}

	addr := metricsEndpoint(t, cs)
	caPEM, err := os.ReadFile(filepath.Join(n.dataDir, "server", "tls", "server-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	direct := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: pki.MetricsServiceName}}}
	for _, forged := range []map[string]string{
		nil,
		{"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"},
	} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/apis/metrics.k8s.io/v1beta1/pods", nil)
		for k, v := range forged {
			req.Header.Set(k, v)
		}
		resp, err := direct.Do(req)
		if err != nil {
			t.Fatalf("GET the metrics-server at %s directly: %v", addr, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("the metrics-server at %s answered %s to a caller with no credentials and the headers %v", addr, resp.Status, forged)
		}
	}
	// Not even an administrator finds profiling there, nor the handler that sets kone's log level.
	tlsDir := filepath.Join(n.dataDir, "server", "tls")
	admin, err := tls.LoadX509KeyPair(filepath.Join(tlsDir, "client-admin.crt"), filepath.Join(tlsDir, "client-admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	asAdmin := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: pki.MetricsServiceName, Certificates: []tls.Certificate{admin}}}}
	for _, path := range []string{"/apis/metrics.k8s.io/v1beta1/nodes", "/debug/pprof/", "/debug/flags/v"} {
		resp, err := asAdmin.Get("https://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s from the metrics-server as the administrator: %v", path, err)
		}
		resp.Body.Close()
		if want := map[bool]int{true: http.StatusOK, false: http.StatusNotFound}[strings.HasPrefix(path, "/apis/")]; resp.StatusCode != want {
			t.Errorf("GET %s from the metrics-server as the administrator: %s, want %d", path, resp.Status, want)
		}
	}
	// Its address, deleted, is published again within the minute.
	slices := cs.DiscoveryV1().EndpointSlices(metrics.Namespace)
	selector := metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + metrics.ServiceName}
	if err := slices.DeleteCollection(context.Background(), metav1.DeleteOptions{}, selector); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(75 * time.Second); ; time.Sleep(time.Second) {
		if list, err := slices.List(context.Background(), selector); err == nil && len(list.Items) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the metrics-server's address, deleted, was not published again within 75 s")
		}
	}
	if again := metricsEndpoint(t, cs); again != addr {
		t.Errorf("the metrics-server's address was published again as %s, not %s", again, addr)
	}
}

// checkTop: `kubectl top nodes` lists every node with CPU and memory in use, and a
// HorizontalPodAutoscaler on CPU scales a busy Deployment from 1 to 2 replicas.
func checkTop(t *testing.T, n *node, cs kubernetes.Interface, nodes []string) {
	t.Helper()
	var out string
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(2 * time.Second) {
		var err error
		out, err = n.kubectlErr("top", "nodes", "--no-headers")
		if err == nil && topListsAll(out, nodes) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl top nodes does not list %v with CPU and memory in use within 2 minutes: %v\n%s", nodes, err, out)
		}
	}

	ctx := context.Background()
	ns := "kone-hpa-it"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
		waitPodsGone(t, cs, ns)
	}()
	labels := map[string]string{"app": "busy"}
	// It spins as hard as its limit lets it: five times what it asks for, far over the target.
	busy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "busy", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
				Containers: []corev1.Container{{
					Name: "busy", Image: busyboxImage, ImagePullPolicy: corev1.PullNever,
					Command: []string{"/bin/busybox", "sh", "-c", "while :; do :; done"},
					Resources: corev1.ResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("20m")},
						Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")},
					},
				}},
			}},
		},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, busy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	hpa := &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: "busy", Namespace: ns},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "busy"},
			MinReplicas:    ptr.To(int32(1)),
			MaxReplicas:    2,
			Metrics: []autoscalingv2.MetricSpec{{Type: autoscalingv2.ResourceMetricSourceType, Resource: &autoscalingv2.ResourceMetricSource{
				Name:   corev1.ResourceCPU,
				Target: autoscalingv2.MetricTarget{Type: autoscalingv2.UtilizationMetricType, AverageUtilization: ptr.To(int32(50))},
			}}},
		},
	}
	if _, err := cs.AutoscalingV2().HorizontalPodAutoscalers(ns).Create(ctx, hpa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for deadline := start.Add(3 * time.Minute); ; time.Sleep(2 * time.Second) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "busy", metav1.GetOptions{})
		if err == nil && *d.Spec.Replicas >= 2 {
			break
		}
		if time.Now().After(deadline) {
			h, _ := cs.AutoscalingV2().HorizontalPodAutoscalers(ns).Get(ctx, "busy", metav1.GetOptions{})
			t.Fatalf("the HorizontalPodAutoscaler did not scale the busy Deployment within 3 minutes: %+v", h.Status)
		}
	}
	t.Logf("the HorizontalPodAutoscaler scaled the busy Deployment to 2 after %s", time.Since(start).Round(time.Second))
	if out, err := n.kubectlErr("top", "pods", "-n", ns, "--no-headers"); err != nil || !strings.HasPrefix(out, "busy-") {
		t.Errorf("kubectl top pods -n %s: %v\n%s", ns, err, out)
	}
}

// topListsAll says whether the lines of `kubectl top nodes` name each node once, with CPU and
// memory above zero.
func topListsAll(out string, nodes []string) bool {
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			return false
		}
		cpu, err1 := resource.ParseQuantity(f[1])
		mem, err2 := resource.ParseQuantity(f[3])
		if err1 != nil || err2 != nil || cpu.IsZero() || mem.IsZero() {
			return false
		}
		seen[f[0]] = true
	}
	for _, n := range nodes {
		if !seen[n] {
			return false
		}
	}
	return len(seen) == len(nodes)
}

// kubectlErr runs kubectl once, returning what it printed on stdout and how it ended.
func (n *node) kubectlErr(args ...string) (string, error) {
	out, err := n.command(append([]string{"kubectl", "--kubeconfig", n.kubeconfig}, args...)...).Output()
	return string(out), err
}

// checkMetricsAfterRotation: after rotate-ca, the APIService trusts the server CAs as they are
// now, the metrics-server serves a certificate from the new one, and the apiserver still
// reaches it.
func checkMetricsAfterRotation(t *testing.T, n *node, cs kubernetes.Interface, newCA *x509.Certificate) {
	t.Helper()
	if apiCAs, now := metricsAPIServiceCAs(t, cs), readFile(t, filepath.Join(n.dataDir, "server", "tls", "server-ca.crt")); apiCAs != now {
		t.Errorf("after rotate-ca, the metrics APIService trusts:\n%s\nnot the server CAs:\n%s", apiCAs, now)
	}
	addr := metricsEndpoint(t, cs)
	served := func() error {
		// Only to read the certificate it serves, which is checked against newCA below.
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].CheckSignatureFrom(newCA)
	}
	var err error
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(time.Second) {
		if err = served(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the metrics-server at %s does not serve a certificate from the new server CA 90 s after rotate-ca: %v", addr, err)
		}
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		if err = nodeMetricsServed(cs); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the metrics API, through the apiserver, a minute after the metrics-server took its certificate from the new CA: %v", err)
		}
	}
}

// metricsAPIServiceCAs are the CAs that the metrics APIService trusts.
func metricsAPIServiceCAs(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/apis/apiregistration.k8s.io/v1/apiservices/" + metrics.APIService).DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var svc struct{ Spec struct{ CABundle []byte } }
	if err := json.Unmarshal(raw, &svc); err != nil {
		t.Fatal(err)
	}
	return string(svc.Spec.CABundle)
}

// checkForeignMetricsKept: the metrics APIService that another metrics-server made is as it
// was, kone says that it runs none of its own, and nothing listens at its address.
func checkForeignMetricsKept(t *testing.T, n *node, addr string) {
	t.Helper()
	raw, err := n.client().Discovery().RESTClient().Get().AbsPath("/apis/apiregistration.k8s.io/v1/apiservices/" + metrics.APIService).DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var svc struct {
		Spec struct {
			InsecureSkipTLSVerify bool
			Service               struct{ Name string }
			CABundle              []byte
		}
	}
	if err := json.Unmarshal(raw, &svc); err != nil {
		t.Fatal(err)
	}
	if svc.Spec.Service.Name != "their-metrics" || !svc.Spec.InsecureSkipTLSVerify || len(svc.Spec.CABundle) > 0 {
		t.Errorf("kone changed another metrics-server's APIService: %s", raw)
	}
	if !n.waitLog(metrics.ForeignNote, 30*time.Second) {
		t.Errorf("kone does not say that it leaves the metrics API to another metrics-server:\n%s", n.log.String())
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("with another metrics-server's APIService, kone's listens on %s", addr)
	}
}
