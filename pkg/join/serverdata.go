package join

import (
	"context"
	"errors"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kone-dev/kone/pkg/token"
)

// ServerDataName is the kube-system Secret with what a joining server needs from the cluster:
// the CAs with their keys, the service-account key and the secrets-encryption configuration.
// Only holders of the server token (token.ServerGroup) and administrators
// may read it; agent tokens may not.
const ServerDataName = "kone-server-data"

// ErrAgentToken is the answer to a server that joins with an agent token.
var ErrAgentToken = errors.New("the token is an agent token, which cannot join a server: use the server token, in server/token of the data dir of a server of the cluster")

// PublishServerData stores the files (Secret key → path) for joining servers, unless the
// cluster has them already: the first server's are the cluster's.
func PublishServerData(ctx context.Context, cs kubernetes.Interface, files map[string]string) error {
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: ServerDataName, Namespace: metav1.NamespaceSystem},
		Data:       map[string][]byte{},
	}
	for key, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("server data for joining servers: %w", err)
		}
		secret.Data[key] = data
	}
	_, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, secret, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("publish the server data for joining servers: %w", err)
	}
	return grantGet(ctx, cs, "kone:server-data", "secrets", ServerDataName, token.ServerGroup)
}

// FetchServerData reads the server data with a joining server's token.
func FetchServerData(ctx context.Context, cs kubernetes.Interface) (map[string][]byte, error) {
	s, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, ServerDataName, metav1.GetOptions{})
	switch {
	case apierrors.IsForbidden(err):
		return nil, ErrAgentToken
	case apierrors.IsNotFound(err):
		return nil, errors.New("the server has no data for joining servers yet: it runs an older kone, or has not finished starting; try again once it is ready")
	case err != nil:
		return nil, fmt.Errorf("read the server data: %w", describe(err))
	}
	return s.Data, nil
}
