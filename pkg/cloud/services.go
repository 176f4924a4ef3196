package cloud

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	servicecontroller "k8s.io/cloud-provider/controllers/service"
	servicehelper "k8s.io/cloud-provider/service/helpers"
	controllersmetrics "k8s.io/component-base/metrics/prometheus/controllers"

	"github.com/kone-dev/kone/pkg/supervisor"
)

// clusterName is what upstream's service controller calls the cluster; kone's load balancer
// does not use it.
const clusterName = "kone"

// ServiceController runs upstream's service controller with kone's load balancer, on a server:
// LoadBalancer Services get their serving nodes' addresses (see loadBalancers).
// Disabled (--disable servicelb), it only undoes what it did before (ReleaseLoadBalancers).
type ServiceController struct {
	cs       kubernetes.Interface
	disabled bool
	ready    *supervisor.Latch
}

// NewServiceController returns the controller component; cs must be allowed to update
// Services and their status, and to record Events.
func NewServiceController(cs kubernetes.Interface, disabled bool) *ServiceController {
	return &ServiceController{cs: cs, disabled: disabled, ready: supervisor.NewLatch()}
}

func (c *ServiceController) Name() string { return "service load balancer" }

func (c *ServiceController) Run(ctx context.Context) error {
	if c.disabled {
		if err := ReleaseLoadBalancers(ctx, c.cs); err != nil {
			return err
		}
		c.ready.Open()
		<-ctx.Done()
		return nil
	}
	factory := informers.NewSharedInformerFactory(c.cs, 0)
	services, nodes := factory.Core().V1().Services(), factory.Core().V1().Nodes()
	lb := loadBalancers{cs: c.cs, services: services.Lister()}
	ctrl, err := servicecontroller.New(provider{lb: &lb}, c.cs, services, nodes, clusterName, utilfeature.DefaultFeatureGate)
	if err != nil {
		return fmt.Errorf("service controller: %w", err)
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
	c.ready.Open()
	<-done
	return nil
}

func (c *ServiceController) Ready(ctx context.Context) error { return c.ready.Wait(ctx) }

// ReleaseLoadBalancers undoes what the service controller did, for a cluster whose servers no
// longer run it (--disable servicelb): LoadBalancer Services of no class lose the addresses
// kone gave them, and the finalizer that would otherwise keep them from being deleted.
func ReleaseLoadBalancers(ctx context.Context, cs kubernetes.Interface) error {
	list, err := cs.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range list.Items {
		svc := &list.Items[i]
		if svc.Spec.LoadBalancerClass != nil || !servicehelper.HasLBFinalizer(svc) {
			continue
		}
		updated := svc.DeepCopy()
		updated.Finalizers = slices.DeleteFunc(updated.Finalizers, func(f string) bool { return f == servicehelper.LoadBalancerCleanupFinalizer })
		updated.Status.LoadBalancer = corev1.LoadBalancerStatus{}
		if _, err := servicehelper.PatchService(cs.CoreV1(), svc, updated); err != nil {
			return fmt.Errorf("release LoadBalancer Service %s/%s: %w", svc.Namespace, svc.Name, err)
		}
	}
	return nil
}
