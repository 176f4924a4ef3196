package server_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/kone-dev/kone/pkg/pki"
)

// TestCertificatesWhileRunning: certificates with 10 days left are renewed by the running
// server, and `kone certificate rotate` replaces some while it runs; the apiserver, etcd and
// kubelet serve the new ones without a restart, kubectl and the node go on working, and the
// pod's container is not restarted.
func TestCertificatesWhileRunning(t *testing.T) {
	bin := koneBinary(t)
	n, cs, nodeName := startNodeServer(t, bin)
	ns := "kone-node-it" // which teardownNode drains
	startSleeper(t, cs, ns, "sleeper")
	waitPodsRunning(t, cs, ns, 1)
	containers := containerIDs(t, cs, ns)

	tlsDir := filepath.Join(n.dataDir, "server", "tls")
	served := map[string]struct {
		file pki.File
		ca   string
		addr string
	}{
		"apiserver": {pki.File{Cert: filepath.Join(tlsDir, "serving-kube-apiserver.crt"), Key: filepath.Join(tlsDir, "serving-kube-apiserver.key")}, "server-ca", "127.0.0.1:" + n.https},
		"etcd":      {pki.File{Cert: filepath.Join(tlsDir, "etcd", "server.crt"), Key: filepath.Join(tlsDir, "etcd", "server.key")}, "etcd/server-ca", "127.0.0.1:" + n.etcdClient},
		"kubelet": {pki.File{Cert: filepath.Join(n.dataDir, "agent", "tls", "serving-kubelet.crt"), Key: filepath.Join(n.dataDir, "agent", "tls", "serving-kubelet.key")},
			"kubelet-serving-ca", "127.0.0.1:10250"},
	}
	admin := pki.File{Cert: filepath.Join(tlsDir, "client-admin.crt"), Key: filepath.Join(tlsDir, "client-admin.key")}

	// Each made to expire in 10 days, as a year of running would leave them.
	short := map[string]*big.Int{}
	for name, s := range served {
		short[name] = shorten(t, tlsDir, s.ca, s.file)
	}
	shorten(t, tlsDir, "client-ca", admin)
	for name, s := range served {
		var renewed *x509.Certificate
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
			if renewed = readCert(t, s.file.Cert); renewed.NotAfter.After(time.Now().Add(300 * 24 * time.Hour)) {
				break
			}
		}
		if renewed.SerialNumber.Cmp(short[name]) == 0 || renewed.NotAfter.Before(time.Now().Add(300*24*time.Hour)) {
			t.Fatalf("%s: the certificate with 10 days left was not renewed while kone ran:\n%s", name, n.log.String())
		}
		waitServed(t, name, s.addr, renewed)
	}
	// The renewer writes the admin kubeconfig and then logs, after the served files: a test
	// that saw those files served can be there first.
	if !n.waitLog("renewed certificates", 10*time.Second) {
		t.Error("the log does not say that certificates were renewed")
	}
	if readCert(t, admin.Cert).NotAfter.Before(time.Now().Add(300 * 24 * time.Hour)) {
		t.Error("the admin certificate with 10 days left was not renewed")
	}
	kubeconfig, err := clientcmd.LoadFromFile(n.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	renewedAdmin, err := os.ReadFile(admin.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if user := kubeconfig.AuthInfos["default"]; user == nil || string(user.ClientCertificateData) != string(renewedAdmin) {
		t.Error("the admin kubeconfig does not carry the renewed admin certificate")
	}
	// The admin kubeconfig carries the renewed certificate, and works.
	if out := n.run(nil, bin, "kubectl", "--kubeconfig", n.kubeconfig, "get", "node", nodeName, "-o", "name"); !strings.Contains(out, nodeName) {
		t.Errorf("kubectl with the renewed admin kubeconfig: %s", out)
	}

	// Rotated while kone runs: new keys, served at once.
	api := served["apiserver"]
	old := readCert(t, api.file.Cert)
	out := n.run(nil, bin, append([]string{"certificate", "rotate", "--service", "api-server", "--service", "kubelet"}, n.args()[1:]...)...)
	if !strings.Contains(out, "api-server: 2 issued") {
		t.Errorf("certificate rotate:\n%s", out)
	}
	rotated := readCert(t, api.file.Cert)
	if rotated.SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Fatal("certificate rotate left the apiserver's certificate as it was")
	}
	waitServed(t, "apiserver", api.addr, rotated)
	waitServed(t, "kubelet", served["kubelet"].addr, readCert(t, served["kubelet"].file.Cert))
	// The apiserver reaches the kubelet with its rotated client certificate. Its connections
	// made with the old one are closed as it takes the new one: a request at that moment fails.
	var logs []byte
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		if logs, err = n.command("kubectl", "--kubeconfig", n.kubeconfig, "logs", "-n", ns, "sleeper").CombinedOutput(); err == nil {
			break
		}
	}
	if err != nil {
		t.Errorf("kubectl logs after the rotation: %v\n%s", err, logs)
	}

	select {
	case err := <-n.exited:
		t.Fatalf("kone exited (%v)", err)
	default:
	}
	waitNodesReady(t, cs, 1)
	if after := containerIDs(t, cs, ns); strings.Join(after, ",") != strings.Join(containers, ",") {
		t.Errorf("the pod's container was restarted: %v, then %v", containers, after)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cert
}

// shorten re-issues f, signed by the CA named ca, with its names and key, to expire in 10 days.
// It returns the new certificate's serial number.
func shorten(t *testing.T, tlsDir, ca string, f pki.File) *big.Int {
	t.Helper()
	now := time.Now()
	authority, err := pki.EnsureCA(tlsDir, ca, now)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := readCert(t, f.Cert)
	tmpl.NotAfter = now.Add(10 * 24 * time.Hour)
	tmpl.SerialNumber = big.NewInt(now.UnixNano())
	keyPEM, err := os.ReadFile(f.Key)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(pki.EncodeCert(tmpl), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(nil, tmpl, authority.Cert, pair.Leaf.PublicKey, authority.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePair(f, pki.EncodeCert(cert), keyPEM); err != nil {
		t.Fatal(err)
	}
	return cert.SerialNumber
}

// waitServed waits until what listens at addr serves want, for up to 90 s: the apiserver and
// kubelet look at their files again at least every minute.
func waitServed(t *testing.T, name, addr string, want *x509.Certificate) {
	t.Helper()
	var got *x509.Certificate
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		// The server's certificate is all that is wanted: the handshake may fail after it, for
		// want of a client certificate.
		conf := &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			got, _ = x509.ParseCertificate(raw[0])
			return nil
		}}
		if conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf); err == nil {
			conn.Close()
		}
		if got != nil && got.SerialNumber.Cmp(want.SerialNumber) == 0 {
			return
		}
	}
	t.Errorf("%s at %s does not serve its new certificate (serial %v) within 90 s; it serves %v", name, addr, want.SerialNumber, got)
}
