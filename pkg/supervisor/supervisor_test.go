package supervisor

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// fake is a component that records what happens to it.
type fake struct {
	name      string
	events    *[]string
	mu        *sync.Mutex
	readyErr  error
	exitAfter time.Duration // > 0: Run returns on its own after this long
	// neverReady: Ready waits until its context ends; hangOnStop: Run does not return when asked to.
	neverReady, hangOnStop bool
	ready                  chan struct{}
}

func eventsOf(c Component) *[]string {
	f := c.(*fake)
	f.mu.Lock()
	defer f.mu.Unlock()
	copied := append([]string(nil), *f.events...)
	return &copied
}

func (f *fake) Name() string { return f.name }

func (f *fake) record(e string) {
	f.mu.Lock()
	*f.events = append(*f.events, f.name+" "+e)
	f.mu.Unlock()
}

func (f *fake) Run(ctx context.Context) error {
	f.record("start")
	close(f.ready)
	if f.exitAfter > 0 {
		select {
		case <-time.After(f.exitAfter):
			return errors.New("crashed")
		case <-ctx.Done():
		}
	}
	<-ctx.Done()
	if f.hangOnStop {
		select {}
	}
	f.record("stop")
	return nil
}

func (f *fake) Ready(ctx context.Context) error {
	<-f.ready
	if f.neverReady {
		<-ctx.Done()
		return ctx.Err()
	}
	if f.readyErr != nil {
		return f.readyErr
	}
	f.record("ready")
	return nil
}

func setup(names ...string) (*Supervisor, []Component, *[]string) {
	var events []string
	mu := &sync.Mutex{}
	var cs []Component
	for _, n := range names {
		cs = append(cs, &fake{name: n, events: &events, mu: mu, ready: make(chan struct{})})
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	return &Supervisor{Log: log, ReadyTimeout: time.Second, StopTimeout: time.Second}, cs, &events
}

func TestOrderedStartAndReverseStop(t *testing.T) {
	s, cs, events := setup("a", "b", "c")
	ready := make(chan struct{})
	s.OnReady = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx, cs...) }()
	<-ready
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("a requested stop returned %v", err)
	}
	want := "a start,a ready,b start,b ready,c start,c ready,c stop,b stop,a stop"
	if got := strings.Join(*events, ","); got != want {
		t.Fatalf("events\n got %s\nwant %s", got, want)
	}
}

func TestFailureBeforeReadyStopsStartedOnes(t *testing.T) {
	s, cs, events := setup("a", "b", "c")
	cs[1].(*fake).readyErr = errors.New("no good")
	err := s.Run(context.Background(), cs...)
	if err == nil || !strings.Contains(err.Error(), "b: no good") {
		t.Fatalf("got %v", err)
	}
	want := "a start,a ready,b start,b stop,a stop"
	if got := strings.Join(*events, ","); got != want {
		t.Fatalf("events\n got %s\nwant %s", got, want)
	}
}

func TestCrashAfterReadyStopsTheRest(t *testing.T) {
	s, cs, events := setup("a", "b", "c")
	cs[1].(*fake).exitAfter = 50 * time.Millisecond
	err := s.Run(context.Background(), cs...)
	if err == nil || !strings.Contains(err.Error(), "b: crashed") {
		t.Fatalf("got %v", err)
	}
	got := strings.Join(*events, ",")
	if !strings.HasSuffix(got, "c stop,a stop") || strings.Contains(got, "b stop") {
		t.Fatalf("events %s", got)
	}
}

// TestReadyTimeout: a component that never becomes ready (its Ready waits for as long as it
// is let) is given up after ReadyTimeout, and the ones started are stopped.
func TestReadyTimeout(t *testing.T) {
	s, cs, events := setup("first", "slow")
	cs[1].(*fake).neverReady = true
	s.ReadyTimeout = 50 * time.Millisecond
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background(), cs...) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "slow was not ready within 50ms") {
			t.Fatalf("got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the supervisor did not give up on a component that never became ready")
	}
	if got := strings.Join(*events, ","); got != "first start,first ready,slow start,slow stop,first stop" {
		t.Errorf("events: %s", got)
	}
}

// TestHungStopIsAFailure: a component that does not stop in time is left, the others still
// stop, and Run says which one hung instead of reporting a clean stop.
func TestHungStopIsAFailure(t *testing.T) {
	s, cs, events := setup("first", "hung")
	cs[1].(*fake).hangOnStop = true
	s.StopTimeout = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, cs...) }()
	for !strings.Contains(strings.Join(*eventsOf(cs[1]), ","), "hung ready") {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "hung did not stop within 50ms") {
		t.Fatalf("got %v", err)
	}
	if !strings.Contains(strings.Join(*events, ","), "first stop") {
		t.Errorf("the component before the hung one was not stopped: %v", *events)
	}
}
