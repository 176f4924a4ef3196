package queue

import (
	"errors"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/util/workqueue"
)

// A key that fails comes back until it syncs; one that syncs comes back only with a resync.
func TestWork(t *testing.T) {
	q := workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Millisecond, 10*time.Millisecond))
	var mu sync.Mutex
	calls := map[string]int{}
	var failures []string
	sync := func(key string) error {
		mu.Lock()
		defer mu.Unlock()
		calls[key]++
		if key == "flaky" && calls[key] < 3 {
			return errors.New("not yet")
		}
		return nil
	}
	failed := func(key string, err error) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, key+": "+err.Error())
	}
	done := make(chan struct{})
	go func() { Work(q, sync, failed, 0); close(done) }()
	q.Add("flaky")
	q.Add("once")
	time.Sleep(200 * time.Millisecond)
	q.ShutDown()
	<-done
	if calls["flaky"] != 3 || calls["once"] != 1 || len(failures) != 2 {
		t.Errorf("calls %v, failures %v; want flaky 3 times (2 failures), once once", calls, failures)
	}
	if q.NumRequeues("flaky") != 0 {
		t.Error("a key that synced is still remembered by the backoff")
	}

	// With a resync, a key that synced comes back, again and again.
	q = workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	calls = map[string]int{}
	done = make(chan struct{})
	go func() { Work(q, sync, failed, 20*time.Millisecond); close(done) }()
	q.Add("once")
	time.Sleep(200 * time.Millisecond)
	q.ShutDown()
	<-done
	if calls["once"] < 3 {
		t.Errorf("with a resync of 20ms, a key synced %d times in 200ms", calls["once"])
	}
}
