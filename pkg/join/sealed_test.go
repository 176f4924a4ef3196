package join

import (
	"bytes"
	"errors"
	"testing"

	"github.com/kone-dev/kone/pkg/token"
)

func TestSealedServerData(t *testing.T) {
	tok, err := token.Generate()
	if err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{"server-ca.key": []byte("the CA's key"), ServerTokenKey: tok.File()}
	value, err := SealServerData(tok, data)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(value, []byte("the CA's key")) {
		t.Fatal("the sealed data holds the plain text")
	}
	// The token in its other forms opens it: the passphrase-free credential alone, and with a CA pin.
	bare, err := token.Parse(tok.Bootstrap())
	if err != nil {
		t.Fatal(err)
	}
	got, err := OpenServerData(bare, value)
	if err != nil {
		t.Fatal(err)
	}
	if string(got["server-ca.key"]) != "the CA's key" || len(got) != 2 {
		t.Errorf("opened %q", got)
	}

	other, err := token.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenServerData(other, value); !errors.Is(err, ErrWrongToken) {
		t.Errorf("another token: %v, want ErrWrongToken", err)
	}
	flipped := bytes.Clone(value)
	i := bytes.Index(flipped, []byte(`"data":"`)) + len(`"data":"`)
	flipped[i] ^= 1
	if _, err := OpenServerData(tok, flipped); err == nil {
		t.Error("a changed ciphertext opened")
	}
	if _, err := OpenServerData(tok, value[:len(value)/2]); err == nil || errors.Is(err, ErrWrongToken) {
		t.Errorf("a cut value: %v, want an error that says it is damaged", err)
	}
}
