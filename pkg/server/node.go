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

// The leaf certificates of a server's own node, in node.Paths.TLSDir(): nodeCredentials issues
// them and `kone certificate rotate` sets them aside.
const (
	kubeletClientLeaf  = "client-kubelet"
	kubeletServingLeaf = "serving-kubelet"
	proxyClientLeaf    = "client-kube-proxy"
	dnsClientLeaf      = "client-coredns"
	flannelClientLeaf  = "client-flannel"
)

func nodeLeaf(paths node.Paths, name string) pki.File {
	dir := paths.TLSDir()
	return pki.File{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
}

// nodeCredentials issues the server's own node its certificates from the cluster's CAs, which a
// server holds, renews them, rotates those in rotate, and writes the kubeconfigs of its
// kubelet, kube-proxy, CoreDNS and flannel. It returns the certificates it issued too. An agent
// gets the same by joining instead.
func nodeCredentials(ca *pki.Cluster, paths node.Paths, id node.Identity, apiserver string, now time.Time, rotate ...pki.File) (node.Credentials, []string, error) {
	clientCA, err := pki.EnsureCA(ca.Dir, "client-ca", now)
	if err != nil {
		return node.Credentials{}, nil, err
	}
	servingCA, err := pki.EnsureCA(ca.Dir, "kubelet-serving-ca", now)
	if err != nil {
		return node.Credentials{}, nil, err
	}
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
		{nodeLeaf(paths, kubeletClientLeaf), filepath.Join(paths.Agent, "kubelet.kubeconfig"),
			pki.LeafSpec{CommonName: "system:node:" + id.Name, Organization: []string{"system:nodes"}, Usages: client}},
		{nodeLeaf(paths, proxyClientLeaf), filepath.Join(paths.Agent, "kube-proxy.kubeconfig"),
			component(join.ProxyUser)},
		{nodeLeaf(paths, dnsClientLeaf), filepath.Join(paths.Agent, "coredns.kubeconfig"),
			component(join.DNSGroup)},
		{nodeLeaf(paths, flannelClientLeaf), filepath.Join(paths.Agent, "flannel.kubeconfig"),
			component(join.FlannelGroup)},
	}
	for _, c := range clients {
		done, err := pki.EnsureOrRotate(clientCA, c.file, c.spec, now, rotate)
		if err != nil {
			return node.Credentials{}, nil, err
		}
		if done {
			issued = append(issued, c.file.Cert)
		}
		if err := (pki.Kubeconfig{Server: apiserver, CAFile: ca.ServerCA, Client: c.file}).Write(c.kubeconfig, 0o600); err != nil {
			return node.Credentials{}, nil, err
		}
	}
	serving := nodeLeaf(paths, kubeletServingLeaf)
	names := []string{id.Name, "localhost"}
	if host, err := os.Hostname(); err == nil && host != id.Name {
		names = append(names, host)
	}
	spec := pki.LeafSpec{CommonName: id.Name, DNSNames: names, IPs: []net.IP{id.IP, net.IPv4(127, 0, 0, 1)},
		Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	done, err := pki.EnsureOrRotate(servingCA, serving, spec, now, rotate)
	if err != nil {
		return node.Credentials{}, nil, fmt.Errorf("kubelet serving certificate: %w", err)
	}
	if done {
		issued = append(issued, serving.Cert)
	}
	return node.Credentials{
		Kubelet: clients[0].kubeconfig, Proxy: clients[1].kubeconfig, DNS: clients[2].kubeconfig, Flannel: clients[3].kubeconfig,
		ClientCA: ca.ClientCA, ServingCert: serving.Cert, ServingKey: serving.Key,
	}, issued, nil
}
