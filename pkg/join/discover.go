package join

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	"k8s.io/cluster-bootstrap/token/jws"

	"github.com/kone-dev/kone/pkg/token"
)

// ErrNotPinned is the warning Discover gives for a token that does not name the CA.
var ErrNotPinned = errors.New("the token does not pin the server's CA (it lacks the K10<hash>:: prefix), so the CA the server presents is trusted as it is; use the full token from the server's data dir (server/token) to be safe")

// Discover fetches kube-public/cluster-info from server without credentials and returns the
// cluster's CA certificate, once it matches the token's CA hash and the server has proven, by
// signing cluster-info with the token's secret, that it knows the token. Nothing secret is sent.
// warn is called when the token pins no CA.
func Discover(ctx context.Context, server string, tok token.Token, warn func(error)) ([]byte, error) {
	return discover(ctx, server, tok, warn, signatureWait)
}

// signatureWait is how long a joining node waits for the server to sign cluster-info for its
// token: the signer adds a new token's signature a moment after the token exists.
const signatureWait = 20 * time.Second

func discover(ctx context.Context, server string, tok token.Token, warn func(error), wait time.Duration) ([]byte, error) {
	insecure := &rest.Config{Host: server, Timeout: 10 * time.Second, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	cs, err := kubernetes.NewForConfig(insecure)
	if err != nil {
		return nil, fmt.Errorf("server %s: %w", server, err)
	}
	if tok.CAHash == "" {
		warn(ErrNotPinned)
	}
	deadline := time.Now().Add(wait)
	for {
		ca, signed, err := checkClusterInfo(ctx, cs, server, tok)
		if err != nil || signed {
			return ca, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the server knows no valid token with id %s: it has expired or was deleted; make a new one on the server with `kone token create`", tok.ID)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// checkClusterInfo reads cluster-info once; signed is false while it bears no signature for the token.
func checkClusterInfo(ctx context.Context, cs kubernetes.Interface, server string, tok token.Token) (ca []byte, signed bool, err error) {
	cm, err := cs.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
	if err != nil {
		return nil, false, unreachable(server, err)
	}
	kubeconfig := cm.Data[bootstrapapi.KubeConfigKey]
	cluster, err := token.ClusterInfo(cm)
	if err != nil {
		return nil, false, fmt.Errorf("server %s publishes no usable cluster-info (%w); is it a kone server?", server, err)
	}
	// Only what the pin vouches for: the rest of what the server sent is its own word.
	if ca, err = tok.TrustedCA(cluster.CertificateAuthorityData); err != nil {
		return nil, false, fmt.Errorf("refusing to join %s: %w", server, err)
	}
	signature, ok := cm.Data[bootstrapapi.JWSSignatureKeyPrefix+tok.ID]
	if !ok {
		return nil, false, nil
	}
	if !jws.DetachedTokenIsValid(signature, kubeconfig, tok.ID, tok.Secret) {
		return nil, false, fmt.Errorf("the token's secret is wrong: the server's token %s is signed with another secret; copy the token again from the server", tok.ID)
	}
	return ca, true, nil
}

// unreachable explains a failed first contact with the server.
func unreachable(server string, err error) error {
	var netErr net.Error
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("server %s has no cluster-info: it is not a kone server, or it is still starting", server)
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		return fmt.Errorf("server %s does not let joining nodes read cluster-info: is it a kone server? (%w)", server, err)
	case errors.As(err, &netErr):
		return fmt.Errorf("cannot reach the server at %s: %w; check --server, that the server runs and that its port is open from here", server, err)
	}
	return fmt.Errorf("cannot reach the server at %s: %w; check --server", server, err)
}
