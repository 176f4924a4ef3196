package control

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/kone-dev/kone/pkg/args"
	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/pki"
)

// Files are the paths the components read besides the PKI, and the server's address.
type Files struct {
	// Advertise is the address the apiserver gives the cluster for itself (the kubernetes
	// Service's endpoint); nil, the apiserver picks the default route's.
	Advertise                   net.IP
	EtcdURL                     string
	AuthenticationConfig        string
	EncryptionConfig            string
	AdmissionConfig             string // written only with --profile=cis
	AuditPolicy, AuditLog       string // likewise
	ControllerManagerKubeconfig string
	SchedulerKubeconfig         string
	MetricsKubeconfig           string // the in-process metrics-server's
	CertDir                     string // where kube-apiserver may keep generated certificates
}

// Local ports of the controller-manager and scheduler health endpoints.
const (
	ControllerManagerPort = "10257"
	SchedulerPort         = "10259"
)

// APIServerArgs are kube-apiserver's flags for the configuration c.
func APIServerArgs(c *config.Config, p *pki.Cluster, f Files) []string {
	issuer := "https://kubernetes.default.svc." + c.ClusterDomain
	a := map[string]string{
		"bind-address":               c.BindAddress.String(),
		"secure-port":                fmt.Sprint(c.HTTPSPort),
		"allow-privileged":           "true",
		"authorization-mode":         "Node,RBAC",
		"enable-admission-plugins":   nodeRestriction,
		"authentication-config":      f.AuthenticationConfig,
		"encryption-provider-config": f.EncryptionConfig,
		// `kone secrets-encrypt rotate-keys` changes the keys while the apiserver serves.
		"encryption-provider-config-automatic-reload": "true",
		"enable-bootstrap-token-auth":                 "true",
		"client-ca-file":                              p.ClientCA,
		"etcd-servers":                                f.EtcdURL,
		"etcd-cafile":                                 p.EtcdServerCA,
		"etcd-certfile":                               p.APIServerEtcd.Cert,
		"etcd-keyfile":                                p.APIServerEtcd.Key,
		// Edge nodes' host names are rarely in DNS; their addresses always reach them.
		"kubelet-preferred-address-types": "InternalIP,ExternalIP,Hostname",
		"kubelet-client-certificate":      p.APIServerKubelet.Cert,
		// Without it the apiserver connects to kubelets without checking who answers.
		"kubelet-certificate-authority":      p.KubeletServingCA,
		"kubelet-client-key":                 p.APIServerKubelet.Key,
		"proxy-client-cert-file":             p.AuthProxy.Cert,
		"proxy-client-key-file":              p.AuthProxy.Key,
		"requestheader-client-ca-file":       p.RequestHeaderCA,
		"requestheader-allowed-names":        "system:auth-proxy",
		"requestheader-extra-headers-prefix": "X-Remote-Extra-",
		"requestheader-group-headers":        "X-Remote-Group",
		"requestheader-username-headers":     "X-Remote-User",
		// Aggregated APIs (kone's metrics-server) are reached at their endpoints' addresses, not
		// through their Service's ClusterIP: a server without a node side has no kube-proxy.
		"enable-aggregator-routing":        "true",
		"service-account-issuer":           issuer,
		"api-audiences":                    issuer,
		"service-account-key-file":         p.ServiceAccountKey,
		"service-account-signing-key-file": p.ServiceAccountKey,
		"service-cluster-ip-range":         c.ServiceCIDR.String(),
		"tls-min-version":                  tlsMinVersion,
		"tls-cipher-suites":                tlsCipherSuites(),
		"tls-cert-file":                    p.APIServerServing.Cert,
		"tls-private-key-file":             p.APIServerServing.Key,
		"cert-dir":                         f.CertDir,
		"profiling":                        "false",
		// Close the HTTP server 2 s after the last ordinary request instead of waiting up to a
		// minute for the open watches of clients that outlive the apiserver in this process
		// (kubelet, kube-proxy and CoreDNS cannot be stopped from outside).
		"shutdown-send-retry-after": "true",
	}
	if f.Advertise != nil {
		a["advertise-address"] = f.Advertise.String()
	}
	if c.Node.Profile == config.ProfileCIS {
		a["enable-admission-plugins"] += ",PodSecurity,EventRateLimit"
		a["admission-control-config-file"] = f.AdmissionConfig
		a["audit-policy-file"] = f.AuditPolicy
		a["audit-log-path"] = f.AuditLog
		// Edge disks are small: at most 4 files of 10 MB, the rotated ones compressed.
		a["audit-log-maxsize"], a["audit-log-maxbackup"], a["audit-log-maxage"], a["audit-log-compress"] = "10", "3", "30", "true"
		a["service-account-extend-token-expiration"] = "false"
	}
	// A user's admission plugins and authorizers are added to kone's, which its security rests
	// on, never put in their place; the user's authentication configuration is merged into
	// kone's own file by the apiserver component (UserAuthenticationConfig).
	var overrides []string
	for _, o := range c.APIServerArgs {
		switch k, v := args.Split(o); k {
		case "enable-admission-plugins", "authorization-mode":
			a[k] = union(a[k], v)
		case "authentication-config":
		default:
			overrides = append(overrides, o)
		}
	}
	return args.Merge(a, overrides)
}

