// Package cloud is kone's cloud provider: it sets each node's addresses from what the node says
// of itself, the way a cloud controller manager does from a cloud's API.
//
// kubelet alone can only publish the addresses it finds on the host (its --node-ip and host
// name); an address the node is reached at from outside (--node-external-ip: a NAT or a load
// balancer in front of an edge device) has no kubelet flag. So kubelet runs with
// --cloud-provider=external, each node's kone writes its external addresses into an annotation
// of its Node (Annotator, node side), and the server runs upstream's cloud node controller
// (k8s.io/cloud-provider) with a provider that reads them back (Controller, server side). That
// controller also removes the node.cloudprovider.kubernetes.io/uninitialized taint kubelet
// registers with, once the node has published its addresses, so that no pod is scheduled on a
// node whose addresses are not known yet.
//
// The provider is also kone's load balancer (loadBalancers, ServiceController): upstream's
// service controller gives each LoadBalancer Service its serving nodes' addresses, which
// kube-proxy already serves, so no pod or image is needed for it.
package cloud
