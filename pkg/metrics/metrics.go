// Package metrics serves the resource metrics API, metrics.k8s.io, from inside kone: what
// `kubectl top` and the HorizontalPodAutoscaler read. It runs upstream's metrics-server as a
// library, where k3s runs it as a pod from an image: it scrapes each kubelet's resource metrics
// and answers the apiserver's aggregator, which passes on the requests for metrics.k8s.io to
// the address this server publishes for the Service kube-system/metrics-server. One server of
// the cluster runs it (kone elects it), so the kubelets are scraped once.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	discoveryv1ac "k8s.io/client-go/applyconfigurations/discovery/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/transport"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset/typed/apiregistration/v1"
	"k8s.io/kube-openapi/pkg/common"
	"k8s.io/kube-openapi/pkg/util"
	"k8s.io/kube-openapi/pkg/validation/spec"
	"sigs.k8s.io/metrics-server/cmd/metrics-server/app/options"
	"sigs.k8s.io/metrics-server/pkg/api"
	generatedopenapi "sigs.k8s.io/metrics-server/pkg/api/generated/openapi"

	"github.com/kone-dev/kone/pkg/deploy"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/probe"
	"github.com/kone-dev/kone/pkg/supervisor"
)

// kone's APIService of the metrics API (manifests/metrics-server.yaml), the Service it names,
// and the name of that Service's one port, by which the aggregator pairs it with the published
// endpoint.
const (
	APIService  = "v1beta1.metrics.k8s.io"
	Namespace   = "kube-system"
	ServiceName = "metrics-server"
	PortName    = "https"
)

// Port is where a server serves the metrics API on its address, for the aggregators of all
// servers: 10251 was kube-scheduler's insecure port until Kubernetes 1.23 and is free since.
const Port = 10251

// Resolution is how often kubelets are scraped: the HorizontalPodAutoscaler looks every 15 s,
// and upstream's manifests scrape as often.
const Resolution = 15 * time.Second

// Config is what the metrics-server needs.
type Config struct {
	// Kubeconfig is its identity (system:kone:metrics-server), towards the apiserver and the
	// kubelets alike.
	Kubeconfig string
	Address    net.IP // this server's, which the other servers reach
	Port       int
	Serving    pki.File // for pki.MetricsServiceName, from the CA in the APIService's caBundle
	ServingCA  string
	KubeletCA  string // the CA of the kubelets' serving certificates
	// AuthProxy is the aggregator's client certificate: kone asks as the aggregator does
	// before it lets the aggregator ask.
	AuthProxy pki.File
}

// Server is the component.
type Server struct {
	cfg         Config
	cs          kubernetes.Interface
	apiservices apiregistrationv1.APIServiceInterface
	log         *logrus.Logger
	probe       *http.Client

	mu    sync.Mutex
	ready *supervisor.Latch // of the current run; a new one for the next
}

// New checks cfg; cs publishes the endpoint, and must be allowed to read Services and apply
// EndpointSlices in kube-system; apiservices reads the metrics APIService.
func New(cfg Config, cs kubernetes.Interface, apiservices apiregistrationv1.APIServiceInterface, log *logrus.Logger) (*Server, error) {
	// The aggregator reaches it at an endpoint address, which may not be loopback.
	if cfg.Address == nil || cfg.Address.To4() == nil || cfg.Address.IsLoopback() {
		return nil, fmt.Errorf("metrics-server: the server has no IPv4 address for the apiservers to reach it at (found %v); set --node-ip, or run without kone's metrics API (--disable metrics-server)", cfg.Address)
	}
	if cfg.Port <= 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("metrics-server: port %d is not a port", cfg.Port)
	}
	rt, err := transport.New(&transport.Config{TLS: transport.TLSConfig{
		CAFile: cfg.ServingCA, ServerName: pki.MetricsServiceName, CertFile: cfg.AuthProxy.Cert, KeyFile: cfg.AuthProxy.Key}})
	if err != nil {
		return nil, fmt.Errorf("metrics-server: %w", err)
	}
	return &Server{cfg: cfg, cs: cs, apiservices: apiservices, log: log,
		probe: &http.Client{Transport: rt, Timeout: 2 * time.Second}, ready: supervisor.NewLatch()}, nil
}

func (s *Server) Name() string { return "metrics-server" }

// Ready once the aggregator can reach this run of it: it answers on its address, and has its
// address published. It has metrics to serve one scrape later.
func (s *Server) Ready(ctx context.Context) error {
	s.mu.Lock()
	ready := s.ready
	s.mu.Unlock()
	return ready.Wait(ctx)
}

