package server

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"

	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/token"
)

// keyValue is etcd, for kone's own keys outside the apiserver's.
type keyValue interface {
	Put(ctx context.Context, key string, value []byte) error
	Delete(ctx context.Context, key string) error
}

// sealer keeps the cluster's server data in etcd sealed with the server token
// (join.SealedServerDataKey), so that every snapshot carries what a new machine needs to
// restore it (restoreServerData). The bootstrap seals as the server starts, before it is
// ready; the follower again after each change. Every server does: the cluster's data is the
// same, and each writes it once per change.
type sealer struct {
	cs  kubernetes.Interface
	kv  keyValue
	log *logrus.Logger

	mu      sync.Mutex
	sum     [sha256.Size]byte // of the data last sealed here
	dropped bool              // the sealed copy was removed, its token deleted
}

func newSealer(cs kubernetes.Interface, kv keyValue, log *logrus.Logger) *sealer {
	return &sealer{cs: cs, kv: kv, log: log}
}

// seal stores data sealed with the server token it holds, unless this server sealed the same
// data last. A server token that was deleted (a leaked one, say) must open nothing taken from
// then on: the sealed copy is removed, and the next server token (`kone token rotate`) seals
// it again.
func (s *sealer) seal(ctx context.Context, data map[string][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(data[join.ServerTokenKey]) == 0 {
		return nil
	}
	t, err := token.Parse(string(data[join.ServerTokenKey]))
	if err != nil {
		return fmt.Errorf("the cluster's server token: %w", err)
	}
	exists, err := token.Exists(ctx, s.cs, t.ID)
	if err != nil {
		return fmt.Errorf("the cluster's server token: %w", err)
	}
	if !exists {
		if s.dropped {
			return nil
		}
		if err := s.kv.Delete(ctx, join.SealedServerDataKey); err != nil {
			return fmt.Errorf("remove the server data sealed with a deleted token: %w", err)
		}
		s.dropped, s.sum = true, [sha256.Size]byte{}
		s.log.WithField("token", t.ID).Warn("the server token was deleted, so snapshots carry no keys from now on and restore only on a server of the cluster; `kone token rotate` makes a new server token, which they carry again")
		return nil
	}
	plain, err := json.Marshal(data)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(plain)
	if sum == s.sum {
		return nil
	}
	value, err := join.SealServerData(t, data)
	if err != nil {
		return err
	}
	if err := s.kv.Put(ctx, join.SealedServerDataKey, value); err != nil {
		return fmt.Errorf("store the sealed server data: %w", err)
	}
	s.sum, s.dropped = sum, false
	s.log.WithField("token", t.ID).Debug("sealed the server data in etcd with the server token")
	return nil
}
