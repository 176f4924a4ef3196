package token

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	"k8s.io/cluster-bootstrap/token/jws"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
)

// NodeGroup is the extra group kone's join tokens authenticate as; join rules key on it.
const NodeGroup = "system:bootstrappers:kone:default-node-token"

// ServerGroup is the extra group of the server token, which alone may fetch what a joining
// server needs (the cluster's CA keys among it). Agent tokens never carry it.
const ServerGroup = "system:bootstrappers:kone:server-token"

// Options describe a bootstrap token Secret. A zero TTL never expires.
type Options struct {
	TTL         time.Duration
	Description string
	Server      bool // the token joins servers too (ServerGroup)
}

func (o Options) groups() string {
	if o.Server {
		return NodeGroup + "," + ServerGroup
	}
	return NodeGroup
}

// Info is what `kone token list` shows of a token: never its secret.
type Info struct {
	ID          string
	Description string
	Expires     time.Time // zero: never
	Usages      []string
	Groups      string
}

// Create stores t as a bootstrap-token Secret, usable for authentication and for signing
// cluster-info. It fails if a token with the same id exists.
func Create(ctx context.Context, cs kubernetes.Interface, t Token, o Options, now time.Time) error {
	data := map[string]string{
		bootstrapapi.BootstrapTokenIDKey:               t.ID,
		bootstrapapi.BootstrapTokenSecretKey:           t.Secret,
		bootstrapapi.BootstrapTokenUsageSigningKey:     "true",
		bootstrapapi.BootstrapTokenUsageAuthentication: "true",
		bootstrapapi.BootstrapTokenExtraGroupsKey:      o.groups(),
	}
	if o.Description != "" {
		data[bootstrapapi.BootstrapTokenDescriptionKey] = o.Description
	}
	if o.TTL > 0 {
		data[bootstrapapi.BootstrapTokenExpirationKey] = now.Add(o.TTL).UTC().Format(time.RFC3339)
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: bootstraputil.BootstrapTokenSecretName(t.ID), Namespace: metav1.NamespaceSystem},
		Type:       bootstrapapi.SecretTypeBootstrapToken,
		Data:       map[string][]byte{},
	}
	for k, v := range data {
		secret.Data[k] = []byte(v)
	}
	if _, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("a token with id %s already exists; delete it first with `kone token delete %s`", t.ID, t.ID)
		}
		return fmt.Errorf("create token %s: %w", t.ID, err)
	}
	return nil
}

// Exists reports whether the token with id is in the cluster, that is, can join: a deleted
// token can be neither used nor brought back.
func Exists(ctx context.Context, cs kubernetes.Interface, id string) (bool, error) {
	_, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, bootstraputil.BootstrapTokenSecretName(id), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read token %s: %w", id, err)
	}
	return true, nil
}

// Ensure is Create that leaves an existing token with the same id and secret alone, so that a
// server restart keeps its token, but for its groups: a server token that an earlier kone
// created gains ServerGroup. A token with the same id and another secret is an error.
func Ensure(ctx context.Context, cs kubernetes.Interface, t Token, o Options, now time.Time) error {
	s, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, bootstraputil.BootstrapTokenSecretName(t.ID), metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return Create(ctx, cs, t, o, now)
	case err != nil:
		return fmt.Errorf("read token %s: %w", t.ID, err)
	case string(s.Data[bootstrapapi.BootstrapTokenSecretKey]) != t.Secret:
		return fmt.Errorf("token %s in the cluster has another secret than the server's token file; delete it with `kone token delete %s` or restore the token file", t.ID, t.ID)
	case string(s.Data[bootstrapapi.BootstrapTokenExtraGroupsKey]) != o.groups():
		s.Data[bootstrapapi.BootstrapTokenExtraGroupsKey] = []byte(o.groups())
		if _, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update the groups of token %s: %w", t.ID, err)
		}
	}
	return nil
}

