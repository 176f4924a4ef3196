package token

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	"github.com/kone-dev/kone/pkg/datadir"
	"github.com/kone-dev/kone/pkg/pki"
)

// ServerDescription is the description of a server's own token in `kone token list`.
const ServerDescription = "kone server token"

// serverOptions make the server's token: it joins servers as well as agents, as k3s's does.
func serverOptions() Options { return Options{Description: ServerDescription, Server: true} }

// ServerFiles are where a server keeps its own join token: the token file that users read, the
// id of the token the server has published to the cluster, so that a server token deleted on
// purpose is not created again at the next start, and the ids of the tokens Rotate replaced.
type ServerFiles struct{ Token, Published, Superseded string }

// Lock serialises changes to the token files: `kone token rotate` and the running server's
// follower of the cluster's token write the same files, and a write that meets another's
// temporary file takes it for the leftover of a killed write. It waits for the other.
func (f ServerFiles) Lock() (unlock func(), err error) {
	unlock, err = datadir.LockFile(f.Token+".lock", true)
	if err != nil {
		return nil, fmt.Errorf("the server's token files: %w", err)
	}
	return unlock, nil
}

// WasSuperseded reports whether Rotate replaced the token with this id.
func (f ServerFiles) WasSuperseded(id string) bool {
	data, _ := os.ReadFile(f.Superseded)
	return slices.Contains(strings.Fields(string(data)), id)
}

// Supersede records that the token with this id was replaced.
func (f ServerFiles) Supersede(id string) error {
	if f.WasSuperseded(id) {
		return nil
	}
	superseded, _ := os.ReadFile(f.Superseded)
	return pki.WriteFile(f.Superseded, append(superseded, []byte(id+"\n")...), 0o600)
}

// Publish makes the server's token t a bootstrap-token Secret the first time the server starts
// with it, and only then. It reports whether t can join nodes: false once it has been deleted
// (`kone token delete`), which sticks across restarts.
func (f ServerFiles) Publish(ctx context.Context, cs kubernetes.Interface, t Token, now time.Time) (bool, error) {
	// A rotation killed before it deleted the token it replaced: that token joins nothing either.
	superseded, _ := os.ReadFile(f.Superseded)
	for _, id := range strings.Fields(string(superseded)) {
		err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, bootstraputil.BootstrapTokenSecretName(id), metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return false, fmt.Errorf("delete the replaced token %s: %w", id, err)
		}
	}
	published, err := os.ReadFile(f.Published)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", f.Published, err)
	}
	if strings.TrimSpace(string(published)) == t.ID {
		if exists, err := Exists(ctx, cs, t.ID); !exists || err != nil {
			return false, err
		}
		return true, Ensure(ctx, cs, t, serverOptions(), now)
	}
	// Recorded only once the Secret exists: a start killed before that creates it next time.
	if err := Ensure(ctx, cs, t, serverOptions(), now); err != nil {
		return false, err
	}
	return true, pki.WriteFile(f.Published, []byte(t.ID+"\n"), 0o600)
}

// Rotate gives the server a new token: it creates it in the cluster, has publish give it to
// every server, writes it to the token file and deletes the old one, after which the old token
// joins nothing. Nodes that have joined keep their own credentials. caPEM is the cluster CA the
// new token pins.
func (f ServerFiles) Rotate(ctx context.Context, cs kubernetes.Interface, caPEM []byte, now time.Time, publish func(old, new Token) error) (Token, error) {
	unlock, err := f.Lock()
	if err != nil {
		return Token{}, err
	}
	defer unlock()
	data, err := os.ReadFile(f.Token)
	if err != nil {
		return Token{}, fmt.Errorf("the server's token file: %w; run this on a server, or give its --data-dir", err)
	}
	old, err := Parse(string(data))
	if err != nil {
		return Token{}, fmt.Errorf("the server's token file %s: %w", f.Token, err)
	}
	if err := old.CheckCA(caPEM); err != nil {
		return Token{}, fmt.Errorf("the server's token file %s does not belong to the cluster of this kubeconfig: %w", f.Token, err)
	}
	t, err := Generate()
	if err == nil {
		t, err = t.WithCA(caPEM)
	}
	if err != nil {
		return Token{}, err
	}
	if err := Create(ctx, cs, t, serverOptions(), now); err != nil {
		return Token{}, err
	}
	// Published before any file here changes: a rotation that every server cannot follow
	// changes nothing, and what a server follows never goes back to the old token.
	if err := publish(old, t); err != nil {
		_ = cs.CoreV1().Secrets(metav1.NamespaceSystem).Delete(context.WithoutCancel(ctx), bootstraputil.BootstrapTokenSecretName(t.ID), metav1.DeleteOptions{})
		return Token{}, fmt.Errorf("give the new token to every server: %w; nothing changed", err)
	}
	if err := f.Replace(old.ID, t); err != nil {
		return Token{}, err
	}
	err = cs.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, bootstraputil.BootstrapTokenSecretName(old.ID), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return Token{}, fmt.Errorf("the new token is in %s, but the old one (%s) is not deleted yet: %w; delete it with `kone token delete %s`", f.Token, old.ID, err, old.ID)
	}
	return t, nil
}

// Replace makes t the server's token in place of the token with id old (none if empty), as
// `kone token rotate` does on its own server and the other servers do when they follow it. The
// caller holds Lock.
func (f ServerFiles) Replace(old string, t Token) error {
	// Recorded before the files change: whatever happens next, the old token is deleted by the
	// next start at the latest, and never taken back.
	if old != "" {
		if err := f.Supersede(old); err != nil {
			return err
		}
	}
	if err := pki.WriteFile(f.Token, t.File(), 0o600); err != nil {
		return err
	}
	// Published with it: once deleted, the token is not created again at the next start.
	return pki.WriteFile(f.Published, []byte(t.ID+"\n"), 0o600)
}
