package join

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/supervisor"
	"github.com/kone-dev/kone/pkg/token"
)

const (
	nodeUserPrefix = "system:node:"
	nodesGroup     = "system:nodes"
	claimPrefix    = "kone-node-"
	claimType      = "kone.dev/node-claim"
	claimKey       = "node-key-sha256"
	// serverKey marks a name a server holds for its own node (Held).
	serverKey = "server"
	// claimedAtKey says when the claim was made (RFC 3339); nodeUIDKey, the UID of the Node
	// that registered under it, once the approver has seen it.
	claimedAtKey = "claimed-at"
	nodeUIDKey   = "node-uid"
	// claimGrace is how long a claim whose node has not registered yet stays its own: a
	// machine's first join takes that long at most from its certificates to its Node, and
	// during it another token holder, who may watch the requests, must not take the name.
	// Once the node has registered, its deletion frees the name at once.
	claimGrace = 10 * time.Minute
)

// Approver approves the certificate requests of joining and joined nodes that kone's join
// rules allow, and denies the ones they forbid with the reason. Requests it has no rule for
// (a kubelet renewing its client certificate, anything a user makes) are left to upstream's
// approver and to administrators.
type Approver struct {
	cs       kubernetes.Interface
	log      *logrus.Logger
	servers  pki.Names
	approved func() // after each approval: a node joined, or renewed a certificate
	now      func() time.Time
	ready    *supervisor.Latch
}

// Held is a node name that a server holds for its own node, which gets its certificates from
// the server's CAs rather than by joining: no machine that joins may take it.
type Held struct{ Name, SecretHash string }

// Hold records h's claim on its name. Every server holds its own as it starts, before the
// approver of whichever server leads can hand the name to anyone.
func Hold(ctx context.Context, cs kubernetes.Interface, h Held, now time.Time) error {
	return claim(ctx, cs, h.Name, h.SecretHash, true, now)
}

// NewApprover returns the approver component; cs must be allowed to approve and to manage
// kube-system secrets. servers are the names and addresses of the apiserver's certificate,
// which no kubelet may serve under (nor under the address of any apiserver in the cluster).
// approved is called after each approval.
func NewApprover(cs kubernetes.Interface, log *logrus.Logger, servers pki.Names, approved func()) *Approver {
	return &Approver{cs: cs, log: log, servers: servers, approved: approved, now: time.Now, ready: supervisor.NewLatch()}
}

func (a *Approver) Name() string { return "join approver" }

