package logging

import (
	"flag"
	"io"
	stdlog "log"
	"strconv"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	"k8s.io/klog/v2"
)

// Logging is the process's one log stream.
type Logging struct {
	*logrus.Logger
	// serving is set while kone is ready and not stopping. Outside that, the components' errors
	// are the retries of a control plane coming up (a namespace not created yet, a lease not
	// there yet) or the complaints of one being closed, and are debug lines; a start or stop that
	// really fails is reported by kone itself with the component's error.
	serving   atomic.Bool
	verbosity int
}

// Setup configures the process's one logger. It must run once, before any component starts:
// klog and Go's standard logger are process-wide.
func Setup(out io.Writer, debug bool) *Logging {
	l := &Logging{Logger: logrus.New()}
	l.SetOutput(out)
	l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "2006-01-02T15:04:05.000Z07:00", DisableColors: true})
	verbosity := 0
	if debug {
		l.SetLevel(logrus.DebugLevel)
		verbosity = 2
	}

	// klog's own V() checks read its global -v; our sink applies the same threshold to
	// contextual loggers, which skip klog's check.
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("v", strconv.Itoa(verbosity))
	l.verbosity = verbosity
	l.ClaimKlog()

	// Libraries that use Go's standard logger (grpc, some of Kubernetes' dependencies).
	stdlog.SetFlags(0)
	stdlog.SetOutput(l.WithField("component", "go").WriterLevel(logrus.DebugLevel))
	return l
}

// ClaimKlog routes klog into kone's stream. Setup does it; a library that installs its own klog
// logger (CoreDNS's kubernetes plugin does, when it starts) must be followed by another call.
func (l *Logging) ClaimKlog() {
	klog.SetLoggerWithOptions(newKlogLogger(l, l.verbosity), klog.ContextualLogger(true))
}

// Serving marks kone as ready: from now on the components' errors are errors.
func (l *Logging) Serving() { l.serving.Store(true) }

// Stopping marks kone as stopping: the components' errors are debug lines again.
func (l *Logging) Stopping() { l.serving.Store(false) }

// errorLevel is the level of a component's error line.
func (l *Logging) errorLevel() logrus.Level {
	if l.serving.Load() {
		return logrus.ErrorLevel
	}
	return logrus.DebugLevel
}
