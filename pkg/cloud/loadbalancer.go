package cloud

import (
	"context"
	"fmt"
	"net"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	cloudprovider "k8s.io/cloud-provider"
	servicehelper "k8s.io/cloud-provider/service/helpers"
)

// LBNodeLabel marks the nodes that serve LoadBalancer Services: once a node carries it with
// "true", only such nodes do; with no node marked, every node does.
const LBNodeLabel = "servicelb.kone.dev/enabled"

// loadBalancers is kone's load balancer, with no image and nothing to run: a LoadBalancer
// Service's addresses are those of the nodes that serve it, and kube-proxy on each node already
// sends what reaches a load balancer address and port to the Service. Upstream's service
// controller (k8s.io/cloud-provider) calls it, records its refusals as Events, and retries.
type loadBalancers struct {
	cs       kubernetes.Interface
	services corelisters.ServiceLister
}

var _ cloudprovider.LoadBalancer = loadBalancers{}

func (l loadBalancers) GetLoadBalancer(_ context.Context, _ string, svc *corev1.Service) (*corev1.LoadBalancerStatus, bool, error) {
	return &svc.Status.LoadBalancer, len(svc.Status.LoadBalancer.Ingress) > 0, nil
}

func (l loadBalancers) GetLoadBalancerName(_ context.Context, _ string, svc *corev1.Service) string {
	return svc.Namespace + "/" + svc.Name
}

// EnsureLoadBalancer gives svc the serving nodes' addresses, unless another LoadBalancer
// Service holds one of its ports: two Services cannot both own NODE:PORT. Of two that want a
// port, the one that has it keeps it, and otherwise the older one gets it.
func (l loadBalancers) EnsureLoadBalancer(_ context.Context, _ string, svc *corev1.Service, nodes []*corev1.Node) (*corev1.LoadBalancerStatus, error) {
	if err := l.portsFree(svc); err != nil {
		return nil, err
	}
	status := Status(nodes)
	if len(status.Ingress) == 0 {
		return nil, fmt.Errorf("no node serves LoadBalancer Services: none has an address, or none is labelled %s=true", LBNodeLabel)
	}
	return status, nil
}

// UpdateLoadBalancer follows the nodes: upstream's controller expects a load balancer whose
// address stays as nodes come and go, so the Service's addresses are brought up to date here.
func (l loadBalancers) UpdateLoadBalancer(ctx context.Context, _ string, svc *corev1.Service, nodes []*corev1.Node) error {
	status := Status(nodes)
	if len(svc.Status.LoadBalancer.Ingress) == 0 || servicehelper.LoadBalancerStatusEqual(&svc.Status.LoadBalancer, status) {
		return nil
	}
	updated := svc.DeepCopy()
	updated.Status.LoadBalancer = *status
	_, err := servicehelper.PatchService(l.cs.CoreV1(), svc, updated)
	return err
}

// EnsureLoadBalancerDeleted has nothing to take down: kube-proxy stops with the Service.
func (l loadBalancers) EnsureLoadBalancerDeleted(context.Context, string, *corev1.Service) error {
	return nil
}

// portsFree fails naming the Service that holds a port svc wants.
func (l loadBalancers) portsFree(svc *corev1.Service) error {
	all, err := l.services.List(labels.Everything())
	if err != nil {
		return err
	}
	first := func(a, b *corev1.Service) bool {
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	}
	for _, other := range all {
		if other.UID == svc.UID || other.Spec.Type != corev1.ServiceTypeLoadBalancer || other.Spec.LoadBalancerClass != nil ||
			other.DeletionTimestamp != nil {
			continue
		}
		holds := len(other.Status.LoadBalancer.Ingress) > 0
		if !holds && !first(other, svc) {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if slices.ContainsFunc(other.Spec.Ports, func(o corev1.ServicePort) bool { return o.Port == p.Port && o.Protocol == p.Protocol }) {
				return fmt.Errorf("port %s/%d is held by LoadBalancer Service %s/%s; choose another port, or delete that Service",
					p.Protocol, p.Port, other.Namespace, other.Name)
			}
		}
	}
	return nil
}

// Status is the load balancer status of a Service served by nodes: the serving nodes'
// addresses, internal and external, in order.
func Status(nodes []*corev1.Node) *corev1.LoadBalancerStatus {
	marked := slices.ContainsFunc(nodes, func(n *corev1.Node) bool { return n.Labels[LBNodeLabel] == "true" })
	var ips []string
	for _, n := range nodes {
		if marked && n.Labels[LBNodeLabel] != "true" {
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
	for _, ip := range ips {
		status.Ingress = append(status.Ingress, corev1.LoadBalancerIngress{IP: ip})
	}
	return status
}
