package join

import (
	"context"
	"encoding/json"
	"fmt"
	"net"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kone-dev/kone/pkg/apply"
)

// SettingsName is the kube-system ConfigMap with the cluster's settings for agents.
const SettingsName = "kone-cluster"

const settingsKey = "settings.json"

// Settings are what every node of the cluster must agree on, chosen by the server.
type Settings struct {
	ClusterCIDR    string `json:"clusterCIDR"`
	ServiceCIDR    string `json:"serviceCIDR"`
	ClusterDNS     string `json:"clusterDNS"`
	ClusterDomain  string `json:"clusterDomain"`
	FlannelBackend string `json:"flannelBackend"`
	// CoreDNS is false when the user runs their own cluster DNS.
	CoreDNS bool `json:"coreDNS"`
	// LocalStorage is true when every node serves the local-path StorageClass; false from a
	// kone before it.
	LocalStorage bool `json:"localStorage,omitempty"`
	// NetworkPolicy is true when every node enforces NetworkPolicies; false from a kone before
	// it.
	NetworkPolicy bool `json:"networkPolicy,omitempty"`
	// ClientCA signs the apiserver's client certificate for kubelets; kubelet trusts it.
	ClientCA string `json:"clientCA"`
	// ServerCA is the CA clients trust for the apiserver, with the CA it replaced after a
	// rotate-ca: a joined node takes it from here, over a connection it checked with the
	// one it had. Empty from a kone before it.
	ServerCA string `json:"serverCA,omitempty"`
	// APIServerPort is the port of every apiserver of the cluster: the kubernetes Service has
	// one. Zero from a kone before it.
	APIServerPort int `json:"apiServerPort,omitempty"`
}

// Parsed are the settings in the types the node side uses.
type Parsed struct {
	ClusterCIDR, ServiceCIDR *net.IPNet
	ClusterDNS               net.IP
}

// Parse checks the settings a server sent.
func (s Settings) Parse() (Parsed, error) {
	var p Parsed
	var err error
	if _, p.ClusterCIDR, err = net.ParseCIDR(s.ClusterCIDR); err != nil {
		return p, fmt.Errorf("cluster settings: cluster CIDR: %w", err)
	}
	if _, p.ServiceCIDR, err = net.ParseCIDR(s.ServiceCIDR); err != nil {
		return p, fmt.Errorf("cluster settings: service CIDR: %w", err)
	}
	if p.ClusterDNS = net.ParseIP(s.ClusterDNS); p.ClusterDNS == nil {
		return p, fmt.Errorf("cluster settings: cluster DNS %q is not an IP address", s.ClusterDNS)
	}
	if s.ClusterDomain == "" || s.ClientCA == "" {
		return p, fmt.Errorf("cluster settings are incomplete; is the server running an older kone?")
	}
	return p, nil
}

// PublishSettings writes the settings. Joining and joined nodes may read them, and nothing else
// of kube-system's ConfigMaps (manifests/rbac.yaml).
func PublishSettings(ctx context.Context, cs kubernetes.Interface, s Settings) error {
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: SettingsName, Namespace: metav1.NamespaceSystem},
		Data:       map[string]string{settingsKey: string(data)},
	}
	if err := apply.Ensure(ctx, "ConfigMap", cm, cs.CoreV1().ConfigMaps(metav1.NamespaceSystem)); err != nil {
		return fmt.Errorf("publish cluster settings: %w", err)
	}
	return nil
}

// ReadSettings reads the cluster's settings with a joining or joined node's credentials.
func ReadSettings(ctx context.Context, cs kubernetes.Interface) (Settings, error) {
	var s Settings
	cm, err := cs.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, SettingsName, metav1.GetOptions{})
	if err != nil {
		return s, fmt.Errorf("read cluster settings: %w", describe(err))
	}
	return SettingsOf(cm)
}

// SettingsOf decodes the settings that PublishSettings wrote into cm.
func SettingsOf(cm *corev1.ConfigMap) (Settings, error) {
	var s Settings
	if err := json.Unmarshal([]byte(cm.Data[settingsKey]), &s); err != nil {
		return s, fmt.Errorf("cluster settings from the server are not valid: %w", err)
	}
	return s, nil
}

// describe turns the apiserver's answers to a joining node into advice.
func describe(err error) error {
	switch {
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("the server does not accept the token (it has expired or was deleted; `kone token create` on the server makes a new one): %w", err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("the server refused this node's credentials: %w", err)
	}
	return err
}
