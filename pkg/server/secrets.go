package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/encryption"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/loadbalancer"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/probe"
)

// adminConfig is the server's own admin client of its apiserver, on loopback.
func adminConfig(cfg *config.Config, ca *pki.Cluster) *rest.Config {
	return &rest.Config{Host: "https://" + net.JoinHostPort("127.0.0.1", fmt.Sprint(cfg.HTTPSPort)),
		TLSClientConfig: rest.TLSClientConfig{CAFile: ca.ServerCA, CertFile: ca.Admin.Cert, KeyFile: ca.Admin.Key}}
}

func etcdOf(cfg *config.Config, ca *pki.Cluster) encryption.Etcd {
	return encryption.Etcd{Client: etcdClient(cfg, ca)}
}

// SecretsStatus prints the keys of the running server on this machine and how its stored
// Secrets are encrypted, read from etcd itself.
func SecretsStatus(ctx context.Context, cfg *config.Config, w io.Writer) error {
	c, err := encryption.Load(cfg.EncryptionConfig())
	if err != nil {
		return err
	}
	stored, err := etcdOf(cfg, pki.Layout(cfg.TLSDir())).Stored(ctx)
	if err != nil {
		return err
	}
	state := "on (secretbox)"
	if !c.Enabled {
		state = "off (--secrets-encryption=false): new Secrets are stored in plain text"
	}
	fmt.Fprintf(w, "Encryption at rest: %s\n", state)
	keys := c.KeyNames()
	if c.Enabled {
		keys[0] += " (current)"
	}
	fmt.Fprintf(w, "Keys: %s\n", strings.Join(keys, ", "))
	total, current := sumOf(stored), stored[c.Writer()]
	var by []string
	for with, n := range stored {
		name := with
		if with == encryption.Identity {
			name = "plain text"
		}
		by = append(by, fmt.Sprintf("%d with %s", n, name))
	}
	slices.Sort(by)
	fmt.Fprintf(w, "Secrets: %d (%s)\n", total, strings.Join(by, ", "))
	switch {
	case current == total && c.Enabled:
		fmt.Fprintf(w, "Every Secret is encrypted with the current key, %s.\n", c.Writer())
	case current == total:
		fmt.Fprintln(w, "Every Secret is stored in plain text.")
	default:
		fmt.Fprintf(w, "%d Secrets are not stored with the current %s: the server's next start, or `kone secrets-encrypt rotate-keys`, stores them anew.\n",
			total-current, c.Writer())
	}
	return nil
}

