package encryption

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kone-dev/kone/pkg/etcd"
)

// secretsPrefix is where the apiserver keeps Secrets in etcd (its default --etcd-prefix).
const secretsPrefix = "/registry/secrets/"

// Rewrite writes every Secret back unchanged through the apiserver, which stores each one it
// holds with anything but its current writer anew with that writer (a no-op update of a value
// that is up to date writes nothing). It returns how many Secrets there were; a Secret that
// cannot be written (a webhook that refuses it) does not stop the others.
func Rewrite(ctx context.Context, cs kubernetes.Interface) (int, error) {
	secrets := cs.CoreV1().Secrets(metav1.NamespaceAll)
	n, cont := 0, ""
	var failed []string
	var first error
	for {
		list, err := secrets.List(ctx, metav1.ListOptions{Limit: 250, Continue: cont})
		if err != nil {
			return n, fmt.Errorf("list Secrets: %w", err)
		}
		for i := range list.Items {
			s := &list.Items[i]
			_, err := cs.CoreV1().Secrets(s.Namespace).Update(ctx, s, metav1.UpdateOptions{})
			// Changed or deleted since the list: whoever did it wrote with the current writer.
			if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
				failed = append(failed, s.Namespace+"/"+s.Name)
				if first == nil {
					first = err
				}
			}
			n++
		}
		if cont = list.Continue; cont == "" {
			break
		}
	}
	if len(failed) > 0 {
		return n, fmt.Errorf("%d of %d Secrets could not be stored anew (%s): %w", len(failed), n, strings.Join(failed[:min(len(failed), 5)], ", "), first)
	}
	return n, nil
}

// Etcd is how to reach the server's etcd as the apiserver does.
type Etcd struct{ etcd.Client }

// Stored counts the Secrets in etcd by what they are stored with: a key's name, or Identity.
func (e Etcd) Stored(ctx context.Context) (map[string]int, error) {
	resp, err := e.get(ctx, secretsPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	count := map[string]int{}
	for _, kv := range resp.Kvs {
		count[storedWith(kv.Value)]++
	}
	return count, nil
}

func (e Etcd) get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	cli, err := e.Dial()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key, opts...)
	if err != nil {
		return nil, fmt.Errorf("read Secrets from etcd at %s: %w; is the server running?", e.URL, err)
	}
	return resp, nil
}