// List returns the bootstrap tokens in the cluster, sorted by id.
func List(ctx context.Context, cs kubernetes.Interface) ([]Info, error) {
	secrets, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{
		FieldSelector: "type=" + string(bootstrapapi.SecretTypeBootstrapToken),
	})
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	var out []Info
	for _, s := range secrets.Items {
		info := Info{
			ID:          string(s.Data[bootstrapapi.BootstrapTokenIDKey]),
			Description: string(s.Data[bootstrapapi.BootstrapTokenDescriptionKey]),
			Groups:      string(s.Data[bootstrapapi.BootstrapTokenExtraGroupsKey]),
		}
		if exp := string(s.Data[bootstrapapi.BootstrapTokenExpirationKey]); exp != "" {
			info.Expires, _ = time.Parse(time.RFC3339, exp)
		}
		for k, v := range s.Data {
			if u, ok := strings.CutPrefix(k, bootstrapapi.BootstrapTokenUsagePrefix); ok && string(v) == "true" {
				info.Usages = append(info.Usages, u)
			}
		}
		sort.Strings(info.Usages)
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Delete removes the token with the given id (or full token).
func Delete(ctx context.Context, cs kubernetes.Interface, id string) error {
	if t, err := Parse(id); err == nil {
		id = t.ID
	}
	if !bootstraputil.IsValidBootstrapTokenID(id) {
		return fmt.Errorf("%q is not a token id: expected 6 characters of a-z and 0-9, as `kone token list` shows", id)
	}
	err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, bootstraputil.BootstrapTokenSecretName(id), metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("no token with id %s; `kone token list` shows the tokens", id)
	}
	if err != nil {
		return fmt.Errorf("delete token %s: %w", id, err)
	}
	return nil
}

// ClusterInfo is the cluster that cluster-info (as PublishClusterInfo wrote it) gives clients:
// the apiserver's URL and the CA certificate, in PEM.
func ClusterInfo(cm *corev1.ConfigMap) (*clientcmdapi.Cluster, error) {
	cfg, err := clientcmd.Load([]byte(cm.Data[bootstrapapi.KubeConfigKey]))
	if err != nil || len(cfg.Clusters) != 1 {
		return nil, errors.New("cluster-info holds no kubeconfig with one cluster")
	}
	var cluster *clientcmdapi.Cluster
	for _, c := range cfg.Clusters {
		cluster = c
	}
	return cluster, nil
}

// PublishClusterInfo writes kube-public/cluster-info, signed for the tokens given. Anonymous
// clients may read it, and only it (manifests/rbac.yaml): a joining node reads it before it has
// any credential. The controller-manager's bootstrapsigner signs it for every other signing
// token, and would sign it for these too, but only some seconds after it starts; signing here
// means a node can join as soon as the server is ready.
func PublishClusterInfo(ctx context.Context, cs kubernetes.Interface, kubeconfig []byte, signers ...Token) error {
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: bootstrapapi.ConfigMapClusterInfo, Namespace: metav1.NamespacePublic},
		Data:       map[string]string{bootstrapapi.KubeConfigKey: string(kubeconfig)},
	}
	for _, tok := range signers {
		sig, err := jws.ComputeDetachedSignature(string(kubeconfig), tok.ID, tok.Secret)
		if err != nil {
			return fmt.Errorf("sign cluster-info: %w", err)
		}
		cm.Data[bootstrapapi.JWSSignatureKeyPrefix+tok.ID] = sig
	}
	cms := cs.CoreV1().ConfigMaps(metav1.NamespacePublic)
	// Other writers race this one: the controller-manager's bootstrapsigner signing for other
	// tokens, and another server publishing the same CAs after a rotate-ca. Read again and retry.
	raced := func(err error) bool { return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) }
	err := retry.OnError(retry.DefaultRetry, raced, func() error {
		existing, err := cms.Get(ctx, cm.Name, metav1.GetOptions{})
		changed := func() bool {
			for k, v := range cm.Data {
				if existing.Data[k] != v {
					return true
				}
			}
			return false
		}
		switch {
		case apierrors.IsNotFound(err):
			_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
		case err == nil && changed():
			// Other tokens' signatures stay; the signer re-signs changed content for them.
			if existing.Data == nil {
				existing.Data = map[string]string{}
			}
			for k, v := range cm.Data {
				existing.Data[k] = v
			}
			_, err = cms.Update(ctx, existing, metav1.UpdateOptions{})
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("publish cluster-info: %w", err)
	}
	return nil
}
