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

// nodeCredentials issues the server's own node its certificates from the cluster's CAs, which a
// server holds, and writes the kubeconfigs of its kubelet, kube-proxy and CoreDNS. An agent gets
// the same by joining instead.
func nodeCredentials(ca *pki.Cluster, paths node.Paths, id node.Identity, apiserver string, now time.Time) (node.Credentials, error) {
	clientCA, err := pki.EnsureCA(ca.Dir, "client-ca", now)
	if err != nil {
		return node.Credentials{}, err
	}
	servingCA, err := pki.EnsureCA(ca.Dir, "kubelet-serving-ca", now)
	if err != nil {
		return node.Credentials{}, err
	}
	dir := paths.TLSDir()
	leaf := func(name string) pki.File {
		return pki.File{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
	}
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
		{leaf("client-kubelet"), filepath.Join(paths.Agent, "kubelet.kubeconfig"),
			pki.LeafSpec{CommonName: "system:node:" + id.Name, Organization: []string{"system:nodes"}, Usages: client}},
		{leaf("client-kube-proxy"), filepath.Join(paths.Agent, "kube-proxy.kubeconfig"),
			component(join.ProxyUser)},
		{leaf("client-coredns"), filepath.Join(paths.Agent, "coredns.kubeconfig"),
			component(join.DNSGroup)},
		{leaf("client-flannel"), filepath.Join(paths.Agent, "flannel.kubeconfig"),
			component(join.FlannelGroup)},
	}
	for _, c := range clients {
		if _, err := clientCA.EnsureLeaf(c.file, c.spec, now); err != nil {
			return node.Credentials{}, err
		}
		if err := (pki.Kubeconfig{Server: apiserver, CAFile: ca.ServerCA, Client: c.file}).Write(c.kubeconfig, 0o600); err != nil {
			return node.Credentials{}, err
		}
	}
	serving := leaf("serving-kubelet")
	names := []string{id.Name, "localhost"}
	if host, err := os.Hostname(); err == nil && host != id.Name {
		names = append(names, host)
	}
	spec := pki.LeafSpec{CommonName: id.Name, DNSNames: names, IPs: []net.IP{id.IP, net.IPv4(127, 0, 0, 1)},
		Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if _, err := servingCA.EnsureLeaf(serving, spec, now); err != nil {
		return node.Credentials{}, fmt.Errorf("kubelet serving certificate: %w", err)
	}
	return node.Credentials{
		Kubelet: clients[0].kubeconfig, Proxy: clients[1].kubeconfig, DNS: clients[2].kubeconfig, Flannel: clients[3].kubeconfig,
		ClientCA: ca.ClientCA, ServingCert: serving.Cert, ServingKey: serving.Key,
	}, nil
}
