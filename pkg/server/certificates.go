package server

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kone-dev/kone/pkg/config"
	"github.com/kone-dev/kone/pkg/datadir"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
)

// certificateServices are the leaf certificates of a server and of its own node by the name of
// what uses them, k3s's names where they match: what `kone certificate rotate --service` takes.
func certificateServices(cfg *config.Config) map[string][]pki.File {
	ca := pki.Layout(cfg.TLSDir())
	nodeTLS := node.Paths{Agent: cfg.AgentDir()}.TLSDir()
	nodeLeaf := func(name string) pki.File {
		return pki.File{Cert: filepath.Join(nodeTLS, name+".crt"), Key: filepath.Join(nodeTLS, name+".key")}
	}
	return map[string][]pki.File{
		"admin":              {ca.Admin},
		"api-server":         {ca.APIServerServing, ca.APIServerKubelet},
		"auth-proxy":         {ca.AuthProxy},
		"controller-manager": {ca.ControllerManager},
		"scheduler":          {ca.Scheduler},
		"etcd":               {ca.EtcdServing, ca.EtcdPeer, ca.APIServerEtcd},
		"kubelet":            {nodeLeaf("client-kubelet"), nodeLeaf("serving-kubelet")},
		"kube-proxy":         {nodeLeaf("client-kube-proxy")},
		"coredns":            {nodeLeaf("client-coredns")},
		"flannel":            {nodeLeaf("client-flannel")},
	}
}

// RotateCertificates moves the leaf certificates of services (all when none is named), with
// their keys, into a directory beside the PKI, tls-rotated-TIME, so that the server's next
// start issues new ones. kone must be stopped, as k3s asks: a running kone would go on using
// the old ones.
func RotateCertificates(cfg *config.Config, services []string, now time.Time, out io.Writer) error {
	all := certificateServices(cfg)
	if len(services) == 0 {
		for name := range all {
			services = append(services, name)
		}
	}
	slices.Sort(services)
	for _, s := range services {
		if _, ok := all[s]; !ok {
			names := make([]string, 0, len(all))
			for name := range all {
				names = append(names, name)
			}
			slices.Sort(names)
			return fmt.Errorf("--service %q: kone has no certificate for it; choose among %s", s, strings.Join(names, ", "))
		}
	}
	if _, err := os.Stat(pki.Layout(cfg.TLSDir()).ServerCA); err != nil {
		return fmt.Errorf("%s holds no server's certificates (%w); run this on a server, with its --data-dir", cfg.DataDir, err)
	}
	lock, err := datadir.Acquire(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("%w; the certificates are rotated while kone is stopped, and its next start issues new ones", err)
	}
	defer lock.Release()
	aside := filepath.Join(cfg.ServerDir(), "tls-rotated-"+now.UTC().Format("20060102T150405Z"))
	moved := 0
	for _, s := range slices.Compact(services) {
		for _, f := range all[s] {
			for _, p := range []string{f.Cert, f.Key} {
				rel, err := filepath.Rel(cfg.DataDir, p)
				if err != nil {
					return err
				}
				if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
					continue // a server without its node side has no node certificates
				}
				target := filepath.Join(aside, rel)
				if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
					return fmt.Errorf("rotate certificates: %w", err)
				}
				if err := os.Rename(p, target); err != nil {
					return fmt.Errorf("rotate certificates: %w", err)
				}
				moved++
			}
		}
		fmt.Fprintf(out, "rotated %s\n", s)
	}
	if moved == 0 {
		return errors.New("no certificates to rotate: kone issues them as it first starts")
	}
	fmt.Fprintf(out, "the old certificates and keys are in %s; start kone to issue new ones\n", aside)
	return nil
}
