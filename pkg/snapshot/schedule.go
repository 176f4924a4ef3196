package snapshot

import (
	"context"
	"fmt"
	"time"

	"github.com/robfig/cron/v3"
)

// parser reads cron expressions as k3s's --etcd-snapshot-schedule-cron does: five fields, or six
// with seconds first, or a descriptor such as @daily.
var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule checks a cron expression.
func ParseSchedule(spec string) (cron.Schedule, error) {
	s, err := parser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("--etcd-snapshot-schedule-cron %q: %w; for example \"0 */12 * * *\" (every 12 hours)", spec, err)
	}
	return s, nil
}

// Scheduler saves a snapshot of this server's member on a cron schedule and keeps the newest
// few. Every server runs one for its own member.
type Scheduler struct {
	saver     Saver
	schedule  cron.Schedule
	retention int
}

// NewScheduler checks the schedule and the retention.
func NewScheduler(s Saver, spec string, retention int) (*Scheduler, error) {
	schedule, err := ParseSchedule(spec)
	if err != nil {
		return nil, err
	}
	if retention < 1 {
		return nil, fmt.Errorf("--etcd-snapshot-retention %d: keep at least one snapshot", retention)
	}
	return &Scheduler{saver: s, schedule: schedule, retention: retention}, nil
}

func (s *Scheduler) Name() string { return "etcd snapshots" }

// Ready at once: the first snapshot is due at the schedule's first time.
func (s *Scheduler) Ready(context.Context) error { return nil }

func (s *Scheduler) Run(ctx context.Context) error {
	// Snapshots saved or deleted while this server was down are listed in the API again.
	s.saver.Publish(ctx)
	for {
		next := s.schedule.Next(time.Now())
		timer := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
		s.take(ctx)
	}
}

// take saves and prunes, then publishes once: the API never lists more than the retention.
func (s *Scheduler) take(ctx context.Context) {
	log := s.saver.Log
	m, err := s.saver.save(ctx, ScheduledName)
	if err != nil {
		log.WithError(err).Warn("scheduled etcd snapshot failed; trying again at the next scheduled time")
		return
	}
	log.WithField("snapshot", m.Name).WithField("bytes", m.Size).Info("saved a scheduled etcd snapshot")
	gone, err := s.saver.Dir.Prune(ScheduledName, m.Node, s.retention)
	if err != nil {
		log.WithError(err).Warn("cannot prune old etcd snapshots")
	}
	if len(gone) > 0 {
		log.WithField("deleted", gone).Debug("pruned old etcd snapshots")
	}
	s.saver.Publish(ctx)
}
