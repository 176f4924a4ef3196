package pki

import (
	"bytes"
	"fmt"
	"os"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Kubeconfig describes a kubeconfig for one client certificate, or for a bearer token.
type Kubeconfig struct {
	Server string
	CAFile string
	Client File
	Token  string // instead of Client
	// Embed copies the certificates into the file, for a kubeconfig that leaves the machine;
	// otherwise it refers to the files, so that renewed certificates take effect without a rewrite.
	Embed bool
}

// Write writes the kubeconfig to path with mode, unless path holds it already: kone writes its
// kubeconfigs at every start and after each renewal, and flash wears with each write.
func (k Kubeconfig) Write(path string, mode os.FileMode) error {
	cluster := &clientcmdapi.Cluster{Server: k.Server, CertificateAuthority: k.CAFile}
	user := &clientcmdapi.AuthInfo{ClientCertificate: k.Client.Cert, ClientKey: k.Client.Key}
	if k.Token != "" {
		user = &clientcmdapi.AuthInfo{Token: k.Token}
	}
	if k.Embed {
		var err error
		if cluster.CertificateAuthorityData, err = os.ReadFile(k.CAFile); err != nil {
			return fmt.Errorf("kubeconfig %s: %w", path, err)
		}
		if user.ClientCertificateData, err = os.ReadFile(k.Client.Cert); err != nil {
			return fmt.Errorf("kubeconfig %s: %w", path, err)
		}
		if user.ClientKeyData, err = os.ReadFile(k.Client.Key); err != nil {
			return fmt.Errorf("kubeconfig %s: %w", path, err)
		}
		cluster.CertificateAuthority, user.ClientCertificate, user.ClientKey = "", "", ""
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["default"] = cluster
	cfg.AuthInfos["default"] = user
	cfg.Contexts["default"] = &clientcmdapi.Context{Cluster: "default", AuthInfo: "default"}
	cfg.CurrentContext = "default"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if info, err := os.Stat(path); err == nil && info.Mode().Perm() == mode.Perm() {
			return nil
		}
	}
	return WriteFile(path, data, mode)
}
