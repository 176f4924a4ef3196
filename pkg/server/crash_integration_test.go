package server_test

import (
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestKilledFirstStart kills kone (SIGKILL, as a power cut or the OOM killer would) at 20
// random moments of a first start; the start that follows each must become ready, and leave no
// temporary file of a write the kill interrupted.
func TestKilledFirstStart(t *testing.T) {
	bin := koneBinary(t)
	// KONE_CRASH_SEED replays the kill moments of a failed run (scaled to this machine's start).
	seed := uint64(time.Now().UnixNano())
	if s, ok := os.LookupEnv("KONE_CRASH_SEED"); ok {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("KONE_CRASH_SEED %q: %v", s, err)
		}
	}
	t.Logf("seed %d (KONE_CRASH_SEED replays it)", seed)
	rng := rand.New(rand.NewPCG(seed, seed))

	// How long a first start takes, from one that is not killed.
	first := newNode(t, bin, t.TempDir())
	t0 := time.Now()
	first.start()
	span := time.Since(t0)
	first.kill()

	for i := range 20 {
		n := newNode(t, bin, t.TempDir())
		at := time.Duration(rng.Int64N(int64(span)))
		cmd := exec.Command(bin, n.args()...)
		log := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			t.Fatalf("kill %d: kone exited (%v) before it was killed at %s:\n%s", i, err, at, log.String())
		case <-time.After(at):
		}
		_ = cmd.Process.Kill()
		<-exited

		n.start() // fails the test unless kone becomes ready
		n.kill()
		var left []string
		_ = filepath.WalkDir(n.dataDir, func(path string, d fs.DirEntry, err error) error {
			name := d.Name()
			if err == nil && (strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp") || strings.HasSuffix(name, ".next")) {
				left = append(left, path)
			}
			return nil
		})
		if len(left) > 0 {
			t.Errorf("kill %d at %s of %s: left behind %v", i, at.Round(time.Millisecond), span.Round(time.Millisecond), left)
		}
	}
}
