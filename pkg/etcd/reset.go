package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	etcdsnapshot "go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.etcd.io/etcd/pkg/v3/traceutil"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/lease"
	"go.etcd.io/etcd/server/v3/storage/backend"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
	"go.uber.org/zap"

	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/snapshot"
)

// A reset builds the member's new data beside its data dir (staged), records what it is about
// to do (ResetRecord) and then moves the old data aside and the new into place. The record
// lets a start after a crash finish the moves, and tells a later start that still asks for a
// reset that one was done: resetting again would throw away what the cluster stored since.
const (
	resetRecordName = "reset"
	stagedName      = "reset-staged"
	unpackedName    = ".reset-snapshot.db"
	// revisionBump lifts the restored store's revision above any that a client saw before the
	// restore, and the revisions in between are marked compacted: a watcher that resumes from
	// a revision of the lost history relists instead of missing changes.
	revisionBump = 1_000_000_000
)

// Reset makes this server's etcd member a cluster of one again: from a snapshot, or from the
// member's own data when the others are lost (quorum loss). Nothing is deleted: the data it
// replaces is moved into a directory beside it, reset-TIME.
type Reset struct {
	Member Config
	// Snapshot is the snapshot file to restore (snapshot.Unpack reads it); empty: keep the
	// member's own data.
	Snapshot string
	// Also are other files of the member's, in the directory of its data dir, that belong to
	// the data it replaces and go aside with it.
	Also []string
	// Check says whether the new data may replace the old (the snapshot is of this cluster);
	// it gets the new data's directory, on which no etcd runs.
	Check func(dataDir string) error
	Log   *zap.Logger
}

// ResetRecord is what a reset did, kept beside the data dir until kone starts without
// --cluster-reset. Snapshot is the file restored, empty for the member's own data.
type ResetRecord struct {
	At       time.Time `json:"at"`
	Snapshot string    `json:"snapshot,omitempty"`
	// Aside holds the replaced data, Moved the names in it.
	Aside string   `json:"aside"`
	Moved []string `json:"moved"`
}

// Run resets the member. Until the record is written, a failure leaves the data dir as it was.
func (r Reset) Run(ctx context.Context, now time.Time) error {
	data := r.Member.DataDir
	db := filepath.Dir(data)
	staged := filepath.Join(db, stagedName)
	unpacked := filepath.Join(db, unpackedName)
	// What a reset that failed before its record left behind.
	for _, p := range []string{staged, unpacked} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("etcd reset: %w", err)
		}
	}
	if err := os.MkdirAll(db, 0o700); err != nil {
		return fmt.Errorf("etcd reset: %w", err)
	}
	defer os.Remove(unpacked)
	if err := r.stage(ctx, staged, unpacked, now); err != nil {
		os.RemoveAll(staged)
		return err
	}
	if r.Check != nil {
		if err := r.Check(staged); err != nil {
			os.RemoveAll(staged)
			return err
		}
	}
	rec := ResetRecord{At: now.UTC(), Snapshot: r.Snapshot, Aside: "reset-" + now.UTC().Format("20060102T150405Z"),
		Moved: []string{filepath.Base(data)}}
	for _, f := range r.Also {
		rec.Moved = append(rec.Moved, filepath.Base(f))
	}
	record, err := json.Marshal(rec)
	if err != nil {
		os.RemoveAll(staged)
		return err
	}
	if err := pki.WriteFile(filepath.Join(db, resetRecordName), append(record, '\n'), 0o600); err != nil {
		os.RemoveAll(staged)
		return fmt.Errorf("etcd reset: %w", err)
	}
	return rec.finish(db, data)
}

// stage builds the new data in staged; a snapshot is unpacked to unpacked first.
func (r Reset) stage(ctx context.Context, staged, unpacked string, now time.Time) error {
	if r.Snapshot != "" {
		if _, err := snapshot.Unpack(r.Snapshot, unpacked); err != nil {
			return fmt.Errorf("--cluster-reset-restore-path: %w", err)
		}
		peer := r.Member.PeerURL()
		err := etcdsnapshot.NewV3(r.Log).Restore(etcdsnapshot.RestoreConfig{
			SnapshotPath: unpacked, Name: r.Member.Name, OutputDataDir: staged,
			PeerURLs: []string{peer}, InitialCluster: r.Member.Name + "=" + peer,
			// A cluster of its own, apart from the one the snapshot was taken from: a server
			// of that one that is still running must not take it for its own.
			InitialClusterToken: fmt.Sprintf("kone-%d", now.UnixNano()),
			RevisionBump:        revisionBump, MarkCompacted: true,
		})
		if err != nil {
			return fmt.Errorf("etcd reset: restore %s: %w", r.Snapshot, err)
		}
		return nil
	}
	if _, err := os.Stat(filepath.Join(r.Member.DataDir, "member")); err != nil {
		return fmt.Errorf("etcd reset: this server has no etcd data to reset in %s; to restore a snapshot, give --cluster-reset-restore-path", r.Member.DataDir)
	}
	// etcd rewrites the membership into the data it starts on: a copy, so that the original
	// goes aside as it was.
	if err := copyTree(r.Member.DataDir, staged); err != nil {
		return fmt.Errorf("etcd reset: copy the member's data: %w", err)
	}
	return r.forceNewCluster(ctx, staged)
}

