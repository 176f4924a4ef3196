package kubelet

import (
	"fmt"
	"net"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/kone-dev/kone/pkg/pki"
)

// Config is what kone tells kubelet about this node.
type Config struct {
	NodeName string
	NodeIP   net.IP
	Labels   []string // key=value
	Taints   []string // key=value:Effect

	Kubeconfig   string // the node's client credentials, which kubelet renews itself
	ClientCAFile string // CA of the clients kubelet accepts (the apiserver)
	// ServingCert and ServingKey are kubelet's serving certificate; when empty, kubelet asks the
	// cluster for one through the CSR API.
	ServingCert string
	// ProtectKernelDefaults makes kubelet refuse to start on kernel settings other than its own
	// (--profile=cis) rather than change them.
	ProtectKernelDefaults bool
	ServingKey            string
	CertDir               string // where kubelet keeps the client certificates it rotates

	RuntimeSocket string // containerd's CRI socket
	CgroupDriver  string // cgroupfs or systemd
	CgroupV1      bool

	ClusterDNS    net.IP
	ClusterDomain string
	ResolvConf    string // the resolv.conf pods with dnsPolicy Default get

	ConfigFile string   // where kone writes the KubeletConfiguration
	Args       []string // the user's --kubelet-arg, key=value, applied last
}

// HealthzPort is where kubelet answers /healthz on loopback.
const HealthzPort = 10248

// Configuration returns the KubeletConfiguration file kone writes for c.
func Configuration(c Config) ([]byte, error) {
	taints, err := parseTaints(c.Taints)
	if err != nil {
		return nil, err
	}
	kc := kubeletv1beta1.KubeletConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: kubeletv1beta1.SchemeGroupVersion.String(), Kind: "KubeletConfiguration"},
		Authentication: kubeletv1beta1.KubeletAuthentication{
			X509:      kubeletv1beta1.KubeletX509Authentication{ClientCAFile: c.ClientCAFile},
			Webhook:   kubeletv1beta1.KubeletWebhookAuthentication{Enabled: ptr.To(true)},
			Anonymous: kubeletv1beta1.KubeletAnonymousAuthentication{Enabled: ptr.To(false)},
		},
		Authorization:         kubeletv1beta1.KubeletAuthorization{Mode: kubeletv1beta1.KubeletAuthorizationModeWebhook},
		TLSCertFile:           c.ServingCert,
		TLSMinVersion:         "VersionTLS12",
		TLSCipherSuites:       pki.StrongCipherSuites(),
		ProtectKernelDefaults: c.ProtectKernelDefaults,
		TLSPrivateKeyFile:     c.ServingKey,
		// kubelet renews its client certificate itself where it asked for it (an agent). A
		// server issues its own node's and renews it while it runs, and kubelet reloads the file.
		RotateCertificates:       c.ServingCert == "",
		ServerTLSBootstrap:       c.ServingCert == "",
		ReadOnlyPort:             0,
		HealthzBindAddress:       "127.0.0.1",
		HealthzPort:              ptr.To(int32(HealthzPort)),
		ClusterDNS:               []string{c.ClusterDNS.String()},
		ClusterDomain:            c.ClusterDomain,
		ResolverConfig:           ptr.To(c.ResolvConf),
		CgroupDriver:             c.CgroupDriver,
		ContainerRuntimeEndpoint: "unix://" + c.RuntimeSocket,
		// Edge machines often have swap; kubelet refuses to start on them by default.
		FailSwapOn:         ptr.To(false),
		RegisterWithTaints: taints,
	}
	if c.CgroupV1 {
		// Kubernetes 1.35 and later refuse cgroup v1 hosts unless told otherwise; many edge
		// kernels still have only v1.
		kc.FailCgroupV1 = ptr.To(false)
	}
	return yaml.Marshal(kc)
}

// Flags are kubelet's command-line flags for c: what the configuration file cannot say, then
// the user's --kubelet-arg.
func Flags(c Config) []string {
	args := []string{
		"--config=" + c.ConfigFile,
		"--kubeconfig=" + c.Kubeconfig,
		"--cert-dir=" + c.CertDir,
		"--hostname-override=" + c.NodeName,
		// kone's cloud node controller (pkg/cloud) owns the node's addresses, so that it can
		// publish --node-external-ip; kubelet then registers the node tainted until it has.
		"--cloud-provider=external",
	}
	if c.NodeIP != nil {
		args = append(args, "--node-ip="+c.NodeIP.String())
	}
	if len(c.Labels) > 0 {
		args = append(args, "--node-labels="+strings.Join(c.Labels, ","))
	}
	for _, a := range c.Args {
		k, v, _ := strings.Cut(a, "=")
		args = append(args, "--"+strings.TrimLeft(k, "-")+"="+v)
	}
	return args
}

func parseTaints(specs []string) ([]corev1.Taint, error) {
	var taints []corev1.Taint
	for _, s := range specs {
		kv, effect, ok := strings.Cut(s, ":")
		if !ok {
			return nil, fmt.Errorf("--node-taint %q: expected key=value:Effect", s)
		}
		k, v, _ := strings.Cut(kv, "=")
		taints = append(taints, corev1.Taint{Key: k, Value: v, Effect: corev1.TaintEffect(effect)})
	}
	return taints, nil
}

// ResolvConf is the resolv.conf kubelet gives pods that use the host's DNS. Where
// /etc/resolv.conf names only loopback resolvers (systemd-resolved's stub, a local dnsmasq), they
// would be unreachable from a pod's network namespace; systemd-resolved's own list of upstream
// servers is used instead when it exists.
func ResolvConf() string {
	const etc, resolved = "/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"
	data, err := os.ReadFile(etc)
	if err != nil || !onlyLoopback(string(data)) {
		return etc
	}
	if _, err := os.Stat(resolved); err == nil {
		return resolved
	}
	return etc
}

func onlyLoopback(resolvConf string) bool {
	found := false
	for _, line := range strings.Split(resolvConf, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		found = true
		if ip := net.ParseIP(f[1]); ip == nil || !ip.IsLoopback() {
			return false
		}
	}
	return found
}
