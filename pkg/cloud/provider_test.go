package cloud

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cloudproviderapi "k8s.io/cloud-provider/api"
)

func node(annotations map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-1", Annotations: annotations}}
}

func TestInstanceMetadata(t *testing.T) {
	md, err := provider{}.InstanceMetadata(context.Background(), node(map[string]string{
		cloudproviderapi.AnnotationAlphaProvidedIPAddr: "192.168.1.10",
		ExternalIPAnnotation:                           "203.0.113.7,2001:db8::7",
	}))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range md.NodeAddresses {
		got = append(got, string(a.Type)+"="+a.Address)
	}
	want := "InternalIP=192.168.1.10 ExternalIP=203.0.113.7 ExternalIP=2001:db8::7 Hostname=edge-1"
	if strings.Join(got, " ") != want {
		t.Errorf("addresses %v, want %s", got, want)
	}
	if md.ProviderID != "kone://edge-1" {
		t.Errorf("provider ID %q", md.ProviderID)
	}

	md, err = provider{}.InstanceMetadata(context.Background(), node(map[string]string{
		cloudproviderapi.AnnotationAlphaProvidedIPAddr: "192.168.1.10", ExternalIPAnnotation: "",
	}))
	if err != nil || len(md.NodeAddresses) != 2 {
		t.Errorf("no external addresses: %+v, %v", md, err)
	}
}

func TestInstanceMetadataWaitsForTheNode(t *testing.T) {
	for _, c := range []struct {
		annotations map[string]string
		want        string
	}{
		{nil, cloudproviderapi.AnnotationAlphaProvidedIPAddr},
		{map[string]string{cloudproviderapi.AnnotationAlphaProvidedIPAddr: "192.168.1.10"}, "not published its external addresses"},
		{map[string]string{cloudproviderapi.AnnotationAlphaProvidedIPAddr: "192.168.1.10", ExternalIPAnnotation: "nat.example"}, `"nat.example"`},
	} {
		if _, err := (provider{}).InstanceMetadata(context.Background(), node(c.annotations)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error naming %s", c.annotations, err, c.want)
		}
	}
}