func (s *Server) address() string {
	return net.JoinHostPort(s.cfg.Address.String(), strconv.Itoa(s.cfg.Port))
}

// Run serves until ctx ends. It runs again in the same process when its server gets the lease
// back, so it holds its own listener, closed whichever way a run ends.
func (s *Server) Run(ctx context.Context) error {
	defer func() {
		s.mu.Lock()
		s.ready = supervisor.NewLatch()
		s.mu.Unlock()
	}()
	foreign, err := Foreign(ctx, s.apiservices)
	if err != nil {
		return fmt.Errorf("read the APIService %s: %w", APIService, err)
	}
	if foreign {
		return s.standBy(ctx)
	}
	ln, err := net.Listen("tcp", s.address())
	if err != nil {
		return fmt.Errorf("listen on %s: %w; free the port, or run without kone's metrics API (--disable metrics-server)", s.address(), err)
	}
	defer ln.Close()
	o := options.NewOptions()
	o.Kubeconfig = s.cfg.Kubeconfig
	o.Authentication.RemoteKubeConfigFile = s.cfg.Kubeconfig
	// Only the aggregator, with its front-proxy certificate, and holders of the cluster's client
	// certificates may ask: nobody anonymously, not even for its health.
	o.Authentication.Anonymous.Enabled = false
	o.Authorization.RemoteKubeConfigFile = s.cfg.Kubeconfig
	o.SecureServing.Listener = ln
	o.SecureServing.ServerCert.CertKey.CertFile = s.cfg.Serving.Cert
	o.SecureServing.ServerCert.CertKey.KeyFile = s.cfg.Serving.Key
	o.MetricResolution = Resolution
	o.KubeletClient.KubeletCAFile = s.cfg.KubeletCA
	// As the apiserver reaches kubelets: edge nodes' host names are rarely in DNS.
	o.KubeletClient.KubeletPreferredAddressTypes = []string{string(corev1.NodeInternalIP), string(corev1.NodeExternalIP), string(corev1.NodeHostName)}
	// Logging options are not applied: they would set up klog for the whole process anew.
	if errs := append(o.KubeletClient.Validate(), o.GenericServerRunOptions.Validate()...); len(errs) > 0 {
		return errors.Join(errs...)
	}
	config, err := o.ServerConfig()
	if err != nil {
		return err
	}
	// metrics-server does not apply its feature options: profiling would be on, and with it
	// /debug/flags/v, which sets the log level of all of kone.
	config.Apiserver.EnableProfiling = false
	config.Apiserver.EnableContentionProfiling = false
	namer := openapinamer.NewDefinitionNamer(api.Scheme)
	v2, v3 := genericapiserver.DefaultOpenAPIConfig(definitions, namer), genericapiserver.DefaultOpenAPIV3Config(definitions, namer)
	v2.Info, v3.Info = config.Apiserver.OpenAPIConfig.Info, config.Apiserver.OpenAPIV3Config.Info
	config.Apiserver.OpenAPIConfig, config.Apiserver.OpenAPIV3Config = v2, v3
	server, err := config.Complete()
	if err != nil {
		return err
	}
	serving, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- server.RunUntil(serving.Done())
		stop()
	}()
	// giveUp ends the run before it served: with the server's own failure if it had one,
	// none if kone is stopping, else with why the wait ended.
	giveUp := func(waited error) error {
		stop()
		if served := <-done; served != nil || ctx.Err() != nil {
			return served
		}
		return waited
	}
	// Published only once it answers as the aggregator asks: the aggregator checks a new
	// endpoint at once, and reports each refusal as an error.
	if err := probe.Until(serving, 200*time.Millisecond, func() error { return s.answers(serving) }); err != nil {
		return giveUp(err)
	}
	// An apiserver that does not answer for a moment is tried again.
	if err := probe.Until(serving, time.Second, func() error { return s.publish(serving) }); err != nil {
		return giveUp(err)
	}
	s.mu.Lock()
	s.ready.Open()
	s.mu.Unlock()
	// Published again now and then: a slice deleted by hand, or with a Service made anew,
	// comes back. Another metrics-server's APIService, made meanwhile, ends this run.
	var replaced atomic.Bool
	go wait.Until(func() {
		if foreign, err := Foreign(serving, s.apiservices); err != nil || foreign {
			if foreign {
				replaced.Store(true)
				stop()
			}
			return
		}
		_ = s.publish(serving)
	}, republish, serving.Done())
	if err := <-done; err != nil || !replaced.Load() {
		return err
	}
	return s.standBy(ctx)
}