// forceNewCluster starts etcd once on dir with --force-new-cluster, which drops every other
// member from the membership that the data holds, and stops it once it serves.
func (r Reset) forceNewCluster(ctx context.Context, dir string) error {
	cfg, err := Settings(r.Member)
	if err != nil {
		return err
	}
	cfg.Dir, cfg.ForceNewCluster = dir, true
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(r.Log)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcd reset: start etcd as a cluster of one: %w", err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcd reset: %w", err)
	case <-e.Server.StopNotify():
		return errors.New("etcd reset: etcd stopped before it served as a cluster of one; its log above says why")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// finish moves the replaced data aside and the staged data into place, or, once the staged
// data is gone, checks that it is in place. A start after a crash in the middle finishes
// what is left; a file where a move would put one means that someone changed the directory
// meanwhile, and stops it rather than guess.
func (rec ResetRecord) finish(db, data string) error {
	staged := filepath.Join(db, stagedName)
	if _, err := os.Lstat(staged); err == nil {
		aside := filepath.Join(db, rec.Aside)
		if err := os.MkdirAll(aside, 0o700); err != nil {
			return fmt.Errorf("etcd reset: %w", err)
		}
		for _, name := range rec.Moved {
			if err := moveOnce(filepath.Join(db, name), filepath.Join(aside, name)); err != nil {
				return err
			}
		}
		if err := moveOnce(staged, data); err != nil {
			return err
		}
		if err := pki.SyncDir(aside); err != nil {
			return err
		}
		if err := pki.SyncDir(db); err != nil {
			return err
		}
	}
	if _, err := os.Stat(filepath.Join(data, "member")); err != nil {
		return fmt.Errorf("etcd reset: the data of the reset recorded in %s is not in %s (%v); the data it replaced is in %s: put one of them back",
			filepath.Join(db, resetRecordName), data, err, filepath.Join(db, rec.Aside))
	}
	return nil
}

// moveOnce renames from to to unless from is gone (moved already).
func moveOnce(from, to string) error {
	if _, err := os.Lstat(from); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := os.Lstat(to); err == nil {
		return fmt.Errorf("etcd reset: both %s and %s exist, so the reset cannot finish; move one of them away", from, to)
	}
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("etcd reset: %w", err)
	}
	return nil
}

// LastReset finishes a reset that was stopped half-way, or removes what one stopped before
// its record left, and returns the record of the last reset beside dataDir, nil when none is
// recorded.
func LastReset(dataDir string) (*ResetRecord, error) {
	db := filepath.Dir(dataDir)
	file := filepath.Join(db, resetRecordName)
	raw, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		// A reset killed before its record changed nothing but these.
		for _, p := range []string{filepath.Join(db, stagedName), filepath.Join(db, unpackedName)} {
			if err := os.RemoveAll(p); err != nil {
				return nil, fmt.Errorf("etcd reset: remove what a reset that did not finish left: %w", err)
			}
		}
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("etcd reset record: %w", err)
	}
	var rec ResetRecord
	valid := json.Unmarshal(raw, &rec) == nil && rec.Aside != "" && filepath.Base(rec.Aside) == rec.Aside
	for _, name := range rec.Moved {
		valid = valid && name != "" && filepath.Base(name) == name
	}
	if !valid {
		return nil, fmt.Errorf("etcd reset record %s is damaged; the data a reset replaced is in %s, and the data it restored in %s until it is moved into %s: put that in place, then remove the record",
			file, filepath.Join(db, "reset-*"), filepath.Join(db, stagedName), dataDir)
	}
	if err := rec.finish(db, dataDir); err != nil {
		return nil, err
	}
	return &rec, nil
}

// ForgetReset drops the record of the last reset: kone started without asking for one.
func ForgetReset(dataDir string) error {
	err := os.Remove(filepath.Join(filepath.Dir(dataDir), resetRecordName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("etcd reset record: %w", err)
	}
	return nil
}

// copyTree copies the directory src to dst, which must not exist, file modes kept and every
// file and directory synced: etcd finds its files after a power cut.
func copyTree(src, dst string) error {
	var dirs []string
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			dirs = append(dirs, target)
			return os.Mkdir(target, 0o700)
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file", path)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return copyFile(path, target, info.Mode().Perm())
	})
	for _, d := range dirs {
		if err == nil {
			err = pki.SyncDir(d)
		}
	}
	return err
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// ReadKey returns the current value of key in the etcd data in dataDir, on which no etcd runs;
// nil when the key is absent.
func ReadKey(dataDir, key string) ([]byte, error) {
	path := filepath.Join(dataDir, "member", "snap", "db")
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("etcd data: %w", err)
	}
	lg := zap.NewNop()
	be := backend.NewDefaultBackend(lg, path)
	defer be.Close()
	store := mvcc.NewStore(lg, be, &lease.FakeLessor{}, mvcc.StoreConfig{})
	defer store.Close()
	txn := store.Read(mvcc.ConcurrentReadTxMode, traceutil.TODO())
	defer txn.End()
	res, err := txn.Range(context.Background(), []byte(key), nil, mvcc.RangeOptions{})
	if err != nil {
		return nil, fmt.Errorf("etcd data: read %s: %w", key, err)
	}
	if len(res.KVs) == 0 {
		return nil, nil
	}
	return res.KVs[0].Value, nil
}
