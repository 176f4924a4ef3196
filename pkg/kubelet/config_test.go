package kubelet

import (
	"net"
	"os"
	"slices"
	"strings"
	"testing"

	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"sigs.k8s.io/yaml"
)

func testConfig() Config {
	return Config{
		NodeName: "edge-1", NodeIP: net.ParseIP("192.168.1.10"), Labels: []string{"zone=a", "tier=edge"},
		Taints: []string{"dedicated=edge:NoSchedule"}, Kubeconfig: "/k/kubelet.kubeconfig", ClientCAFile: "/k/client-ca.crt",
		ServingCert: "/k/serving.crt", ServingKey: "/k/serving.key", CertDir: "/k/pki", RuntimeSocket: "/run/kone/containerd/containerd.sock",
		CgroupDriver: "cgroupfs", CgroupV1: true, ClusterDNS: net.ParseIP("10.43.0.10"), ClusterDomain: "cluster.local",
		ResolvConf: "/etc/resolv.conf", ConfigFile: "/k/kubelet.yaml", Args: []string{"max-pods=50", "--v=2"},
	}
}

func TestConfiguration(t *testing.T) {
	data, err := Configuration(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	var kc kubeletv1beta1.KubeletConfiguration
	if err := yaml.UnmarshalStrict(data, &kc); err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if kc.Kind != "KubeletConfiguration" || kc.APIVersion != "kubelet.config.k8s.io/v1beta1" {
		t.Errorf("type: %s %s", kc.APIVersion, kc.Kind)
	}
	if kc.CgroupDriver != "cgroupfs" || kc.FailCgroupV1 == nil || *kc.FailCgroupV1 {
		t.Errorf("cgroups: driver %q failCgroupV1 %v", kc.CgroupDriver, kc.FailCgroupV1)
	}
	if !slices.Equal(kc.ClusterDNS, []string{"10.43.0.10"}) || kc.ClusterDomain != "cluster.local" {
		t.Errorf("DNS: %v %q", kc.ClusterDNS, kc.ClusterDomain)
	}
	if kc.Authentication.X509.ClientCAFile != "/k/client-ca.crt" || !*kc.Authentication.Webhook.Enabled || *kc.Authentication.Anonymous.Enabled {
		t.Errorf("authentication: %+v", kc.Authentication)
	}
	if kc.Authorization.Mode != kubeletv1beta1.KubeletAuthorizationModeWebhook {
		t.Errorf("authorization: %v", kc.Authorization.Mode)
	}
	// A server's kubelet, given its certificates, leaves renewing them to kone.
	if kc.ReadOnlyPort != 0 || kc.RotateCertificates {
		t.Errorf("read-only port %d, client certificate rotation %v", kc.ReadOnlyPort, kc.RotateCertificates)
	}
	if kc.ContainerRuntimeEndpoint != "unix:///run/kone/containerd/containerd.sock" {
		t.Errorf("runtime endpoint %q", kc.ContainerRuntimeEndpoint)
	}
	if len(kc.RegisterWithTaints) != 1 || kc.RegisterWithTaints[0].Key != "dedicated" || kc.RegisterWithTaints[0].Value != "edge" || kc.RegisterWithTaints[0].Effect != "NoSchedule" {
		t.Errorf("taints: %+v", kc.RegisterWithTaints)
	}

	v2 := testConfig()
	v2.CgroupV1 = false
	data, _ = Configuration(v2)
	var kc2 kubeletv1beta1.KubeletConfiguration
	if err := yaml.Unmarshal(data, &kc2); err != nil || kc2.FailCgroupV1 != nil {
		t.Errorf("cgroup v2 host: failCgroupV1 must be left to upstream, got %v", kc2.FailCgroupV1)
	}
	if kc.ServerTLSBootstrap {
		t.Error("kubelet asks for a serving certificate although it was given one")
	}
}

// configured is the kubelet configuration kone writes for c, as kubelet reads it.
func configured(t *testing.T, c Config) kubeletv1beta1.KubeletConfiguration {
	t.Helper()
	data, err := Configuration(c)
	if err != nil {
		t.Fatal(err)
	}
	var kc kubeletv1beta1.KubeletConfiguration
	if err := yaml.UnmarshalStrict(data, &kc); err != nil {
		t.Fatal(err)
	}
	return kc
}

// An agent's kubelet asks the cluster for its serving certificate.
func TestJoiningKubelet(t *testing.T) {
	c := testConfig()
	c.ServingCert, c.ServingKey = "", ""
	kc := configured(t, c)
	if !kc.ServerTLSBootstrap || kc.TLSCertFile != "" || !kc.RotateCertificates {
		t.Errorf("serving certificate: bootstrap %v, file %q; client certificate rotation %v", kc.ServerTLSBootstrap, kc.TLSCertFile, kc.RotateCertificates)
	}
}

func TestFlags(t *testing.T) {
	got := Flags(testConfig())
	want := []string{"--config=/k/kubelet.yaml", "--kubeconfig=/k/kubelet.kubeconfig", "--cert-dir=/k/pki",
		"--hostname-override=edge-1", "--cloud-provider=external", "--node-ip=192.168.1.10", "--node-labels=zone=a,tier=edge", "--max-pods=50", "--v=2"}
	if !slices.Equal(got, want) {
		t.Errorf("flags\n got %v\nwant %v", got, want)
	}
}

func TestParsedAsKubeletWould(t *testing.T) {
	c := testConfig()
	c.ConfigFile = t.TempDir() + "/kubelet.yaml"
	data, err := Configuration(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.ConfigFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := load(t.Context(), c.ConfigFile, Flags(c))
	if err != nil {
		t.Fatal(err)
	}
	if s.MaxPods != 50 || s.HostnameOverride != "edge-1" || s.NodeIP != "192.168.1.10" || s.CgroupDriver != "cgroupfs" {
		t.Errorf("loaded: maxPods %d hostname %q nodeIP %q driver %q", s.MaxPods, s.HostnameOverride, s.NodeIP, s.CgroupDriver)
	}
	c.Args = []string{"no-such-flag=1"}
	if _, err := load(t.Context(), c.ConfigFile, Flags(c)); err == nil || !strings.Contains(err.Error(), "--kubelet-arg") {
		t.Errorf("an unknown kubelet flag: %v", err)
	}
}

func TestOnlyLoopback(t *testing.T) {
	for conf, want := range map[string]bool{
		"nameserver 127.0.0.53\noptions edns0\n":        true,
		"nameserver 127.0.0.53\nnameserver 192.0.2.1\n": false,
		"nameserver 10.0.0.2\n":                         false,
		"search lan\n":                                  false,
	} {
		if got := onlyLoopback(conf); got != want {
			t.Errorf("onlyLoopback(%q) = %v", conf, got)
		}
	}
}

// kubelet serves TLS 1.2 or newer with strong suites, and protects the kernel's settings only
// when asked (--profile=cis).
func TestKubeletTLSAndKernelDefaults(t *testing.T) {
	c := testConfig()
	for _, protect := range []bool{false, true} {
		c.ProtectKernelDefaults = protect
		kc := configured(t, c)
		if kc.ProtectKernelDefaults != protect || kc.TLSMinVersion != "VersionTLS12" || len(kc.TLSCipherSuites) == 0 {
			t.Errorf("protect %v: protectKernelDefaults %v, TLS %s %v", protect, kc.ProtectKernelDefaults, kc.TLSMinVersion, kc.TLSCipherSuites)
		}
	}
}
