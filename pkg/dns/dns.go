// Package dns is the cluster DNS of a kone node: CoreDNS, as a library, inside kone, on every
// node. It listens on the node's own address on the pod bridge, and kone publishes that address
// as the node's endpoint of the kube-dns Service, whose internalTrafficPolicy is Local: every
// pod asks the CoreDNS of its own node, nothing is pulled from a registry, and name lookups keep
// working on a node whose server is away (CoreDNS answers from what it has cached of the API).
package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"text/template"
	"time"

	"github.com/coredns/caddy"
	"github.com/miekg/dns"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kone-dev/kone/pkg/supervisor"

	// The server type and the plugins the Corefile uses register themselves with caddy.
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
)

// Service names and labels kone uses for the cluster DNS.
const (
	ServiceName = "kube-dns"
	Namespace   = "kube-system"
	managedBy   = "kone-dns"
)

// Config is what the node's DNS needs.
type Config struct {
	NodeName      string
	ClusterDomain string
	// Address is the node-local address to serve on; it is called once the components before
	// DNS are ready (it is the pod bridge's gateway).
	Address    func() net.IP
	Kubeconfig string // CoreDNS's own credentials: read Services, EndpointSlices, Namespaces
	Upstream   string // resolv.conf whose servers answer names outside the cluster
	Client     kubernetes.Interface
	Log        *logrus.Logger
	// ClaimKlog routes klog back into kone's log: CoreDNS's kubernetes plugin takes it over at
	// start, for every component of the process.
	ClaimKlog func()
}

// DNS is the cluster DNS component.
type DNS struct {
	cfg   Config
	addr  net.IP
	ready *supervisor.Latch
}

// New returns the component.
func New(cfg Config) *DNS { return &DNS{cfg: cfg, ready: supervisor.NewLatch()} }

func (d *DNS) Name() string { return "coredns" }

var corefile = template.Must(template.New("Corefile").Parse(`.:53 {
    bind {{.Address}}
    errors
    kubernetes {{.Domain}} in-addr.arpa ip6.arpa {
        kubeconfig {{.Kubeconfig}} default
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    forward . {{.Upstream}}
    cache 30
    loadbalance
}
`))

// Corefile is CoreDNS's configuration for c, served on addr. There is no loop plugin: on a
// forwarding loop it ends the process, and the process is kone.
func Corefile(c Config, addr net.IP) (string, error) {
	var b strings.Builder
	err := corefile.Execute(&b, map[string]string{
		"Address": addr.String(), "Domain": c.ClusterDomain, "Kubeconfig": c.Kubeconfig, "Upstream": c.Upstream,
	})
	return b.String(), err
}

func (d *DNS) Run(ctx context.Context) error {
	d.addr = d.cfg.Address()
	text, err := Corefile(d.cfg, d.addr)
	if err != nil {
		return err
	}
	dnsserver.Quiet = true
	instance, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(text), Filepath: "Corefile", ServerTypeName: "dns"})
	d.cfg.ClaimKlog()
	if err != nil {
		return fmt.Errorf("start CoreDNS on %s:53: %w", d.addr, err)
	}
	defer func() {
		if err := instance.Stop(); err != nil {
			d.cfg.Log.WithError(err).Warn("stopping CoreDNS")
		}
	}()
	if err := d.answers(ctx); err != nil {
		return err
	}
	if err := publish(ctx, d.cfg.Client, d.cfg.NodeName, d.addr); err != nil {
		return fmt.Errorf("publish the node's DNS endpoint: %w", err)
	}
	d.ready.Open()
	<-ctx.Done()
	return nil
}

// answers waits until CoreDNS resolves the apiserver's Service name, which means it has synced
// with the API.
func (d *DNS) answers(ctx context.Context) error {
	name := "kubernetes.default.svc." + d.cfg.ClusterDomain + "."
	server := net.JoinHostPort(d.addr.String(), "53")
	client := &dns.Client{Timeout: time.Second}
	var last error
	for {
		m := new(dns.Msg).SetQuestion(name, dns.TypeA)
		r, _, err := client.ExchangeContext(ctx, m, server)
		switch {
		case err != nil:
			last = err
		case r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0:
			last = fmt.Errorf("%s answered %s for %s", server, dns.RcodeToString[r.Rcode], name)
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (d *DNS) Ready(ctx context.Context) error {
	return d.ready.Wait(ctx)
}

// EndpointSlice is a node's endpoint of the kube-dns Service. It is owned by the Node, so that
// it goes when the node is deleted.
func EndpointSlice(node *corev1.Node, addr net.IP) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      "kube-dns-" + node.Name,
			Namespace: Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: ServiceName,
				discoveryv1.LabelManagedBy:   managedBy,
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{addr.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(node.Name),
		}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("dns"), Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To(int32(53))},
			{Name: ptr.To("dns-tcp"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(int32(53))},
		},
	}
}

// publish creates or updates this node's endpoint of the kube-dns Service.
func publish(ctx context.Context, cs kubernetes.Interface, nodeName string, addr net.IP) error {
	node, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	want := EndpointSlice(node, addr)
	slices := cs.DiscoveryV1().EndpointSlices(Namespace)
	have, err := slices.Get(ctx, want.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = slices.Create(ctx, want, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	want.ResourceVersion = have.ResourceVersion
	_, err = slices.Update(ctx, want, metav1.UpdateOptions{})
	return err
}
