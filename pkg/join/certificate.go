package join

import (
	"context"
	"crypto/sha256"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate/csr"
	"k8s.io/client-go/util/keyutil"

	"github.com/kone-dev/kone/pkg/pki"
)

// The components of a node besides kubelet, each with an identity of its own. kube-proxy's is
// the user upstream's default RBAC binds to system:node-proxier; it only reads. flannel and
// CoreDNS write, each only its own node's objects: their group holds the rights, their user name
// names the node, and an admission policy the server keeps holds each to that node.
const (
	ProxyUser    = "system:kube-proxy"
	DNSGroup     = "system:kone:coredns"
	FlannelGroup = "system:kone:flannel"
)

// components are the identities a node may ask for besides kubelet's.
var components = []string{ProxyUser, DNSGroup, FlannelGroup}

// Subject is the certificate subject of component (one of the constants above) on node nodeName.
func Subject(component, nodeName string) pkix.Name {
	if component == ProxyUser {
		return pkix.Name{CommonName: ProxyUser}
	}
	return pkix.Name{CommonName: component + ":" + nodeName, Organization: []string{component}}
}

// Annotations a node's certificate requests carry, for the approver's node-name claim.
const (
	NodeNameAnnotation = "kone.dev/node-name"
	MachineAnnotation  = "kone.dev/machine"
)

// MachineHash identifies this machine without revealing its machine id: it stays the same
// across a reinstall of kone, and differs between machines. Where the OS has no machine id, a
// random one is kept in fallback.
func MachineHash(fallback string) (string, error) {
	var id []byte
	for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id", fallback} {
		if data, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(data))) > 0 {
			id = []byte(strings.TrimSpace(string(data)))
			break
		}
	}
	if id == nil {
		key, err := keyutil.MakeEllipticPrivateKeyPEM()
		if err != nil {
			return "", err
		}
		sum := sha256.Sum256(key)
		id = []byte(hex.EncodeToString(sum[:16]))
		if err := pki.WriteFile(fallback, id, 0o600); err != nil {
			return "", fmt.Errorf("machine id: %w", err)
		}
	}
	sum := sha256.Sum256(append([]byte("kone machine\x00"), id...))
	return hex.EncodeToString(sum[:]), nil
}

// ClientCertificate asks the cluster, through the CSR API, for the client certificate of a
// node's component and writes it and its new key to f. The request names the node and machine
// it is for.
func ClientCertificate(ctx context.Context, cs kubernetes.Interface, f pki.File, component, nodeName, machine string) error {
	keyPEM, err := keyutil.MakeEllipticPrivateKeyPEM()
	if err != nil {
		return err
	}
	key, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return err
	}
	subject := Subject(component, nodeName)
	user := subject.CommonName
	request, err := certutil.MakeCSR(key, &subject, nil, nil)
	if err != nil {
		return fmt.Errorf("certificate request for %s: %w", user, err)
	}
	obj := &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "kone-" + strings.ReplaceAll(strings.TrimPrefix(component, "system:"), ":", "-") + "-",
			Annotations:  map[string]string{NodeNameAnnotation: nodeName, MachineAnnotation: machine},
		},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    request,
			SignerName: certificatesv1.KubeAPIServerClientSignerName,
			Usages:     []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
		},
	}
	created, err := cs.CertificatesV1().CertificateSigningRequests().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("request a certificate for %s: %w", user, describe(err))
	}
	wait, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cert, err := csr.WaitForCertificate(wait, cs, created.Name, created.UID)
	if err != nil {
		return fmt.Errorf("certificate for %s: %w", user, err)
	}
	if err := pki.WriteFile(f.Key, keyPEM, 0o600); err != nil {
		return err
	}
	return pki.WriteFile(f.Cert, cert, 0o644)
}

// Valid reports whether the certificate in path exists, is issued to subject, and stays valid
// past renewBefore from now.
func Valid(path string, subject pkix.Name, now time.Time, renewBefore time.Duration) bool {
	data, err := os.ReadFile(path)
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