// nodeRestriction is the admission plugin that holds each kubelet to its own node.
const nodeRestriction = "NodeRestriction"

// UserAuthenticationConfig is the authentication configuration file the user gave with
// --kube-apiserver-arg authentication-config, or "".
func UserAuthenticationConfig(c *config.Config) string {
	file, _ := args.Override(c.APIServerArgs, "authentication-config")
	return file
}

// union is the comma-separated list kone, with the user's entries that it lacks added after.
func union(kone, user string) string {
	list := strings.Split(kone, ",")
	for _, u := range strings.Split(user, ",") {
		if u = strings.TrimSpace(u); u != "" && !slices.Contains(list, u) {
			list = append(list, u)
		}
	}
	return strings.Join(list, ",")
}

// ControllerManagerArgs are kube-controller-manager's flags for the configuration c.
func ControllerManagerArgs(c *config.Config, p *pki.Cluster, f Files) []string {
	a := map[string]string{
		"kubeconfig":                       f.ControllerManagerKubeconfig,
		"authentication-kubeconfig":        f.ControllerManagerKubeconfig,
		"authorization-kubeconfig":         f.ControllerManagerKubeconfig,
		"bind-address":                     "127.0.0.1",
		"secure-port":                      ControllerManagerPort,
		"allocate-node-cidrs":              "true",
		"cluster-cidr":                     c.ClusterCIDR.String(),
		"service-cluster-ip-range":         c.ServiceCIDR.String(),
		"root-ca-file":                     p.ServerCA,
		"service-account-private-key-file": p.ServiceAccountKey,
		"use-service-account-credentials":  "true",
		// With its own service account per controller, the controller-manager makes three to four
		// requests per controller (the account, its namespace, a token) through one client before
		// any controller runs; at the default burst of 30 and 20 per second, node-ipam waited ~5 s
		// to hand the first node its pod CIDR. The steady rate stays at the default.
		"kube-api-burst": "300",
		// bootstrapsigner signs kube-public/cluster-info for joining nodes; tokencleaner
		// removes expired join tokens. Both are off upstream by default.
		"controllers": "*,bootstrapsigner,tokencleaner",
		"cluster-signing-kube-apiserver-client-cert-file": p.ClientCASigner,
		"cluster-signing-kube-apiserver-client-key-file":  p.ClientCAKey,
		"cluster-signing-kubelet-client-cert-file":        p.ClientCASigner,
		"cluster-signing-kubelet-client-key-file":         p.ClientCAKey,
		"cluster-signing-kubelet-serving-cert-file":       p.KubeletServingCASigner,
		"cluster-signing-kubelet-serving-key-file":        p.KubeletServingCAKey,
		// No legacy-unknown signer: nothing kone runs needs it, and it would sign with a CA
		// that something trusts.
		// kone elects for it (pkg/leader): upstream would end the whole process on a lost lease.
		"leader-elect":           "false",
		"configure-cloud-routes": "false",
		"profiling":              "false",
		"tls-min-version":        tlsMinVersion,
		"tls-cipher-suites":      tlsCipherSuites(),
	}
	return args.Merge(a, c.ControllerManagerArgs)
}

// SchedulerArgs are kube-scheduler's flags for the configuration c.
func SchedulerArgs(c *config.Config, f Files) []string {
	a := map[string]string{
		"kubeconfig":                f.SchedulerKubeconfig,
		"authentication-kubeconfig": f.SchedulerKubeconfig,
		"authorization-kubeconfig":  f.SchedulerKubeconfig,
		"bind-address":              "127.0.0.1",
		"secure-port":               SchedulerPort,
		"leader-elect":              "false", // as for the controller-manager
		"profiling":                 "false",
		"tls-min-version":           tlsMinVersion,
		"tls-cipher-suites":         tlsCipherSuites(),
	}
	return args.Merge(a, c.SchedulerArgs)
}

// Every port kone serves speaks TLS 1.2 or newer, with strong cipher suites only.
const tlsMinVersion = "VersionTLS12"

func tlsCipherSuites() string { return strings.Join(pki.StrongCipherSuites(), ",") }
