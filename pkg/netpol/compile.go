package netpol

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"go4.org/netipx"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Ruleset is what a node enforces: for each direction, the policies that select at least one
// of its pods, in a stable order.
type Ruleset struct {
	Ingress, Egress []Policy
}

// Policy is one NetworkPolicy in one direction, on one node. Targets are the addresses of the
// node's pods it selects; traffic to (ingress) or from (egress) one of them that is not a reply
// passes only if a rule of some policy that selects the pod allows it.
type Policy struct {
	Name    string // namespace/name
	Targets []netip.Addr
	Rules   []Rule // none: the targets are isolated in this direction and nothing is allowed
}

// Rule allows traffic from (ingress) or to (egress) its peers on its ports.
type Rule struct {
	// Peers are the other end's addresses, as sorted ranges that do not overlap; nil with
	// AnyPeer.
	AnyPeer bool
	Peers   []netipx.IPRange
	// Ports are what the traffic may be sent to; nil with AnyPort.
	AnyPort bool
	Ports   []Port
}

// Port is a range of one protocol's destination ports, on any destination or, for a named port
// resolved on one pod, only on that pod's address.
type Port struct {
	Protocol    uint8 // unix.IPPROTO_TCP, _UDP or _SCTP
	First, Last uint16
	To          netip.Addr // the invalid Addr: any destination
}

// Cluster is what the policies are compiled against.
type Cluster struct {
	Node       string // the node whose pods are the targets
	Policies   []*networkingv1.NetworkPolicy
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
}

// Compile works out what Node enforces. Pods without an IPv4 address, on the host's network or
// finished play no part; an IPv6 ipBlock matches nothing, kone's pod network being IPv4 only.
// A policy that cannot be compiled (the apiserver validates them: only a newer API's could)
// is left out and its error returned.
func Compile(c Cluster) (Ruleset, []error) {
	var rs Ruleset
	var skipped []error
	namespaces := map[string]labels.Set{}
	for _, ns := range c.Namespaces {
		namespaces[ns.Name] = ns.Labels
	}
	var pods []*corev1.Pod
	for _, p := range c.Pods {
		if podAddr(p).IsValid() {
			pods = append(pods, p)
		}
	}
	policies := slices.Clone(c.Policies)
	slices.SortFunc(policies, func(a, b *networkingv1.NetworkPolicy) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	for _, np := range policies {
		ingress, egress, err := compilePolicy(c.Node, np, pods, namespaces)
		if err != nil {
			skipped = append(skipped, fmt.Errorf("network policy %s/%s: %w", np.Namespace, np.Name, err))
			continue
		}
		if ingress != nil {
			rs.Ingress = append(rs.Ingress, *ingress)
		}
		if egress != nil {
			rs.Egress = append(rs.Egress, *egress)
		}
	}
	return rs, skipped
}

// compilePolicy compiles a policy in the directions it isolates the node's pods in; nil where
// it does not.
func compilePolicy(node string, np *networkingv1.NetworkPolicy, pods []*corev1.Pod, namespaces map[string]labels.Set) (ingress, egress *Policy, err error) {
	selector, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		return nil, nil, fmt.Errorf("podSelector: %w", err)
	}
	var targets []*corev1.Pod
	for _, p := range pods {
		if p.Spec.NodeName == node && p.Namespace == np.Namespace && selector.Matches(labels.Set(p.Labels)) {
			targets = append(targets, p)
		}
	}
	if len(targets) == 0 {
		return nil, nil, nil
	}
	name := np.Namespace + "/" + np.Name
	isIngress, isEgress := directions(np)
	if isIngress {
		ingress = &Policy{Name: name, Targets: addrs(targets)}
		for i, r := range np.Spec.Ingress {
			rule, err := compileRule(np.Namespace, r.From, r.Ports, targets, pods, namespaces)
			if err != nil {
				return nil, nil, fmt.Errorf("ingress rule %d: %w", i+1, err)
			}
			if rule.matches() {
				ingress.Rules = append(ingress.Rules, rule)
			}
		}
	}
	if isEgress {
		egress = &Policy{Name: name, Targets: addrs(targets)}
		for i, r := range np.Spec.Egress {
			rule, err := compileEgress(np.Namespace, r, pods, namespaces)
			if err != nil {
				return nil, nil, fmt.Errorf("egress rule %d: %w", i+1, err)
			}
			if rule.matches() {
				egress.Rules = append(egress.Rules, rule)
			}
		}
	}
	return ingress, egress, nil
}

// directions are the policy types a policy isolates in; with none given, ingress always and
// egress when it has egress rules, as the API defines.
func directions(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	return slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress), slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
}

func compileEgress(namespace string, r networkingv1.NetworkPolicyEgressRule, pods []*corev1.Pod, namespaces map[string]labels.Set) (Rule, error) {
	// A named port is the port of that name on the destination pod: among the peers, or
	// among all pods where the rule names none.
	candidates := pods
	if len(r.To) > 0 {
		var err error
		if candidates, err = peerPods(namespace, r.To, pods, namespaces); err != nil {
			return Rule{}, err
		}
	}
	return compileRule(namespace, r.To, r.Ports, candidates, pods, namespaces)
}

