package control

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kone-dev/kone/pkg/args"
	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/pki"
)

func testConfig(overrides ...string) *config.Config {
	_, pods, _ := net.ParseCIDR("10.42.0.0/16")
	_, svcs, _ := net.ParseCIDR("10.43.0.0/16")
	return &config.Config{
		BindAddress: net.IPv4zero, HTTPSPort: 6443, ClusterCIDR: pods, ServiceCIDR: svcs,
		ClusterDomain: "cluster.local", APIServerArgs: overrides, ControllerManagerArgs: overrides, SchedulerArgs: overrides,
	}
}

var files = Files{EtcdURL: "https://127.0.0.1:2379", AuthenticationConfig: "/d/auth.yaml", ControllerManagerKubeconfig: "/d/cm.kubeconfig", SchedulerKubeconfig: "/d/s.kubeconfig", CertDir: "/d/tmp"}

func has(t *testing.T, args []string, want ...string) {
	t.Helper()
	joined := "\n" + strings.Join(args, "\n") + "\n"
	for _, w := range want {
		if !strings.Contains(joined, "\n"+w+"\n") {
			t.Errorf("missing %s", w)
		}
	}
}

func TestAPIServerArgs(t *testing.T) {
	p := pki.Layout("/d/tls")
	args := APIServerArgs(testConfig(), p, files)
	has(t, args,
		"--secure-port=6443", "--bind-address=0.0.0.0",
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--enable-bootstrap-token-auth=true", "--authentication-config=/d/auth.yaml",
		"--service-cluster-ip-range=10.43.0.0/16", "--etcd-servers=https://127.0.0.1:2379",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--client-ca-file=/d/tls/client-ca.crt", "--tls-cert-file=/d/tls/serving-kube-apiserver.crt",
		"--etcd-certfile=/d/tls/etcd/client.crt", "--kubelet-client-certificate=/d/tls/client-kube-apiserver.crt",
		"--kubelet-certificate-authority=/d/tls/kubelet-serving-ca.crt",
	)
	for _, a := range args {
		if strings.HasPrefix(a, "--anonymous-auth") || strings.HasPrefix(a, "--advertise-address") {
			t.Errorf("unexpected %s", a)
		}
	}
	c := testConfig("--secure-port=7443", "audit-log-maxage=3")
	files.Advertise = net.ParseIP("192.0.2.7")
	has(t, APIServerArgs(c, p, files), "--secure-port=7443", "--audit-log-maxage=3", "--advertise-address=192.0.2.7")
}

func TestControllerManagerAndSchedulerArgs(t *testing.T) {
	p := pki.Layout("/d/tls")
	has(t, ControllerManagerArgs(testConfig(), p, files),
		"--kubeconfig=/d/cm.kubeconfig", "--cluster-cidr=10.42.0.0/16", "--allocate-node-cidrs=true",
		"--controllers=*,bootstrapsigner,tokencleaner", "--bind-address=127.0.0.1", "--secure-port=10257",
		"--cluster-signing-kubelet-serving-cert-file=/d/tls/kubelet-serving-ca.signer.pem", "--root-ca-file=/d/tls/server-ca.crt",
		"--service-account-private-key-file=/d/tls/service.key", "--leader-elect=false")
	// kubelets' serving certificates come from a CA of their own, which no client trusts, and
	// nothing signs with the CA that clients trust for the apiserver.
	for _, a := range ControllerManagerArgs(testConfig(), p, files) {
		if strings.HasPrefix(a, "--cluster-signing-") && strings.Contains(a, "server-ca") {
			t.Errorf("the controller-manager signs with the apiserver's CA: %s", a)
		}
	}
	has(t, SchedulerArgs(testConfig(), files), "--kubeconfig=/d/s.kubeconfig", "--secure-port=10259", "--bind-address=127.0.0.1")
	has(t, SchedulerArgs(testConfig("secure-port=20259"), files), "--secure-port=20259")
	if got := args.Value(SchedulerArgs(testConfig("secure-port=20259"), files), "secure-port"); got != "20259" {
		t.Errorf("args.Value = %q", got)
	}
}

// The built arguments must be accepted by the components' own flag sets, and a user's typo
// must be refused before anything starts.
func TestUpstreamFlagSetsAcceptArgs(t *testing.T) {
	p := pki.Layout("/d/tls")
	if _, err := NewAPIServer(APIServerArgs(testConfig(), p, files), "", nil); err != nil {
		t.Errorf("kube-apiserver: %v", err)
	}
	if _, err := NewControllerManager(ControllerManagerArgs(testConfig(), p, files)); err != nil {
		t.Errorf("kube-controller-manager: %v", err)
	}
	if _, err := NewScheduler(SchedulerArgs(testConfig(), files)); err != nil {
		t.Errorf("kube-scheduler: %v", err)
	}
	_, err := NewAPIServer(APIServerArgs(testConfig("no-such-flag=1"), p, files), "", nil)
	if err == nil || !strings.Contains(err.Error(), "no-such-flag") || !strings.Contains(err.Error(), "--kube-apiserver-arg") {
		t.Errorf("typo: %v", err)
	}
	if _, err := NewScheduler(SchedulerArgs(testConfig("secure-port=many"), files)); err == nil {
		t.Error("a bad value was accepted")
	}
}

