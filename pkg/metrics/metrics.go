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
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	discoveryv1ac "k8s.io/client-go/applyconfigurations/discovery/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/transport"
	kubeopenapi "k8s.io/kubernetes/pkg/generated/openapi"
	"sigs.k8s.io/metrics-server/cmd/metrics-server/app/options"
	"sigs.k8s.io/metrics-server/pkg/api"

	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/probe"
	"github.com/kone-dev/kone/pkg/supervisor"
)

// The Service that the APIService v1beta1.metrics.k8s.io names (manifests/metrics-server.yaml),
// and the name of its one port, by which the aggregator pairs it with the published endpoint.
const (
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
	cfg   Config
	cs    kubernetes.Interface
	probe *http.Client
	ready *supervisor.Latch
}

// New checks cfg; cs publishes the endpoint, and must be allowed to read Services and apply
// EndpointSlices in kube-system.
func New(cfg Config, cs kubernetes.Interface) (*Server, error) {
	// The aggregator reaches it at an endpoint address, which may not be loopback.
	if cfg.Address == nil || cfg.Address.To4() == nil || cfg.Address.IsLoopback() {
		return nil, fmt.Errorf("metrics-server: the server has no IPv4 address for the apiservers to reach it at (found %v); set --advertise-address, or run without kone's metrics API (--disable metrics-server)", cfg.Address)
	}
	if cfg.Port <= 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("metrics-server: port %d is not a port", cfg.Port)
	}
	rt, err := transport.New(&transport.Config{TLS: transport.TLSConfig{
		CAFile: cfg.ServingCA, ServerName: pki.MetricsServiceName, CertFile: cfg.AuthProxy.Cert, KeyFile: cfg.AuthProxy.Key}})
	if err != nil {
		return nil, fmt.Errorf("metrics-server: %w", err)
	}
	return &Server{cfg: cfg, cs: cs, probe: &http.Client{Transport: rt, Timeout: 2 * time.Second}, ready: supervisor.NewLatch()}, nil
}

func (s *Server) Name() string { return "metrics-server" }

// Ready once the aggregator can reach it: it answers on its address, and has its address
// published. It has metrics to serve one scrape later.
func (s *Server) Ready(ctx context.Context) error { return s.ready.Wait(ctx) }

func (s *Server) address() string {
	return net.JoinHostPort(s.cfg.Address.String(), strconv.Itoa(s.cfg.Port))
}

func (s *Server) Run(ctx context.Context) error {
	o := options.NewOptions()
	o.Kubeconfig = s.cfg.Kubeconfig
	o.Authentication.RemoteKubeConfigFile = s.cfg.Kubeconfig
	o.Authorization.RemoteKubeConfigFile = s.cfg.Kubeconfig
	o.SecureServing.BindAddress = s.cfg.Address
	o.SecureServing.BindPort = s.cfg.Port
	o.SecureServing.ServerCert.CertKey.CertFile = s.cfg.Serving.Cert
	o.SecureServing.ServerCert.CertKey.KeyFile = s.cfg.Serving.Key
	o.Features.EnableProfiling = false
	o.MetricResolution = Resolution
	o.KubeletClient.KubeletCAFile = s.cfg.KubeletCA
	// As the apiserver reaches kubelets: edge nodes' host names are rarely in DNS.
	o.KubeletClient.KubeletPreferredAddressTypes = []string{string(corev1.NodeInternalIP), string(corev1.NodeExternalIP), string(corev1.NodeHostName)}
	// Logging options are not applied: they would set up klog for the whole process anew.
	if errs := append(o.KubeletClient.Validate(), o.GenericServerRunOptions.Validate()...); len(errs) > 0 {
		return fmt.Errorf("metrics-server: %w", errors.Join(errs...))
	}
	config, err := o.ServerConfig()
	if err != nil {
		return fmt.Errorf("metrics-server: %w", err)
	}
	// metrics-server v0.8.0 names its OpenAPI models by Go package path; the metrics types of
	// Kubernetes 1.36 name themselves io.k8s.metrics..., which its definitions then lack.
	// Kubernetes' own definitions carry those names, and are in kone already.
	namer := openapinamer.NewDefinitionNamer(api.Scheme)
	v2, v3 := genericapiserver.DefaultOpenAPIConfig(kubeopenapi.GetOpenAPIDefinitions, namer),
		genericapiserver.DefaultOpenAPIV3Config(kubeopenapi.GetOpenAPIDefinitions, namer)
	v2.Info, v3.Info = config.Apiserver.OpenAPIConfig.Info, config.Apiserver.OpenAPIV3Config.Info
	config.Apiserver.OpenAPIConfig, config.Apiserver.OpenAPIV3Config = v2, v3
	server, err := config.Complete()
	if err != nil {
		return fmt.Errorf("metrics-server: %w", err)
	}
	serving, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- server.RunUntil(serving.Done())
		stop()
	}()
	// Published only once it answers as the aggregator asks: the aggregator checks a new
	// endpoint at once, and reports each refusal as an error.
	if err := probe.Until(serving, 200*time.Millisecond, s.answers); err != nil {
		stop()
		if served := <-done; served != nil {
			return fmt.Errorf("metrics-server: %w", served)
		}
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("metrics-server: %w", err)
	}
	if err := s.publish(ctx); err != nil {
		stop()
		<-done
		return err
	}
	s.ready.Open()
	if err := <-done; err != nil {
		return fmt.Errorf("metrics-server: %w", err)
	}
	return nil
}

// answers asks for the API's discovery document as the aggregator does when it checks that
// the API is available: with its client certificate, for an administrator.
func (s *Server) answers() error {
	req, err := http.NewRequest(http.MethodGet, "https://"+s.address()+"/apis/metrics.k8s.io/v1beta1", nil)
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
		return fmt.Errorf("metrics-server: its Service: %w", err)
	}
	slice := discoveryv1ac.EndpointSlice(ServiceName+"-kone", Namespace).
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
		return fmt.Errorf("metrics-server: publish its address: %w", err)
	}
	return nil
}
