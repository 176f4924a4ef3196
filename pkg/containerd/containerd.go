// Package containerd runs the node's containerd: a child process of kone (kone executing itself
// under the name containerd), so that kone can restart or be upgraded while containerd, and the
// shims that keep containers running, carry on. kone writes containerd's config at every start
// and stops the child on its way out; running containers belong to their shims and outlive both.
package containerd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/sirupsen/logrus"

	"github.com/kone-dev/kone/pkg/pki"
)

// ProgramName is the argv[0] under which the kone binary acts as containerd.
const ProgramName = "containerd"

// Containerd is the containerd component.
type Containerd struct {
	cfg        Config
	configFile string
	exe        string
	log        *logrus.Logger
}

// New returns the component. exe is the kone binary to run as containerd ("" for this one);
// configFile is where kone writes containerd's config.
func New(cfg Config, configFile, exe string, log *logrus.Logger) *Containerd {
	if exe == "" {
		exe = "/proc/self/exe"
	}
	return &Containerd{cfg: cfg, configFile: configFile, exe: exe, log: log}
}

func (c *Containerd) Name() string { return "containerd" }

// Run starts containerd and keeps it until ctx ends; then it asks containerd to stop and waits
// for it. Containers keep running: their shims are not containerd's children in any way that
// stopping containerd affects.
func (c *Containerd) Run(ctx context.Context) error {
	toml, err := TOML(c.cfg)
	if err != nil {
		return err
	}
	for _, dir := range []string{c.cfg.Root, c.cfg.State, filepath.Dir(c.cfg.Socket), c.cfg.RuncRoot, c.cfg.CNIConfDir} {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return fmt.Errorf("containerd directory: %w", err)
		}
	}
	if err := pki.WriteFile(c.configFile, toml, 0o600); err != nil {
		return err
	}
	cmd := exec.Command(c.exe, "--config", c.configFile)
	cmd.Args[0] = ProgramName
	// The shim is found on PATH; the node's own programs come first.
	cmd.Env = append(os.Environ(), "PATH="+c.cfg.BinDir+":"+os.Getenv("PATH"))
	// Its own process group: a Ctrl-C meant for kone's terminal must not reach containerd, which
	// kone stops itself, in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A pipe of kone's own rather than StderrPipe: Wait would close that one as soon as
	// containerd exits, before the line that says why it exited has been read.
	out, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Start()
	w.Close()
	if err != nil {
		out.Close()
		return fmt.Errorf("start containerd: %w", err)
	}
	lastError := make(chan string, 1)
	go func() { lastError <- c.relay(out); out.Close() }()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		return fmt.Errorf("containerd exited: %v%s", err, lastWords(lastError))
	case <-ctx.Done():
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	return nil
}

// relay turns containerd's log lines into debug lines and returns the last error among them
// once its output ends: a fatal or error log line, or a plain line (how containerd's command line
// reports the error it exits with), or the first line of a panic.
func (c *Containerd) relay(r io.Reader) string {
	entry := c.log.WithField("component", "containerd")
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	var last string
	for s.Scan() {
		line := s.Text()
		entry.Debug(line)
		if strings.HasPrefix(last, "panic:") {
			continue
		}
		if !strings.Contains(line, "level=") || strings.Contains(line, "level=error") ||
			strings.Contains(line, "level=fatal") || strings.Contains(line, "level=panic") {
			last = line
		}
	}
	return last
}

// lastWords is ": " and the last error containerd logged, if it comes within a second of its
// exit (a process it started could still hold the pipe open).
func lastWords(lastError <-chan string) string {
	select {
	case line := <-lastError:
		if line != "" {
			return ": " + line
		}
	case <-time.After(time.Second):
	}
	return ""
}

// Ready waits for containerd to serve on its socket.
func (c *Containerd) Ready(ctx context.Context) error {
	var last error
	for {
		if cl, err := client.New(c.cfg.Socket, client.WithTimeout(time.Second)); err == nil {
			ok, err := cl.IsServing(ctx)
			cl.Close()
			if ok {
				return nil
			}
			last = err
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
