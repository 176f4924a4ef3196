package leader

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// counting is a component that counts the instances of it that run at once, in all servers.
type counting struct {
	running *atomic.Int32
	runs    atomic.Int32
	fail    error
}

func (c *counting) Name() string                { return "counting" }
func (c *counting) Ready(context.Context) error { return nil }
func (c *counting) Run(ctx context.Context) error {
	c.runs.Add(1)
	c.running.Add(1)
	defer c.running.Add(-1)
	if c.fail != nil {
		return c.fail
	}
	<-ctx.Done()
	return nil
}

// clientset is a fake clientset whose Leases have resource versions, which updates must match,
// as the apiserver's do; without them a holder would overwrite whoever took the lease.
func clientset() *fake.Clientset {
	cs := fake.NewClientset()
	var mu sync.Mutex
	version := 0
	gvr := coordinationv1.SchemeGroupVersion.WithResource("leases")
	write := func(action k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		lease := action.(interface{ GetObject() runtime.Object }).GetObject().(*coordinationv1.Lease).DeepCopy()
		current, err := cs.Tracker().Get(gvr, lease.Namespace, lease.Name)
		if action.GetVerb() == "update" {
			if err != nil {
				return true, nil, err
			}
			if current.(*coordinationv1.Lease).ResourceVersion != lease.ResourceVersion {
				return true, nil, apierrors.NewConflict(gvr.GroupResource(), lease.Name, errors.New("the lease has changed"))
			}
		}
		version++
		lease.ResourceVersion = strconv.Itoa(version)
		if action.GetVerb() == "create" {
			err = cs.Tracker().Create(gvr, lease, lease.Namespace)
		} else {
			err = cs.Tracker().Update(gvr, lease, lease.Namespace)
		}
		return true, lease, err
	}
	cs.PrependReactor("create", "leases", write)
	cs.PrependReactor("update", "leases", write)
	return cs
}

func quiet() *logrus.Logger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(3 * LeaseDuration); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Three servers elect: one runs the component at a time; when it stops, another takes over;
// when another holder takes the lease from under a server, that server stops the component and
// runs it again once it holds the lease back.
func TestOneAtATime(t *testing.T) {
	cs := clientset()
	var running atomic.Int32
	servers := map[string]*counting{}
	stops := map[string]context.CancelFunc{}
	done := map[string]chan error{}
	var electors []*Elected
	for _, name := range []string{"s1", "s2", "s3"} {
		c := &counting{running: &running}
		ctx, cancel := context.WithCancel(context.Background())
		servers[name], stops[name], done[name] = c, cancel, make(chan error, 1)
		e := Elect(c, cs, "lease", name, quiet())
		go func() { done[name] <- e.Run(ctx) }()
		electors = append(electors, e)
	}
	// Every server is ready soon: the holder once its component is, the others as standbys.
	for _, e := range electors {
		ctx, cancel := context.WithTimeout(context.Background(), LeaseDuration)
		if err := e.Ready(ctx); err != nil {
			t.Errorf("%s not ready: %v", e.identity, err)
		}
		cancel()
	}
	holder := func() string {
		l, err := cs.CoordinationV1().Leases("kube-system").Get(context.Background(), "lease", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	waitFor(t, "a holder", func() bool { return running.Load() == 1 && holder() != "" })
	first := holder()
	if servers[first].runs.Load() != 1 {
		t.Fatalf("the holder %s ran the component %d times", first, servers[first].runs.Load())
	}
	// A clean stop releases the lease: another server takes over without waiting for it to expire.
	stopped := time.Now()
	stops[first]()
	if err := <-done[first]; err != nil {
		t.Fatalf("stopped server: %v", err)
	}
	waitFor(t, "a second holder", func() bool { return running.Load() == 1 && holder() != "" && holder() != first })
	if d := time.Since(stopped); d > LeaseDuration/2 {
		t.Errorf("took over %s after a clean stop; the lease was not released", d)
	}
	second := holder()

	// Someone else holds the lease now: the second holder stops, and no one runs it.
	give := func(to string) {
		t.Helper()
		l, err := cs.CoordinationV1().Leases("kube-system").Get(context.Background(), "lease", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		seconds, now := int32(LeaseDuration/time.Second), metav1.NewMicroTime(time.Now())
		l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &to, &seconds, &now
		if _, err := cs.CoordinationV1().Leases("kube-system").Update(context.Background(), l, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	give("intruder")
	waitFor(t, "the holder to stop", func() bool { return running.Load() == 0 })
	// Handed back, the lease makes the same server run the component again, in the same process.
	give(second)
	waitFor(t, "the holder to run it again", func() bool { return running.Load() == 1 && servers[second].runs.Load() == 2 })
	for name, stop := range stops {
		stop()
		if name != first {
			if err := <-done[name]; err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
}

// A component that fails while it leads is the server's failure, not a lost lease.
func TestFailureWhileLeading(t *testing.T) {
	var running atomic.Int32
	c := &counting{running: &running, fail: errors.New("broken")}
	err := Elect(c, fake.NewClientset(), "lease", "s1", quiet()).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("got %v, want the component's error", err)
	}
}
