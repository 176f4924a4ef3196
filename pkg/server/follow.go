package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kone-dev/kone/pkg/datadir"
	"github.com/kone-dev/kone/pkg/encryption"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/token"
)

// follower keeps this server's secrets-encryption configuration, server token and CAs as the
// cluster's server data holds them, so that `kone secrets-encrypt rotate-keys`, `kone token
// rotate` and `kone certificate rotate-ca`, run on any server, reach every server within
// seconds. It runs on every server: each keeps its own files.
//
// It also has the sealed copy of the server data follow each change (sealer).
type follower struct {
	cs         kubernetes.Interface
	encryption string
	token      token.ServerFiles
	certs      serverCertificates
	sealer     *sealer
	log        *logrus.Logger
}

func newFollower(cs kubernetes.Interface, encryptionConfig string, tokenFiles token.ServerFiles, certs serverCertificates, sealer *sealer, log *logrus.Logger) *follower {
	return &follower{cs: cs, encryption: encryptionConfig, token: tokenFiles, certs: certs, sealer: sealer, log: log}
}

func (f *follower) Name() string { return "server data follower" }

// Ready at once: a server starts with its own files, which it follows to the cluster's within
// seconds.
func (f *follower) Ready(context.Context) error { return nil }

// followResync is how often the follower looks again at data it could not take: the
// configuration was locked by a rotation on this machine, which writes it itself.
const followResync = 30 * time.Second

func (f *follower) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(f.cs, followResync,
		informers.WithNamespace(metav1.NamespaceSystem),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", join.ServerDataName).String()
		}))
	informer := factory.Core().V1().Secrets().Informer()
	take := func(obj any) {
		if s, ok := obj.(*corev1.Secret); ok {
			f.take(ctx, s.Data)
		}
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    take,
		UpdateFunc: func(_, obj any) { take(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	<-ctx.Done()
	factory.Shutdown()
	return nil
}

// take writes the cluster's configuration, token and CAs where they differ from this server's.
func (f *follower) take(ctx context.Context, data map[string][]byte) {
	if err := f.takeAuthorities(ctx, data); err != nil {
		f.log.WithError(err).Warn("cannot take the cluster's certificate authorities; trying again")
	}
	if err := f.takeEncryption(data[join.EncryptionConfigKey]); err != nil {
		f.log.WithError(err).Warn("cannot take the cluster's secrets-encryption configuration; trying again")
	}
	if err := f.takeToken(ctx, data[join.ServerTokenKey]); err != nil {
		f.log.WithError(err).Warn("cannot take the cluster's server token; trying again")
	}
	if err := f.sealer.seal(ctx, data); err != nil {
		f.log.WithError(err).Warn("cannot keep the server data sealed in etcd for restores on a new machine; trying again")
	}
}

// takeAuthorities puts in place the CAs of a rotate-ca run on another server, issues this
// server's certificates from them, and gives them to joining and joined nodes again: a server
// that started meanwhile with the CAs from before gave those.
func (f *follower) takeAuthorities(ctx context.Context, data map[string][]byte) error {
	if !f.differs(data) {
		return nil
	}
	// Not waited for: a rotation or renewal on this machine holds it, which the resync
	// follows up on, and the token and configuration are followed meanwhile.
	unlock, err := f.certs.lock(false)
	if errors.Is(err, datadir.ErrBusy) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unlock()
	took, err := f.certs.ca.TakeRotation(data)
	if err != nil || !took {
		return err
	}
	issued, err := f.certs.issueLocked(time.Now())
	if err != nil {
		return fmt.Errorf("took the cluster's new CAs, but %w", err)
	}
	f.log.WithField("issued", len(issued)).Info("took the cluster's new certificate authorities (a rotate-ca on another server) and issued this server's certificates from them")
	return publishAuthorities(ctx, f.cs, data["server-ca.crt"], data["client-ca.crt"])
}

// differs reports whether the cluster's CAs and keys are not this server's, read without the
// lock: the usual answer, no, costs no lock at each resync.
func (f *follower) differs(data map[string][]byte) bool {
	for key, path := range f.certs.ca.Shared() {
		if len(data[key]) > 0 && !sameFile(path, data[key]) {
			return true
		}
	}
	return false
}

func (f *follower) takeEncryption(theirs []byte) error {
	if len(theirs) == 0 || sameFile(f.encryption, theirs) {
		return nil
	}
	c, err := encryption.Parse(theirs, "of the cluster")
	if err != nil {
		return err
	}
	unlock, err := encryption.Lock(f.encryption)
	if err != nil {
		return err
	}
	defer unlock()
	if err := encryption.WriteFile(f.encryption, theirs); err != nil {
		return err
	}
	f.log.WithField("keys", strings.Join(c.KeyNames(), ",")).Info("took the cluster's secrets-encryption configuration")
	return nil
}

func (f *follower) takeToken(ctx context.Context, theirs []byte) error {
	if len(theirs) == 0 {
		return nil
	}
	t, err := token.Parse(string(theirs))
	if err != nil {
		return fmt.Errorf("the cluster's server token: %w", err)
	}
	if sameFile(f.token.Token, t.File()) {
		return nil
	}
	unlock, err := f.token.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	// Written meanwhile by a rotation on this machine, which holds the lock while it writes.
	if sameFile(f.token.Token, t.File()) {
		return nil
	}
	// Never back to a token that a rotation here replaced (the cache can lag behind it), nor to
	// one that joins nothing: a stale server may have published it.
	if f.token.WasSuperseded(t.ID) {
		return nil
	}
	exists, err := token.Exists(ctx, f.cs, t.ID)
	if err != nil {
		return fmt.Errorf("the cluster's server token: %w", err)
	}
	if !exists {
		f.log.WithField("token", t.ID).Debug("the cluster's server token was deleted; this server keeps its own")
		return nil
	}
	// The token it replaces is recorded as `kone token rotate` records it on its own server: a
	// restart that still gives it as --token is then told to update it, not refused.
	var old string
	if ours, err := os.ReadFile(f.token.Token); err == nil {
		if o, err := token.Parse(string(ours)); err == nil && o.ID != t.ID {
			old = o.ID
		}
	}
	if err := f.token.Replace(old, t); err != nil {
		return err
	}
	f.log.WithField("token", t.ID).Info("took the cluster's server token")
	return nil
}

func sameFile(path string, data []byte) bool {
	ours, err := os.ReadFile(path)
	return err == nil && bytes.Equal(ours, data)
}
