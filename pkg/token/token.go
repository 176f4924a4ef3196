package token

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"

	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	"github.com/kone-dev/kone/pkg/pki"
)

const (
	prefix           = "K10"
	separator        = "::"
	minPassphraseLen = 16
	// token charset of bootstrap tokens, [a-z0-9]
	charset = "abcdefghijklmnopqrstuvwxyz0123456789"
)

var (
	bootstrapPattern = regexp.MustCompile(`^([a-z0-9]{6})\.([a-z0-9]{16})$`)
	hashPattern      = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Token is a parsed join token. CAHash is empty when the token does not pin the CA.
type Token struct {
	CAHash string
	ID     string
	Secret string
}

// Generate returns a new random bootstrap token with no CA hash.
func Generate() (Token, error) {
	s, err := bootstraputil.GenerateBootstrapToken()
	if err != nil {
		return Token{}, fmt.Errorf("generate token: %w", err)
	}
	id, secret, _ := strings.Cut(s, ".")
	return Token{ID: id, Secret: secret}, nil
}

// Parse reads a token in any of the forms the user may give: K10<hash>::<id>.<secret>,
// <id>.<secret>, or a passphrase.
func Parse(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Token{}, errors.New("token is empty")
	}
	if rest, ok := strings.CutPrefix(s, prefix); ok && strings.Contains(rest, separator) {
		hash, cred, _ := strings.Cut(rest, separator)
		if !hashPattern.MatchString(hash) {
			return Token{}, errors.New("token starts with K10 but the CA hash after it is not 64 lower-case hex digits; copy the whole token from the server's data dir (server/token)")
		}
		m := bootstrapPattern.FindStringSubmatch(cred)
		if m == nil {
			return Token{}, errors.New("token is malformed: after K10<CA hash>:: it must have <id>.<secret>, 6 and 16 characters of a-z and 0-9")
		}
		return Token{CAHash: hash, ID: m[1], Secret: m[2]}, nil
	}
	return parseCredential(s)
}

func parseCredential(s string) (Token, error) {
	if m := bootstrapPattern.FindStringSubmatch(s); m != nil {
		return Token{ID: m[1], Secret: m[2]}, nil
	}
	if strings.Contains(s, separator) {
		return Token{}, errors.New("token is malformed: expected K10<CA hash>::<id>.<secret>")
	}
	if len(s) < minPassphraseLen {
		return Token{}, fmt.Errorf("token is too short: give a bootstrap token <6 chars>.<16 chars> of a-z and 0-9, or a passphrase of at least %d characters", minPassphraseLen)
	}
	return fromPassphrase(s), nil
}

// fromPassphrase derives a bootstrap token from a passphrase, identically on every machine.
func fromPassphrase(p string) Token {
	sum := sha256.Sum256([]byte("kone join token\x00" + p))
	var b strings.Builder
	for _, c := range sum[:22] {
		b.WriteByte(charset[int(c)%len(charset)])
	}
	s := b.String()
	return Token{ID: s[:6], Secret: s[6:]}
}

// Bootstrap is the <id>.<secret> part, as a Kubernetes client sends it.
func (t Token) Bootstrap() string { return bootstraputil.TokenFromIDAndSecret(t.ID, t.Secret) }

// String is the full token. It holds a secret: never log it.
func (t Token) String() string {
	if t.CAHash == "" {
		return t.Bootstrap()
	}
	return prefix + t.CAHash + separator + t.Bootstrap()
}

// File is the token as a token file holds it, and as servers publish it to each other.
func (t Token) File() []byte { return []byte(t.String() + "\n") }

// WithCA returns t pinned to the CA certificate in caPEM.
func (t Token) WithCA(caPEM []byte) (Token, error) {
	hash, err := CAHash(caPEM)
	if err != nil {
		return Token{}, err
	}
	t.CAHash = hash
	return t, nil
}

// CheckCA tells whether the token's pin vouches for the CA in caPEM (TrustedCA).
func (t Token) CheckCA(caPEM []byte) error {
	_, err := t.TrustedCA(caPEM)
	return err
}

// TrustedCA is what of caPEM, a CA's file from a server, the token's pin vouches for
// (pki.Vouched): the CA itself when the pin names it; after a rotate-ca, when the pin names the
// CA it replaced, the CA with its cross-signature and the old CA. A token without a hash pins
// nothing: caPEM is taken as it is, and the caller decides whether to allow that.
func (t Token) TrustedCA(caPEM []byte) ([]byte, error) {
	if t.CAHash == "" {
		return caPEM, nil
	}
	trusted, err := pki.Vouched(caPEM, func(c *x509.Certificate) bool {
		return subtle.ConstantTimeCompare([]byte(certHash(c)), []byte(t.CAHash)) == 1
	})
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if len(trusted) == 0 {
		hash, _ := CAHash(caPEM)
		return nil, fmt.Errorf("the server's CA certificate (sha256 %s) does not match the hash in the token (%s): the token is for another cluster, pins a CA that the cluster no longer trusts (replaced by rotate-ca), or something is intercepting the connection", hash, t.CAHash)
	}
	return pki.EncodeCerts(trusted), nil
}

// CAHash is the hex SHA-256 of the DER bytes of the first certificate in caPEM.
func CAHash(caPEM []byte) (string, error) {
	cert, err := pki.ParseCert(caPEM)
	if err != nil {
		return "", fmt.Errorf("CA certificate: %w", err)
	}
	return certHash(cert), nil
}

func certHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
