package cloud

import (
	"context"
	"fmt"
	"net"
	"strings"

	corev1 "k8s.io/api/core/v1"
	cloudprovider "k8s.io/cloud-provider"
	cloudproviderapi "k8s.io/cloud-provider/api"
)

const (
	// ExternalIPAnnotation holds a node's external addresses, comma-separated; the node writes
	// it at every start, empty when it has none, so its presence says the node has spoken.
	ExternalIPAnnotation = "kone.dev/node-external-ip"

	providerName = "kone"
)

// provider implements the parts of cloudprovider.Interface that the cloud node controller and
// the service controller use; lb is nil for the node controller.
type provider struct{ lb *loadBalancers }

var (
	_ cloudprovider.Interface   = provider{}
	_ cloudprovider.InstancesV2 = provider{}
)

func (provider) Initialize(cloudprovider.ControllerClientBuilder, <-chan struct{}) {}
func (provider) Instances() (cloudprovider.Instances, bool)                        { return nil, false }
func (p provider) InstancesV2() (cloudprovider.InstancesV2, bool)                  { return p, true }
func (provider) Zones() (cloudprovider.Zones, bool)                                { return nil, false }
func (provider) Clusters() (cloudprovider.Clusters, bool)                          { return nil, false }
func (provider) Routes() (cloudprovider.Routes, bool)                              { return nil, false }
func (provider) ProviderName() string                                              { return providerName }
func (provider) HasClusterID() bool                                                { return false }

func (p provider) LoadBalancer() (cloudprovider.LoadBalancer, bool) {
	if p.lb == nil {
		return nil, false
	}
	return p.lb, true
}

// Every registered node is a machine that exists and runs: kone learns of no other kind.
func (provider) InstanceExists(context.Context, *corev1.Node) (bool, error)   { return true, nil }
func (provider) InstanceShutdown(context.Context, *corev1.Node) (bool, error) { return false, nil }

// InstanceMetadata returns the node's addresses: kubelet's --node-ip (which it annotates the
// node with), the external addresses kone annotated it with, and its name as host name.
// Until both annotations are there it fails, and the controller tries again later.
func (provider) InstanceMetadata(_ context.Context, node *corev1.Node) (*cloudprovider.InstanceMetadata, error) {
	internal, ok := node.Annotations[cloudproviderapi.AnnotationAlphaProvidedIPAddr]
	if !ok {
		return nil, fmt.Errorf("node %s has no %s annotation yet: kubelet has not registered it with --node-ip", node.Name, cloudproviderapi.AnnotationAlphaProvidedIPAddr)
	}
	external, ok := node.Annotations[ExternalIPAnnotation]
	if !ok {
		return nil, fmt.Errorf("node %s has not published its external addresses yet", node.Name)
	}
	var addrs []corev1.NodeAddress
	add := func(kind corev1.NodeAddressType, list string) error {
		for _, s := range strings.Split(list, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			if net.ParseIP(s) == nil {
				return fmt.Errorf("node %s: %q in its %s addresses is not an IP address", node.Name, s, kind)
			}
			addrs = append(addrs, corev1.NodeAddress{Type: kind, Address: s})
		}
		return nil
	}
	if err := add(corev1.NodeInternalIP, internal); err != nil {
		return nil, err
	}
	if err := add(corev1.NodeExternalIP, external); err != nil {
		return nil, err
	}
	addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeHostName, Address: node.Name})
	return &cloudprovider.InstanceMetadata{
		ProviderID:    providerName + "://" + node.Name,
		InstanceType:  providerName,
		NodeAddresses: addrs,
	}, nil
}
