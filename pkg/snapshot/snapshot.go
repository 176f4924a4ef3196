// Package snapshot keeps copies of this server's etcd member in a directory of its own: each a
// gzip-compressed etcd snapshot beside a JSON file that says what it holds (its sha256, node,
// time, sizes, the kone, Kubernetes and etcd versions, and the cluster it belongs to). Saved on
// demand or on a schedule, listed, deleted and pruned to a number kept.
package snapshot

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kone-dev/kone/pkg/pki"
)

// Names of snapshots, as k3s names them: scheduled ones and those of `save` without --name.
const (
	ScheduledName = "etcd-snapshot"
	OnDemandName  = "on-demand"
)

const (
	dataSuffix = ".db.gz"
	metaSuffix = ".json"
)

// Meta is what a snapshot holds and where it comes from.
type Meta struct {
	Name      string    `json:"name"`
	Node      string    `json:"node"`
	CreatedAt time.Time `json:"createdAt"`
	// Size is the compressed file's, DBSize the etcd database's in it.
	Size   int64 `json:"size"`
	DBSize int64 `json:"dbSize"`
	// SHA256 is the compressed file's, in hex.
	SHA256     string `json:"sha256"`
	Kone       string `json:"koneVersion"`
	Kubernetes string `json:"kubernetesVersion"`
	Etcd       string `json:"etcdVersion"`
	// Cluster is the hash of the cluster's server CA, as join tokens pin it: a snapshot is
	// restored into the cluster it was taken from only.
	Cluster string `json:"cluster"`
}

// Source is where snapshots come from: the maintenance API of a client of one etcd member.
type Source interface {
	SnapshotWithVersion(ctx context.Context) (*clientv3.SnapshotResponse, error)
}

// Dir is the directory that holds the snapshots.
type Dir string

// File is the path of the named snapshot's compressed database.
func (d Dir) File(name string) string { return filepath.Join(string(d), name+dataSuffix) }

func (d Dir) meta(name string) string { return filepath.Join(string(d), name+metaSuffix) }

var namePattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

// CheckName refuses a snapshot name that is not a lower-case DNS label: names become file
// names and keys of the ConfigMap that lists the snapshots.
func CheckName(name string) error {
	if len(name) > 200 || !namePattern.MatchString(name) {
		return fmt.Errorf("snapshot name %q: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit", name)
	}
	return nil
}

