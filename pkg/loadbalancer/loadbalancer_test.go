package loadbalancer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kone-dev/kone/pkg/pki"
)

// apiserver is a stand-in for an apiserver: it serves its name, and /readyz as told.
type apiserver struct {
	name  string
	ready atomic.Bool
	srv   *httptest.Server
}

func newAPIServer(t *testing.T, name string, cert tls.Certificate) *apiserver {
	a := &apiserver{name: name}
	a.ready.Store(true)
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" && !a.ready.Load() {
			http.Error(w, "etcd failed", http.StatusInternalServerError)
			return
		}
		if r.URL.Path == "/hang" {
			<-r.Context().Done()
			return
		}
		_, _ = io.WriteString(w, a.name)
	}))
	a.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a
}

func (a *apiserver) addr() string { return a.srv.Listener.Addr().String() }

// Connections go to the apiserver known first; when it fails its check, its open connections
// are closed and new ones go to another it knows; when it is gone altogether, too.
func TestFailover(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, err := pki.EnsureCA(dir, "ca", now)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pki.File{Cert: filepath.Join(dir, "a.crt"), Key: filepath.Join(dir, "a.key")}
	if _, err := ca.EnsureLeaf(leaf, pki.LeafSpec{CommonName: "apiserver", IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, now); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(leaf.Cert, leaf.Key)
	if err != nil {
		t.Fatal(err)
	}
	first, second := newAPIServer(t, "first", cert), newAPIServer(t, "second", cert)
	state := filepath.Join(dir, "lb.json")
	learned, _ := json.Marshal([]string{second.addr()})
	if err := os.WriteFile(state, learned, 0o644); err != nil {
		t.Fatal(err)
	}
	listen := freeAddr(t)
	log := logrus.New()
	log.SetOutput(io.Discard)
	lb, err := New(Config{Listen: listen, Default: first.addr(), CAFile: filepath.Join(dir, "ca.crt"), State: state, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lb.Run(ctx) }()
	if err := lb.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	pool.AppendCertsFromPEM(caPEM)
	// A new transport each time: a fresh connection through the load balancer.
	get := func(path string, timeout time.Duration) (string, error) {
		c := &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		resp, err := c.Get(URL(listen) + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return string(body), err
	}
	if got, err := get("/", 5*time.Second); err != nil || got != "first" {
		t.Fatalf("first request: %q %v", got, err)
	}

	// A request held open on the first apiserver ends once its check fails.
	hung := make(chan error, 1)
	go func() { _, err := get("/hang", time.Minute); hung <- err }()
	time.Sleep(500 * time.Millisecond)
	failed := time.Now()
	first.ready.Store(false)
	select {
	case err := <-hung:
		if err == nil {
			t.Error("the held request ended without an error")
		}
		if d := time.Since(failed); d > (failuresDown+1)*checkInterval+checkTimeout {
			t.Errorf("the held request ended %s after its apiserver failed", d)
		}
	case <-time.After(time.Minute):
		t.Fatal("the held request outlived its apiserver's failure")
	}
	if got, err := get("/", 5*time.Second); err != nil || got != "second" {
		t.Errorf("after the first failed: %q %v", got, err)
	}

	// The second goes away without a word; the first is ready again.
	first.ready.Store(true)
	time.Sleep(2 * checkInterval)
	second.srv.CloseClientConnections()
	second.srv.Listener.Close()
	if got, err := get("/", 10*time.Second); err != nil || got != "first" {
		t.Errorf("after the second went away: %q %v", got, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("stop: %v", err)
	}
}

// A port in use is an error that names the flag to change.
func TestPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	if _, err := pki.EnsureCA(dir, "ca", time.Now()); err != nil {
		t.Fatal(err)
	}
	lb, err := New(Config{Listen: l.Addr().String(), Default: "127.0.0.1:6443", CAFile: filepath.Join(dir, "ca.crt"),
		State: filepath.Join(dir, "lb.json"), Log: logrus.New()})
	if err != nil {
		t.Fatal(err)
	}
	if err := lb.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "--lb-server-port") {
		t.Errorf("got %v", err)
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// The apiservers are the ready endpoints of the kubernetes Service's own slice, kept for the
// next start; a slice someone else labelled for that Service adds nothing.
func TestLearn(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.EnsureCA(dir, "ca", time.Now()); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "lb.json")
	lb, err := New(Config{Listen: "127.0.0.1:0", Default: "192.0.2.1:6443", CAFile: filepath.Join(dir, "ca.crt"), State: state, Log: logrus.New()})
	if err != nil {
		t.Fatal(err)
	}
	port, ready, notReady := int32(6443), true, false
	slice := func(name string, endpoints ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
			Ports:      []discoveryv1.EndpointPort{{Port: &port}}, Endpoints: endpoints,
		}
	}
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, s := range []*discoveryv1.EndpointSlice{
		slice("kubernetes",
			discoveryv1.Endpoint{Addresses: []string{"192.0.2.3"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}},
			discoveryv1.Endpoint{Addresses: []string{"192.0.2.2"}},
			discoveryv1.Endpoint{Addresses: []string{"192.0.2.9"}, Conditions: discoveryv1.EndpointConditions{Ready: &notReady}}),
		slice("kubernetes-forged", discoveryv1.Endpoint{Addresses: []string{"203.0.113.66"}}),
	} {
		if err := indexer.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	lb.learn(discoverylisters.NewEndpointSliceLister(indexer))
	want := []string{"192.0.2.1:6443", "192.0.2.2:6443", "192.0.2.3:6443"}
	if got := lb.Servers(); !slices.Equal(got, want) {
		t.Errorf("servers %v, want %v", got, want)
	}
	again, err := New(Config{Listen: "127.0.0.1:0", Default: "192.0.2.1:6443", CAFile: filepath.Join(dir, "ca.crt"), State: state, Log: logrus.New()})
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Servers(); !slices.Equal(got, want) {
		t.Errorf("after a restart: servers %v, want %v", got, want)
	}
}
