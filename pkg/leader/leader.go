// Package leader runs a component on one server of the cluster at a time: every server runs
// it under leader election over a Lease in kube-system, and only the holder of the lease runs
// the component. When its server goes away, another takes the lease over once it expires.
//
// kone elects for the upstream controllers itself (they run with --leader-elect=false) so that
// a lost lease stops the component and makes its server stand by again, where upstream would
// end the whole process; and so that a server's identity is its name, which lets a restarted
// server take its own lease back at once instead of waiting for it to expire.
package leader

import (
	"context"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/kone-dev/kone/pkg/supervisor"
)

// Timing of the election: a lease lasts LeaseDuration from its last renewal, so another
// server takes over at most that long after its holder is lost; the holder gives up when it
// cannot renew for RenewDeadline, before anyone else may take it.
const (
	LeaseDuration = 10 * time.Second
	RenewDeadline = 7 * time.Second
	RetryPeriod   = 2 * time.Second
)

// Elected is a component that runs only while its server holds the lease.
type Elected struct {
	inner    supervisor.Component
	cs       kubernetes.Interface
	lease    string
	identity string
	log      *logrus.Logger
	settled  *supervisor.Latch // this server runs the component, ready, or another one holds the lease
}

// Elect wraps inner in an election for the Lease kube-system/lease, as identity (the server's
// name). cs may read and write Leases in kube-system.
func Elect(inner supervisor.Component, cs kubernetes.Interface, lease, identity string, log *logrus.Logger) *Elected {
	return &Elected{inner: inner, cs: cs, lease: lease, identity: identity, log: log, settled: supervisor.NewLatch()}
}

func (e *Elected) Name() string { return e.inner.Name() }

// Ready waits until this server runs the component and the component is ready, or until
// another server is seen to hold the lease: a server that stands by is ready too.
func (e *Elected) Ready(ctx context.Context) error { return e.settled.Wait(ctx) }

// Run campaigns for the lease until ctx is done, running the component while it holds it. The
// component failing while it leads is the component's failure; losing the lease is not: the
// component stops and the server stands by again.
func (e *Elected) Run(ctx context.Context) error {
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, "kube-system", e.lease,
		e.cs.CoreV1(), e.cs.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: e.identity})
	if err != nil {
		return fmt.Errorf("lease %s: %w", e.lease, err)
	}
	log := e.log.WithField("lease", e.lease)
	for {
		round, cancel := context.WithCancel(ctx)
		started := make(chan context.Context, 1)
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: LeaseDuration, RenewDeadline: RenewDeadline, RetryPeriod: RetryPeriod,
			ReleaseOnCancel: true, Name: e.lease,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(leading context.Context) { started <- leading },
				OnStoppedLeading: func() {},
				OnNewLeader: func(holder string) {
					if holder != e.identity {
						e.settled.Open()
					}
				},
			},
		})
		if err != nil {
			cancel()
			return fmt.Errorf("lease %s: %w", e.lease, err)
		}
		campaign := make(chan struct{})
		go func() { elector.Run(round); close(campaign) }()
		select {
		case <-campaign:
		case leading := <-started:
			log.Debug("holding the lease")
			go func() {
				if e.inner.Ready(leading) == nil {
					e.settled.Open()
				}
			}()
			err := e.inner.Run(leading)
			byItself := leading.Err() == nil
			cancel() // gives the lease up when the component stopped by itself
			<-campaign
			if byItself {
				if err == nil {
					err = fmt.Errorf("%s stopped by itself", e.inner.Name())
				}
				return err
			}
		}
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("lost the lease (it could not be renewed, or another server holds it); " + e.inner.Name() + " stopped here and this server stands by")
		// The stopped component may still be letting go of what it held (its port).
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(RetryPeriod):
		}
	}
}