func (a *Approver) Run(ctx context.Context) error {
	// The resync retries requests that came before what they depend on (a serving certificate
	// asked for before the node's addresses were known).
	factory := informers.NewSharedInformerFactory(a.cs, 10*time.Second)
	inf := factory.Certificates().V1().CertificateSigningRequests().Informer()
	handle := func(obj any) {
		if req, ok := obj.(*certificatesv1.CertificateSigningRequest); ok && pending(req) {
			a.handle(ctx, req)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    handle,
		UpdateFunc: func(_, obj any) { handle(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return ctx.Err()
	}
	a.ready.Open()
	<-ctx.Done()
	return nil
}

func (a *Approver) Ready(ctx context.Context) error { return a.ready.Wait(ctx) }

func pending(req *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range req.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved || c.Type == certificatesv1.CertificateDenied || c.Type == certificatesv1.CertificateFailed {
			return false
		}
	}
	return true
}

// verdict is a decision on one request; undecided leaves it for later or for someone else.
type verdict struct {
	approve bool
	deny    string
}

var undecided = verdict{}

func (a *Approver) handle(ctx context.Context, req *certificatesv1.CertificateSigningRequest) {
	log := a.log.WithFields(logrus.Fields{"csr": req.Name, "signer": req.Spec.SignerName, "requester": req.Spec.Username})
	v, err := a.decide(ctx, req)
	if err != nil {
		log.WithError(err).Warn("cannot decide on a certificate request yet")
		return
	}
	cond := certificatesv1.CertificateSigningRequestCondition{Status: corev1.ConditionTrue, LastUpdateTime: metav1.Now()}
	switch {
	case v.approve:
		cond.Type, cond.Reason, cond.Message = certificatesv1.CertificateApproved, "KoneJoin", "approved by kone's join rules"
	case v.deny != "":
		cond.Type, cond.Reason, cond.Message = certificatesv1.CertificateDenied, "KoneJoin", v.deny
	default:
		return
	}
	req = req.DeepCopy()
	req.Status.Conditions = append(req.Status.Conditions, cond)
	if _, err := a.cs.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, req.Name, req, metav1.UpdateOptions{}); err != nil {
		log.WithError(err).Warn("cannot record the decision on a certificate request")
		return
	}
	if v.approve {
		log.Debug("approved certificate request")
		a.approved()
	} else {
		log.WithField("reason", v.deny).Warn("denied certificate request")
	}
}

func (a *Approver) decide(ctx context.Context, req *certificatesv1.CertificateSigningRequest) (verdict, error) {
	block, _ := pem.Decode(req.Spec.Request)
	if block == nil {
		return verdict{deny: "the request holds no PEM certificate request"}, nil
	}
	x, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return verdict{deny: "the certificate request does not parse: " + err.Error()}, nil
	}
	joining := slices.Contains(req.Spec.Groups, token.NodeGroup)
	switch req.Spec.SignerName {
	case certificatesv1.KubeAPIServerClientKubeletSignerName:
		// A joining node's first kubelet certificate, which kone asks for with the node's proof;
		// renewals with a node's own certificate are upstream's to approve.
		if !joining {
			return undecided, nil
		}
		name, ok := strings.CutPrefix(x.Subject.CommonName, nodeUserPrefix)
		if !ok || !slices.Equal(x.Subject.Organization, []string{nodesGroup}) || hasSANs(x) ||
			!usagesWithin(req.Spec.Usages, certificatesv1.UsageClientAuth) {
			return verdict{deny: "a joining node may ask only for its kubelet's client certificate, system:node:<name> in system:nodes, with no names"}, nil
		}
		return a.proveAndClaim(ctx, req, name, false)
	case certificatesv1.KubeletServingSignerName:
		return a.decideServing(ctx, req, x)
	case certificatesv1.KubeAPIServerClientSignerName:
		nodeName, ok := req.Annotations[NodeNameAnnotation]
		if !ok {
			return undecided, nil
		}
		if errs := validation.IsDNS1123Subdomain(nodeName); len(errs) > 0 {
			return verdict{deny: fmt.Sprintf("%q is not a node name: %s", nodeName, strings.Join(errs, "; "))}, nil
		}
		own := slices.ContainsFunc(components, func(c string) bool {
			want := Subject(c, nodeName)
			return x.Subject.CommonName == want.CommonName && slices.Equal(x.Subject.Organization, want.Organization)
		})
		if !own || hasSANs(x) || !usagesWithin(req.Spec.Usages, certificatesv1.UsageClientAuth) {
			return verdict{deny: fmt.Sprintf("a node may ask only for the client certificates of its own %s, with no names",
				strings.Join(components, ", "))}, nil
		}
		if !joining && req.Spec.Username != nodeUserPrefix+nodeName {
			return verdict{deny: "only a joining node, or the node " + nodeName + " itself, may ask for this node's certificates"}, nil
		}
		return a.proveAndClaim(ctx, req, nodeName, !joining)
	}
	return undecided, nil
}

// proveAndClaim approves a request for nodeName's certificates only if it proves the node's
// secret, and the secret is the one that holds the name (or the name is free).
func (a *Approver) proveAndClaim(ctx context.Context, req *certificatesv1.CertificateSigningRequest, nodeName string, self bool) (verdict, error) {
	hash, err := verifyProof(req.Annotations[ProofAnnotation], req.Spec.SignerName, nodeName, req.Spec.Request)
	if err != nil {
		return verdict{deny: fmt.Sprintf("the request for node %s's certificate %v; kone agent makes these requests itself", nodeName, err)}, nil
	}
	return a.claim(ctx, nodeName, hash, self)
}

