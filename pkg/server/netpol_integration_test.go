package server_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// checkNetworkPolicy: NetworkPolicies are enforced on the agents' pods, on the same node and
// across nodes, ingress and egress. target and remote are web pods (app=web, serving on 8080)
// on two nodes; a probe pod is started on target's node. The policies are gone at the end.
func checkNetworkPolicy(t *testing.T, n *node, cs kubernetes.Interface, ns string, target, remote corev1.Pod, dnsName, dnsAddr string) {
	t.Helper()
	ctx := context.Background()
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: ns, Labels: map[string]string{"role": "probe"}},
		Spec: corev1.PodSpec{NodeName: target.Spec.NodeName, Containers: []corev1.Container{{
			Name: "probe", Image: busyboxImage, ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"},
		}}},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, probe, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cs.CoreV1().Pods(ns).Delete(ctx, probe.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	}()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, probe.Name, metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the probe pod is not running on %s within 2 minutes: %+v", target.Spec.NodeName, p.Status)
		}
	}
	// reaches says whether from gets the web page of to, or else whether the connection hung
	// until timeout ended wget (exit 143), as a dropped one does: a refusal or an exec that
	// failed is neither.
	reaches := func(from string, to corev1.Pod) (reached, dropped bool, out string) {
		cmd := n.command("kubectl", "--kubeconfig", n.kubeconfig, "exec", "-n", ns, from, "--", "timeout", "3", "wget", "-q", "-O-", "http://"+to.Status.PodIP+":8080/")
		data, err := cmd.CombinedOutput()
		out = string(data)
		return err == nil && strings.TrimSpace(out) == "hello from "+to.Name, strings.Contains(out, "exit code 143"), out
	}
	// expect waits up to 30 s for the policies to let from reach to, or to drop its connection.
	expect := func(from string, to corev1.Pod, want bool, why string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
			reached, dropped, out := reaches(from, to)
			if (want && reached) || (!want && dropped) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: %s reaching %s (on %s), want reached %t; after 30 s: %s", why, from, to.Name, to.Spec.NodeName, want, out)
				return
			}
		}
	}
	// A check that stops the test leaves no policy behind it for the teardown's pods.
	t.Cleanup(func() {
		_ = cs.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	})
	apply := func(name string, spec networkingv1.NetworkPolicySpec) {
		t.Helper()
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
		if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	web := metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	port := intstr.FromInt32(8080)

	expect(probe.Name, target, true, "no policy, the same node")
	expect(probe.Name, remote, true, "no policy, across nodes")
	expect(remote.Name, target, true, "no policy, across nodes")

	apply("deny-web-ingress", networkingv1.NetworkPolicySpec{PodSelector: web, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}})
	expect(probe.Name, target, false, "default-deny ingress, the same node")
	expect(remote.Name, target, false, "default-deny ingress, across nodes")

	apply("allow-probe", networkingv1.NetworkPolicySpec{PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{{
		From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "probe"}}}},
		Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
	}}})
	expect(probe.Name, target, true, "ingress allowed from role=probe")
	expect(remote.Name, target, false, "ingress allowed from role=probe only")

	apply("deny-probe-egress", networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "probe"}},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
	})
	expect(probe.Name, target, false, "default-deny egress, the same node")
	expect(probe.Name, remote, false, "default-deny egress, across nodes")
	// The cluster DNS a pod asks is its own node's, which no policy stands between.
	if out := kubectlEventually(t, n, "exec", "-n", ns, probe.Name, "--", "/bin/busybox", "nslookup", dnsName); !strings.Contains(out, dnsAddr) {
		t.Errorf("cluster DNS under a default-deny egress policy: %s answers\n%s", dnsName, out)
	}

	if err := cs.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(probe.Name, remote, true, "the policies deleted, across nodes")
	expect(remote.Name, target, true, "the policies deleted, across nodes")
}

// netpolTable says whether kone's NetworkPolicy table is on this host.
func netpolTable(t *testing.T) bool {
	t.Helper()
	cmd := exec.Command("nft", "list", "tables")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
	return strings.Contains(string(out), "table ip kone-netpol")
}
