// Package netpol enforces Kubernetes NetworkPolicies on a node's pods, inside kone, with no pod
// and no image: each node watches the cluster's policies, pods and namespaces, compiles what
// applies to its own pods (Compile, a pure function), and writes it as one nftables table of
// its own, kone-netpol, in one transaction (Program), through netlink: no iptables, ipset or nft
// program is needed.
//
// The table has a base chain per direction on the forward hook, which a pod's traffic to other
// pods, on the node or across the overlay, and out of the node passes. Replies pass; a
// connection's first packet to (ingress) or from (egress) a pod that some policy selects passes
// only if one of the rules of those policies allows it, and is dropped otherwise. Other tables'
// verdicts are untouched: an nftables drop is final, an accept here only leaves the packet to
// the next. Traffic between a pod and its own node does not pass forward and is always allowed,
// as Kubernetes asks (kubelet's probes; kone's cluster DNS, which runs on the node).
//
// The table outlives kone, as the pods do; --disable network-policy removes it.
package netpol
