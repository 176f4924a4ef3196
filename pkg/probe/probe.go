// Package probe waits for a component to answer, the way a user's client would see it.
package probe

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Until calls check every interval until it returns nil, or ctx ends; then it returns ctx's
// error joined with check's last error, which says what was not there yet.
func Until(ctx context.Context, every time.Duration, check func() error) error {
	for {
		last := check()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(every):
		}
	}
}

// HTTP GETs url until it answers 200 OK, or ctx ends; then it returns ctx's error joined with
// the last failure, which says what the component was doing instead of answering.
func HTTP(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	return Until(ctx, 100*time.Millisecond, func() error {
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s answered %s", url, resp.Status)
		}
		return nil
	})
}
