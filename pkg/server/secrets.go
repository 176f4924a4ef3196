package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/encryption"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/probe"
)

// adminConfig is the server's own admin client of its apiserver, on loopback.
func adminConfig(cfg *config.Config, ca *pki.Cluster) *rest.Config {
	return &rest.Config{Host: "https://" + net.JoinHostPort("127.0.0.1", fmt.Sprint(cfg.HTTPSPort)),
		TLSClientConfig: rest.TLSClientConfig{CAFile: ca.ServerCA, CertFile: ca.Admin.Cert, KeyFile: ca.Admin.Key}}
}

func etcdOf(cfg *config.Config, ca *pki.Cluster) encryption.Etcd {
	return encryption.Etcd{URL: cfg.EtcdURL(), CA: ca.EtcdServerCA, Client: ca.APIServerEtcd}
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

// RotateSecretsKeys gives the running server on this machine a new key, stores every Secret
// with it, and retires the old keys, while the cluster serves throughout.
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
	cs, err := kubernetes.NewForConfig(adminConfig(cfg, ca))
	if err != nil {
		return err
	}
	store := etcdOf(cfg, ca)
	if _, err := store.Stored(ctx); err != nil {
		return err
	}

	next, err := c.WithNewKey()
	if err != nil {
		return err
	}
	if err := next.Write(path); err != nil {
		return err
	}
	key := next.Writer()
	fmt.Fprintf(w, "Added key %s; waiting for the apiserver to use it (it reads its configuration once a minute)\n", key)
	if err := waitForWriter(ctx, cs, store, key); err != nil {
		return fmt.Errorf("%w; the old keys are kept, so every Secret still reads", err)
	}
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
	retired := next.KeyNames()[1:]
	next.Keys = next.Keys[:1]
	if err := next.Write(path); err != nil {
		return err
	}
	if err := pki.WriteFile(cfg.EncryptionDone(), []byte(key+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(w, "Retired %s; %s is the only key\n", strings.Join(retired, ", "), key)
	return nil
}

func sumOf(counts map[string]int) int {
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}

// waitForWriter writes a probe Secret until etcd holds it encrypted with key, which shows that
// the apiserver has loaded its new configuration.
func waitForWriter(ctx context.Context, cs kubernetes.Interface, store encryption.Etcd, key string) error {
	secrets := cs.CoreV1().Secrets(metav1.NamespaceSystem)
	probeSecret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{GenerateName: "kone-encryption-probe-"}}
	created, err := secrets.Create(ctx, probeSecret, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("write a probe Secret: %w", err)
	}
	defer func() { _ = secrets.Delete(context.WithoutCancel(ctx), created.Name, metav1.DeleteOptions{}) }()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	return probe.Until(ctx, 2*time.Second, func() error {
		created.StringData = map[string]string{"at": time.Now().String()}
		updated, err := secrets.Update(ctx, created, metav1.UpdateOptions{})
		if err != nil {
			return err
		}
		created = updated
		with, err := store.StoredWith(ctx, metav1.NamespaceSystem, created.Name)
		if err == nil && with != key {
			err = fmt.Errorf("the apiserver still writes with %s", with)
		}
		return err
	})
}
