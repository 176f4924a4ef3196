// Package control runs the Kubernetes control plane in the kone process: kube-apiserver,
// kube-controller-manager and kube-scheduler, each from its upstream options and app.Run.
//
// kone does not execute the components' cobra commands. Those commands install process-wide
// signal handlers (kube-apiserver when the command is built, kube-scheduler when it runs), and
// k8s.io/apiserver panics when that happens twice in one process; kube-controller-manager's
// command runs on context.Background() and can never be stopped. kone therefore parses each
// component's own flag set with arguments built by a pure function of the configuration (user
// overrides last), and calls the same Complete/Config/Setup and Run functions the commands call,
// with a context kone owns, so that the supervisor can stop them in order.
package control
