package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A snapshot is unpacked whole, from kone's compressed files and etcd's own alike; a file cut
// short or damaged anywhere is refused, and leaves nothing behind.
func TestUnpack(t *testing.T) {
	db := make([]byte, 64*1024)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range db {
		db[i] = byte(rnd.IntN(16)) // compressible, but not to nothing
	}
	sum := sha256.Sum256(db)
	good := append(db, sum[:]...)
	d := Dir(t.TempDir())
	m, err := d.Save(context.Background(), source(good), OnDemandName, Meta{Node: "n"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	compressed, err := os.ReadFile(d.File(m.Name))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, src := range map[string]string{"kone's": d.File(m.Name), "etcd's": write("etcd.db", good)} {
		dst := filepath.Join(dir, "out-"+strings.TrimSuffix(name, "'s"))
		n, err := Unpack(src, dst)
		if err != nil {
			t.Fatalf("%s snapshot: %v", name, err)
		}
		if out, _ := os.ReadFile(dst); n != int64(len(good)) || !bytes.Equal(out, good) {
			t.Errorf("%s snapshot: unpacked %d bytes, not the database", name, n)
		}
	}

	damagedRaw := bytes.Clone(good)
	damagedRaw[1000] ^= 1
	damagedGzip := bytes.Clone(compressed)
	damagedGzip[len(damagedGzip)/2] ^= 0x10
	for name, src := range map[string]string{
		"truncated compressed": write("cut.db.gz", compressed[:len(compressed)/2]),
		"damaged compressed":   write("damaged.db.gz", damagedGzip),
		"truncated":            write("cut.db", good[:len(good)-100]),
		"damaged":              write("damaged.db", damagedRaw),
		"without etcd's hash":  write("bare.db", db),
		"empty":                write("empty.db", nil),
	} {
		dst := filepath.Join(dir, "out")
		_, err := Unpack(src, dst)
		if err == nil || !strings.Contains(err.Error(), "truncated or corrupt") || !strings.Contains(err.Error(), src) {
			t.Errorf("%s snapshot: %v, want an error naming the file as truncated or corrupt", name, err)
		}
		if _, err := os.Stat(dst); !os.IsNotExist(err) {
			t.Errorf("%s snapshot: left %s behind", name, dst)
		}
	}
	if _, err := Unpack(filepath.Join(dir, "missing.db.gz"), filepath.Join(dir, "out")); err == nil || !strings.Contains(err.Error(), "missing.db.gz") {
		t.Errorf("a missing snapshot: %v", err)
	}
}
