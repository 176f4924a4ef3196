package join

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"k8s.io/client-go/kubernetes/fake"
)

// The first server's data is the cluster's; a later server adds only what is missing, and
// replaces what it names. A replacement of a value that another change replaced first is
// refused, so that two rotations at once cannot both win.
func TestServerData(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	if _, err := PublishServerData(ctx, cs, map[string][]byte{"ca": []byte("first"), EncryptionConfigKey: []byte("v1")}); err != nil {
		t.Fatal(err)
	}
	stored, err := PublishServerData(ctx, cs, map[string][]byte{"ca": []byte("second"), ServerTokenKey: []byte("t1")})
	if err != nil || string(stored["ca"]) != "first" || string(stored[ServerTokenKey]) != "t1" || string(stored[EncryptionConfigKey]) != "v1" {
		t.Fatalf("a later server's data: %q, %v", stored, err)
	}
	from := func(v string) func(string, []byte) bool {
		return func(_ string, b []byte) bool { return bytes.Equal(b, []byte(v)) }
	}
	if err := ReplaceServerData(ctx, cs, map[string][]byte{EncryptionConfigKey: []byte("v2")}, from("v1")); err != nil {
		t.Fatal(err)
	}
	// Done twice, as a rotation run again after a lost answer does.
	if err := ReplaceServerData(ctx, cs, map[string][]byte{EncryptionConfigKey: []byte("v2")}, from("v1")); err != nil {
		t.Errorf("the same replacement again: %v", err)
	}
	if err := ReplaceServerData(ctx, cs, map[string][]byte{EncryptionConfigKey: []byte("v3")}, from("v1")); !errors.Is(err, ErrServerDataChanged) {
		t.Errorf("a replacement of a value replaced meanwhile: %v", err)
	}
	data, err := FetchServerData(ctx, cs)
	if err != nil || string(data[EncryptionConfigKey]) != "v2" || string(data["ca"]) != "first" {
		t.Errorf("stored: %q, %v", data, err)
	}
}
