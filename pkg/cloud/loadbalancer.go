package cloud

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	k8stypes "k8s.io/apimachinery/pkg/types"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	cloudprovider "k8s.io/cloud-provider"
	cloudproviderapi "k8s.io/cloud-provider/api"
	servicehelper "k8s.io/cloud-provider/service/helpers"
)

// LBNodeLabel marks the nodes that serve LoadBalancer Services: once a node carries it with
// "true", only such nodes do; with no node marked, every node does.
const LBNodeLabel = "servicelb.kone.dev/enabled"

// ServedAnnotation marks the LoadBalancer Services kone gave addresses: a Service that has
// addresses without it has them from another controller (MetalLB, say, from before kone had a
// load balancer), and is left to it.
const ServedAnnotation = "servicelb.kone.dev/served"

// refusedRetry is how often a refused Service is tried again: flat, so that it gets its port
// within seconds of the holder's going rather than after a backoff grown to minutes.
const refusedRetry = 15 * time.Second

// Port is a port on the nodes' addresses, and its protocol.
type Port struct {
	Protocol corev1.Protocol
	Port     int32
}

// Reserved is what a LoadBalancer Service may not take on the nodes' addresses: kube-proxy
// would send there what is meant for kone itself (the apiserver, etcd's peers, kubelet, the
// overlay) or for the NodePorts.
type Reserved struct {
	Ports    map[Port]string // the port, and what listens there
	NodePort utilnet.PortRange
}

// loadBalancers is kone's load balancer, with no image and nothing to run: a LoadBalancer
// Service's addresses are those of the nodes that serve it, and kube-proxy on each node already
// sends what reaches a load balancer address and port to the Service. Upstream's service
// controller (k8s.io/cloud-provider) calls it one Service at a time, records its refusals as
// Events, and tries again.
type loadBalancers struct {
	cs       kubernetes.Interface
	services corelisters.ServiceLister
	nodes    corelisters.NodeLister
	reserved Reserved

	mu sync.Mutex
	// granted holds the Services given addresses by this process whose status the lister
	// may not show yet: without it, two Services ensured one after the other could both get
	// a port. refused holds those refused since, whose addresses the lister may still show.
	granted, refused map[k8stypes.UID]bool
}

var _ cloudprovider.LoadBalancer = (*loadBalancers)(nil)

func newLoadBalancers(cs kubernetes.Interface, services corelisters.ServiceLister, nodes corelisters.NodeLister, reserved Reserved) *loadBalancers {
	return &loadBalancers{cs: cs, services: services, nodes: nodes, reserved: reserved, granted: map[k8stypes.UID]bool{}, refused: map[k8stypes.UID]bool{}}
}

func (l *loadBalancers) GetLoadBalancer(_ context.Context, _ string, svc *corev1.Service) (*corev1.LoadBalancerStatus, bool, error) {
	return &svc.Status.LoadBalancer, len(svc.Status.LoadBalancer.Ingress) > 0, nil
}

func (l *loadBalancers) GetLoadBalancerName(_ context.Context, _ string, svc *corev1.Service) string {
	return svc.Namespace + "/" + svc.Name
}

