// Package loadbalancer is the node side's way to the apiservers: a TCP load balancer on
// loopback (k3s's is on 127.0.0.1:6444) that kubelet, kube-proxy, flannel, CoreDNS and kone's
// node clients connect to. It starts with one apiserver it knows (an agent's --server, a
// server's own), learns the others from the kubernetes Service's EndpointSlices, checks each
// every two seconds, and sends new connections to a healthy one. Connections to an apiserver
// that fails are closed, so that their clients reconnect through another at once.
//
// It forwards bytes and terminates nothing: TLS runs end to end between the client and the
// apiserver, whose certificates all name 127.0.0.1. The apiservers it learned are kept in a
// file, so that a node whose first server is gone still finds the others after a restart.
package loadbalancer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/supervisor"
)

// Timing: how often every apiserver is checked, how long a check or a connection may take, and
// how many checks in a row must fail before an apiserver counts as down (every apiserver's
// readyz fails for a moment while etcd elects a leader).
const (
	checkInterval = 2 * time.Second
	checkTimeout  = 2 * time.Second
	dialTimeout   = 3 * time.Second
	failuresDown  = 2
)

// Config is what the load balancer needs.
type Config struct {
	Listen  string // host:port on loopback
	Default string // host:port of the apiserver known first; always kept
	CAFile  string // the apiservers' CA, for the health checks
	// Kubeconfig has the credentials to watch the kubernetes Service's EndpointSlices, through
	// the load balancer itself.
	Kubeconfig string
	State      string // the file that keeps the apiservers learned
	Log        *logrus.Logger
}

// LoadBalancer is the component.
type LoadBalancer struct {
	cfg    Config
	client *http.Client
	ready  *supervisor.Latch

	mu       sync.Mutex
	servers  []string              // Default first, then the learned ones, sorted
	healthy  map[string]bool       // by server; unknown counts as healthy until checked
	failures map[string]int        // checks failed in a row, by server
	conns    map[string][]net.Conn // open connections to each server
	current  string                // where new connections go while it is healthy
	listener net.Listener
}

// New checks c; nothing listens until Run.
func New(c Config) (*LoadBalancer, error) {
	if _, _, err := net.SplitHostPort(c.Default); err != nil {
		return nil, fmt.Errorf("load balancer: apiserver %q: %w", c.Default, err)
	}
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("load balancer: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("load balancer: %s holds no CA certificate", c.CAFile)
	}
	lb := &LoadBalancer{
		cfg: c, ready: supervisor.NewLatch(), healthy: map[string]bool{}, failures: map[string]int{}, conns: map[string][]net.Conn{},
		client: &http.Client{Timeout: checkTimeout, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12},
		}},
	}
	lb.servers = lb.withDefault(lb.loadState())
	lb.current = c.Default
	return lb, nil
}

func (lb *LoadBalancer) Name() string { return "apiserver load balancer" }

func (lb *LoadBalancer) Ready(ctx context.Context) error { return lb.ready.Wait(ctx) }

// URL is where clients reach the apiservers through the load balancer at listen.
func URL(listen string) string { return "https://" + listen }

func (lb *LoadBalancer) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", lb.cfg.Listen)
	if err != nil {
		return fmt.Errorf("load balancer: cannot listen on %s: %w; another kone on this machine? choose another port with --lb-server-port", lb.cfg.Listen, err)
	}
	lb.mu.Lock()
	lb.listener = l
	lb.mu.Unlock()
	defer l.Close()
	lb.ready.Open()
	go lb.checkLoop(ctx)
	go lb.watch(ctx)
	go func() {
		<-ctx.Done()
		l.Close()
		lb.closeAll()
	}()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("load balancer: %w", err)
		}
		go lb.forward(ctx, conn)
	}
}

// Servers are the apiservers the load balancer knows, the default first.
func (lb *LoadBalancer) Servers() []string {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return slices.Clone(lb.servers)
}

// forward connects client to a healthy apiserver, trying each in turn, and copies bytes both ways.
func (lb *LoadBalancer) forward(ctx context.Context, client net.Conn) {
	defer client.Close()
	for _, server := range lb.candidates() {
		d := net.Dialer{Timeout: dialTimeout}
		backend, err := d.DialContext(ctx, "tcp", server)
		if err != nil {
			lb.down(server, err)
			continue
		}
		if !lb.track(server, backend) {
			backend.Close()
			return
		}
		defer lb.untrack(server, backend)
		// Whichever side ends, both connections close: an apiserver's clients do not half-close.
		done := make(chan struct{}, 2)
		go func() { _, _ = io.Copy(backend, client); done <- struct{}{} }()
		go func() { _, _ = io.Copy(client, backend); done <- struct{}{} }()
		<-done
		backend.Close()
		client.Close()
		<-done
		return
	}
	lb.cfg.Log.Warn("load balancer: no apiserver answers; the node's clients retry")
}

// candidates are the servers to try, the current one first, then the other healthy ones, then
// the unhealthy ones, since a check may be stale.
func (lb *LoadBalancer) candidates() []string {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	var good, bad []string
	for _, s := range append([]string{lb.current}, lb.servers...) {
		if slices.Contains(good, s) || slices.Contains(bad, s) {
			continue
		}
		if ok, checked := lb.healthy[s]; ok || !checked {
			good = append(good, s)
		} else {
			bad = append(bad, s)
		}
	}
	return append(good, bad...)
}

