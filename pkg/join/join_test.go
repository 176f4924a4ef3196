package join

import (
	"context"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	"k8s.io/cluster-bootstrap/token/jws"

	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/token"
)

// clusterInfoServer serves kube-public/cluster-info as a kone server does, signed for the
// tokens in signed (id → secret).
func clusterInfoServer(t *testing.T, signed map[string]string) (*httptest.Server, []byte) {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	info := clientcmdapi.NewConfig()
	info.Clusters[""] = &clientcmdapi.Cluster{Server: srv.URL, CertificateAuthorityData: ca}
	kubeconfig, err := clientcmd.Write(*info)
	if err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: bootstrapapi.ConfigMapClusterInfo, Namespace: metav1.NamespacePublic},
		Data:       map[string]string{bootstrapapi.KubeConfigKey: string(kubeconfig)},
	}
	for id, secret := range signed {
		sig, err := jws.ComputeDetachedSignature(string(kubeconfig), id, secret)
		if err != nil {
			t.Fatal(err)
		}
		cm.Data[bootstrapapi.JWSSignatureKeyPrefix+id] = sig
	}
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/namespaces/kube-public/configmaps/cluster-info" {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "" {
			t.Errorf("discovery sent credentials: %q", r.Header.Get("Authorization"))
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(cm)
	})
	return srv, ca
}

func TestDiscover(t *testing.T) {
	srv, ca := clusterInfoServer(t, map[string]string{"abcdef": "0123456789abcdef"})
	good, err := token.Parse("abcdef.0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	pinned, err := good.WithCA(ca)
	if err != nil {
		t.Fatal(err)
	}
	noWarning := func(err error) { t.Errorf("unexpected warning: %v", err) }
	got, err := Discover(context.Background(), srv.URL, pinned, noWarning)
	if err != nil || string(got) != string(ca) {
		t.Fatalf("pinned token: %v", err)
	}

	warned := false
	if _, err := Discover(context.Background(), srv.URL, good, func(error) { warned = true }); err != nil || !warned {
		t.Errorf("a token without the CA hash: err %v, warned %v", err, warned)
	}

	forged := pinned
	forged.CAHash = strings.Repeat("0", 64)
	wrongSecret := pinned
	wrongSecret.Secret = "fedcba9876543210"
	unknown := pinned
	unknown.ID = "zzzzzz"
	for name, c := range map[string]struct {
		tok  token.Token
		want string
	}{
		"forged CA hash": {forged, "does not match the hash in the token"},
		"wrong secret":   {wrongSecret, "secret is wrong"},
		"unknown token":  {unknown, "knows no valid token with id zzzzzz"},
	} {
		if _, err := discover(context.Background(), srv.URL, c.tok, noWarning, 0); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + l.Addr().String()
	l.Close()
	if _, err := Discover(context.Background(), closed, pinned, noWarning); err == nil || !strings.Contains(err.Error(), "cannot reach the server") {
		t.Errorf("unreachable server: %v", err)
	}
}

func csrFor(t *testing.T, name, signer, user string, groups []string, subject pkix.Name, dns []string, ips []net.IP, usages ...certificatesv1.KeyUsage) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	keyPEM, err := keyutil.MakeEllipticPrivateKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := keyutil.ParsePrivateKeyPEM(keyPEM)
	req, err := certutil.MakeCSR(key, &subject, dns, ips)
	if err != nil {
		t.Fatal(err)
	}
	return &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certificatesv1.CertificateSigningRequestSpec{Request: req, SignerName: signer, Username: user, Groups: groups,
			Usages: usages},
	}
}

