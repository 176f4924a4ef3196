package join

import (
	"context"
	"crypto/x509/pkix"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate"
	"k8s.io/client-go/util/certificate/csr"
	"k8s.io/client-go/util/keyutil"

	"github.com/kone-dev/kone/pkg/pki"
)

// The components of a node besides kubelet, each with an identity of its own. kube-proxy's is
// the user upstream's default RBAC binds to system:node-proxier; it only reads. flannel, CoreDNS
// and local-path storage write, each only its own node's objects: their group holds the rights,
// their user name names the node, and an admission policy the server keeps holds each to that
// node.
const (
	ProxyUser    = "system:kube-proxy"
	DNSGroup     = "system:kone:coredns"
	FlannelGroup = "system:kone:flannel"
	StorageGroup = "system:kone:local-path"
)

// components are the identities a node may ask for besides kubelet's.
var components = []string{ProxyUser, DNSGroup, FlannelGroup, StorageGroup}

// Subject is the certificate subject of component (one of the constants above) on node nodeName.
func Subject(component, nodeName string) pkix.Name {
	if component == ProxyUser {
		return pkix.Name{CommonName: ProxyUser}
	}
	return pkix.Name{CommonName: component + ":" + nodeName, Organization: []string{component}}
}

// NodeNameAnnotation names the node a request of a node component's certificate is for.
const NodeNameAnnotation = "kone.dev/node-name"

// KubeletSubject is the subject of node nodeName's kubelet client certificate.
func KubeletSubject(nodeName string) pkix.Name {
	return pkix.Name{CommonName: nodeUserPrefix + nodeName, Organization: []string{nodesGroup}}
}

// ClientCertificate asks the cluster, through the CSR API, for the client certificate of a
// node's component and writes it and its new key to f.
func ClientCertificate(ctx context.Context, cs kubernetes.Interface, f pki.File, component, nodeName string, secret NodeSecret) error {
	cert, key, err := requestCertificate(ctx, cs, certificatesv1.KubeAPIServerClientSignerName, Subject(component, nodeName), nodeName, secret)
	if err != nil {
		return err
	}
	return pki.WritePair(f, cert, key)
}

// KubeletCertificate asks the cluster for the first client certificate of node nodeName's
// kubelet and stores it in certDir the way kubelet's own TLS bootstrap would, so that kubelet
// renews it from there. kone asks for it, not kubelet, because kubelet's request cannot carry
// the node's proof. It returns the file holding the certificate and its key.
func KubeletCertificate(ctx context.Context, cs kubernetes.Interface, certDir, nodeName string, secret NodeSecret) (string, error) {
	cert, key, err := requestCertificate(ctx, cs, certificatesv1.KubeAPIServerClientKubeletSignerName, KubeletSubject(nodeName), nodeName, secret)
	if err != nil {
		return "", err
	}
	store, err := certificate.NewFileStore("kubelet-client", certDir, certDir, "", "")
	if err != nil {
		return "", fmt.Errorf("kubelet's certificate store: %w", err)
	}
	if _, err := store.Update(cert, key); err != nil {
		return "", fmt.Errorf("kubelet's certificate store: %w", err)
	}
	return store.CurrentPath(), nil
}

// requestCertificate makes a new key and asks signer for a certificate of it for subject,
// with the node's proof, and waits for it.
func requestCertificate(ctx context.Context, cs kubernetes.Interface, signer string, subject pkix.Name, nodeName string, secret NodeSecret) (cert, keyPEM []byte, err error) {
	keyPEM, err = keyutil.MakeEllipticPrivateKeyPEM()
	if err != nil {
		return nil, nil, err
	}
	key, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, err
	}
	user := subject.CommonName
	request, err := certutil.MakeCSR(key, &subject, nil, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate request for %s: %w", user, err)
	}
	obj := &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "kone-" + strings.ReplaceAll(strings.TrimPrefix(subject.CommonName, "system:"), ":", "-") + "-",
			Annotations:  map[string]string{NodeNameAnnotation: nodeName, ProofAnnotation: secret.Prove(signer, nodeName, request)},
		},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    request,
			SignerName: signer,
			Usages:     []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
		},
	}
	created, err := cs.CertificatesV1().CertificateSigningRequests().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("request a certificate for %s: %w", user, describe(err))
	}
	wait, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cert, err = csr.WaitForCertificate(wait, cs, created.Name, created.UID)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate for %s: %w", user, err)
	}
	return cert, keyPEM, nil
}

// Valid reports whether the certificate in f exists, is issued to subject, and stays valid past
// renewBefore from now, after finishing or undoing a write of f that a crash interrupted.
func Valid(f pki.File, subject pkix.Name, now time.Time, renewBefore time.Duration) bool {
	if pki.RecoverPair(f) != nil {
		return false
	}
	data, err := os.ReadFile(f.Cert)
	if err != nil {
		return false
	}
	certs, err := certutil.ParseCertsPEM(data)
	if err != nil || len(certs) == 0 {
		return false
	}
	c := certs[0]
	return c.Subject.CommonName == subject.CommonName && slices.Equal(c.Subject.Organization, subject.Organization) &&
		now.Add(renewBefore).Before(c.NotAfter) && !now.Before(c.NotBefore)
}