// EnsureLoadBalancer gives svc the serving nodes' addresses, unless it asks for a port that is
// kone's own, or one that another LoadBalancer Service holds: two Services cannot both own
// NODE:PORT, and kube-proxy would serve both. A refused Service loses the addresses it had, so
// that it holds no port while it waits. The nodes that upstream passes are not used: kone
// serves from Ready nodes only, as it has no health check of its own (see Status).
func (l *loadBalancers) EnsureLoadBalancer(_ context.Context, _ string, svc *corev1.Service, _ []*corev1.Node) (*corev1.LoadBalancerStatus, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(svc.Status.LoadBalancer.Ingress) > 0 && svc.Annotations[ServedAnnotation] != "true" {
		return nil, cloudprovider.ImplementedElsewhere
	}
	refusal := l.refusal(svc)
	if refusal == "" {
		status, err := l.status()
		if err != nil {
			return nil, err
		}
		if len(status.Ingress) == 0 && len(svc.Status.LoadBalancer.Ingress) > 0 {
			// No node serves for now (all NotReady, say, as the cluster starts): the Service
			// keeps its addresses, and its ports, until one does.
			status = svc.Status.LoadBalancer.DeepCopy()
		}
		if len(status.Ingress) > 0 {
			if err := l.mark(svc); err != nil {
				return nil, err
			}
			l.granted[svc.UID] = true
			delete(l.refused, svc.UID)
			return status, nil
		}
		refusal = fmt.Sprintf("no node serves LoadBalancer Services: none is Ready with an IPv4 address, or none of those is labelled %s=true", LBNodeLabel)
	}
	delete(l.granted, svc.UID)
	l.refused[svc.UID] = true
	if len(svc.Status.LoadBalancer.Ingress) > 0 {
		released := svc.DeepCopy()
		released.Status.LoadBalancer = corev1.LoadBalancerStatus{}
		if _, err := servicehelper.PatchService(l.cs.CoreV1(), svc, released); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%s; and cannot take back its addresses: %w", refusal, err)
		}
	}
	return nil, cloudproviderapi.NewRetryError(refusal, refusedRetry)
}

// mark annotates svc as served by kone, before it has addresses.
func (l *loadBalancers) mark(svc *corev1.Service) error {
	if svc.Annotations[ServedAnnotation] == "true" {
		return nil
	}
	marked := svc.DeepCopy()
	if marked.Annotations == nil {
		marked.Annotations = map[string]string{}
	}
	marked.Annotations[ServedAnnotation] = "true"
	if _, err := servicehelper.PatchService(l.cs.CoreV1(), svc, marked); err != nil {
		return fmt.Errorf("mark LoadBalancer Service %s/%s as kone's: %w", svc.Namespace, svc.Name, err)
	}
	return nil
}

// UpdateLoadBalancer brings the Service's addresses up to date with the nodes. The Service
// upstream passes is the one it last ensured, which may predate the status it then wrote, so
// the lister's is used.
func (l *loadBalancers) UpdateLoadBalancer(_ context.Context, _ string, svc *corev1.Service, _ []*corev1.Node) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	current, err := l.services.Services(svc.Namespace).Get(svc.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	status, err := l.status()
	if err != nil {
		return err
	}
	return l.follow(current, status)
}

// EnsureLoadBalancerDeleted has nothing to take down: kube-proxy stops with the Service, and
// upstream clears its status.
func (l *loadBalancers) EnsureLoadBalancerDeleted(_ context.Context, _ string, svc *corev1.Service) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.granted, svc.UID)
	delete(l.refused, svc.UID)
	return nil
}

// follow gives svc, if kone serves it, the serving nodes' addresses, status. Called with l.mu
// held.
func (l *loadBalancers) follow(svc *corev1.Service, status *corev1.LoadBalancerStatus) error {
	if !served(svc) || l.refused[svc.UID] {
		return nil
	}
	if len(status.Ingress) == 0 || servicehelper.LoadBalancerStatusEqual(&svc.Status.LoadBalancer, status) {
		// With no node left to serve, the last addresses stay: a Service with none would
		// look Pending, and its nodes are likely back soon.
		return nil
	}
	updated := svc.DeepCopy()
	updated.Status.LoadBalancer = *status
	if _, err := servicehelper.PatchService(l.cs.CoreV1(), svc, updated); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("LoadBalancer Service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	return nil
}

// followAll brings every served Service's addresses up to date with the nodes.
func (l *loadBalancers) followAll() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	all, err := l.services.List(labels.Everything())
	if err != nil {
		return err
	}
	status, err := l.status()
	if err != nil {
		return err
	}
	var failed error
	for _, svc := range all {
		if err := l.follow(svc, status); err != nil {
			failed = err
		}
	}
	return failed
}

