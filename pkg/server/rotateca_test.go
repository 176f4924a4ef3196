package server

import (
	"context"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	aggregatorfake "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset/fake"
	apiregistrationclient "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset/typed/apiregistration/v1"

	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/metrics"
	"github.com/kone-dev/kone/pkg/node"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/token"
)

// rotationFixture is a started server's certificates and token, and a cluster that holds its
// server data, cluster-info and settings as the server's start published them.
type rotationFixture struct {
	certs serverCertificates
	cs    *fake.Clientset
	agg   *aggregatorfake.Clientset // with kone's metrics APIService, trusting the server CA
	tok   token.Token
	aside string
}

func newRotationFixture(t *testing.T) rotationFixture {
	t.Helper()
	ctx := context.Background()
	cfg := testServer(t)
	f := rotationFixture{
		certs: serverCertificates{cfg: cfg, ca: pki.Layout(cfg.TLSDir()), self: node.Identity{Name: "n1", IP: net.IPv4(127, 0, 0, 1)}},
		cs:    fake.NewClientset(),
		aside: filepath.Join(cfg.ServerDir(), "tls-rotated-test"),
	}
	firstStart(t, f.certs, time.Now())
	caPEM, err := os.ReadFile(f.certs.ca.ServerCA)
	if err != nil {
		t.Fatal(err)
	}
	f.agg = aggregatorfake.NewClientset(&apiregistrationv1.APIService{ObjectMeta: metav1.ObjectMeta{Name: metrics.APIService},
		Spec: apiregistrationv1.APIServiceSpec{CABundle: caPEM}})
	if f.tok, err = token.Generate(); err == nil {
		f.tok, err = f.tok.WithCA(caPEM)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.ServerToken().Replace("", f.tok); err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.ServerToken().Publish(ctx, f.cs, f.tok, time.Now()); err != nil {
		t.Fatal(err)
	}
	shared, err := readFiles(f.certs.ca.Shared())
	if err != nil {
		t.Fatal(err)
	}
	shared[join.ServerTokenKey] = f.tok.File()
	if _, err := join.PublishServerData(ctx, f.cs, shared); err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := clusterInfoKubeconfig("https://192.0.2.1:6443", caPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := token.PublishClusterInfo(ctx, f.cs, kubeconfig, f.tok); err != nil {
		t.Fatal(err)
	}
	if err := join.PublishSettings(ctx, f.cs, clusterSettings(cfg)); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f rotationFixture) apiservices() apiregistrationclient.APIServiceInterface {
	return f.agg.ApiregistrationV1().APIServices()
}

// metricsCA is the server CA bundle that kone's metrics APIService trusts.
func (f rotationFixture) metricsCA(t *testing.T) string {
	t.Helper()
	svc, err := f.apiservices().Get(context.Background(), metrics.APIService, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return string(svc.Spec.CABundle)
}

func (f rotationFixture) serverData(t *testing.T) map[string][]byte {
	t.Helper()
	s, err := f.cs.CoreV1().Secrets(metav1.NamespaceSystem).Get(context.Background(), join.ServerDataName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Data
}

// Of two rotations at once on two servers, the one whose CAs the cluster took first wins: the
// other changes nothing on its server, keeps nothing aside, and leaves no stage to finish.
func TestRotateAuthoritiesLosesToAnotherServer(t *testing.T) {
	f := newRotationFixture(t)
	before := dataDirFiles(t, f.certs.cfg.DataDir)
	// The other server's rotation lands between this one's read and its write.
	raced := false
	f.cs.PrependReactor("update", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		s := a.(k8stesting.UpdateAction).GetObject().(*corev1.Secret)
		if raced || s.Name != join.ServerDataName {
			return false, nil, nil
		}
		raced = true
		// Through the tracker: the clientset is locked while its reactors run.
		secrets := corev1.SchemeGroupVersion.WithResource("secrets")
		stored, err := f.cs.Tracker().Get(secrets, metav1.NamespaceSystem, s.Name)
		if err != nil {
			t.Fatal(err)
		}
		theirs := stored.(*corev1.Secret).DeepCopy()
		theirs.Data["server-ca.crt"] = []byte("another server's rotation")
		if err := f.cs.Tracker().Update(secrets, theirs, metav1.NamespaceSystem); err != nil {
			t.Fatal(err)
		}
		return true, nil, apierrors.NewConflict(corev1.Resource("secrets"), s.Name, errors.New("the object has been modified"))
	})
	err := rotateAuthorities(context.Background(), f.cs, f.apiservices(), f.certs, f.aside, 1, time.Now(), &strings.Builder{})
	if !errors.Is(err, join.ErrServerDataChanged) || !strings.Contains(err.Error(), "nothing changed") || strings.Contains(err.Error(), "run rotate-ca again") {
		t.Fatalf("a rotation that lost: %v", err)
	}
	if after := dataDirFiles(t, f.certs.cfg.DataDir); !maps.Equal(before, after) {
		t.Error("a rotation that lost changed the data dir (its stage or its copy of the old CAs is left)")
	}
	if string(f.serverData(t)["server-ca.crt"]) != "another server's rotation" {
		t.Error("a rotation that lost replaced the one that won")
	}
	if old, _ := os.ReadFile(f.certs.ca.ServerCA); f.metricsCA(t) != string(old) {
		t.Error("a rotation that lost left the metrics APIService trusting its CA")
	}
}

// A rotation whose write to the cluster landed, but whose answer was lost, is taken up by the
// next rotate-ca, not refused as another server's, nor made anew: the cluster keeps the CAs it
// has, and the server puts them in place and re-pins its token to them.
func TestRotateAuthoritiesTakesUpAnInterruptedOne(t *testing.T) {
	f := newRotationFixture(t)
	lost := false
	f.cs.PrependReactor("update", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		s := a.(k8stesting.UpdateAction).GetObject().(*corev1.Secret)
		if lost || s.Name != join.ServerDataName {
			return false, nil, nil
		}
		lost = true
		if string(s.Data["server-ca.crt"]) != f.metricsCA(t) {
			t.Error("the cluster's servers were given the new CAs before the metrics APIService trusted the new server CA")
		}
		if err := f.cs.Tracker().Update(corev1.SchemeGroupVersion.WithResource("secrets"), s, metav1.NamespaceSystem); err != nil {
			t.Fatal(err)
		}
		return true, nil, errors.New("http2: client connection lost")
	})
	ctx := context.Background()
	err := rotateAuthorities(ctx, f.cs, f.apiservices(), f.certs, f.aside, 0, time.Now(), &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "run rotate-ca again") {
		t.Fatalf("a rotation whose answer was lost: %v", err)
	}
	published := f.serverData(t)
	if old, _ := os.ReadFile(f.certs.ca.ServerCA); string(published["server-ca.crt"]) == string(old) {
		t.Fatal("the lost write did not land: the test proves nothing")
	}

	var out strings.Builder
	if err := rotateAuthorities(ctx, f.cs, f.apiservices(), f.certs, f.aside+"-2", 0, time.Now(), &out); err != nil {
		t.Fatalf("rotate-ca again: %v", err)
	}
	if !strings.Contains(out.String(), "took up a rotate-ca that was interrupted") {
		t.Errorf("the output does not say that it took up the rotation:\n%s", out.String())
	}
	for key, path := range f.certs.ca.Shared() {
		ours, _ := os.ReadFile(path)
		if string(ours) != string(f.serverData(t)[key]) {
			t.Errorf("%s in place is not what the cluster took", key)
		}
		if string(f.serverData(t)[key]) != string(published[key]) {
			t.Errorf("the rotation taken up changed the cluster's %s", key)
		}
	}
	newCA, err := os.ReadFile(f.certs.ca.ServerCA)
	if err != nil {
		t.Fatal(err)
	}
	tokFile, err := os.ReadFile(f.certs.cfg.ServerToken().Token)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.Parse(string(tokFile))
	if err != nil {
		t.Fatal(err)
	}
	if repinned, err := f.tok.WithCA(newCA); err != nil || tok != repinned {
		t.Errorf("the server token is %s, want %s pinned to the new CA (%v)", tok, f.tok, err)
	}
	settings, err := join.ReadSettings(ctx, f.cs)
	if err != nil || settings.ServerCA != string(newCA) {
		t.Errorf("the settings do not carry the new server CA (%v)", err)
	}
	if f.metricsCA(t) != string(newCA) {
		t.Error("the metrics APIService does not trust the new server CA")
	}
	if _, err := os.Stat(f.aside); err != nil {
		t.Errorf("the old CAs were not kept aside by the first run: %v", err)
	}
}

// A metrics APIService that is not kone's (the user's own metrics-server, with kone's off) keeps
// the CAs it trusts through a rotation.
func TestRotateAuthoritiesLeavesAnotherMetricsAPI(t *testing.T) {
	f := newRotationFixture(t)
	theirs := &apiregistrationv1.APIService{ObjectMeta: metav1.ObjectMeta{Name: metrics.APIService},
		Spec: apiregistrationv1.APIServiceSpec{CABundle: []byte("their CA")}}
	if _, err := f.apiservices().Update(context.Background(), theirs, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := rotateAuthorities(context.Background(), f.cs, f.apiservices(), f.certs, f.aside, 0, time.Now(), &strings.Builder{}); err != nil {
		t.Fatal(err)
	}
	if got := f.metricsCA(t); got != "their CA" {
		t.Errorf("a rotation changed the CAs of another metrics APIService to %q", got)
	}
}
