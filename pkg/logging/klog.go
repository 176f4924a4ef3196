package logging

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/go-logr/logr"
	"github.com/sirupsen/logrus"
)

func newKlogLogger(log *Logging, verbosity int) logr.Logger {
	return logr.New(&klogSink{log: log, verbosity: verbosity})
}

// klogSink is a logr.LogSink that writes to logrus.
type klogSink struct {
	log       *Logging
	verbosity int
	name      string
	values    []any
}

func (s *klogSink) Init(logr.RuntimeInfo) {}

func (s *klogSink) Enabled(level int) bool {
	return level <= s.verbosity && s.log.IsLevelEnabled(logrus.DebugLevel)
}

func (s *klogSink) Info(level int, msg string, kv ...any) {
	s.entry(kv).Debug(msg)
}

func (s *klogSink) Error(err error, msg string, kv ...any) {
	e := s.entry(kv)
	if err != nil {
		e = e.WithError(err)
	}
	e.Log(s.log.errorLevel(), msg)
}

func (s *klogSink) WithValues(kv ...any) logr.LogSink {
	c := *s
	c.values = append(append([]any(nil), s.values...), kv...)
	return &c
}

func (s *klogSink) WithName(name string) logr.LogSink {
	c := *s
	if c.name == "" {
		c.name = name
	}
	return &c
}

func (s *klogSink) entry(kv []any) *logrus.Entry {
	fields := logrus.Fields{}
	all := append(append([]any(nil), s.values...), kv...)
	for i := 0; i+1 < len(all); i += 2 {
		fields[fmt.Sprint(all[i])] = fmt.Sprint(all[i+1])
	}
	component := s.name
	if component == "" {
		component = callerComponent()
	}
	fields["component"] = component
	return s.log.WithFields(fields)
}

// packageComponents maps the package that logged to the component it belongs to. The first
// matching prefix wins, so more specific prefixes come first.
var packageComponents = []struct{ prefix, component string }{
	{"k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"},
	{"k8s.io/kubernetes/pkg/scheduler", "kube-scheduler"},
	{"k8s.io/kube-scheduler", "kube-scheduler"},
	{"k8s.io/kubernetes/cmd/kube-controller-manager", "kube-controller-manager"},
	{"k8s.io/kubernetes/pkg/controller", "kube-controller-manager"},
	{"k8s.io/controller-manager", "kube-controller-manager"},
	{"k8s.io/cloud-provider", "kube-controller-manager"},
	{"k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"},
	{"k8s.io/kubernetes/pkg/controlplane", "kube-apiserver"},
	{"k8s.io/kubernetes/pkg/kubeapiserver", "kube-apiserver"},
	{"k8s.io/kubernetes/pkg/registry", "kube-apiserver"},
	{"k8s.io/kubernetes/plugin", "kube-apiserver"},
	{"k8s.io/apiserver", "kube-apiserver"},
	{"k8s.io/kube-aggregator", "kube-apiserver"},
	{"k8s.io/apiextensions-apiserver", "kube-apiserver"},
	{"k8s.io/client-go", "client-go"},
	{"github.com/kone-dev/kone", "kone"},
}

// callerComponent walks the stack past klog, logr and this package to the code that logged.
func callerComponent() string {
	pcs := make([]uintptr, 32)
	n := runtime.Callers(3, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	for {
		f, more := frames.Next()
		fn := f.Function
		if !strings.HasPrefix(fn, "k8s.io/klog/") && !strings.HasPrefix(fn, "github.com/go-logr/") &&
			!strings.HasPrefix(fn, "github.com/kone-dev/kone/pkg/logging") {
			return componentOf(fn)
		}
		if !more {
			return "kubernetes"
		}
	}
}

func componentOf(function string) string {
	for _, p := range packageComponents {
		if strings.HasPrefix(function, p.prefix) {
			return p.component
		}
	}
	return "kubernetes"
}
