package cloud

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	servicecontroller "k8s.io/cloud-provider/controllers/service"
	servicehelper "k8s.io/cloud-provider/service/helpers"
	controllersmetrics "k8s.io/component-base/metrics/prometheus/controllers"

	"github.com/kone-dev/kone/pkg/queue"
	"github.com/kone-dev/kone/pkg/supervisor"
)

// clusterName is what upstream's service controller calls the cluster; kone's load balancer
// does not use it.
const clusterName = "kone"

// resync is how often served Services' addresses are compared with the nodes' with no change
// seen; it costs a look at the listers.
const resync = 30 * time.Second

// ServiceController runs upstream's service controller with kone's load balancer, on a server:
// LoadBalancer Services get their serving nodes' addresses (see loadBalancers), and keep up with
// the nodes, which upstream follows only as nodes come and go.
// Disabled (--disable servicelb), it only undoes what it did before (ReleaseLoadBalancers).
type ServiceController struct {
	cs       kubernetes.Interface
	reserved Reserved
	disabled bool
	log      *logrus.Logger
	ready    *supervisor.Latch
}

// NewServiceController returns the controller component; cs must be allowed to update
// Services and their status, and to record Events.
func NewServiceController(cs kubernetes.Interface, reserved Reserved, disabled bool, log *logrus.Logger) *ServiceController {
	return &ServiceController{cs: cs, reserved: reserved, disabled: disabled, log: log, ready: supervisor.NewLatch()}
}

func (c *ServiceController) Name() string { return "service load balancer" }

func (c *ServiceController) Ready(ctx context.Context) error { return c.ready.Wait(ctx) }

func (c *ServiceController) Run(ctx context.Context) error {
	if c.disabled {
		c.ready.Open()
		c.release(ctx)
		<-ctx.Done()
		return nil
	}
	factory := informers.NewSharedInformerFactory(c.cs, 0)
	services, nodes := factory.Core().V1().Services(), factory.Core().V1().Nodes()
	lb := newLoadBalancers(c.cs, services.Lister(), nodes.Lister(), c.reserved)
	ctrl, err := servicecontroller.New(provider{lb: lb}, c.cs, services, nodes, clusterName, utilfeature.DefaultFeatureGate)
	if err != nil {
		return fmt.Errorf("service controller: %w", err)
	}
	// One key: any change of the nodes that serve brings every served Service up to date.
	nodeChanges := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer nodeChanges.ShutDown()
	changed := func(old, new *corev1.Node) {
		if old == nil || new == nil || nodeView(old) != nodeView(new) {
			nodeChanges.Add("nodes")
		}
	}
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { changed(nil, nil) },
		UpdateFunc: func(old, new any) { changed(asNode(old), asNode(new)) },
		DeleteFunc: func(any) { changed(nil, nil) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctrl.Run(ctx, 1, controllersmetrics.NewControllerManagerMetrics("kone"))
	}()
	if !cacheSynced(ctx, factory) {
		<-done
		return nil
	}
	// Again in a while (resync), changed or not: a node change that came as upstream was
	// writing a Service's first addresses is caught up with then.
	go queue.Work(nodeChanges, func(string) error { return lb.followAll() }, func(_ string, err error) {
		c.log.WithError(err).Warn("cannot bring LoadBalancer Services' addresses up to date with the nodes; trying again")
	}, resync)
	c.ready.Open()
	<-done
	return nil
}

func asNode(obj any) *corev1.Node {
	n, _ := obj.(*corev1.Node)
	return n
}

// nodeView is what of a node decides the addresses it gives Services.
func nodeView(n *corev1.Node) string {
	return fmt.Sprint(serves(n), n.Labels[LBNodeLabel], n.Status.Addresses)
}

// release runs ReleaseLoadBalancers until it has done its work, or ctx ends. Failing is not a
// reason to stop the server: it is logged and tried again.
func (c *ServiceController) release(ctx context.Context) {
	backoff := wait.Backoff{Duration: 5 * time.Second, Factor: 2, Steps: 100, Cap: 5 * time.Minute}
	_ = wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		err := ReleaseLoadBalancers(ctx, c.cs)
		if err != nil {
			c.log.WithError(err).Warn("--disable servicelb: cannot release what kone gave LoadBalancer Services; trying again")
		}
		return err == nil, nil
	})
}

// ReleaseLoadBalancers undoes what the service controller did, for a cluster whose servers no
// longer run it (--disable servicelb): the Services kone served lose their addresses and its
// mark, and every LoadBalancer Service of no class loses the finalizer that upstream's
// controller gave it (kone's gave it to those of another controller too), which would
// otherwise keep it from being deleted.
func ReleaseLoadBalancers(ctx context.Context, cs kubernetes.Interface) error {
	list, err := cs.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var failed []error
	for i := range list.Items {
		svc := &list.Items[i]
		if !ours(svc) || (!servicehelper.HasLBFinalizer(svc) && svc.Annotations[ServedAnnotation] == "") {
			continue
		}
		updated := svc.DeepCopy()
		updated.Finalizers = slices.DeleteFunc(updated.Finalizers, func(f string) bool { return f == servicehelper.LoadBalancerCleanupFinalizer })
		if svc.Annotations[ServedAnnotation] != "" {
			delete(updated.Annotations, ServedAnnotation)
			updated.Status.LoadBalancer = corev1.LoadBalancerStatus{}
		}
		if _, err := servicehelper.PatchService(cs.CoreV1(), svc, updated); err != nil && !apierrors.IsNotFound(err) {
			failed = append(failed, fmt.Errorf("LoadBalancer Service %s/%s: %w", svc.Namespace, svc.Name, err))
		}
	}
	return errors.Join(failed...)
}