// A user's overrides add to what kone's security rests on, or are refused with the reason;
// they never weaken it silently.
func TestOverridesCannotWeaken(t *testing.T) {
	p := pki.Layout("/d/tls")
	a := APIServerArgs(testConfig("enable-admission-plugins=AlwaysPullImages,NodeRestriction", "--authorization-mode=Webhook"), p, files)
	has(t, a, "--enable-admission-plugins=NodeRestriction,AlwaysPullImages", "--authorization-mode=Node,RBAC,Webhook")
	for _, c := range []struct{ arg, want string }{
		{"disable-admission-plugins=NodeRestriction", "kone does not run without NodeRestriction"},
		{"authorization-mode=AlwaysAllow", "AlwaysAllow would let every user do anything"},
	} {
		if _, err := NewAPIServer(APIServerArgs(testConfig(c.arg), p, files), "", nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.arg, err, c.want)
		}
	}

	// The user's authentication configuration is merged into kone's file; the flag keeps
	// naming kone's file, and the user's is only read.
	dir := t.TempDir()
	user := filepath.Join(dir, "auth.yaml")
	jwt := `apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://issuer.example.com
    audiences: [kone]
  claimMappings:
    username:
      claim: sub
      prefix: "oidc:"
`
	if err := os.WriteFile(user, []byte(jwt), 0o644); err != nil {
		t.Fatal(err)
	}
	c := testConfig("authentication-config=" + user)
	a = APIServerArgs(c, p, files)
	has(t, a, "--authentication-config=/d/auth.yaml")
	if got := UserAuthenticationConfig(c); got != user {
		t.Fatalf("UserAuthenticationConfig = %q", got)
	}
	f := files
	f.AuthenticationConfig = filepath.Join(dir, "kone-auth.yaml")
	apiserver, err := NewAPIServer(APIServerArgs(c, p, f), user, nil)
	if err != nil {
		t.Fatal(err)
	}
	merged := string(apiserver.auth)
	for _, want := range []string{"https://issuer.example.com", "/api/v1/namespaces/kube-public/configmaps/cluster-info", "enabled: true"} {
		if !strings.Contains(merged, want) {
			t.Errorf("merged authentication configuration lacks %q:\n%s", want, merged)
		}
	}
	if data, _ := os.ReadFile(user); string(data) != jwt {
		t.Error("kone changed the user's authentication configuration file")
	}
	for content, want := range map[string]string{
		jwt + "anonymous:\n  enabled: true\n":                                              "sets anonymous, which kone sets itself",
		"apiVersion: apiserver.config.k8s.io/v1beta1\nkind: AuthenticationConfiguration\n": "kone merges an AuthenticationConfiguration of apiserver.config.k8s.io/v1",
		jwt + "bogus: 1\n": "unknown field",
	} {
		if err := os.WriteFile(user, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := NewAPIServer(APIServerArgs(c, p, f), user, nil); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "authentication-config") {
			t.Errorf("user file %q: %v, want an error saying %q", content, err, want)
		}
	}
	if _, err := NewAPIServer(APIServerArgs(c, p, f), filepath.Join(dir, "missing.yaml"), nil); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("a missing user file: %v", err)
	}
}

// Every port serves TLS 1.2 or newer with strong suites; --profile=cis adds Pod Security,
// the event rate limit, the audit log with a size cap, and files the apiserver can read.
func TestProfileCIS(t *testing.T) {
	p := pki.Layout("/d/tls")
	f := files
	f.AdmissionConfig, f.AuditPolicy, f.AuditLog = "/d/admission.yaml", "/d/audit-policy.yaml", "/d/logs/audit.log"
	plain := testConfig()
	for name, a := range map[string][]string{
		"kube-apiserver": APIServerArgs(plain, p, f), "kube-controller-manager": ControllerManagerArgs(plain, p, f), "kube-scheduler": SchedulerArgs(plain, f),
	} {
		has(t, a, "--tls-min-version=VersionTLS12")
		if suites := args.Value(a, "tls-cipher-suites"); suites == "" || strings.Contains(suites, "CBC") || strings.Contains(suites, "TLS_RSA_") {
			t.Errorf("%s: cipher suites %q", name, suites)
		}
	}
	if a := APIServerArgs(plain, p, f); args.Value(a, "audit-log-path") != "" || args.Value(a, "admission-control-config-file") != "" {
		t.Errorf("audit or admission configuration without the profile: %v", a)
	}
	if files, err := ProfileFiles(plain, f); err != nil || files != nil {
		t.Errorf("profile files without the profile: %v %v", files, err)
	}

	cis := testConfig()
	cis.Node.Profile = config.ProfileCIS
	cis.PodSecurityExempt = []string{"kube-system", "edge-tools"}
	a := APIServerArgs(cis, p, f)
	has(t, a, "--enable-admission-plugins=NodeRestriction,PodSecurity,EventRateLimit", "--admission-control-config-file=/d/admission.yaml",
		"--audit-policy-file=/d/audit-policy.yaml", "--audit-log-path=/d/logs/audit.log", "--audit-log-maxsize=10", "--audit-log-maxbackup=3",
		"--service-account-extend-token-expiration=false")
	written, err := ProfileFiles(cis, f)
	if err != nil {
		t.Fatal(err)
	}
	admission := string(written[f.AdmissionConfig])
	for _, want := range []string{"enforce: restricted", "- kube-system", "- edge-tools", "EventRateLimit"} {
		if !strings.Contains(admission, want) {
			t.Errorf("admission configuration lacks %q:\n%s", want, admission)
		}
	}
	dir := t.TempDir()
	for path, data := range written {
		real := filepath.Join(dir, filepath.Base(path))
		if err := os.WriteFile(real, data, 0o600); err != nil {
			t.Fatal(err)
		}
		a = append(a, "--"+map[string]string{f.AdmissionConfig: "admission-control-config-file", f.AuditPolicy: "audit-policy-file"}[path]+"="+real)
	}
	// The apiserver's own flag set takes all of it.
	if _, err := NewAPIServer(a, "", nil); err != nil {
		t.Errorf("kube-apiserver with --profile=cis: %v", err)
	}
}
