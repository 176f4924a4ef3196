// Package queue works off the keys of a client-go workqueue, one at a time, as each of kone's
// own controllers does.
package queue

import (
	"time"

	"k8s.io/client-go/util/workqueue"
)

// Work takes keys from q until q shuts down and hands each to sync. A key whose sync fails is
// given to failed and comes back after q's backoff; one that syncs is forgotten by the backoff
// and, where resync is above zero, comes back after resync, changed or not.
func Work[T comparable](q workqueue.TypedRateLimitingInterface[T], sync func(T) error, failed func(T, error), resync time.Duration) {
	for {
		key, quit := q.Get()
		if quit {
			return
		}
		if err := sync(key); err != nil {
			failed(key, err)
			q.AddRateLimited(key)
		} else {
			q.Forget(key)
			if resync > 0 {
				q.AddAfter(key, resync)
			}
		}
		q.Done(key)
	}
}
