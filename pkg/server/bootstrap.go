package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/dns"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/supervisor"
	"github.com/kone-dev/kone/pkg/token"
)

// bootstrap writes what the cluster needs from kone once the apiserver serves: the server's
// join token as a bootstrap-token Secret, the cluster-info a joining node reads, the settings
// agents follow, the RBAC rules of kone's own identities, and the kube-dns Service.
type bootstrap struct {
	admin    *rest.Config
	tok      token.Token
	caFile   string
	server   string
	settings join.Settings
	dnsIP    net.IP // the kube-dns Service's address; nil when the user runs their own DNS
	ready    *supervisor.Latch
}

func newBootstrap(admin *rest.Config, tok token.Token, caFile, server string, settings join.Settings, dnsIP net.IP) *bootstrap {
	return &bootstrap{admin: admin, tok: tok, caFile: caFile, server: server, settings: settings, dnsIP: dnsIP, ready: supervisor.NewLatch()}
}

func (b *bootstrap) Name() string { return "cluster bootstrap" }

func (b *bootstrap) Run(ctx context.Context) error {
	cs, err := kubernetes.NewForConfig(b.admin)
	if err != nil {
		return err
	}
	if err := token.Ensure(ctx, cs, b.tok, token.Options{Description: "kone server token"}, time.Now()); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(b.caFile)
	if err != nil {
		return err
	}
	info := clientcmdapi.NewConfig()
	info.Clusters[""] = &clientcmdapi.Cluster{Server: b.server, CertificateAuthorityData: caPEM}
	kubeconfig, err := clientcmd.Write(*info)
	if err != nil {
		return err
	}
	if err := token.PublishClusterInfo(ctx, cs, kubeconfig, b.tok); err != nil {
		return err
	}
	if err := join.PublishSettings(ctx, cs, b.settings); err != nil {
		return err
	}
	if err := ensureRBAC(ctx, cs); err != nil {
		return err
	}
	if b.dnsIP != nil {
		if err := dns.EnsureService(ctx, cs, b.dnsIP); err != nil {
			return err
		}
	}
	b.ready.Open()
	<-ctx.Done()
	return nil
}

func (b *bootstrap) Ready(ctx context.Context) error {
	return b.ready.Wait(ctx)
}

// clusterInfoServer is the apiserver URL published to joining nodes: the advertise address, or
// else this host's first address.
func clusterInfoServer(cfg *config.Config) string {
	host := "127.0.0.1"
	if cfg.AdvertiseAddress != nil {
		host = cfg.AdvertiseAddress.String()
	} else if ips := interfaceIPs(); len(ips) > 0 {
		host = ips[0].String()
	}
	return "https://" + net.JoinHostPort(host, fmt.Sprint(cfg.HTTPSPort))
}

// ensureRBAC grants kone's identities their rights: the apiserver reaches kubelets, joining
// nodes ask for certificates, kubelets renew their own client certificates, and each node's
// CoreDNS reads what it serves and publishes its node's endpoint of kube-dns. Existing objects
// are left as they are.
func ensureRBAC(ctx context.Context, cs kubernetes.Interface) error {
	user := func(name string) []rbacv1.Subject {
		return []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: name}}
	}
	role := func(name string) rbacv1.RoleRef {
		return rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name}
	}
	read := []string{"get", "list", "watch"}
	clusterRoles := []*rbacv1.ClusterRole{{
		ObjectMeta: metav1.ObjectMeta{Name: join.DNSUser},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "namespaces"}, Verbs: read},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		},
	}, {
		// flannel learns every node's subnet and tunnel endpoint, and publishes its own node's.
		ObjectMeta: metav1.ObjectMeta{Name: join.FlannelUser},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		},
	}}
	bindings := []*rbacv1.ClusterRoleBinding{
		{ObjectMeta: metav1.ObjectMeta{Name: "kone:kube-apiserver-kubelet-client"}, RoleRef: role("system:kubelet-api-admin"),
			Subjects: user("system:kube-apiserver-kubelet-client")},
		{ObjectMeta: metav1.ObjectMeta{Name: "kone:node-bootstrapper"}, RoleRef: role("system:node-bootstrapper"),
			Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: token.NodeGroup}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "kone:node-client-renewal"},
			RoleRef:  role("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"),
			Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "system:nodes"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: join.DNSUser}, RoleRef: role(join.DNSUser), Subjects: user(join.DNSUser)},
		{ObjectMeta: metav1.ObjectMeta{Name: join.FlannelUser}, RoleRef: role(join.FlannelUser), Subjects: user(join.FlannelUser)},
	}
	dnsWriter := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: join.DNSUser, Namespace: dns.Namespace},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"},
			Verbs: []string{"get", "create", "update"}}},
	}
	dnsWriterBinding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: join.DNSUser, Namespace: dns.Namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: join.DNSUser}, Subjects: user(join.DNSUser),
	}
	created := func(kind, name string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s %s: %w", kind, name, err)
		}
		return nil
	}
	rbac := cs.RbacV1()
	for _, r := range clusterRoles {
		if err := created("ClusterRole", r.Name, second(rbac.ClusterRoles().Create(ctx, r, metav1.CreateOptions{}))); err != nil {
			return err
		}
	}
	for _, b := range bindings {
		if err := created("ClusterRoleBinding", b.Name, second(rbac.ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{}))); err != nil {
			return err
		}
	}
	if err := created("Role", dnsWriter.Name, second(rbac.Roles(dns.Namespace).Create(ctx, dnsWriter, metav1.CreateOptions{}))); err != nil {
		return err
	}
	return created("RoleBinding", dnsWriterBinding.Name, second(rbac.RoleBindings(dns.Namespace).Create(ctx, dnsWriterBinding, metav1.CreateOptions{})))
}

func second[T any](_ T, err error) error { return err }