// standBy leaves the metrics API to another metrics-server until ctx ends: kone's published
// address goes, so that the aggregator does not send its requests there.
func (s *Server) standBy(ctx context.Context) error {
	s.log.WithField("apiservice", APIService).Warn(ForeignNote)
	err := s.cs.DiscoveryV1().EndpointSlices(Namespace).Delete(ctx, sliceName, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("withdraw its address: %w", err)
	}
	s.mu.Lock()
	s.ready.Open()
	s.mu.Unlock()
	<-ctx.Done()
	return nil
}

// ForeignNote says what kone does when another metrics-server serves the metrics API.
const ForeignNote = "another metrics-server serves the metrics API (its APIService is not kone's): kone leaves it in place and runs none of its own; give --disable metrics-server to say so"

// Foreign says whether the cluster has a metrics APIService that kone did not apply: that of
// another metrics-server, installed before kone had one, which kone leaves alone.
func Foreign(ctx context.Context, apiservices apiregistrationv1.APIServiceInterface) (bool, error) {
	svc, err := apiservices.Get(ctx, APIService, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, m := range svc.ManagedFields {
		if m.Manager == deploy.FieldManager && m.Operation == metav1.ManagedFieldsOperationApply {
			return false, nil
		}
	}
	return true, nil
}

// sliceName is the EndpointSlice in which a server publishes its metrics-server's address.
const sliceName = ServiceName + "-kone"

// republish is how often the endpoint is published again, a no-op while it is as it was.
const republish = time.Minute

// definitions are metrics-server's OpenAPI definitions under the names that Kubernetes 1.36's
// types give themselves (io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics): v0.8.0 generated
// them under Go package paths (k8s.io/metrics/pkg/apis/metrics/v1beta1.NodeMetrics), and the
// OpenAPI builder finds none of them by the new names.
func definitions(ref common.ReferenceCallback) map[string]common.OpenAPIDefinition {
	defs := generatedopenapi.GetOpenAPIDefinitions(func(path string) spec.Ref { return ref(util.ToRESTFriendlyName(path)) })
	renamed := make(map[string]common.OpenAPIDefinition, len(defs))
	for name, d := range defs {
		for i, dep := range d.Dependencies {
			d.Dependencies[i] = util.ToRESTFriendlyName(dep)
		}
		renamed[util.ToRESTFriendlyName(name)] = d
	}
	return renamed
}

// answers asks for the API's discovery document as the aggregator does when it checks that
// the API is available: with its client certificate, for an administrator.
func (s *Server) answers(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+s.address()+"/apis/metrics.k8s.io/v1beta1", nil)
	if err != nil {
		return err
	}
	transport.SetAuthProxyHeaders(req, "system:kone:metrics-probe", "", []string{"system:masters"}, nil)
	resp, err := s.probe.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("it answered %s", resp.Status)
	}
	return nil
}

// publish makes this server's address the Service's one endpoint. The slice belongs to the
// Service, so that deleting the Service (--disable metrics-server) takes it along.
func (s *Server) publish(ctx context.Context) error {
	svc, err := s.cs.CoreV1().Services(Namespace).Get(ctx, ServiceName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("its Service %s/%s: %w", Namespace, ServiceName, err)
	}
	slice := discoveryv1ac.EndpointSlice(sliceName, Namespace).
		WithLabels(map[string]string{
			discoveryv1.LabelServiceName: ServiceName,
			// Not the apiserver's endpoint controllers': they leave the slice alone.
			discoveryv1.LabelManagedBy: "kone.dev",
		}).
		WithOwnerReferences(metav1ac.OwnerReference().WithAPIVersion("v1").WithKind("Service").
			WithName(svc.Name).WithUID(svc.UID)).
		WithAddressType(discoveryv1.AddressTypeIPv4).
		WithEndpoints(discoveryv1ac.Endpoint().WithAddresses(s.cfg.Address.String()).
			WithConditions(discoveryv1ac.EndpointConditions().WithReady(true))).
		WithPorts(discoveryv1ac.EndpointPort().WithName(PortName).WithPort(int32(s.cfg.Port)).WithProtocol(corev1.ProtocolTCP))
	if _, err := s.cs.DiscoveryV1().EndpointSlices(Namespace).Apply(ctx, slice, metav1.ApplyOptions{FieldManager: "kone", Force: true}); err != nil {
		return fmt.Errorf("publish its address: %w", err)
	}
	return nil
}
