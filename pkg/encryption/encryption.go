// Package encryption keeps the cluster's Secrets encrypted at rest: the apiserver's
// EncryptionConfiguration with kone's keys, the rewrite that brings every stored Secret to the
// current key, and what etcd holds, key by key.
//
// kone uses secretbox (XSalsa20 and Poly1305), not AES-CBC: it is authenticated, so a changed
// value in etcd is refused instead of decrypted to garbage, it has none of CBC's padding-oracle
// weakness (upstream advises against aescbc), and it is fast on the ARM boards of the edge that
// lack AES instructions. The keys live in the configuration file itself, mode 0600 in the
// server's data dir, as the apiserver reads them.
package encryption

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"sigs.k8s.io/yaml"

	"github.com/kone-dev/kone/pkg/datadir"
	"github.com/kone-dev/kone/pkg/pki"
)

// Identity names plain text, the writer when encryption is off.
const Identity = "identity"

const keyPrefix = "kone-"

// Config is kone's encryption configuration: the keys, newest first, and whether new writes are
// encrypted. With encryption off the keys stay, so that what was encrypted still reads.
type Config struct {
	Keys    []apiserverv1.Key
	Enabled bool
}

// Writer is what the apiserver writes Secrets with: the newest key, or Identity.
func (c Config) Writer() string {
	if !c.Enabled || len(c.Keys) == 0 {
		return Identity
	}
	return c.Keys[0].Name
}

// KeyNames are the names of the keys, newest first.
func (c Config) KeyNames() []string {
	names := make([]string, len(c.Keys))
	for i, k := range c.Keys {
		names[i] = k.Name
	}
	return names
}

// Load reads the configuration kone wrote to path.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("secrets encryption configuration: %w", err)
	}
	return Parse(data, path)
}

// Parse reads a configuration kone wrote, from source (a file's name, or where it came from).
func Parse(data []byte, source string) (Config, error) {
	var file apiserverv1.EncryptionConfiguration
	if err := yaml.UnmarshalStrict(data, &file); err != nil {
		return Config{}, fmt.Errorf("secrets encryption configuration %s: %w", source, err)
	}
	var c Config
	for _, r := range file.Resources {
		if !slices.Equal(r.Resources, []string{"secrets"}) {
			continue
		}
		for i, p := range r.Providers {
			switch {
			case p.Secretbox != nil:
				c.Keys = p.Secretbox.Keys
				c.Enabled = i == 0
			case p.Identity == nil:
				return Config{}, fmt.Errorf("secrets encryption configuration %s: a provider kone does not write; restore the file from a backup", source)
			}
		}
	}
	if len(c.Keys) == 0 {
		return Config{}, fmt.Errorf("secrets encryption configuration %s holds no key; restore it from a backup (without its keys, the Secrets they encrypted are lost)", source)
	}
	return c, nil
}

// Lock keeps the configuration at path to one writer at a time, a starting server or a key
// rotation: two of them interleaved could drop a key that the other has made the writer. It
// does not wait; unlock releases it, and so does the process's end.
func Lock(path string) (unlock func(), err error) {
	unlock, err = datadir.LockFile(path+".lock", false)
	if errors.Is(err, datadir.ErrBusy) {
		return nil, fmt.Errorf("the secrets encryption configuration %s is being changed (a `kone secrets-encrypt rotate-keys` is running): wait for it to finish", path)
	}
	if err != nil {
		return nil, fmt.Errorf("the secrets encryption configuration: %w", err)
	}
	return unlock, nil
}

// Ensure makes sure path holds kone's configuration with encryption on or off: the first time
// with a new key, afterwards with the keys it has. It returns the configuration.
func Ensure(path string, enabled bool) (Config, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Config{}, err
	}
	unlock, err := Lock(path)
	if err != nil {
		return Config{}, err
	}
	defer unlock()
	c, err := Load(path)
	if errors.Is(err, os.ErrNotExist) {
		c = Config{}
		if c, err = c.WithNewKey(); err != nil {
			return Config{}, err
		}
	} else if err != nil {
		return Config{}, err
	}
	c.Enabled = enabled
	return c, c.Write(path)
}

// WithNewKey returns c with a new random key first, which the apiserver then writes with.
func (c Config) WithNewKey() (Config, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return Config{}, err
	}
	next := 1
	for _, k := range c.Keys {
		if n, err := strconv.Atoi(strings.TrimPrefix(k.Name, keyPrefix)); err == nil && n >= next {
			next = n + 1
		}
	}
	key := apiserverv1.Key{Name: keyPrefix + strconv.Itoa(next), Secret: base64.StdEncoding.EncodeToString(secret)}
	c.Keys = append([]apiserverv1.Key{key}, c.Keys...)
	return c, nil
}

// WithReader returns c with its newest key moved last, where the apiserver reads with it but
// does not write with it yet: every server of a cluster must be able to read a key before any
// writes with it.
func (c Config) WithReader() Config {
	if len(c.Keys) < 2 {
		return c
	}
	c.Keys = append(slices.Clone(c.Keys[1:]), c.Keys[0])
	return c
}

// Bytes is c as the apiserver reads it from its file.
func (c Config) Bytes() ([]byte, error) {
	providers := []apiserverv1.ProviderConfiguration{
		{Secretbox: &apiserverv1.SecretboxConfiguration{Keys: c.Keys}},
		{Identity: &apiserverv1.IdentityConfiguration{}},
	}
	if !c.Enabled {
		slices.Reverse(providers)
	}
	return yaml.Marshal(apiserverv1.EncryptionConfiguration{
		TypeMeta:  metav1.TypeMeta{APIVersion: apiserverv1.SchemeGroupVersion.String(), Kind: "EncryptionConfiguration"},
		Resources: []apiserverv1.ResourceConfiguration{{Resources: []string{"secrets"}, Providers: providers}},
	})
}

// Write writes c to path, unless it holds that already: the apiserver reloads the file when it
// changes.
func (c Config) Write(path string) error {
	data, err := c.Bytes()
	if err != nil {
		return err
	}
	return WriteFile(path, data)
}

// WriteFile writes a configuration's bytes to path, unless it holds them already.
func WriteFile(path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	return pki.WriteFile(path, data, 0o600)
}

// Hash is how the apiserver names the configuration it has loaded, in its metric
// apiserver_encryption_config_controller_last_config_info: the sha256 of the file.
func Hash(data []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(data)) }

// storedWith says which key encrypted a value as etcd holds it, or Identity for plain text.
func storedWith(value []byte) string {
	const prefix = "k8s:enc:secretbox:v1:"
	rest, ok := bytes.CutPrefix(value, []byte(prefix))
	if !ok {
		return Identity
	}
	name, _, _ := bytes.Cut(rest, []byte(":"))
	return string(name)
}
