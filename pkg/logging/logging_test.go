package logging

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

func TestComponentLogsAreRoutedAndQuietUntilServing(t *testing.T) {
	var out bytes.Buffer
	l := Setup(&out, false)
	klog.InfoS("an informational line")
	klog.ErrorS(errors.New("boom"), "a start-up retry")
	l.Zap("etcd").Error("etcd start-up complaint")
	if out.Len() != 0 {
		t.Fatalf("info level is not quiet while starting:\n%s", out.String())
	}
	l.Serving()
	klog.ErrorS(errors.New("boom"), "a real failure")
	l.Zap("etcd").Error("etcd failure")
	l.Zap("etcd").Warn("etcd warning")
	got := out.String()
	for _, want := range []string{`msg="a real failure"`, "component=", "error=boom", `msg="etcd failure" component=etcd`} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %s:\n%s", want, got)
		}
	}
	if strings.Contains(got, "etcd warning") || strings.Contains(got, "informational") {
		t.Errorf("component warnings or info shown at info level:\n%s", got)
	}
	l.Stopping()
	out.Reset()
	klog.ErrorS(errors.New("closed"), "while stopping")
	if out.Len() != 0 {
		t.Errorf("errors while stopping are not debug lines: %s", out.String())
	}
}

func TestDebugShowsComponentInfoWithName(t *testing.T) {
	var out bytes.Buffer
	Setup(&out, true)
	klog.Background().WithName("kube-scheduler").Info("scheduled", "pod", "default/p")
	klog.V(5).InfoS("too verbose even for --debug")
	got := out.String()
	if !strings.Contains(got, "level=debug") || !strings.Contains(got, "component=kube-scheduler") || !strings.Contains(got, "pod=default/p") {
		t.Errorf("debug output %q", got)
	}
	if strings.Contains(got, "too verbose") {
		t.Errorf("V(5) shown: %q", got)
	}
}

func TestCallerComponent(t *testing.T) {
	for fn, want := range map[string]string{
		"k8s.io/kubernetes/pkg/scheduler/framework.(*x).y":  "kube-scheduler",
		"k8s.io/kubernetes/pkg/controller/garbagecollector": "kube-controller-manager",
		"k8s.io/apiserver/pkg/server.(*GenericAPIServer).x": "kube-apiserver",
		"k8s.io/client-go/tools/cache.(*Reflector).x":       "client-go",
		"example.com/other": "kubernetes",
	} {
		if got := componentOf(fn); got != want {
			t.Errorf("componentOf(%s) = %s, want %s", fn, got, want)
		}
	}
}
