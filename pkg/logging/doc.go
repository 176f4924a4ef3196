// Package logging gives kone one log stream. kone's own code logs with logrus; the Kubernetes
// components log through klog and etcd through zap, and both are routed into the same logrus
// stream with a "component" field. The components' informational output and warnings appear only
// with --debug (through logr, klog cannot tell a warning from information); their errors always do.
//
// The component of a klog line is the name of the contextual logger when the component set one,
// and otherwise the package of the code that logged (k8s.io/kubernetes/pkg/scheduler/... is the
// scheduler). Shared libraries such as client-go are reported as themselves.
package logging
