package server

import (
	"context"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/token"
)

// The sealed copy of the server data follows the data and the token that seals it, and is
// written once per change, not at every resync of the follower.
func TestFollowerSeals(t *testing.T) {
	var stored [][]byte
	f := newFollower(nil, "", token.ServerFiles{}, func(_ context.Context, key string, value []byte) error {
		if key != join.SealedServerDataKey {
			t.Errorf("stored at %s", key)
		}
		stored = append(stored, value)
		return nil
	}, logrus.New())
	first, err := token.Generate()
	if err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{"server-ca.key": []byte("key 1"), join.ServerTokenKey: first.File()}
	ctx := context.Background()
	for range 2 {
		if err := f.seal(ctx, data); err != nil {
			t.Fatal(err)
		}
	}
	if len(stored) != 1 {
		t.Fatalf("the same data twice: stored %d times, want once", len(stored))
	}
	if got, err := join.OpenServerData(first, stored[0]); err != nil || string(got["server-ca.key"]) != "key 1" {
		t.Errorf("the sealed data: %q, %v", got, err)
	}

	second, err := token.Generate()
	if err != nil {
		t.Fatal(err)
	}
	data[join.ServerTokenKey] = second.File()
	if err := f.seal(ctx, data); err != nil {
		t.Fatal(err)
	}
	if len(stored) != 2 {
		t.Fatalf("after a token rotation: stored %d times, want twice", len(stored))
	}
	if _, err := join.OpenServerData(second, stored[1]); err != nil {
		t.Errorf("sealed after a rotation: the new token does not open it: %v", err)
	}
	if _, err := join.OpenServerData(first, stored[1]); err == nil {
		t.Error("sealed after a rotation: the old token still opens it")
	}

	// A cluster whose server token was deleted keeps the copy it had.
	delete(data, join.ServerTokenKey)
	if err := f.seal(ctx, data); err != nil || len(stored) != 2 {
		t.Errorf("without a token: stored %d times (%v), want the copy kept", len(stored), err)
	}
}
