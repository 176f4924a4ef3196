package metrics

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	aggregatorfake "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset/fake"
	"k8s.io/kube-openapi/pkg/builder"
	"k8s.io/kube-openapi/pkg/builder3"
	"k8s.io/kube-openapi/pkg/util"
	"k8s.io/kube-openapi/pkg/validation/spec"
	metricsv1beta1 "k8s.io/metrics/pkg/apis/metrics/v1beta1"
	"sigs.k8s.io/metrics-server/pkg/api"
)

// The definitions carry the names Kubernetes' types give themselves, in their keys, their
// dependencies and their references, and none by Go package path.
func TestDefinitionsByModelName(t *testing.T) {
	var refs []string
	defs := definitions(func(path string) spec.Ref {
		refs = append(refs, path)
		return spec.MustCreateRef("#/definitions/" + path)
	})
	for _, want := range []string{metricsv1beta1.NodeMetrics{}.OpenAPIModelName(), metricsv1beta1.PodMetricsList{}.OpenAPIModelName(), metav1.ObjectMeta{}.OpenAPIModelName()} {
		if _, ok := defs[want]; !ok {
			t.Errorf("no definition %s", want)
		}
	}
	var names []string
	for name, d := range defs {
		names = append(names, name)
		names = append(names, d.Dependencies...)
	}
	for _, name := range append(names, refs...) {
		if strings.Contains(name, "/") {
			t.Errorf("a definition by Go path: %s", name)
		}
	}
	if len(refs) == 0 {
		t.Error("no references: the test proves nothing")
	}
}

// The OpenAPI specs build from them, as the generic apiserver builds them, for the types the
// metrics API serves; without the renaming they find no NodeMetrics.
func TestOpenAPIBuilds(t *testing.T) {
	namer := openapinamer.NewDefinitionNamer(api.Scheme)
	var names []string
	for _, obj := range []any{metricsv1beta1.NodeMetrics{}, metricsv1beta1.NodeMetricsList{}, metricsv1beta1.PodMetrics{}, metricsv1beta1.PodMetricsList{}} {
		names = append(names, util.GetCanonicalTypeName(obj))
	}
	v3, err := builder3.BuildOpenAPIDefinitionsForResources(genericapiserver.DefaultOpenAPIV3Config(definitions, namer), names...)
	if err != nil {
		t.Fatalf("OpenAPI v3: %v", err)
	}
	v2, err := builder.BuildOpenAPIDefinitionsForResources(genericapiserver.DefaultOpenAPIConfig(definitions, namer), names...)
	if err != nil {
		t.Fatalf("OpenAPI v2: %v", err)
	}
	for _, name := range names {
		if _, ok := v3[name]; !ok {
			t.Errorf("OpenAPI v3 lacks %s", name)
		}
		if _, ok := v2.Definitions[name]; !ok {
			t.Errorf("OpenAPI v2 lacks %s", name)
		}
	}
}

// An APIService that kone applied is kone's; one that someone else made, another
// metrics-server's.
func TestForeign(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		svc     *apiregistrationv1.APIService
		foreign bool
	}{
		{"none", nil, false},
		{"kone's", apiService(metav1.ManagedFieldsEntry{Manager: "kone", Operation: metav1.ManagedFieldsOperationApply}), false},
		{"kubectl's", apiService(metav1.ManagedFieldsEntry{Manager: "kubectl-client-side-apply", Operation: metav1.ManagedFieldsOperationUpdate}), true},
		{"kone's manifests directory's", apiService(metav1.ManagedFieldsEntry{Manager: "kone-manifests", Operation: metav1.ManagedFieldsOperationApply}), true},
		{"changed by kone, not applied", apiService(metav1.ManagedFieldsEntry{Manager: "kone", Operation: metav1.ManagedFieldsOperationUpdate}), true},
	} {
		cs := aggregatorfake.NewClientset()
		if tc.svc != nil {
			cs = aggregatorfake.NewClientset(tc.svc)
		}
		got, err := Foreign(ctx, cs.ApiregistrationV1().APIServices())
		if err != nil || got != tc.foreign {
			t.Errorf("%s: Foreign says %t (%v), want %t", tc.name, got, err, tc.foreign)
		}
	}
}

func apiService(m metav1.ManagedFieldsEntry) *apiregistrationv1.APIService {
	return &apiregistrationv1.APIService{ObjectMeta: metav1.ObjectMeta{Name: APIService, ManagedFields: []metav1.ManagedFieldsEntry{m}}}
}
