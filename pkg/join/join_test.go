package join

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
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
// tokens in signed (id → secret), with its CA followed by the certificates of more, if any.
func clusterInfoServer(t *testing.T, signed map[string]string, more ...func(ca *x509.Certificate) []byte) (*httptest.Server, []byte) {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	served := ca
	for _, m := range more {
		served = append(served, m(srv.Certificate())...)
	}
	info := clientcmdapi.NewConfig()
	info.Clusters[""] = &clientcmdapi.Cluster{Server: srv.URL, CertificateAuthorityData: served}
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
	// Someone who knows the token's secret serves the cluster's CA followed by a CA of their own
	// and a certificate of the cluster CA's key signed by it: the node trusts the cluster's CA
	// alone.
	attacker, err := pki.EnsureCA(t.TempDir(), "attacker", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	forgery := func(ca *x509.Certificate) []byte {
		tmpl := *ca
		tmpl.SignatureAlgorithm = x509.UnknownSignatureAlgorithm // the attacker's key's
		der, err := x509.CreateCertificate(rand.Reader, &tmpl, attacker.Cert, ca.PublicKey, attacker.Key)
		if err != nil {
			t.Fatal(err)
		}
		return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pki.EncodeCert(attacker.Cert)...)
	}
	mitm, realCA := clusterInfoServer(t, map[string]string{"abcdef": "0123456789abcdef"}, forgery)
	pinnedHere, err := good.WithCA(realCA)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Discover(context.Background(), mitm.URL, pinnedHere, noWarning); err != nil || string(got) != string(realCA) {
		t.Errorf("cluster-info with more CAs after the pinned one: trusted %d bytes (%v), want the pinned CA alone", len(got), err)
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

// secretFor makes a node secret in a temporary dir, as a node's first join does.
func secretFor(t *testing.T) NodeSecret {
	t.Helper()
	s, err := LoadOrCreateSecret(filepath.Join(t.TempDir(), "node-secret.key"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// proven signs r with secret for node, as a kone node does; a nil secret leaves it unproven.
func proven(r *certificatesv1.CertificateSigningRequest, node string, secret *NodeSecret) *certificatesv1.CertificateSigningRequest {
	if r.Annotations == nil {
		r.Annotations = map[string]string{}
	}
	if secret != nil {
		r.Annotations[ProofAnnotation] = secret.Prove(r.Spec.SignerName, node, r.Spec.Request)
	}
	return r
}

// TestApprover tries the approver as a joining machine would, and as an attacker holding a
// valid join token would: every request for a node's identities needs the proof of the secret
// that holds the node's name.
func TestApprover(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	serverSecret := secretFor(t)
	servers := pki.Names{DNSNames: []string{"kubernetes", "kone.example.com"}, IPs: []net.IP{net.ParseIP("10.43.0.1"), net.ParseIP("192.168.1.1")}}
	a := NewApprover(cs, logrus.New(), servers, func() {})
	if err := Hold(ctx, cs, Held{Name: "server-1", SecretHash: serverSecret.Hash()}, time.Now()); err != nil {
		t.Fatal(err)
	}
	// Another apiserver of the cluster, known only from the kubernetes Service's endpoints.
	if _, err := cs.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "kubernetes", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"192.168.1.5"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = a.Run(runCtx) }()
	if err := a.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	nodeA, nodeB := secretFor(t), secretFor(t)
	joining := []string{"system:bootstrappers", token.NodeGroup, "system:authenticated"}
	component := func(name, component, node string, secret *NodeSecret) *certificatesv1.CertificateSigningRequest {
		r := csrFor(t, name, certificatesv1.KubeAPIServerClientSignerName, "system:bootstrap:abcdef", joining,
			Subject(component, node), nil, nil, certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth)
		r.Annotations = map[string]string{NodeNameAnnotation: node}
		return proven(r, node, secret)
	}
	kubeletClient := func(node string, secret *NodeSecret) *certificatesv1.CertificateSigningRequest {
		r := csrFor(t, "kubelet", certificatesv1.KubeAPIServerClientKubeletSignerName, "system:bootstrap:abcdef", joining,
			KubeletSubject(node), nil, nil, certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth)
		return proven(r, node, secret)
	}
	decide := func(r *certificatesv1.CertificateSigningRequest) verdict {
		t.Helper()
		v, err := a.decide(ctx, r)
		if err != nil && (v.approve || v.deny != "") {
			t.Fatalf("%s: a verdict with an error: %v", r.Name, err)
		}
		if err != nil {
			t.Fatalf("%s: %v", r.Name, err)
		}
		return v
	}
	denied := func(what string, v verdict, reason string) {
		t.Helper()
		if v.approve || !strings.Contains(v.deny, reason) {
			t.Errorf("%s: %+v, want a denial saying %q", what, v, reason)
		}
	}

	denied("kubelet's client certificate without a proof", decide(kubeletClient("edge-1", nil)), "no proof of the node's secret")
	if v := decide(kubeletClient("edge-1", &nodeA)); !v.approve {
		t.Errorf("kubelet's client certificate of a new node: %+v", v)
	}
	if v := decide(component("proxy", ProxyUser, "edge-1", &nodeA)); !v.approve {
		t.Errorf("kube-proxy of the node that claimed its name: %+v", v)
	}
	admin := component("admin", ProxyUser, "edge-1", nil)
	admin.Spec.Request = csrFor(t, "admin", "", "", nil, pkix.Name{CommonName: "system:admin"}, nil, nil).Spec.Request
	denied("a node asking for the admin's identity", decide(proven(admin, "edge-1", &nodeA)), "only for the client certificates of its own")
	// flannel's and CoreDNS's identities name their node: never another node's, never without the group.
	for _, subject := range []pkix.Name{Subject(FlannelGroup, "edge-2"), {CommonName: FlannelGroup + ":edge-1"},
		{CommonName: DNSGroup + ":edge-1", Organization: []string{"system:masters"}}, {CommonName: FlannelGroup, Organization: []string{FlannelGroup}}} {
		r := csrFor(t, "other", certificatesv1.KubeAPIServerClientSignerName, "system:bootstrap:abcdef", joining,
			subject, nil, nil, certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth)
		r.Annotations = map[string]string{NodeNameAnnotation: "edge-1"}
		denied(fmt.Sprintf("node edge-1 asking for %+v", subject), decide(proven(r, "edge-1", &nodeA)), "only for the client certificates of its own")
	}
	// Between a machine's first join and its Node's registration, another token holder, who
	// may watch the requests, cannot take the name; once the claim is stale it can.
	denied("another secret before the node registered", decide(kubeletClient("edge-1", &nodeB)), "whose node has not registered yet")
	clock := time.Now()
	a.now = func() time.Time { return clock }
	late := secretFor(t)
	if _, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: claimPrefix + "edge-stale", Namespace: metav1.NamespaceSystem}, Type: claimType,
		Data: map[string][]byte{claimKey: []byte(nodeB.Hash()), claimedAtKey: []byte(clock.Add(-claimGrace - time.Second).UTC().Format(time.RFC3339))},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if v := decide(kubeletClient("edge-stale", &late)); !v.approve {
		t.Errorf("a claim whose node never registered, past its grace: %+v", v)
	}

	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-1", UID: "edge-1-first"},
		// A node may publish any address on its Node, the servers' too.
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.1.10"}, {Type: corev1.NodeHostName, Address: "edge-1"},
			{Type: corev1.NodeExternalIP, Address: "10.43.0.1"}, {Type: corev1.NodeExternalIP, Address: "192.168.1.5"}, {Type: corev1.NodeExternalDNS, Address: "kone.example.com"}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if v := decide(component("again", DNSGroup, "edge-1", &nodeA)); !v.approve {
		t.Errorf("the same node joining again: %+v", v)
	}

	// Another machine with a valid token, by every route.
	held := "held by another machine, or this machine has lost the node secret"
	denied("another secret, kubelet's client certificate", decide(kubeletClient("edge-1", &nodeB)), held)
	denied("another secret, flannel's certificate", decide(component("thief", FlannelGroup, "edge-1", &nodeB)), "--node-name")
	denied("no proof, CoreDNS's certificate", decide(component("thief", DNSGroup, "edge-1", nil)), "no proof of the node's secret")
	// A proof copied from the real node's request proves nothing for another request.
	stolen := component("thief", ProxyUser, "edge-1", nil)
	stolen.Annotations[ProofAnnotation] = component("real", ProxyUser, "edge-1", &nodeA).Annotations[ProofAnnotation]
	denied("a copied proof", decide(stolen), "does not match the request")
	// Nor is a proof made for another signer, or another node name, over the same request.
	other := kubeletClient("edge-1", nil)
	other.Annotations[ProofAnnotation] = nodeA.Prove(certificatesv1.KubeAPIServerClientSignerName, "edge-1", other.Spec.Request)
	denied("a proof made for another signer", decide(other), "does not match the request")
	other.Annotations[ProofAnnotation] = nodeA.Prove(other.Spec.SignerName, "edge-2", other.Spec.Request)
	denied("a proof made for another node", decide(other), "does not match the request")
	broken := component("thief", ProxyUser, "edge-1", nil)
	broken.Annotations[ProofAnnotation] = "not.a-proof"
	denied("a malformed proof", decide(broken), "malformed proof")

	servingFor := func(user string, names []string, ips ...net.IP) *certificatesv1.CertificateSigningRequest {
		return csrFor(t, "serving", certificatesv1.KubeletServingSignerName, user, []string{"system:nodes"},
			KubeletSubject("edge-1"), names, ips, certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth)
	}
	serving := func(user string, ips ...net.IP) *certificatesv1.CertificateSigningRequest {
		return servingFor(user, []string{"edge-1"}, ips...)
	}
	if v := decide(serving("system:node:edge-1", net.ParseIP("192.168.1.10"))); !v.approve {
		t.Errorf("kubelet serving certificate for the node's own addresses: %+v", v)
	}
	// Another node's address or name, published on this node's own Node, is refused too.
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-9", UID: "edge-9"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.1.99"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n1, _ := cs.CoreV1().Nodes().Get(ctx, "edge-1", metav1.GetOptions{})
	n1.Status.Addresses = append(n1.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "192.168.1.99"},
		corev1.NodeAddress{Type: corev1.NodeExternalDNS, Address: "edge-9"})
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n1, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	denied("kubelet serving certificate for another node's address", decide(serving("system:node:edge-1", net.ParseIP("192.168.1.99"))), "belongs to node edge-9")
	denied("kubelet serving certificate for another node's name", decide(servingFor("system:node:edge-1", []string{"edge-9"})), "belongs to node edge-9")
	if err := cs.CoreV1().Nodes().Delete(ctx, "edge-9", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"10.43.0.1", "192.168.1.1", "192.168.1.5"} {
		denied("kubelet serving certificate for the servers' address "+ip, decide(serving("system:node:edge-1", net.ParseIP(ip))), "belongs to the cluster's servers")
	}
	denied("kubelet serving certificate for the servers' name", decide(servingFor("system:node:edge-1", []string{"kone.example.com"}, net.ParseIP("192.168.1.10"))),
		"belongs to the cluster's servers")
	denied("kubelet serving certificate for a foreign address", decide(serving("system:node:edge-1", net.ParseIP("10.9.9.9"))), "is not an address of node")
	denied("a node asking for another node's serving certificate", decide(serving("system:node:other", net.ParseIP("192.168.1.10"))), "asked for by its own node")
	denied("a joining machine asking for a node's serving certificate", decide(serving("system:bootstrap:abcdef", net.ParseIP("192.168.1.10"))), "asked for by its own node")

	// A server's own name is never given to a joining machine, even with its Node deleted.
	claim, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, claimPrefix+"server-1", metav1.GetOptions{})
	if err != nil || string(claim.Data[claimKey]) != serverSecret.Hash() {
		t.Fatalf("the server's claim on its name: %v %v", claim, err)
	}
	denied("a machine taking a server's name", decide(kubeletClient("server-1", &nodeB)), "belongs to a server")

	// A node that joined with an earlier kone has a claim without a key: the node itself, with
	// its own credentials, records its key; nobody else can.
	if _, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: claimPrefix + "edge-old", Namespace: metav1.NamespaceSystem},
		Type:       claimType, Data: map[string][]byte{"machine": []byte("0123")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-old"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	old := secretFor(t)
	denied("a joining machine and a keyless claim", decide(component("thief", DNSGroup, "edge-old", &nodeB)), held)
	self := component("self", DNSGroup, "edge-old", nil)
	self.Spec.Username, self.Spec.Groups = "system:node:edge-old", []string{"system:nodes", "system:authenticated"}
	if v := decide(proven(self, "edge-old", &old)); !v.approve {
		t.Errorf("an upgraded node renewing with its own credentials: %+v", v)
	}
	if v := decide(component("rejoin", DNSGroup, "edge-old", &old)); !v.approve {
		t.Errorf("the upgraded node joining again with the key it recorded: %+v", v)
	}

	// A node whose claim was lost records its key again with its own credentials.
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-lost", UID: "edge-lost"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	lost := component("self", DNSGroup, "edge-lost", nil)
	lost.Spec.Username, lost.Spec.Groups = "system:node:edge-lost", []string{"system:nodes", "system:authenticated"}
	if v := decide(proven(lost, "edge-lost", &old)); !v.approve {
		t.Errorf("a node whose claim was lost, with its own credentials: %+v", v)
	}
	denied("a joining machine after the lost claim was recorded again", decide(component("thief", DNSGroup, "edge-lost", &nodeB)), held)
	denied("a node name that is no name", decide(component("bad", DNSGroup, "Edge_1", &nodeA)), "is not a node name")

	// Once the node, which registered (its serving certificate was asked for), is deleted, its
	// name is free for whoever joins next, at once.
	if err := cs.CoreV1().Nodes().Delete(ctx, "edge-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if v := decide(component("successor", ProxyUser, "edge-1", &nodeB)); !v.approve {
		t.Errorf("a new machine taking the name of a deleted node: %+v", v)
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-1", UID: "edge-1-second"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	denied("the old machine once the new one's node exists", decide(kubeletClient("edge-1", &nodeA)), held)
	// Requests kone has no rule for are left alone.
	user := csrFor(t, "user", certificatesv1.KubeAPIServerClientSignerName, "alice", []string{"system:authenticated"},
		pkix.Name{CommonName: "alice"}, nil, nil, certificatesv1.UsageClientAuth)
	if v := decide(user); v.approve || v.deny != "" {
		t.Errorf("a user's own request: %+v", v)
	}
	renewal := kubeletClient("edge-1", nil)
	renewal.Spec.Username, renewal.Spec.Groups = "system:node:edge-1", []string{"system:nodes", "system:authenticated"}
	if v := decide(renewal); v.approve || v.deny != "" {
		t.Errorf("kubelet renewing with its own certificate, upstream's to approve: %+v", v)
	}
}

// TestNodeSecret: the secret is made once, kept private, read back the same, and a damaged
// file is refused rather than replaced.
func TestNodeSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent", "node-secret.key")
	first, err := LoadOrCreateSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("node secret file: %v %v", fi, err)
	}
	again, err := LoadOrCreateSecret(path)
	if err != nil || again.Hash() != first.Hash() {
		t.Fatalf("read back: %v, hash %s, want %s", err, again.Hash(), first.Hash())
	}
	if other := secretFor(t); other.Hash() == first.Hash() {
		t.Error("two nodes made the same secret")
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateSecret(path); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("a damaged secret: %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "garbage" {
		t.Error("a damaged secret was replaced")
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
	if !Valid(f, want, now, time.Hour) {
		t.Error("a fresh certificate for the subject is not valid")
	}
	if Valid(f, want, now, pki.LeafValidity) {
		t.Error("a certificate that expires within the renewal window is valid")
	}
	for _, other := range []pkix.Name{Subject(FlannelGroup, "edge-2"), {CommonName: FlannelGroup}, Subject(DNSGroup, "edge-1")} {
		if Valid(f, other, now, time.Hour) {
			t.Errorf("a certificate for %v passes for %v", want, other)
		}
	}
	if Valid(pki.File{Cert: filepath.Join(dir, "missing.crt"), Key: filepath.Join(dir, "missing.key")}, want, now, 0) {
		t.Error("a missing certificate is valid")
	}
}
