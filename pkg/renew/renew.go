// Package renew keeps a kone's certificates valid while it runs. kone issues its certificates
// as it starts; a kone that runs for a year would see them expire under it. The renewer checks
// them every hour, and within seconds of a change to a file in the directories that hold them
// (a certificate put back from a backup or replaced by hand, `kone certificate rotate`). What
// it renews, the components take from disk without a restart.
package renew

import (
	"context"
	"errors"
	"io/fs"
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
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	for _, d := range r.dirs {
		if err := w.Add(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	tick := time.NewTicker(r.every)
	defer tick.Stop()
	var changed <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			r.check(ctx)
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("certificate renewer: the watch on the certificate directories ended")
			}
			if ev.Op != fsnotify.Chmod && changed == nil {
				changed = time.After(settle)
			}
		case err := <-w.Errors:
			r.log.WithError(err).Debug("certificate renewer: watch")
		case <-changed:
			changed = nil
			r.check(ctx)
		}
	}
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
