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
	"github.com/kone-dev/kone/pkg/token"
)

// bootstrap writes what the cluster needs from kone once the apiserver serves: the server's
// join token as a bootstrap-token Secret, the cluster-info a joining node reads, and the RBAC
// binding that lets the apiserver reach kubelets.
type bootstrap struct {
	admin  *rest.Config
	tok    token.Token
	caFile string
	server string
	done   chan struct{}
}

func newBootstrap(admin *rest.Config, tok token.Token, caFile, server string) *bootstrap {
	return &bootstrap{admin: admin, tok: tok, caFile: caFile, server: server, done: make(chan struct{})}
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
	if err := token.PublishClusterInfo(ctx, cs, kubeconfig); err != nil {
		return err
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kone:kube-apiserver-kubelet-client"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:kubelet-api-admin"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "system:kube-apiserver-kubelet-client"}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create %s: %w", binding.Name, err)
	}
	close(b.done)
	<-ctx.Done()
	return nil
}

func (b *bootstrap) Ready(ctx context.Context) error {
	select {
	case <-b.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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
