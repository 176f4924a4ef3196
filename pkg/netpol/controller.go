package netpol

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/kone-dev/kone/pkg/queue"
	"github.com/kone-dev/kone/pkg/supervisor"
)

// resync is how often the table is written again with no change seen, which puts back rules
// that someone removed by hand.
const resync = time.Minute

// Config is what a node's enforcement needs.
type Config struct {
	NodeName string
	// Client may list and watch pods, namespaces and network policies.
	Client kubernetes.Interface
	// Disabled (--disable network-policy): the node enforces nothing and removes the table it
	// had.
	Disabled bool
	Log      *logrus.Logger
}

// Controller enforces the cluster's NetworkPolicies on its node's pods, a component of the
// node side.
type Controller struct {
	cfg   Config
	ready *supervisor.Latch

	// Only Run, then the queue's one worker, touch these.
	last    Ruleset
	written time.Time
	skipped []string // why policies were left out
	failure string   // why the last write failed, until one succeeds
}

// New checks the configuration.
func New(cfg Config) (*Controller, error) {
	if cfg.NodeName == "" || (cfg.Client == nil && !cfg.Disabled) || cfg.Log == nil {
		return nil, fmt.Errorf("network policy: a node name, a client and a logger are needed")
	}
	return &Controller{cfg: cfg, ready: supervisor.NewLatch()}, nil
}

func (c *Controller) Name() string { return "network policy" }

// Ready once the node's table was written with the policies as they were at start, or the
// kernel refused it (said in the log; the table from before stays).
func (c *Controller) Ready(ctx context.Context) error { return c.ready.Wait(ctx) }

func (c *Controller) Run(ctx context.Context) error {
	if c.cfg.Disabled {
		if err := Remove(-1); err != nil {
			return fmt.Errorf("network policy is disabled, but its rules stay: %w", err)
		}
		c.ready.Open()
		<-ctx.Done()
		return nil
	}
	factory := informers.NewSharedInformerFactory(c.cfg.Client, 0)
	pods := factory.Core().V1().Pods()
	namespaces := factory.Core().V1().Namespaces()
	policies := factory.Networking().V1().NetworkPolicies()
	if err := pods.Informer().SetTransform(slimPod); err != nil {
		return fmt.Errorf("network policy: %w", err)
	}
	changes := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer changes.ShutDown()
	changed := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { changes.Add("") },
		UpdateFunc: func(before, after any) {
			// Most pod updates are of its status, which the slim copies leave out.
			if !samePod(before, after) {
				changes.Add("")
			}
		},
		DeleteFunc: func(any) { changes.Add("") },
	}
	for _, inf := range []cache.SharedIndexInformer{pods.Informer(), namespaces.Informer(), policies.Informer()} {
		if _, err := inf.AddEventHandler(changed); err != nil {
			return fmt.Errorf("network policy: %w", err)
		}
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if factory.WaitForCacheSync(ctx.Done()); ctx.Err() != nil {
		return nil
	}
	sync := func(string) error {
		cluster := Cluster{Node: c.cfg.NodeName}
		var err error
		if cluster.Pods, err = pods.Lister().List(labels.Everything()); err != nil {
			return fmt.Errorf("list pods: %w", err)
		}
		if cluster.Namespaces, err = namespaces.Lister().List(labels.Everything()); err != nil {
			return fmt.Errorf("list namespaces: %w", err)
		}
		if cluster.Policies, err = policies.Lister().List(labels.Everything()); err != nil {
			return fmt.Errorf("list network policies: %w", err)
		}
		return c.sync(cluster)
	}
	// Said once per reason: every change of a pod comes back here while the kernel refuses.
	failed := func(_ string, err error) {
		if err.Error() != c.failure {
			c.failure = err.Error()
			c.cfg.Log.WithError(err).Warn("network policies not enforced as they stand; the last table written stays, trying again")
		}
	}
	// Without nftables, or without a part of it that the table uses, kone stops rather than run
	// pods that their policies do not hold to. A table the kernel refuses for its size is
	// another matter: the last one stays, and the worker retries.
	if err := Available(-1); err != nil {
		return fmt.Errorf("network policy: %w; enable CONFIG_NF_TABLES in the kernel (or load nf_tables), or start kone with --disable network-policy", err)
	}
	if err := sync(""); err != nil {
		failed("", err)
	}
	c.ready.Open()
	// The informers' first events are queued already: the worker takes it from here.
	go queue.Work(changes, sync, failed, resync)
	<-ctx.Done()
	// The table stays: the pods outlive kone, and so do their policies.
	return nil
}

// sync writes the table when what it should hold changed, or when it was written a resync ago.
func (c *Controller) sync(cluster Cluster) error {
	rs, skipped := Compile(cluster)
	// Said once, not at every change of a pod.
	var reasons []string
	for _, err := range skipped {
		reasons = append(reasons, err.Error())
	}
	if !slices.Equal(reasons, c.skipped) {
		for _, r := range reasons {
			c.cfg.Log.WithField("reason", r).Warn("network policy not enforced")
		}
		c.skipped = reasons
	}
	if !c.written.IsZero() && reflect.DeepEqual(rs, c.last) && time.Since(c.written) < resync {
		return nil
	}
	if err := Program(rs, -1); err != nil {
		return err
	}
	if c.written.IsZero() || !reflect.DeepEqual(rs, c.last) {
		c.cfg.Log.WithFields(logrus.Fields{"ingress": len(rs.Ingress), "egress": len(rs.Egress)}).Debug("network policies written")
	}
	if c.failure != "" {
		c.cfg.Log.Info("network policies enforced again")
		c.failure = ""
	}
	c.last, c.written = rs, time.Now()
	return nil
}

// samePod says whether two slim copies of a pod are the same but for their resource versions.
func samePod(before, after any) bool {
	a, ok := before.(*corev1.Pod)
	b, ok2 := after.(*corev1.Pod)
	if !ok || !ok2 {
		return false
	}
	a, b = a.DeepCopy(), b.DeepCopy()
	a.ResourceVersion, b.ResourceVersion = "", ""
	return reflect.DeepEqual(a, b)
}

// slimPod keeps of a pod only what policies are compiled from: the informer holds every pod of
// the cluster on every node.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	slim := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, Labels: p.Labels, ResourceVersion: p.ResourceVersion},
		Spec:       corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status:     corev1.PodStatus{Phase: p.Status.Phase, PodIPs: p.Status.PodIPs},
	}
	for _, list := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for _, ctr := range list {
			if len(ctr.Ports) > 0 {
				slim.Spec.Containers = append(slim.Spec.Containers, corev1.Container{Name: ctr.Name, Ports: ctr.Ports})
			}
		}
	}
	return slim, nil
}
