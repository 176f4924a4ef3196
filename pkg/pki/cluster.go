package pki

import (
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"time"
)

// Names are the host names and addresses the apiserver's serving certificate must carry,
// besides the in-cluster names that Ensure always adds.
type Names struct {
	DNSNames []string
	IPs      []net.IP
}

// Cluster is the on-disk layout of a server's PKI.
type Cluster struct {
	Dir string

	ServerCA, ClientCA, RequestHeaderCA, EtcdServerCA, EtcdPeerCA string // CA certificates
	ClientCAKey                                                   string // for the CSR signer
	// KubeletServingCA signs kubelets' serving certificates, and only those: the apiserver
	// checks kubelets against it, and no client of the apiserver trusts it, so that no
	// certificate a node can obtain passes for a server.
	KubeletServingCA, KubeletServingCAKey string
	// The client and kubelet serving CAs' certificates alone, without what a rotate-ca keeps
	// in their files: the controller-manager signs with them and takes a file of one
	// certificate only. Renew writes them.
	ClientCASigner, KubeletServingCASigner string

	ServiceAccountKey string

	APIServerServing  File
	Admin             File
	ControllerManager File
	Scheduler         File
	APIServerKubelet  File // kube-apiserver's client certificate for kubelets
	APIServerEtcd     File // kube-apiserver's client certificate for etcd
	AuthProxy         File // the front proxy's client certificate (request-header CA)
	EtcdServing       File
	EtcdPeer          File
	// The metrics API's serving certificate, for the name the apiserver's aggregator checks
	// (MetricsServiceName), and its identity towards the apiserver and kubelets.
	MetricsServing File
	MetricsClient  File
}

// MetricsServiceName is the name the aggregator expects the metrics API to serve as: that of
// its Service, kube-system/metrics-server.
const MetricsServiceName = "metrics-server.kube-system.svc"

// Layout names every file of a server's PKI under dir, without touching the disk.
func Layout(dir string) *Cluster {
	leaf := func(name string) File {
		return File{filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")}
	}
	etcd := filepath.Join(dir, "etcd")
	return &Cluster{
		Dir:                 dir,
		ServerCA:            filepath.Join(dir, "server-ca.crt"),
		ClientCA:            filepath.Join(dir, "client-ca.crt"),
		ClientCAKey:         filepath.Join(dir, "client-ca.key"),
		KubeletServingCA:    filepath.Join(dir, "kubelet-serving-ca.crt"),
		KubeletServingCAKey: filepath.Join(dir, "kubelet-serving-ca.key"),
		// Not .crt: `kone certificate check` lists each CA once, from its own file.
		ClientCASigner:         filepath.Join(dir, "client-ca.signer.pem"),
		KubeletServingCASigner: filepath.Join(dir, "kubelet-serving-ca.signer.pem"),
		RequestHeaderCA:        filepath.Join(dir, "request-header-ca.crt"),
		EtcdServerCA:           filepath.Join(etcd, "server-ca.crt"),
		EtcdPeerCA:             filepath.Join(etcd, "peer-ca.crt"),
		ServiceAccountKey:      filepath.Join(dir, "service.key"),
		APIServerServing:       leaf("serving-kube-apiserver"),
		Admin:                  leaf("client-admin"),
		ControllerManager:      leaf("client-controller-manager"),
		Scheduler:              leaf("client-scheduler"),
		APIServerKubelet:       leaf("client-kube-apiserver"),
		APIServerEtcd:          File{filepath.Join(etcd, "client.crt"), filepath.Join(etcd, "client.key")},
		AuthProxy:              leaf("client-auth-proxy"),
		EtcdServing:            File{filepath.Join(etcd, "server.crt"), filepath.Join(etcd, "server.key")},
		EtcdPeer:               File{filepath.Join(etcd, "peer.crt"), filepath.Join(etcd, "peer.key")},
		MetricsServing:         leaf("serving-metrics-server"),
		MetricsClient:          leaf("client-metrics-server"),
	}
}

// InClusterNames are the names every apiserver serving certificate carries.
func InClusterNames(clusterDomain string) []string {
	return []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + clusterDomain}
}

// EnsureAuthorities creates the CAs and the service-account key that do not exist yet: at a
// server's first start, or one whose data dir lost them. Only kone's start does: a CA made
// while the cluster runs would make it refuse every client and node it has.
func (c *Cluster) EnsureAuthorities(now time.Time) error {
	// A rotate-ca killed while it put its CAs in place: finished, never half of them.
	if c.RotationStaged() {
		if err := c.FinishRotation(); err != nil {
			return err
		}
	}
	for _, name := range caNames() {
		if _, err := EnsureCA(c.Dir, name, now); err != nil {
			return fmt.Errorf("certificate authority %s: %w", name, err)
		}
	}
	if err := EnsureKey(c.ServiceAccountKey); err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	return nil
}