// claim gives nodeName to the node secret whose hash is given, unless another secret holds it:
// while the node exists, and while a claim whose node has not registered yet is fresh. self
// says the request comes with the node's own credentials, which it got by proving itself when
// it joined.
func (a *Approver) claim(ctx context.Context, nodeName, hash string, self bool) (verdict, error) {
	secrets := a.cs.CoreV1().Secrets(metav1.NamespaceSystem)
	held, err := secrets.Get(ctx, claimPrefix+nodeName, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return undecided, err
	}
	found := err == nil
	if found && string(held.Data[claimKey]) == hash {
		return verdict{approve: true}, nil
	}
	if found && len(held.Data[serverKey]) > 0 {
		return verdict{deny: fmt.Sprintf("node name %q belongs to a server of this cluster; give this machine another name with --node-name", nodeName)}, nil
	}
	// A claim of an earlier kone holds no key, or the claim was lost: the node itself adopts its key.
	adopt := self && (!found || len(held.Data[claimKey]) == 0)
	if !adopt {
		// Another secret's claim, or a node that joined without one: the name is taken for as
		// long as the node exists.
		if _, err := a.cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{}); err == nil {
			return verdict{deny: fmt.Sprintf("node name %q is held by another machine, or this machine has lost the node secret it joined with; "+
				"give this machine another name with --node-name, or, if the node's machine is really gone, delete the node (kubectl delete node %s) and join again",
				nodeName, nodeName)}, nil
		} else if !apierrors.IsNotFound(err) {
			return undecided, err
		}
		if found && len(held.Data[claimKey]) > 0 && len(held.Data[nodeUIDKey]) == 0 {
			at, _ := time.Parse(time.RFC3339, string(held.Data[claimedAtKey]))
			if left := at.Add(claimGrace).Sub(a.now()); left > 0 {
				return verdict{deny: fmt.Sprintf("node name %q was claimed by another machine at %s, whose node has not registered yet; "+
					"give this machine another name with --node-name, or try again in %s if that machine is gone", nodeName, at.Format(time.RFC3339), left.Round(time.Second))}, nil
			}
		}
	}
	if err := claim(ctx, a.cs, nodeName, hash, false, a.now()); err != nil {
		return undecided, err
	}
	return verdict{approve: true}, nil
}

// registered records in node's claim that the node has registered: its deletion then frees
// the name at once. kubelet asks for its serving certificate right after it registers.
func (a *Approver) registered(ctx context.Context, node *corev1.Node) error {
	secrets := a.cs.CoreV1().Secrets(metav1.NamespaceSystem)
	held, err := secrets.Get(ctx, claimPrefix+node.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || err == nil && string(held.Data[nodeUIDKey]) == string(node.UID) {
		return nil
	}
	if err != nil {
		return err
	}
	if held.Data == nil {
		held.Data = map[string][]byte{}
	}
	held.Data[nodeUIDKey] = []byte(node.UID)
	if _, err := secrets.Update(ctx, held, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("record node %s in its claim: %w", node.Name, err)
	}
	return nil
}

// claim records that the node secret with hash holds nodeName, for a server's node for good.
func claim(ctx context.Context, cs kubernetes.Interface, nodeName, hash string, server bool, now time.Time) error {
	secrets := cs.CoreV1().Secrets(metav1.NamespaceSystem)
	c := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: claimPrefix + nodeName, Namespace: metav1.NamespaceSystem},
		Type:       claimType,
		Data:       map[string][]byte{claimKey: []byte(hash), claimedAtKey: []byte(now.UTC().Format(time.RFC3339))},
	}
	if server {
		c.Data[serverKey] = []byte("true")
	}
	_, err := secrets.Update(ctx, c, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		_, err = secrets.Create(ctx, c, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("record the claim on node name %s: %w", nodeName, err)
	}
	return nil
}

