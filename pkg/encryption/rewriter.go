package encryption

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/supervisor"
)

// Rewriter brings every stored Secret to the apiserver's current writer once it serves: after
// encryption was turned on or off, and at the first start of a cluster made by a kone that did
// not encrypt. doneFile records the writer it finished with, so that later starts skip it.
type Rewriter struct {
	admin    *rest.Config
	writer   string
	doneFile string
	log      *logrus.Logger
	ready    *supervisor.Latch
}

// NewRewriter returns the component; admin is an admin client's configuration.
func NewRewriter(admin *rest.Config, writer, doneFile string, log *logrus.Logger) *Rewriter {
	return &Rewriter{admin: admin, writer: writer, doneFile: doneFile, log: log, ready: supervisor.NewLatch()}
}

func (r *Rewriter) Name() string { return "secrets encryption" }

// Run rewrites in the background: the cluster serves meanwhile (every Secret reads, whatever
// it is stored with), and a Secret that cannot be written yet (a webhook whose pod is not up)
// neither stops kone nor delays its start. It tries again until every Secret is done.
func (r *Rewriter) Run(ctx context.Context) error {
	r.ready.Open()
	if done, err := os.ReadFile(r.doneFile); err == nil && strings.TrimSpace(string(done)) == r.writer {
		<-ctx.Done()
		return nil
	}
	// Two requests a Secret: client-go's default of 5 a second would take minutes for a few hundred.
	rc := rest.CopyConfig(r.admin)
	rc.QPS, rc.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	for {
		t0 := time.Now()
		n, err := Rewrite(ctx, cs)
		if err == nil {
			err = pki.WriteFile(r.doneFile, []byte(r.writer+"\n"), 0o600)
		}
		if err == nil {
			r.log.WithFields(logrus.Fields{"secrets": n, "writer": r.writer}).
				Infof("stored every Secret anew in %s", time.Since(t0).Round(10*time.Millisecond))
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		r.log.WithError(err).Warn("cannot store every Secret with the current encryption key yet; trying again in 30 s")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(30 * time.Second):
		}
	}
	<-ctx.Done()
	return nil
}

func (r *Rewriter) Ready(ctx context.Context) error { return r.ready.Wait(ctx) }