func (lb *LoadBalancer) track(server string, c net.Conn) bool {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if lb.listener == nil {
		return false
	}
	lb.conns[server] = append(lb.conns[server], c)
	lb.current = server
	return true
}

func (lb *LoadBalancer) untrack(server string, c net.Conn) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.conns[server] = slices.DeleteFunc(lb.conns[server], func(x net.Conn) bool { return x == c })
}

func (lb *LoadBalancer) closeAll() {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for _, conns := range lb.conns {
		for _, c := range conns {
			c.Close()
		}
	}
	lb.listener = nil
}

// setHealth records a check: failuresDown failures in a row make a server unhealthy.
func (lb *LoadBalancer) setHealth(server string, ok bool, why error) {
	if !ok {
		lb.mu.Lock()
		lb.failures[server]++
		failed := lb.failures[server]
		lb.mu.Unlock()
		if failed >= failuresDown {
			lb.down(server, why)
		}
		return
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if was, known := lb.healthy[server]; known && !was {
		lb.cfg.Log.WithField("apiserver", server).Info("apiserver is healthy again")
	}
	lb.healthy[server], lb.failures[server] = true, 0
}

// down marks a server unhealthy, which a refused connection does at once. Its connections are
// closed, so that their clients come back through a healthy one instead of waiting for their
// own timeouts.
func (lb *LoadBalancer) down(server string, why error) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if was, known := lb.healthy[server]; known && !was {
		return
	}
	lb.healthy[server] = false
	lb.cfg.Log.WithField("apiserver", server).WithError(why).Warn("apiserver is not healthy; its connections move to another")
	for _, c := range lb.conns[server] {
		c.Close()
	}
	lb.conns[server] = nil
}

func (lb *LoadBalancer) checkLoop(ctx context.Context) {
	for {
		var wg sync.WaitGroup
		for _, s := range lb.Servers() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := lb.check(ctx, s)
				if ctx.Err() == nil {
					lb.setHealth(s, err == nil, err)
				}
			}()
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-time.After(checkInterval):
		}
	}
}

// check asks an apiserver whether it is ready, which includes its etcd. An apiserver that
// refuses anonymous requests answers 401 or 403: it is up, which is all that can be known.
func (lb *LoadBalancer) check(ctx context.Context, server string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+server+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := lb.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusUnauthorized, http.StatusForbidden:
		return nil
	}
	return fmt.Errorf("readyz: %s", resp.Status)
}

// watch learns the apiservers from the kubernetes Service's EndpointSlices.
func (lb *LoadBalancer) watch(ctx context.Context) {
	rc, err := clientcmd.BuildConfigFromFlags("", lb.cfg.Kubeconfig)
	if err != nil {
		lb.cfg.Log.WithError(err).Warn("load balancer: cannot learn the apiservers")
		return
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		lb.cfg.Log.WithError(err).Warn("load balancer: cannot learn the apiservers")
		return
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace("default"),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = discoveryv1.LabelServiceName + "=kubernetes" }))
	informer := factory.Discovery().V1().EndpointSlices()
	update := func(any) { lb.learn(informer.Lister()) }
	_, _ = informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: update, UpdateFunc: func(_, n any) { update(n) }, DeleteFunc: update,
	})
	factory.Start(ctx.Done())
	<-ctx.Done()
	factory.Shutdown()
}

// learn takes the ready endpoints of every kubernetes EndpointSlice as the apiservers.
func (lb *LoadBalancer) learn(lister discoverylisters.EndpointSliceLister) {
	all, err := lister.List(labels.Everything())
	if err != nil {
		return
	}
	learned := APIServers(all)
	if len(learned) == 0 {
		return // a moment between updates, or no apiserver ready: keep what is known
	}
	servers := lb.withDefault(learned)
	lb.mu.Lock()
	changed := !slices.Equal(servers, lb.servers)
	lb.servers = servers
	lb.mu.Unlock()
	if changed {
		lb.cfg.Log.WithField("apiservers", servers).Info("load balancer: apiservers")
		lb.saveState(learned)
	}
}

// APIServers are the addresses (host:port) of the ready apiservers in the kubernetes Service's
// EndpointSlices.
func APIServers(all []*discoveryv1.EndpointSlice) []string {
	var out []string
	for _, s := range all {
		// The apiservers keep this one slice themselves; any other is not theirs.
		if s.Name != "kubernetes" || len(s.Ports) == 0 || s.Ports[0].Port == nil {
			continue
		}
		port := fmt.Sprint(*s.Ports[0].Port)
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				out = append(out, net.JoinHostPort(a, port))
			}
		}
	}
	return out
}

func (lb *LoadBalancer) withDefault(learned []string) []string {
	out := []string{lb.cfg.Default}
	learned = slices.Clone(learned)
	slices.Sort(learned)
	for _, s := range slices.Compact(learned) {
		if s != lb.cfg.Default {
			out = append(out, s)
		}
	}
	return out
}

func (lb *LoadBalancer) loadState() []string {
	var learned []string
	data, err := os.ReadFile(lb.cfg.State)
	if err == nil {
		err = json.Unmarshal(data, &learned)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		lb.cfg.Log.WithError(err).Warn("load balancer: ignoring the apiservers it kept")
		return nil
	}
	return learned
}

func (lb *LoadBalancer) saveState(learned []string) {
	data, _ := json.Marshal(learned)
	if err := pki.WriteFile(lb.cfg.State, data, 0o644); err != nil {
		lb.cfg.Log.WithError(err).Warn("load balancer: cannot keep the apiservers it learned")
	}
}
