// Package supervisor runs kone's components: in order, each one started only once the one
// before it is ready, and stopped in reverse order when kone is told to stop or when any of them
// fails. It is the one place that starts goroutines for components.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// Component is one part of kone, such as etcd or the apiserver.
type Component interface {
	Name() string
	// Run runs the component until ctx is done, then stops it and returns. Returning before
	// ctx is done is a failure, even with a nil error.
	Run(ctx context.Context) error
	// Ready returns nil once the component serves, or an error if ctx ends first.
	Ready(ctx context.Context) error
}

// Supervisor runs a chain of components.
type Supervisor struct {
	Log          *logrus.Logger
	ReadyTimeout time.Duration // for each component
	StopTimeout  time.Duration // for each component
	// OnReady, if set, is called once every component is ready.
	OnReady func()
	// OnStopping, if set, is called when the components are about to be stopped.
	OnStopping func()
}

type running struct {
	c      Component
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// Run starts the components in order and blocks until ctx is done or one of them fails; then it
// stops the ones it started, last first. It returns the first failure, or nil after a requested
// stop in which every component stopped in time.
func (s *Supervisor) Run(ctx context.Context, components ...Component) error {
	begin := time.Now()
	exited := make(chan *running, len(components))
	var started []*running
	var hung error
	stopAll := func() {
		for i := len(started) - 1; i >= 0; i-- {
			if err := s.stop(started[i]); err != nil && hung == nil {
				hung = err
			}
		}
	}
	for _, c := range components {
		// Components get their own context, not ctx: they must stop in reverse order, not all at once.
		cctx, cancel := context.WithCancel(context.Background())
		r := &running{c: c, cancel: cancel, done: make(chan struct{})}
		started = append(started, r)
		go func() {
			r.err = c.Run(cctx)
			close(r.done)
			exited <- r
		}()
		t0 := time.Now()
		if err := s.waitReady(ctx, r); err != nil {
			stopAll()
			return errors.Join(err, hung)
		}
		s.Log.Infof("%s ready in %s", c.Name(), time.Since(t0).Round(10*time.Millisecond))
	}
	s.Log.WithField("elapsed", time.Since(begin).Round(10*time.Millisecond).String()).Info("kone is ready")
	if s.OnReady != nil {
		s.OnReady()
	}
	var failure error
	select {
	case <-ctx.Done():
		s.Log.Info("stopping")
	case r := <-exited:
		failure = exitError(r)
		s.Log.WithError(failure).Error("a component stopped; stopping the others")
	}
	if s.OnStopping != nil {
		s.OnStopping()
	}
	t0 := time.Now()
	stopAll()
	s.Log.Infof("stopped in %s", time.Since(t0).Round(10*time.Millisecond))
	return errors.Join(failure, hung)
}

func (s *Supervisor) waitReady(ctx context.Context, r *running) error {
	rctx, cancel := context.WithTimeout(ctx, s.ReadyTimeout)
	defer cancel()
	ready := make(chan error, 1)
	go func() { ready <- r.c.Ready(rctx) }()
	select {
	case err := <-ready:
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("stopped while waiting for %s", r.c.Name())
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s was not ready within %s", r.c.Name(), s.ReadyTimeout)
		}
		return fmt.Errorf("%s: %w", r.c.Name(), err)
	case <-r.done:
		return exitError(r)
	}
}

// stop stops one component; a component that does not stop in time is left, the others are
// stopped still, and the supervisor's Run says so.
func (s *Supervisor) stop(r *running) error {
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil && !errors.Is(r.err, context.Canceled) {
			s.Log.WithError(r.err).Warnf("%s stopped with an error", r.c.Name())
		}
		s.Log.Debugf("%s stopped", r.c.Name())
		return nil
	case <-time.After(s.StopTimeout):
		s.Log.Warnf("%s did not stop within %s; leaving it", r.c.Name(), s.StopTimeout)
		return fmt.Errorf("%s did not stop within %s", r.c.Name(), s.StopTimeout)
	}
}

func exitError(r *running) error {
	if r.err != nil {
		return fmt.Errorf("%s: %w", r.c.Name(), r.err)
	}
	return fmt.Errorf("%s exited unexpectedly", r.c.Name())
}

// Latch is the readiness signal of a component that becomes ready partway through its Run: Run
// opens it, Ready waits on it.
type Latch struct {
	once sync.Once
	ch   chan struct{}
}

// NewLatch returns a latch that is not open yet.
func NewLatch() *Latch { return &Latch{ch: make(chan struct{})} }

// Open marks the component ready; opening twice is harmless.
func (l *Latch) Open() { l.once.Do(func() { close(l.ch) }) }

// Wait returns nil once the latch is open, or ctx's error if ctx ends first.
func (l *Latch) Wait(ctx context.Context) error {
	select {
	case <-l.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
