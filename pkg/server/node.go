package server

import (
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
)

// The leaf certificates of a server's own node, in node.Paths.TLSDir(): issueNodeCertificates
// issues them and `kone certificate rotate` names them.
const (
	kubeletClientLeaf  = "client-kubelet"
	kubeletServingLeaf = "serving-kubelet"
	proxyClientLeaf    = "client-kube-proxy"
	dnsClientLeaf      = "client-coredns"
	flannelClientLeaf  = "client-flannel"
	storageClientLeaf  = "client-local-path"
)

func nodeLeaf(paths node.Paths, name string) pki.File {
	dir := paths.TLSDir()
	return pki.File{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
}

// nodeCredentials are where the server's own node finds the kubeconfigs of its kubelet,
// kube-proxy, CoreDNS and flannel and the kubelet's certificates, which issueNodeCertificates
// writes. An agent gets the same by joining instead.
func nodeCredentials(ca *pki.Cluster, paths node.Paths) node.Credentials {
	serving := nodeLeaf(paths, kubeletServingLeaf)
	return node.Credentials{
		Kubelet: filepath.Join(paths.Agent, "kubelet.kubeconfig"), Proxy: filepath.Join(paths.Agent, "kube-proxy.kubeconfig"),
		DNS: filepath.Join(paths.Agent, "coredns.kubeconfig"), Flannel: filepath.Join(paths.Agent, "flannel.kubeconfig"),
		Storage:  filepath.Join(paths.Agent, "local-path.kubeconfig"),
		ClientCA: ca.ClientCA, ServingCert: serving.Cert, ServingKey: serving.Key,
	}
}

// issueNodeCertificates issues the server's own node its certificates from the cluster's CAs,
// which a server holds, renews them, rotates those in rotate, and writes the node's
// kubeconfigs. It returns the certificates it issued.
func issueNodeCertificates(ca *pki.Cluster, paths node.Paths, id node.Identity, apiserver string, now time.Time, rotate ...pki.File) ([]string, error) {
	clientCA, err := pki.LoadCA(ca.Dir, "client-ca")
	if err != nil {
		return nil, err
	}
	servingCA, err := pki.LoadCA(ca.Dir, "kubelet-serving-ca")
	if err != nil {
		return nil, err
	}
	creds := nodeCredentials(ca, paths)
	var issued []string
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	// A component's certificate has the subject an agent's would have.
	component := func(name string) pki.LeafSpec {
		s := join.Subject(name, id.Name)
		return pki.LeafSpec{CommonName: s.CommonName, Organization: s.Organization, Usages: client}
	}
	clients := []struct {
		file       pki.File
		kubeconfig string
		spec       pki.LeafSpec
	}{
		{nodeLeaf(paths, kubeletClientLeaf), creds.Kubelet,
			pki.LeafSpec{CommonName: "system:node:" + id.Name, Organization: []string{"system:nodes"}, Usages: client}},
		{nodeLeaf(paths, proxyClientLeaf), creds.Proxy, component(join.ProxyUser)},
		{nodeLeaf(paths, dnsClientLeaf), creds.DNS, component(join.DNSGroup)},
		{nodeLeaf(paths, flannelClientLeaf), creds.Flannel, component(join.FlannelGroup)},
		{nodeLeaf(paths, storageClientLeaf), creds.Storage, component(join.StorageGroup)},
	}
	for _, c := range clients {
		done, err := pki.EnsureOrRotate(clientCA, c.file, c.spec, now, rotate)
		if err != nil {
			return issued, err
		}
		if done {
			issued = append(issued, c.file.Cert)
		}
		if err := (pki.Kubeconfig{Server: apiserver, CAFile: ca.ServerCA, Client: c.file}).Write(c.kubeconfig, 0o600); err != nil {
			return issued, err
		}
	}
	names := []string{id.Name, "localhost"}
	if host, err := os.Hostname(); err == nil && host != id.Name {
		names = append(names, host)
	}
	spec := pki.LeafSpec{CommonName: id.Name, DNSNames: names, IPs: []net.IP{id.IP, net.IPv4(127, 0, 0, 1)},
		Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	serving := nodeLeaf(paths, kubeletServingLeaf)
	done, err := pki.EnsureOrRotate(servingCA, serving, spec, now, rotate)
	if err != nil {
		return issued, fmt.Errorf("kubelet serving certificate: %w", err)
	}
	if done {
		issued = append(issued, serving.Cert)
	}
	return issued, nil
}
