package cloud

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	nodecontroller "k8s.io/cloud-provider/controllers/node"
	controllersmetrics "k8s.io/component-base/metrics/prometheus/controllers"

	"github.com/kone-dev/kone/pkg/supervisor"
)

// statusUpdateEvery is how often the controller re-reads every node's addresses; a node's
// changed --node-external-ip shows this long after it restarted. Reading annotations from the
// informer's cache costs nothing.
const statusUpdateEvery = 10 * time.Second

// Controller runs upstream's cloud node controller with kone's provider, on a server.
type Controller struct {
	cs    kubernetes.Interface
	ready *supervisor.Latch
}

// NewController returns the controller component; cs must be allowed to update nodes and
// their status.
func NewController(cs kubernetes.Interface) *Controller {
	return &Controller{cs: cs, ready: supervisor.NewLatch()}
}

func (c *Controller) Name() string { return "cloud node controller" }

func (c *Controller) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(c.cs, 0)
	nodes := factory.Core().V1().Nodes()
	ctrl, err := nodecontroller.NewCloudNodeController(nodes, c.cs, provider{}, statusUpdateEvery, 1, 1)
	if err != nil {
		return fmt.Errorf("cloud node controller: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctrl.RunWithContext(ctx, controllersmetrics.NewControllerManagerMetrics("kone"))
	}()
	if !cacheSynced(ctx, factory) {
		<-done
		return nil
	}
	c.ready.Open()
	<-done
	return nil
}

func (c *Controller) Ready(ctx context.Context) error { return c.ready.Wait(ctx) }

func cacheSynced(ctx context.Context, factory informers.SharedInformerFactory) bool {
	for _, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return false
		}
	}
	return true
}
