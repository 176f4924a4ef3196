package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset/typed/apiregistration/v1"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/metrics"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/token"
)

// RotateAuthorities is `kone certificate rotate-ca`: it replaces the cluster's CAs with new
// ones cross-signed by the old (pki.StageRotation), gives them to the cluster's servers through
// the server data (each other server's follower takes them and issues its leaves from them),
// re-issues this server's leaves and its node's, pins the server token to the new server CA,
// and gives the new CAs to cluster-info for joining nodes and to the settings from which
// joined agents take them. Nodes that joined before keep working throughout: they trust the
// old CAs, which the new leaves chain to, and every apiserver trusts the certificates the old
// CAs signed. A second rotation is refused while the old CAs are trusted
// (pki.StageRotation): dropping them is not done yet.
//
// kone must run on this machine: the cluster learns the CAs through it.
func RotateAuthorities(ctx context.Context, cfg *config.Config, now time.Time, out io.Writer) error {
	certs, aside, unlock, err := openServerCertificates(cfg, now)
	if err != nil {
		return err
	}
	defer unlock()
	voters, learners, err := etcdClient(cfg, certs.ca).Servers(ctx)
	if err != nil {
		return fmt.Errorf("%w; rotate-ca needs kone running on this machine, which gives the cluster the new CAs", err)
	}
	admin := adminConfig(cfg, certs.ca)
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return err
	}
	aggregator, err := apiregistrationv1.NewForConfig(admin)
	if err != nil {
		return err
	}
	return rotateAuthorities(ctx, cs, aggregator.APIServices(), certs, aside, len(voters)+len(learners)-1, now, out)
}

// rotateAuthorities is RotateAuthorities once this server's certificates are locked (certs),
// with aside the directory for the CAs it replaces and others the number of other servers.
func rotateAuthorities(ctx context.Context, cs kubernetes.Interface, apiservices apiregistrationv1.APIServiceInterface, certs serverCertificates, aside string, others int, now time.Time, out io.Writer) error {
	ca := certs.ca
	current, err := readFiles(ca.Shared())
	if err != nil {
		return err
	}
	// A rotation that a crash or a failed request interrupted is taken up, not made anew: the
	// cluster may hold its CAs already, which the check of the server data below allows.
	rotation, err := ca.Staged()
	if err != nil {
		return err
	}
	resumed := rotation != nil
	if !resumed {
		if err := sameAuthorities(ctx, cs, current); err != nil {
			return err
		}
		if err := ca.StageRotation(now); err != nil {
			return fmt.Errorf("rotate the certificate authorities: %w", err)
		}
		if rotation, err = ca.Staged(); err != nil {
			return err
		}
	}
	// Until the stage is marked, every CA in place is an old one, to keep aside.
	partly := ca.RotationStaged()
	if !partly {
		for path := range maps.Values(ca.Shared()) {
			if path == ca.ServiceAccountKey {
				continue // kept: a new one would end every service-account token
			}
			if _, err := pki.CopyAside(certs.cfg.DataDir, aside, path); err != nil {
				return errors.Join(fmt.Errorf("keep the old CAs: %w; nothing changed", err), ca.DropRotation(), os.RemoveAll(aside))
			}
		}
	}
	// The apiservers trust the new server CA for the metrics API before any server issues the
	// metrics-server's certificate from it.
	if err := trustForMetrics(ctx, apiservices, current["server-ca.crt"], rotation["server-ca.crt"]); err != nil {
		// One taken up may have reached the cluster already: it is finished, not dropped.
		if resumed || partly {
			return fmt.Errorf("give the metrics APIService the new server CA: %w; run rotate-ca again, which takes up this rotation", err)
		}
		return errors.Join(fmt.Errorf("give the metrics APIService the new server CA: %w; nothing changed", err), ca.DropRotation(), os.RemoveAll(aside))
	}
	// The cluster's servers take the new CAs before this one puts them in place: a rotation
	// on another server that came first wins, and this one changes nothing. Until the others
	// have them, their leaves and this server's chain to the old CAs, which all trust.
	err = join.ReplaceServerData(ctx, cs, rotation, func(key string, stored []byte) bool { return bytes.Equal(stored, current[key]) })
	if errors.Is(err, join.ErrServerDataChanged) && !partly {
		return errors.Join(fmt.Errorf("give the cluster the new CAs: %w; nothing changed here, and this server takes the cluster's CAs within seconds", err),
			trustForMetrics(ctx, apiservices, rotation["server-ca.crt"], current["server-ca.crt"]), ca.DropRotation(), os.RemoveAll(aside))
	}
	if err != nil {
		return fmt.Errorf("give the cluster the new CAs: %w; run rotate-ca again, which takes up this rotation", err)
	}
	if err := ca.FinishRotation(); err != nil {
		return fmt.Errorf("the cluster has the new CAs, but this server cannot put them in place: %w; the running kone takes them from the cluster within seconds", err)
	}
	issued, err := certs.issueLocked(now)
	if err != nil {
		return fmt.Errorf("the CAs are new, but %w; the running kone issues the certificates from them within seconds, or as it restarts", err)
	}
	serverCA, clientCA := rotation["server-ca.crt"], rotation["client-ca.crt"]
	tok, usable, err := repinServerToken(ctx, cs, certs.cfg.ServerToken(), serverCA)
	if err == nil {
		var signers []token.Token
		if usable {
			signers = append(signers, tok)
		}
		err = publishAuthorities(ctx, cs, serverCA, clientCA, signers...)
	}
	if err != nil {
		return fmt.Errorf("the servers use the new CAs, but %w. Restart kone, which gives joining and joined nodes the new CAs; "+
			"the server token may still pin the old CA, which keeps joining nodes (`kone token rotate` makes one pinned to the new)", err)
	}
	if resumed {
		fmt.Fprintln(out, "took up a rotate-ca that was interrupted")
	}
	if !partly {
		fmt.Fprintf(out, "the old CAs and keys are in %s\n", aside)
	}
	fmt.Fprintf(out, "certificate authorities replaced, each cross-signed by the one before it; %d certificates re-issued from them\n", len(issued))
	if others > 0 {
		fmt.Fprintf(out, "the cluster's other servers (%d) take the new CAs within seconds, and issue their certificates from them\n", others)
	}
	fmt.Fprintln(out, "the old CAs stay trusted, so joined nodes keep working; each takes the new CAs within an hour, or as it restarts")
	fmt.Fprintf(out, "the server token, pinned to the new CA (tokens made before keep joining):\n%s\n", tok)
	return nil
}

