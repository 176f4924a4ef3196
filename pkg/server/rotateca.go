package server

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/token"
)

// RotateAuthorities is `kone certificate rotate-ca`: it replaces the cluster's CAs with new
// ones cross-signed by the old (pki.RotateAuthorities), re-issues this server's leaves and its
// node's from them, pins the server token to the new server CA, and gives the cluster the new
// CAs: the server data that joining servers and snapshots carry, cluster-info for joining
// nodes, and the settings from which joined agents take them. Nodes that joined before keep
// working throughout: they trust the old CAs, which the new leaves chain to, and the
// apiserver trusts the certificates the old CAs signed. A second rotation is refused while the
// old CAs are trusted (pki.RotateAuthorities): dropping them is not done yet.
//
// kone must run on this machine: the cluster learns the CAs through it. A cluster of several
// servers is refused for now: each would need the new CAs before any issues from them.
func RotateAuthorities(ctx context.Context, cfg *config.Config, now time.Time, out io.Writer) error {
	certs, aside, unlock, err := openServerCertificates(cfg, now)
	if err != nil {
		return err
	}
	defer unlock()
	ca := certs.ca
	voters, learners, err := etcdClient(cfg, ca).Servers(ctx)
	if err != nil {
		return fmt.Errorf("%w; rotate-ca needs kone running on this machine, which gives the cluster the new CAs", err)
	}
	if servers := append(voters, learners...); len(servers) > 1 {
		return fmt.Errorf("the cluster has %d servers (%s): rotate-ca in a cluster of several servers is not supported yet; nothing changed", len(servers), strings.Join(servers, ", "))
	}
	cs, err := kubernetes.NewForConfig(adminConfig(cfg, ca))
	if err != nil {
		return err
	}
	// A rotation that a crash interrupted is finished, not made anew: its old CAs were copied
	// by the run that staged it, and what is in place now is partly new.
	resumed := ca.RotationStaged()
	if !resumed {
		if err := ca.CanRotate(); err != nil {
			return fmt.Errorf("%w (if an earlier rotate-ca failed after it replaced the CAs, restart kone: it issues from them and gives them to the cluster)", err)
		}
		for _, path := range ca.Shared() {
			if path == ca.ServiceAccountKey {
				continue // kept: a new one would end every service-account token
			}
			if _, err := copyAside(cfg.DataDir, aside, path); err != nil {
				return fmt.Errorf("keep the old CAs: %w; nothing changed", err)
			}
		}
	}
	if _, err := ca.RotateAuthorities(now); err != nil {
		return fmt.Errorf("rotate the certificate authorities: %w", err)
	}
	issued, err := certs.issueLocked(now)
	if err != nil {
		return fmt.Errorf("the CAs are new, but %w; restart kone, which issues the certificates from them and gives the cluster the CAs", err)
	}
	tok, err := publishAuthorities(ctx, cs, cfg, ca)
	if err != nil {
		return fmt.Errorf("the CAs are new and this server uses them, but the cluster does not know them yet: %w; restart kone, which gives them to it", err)
	}
	if resumed {
		fmt.Fprintln(out, "finished a rotate-ca that was interrupted; the CAs before it were copied aside by that run")
	} else {
		fmt.Fprintf(out, "the old CAs and keys are in %s\n", aside)
	}
	fmt.Fprintf(out, "certificate authorities replaced, each cross-signed by the one before it; %d certificates re-issued from them\n", len(issued))
	fmt.Fprintln(out, "the old CAs stay trusted, so joined nodes keep working; each takes the new CAs within an hour, or as it restarts")
	fmt.Fprintf(out, "the server token, pinned to the new CA (tokens made before keep joining):\n%s\n", tok)
	return nil
}

// publishAuthorities gives the cluster this server's CAs, and returns the server token pinned
// to the new server CA.
func publishAuthorities(ctx context.Context, cs kubernetes.Interface, cfg *config.Config, ca *pki.Cluster) (token.Token, error) {
	data := map[string][]byte{}
	for key, path := range ca.Shared() {
		content, err := os.ReadFile(path)
		if err != nil {
			return token.Token{}, fmt.Errorf("the server data: %w", err)
		}
		data[key] = content
	}
	if _, err := join.PublishServerData(ctx, cs, data, slices.Collect(maps.Keys(data))...); err != nil {
		return token.Token{}, err
	}
	serverCA, clientCA := string(data["server-ca.crt"]), string(data["client-ca.crt"])
	tok, usable, err := repinServerToken(ctx, cs, cfg.ServerToken(), []byte(serverCA))
	if err != nil {
		return token.Token{}, err
	}

	info, err := cs.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
	if err != nil {
		return token.Token{}, fmt.Errorf("read cluster-info: %w", err)
	}
	kc, err := clientcmd.Load([]byte(info.Data[bootstrapapi.KubeConfigKey]))
	if err != nil || len(kc.Clusters) != 1 {
		return token.Token{}, fmt.Errorf("cluster-info holds no kubeconfig with one cluster (%v)", err)
	}
	var server string
	for _, c := range kc.Clusters {
		server = c.Server
	}
	kubeconfig, err := clusterInfoKubeconfig(server, []byte(serverCA))
	if err != nil {
		return token.Token{}, err
	}
	var signers []token.Token
	if usable {
		signers = append(signers, tok)
	}
	if err := token.PublishClusterInfo(ctx, cs, kubeconfig, signers...); err != nil {
		return token.Token{}, err
	}

	// Read back rather than made from this command's flags, which may differ from the server's.
	settings, err := join.ReadSettings(ctx, cs)
	if err != nil {
		return token.Token{}, err
	}
	settings.ClientCA, settings.ServerCA = clientCA, serverCA
	return tok, join.PublishSettings(ctx, cs, settings)
}

// repinServerToken pins the server's token to caPEM, here and, unless it was deleted, in the
// server data (the follower of each server takes it from there). It returns the token, and
// whether it still joins nodes.
func repinServerToken(ctx context.Context, cs kubernetes.Interface, files token.ServerFiles, caPEM []byte) (token.Token, bool, error) {
	unlock, err := files.Lock()
	if err != nil {
		return token.Token{}, false, err
	}
	defer unlock()
	data, err := os.ReadFile(files.Token)
	if err != nil {
		return token.Token{}, false, fmt.Errorf("the server's token file: %w", err)
	}
	old, err := token.Parse(string(data))
	if err != nil {
		return token.Token{}, false, fmt.Errorf("the server's token file %s: %w", files.Token, err)
	}
	tok, err := old.WithCA(caPEM)
	if err != nil {
		return token.Token{}, false, err
	}
	usable, err := token.Exists(ctx, cs, tok.ID)
	if err != nil || tok == old {
		return tok, usable, err
	}
	// A deleted token is never published: the other servers would take a token that joins nothing.
	if usable {
		err = join.ReplaceServerData(ctx, cs, join.ServerTokenKey, tok.File(), func(stored []byte) bool {
			theirs, err := token.Parse(string(stored))
			return len(stored) == 0 || (err == nil && theirs.ID == old.ID)
		})
		if err != nil {
			return token.Token{}, false, err
		}
	}
	return tok, usable, files.Replace("", tok)
}