// served reports whether svc is a LoadBalancer Service that kone's controller gave addresses.
func served(svc *corev1.Service) bool {
	return ours(svc) && svc.Annotations[ServedAnnotation] == "true" && len(svc.Status.LoadBalancer.Ingress) > 0
}

// ours reports whether svc is a LoadBalancer Service left to the default load balancer.
func ours(svc *corev1.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeLoadBalancer && svc.Spec.LoadBalancerClass == nil
}

// refusal says why svc may not have its ports, or is empty. Called with l.mu held.
func (l *loadBalancers) refusal(svc *corev1.Service) string {
	for _, p := range svc.Spec.Ports {
		if what, ok := l.reserved.Ports[Port{p.Protocol, p.Port}]; ok {
			return fmt.Sprintf("port %s/%d is kone's own on every node (%s); choose another port", p.Protocol, p.Port, what)
		}
		if l.reserved.NodePort.Size > 0 && l.reserved.NodePort.Contains(int(p.Port)) {
			return fmt.Sprintf("port %s/%d is in the NodePort range %s, where kube-proxy serves NodePorts on the same addresses; choose another port",
				p.Protocol, p.Port, l.reserved.NodePort.String())
		}
	}
	all, err := l.services.List(labels.Everything())
	if err != nil {
		return err.Error()
	}
	for _, other := range all {
		if other.UID == svc.UID || other.DeletionTimestamp != nil || (!served(other) && !l.granted[other.UID]) {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if slices.ContainsFunc(other.Spec.Ports, func(o corev1.ServicePort) bool { return o.Port == p.Port && o.Protocol == p.Protocol }) {
				return fmt.Sprintf("port %s/%d is held by LoadBalancer Service %s/%s; choose another port, or delete that Service",
					p.Protocol, p.Port, other.Namespace, other.Name)
			}
		}
	}
	return ""
}

// status is what a served Service's status says now: the serving nodes' addresses.
func (l *loadBalancers) status() (*corev1.LoadBalancerStatus, error) {
	nodes, err := l.nodes.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	return Status(nodes), nil
}

// Status is the load balancer status of a Service served by nodes: the IPv4 addresses,
// internal and external, of the nodes that serve, in order. A node serves when it is Ready
// (kube-proxy there is likely to be running: nothing else checks it), is not being deleted or
// labelled out of load balancers (node.kubernetes.io/exclude-from-external-load-balancers), and,
// once any node carries LBNodeLabel=true, carries it too.
func Status(nodes []*corev1.Node) *corev1.LoadBalancerStatus {
	marked := slices.ContainsFunc(nodes, func(n *corev1.Node) bool { return n.Labels[LBNodeLabel] == "true" })
	var ips []string
	for _, n := range nodes {
		if (marked && n.Labels[LBNodeLabel] != "true") || !serves(n) {
			continue
		}
		for _, a := range n.Status.Addresses {
			if (a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP) && net.ParseIP(a.Address).To4() != nil && !slices.Contains(ips, a.Address) {
				ips = append(ips, a.Address)
			}
		}
	}
	slices.Sort(ips)
	status := &corev1.LoadBalancerStatus{}
	vip := corev1.LoadBalancerIPModeVIP
	for _, ip := range ips {
		// VIP: kube-proxy takes what is sent to the address itself, which is the point.
		status.Ingress = append(status.Ingress, corev1.LoadBalancerIngress{IP: ip, IPMode: &vip})
	}
	return status
}

func serves(n *corev1.Node) bool {
	if n.DeletionTimestamp != nil {
		return false
	}
	if v, ok := n.Labels[corev1.LabelNodeExcludeBalancers]; ok {
		if excluded, err := strconv.ParseBool(v); err != nil || excluded {
			return false
		}
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
