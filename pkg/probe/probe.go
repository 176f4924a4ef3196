// Package probe waits for a component to answer, the way a user's client would see it.
package probe

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// HTTP GETs url until it answers 200 OK, or ctx ends; then it returns ctx's error joined with
// the last failure, which says what the component was doing instead of answering.
func HTTP(ctx context.Context, client *http.Client, url string) error {
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s answered %s", url, resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
