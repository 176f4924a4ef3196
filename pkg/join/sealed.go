package join

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/kone-dev/kone/pkg/token"
)

// SealedServerDataKey is the etcd key of the server data sealed with the server token. It lies
// outside the apiserver's keys, so no API request can read it, and it travels in every etcd
// snapshot: with the token, a snapshot alone restores the cluster on a machine that has none of
// its files (k3s keeps its bootstrap data in etcd the same way).
const SealedServerDataKey = "/kone/bootstrap/server-data"

// sealIterations is PBKDF2-SHA256's work factor for the key, some 0.2 s on an edge board, once
// per change. A token that kone made has some 80 random bits, beyond any guessing. A passphrase
// given as --token is not protected by it: the token's id, which every snapshot holds in clear
// (the bootstrap-token Secret's name), is cut from one SHA-256 of the passphrase, so wrong
// guesses are ruled out at SHA-256's speed. README says so.
const sealIterations = 600_000

// maxSealIterations bounds the work factor read from a snapshot: a crafted one would otherwise
// keep a restore busy for hours.
const maxSealIterations = 10 * sealIterations

type sealed struct {
	Version    int    `json:"version"`
	Iterations int    `json:"iterations"`
	Salt       []byte `json:"salt"`
	Nonce      []byte `json:"nonce"`
	Data       []byte `json:"data"`
}

// ErrWrongToken is the answer to opening sealed server data with another token than the one it
// was sealed with.
var ErrWrongToken = errors.New("the token does not open the server data sealed in it: give the server token the cluster had when the snapshot was taken")

// SealServerData encrypts data (AES-256-GCM) with a key derived from tok's bootstrap token, the
// part every form of the server token has.
func SealServerData(tok token.Token, data map[string][]byte) ([]byte, error) {
	plain, err := json.Marshal(data)
	if err != nil {
		return nil, err
	}
	s := sealed{Version: 1, Iterations: sealIterations, Salt: make([]byte, 16)}
	if _, err := rand.Read(s.Salt); err != nil {
		return nil, err
	}
	aead, err := sealCipher(tok, s)
	if err != nil {
		return nil, err
	}
	s.Nonce = make([]byte, aead.NonceSize())
	if _, err := rand.Read(s.Nonce); err != nil {
		return nil, err
	}
	s.Data = aead.Seal(nil, s.Nonce, plain, []byte(SealedServerDataKey))
	return json.Marshal(s)
}

// OpenServerData decrypts what SealServerData sealed with the same token.
func OpenServerData(tok token.Token, value []byte) (map[string][]byte, error) {
	var s sealed
	if err := json.Unmarshal(value, &s); err != nil {
		return nil, fmt.Errorf("the sealed server data is damaged: %w", err)
	}
	if s.Version != 1 {
		return nil, fmt.Errorf("the sealed server data has version %d, which this kone cannot read; restore with the kone version that took the snapshot", s.Version)
	}
	aead, err := sealCipher(tok, s)
	if err != nil {
		return nil, err
	}
	if len(s.Nonce) != aead.NonceSize() {
		return nil, errors.New("the sealed server data is damaged: its nonce has the wrong size")
	}
	plain, err := aead.Open(nil, s.Nonce, s.Data, []byte(SealedServerDataKey))
	if err != nil {
		return nil, ErrWrongToken
	}
	var data map[string][]byte
	if err := json.Unmarshal(plain, &data); err != nil {
		return nil, fmt.Errorf("the sealed server data is damaged: %w", err)
	}
	return data, nil
}

func sealCipher(tok token.Token, s sealed) (cipher.AEAD, error) {
	if s.Iterations < 1 || s.Iterations > maxSealIterations || len(s.Salt) == 0 || len(s.Salt) > 64 {
		return nil, errors.New("the sealed server data is damaged: its key derivation parameters are out of bounds")
	}
	key, err := pbkdf2.Key(sha256.New, tok.Bootstrap(), s.Salt, s.Iterations, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
