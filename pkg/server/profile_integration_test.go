package server_test

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// checkTLS: every port the server serves (apiserver, etcd, controller-manager, scheduler)
// refuses TLS 1.1 and a TLS 1.2 client that offers only weak cipher suites, and takes a strong
// one.
func checkTLS(t *testing.T, n *node) {
	t.Helper()
	// etcd asks for a client certificate before it completes a handshake.
	cert, err := tls.LoadX509KeyPair(filepath.Join(n.dataDir, "server", "tls", "etcd", "client.crt"), filepath.Join(n.dataDir, "server", "tls", "etcd", "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	for name, port := range map[string]string{"kube-apiserver": n.https, "etcd": n.etcdClient, "kube-controller-manager": n.cm, "kube-scheduler": n.sch} {
		checkPortTLS(t, name, port, []tls.Certificate{cert})
	}
}

// checkPortTLS: the port on loopback refuses TLS 1.1 and weak TLS 1.2 suites, and takes TLS 1.2.
func checkPortTLS(t *testing.T, name, port string, certs []tls.Certificate) {
	t.Helper()
	dial := func(c *tls.Config) error {
		c.InsecureSkipVerify, c.Certificates = true, certs
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", "127.0.0.1:"+port, c)
		if err == nil {
			err = conn.Handshake()
			conn.Close()
		}
		return err
	}
	weak := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
	if err := dial(&tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
		t.Errorf("%s accepts TLS 1.1", name)
	}
	if err := dial(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: weak}); err == nil {
		t.Errorf("%s accepts weak TLS 1.2 cipher suites", name)
	}
	if err := dial(&tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12}); err != nil {
		t.Errorf("%s refuses a strong TLS 1.2 client: %v", name, err)
	}
}

// TestProfileCIS: with --profile=cis a privileged pod is refused outside the exempt namespaces,
// and the audit log records who read a Secret.
func TestProfileCIS(t *testing.T) {
	bin := koneBinary(t)
	n := newNode(t, bin, t.TempDir())
	n.extra = []string{"--profile=cis"}
	n.start()
	cs := n.client()
	ctx := context.Background()
	checkTLS(t, n)

	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cis-it"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	privileged := func(ns string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "privileged", Namespace: ns},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: busyboxImage,
				SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)}}}},
		}
	}
	_, err := cs.CoreV1().Pods("cis-it").Create(ctx, privileged("cis-it"), metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), `violates PodSecurity "restricted:latest"`) {
		t.Errorf("a privileged pod outside kube-system: %v", err)
	}
	if _, err := cs.CoreV1().Pods("kube-system").Create(ctx, privileged("kube-system"), metav1.CreateOptions{}); err != nil {
		t.Errorf("a privileged pod in kube-system, which is exempt: %v", err)
	}

	if _, err := cs.CoreV1().Secrets("cis-it").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "audited"},
		StringData: map[string]string{"value": "kone-it-audit-2c4e"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Secrets("cis-it").Get(ctx, "audited", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	auditLog := filepath.Join(n.dataDir, "server", "logs", "audit.log")
	var log string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		data, _ := os.ReadFile(auditLog)
		log = string(data)
		found := false
		for _, line := range strings.Split(log, "\n") {
			found = found || strings.Contains(line, `"verb":"get"`) && strings.Contains(line, `"resource":"secrets"`) &&
				strings.Contains(line, `"name":"audited"`) && strings.Contains(line, `"username":"system:admin"`)
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the audit log records no read of the Secret:\n%.3000s", log)
		}
	}
	if strings.Contains(log, "kone-it-audit-2c4e") {
		t.Error("the audit log holds a Secret's value")
	}
}