// Save writes a snapshot of the member behind src, named prefix-NODE-UNIXTIME, with the
// node, versions and cluster that m gives. Nothing is left behind when it fails: the snapshot
// is complete, with its metadata, or absent.
func (d Dir) Save(ctx context.Context, src Source, prefix string, m Meta, now time.Time) (Meta, error) {
	m.Name = fmt.Sprintf("%s-%s-%d", prefix, m.Node, now.Unix())
	m.CreatedAt = now.UTC().Truncate(time.Second)
	if err := CheckName(m.Name); err != nil {
		return Meta{}, err
	}
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return Meta{}, fmt.Errorf("snapshot directory: %w", err)
	}
	tmp, err := os.CreateTemp(string(d), "."+m.Name+".part-*")
	if err != nil {
		return Meta{}, fmt.Errorf("snapshot directory: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()

	resp, err := src.SnapshotWithVersion(ctx)
	if err != nil {
		return Meta{}, fmt.Errorf("ask etcd for a snapshot: %w", err)
	}
	defer resp.Snapshot.Close()
	sum := sha256.New()
	gz := gzip.NewWriter(io.MultiWriter(tmp, sum))
	check := &checksum{sum: sha256.New()}
	n, err := io.Copy(io.MultiWriter(gz, check), resp.Snapshot)
	if err != nil {
		return Meta{}, fmt.Errorf("read etcd's snapshot: %w", err)
	}
	if err := check.verify(n); err != nil {
		return Meta{}, fmt.Errorf("etcd's snapshot: %w", err)
	}
	if err := gz.Close(); err != nil {
		return Meta{}, fmt.Errorf("write snapshot: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return Meta{}, fmt.Errorf("write snapshot: %w", err)
	}
	info, err := tmp.Stat()
	if err != nil {
		return Meta{}, fmt.Errorf("write snapshot: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return Meta{}, fmt.Errorf("write snapshot: %w", err)
	}
	m.Size, m.DBSize, m.SHA256, m.Etcd = info.Size(), n, hex.EncodeToString(sum.Sum(nil)), resp.Version
	if err := d.commit(tmp.Name(), m); err != nil {
		return Meta{}, err
	}
	return m, nil
}

// commit makes the complete snapshot in the file tmp the snapshot m. The metadata first,
// created only if no snapshot has the name; the data last, linked (which fails where a file
// is, unlike a rename): a snapshot is listed once its data is there, and then it is whole.
func (d Dir) commit(tmp string, m Meta) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	meta, err := os.OpenFile(d.meta(m.Name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("snapshot %s exists already: save again in a second, or give another --name", m.Name)
	}
	if err != nil {
		return fmt.Errorf("write snapshot metadata: %w", err)
	}
	if _, err = meta.Write(append(data, '\n')); err == nil {
		err = meta.Sync()
	}
	if cerr := meta.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp, d.File(m.Name))
	}
	if err == nil {
		err = pki.SyncDir(string(d))
	}
	if err != nil {
		os.Remove(d.meta(m.Name))
		return fmt.Errorf("write snapshot %s: %w", m.Name, err)
	}
	return nil
}

// checksum checks the sha256 that etcd appends to the database it sends: every byte but the
// last 32 goes through sum, and the last 32 must be the result.
type checksum struct {
	sum  hash.Hash
	tail []byte
}

func (c *checksum) Write(p []byte) (int, error) {
	c.tail = append(c.tail, p...)
	if over := len(c.tail) - sha256.Size; over > 0 {
		_, _ = c.sum.Write(c.tail[:over])
		c.tail = append(c.tail[:0], c.tail[over:]...)
	}
	return len(p), nil
}

func (c *checksum) verify(n int64) error {
	// etcd pads the database to 512-byte sectors and appends the hash.
	if n%512 != sha256.Size || len(c.tail) != sha256.Size {
		return fmt.Errorf("%d bytes, not a database with etcd's checksum: truncated?", n)
	}
	if !bytes.Equal(c.sum.Sum(nil), c.tail) {
		return errors.New("its checksum does not match its contents")
	}
	return nil
}

// List returns the snapshots in the directory, oldest first. One whose data is missing (a save
// or delete killed half-way) is not listed.
func (d Dir) List() ([]Meta, error) {
	files, err := filepath.Glob(filepath.Join(string(d), "*"+metaSuffix))
	if err != nil {
		return nil, err
	}
	var all []Meta
	for _, f := range files {
		// Metadata without its data: a save or delete killed half-way.
		if !hasData(f) {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("snapshot metadata: %w", err)
		}
		var m Meta
		if err := json.Unmarshal(data, &m); err != nil || m.Name+metaSuffix != filepath.Base(f) {
			return nil, fmt.Errorf("snapshot metadata %s is not kone's: move it out of %s", f, d)
		}
		all = append(all, m)
	}
	slices.SortFunc(all, func(a, b Meta) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return all, nil
}

// Delete removes the named snapshots; a name that is not a snapshot here is an error, after
// the others are gone.
func (d Dir) Delete(names ...string) error {
	var missing []string
	for _, name := range names {
		if CheckName(name) != nil {
			missing = append(missing, name)
			continue
		}
		// The data first: a delete killed half-way leaves metadata that List ignores.
		errData := os.Remove(d.File(name))
		errMeta := os.Remove(d.meta(name))
		switch {
		case errors.Is(errData, os.ErrNotExist) && errors.Is(errMeta, os.ErrNotExist):
			missing = append(missing, name)
		case errData != nil && !errors.Is(errData, os.ErrNotExist):
			return fmt.Errorf("delete snapshot %s: %w", name, errData)
		case errMeta != nil && !errors.Is(errMeta, os.ErrNotExist):
			return fmt.Errorf("delete snapshot %s: %w", name, errMeta)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("no snapshot named %s in %s; `kone etcd-snapshot ls` lists them", strings.Join(missing, ", "), d)
	}
	return nil
}

// Prune deletes the oldest snapshots that this node saved under prefix beyond the newest keep,
// and the leftovers of saves and deletes killed half-way (an hour old: a save may be running).
// It returns the names it deleted.
func (d Dir) Prune(prefix, node string, keep int) ([]string, error) {
	all, err := d.List()
	if err != nil {
		return nil, err
	}
	var ours []string
	for _, m := range all {
		// The time alone after the prefix: "pre" does not take the snapshots of "pre-x".
		at, ok := strings.CutPrefix(m.Name, prefix+"-"+node+"-")
		if ok && m.Node == node && strings.Trim(at, "0123456789") == "" {
			ours = append(ours, m.Name)
		}
	}
	var gone []string
	if len(ours) > keep {
		gone = ours[:len(ours)-keep]
		if err := d.Delete(gone...); err != nil {
			return nil, err
		}
	}
	d.removeLeftovers(time.Now().Add(-time.Hour))
	return gone, nil
}

// removeLeftovers removes the temporary files of saves, and kone's metadata without its data,
// older than before. Other files are the user's.
func (d Dir) removeLeftovers(before time.Time) {
	parts, _ := filepath.Glob(filepath.Join(string(d), ".*.part-*"))
	metas, _ := filepath.Glob(filepath.Join(string(d), "*"+metaSuffix))
	for _, f := range append(parts, metas...) {
		if strings.HasSuffix(f, metaSuffix) && (hasData(f) || !isMeta(f)) {
			continue
		}
		if info, err := os.Stat(f); err == nil && info.ModTime().Before(before) {
			os.Remove(f)
		}
	}
}

// hasData reports whether the snapshot whose metadata file is meta has its data.
func hasData(meta string) bool {
	_, err := os.Stat(strings.TrimSuffix(meta, metaSuffix) + dataSuffix)
	return err == nil
}

// isMeta reports whether the file is a snapshot's metadata, as Save writes it.
func isMeta(path string) bool {
	data, err := os.ReadFile(path)
	var m Meta
	return err == nil && json.Unmarshal(data, &m) == nil && m.Name+metaSuffix == filepath.Base(path)
}
