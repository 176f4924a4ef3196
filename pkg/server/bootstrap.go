package server

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset/typed/apiregistration/v1"

	"github.com/kone-dev/kone/manifests"
	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/deploy"
	"github.com/kone-dev/kone/pkg/encryption"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/metrics"
	"github.com/kone-dev/kone/pkg/supervisor"
	"github.com/kone-dev/kone/pkg/token"
)

// bootstrap writes what the cluster needs from kone once the apiserver serves: kone's own
// objects (manifests/: the rights of its identities, its admission policies, the kube-dns
// Service; those of parts that --disable leaves out removed), the server's join token as a
// bootstrap-token Secret, the cluster-info a joining node reads, the settings agents follow,
// what joining servers fetch, and the claim on this server's node name; and it seals the
// server data in etcd.
type bootstrap struct {
	admin    *rest.Config
	log      *logrus.Logger
	tok      token.Token
	files    token.ServerFiles
	caFile   string
	server   string
	settings join.Settings
	values   map[string]string // what fills the placeholders of kone's manifests
	disabled []string          // the parts of kone that --disable leaves out
	shared   map[string]string
	alone    func() bool // whether this server is the cluster's only one
	held     []join.Held // this server's own node name
	sealer   *sealer
	ready    *supervisor.Latch
}

func newBootstrap(admin *rest.Config, log *logrus.Logger, tok token.Token, files token.ServerFiles, caFile, server string, settings join.Settings, values map[string]string, disabled []string, shared map[string]string, alone func() bool, held []join.Held, sealer *sealer) *bootstrap {
	return &bootstrap{admin: admin, log: log, tok: tok, files: files, caFile: caFile, server: server, settings: settings, values: values, disabled: disabled, shared: shared, alone: alone, held: held, sealer: sealer, ready: supervisor.NewLatch()}
}

func (b *bootstrap) Name() string { return "cluster bootstrap" }

func (b *bootstrap) Run(ctx context.Context) error {
	// Some thirty requests in a row: client-go's default of 5 a second would spread them over
	// seconds, and kone is not ready until they are done.
	rc := rest.CopyConfig(b.admin)
	rc.QPS, rc.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	// kone's own objects (manifests/), first: the rights of the nodes that join once kone is
	// ready, the policies that hold them to their node, the kube-dns Service.
	applier, err := deploy.New(rc, deploy.FieldManager)
	if err != nil {
		return err
	}
	var left []string
	if !slices.Contains(b.disabled, config.DisableMetrics) {
		aggregator, err := apiregistrationv1.NewForConfig(rc)
		if err != nil {
			return err
		}
		foreign, err := metrics.Foreign(ctx, aggregator.APIServices())
		if err != nil {
			return fmt.Errorf("read the APIService %s: %w", metrics.APIService, err)
		}
		if foreign {
			// Left as they are: the other metrics-server may have taken over objects of the
			// same names that kone once applied (upstream's Service and ClusterRole).
			left = append(left, config.DisableMetrics)
		}
	}
	if err := applier.ApplyFS(ctx, manifests.Files(), b.values, b.disabled, left); err != nil {
		return fmt.Errorf("kone's manifests: %w", err)
	}
	usable, err := b.files.Publish(ctx, cs, b.tok, time.Now())
	if err != nil {
		return err
	}
	var signers []token.Token
	if usable {
		signers = append(signers, b.tok)
	} else {
		b.log.WithField("token", b.tok.ID).Info("the server's token in " + b.files.Token + " was deleted and stays so; `kone token create` or `kone token rotate` makes one for joining nodes")
	}
	caPEM, err := os.ReadFile(b.caFile)
	if err != nil {
		return err
	}
	kubeconfig, err := clusterInfoKubeconfig(b.server, caPEM)
	if err != nil {
		return err
	}
	if err := token.PublishClusterInfo(ctx, cs, kubeconfig, signers...); err != nil {
		return err
	}
	if err := join.PublishSettings(ctx, cs, b.settings); err != nil {
		return err
	}
	stored, err := b.publishServerData(ctx, cs, usable)
	if err != nil {
		return err
	}
	// Before kone is ready: a snapshot taken as soon as it is carries the keys.
	if err := b.sealer.seal(ctx, stored); err != nil {
		return err
	}
	for _, h := range b.held {
		if err := join.Hold(ctx, cs, h, time.Now()); err != nil {
			return err
		}
	}
	b.ready.Open()
	<-ctx.Done()
	return nil
}

func (b *bootstrap) Ready(ctx context.Context) error {
	return b.ready.Wait(ctx)
}

// publishServerData publishes what joining servers fetch. A server that is the whole cluster
// publishes its own files and token, which may have changed since (--secrets-encryption, a key,
// token or CA rotation that could not publish its result); one of several follows the
// cluster's (follower), but cannot turn encryption on or off for the others. A token that was
// deleted is never published: the others would take a token that joins nothing.
func (b *bootstrap) publishServerData(ctx context.Context, cs kubernetes.Interface, tokenUsable bool) (map[string][]byte, error) {
	data, err := readFiles(b.shared)
	if err != nil {
		return nil, err
	}
	var replace []string
	alone := b.alone()
	if alone {
		replace = slices.Collect(maps.Keys(data))
	}
	if tokenUsable {
		data[join.ServerTokenKey] = b.tok.File()
		if alone {
			replace = append(replace, join.ServerTokenKey)
		}
	}
	stored, err := join.PublishServerData(ctx, cs, data, replace...)
	if err != nil || alone {
		return stored, err
	}
	ours, err := encryption.Parse(data[join.EncryptionConfigKey], b.shared[join.EncryptionConfigKey])
	if err != nil {
		return nil, err
	}
	theirs, err := encryption.Parse(stored[join.EncryptionConfigKey], "of the cluster")
	if err != nil {
		return nil, err
	}
	if ours.Enabled != theirs.Enabled {
		return nil, fmt.Errorf("--secrets-encryption is %t here but %t on the cluster's other servers; start with --secrets-encryption=%t (turning it on or off in a cluster of several servers is not supported yet)",
			ours.Enabled, theirs.Enabled, theirs.Enabled)
	}
	return stored, nil
}

// clusterInfoKubeconfig is the kubeconfig that cluster-info gives joining nodes.
func clusterInfoKubeconfig(server string, caPEM []byte) ([]byte, error) {
	info := clientcmdapi.NewConfig()
	info.Clusters[""] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	return clientcmd.Write(*info)
}

// clusterInfoServer is the apiserver URL published to joining nodes: the advertise address, or
// else this host's first address.
func clusterInfoServer(cfg *config.Config) string {
	host := "127.0.0.1"
	if cfg.AdvertiseAddress != nil {
		host = cfg.AdvertiseAddress.String()
	} else if ips := interfaceIPs(); len(ips) > 0 {
		host = ips[0].String()
	}
	return "https://" + net.JoinHostPort(host, fmt.Sprint(cfg.HTTPSPort))
}