// trustForMetrics makes caPEM the CAs that the apiservers check kone's metrics-server against,
// where they are old, the server CAs kone gave them (manifests/metrics-server.yaml): not where
// kone's metrics API is off, nor where the user's own metrics-server took its place.
func trustForMetrics(ctx context.Context, apiservices apiregistrationv1.APIServiceInterface, old, caPEM []byte) error {
	svc, err := apiservices.Get(ctx, metrics.APIService, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil || !bytes.Equal(svc.Spec.CABundle, old) {
		return err
	}
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"caBundle": caPEM}})
	if err != nil {
		return err
	}
	_, err = apiservices.Patch(ctx, metrics.APIService, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// readFiles reads the files that every server of the cluster holds alike (sharedFiles), by the
// names that the server data gives them.
func readFiles(files map[string]string) (map[string][]byte, error) {
	data := map[string][]byte{}
	for key, path := range files {
		content, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("the server data: %w", err)
		}
		data[key] = content
	}
	return data, nil
}

// sameAuthorities refuses a rotation of CAs that are not the cluster's: those of a server that
// has not yet taken another server's rotation.
func sameAuthorities(ctx context.Context, cs kubernetes.Interface, ours map[string][]byte) error {
	cluster, err := join.FetchServerData(ctx, cs)
	if err != nil {
		return err
	}
	for _, key := range slices.Sorted(maps.Keys(ours)) {
		if !bytes.Equal(ours[key], cluster[key]) {
			return fmt.Errorf("this server's %s is not the cluster's: another server's rotate-ca is under way, and this server takes its CAs within seconds; nothing changed", key)
		}
	}
	return nil
}

// publishAuthorities gives joining nodes (cluster-info) and joined ones (the settings) the
// cluster's CAs. cluster-info is signed for signers here, and for the other tokens by the
// controller-manager.
func publishAuthorities(ctx context.Context, cs kubernetes.Interface, serverCA, clientCA []byte, signers ...token.Token) error {
	info, err := cs.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read cluster-info: %w", err)
	}
	cluster, err := token.ClusterInfo(info)
	if err != nil {
		return err
	}
	kubeconfig, err := clusterInfoKubeconfig(cluster.Server, serverCA)
	if err != nil {
		return err
	}
	if err := token.PublishClusterInfo(ctx, cs, kubeconfig, signers...); err != nil {
		return err
	}
	// Read back rather than made from this command's flags, which may differ from the server's.
	settings, err := join.ReadSettings(ctx, cs)
	if err != nil {
		return err
	}
	settings.ClientCA, settings.ServerCA = string(clientCA), string(serverCA)
	return join.PublishSettings(ctx, cs, settings)
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
		if err := join.ReplaceServerToken(ctx, cs, old.ID, tok); err != nil {
			return token.Token{}, false, err
		}
	}
	return tok, usable, files.Replace("", tok)
}