// compileRule compiles one rule's peers and ports; named ports are looked up on named (the
// pods the traffic goes to).
func compileRule(namespace string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, named, pods []*corev1.Pod, namespaces map[string]labels.Set) (Rule, error) {
	var rule Rule
	if len(peers) == 0 {
		rule.AnyPeer = true
	} else {
		var b netipx.IPSetBuilder
		matched, err := peerPods(namespace, peers, pods, namespaces)
		if err != nil {
			return Rule{}, err
		}
		for _, p := range matched {
			b.Add(podAddr(p))
		}
		for _, peer := range peers {
			if peer.IPBlock == nil {
				continue
			}
			if err := addBlock(&b, peer.IPBlock); err != nil {
				return Rule{}, err
			}
		}
		set, err := b.IPSet()
		if err != nil {
			return Rule{}, fmt.Errorf("peers: %w", err)
		}
		rule.Peers = set.Ranges()
	}
	if len(ports) == 0 {
		rule.AnyPort = true
		return rule, nil
	}
	for _, p := range ports {
		proto, err := protocol(p.Protocol)
		if err != nil {
			return Rule{}, err
		}
		switch {
		case p.Port == nil:
			rule.Ports = append(rule.Ports, Port{Protocol: proto, First: 0, Last: 65535})
		case p.Port.StrVal != "":
			for _, pod := range named {
				if n := namedPort(pod, p.Port.StrVal, protocolName(p.Protocol)); n != 0 {
					rule.Ports = append(rule.Ports, Port{Protocol: proto, First: n, Last: n, To: podAddr(pod)})
				}
			}
		default:
			first := p.Port.IntVal
			last := first
			if p.EndPort != nil {
				last = *p.EndPort
			}
			if first < 1 || last < first || last > 65535 {
				return Rule{}, fmt.Errorf("port %d to %d is not a range of ports", first, last)
			}
			rule.Ports = append(rule.Ports, Port{Protocol: proto, First: uint16(first), Last: uint16(last)})
		}
	}
	return rule, nil
}

// matches is false for a rule that can allow nothing: peers or named ports that matched none.
func (r Rule) matches() bool {
	return (r.AnyPeer || len(r.Peers) > 0) && (r.AnyPort || len(r.Ports) > 0)
}

// peerPods are the pods that the pod and namespace selectors of peers match.
func peerPods(namespace string, peers []networkingv1.NetworkPolicyPeer, pods []*corev1.Pod, namespaces map[string]labels.Set) ([]*corev1.Pod, error) {
	var out []*corev1.Pod
	seen := map[*corev1.Pod]bool{}
	for _, peer := range peers {
		if peer.IPBlock != nil || (peer.PodSelector == nil && peer.NamespaceSelector == nil) {
			continue
		}
		podSel, nsSel := labels.Everything(), labels.Nothing()
		var err error
		if peer.PodSelector != nil {
			if podSel, err = metav1.LabelSelectorAsSelector(peer.PodSelector); err != nil {
				return nil, fmt.Errorf("podSelector: %w", err)
			}
		}
		if peer.NamespaceSelector != nil {
			if nsSel, err = metav1.LabelSelectorAsSelector(peer.NamespaceSelector); err != nil {
				return nil, fmt.Errorf("namespaceSelector: %w", err)
			}
		}
		for _, p := range pods {
			inNamespace := p.Namespace == namespace
			if peer.NamespaceSelector != nil {
				nsLabels, ok := namespaces[p.Namespace]
				inNamespace = ok && nsSel.Matches(nsLabels)
			}
			if inNamespace && podSel.Matches(labels.Set(p.Labels)) && !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// addBlock adds an IPv4 block less its exceptions; an IPv6 one adds nothing.
func addBlock(b *netipx.IPSetBuilder, block *networkingv1.IPBlock) error {
	cidr, err := netip.ParsePrefix(block.CIDR)
	if err != nil {
		return fmt.Errorf("ipBlock %q: %w", block.CIDR, err)
	}
	if !cidr.Addr().Is4() {
		return nil
	}
	var part netipx.IPSetBuilder
	part.AddPrefix(cidr.Masked())
	for _, e := range block.Except {
		except, err := netip.ParsePrefix(e)
		if err != nil {
			return fmt.Errorf("ipBlock %q: except %q: %w", block.CIDR, e, err)
		}
		part.RemovePrefix(except.Masked())
	}
	set, err := part.IPSet()
	if err != nil {
		return fmt.Errorf("ipBlock %q: %w", block.CIDR, err)
	}
	b.AddSet(set)
	return nil
}

func protocolName(p *corev1.Protocol) corev1.Protocol {
	if p == nil || *p == "" {
		return corev1.ProtocolTCP
	}
	return *p
}

func protocol(p *corev1.Protocol) (uint8, error) {
	switch protocolName(p) {
	case corev1.ProtocolTCP:
		return unix.IPPROTO_TCP, nil
	case corev1.ProtocolUDP:
		return unix.IPPROTO_UDP, nil
	case corev1.ProtocolSCTP:
		return unix.IPPROTO_SCTP, nil
	}
	return 0, fmt.Errorf("protocol %q is not TCP, UDP or SCTP", *p)
}

// namedPort is the number of the pod's container port of that name and protocol, or 0.
func namedPort(p *corev1.Pod, name string, proto corev1.Protocol) uint16 {
	for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
		for _, cp := range c.Ports {
			if cp.Name == name && protocolName(&cp.Protocol) == proto && cp.ContainerPort > 0 && cp.ContainerPort <= 65535 {
				return uint16(cp.ContainerPort)
			}
		}
	}
	return 0
}

// podAddr is a pod's IPv4 address while it may send and receive, else the invalid Addr.
func podAddr(p *corev1.Pod) netip.Addr {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return netip.Addr{}
	}
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is4() {
			return a
		}
	}
	return netip.Addr{}
}

func addrs(pods []*corev1.Pod) []netip.Addr {
	out := make([]netip.Addr, 0, len(pods))
	for _, p := range pods {
		out = append(out, podAddr(p))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