// decideServing approves a kubelet's serving certificate for exactly the names and addresses
// its node reports.
func (a *Approver) decideServing(ctx context.Context, req *certificatesv1.CertificateSigningRequest, x *x509.CertificateRequest) (verdict, error) {
	name, ok := strings.CutPrefix(x.Subject.CommonName, nodeUserPrefix)
	if !ok || req.Spec.Username != x.Subject.CommonName || !slices.Equal(x.Subject.Organization, []string{nodesGroup}) ||
		len(x.EmailAddresses) > 0 || len(x.URIs) > 0 || !usagesWithin(req.Spec.Usages, certificatesv1.UsageServerAuth) {
		return verdict{deny: "a kubelet serving certificate must be asked for by its own node, for system:node:<name> in system:nodes"}, nil
	}
	node, err := a.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return undecided, errors.New("node " + name + " is not registered yet")
	} else if err != nil {
		return undecided, err
	}
	if err := a.registered(ctx, node); err != nil {
		return undecided, err
	}
	names, ips := map[string]bool{}, map[string]bool{}
	for _, addr := range node.Status.Addresses {
		switch addr.Type {
		case corev1.NodeHostName, corev1.NodeInternalDNS, corev1.NodeExternalDNS:
			names[addr.Address] = true
		case corev1.NodeInternalIP, corev1.NodeExternalIP:
			if ip := net.ParseIP(addr.Address); ip != nil {
				ips[ip.String()] = true
			}
		}
	}
	if len(names)+len(ips) == 0 {
		return undecided, errors.New("node " + name + " reports no addresses yet")
	}
	// A node may publish any address on its own Node object; those of the servers it may not serve under.
	serverIPs, err := a.apiserverIPs(ctx)
	if err != nil {
		return undecided, err
	}
	for _, n := range x.DNSNames {
		if slices.Contains(a.servers.DNSNames, n) {
			return verdict{deny: fmt.Sprintf("name %q belongs to the cluster's servers; a kubelet may not serve under it", n)}, nil
		}
	}
	for _, ip := range x.IPAddresses {
		if slices.ContainsFunc(serverIPs, ip.Equal) {
			return verdict{deny: fmt.Sprintf("IP %s belongs to the cluster's servers; a kubelet may not serve under it", ip)}, nil
		}
	}
	// Nor under another node's: the apiserver would take this kubelet for that node's.
	nodes, err := a.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return undecided, err
	}
	for _, other := range nodes.Items {
		if other.Name == name {
			continue
		}
		for _, addr := range append([]corev1.NodeAddress{{Type: corev1.NodeHostName, Address: other.Name}}, other.Status.Addresses...) {
			taken := slices.Contains(x.DNSNames, addr.Address) ||
				slices.ContainsFunc(x.IPAddresses, func(ip net.IP) bool { return ip.Equal(net.ParseIP(addr.Address)) })
			if taken {
				return verdict{deny: fmt.Sprintf("%s belongs to node %s; a kubelet may serve only under its own node's names and addresses", addr.Address, other.Name)}, nil
			}
		}
	}
	for _, n := range x.DNSNames {
		if !names[n] {
			return verdict{deny: fmt.Sprintf("name %q is not an address of node %s", n, name)}, nil
		}
	}
	for _, ip := range x.IPAddresses {
		if !ips[ip.String()] {
			return verdict{deny: fmt.Sprintf("IP %s is not an address of node %s", ip, name)}, nil
		}
	}
	return verdict{approve: true}, nil
}

// apiserverIPs are the addresses on the apiserver's certificate and those of every apiserver
// of the cluster, from the kubernetes Service's endpoints.
func (a *Approver) apiserverIPs(ctx context.Context) ([]net.IP, error) {
	ips := slices.Clone(a.servers.IPs)
	eps, err := a.cs.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx,
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kubernetes"})
	if err != nil {
		return nil, fmt.Errorf("the apiservers' addresses: %w", err)
	}
	for _, s := range eps.Items {
		for _, e := range s.Endpoints {
			for _, addr := range e.Addresses {
				if ip := net.ParseIP(addr); ip != nil {
					ips = append(ips, ip)
				}
			}
		}
	}
	return ips, nil
}

func hasSANs(x *x509.CertificateRequest) bool {
	return len(x.DNSNames)+len(x.IPAddresses)+len(x.EmailAddresses)+len(x.URIs) > 0
}

// usagesWithin reports whether the requested usages are a key's plus the one role given.
func usagesWithin(usages []certificatesv1.KeyUsage, role certificatesv1.KeyUsage) bool {
	for _, u := range usages {
		if u != role && u != certificatesv1.UsageDigitalSignature && u != certificatesv1.UsageKeyEncipherment {
			return false
		}
	}
	return slices.Contains(usages, role)
}