// Renew issues every leaf of the layout that is missing, ends within RenewBefore or lacks a
// name, and those in rotate anew with new keys, from the CAs, which must exist. apiserver are
// the serving certificate's names (InClusterNames, host names, node IPs, the first service IP,
// --tls-san); etcd and peer are those of etcd's serving and peer certificates. It returns the
// leaves it issued.
func (c *Cluster) Renew(apiserver, etcd, peer Names, now time.Time, rotate ...File) ([]string, error) {
	cas := map[string]*CA{}
	for _, name := range caNames() {
		ca, err := LoadCA(c.Dir, name)
		if err != nil {
			return nil, err
		}
		cas[name] = ca
	}
	for path, name := range map[string]string{c.ClientCASigner: "client-ca", c.KubeletServingCASigner: "kubelet-serving-ca"} {
		if err := WriteIfChanged(path, EncodeCert(cas[name].Cert), 0o644); err != nil {
			return nil, err
		}
	}
	server := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	leaves := []struct {
		ca   string
		file File
		spec LeafSpec
	}{
		{"server-ca", c.APIServerServing, LeafSpec{CommonName: "kube-apiserver", DNSNames: apiserver.DNSNames, IPs: apiserver.IPs, Usages: server}},
		{"client-ca", c.Admin, LeafSpec{CommonName: "system:admin", Organization: []string{"system:masters"}, Usages: client}},
		{"client-ca", c.ControllerManager, LeafSpec{CommonName: "system:kube-controller-manager", Usages: client}},
		{"client-ca", c.Scheduler, LeafSpec{CommonName: "system:kube-scheduler", Usages: client}},
		{"client-ca", c.APIServerKubelet, LeafSpec{CommonName: "system:kube-apiserver-kubelet-client", Usages: client}},
		{"request-header-ca", c.AuthProxy, LeafSpec{CommonName: "system:auth-proxy", Usages: client}},
		{"etcd/server-ca", c.APIServerEtcd, LeafSpec{CommonName: "kube-apiserver-etcd-client", Usages: client}},
		{"etcd/server-ca", c.EtcdServing, LeafSpec{CommonName: "etcd-server", DNSNames: etcd.DNSNames, IPs: etcd.IPs, Usages: both}},
		{"etcd/peer-ca", c.EtcdPeer, LeafSpec{CommonName: "etcd-peer", DNSNames: peer.DNSNames, IPs: peer.IPs, Usages: both}},
		{"server-ca", c.MetricsServing, LeafSpec{CommonName: "metrics-server", DNSNames: []string{MetricsServiceName}, Usages: server}},
		{"client-ca", c.MetricsClient, LeafSpec{CommonName: "system:kone:metrics-server", Usages: client}},
	}
	var issued []string
	for _, l := range leaves {
		done, err := EnsureOrRotate(cas[l.ca], l.file, l.spec, now, rotate)
		if err != nil {
			return nil, err
		}
		if done {
			issued = append(issued, l.file.Cert)
		}
	}
	return issued, nil
}

// caNames are the cluster's CAs, by their file name under the PKI directory.
func caNames() []string {
	return []string{"server-ca", "client-ca", "kubelet-serving-ca", "request-header-ca", "etcd/server-ca", "etcd/peer-ca"}
}

// Shared are the files every server of a cluster holds alike, by a name without slashes: the
// CAs with their keys and the service-account key. Each server issues its own leaf
// certificates from them.
func (c *Cluster) Shared() map[string]string {
	files := map[string]string{"service.key": c.ServiceAccountKey}
	for _, name := range caNames() {
		files[flat(name)+".crt"] = filepath.Join(c.Dir, name+".crt")
		files[flat(name)+".key"] = filepath.Join(c.Dir, name+".key")
	}
	return files
}

// EnsureOrRotate rotates f when it is among rotate, and ensures it otherwise; it reports whether
// it issued a certificate.
func EnsureOrRotate(ca *CA, f File, spec LeafSpec, now time.Time, rotate []File) (bool, error) {
	if slices.Contains(rotate, f) {
		return true, ca.RotateLeaf(f, spec, now)
	}
	return ca.EnsureLeaf(f, spec, now)
}