func TestApprover(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	a := NewApprover(cs, logrus.New())
	joining := []string{"system:bootstrappers", token.NodeGroup, "system:authenticated"}
	asFor := func(name string, subject pkix.Name, node, machine string) *certificatesv1.CertificateSigningRequest {
		r := csrFor(t, name, certificatesv1.KubeAPIServerClientSignerName, "system:bootstrap:abcdef", joining,
			subject, nil, nil, certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth)
		r.Annotations = map[string]string{NodeNameAnnotation: node, MachineAnnotation: machine}
		return r
	}
	component := func(name, component, node, machine string) *certificatesv1.CertificateSigningRequest {
		return asFor(name, Subject(component, node), node, machine)
	}
	kubeletClient := csrFor(t, "kubelet", certificatesv1.KubeAPIServerClientKubeletSignerName, "system:bootstrap:abcdef", joining,
		pkix.Name{CommonName: "system:node:edge-1", Organization: []string{"system:nodes"}}, nil, nil,
		certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth)
	decide := func(r *certificatesv1.CertificateSigningRequest) verdict {
		t.Helper()
		v, err := a.decide(ctx, r)
		if err != nil && (v.approve || v.deny != "") {
			t.Fatalf("%s: a verdict with an error: %v", r.Name, err)
		}
		return v
	}

	if v := decide(kubeletClient); v.approve || v.deny != "" {
		t.Errorf("kubelet's client certificate before the node claimed its name: %+v", v)
	}
	if v := decide(component("proxy", ProxyUser, "edge-1", "machine-a")); !v.approve {
		t.Errorf("kube-proxy of a new node: %+v", v)
	}
	if v := decide(kubeletClient); !v.approve {
		t.Errorf("kubelet's client certificate of a node that claimed its name: %+v", v)
	}
	if v := decide(asFor("admin", pkix.Name{CommonName: "system:admin"}, "edge-1", "machine-a")); v.deny == "" {
		t.Errorf("a node asking for another identity: %+v", v)
	}
	// flannel's and CoreDNS's identities name their node: never another node's, never without the group.
	for _, subject := range []pkix.Name{Subject(FlannelGroup, "edge-2"), {CommonName: FlannelGroup + ":edge-1"},
		{CommonName: DNSGroup + ":edge-1", Organization: []string{"system:masters"}}, {CommonName: FlannelGroup, Organization: []string{FlannelGroup}}} {
		if v := decide(asFor("other", subject, "edge-1", "machine-a")); v.deny == "" {
			t.Errorf("node edge-1 asking for %+v: %+v", subject, v)
		}
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-1"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.1.10"}, {Type: corev1.NodeHostName, Address: "edge-1"}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if v := decide(component("again", DNSGroup, "edge-1", "machine-a")); !v.approve {
		t.Errorf("the same machine joining again: %+v", v)
	}
	if v := decide(component("thief", FlannelGroup, "edge-1", "machine-b")); v.approve || !strings.Contains(v.deny, "--node-name") {
		t.Errorf("another machine with a taken name: %+v", v)
	}
	serving := func(user string, ips ...net.IP) *certificatesv1.CertificateSigningRequest {
		return csrFor(t, "serving", certificatesv1.KubeletServingSignerName, user, []string{"system:nodes"},
			pkix.Name{CommonName: "system:node:edge-1", Organization: []string{"system:nodes"}}, []string{"edge-1"}, ips,
			certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth)
	}
	if v := decide(serving("system:node:edge-1", net.ParseIP("192.168.1.10"))); !v.approve {
		t.Errorf("kubelet serving certificate for the node's own addresses: %+v", v)
	}
	if v := decide(serving("system:node:edge-1", net.ParseIP("10.9.9.9"))); v.deny == "" {
		t.Errorf("kubelet serving certificate for a foreign address: %+v", v)
	}
	if v := decide(serving("system:node:other", net.ParseIP("192.168.1.10"))); v.deny == "" {
		t.Errorf("a node asking for another node's serving certificate: %+v", v)
	}
	if err := cs.CoreV1().Nodes().Delete(ctx, "edge-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if v := decide(component("successor", ProxyUser, "edge-1", "machine-b")); !v.approve {
		t.Errorf("a new machine taking the name of a deleted node: %+v", v)
	}
	// Requests kone has no rule for are left alone.
	user := csrFor(t, "user", certificatesv1.KubeAPIServerClientSignerName, "alice", []string{"system:authenticated"},
		pkix.Name{CommonName: "alice"}, nil, nil, certificatesv1.UsageClientAuth)
	if v := decide(user); v.approve || v.deny != "" {
		t.Errorf("a user's own request: %+v", v)
	}
}

func TestSettingsParse(t *testing.T) {
	good := Settings{ClusterCIDR: "10.42.0.0/16", ServiceCIDR: "10.43.0.0/16", ClusterDNS: "10.43.0.10", ClusterDomain: "cluster.local", ClientCA: "pem"}
	p, err := good.Parse()
	if err != nil || p.ClusterCIDR.String() != "10.42.0.0/16" || !p.ClusterDNS.Equal(net.ParseIP("10.43.0.10")) {
		t.Fatalf("%+v %v", p, err)
	}
	bad := good
	bad.ClusterDNS = "nope"
	if _, err := bad.Parse(); err == nil {
		t.Error("a bad DNS address is accepted")
	}
	bad = good
	bad.ClientCA = ""
	if _, err := bad.Parse(); err == nil {
		t.Error("settings without the client CA are accepted")
	}
}

// TestValid: a certificate is kept only while it is issued to the wanted subject and stays valid
// long enough; one of an older kone, issued to a name without the node's, is asked for anew.
func TestValid(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, err := pki.EnsureCA(dir, "ca", now)
	if err != nil {
		t.Fatal(err)
	}
	f := pki.File{Cert: filepath.Join(dir, "c.crt"), Key: filepath.Join(dir, "c.key")}
	want := Subject(FlannelGroup, "edge-1")
	if _, err := ca.EnsureLeaf(f, pki.LeafSpec{CommonName: want.CommonName, Organization: want.Organization}, now); err != nil {
		t.Fatal(err)
	}
	if !Valid(f.Cert, want, now, time.Hour) {
		t.Error("a fresh certificate for the subject is not valid")
	}
	if Valid(f.Cert, want, now, pki.LeafValidity) {
		t.Error("a certificate that expires within the renewal window is valid")
	}
	for _, other := range []pkix.Name{Subject(FlannelGroup, "edge-2"), {CommonName: FlannelGroup}, Subject(DNSGroup, "edge-1")} {
		if Valid(f.Cert, other, now, time.Hour) {
			t.Errorf("a certificate for %v passes for %v", want, other)
		}
	}
	if Valid(filepath.Join(dir, "missing.crt"), want, now, 0) {
		t.Error("a missing certificate is valid")
	}
}
