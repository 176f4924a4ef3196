package join

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/kone-dev/kone/pkg/pki"
)

// ProofAnnotation carries a node's proof of its secret on each certificate request it makes.
const ProofAnnotation = "kone.dev/node-proof"

// NodeSecret is what makes a node's name its own (k3s calls it the node password): an Ed25519
// key created at the node's first join and kept, mode 0600, in its data dir. A node proves it
// by signing each certificate request; the server keeps only the hash of the public half. A
// signature proves the secret without revealing it, which matters because every joining node
// may read every certificate request (upstream's system:node-bootstrapper role): a password
// sent in a request, or a keyed hash the server would have to store, could be replayed or
// stolen from there.
type NodeSecret struct{ key ed25519.PrivateKey }

// LoadOrCreateSecret reads the node's secret from path, or creates it there (256 random bits)
// when there is none. A file that is there but does not parse is an error, never replaced:
// replacing it would lose the node's name.
func LoadOrCreateSecret(path string) (NodeSecret, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return NodeSecret{}, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return NodeSecret{}, err
		}
		if err := pki.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return NodeSecret{}, fmt.Errorf("node secret: %w", err)
		}
		return NodeSecret{key: key}, nil
	}
	if err != nil {
		return NodeSecret{}, fmt.Errorf("node secret: %w", err)
	}
	block, _ := pem.Decode(data)
	if block != nil {
		if parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
			if key, ok := parsed.(ed25519.PrivateKey); ok {
				return NodeSecret{key: key}, nil
			}
		}
	}
	return NodeSecret{}, fmt.Errorf("node secret %s is damaged; if this machine's node still exists, delete it (kubectl delete node NAME) and remove the file to join anew", path)
}

// Hash is what the server keeps of the secret: the SHA-256 of its public key.
func (s NodeSecret) Hash() string { return keyHash(s.key.Public().(ed25519.PublicKey)) }

func keyHash(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:])
}

// Prove signs one certificate request: the signer and node name it is for and its exact bytes,
// so that a copied proof is worth nothing for any other request.
func (s NodeSecret) Prove(signer, nodeName string, request []byte) string {
	pub := s.key.Public().(ed25519.PublicKey)
	sig := ed25519.Sign(s.key, proofMessage(signer, nodeName, request))
	return base64.RawURLEncoding.EncodeToString(pub) + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// verifyProof checks a request's proof and returns the hash of the key that made it.
func verifyProof(proof, signer, nodeName string, request []byte) (string, error) {
	if proof == "" {
		return "", errors.New("carries no proof of the node's secret")
	}
	p, s, ok := strings.Cut(proof, ".")
	pub, perr := base64.RawURLEncoding.DecodeString(p)
	sig, serr := base64.RawURLEncoding.DecodeString(s)
	if !ok || perr != nil || serr != nil || len(pub) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
		return "", errors.New("carries a malformed proof of the node's secret")
	}
	if !ed25519.Verify(pub, proofMessage(signer, nodeName, request), sig) {
		return "", errors.New("carries a proof that does not match the request")
	}
	return keyHash(pub), nil
}

func proofMessage(signer, nodeName string, request []byte) []byte {
	return []byte("kone node proof\x00" + signer + "\x00" + nodeName + "\x00" + string(request))
}