// RotateSecretsKeys gives the cluster a new key, stores every Secret with it, and retires the
// old keys, while the cluster serves throughout. It runs on a server and reaches all of them:
// each follows the cluster's configuration (follower), and every apiserver reads with a new key
// before any writes with it, so that none meets a Secret it cannot read.
func RotateSecretsKeys(ctx context.Context, cfg *config.Config, w io.Writer) error {
	path := cfg.EncryptionConfig()
	unlock, err := encryption.Lock(path)
	if err != nil {
		return err
	}
	defer unlock()
	c, err := encryption.Load(path)
	if err != nil {
		return err
	}
	if !c.Enabled {
		return fmt.Errorf("secrets encryption is off on this server (--secrets-encryption=false): there is no key in use to rotate")
	}
	ca := pki.Layout(cfg.TLSDir())
	admin := adminConfig(cfg, ca)
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return err
	}
	store := etcdOf(cfg, ca)
	if _, err := store.Stored(ctx); err != nil {
		return err
	}
	apiservers, err := everyAPIServer(ctx, cs, store)
	if err != nil {
		return err
	}
	// A rotation starts from the cluster's configuration, and each step replaces the one before
	// it: a rotation run on another server meanwhile makes this one stop, not both win.
	prev, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	cluster, err := join.FetchServerData(ctx, cs)
	if err != nil {
		return err
	}
	if !bytes.Equal(cluster[join.EncryptionConfigKey], prev) {
		return errors.New("this server's secrets-encryption configuration is not the cluster's yet (a rotation on another server is under way, or this server has yet to follow one): try again in a minute")
	}
	// Each step is published to every server and waited for; stopped half-way, every Secret
	// still reads everywhere, and a new rotation starts from where this one stopped.
	publish := func(c encryption.Config) error {
		data, err := c.Bytes()
		if err != nil {
			return err
		}
		if err := join.ReplaceServerData(ctx, cs, map[string][]byte{join.EncryptionConfigKey: data}, func(_ string, stored []byte) bool { return bytes.Equal(stored, prev) }); err != nil {
			return fmt.Errorf("secrets-encryption configuration: %w", err)
		}
		prev = data
		if err := encryption.WriteFile(path, data); err != nil {
			return err
		}
		if err := waitForConfig(ctx, admin, apiservers, encryption.Hash(data)); err != nil {
			return fmt.Errorf("%w; every Secret still reads, and rotate-keys goes on from this step when run again", err)
		}
		return nil
	}
	next, err := c.WithNewKey()
	if err != nil {
		return err
	}
	key := next.Writer()
	fmt.Fprintf(w, "Waiting for %d apiservers to load each step (each reads its configuration once a minute)\n", len(apiservers))
	if len(apiservers) > 1 {
		if err := publish(next.WithReader()); err != nil {
			return err
		}
		fmt.Fprintf(w, "Every server reads with the new key %s\n", key)
	}
	if err := publish(next); err != nil {
		return err
	}
	fmt.Fprintf(w, "Every server writes with %s\n", key)
	// Until every Secret is stored anew, the old keys are still needed to read some.
	for try := 0; ; try++ {
		n, err := encryption.Rewrite(ctx, cs)
		if err != nil {
			return err
		}
		stored, err := store.Stored(ctx)
		if err != nil {
			return err
		}
		if stored[key] == sumOf(stored) {
			fmt.Fprintf(w, "Stored %d Secrets with %s\n", n, key)
			break
		}
		if try == 2 {
			return fmt.Errorf("%d Secrets are still not stored with %s after three rewrites; the old keys are kept", sumOf(stored)-stored[key], key)
		}
	}
	// A server that joined meanwhile may have started with the old writer, and would store
	// Secrets that only the old keys read.
	now, err := everyAPIServer(ctx, cs, store)
	if err != nil {
		return err
	}
	if !slices.Equal(slices.Sorted(slices.Values(now)), slices.Sorted(slices.Values(apiservers))) {
		return fmt.Errorf("the cluster's servers changed during the rotation (%s, now %s): every Secret reads with %s, but the old keys are kept; run rotate-keys again to retire them",
			strings.Join(apiservers, ", "), strings.Join(now, ", "), key)
	}
	retired := next.KeyNames()[1:]
	next.Keys = next.Keys[:1]
	if err := publish(next); err != nil {
		return err
	}
	if err := pki.WriteFile(cfg.EncryptionDone(), []byte(key+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(w, "Retired %s; %s is the only key\n", strings.Join(retired, ", "), key)
	return nil
}

// everyAPIServer is the address of every server's apiserver, as the kubernetes Service's
// endpoints list them, once each etcd member has one: a rotation needs every server, and one
// that is down or still joining would miss it.
func everyAPIServer(ctx context.Context, cs kubernetes.Interface, store encryption.Etcd) ([]string, error) {
	voters, learners, err := store.Servers(ctx)
	if err != nil {
		return nil, err
	}
	if len(learners) > 0 {
		return nil, fmt.Errorf("a server is joining the cluster (%s): rotate once it has joined", strings.Join(learners, ", "))
	}
	serving, err := apiserverEndpoints(ctx, cs)
	if err != nil {
		return nil, err
	}
	if len(serving) != len(voters) {
		return nil, fmt.Errorf("the cluster has %d servers (%s) but %d apiservers serve (%s): every server must run during a key rotation; start the others, or remove those that are gone (kubectl delete node)",
			len(voters), strings.Join(voters, ", "), len(serving), strings.Join(serving, ", "))
	}
	return serving, nil
}

// apiserverEndpoints are the addresses (host:port) the kubernetes Service sends to.
func apiserverEndpoints(ctx context.Context, cs kubernetes.Interface) ([]string, error) {
	list, err := cs.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kubernetes"})
	if err != nil {
		return nil, fmt.Errorf("list the apiservers: %w", err)
	}
	all := make([]*discoveryv1.EndpointSlice, len(list.Items))
	for i := range list.Items {
		all[i] = &list.Items[i]
	}
	return loadbalancer.APIServers(all), nil
}

// waitForConfig waits until every apiserver has loaded the configuration with hash, as it says
// in its metrics.
func waitForConfig(ctx context.Context, admin *rest.Config, apiservers []string, hash string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for _, addr := range apiservers {
		rc := rest.CopyConfig(admin)
		rc.Host = "https://" + addr
		cs, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return err
		}
		err = probe.Until(ctx, 2*time.Second, func() error {
			metrics, err := cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
			if err != nil {
				return err
			}
			if !loadedConfig(metrics, hash) {
				return errors.New("it has not loaded the new configuration")
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("apiserver %s: %w", addr, err)
		}
	}
	return nil
}

// loadedConfig reports whether an apiserver's metrics say that it uses the encryption
// configuration with hash.
func loadedConfig(metrics []byte, hash string) bool {
	for line := range strings.Lines(string(metrics)) {
		labels, ok := strings.CutPrefix(line, "apiserver_encryption_config_controller_last_config_info{")
		// The label hash, not apiserver_id_hash.
		if ok && (strings.HasPrefix(labels, `hash="`+hash+`"`) || strings.Contains(labels, `,hash="`+hash+`"`)) {
			return true
		}
	}
	return false
}

func sumOf(counts map[string]int) int {
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}
