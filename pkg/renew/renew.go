// Package renew keeps a kone's certificates valid while it runs. kone issues its certificates
// as it starts; a kone that runs for a year would see them expire under it. The renewer checks
// them every hour, and within seconds of a change to a file in the directories that hold them
// (a certificate put back from a backup or replaced by hand, `kone certificate rotate`). What
// it renews, the components take from disk without a restart.
package renew

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"
)

// Every is how often the renewer checks with no change on disk: certificates are renewed 90
// days before they expire, so an hour is plenty, and costs a read of a few files.
const Every = time.Hour

// settle is how long the renewer waits after a change on disk before it checks: a rotation or
// a restore writes several files in a row.
const settle = 2 * time.Second

// Renewer is the component. Issue renews what needs it, at now, and returns what it issued.
type Renewer struct {
	issue func(ctx context.Context, now time.Time) ([]string, error)
	dirs  []string
	every time.Duration
	log   *logrus.Logger
}

// New returns a renewer of the certificates that issue renews, which live in dirs.
func New(issue func(ctx context.Context, now time.Time) ([]string, error), dirs []string, log *logrus.Logger) *Renewer {
	return &Renewer{issue: issue, dirs: dirs, every: Every, log: log}
}

func (r *Renewer) Name() string { return "certificate renewer" }

// Ready at once: the certificates were issued as kone started.
func (r *Renewer) Ready(context.Context) error { return nil }

func (r *Renewer) Run(ctx context.Context) error {
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w, err := r.watch(); err != nil {
		// inotify is a limited resource of the machine; the hourly check does without it.
		r.log.WithError(err).Warn("certificate renewer: cannot watch the certificate directories; checking every hour only")
	} else {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	tick := time.NewTicker(r.every)
	defer tick.Stop()
	var changed <-chan time.Time
	seen := r.state()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			r.check(ctx)
			seen = r.state()
		case ev, ok := <-events:
			if !ok {
				r.log.Warn("certificate renewer: the watch on the certificate directories ended; checking every hour only")
				events, errs = nil, nil
				continue
			}
			if ev.Op != fsnotify.Chmod && changed == nil {
				changed = time.After(settle)
			}
		case err := <-errs:
			r.log.WithError(err).Debug("certificate renewer: watch")
		case <-changed:
			changed = nil
			// The renewer's own writes are changes too; only one from elsewhere is checked, or
			// a certificate that cannot be renewed for good would be asked for again and again.
			if now := r.state(); now != seen {
				r.check(ctx)
				seen = r.state()
			}
		}
	}
}

func (r *Renewer) watch() (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	for _, d := range r.dirs {
		if err := w.Add(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			w.Close()
			return nil, err
		}
	}
	return w, nil
}

// state sums up the files in the watched directories: names, sizes and times.
func (r *Renewer) state() string {
	var b strings.Builder
	for _, d := range r.dirs {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
				fmt.Fprintf(&b, "%s/%s %d %d\n", d, e.Name(), info.Size(), info.ModTime().UnixNano())
			}
		}
	}
	return b.String()
}

func (r *Renewer) check(ctx context.Context) {
	issued, err := r.issue(ctx, time.Now())
	if len(issued) > 0 {
		r.log.WithField("certificates", strings.Join(issued, ",")).Info("renewed certificates")
	}
	if err != nil {
		r.log.WithError(err).Warn("cannot renew certificates; trying again within the hour")
	}
}
