package join

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/kone-dev/kone/pkg/token"
)

// ServerDataName is the kube-system Secret with what a joining server needs from the cluster:
// the CAs with their keys, the service-account key and the secrets-encryption configuration.
// Only holders of the server token (token.ServerGroup) and administrators
// may read it (manifests/rbac.yaml); agent tokens may not.
const ServerDataName = "kone-server-data"

// ErrAgentToken is the answer to a server that joins with an agent token.
var ErrAgentToken = errors.New("the token is an agent token, which cannot join a server: use the server token, in server/token of the data dir of a server of the cluster")

// The server data's keys that change while the cluster runs, besides the CAs that a rotate-ca
// replaces: every server follows them.
const (
	EncryptionConfigKey = "encryption-config.yaml"
	ServerTokenKey      = "server-token"
)

// PublishServerData stores data for joining servers and returns the cluster's, as stored. The
// first server's is the cluster's; afterwards a server adds the keys the cluster's lacks (from a
// kone before them), and replaces those named in replace.
func PublishServerData(ctx context.Context, cs kubernetes.Interface, data map[string][]byte, replace ...string) (map[string][]byte, error) {
	return storeServerData(ctx, cs, data, replace, true, nil)
}

// ErrServerDataChanged is the answer to a replacement of a value that another change replaced
// first: two rotations at once on two servers must not both win.
var ErrServerDataChanged = errors.New("another server changed it meanwhile (is a rotation running on another server?)")

// ReplaceServerData gives every server of the cluster new values of keys (EncryptionConfigKey,
// ServerTokenKey, the CAs of a rotate-ca), which each server follows, all at once and only if
// each value stored is one that this change replaces (replaces reports it); ErrServerDataChanged
// if not.
func ReplaceServerData(ctx context.Context, cs kubernetes.Interface, values map[string][]byte, replaces func(key string, stored []byte) bool) error {
	_, err := storeServerData(ctx, cs, values, slices.Collect(maps.Keys(values)), false, replaces)
	return err
}

// ReplaceServerToken gives every server of the cluster the server token t in place of the one
// with the id old (or of none); ErrServerDataChanged if another rotation replaced that first.
func ReplaceServerToken(ctx context.Context, cs kubernetes.Interface, old string, t token.Token) error {
	return ReplaceServerData(ctx, cs, map[string][]byte{ServerTokenKey: t.File()}, func(_ string, stored []byte) bool {
		theirs, err := token.Parse(string(stored))
		return len(stored) == 0 || (err == nil && theirs.ID == old)
	})
}

func storeServerData(ctx context.Context, cs kubernetes.Interface, data map[string][]byte, replace []string, create bool, replaces func(string, []byte) bool) (map[string][]byte, error) {
	secrets := cs.CoreV1().Secrets(metav1.NamespaceSystem)
	var stored map[string][]byte
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := secrets.Get(ctx, ServerDataName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && create {
			s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: ServerDataName, Namespace: metav1.NamespaceSystem}, Data: data}
			_, err = secrets.Create(ctx, s, metav1.CreateOptions{})
			stored = data
			return err
		}
		if err != nil {
			return err
		}
		if s.Data == nil {
			s.Data = map[string][]byte{}
		}
		changed := false
		for key, value := range data {
			if replaces != nil && !bytes.Equal(s.Data[key], value) && !replaces(key, s.Data[key]) {
				return ErrServerDataChanged
			}
			if _, ok := s.Data[key]; !ok || (slices.Contains(replace, key) && !bytes.Equal(s.Data[key], value)) {
				s.Data[key] = value
				changed = true
			}
		}
		stored = s.Data
		if changed {
			_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("the server data %s/%s: %w", metav1.NamespaceSystem, ServerDataName, err)
	}
	return stored, nil
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
