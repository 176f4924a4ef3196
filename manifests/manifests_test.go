package manifests_test

import (
	"encoding/base64"
	"fmt"
	"io/fs"
	"net"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"

	"github.com/kone-dev/kone/manifests"
	"github.com/kone-dev/kone/pkg/deploy"
	"github.com/kone-dev/kone/pkg/dns"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/storage"
	"github.com/kone-dev/kone/pkg/token"
)

// objects decodes every manifest, strictly, into typed objects keyed "Kind namespace/name".
func objects(t *testing.T) map[string]any {
	t.Helper()
	names, err := fs.Glob(manifests.Files(), "*.yaml")
	if err != nil || len(names) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	typed := map[string]func() any{
		"ClusterRole":                      func() any { return &rbacv1.ClusterRole{} },
		"ClusterRoleBinding":               func() any { return &rbacv1.ClusterRoleBinding{} },
		"Role":                             func() any { return &rbacv1.Role{} },
		"RoleBinding":                      func() any { return &rbacv1.RoleBinding{} },
		"ValidatingAdmissionPolicy":        func() any { return &admissionv1.ValidatingAdmissionPolicy{} },
		"ValidatingAdmissionPolicyBinding": func() any { return &admissionv1.ValidatingAdmissionPolicyBinding{} },
		"Service":                          func() any { return &corev1.Service{} },
		"StorageClass":                     func() any { return &storagev1.StorageClass{} },
		"APIService":                       func() any { return &apiregistrationv1.APIService{} },
	}
	all := map[string]any{}
	for _, name := range names {
		data, err := fs.ReadFile(manifests.Files(), name)
		if err != nil {
			t.Fatal(err)
		}
		if data, err = deploy.Render(name, data, map[string]string{"CLUSTER_DNS": "10.43.0.10", "SERVER_CA_BUNDLE": base64.StdEncoding.EncodeToString([]byte("CA"))}); err != nil {
			t.Fatal(err)
		}
		objs, err := deploy.Decode(name, data)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range objs {
			make, ok := typed[u.GetKind()]
			if !ok {
				t.Fatalf("%s: %s %s: a kind this test does not know; add it", name, u.GetKind(), u.GetName())
			}
			obj := make()
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, obj, true); err != nil {
				t.Fatalf("%s: %s %s: %v", name, u.GetKind(), u.GetName(), err)
			}
			key := fmt.Sprintf("%s %s/%s", u.GetKind(), u.GetNamespace(), u.GetName())
			if _, dup := all[key]; dup {
				t.Fatalf("%s: %s twice", name, key)
			}
			all[key] = obj
		}
	}
	return all
}

// The manifests name what kone's Go code names: its groups and users, the objects it reads.
func TestManifestsMatchTheCode(t *testing.T) {
	all := objects(t)
	role := func(key string) []rbacv1.PolicyRule {
		t.Helper()
		switch o := all[key].(type) {
		case *rbacv1.ClusterRole:
			return o.Rules
		case *rbacv1.Role:
			return o.Rules
		}
		t.Fatalf("no %s", key)
		return nil
	}
	subjects := func(key string) (string, []string) {
		t.Helper()
		var ref rbacv1.RoleRef
		var subjects []rbacv1.Subject
		switch o := all[key].(type) {
		case *rbacv1.ClusterRoleBinding:
			ref, subjects = o.RoleRef, o.Subjects
		case *rbacv1.RoleBinding:
			ref, subjects = o.RoleRef, o.Subjects
		default:
			t.Fatalf("no %s", key)
		}
		var names []string
		for _, s := range subjects {
			names = append(names, s.Kind+":"+s.Name)
		}
		return ref.Kind + ":" + ref.Name, names
	}
	check := func(key, wantRef string, wantSubjects ...string) {
		t.Helper()
		if ref, got := subjects(key); ref != wantRef || !slices.Equal(got, wantSubjects) {
			t.Errorf("%s binds %s to %v, want %s to %v", key, ref, got, wantRef, wantSubjects)
		}
	}
	check("ClusterRoleBinding /kone:node-bootstrapper", "ClusterRole:system:node-bootstrapper", "Group:"+token.NodeGroup)
	check("ClusterRoleBinding /"+join.DNSGroup, "ClusterRole:"+join.DNSGroup, "Group:"+join.DNSGroup)
	check("ClusterRoleBinding /"+join.FlannelGroup, "ClusterRole:"+join.FlannelGroup, "Group:"+join.FlannelGroup)
	check("ClusterRoleBinding /system:kone:network-policy", "ClusterRole:system:kone:network-policy", "Group:"+join.FlannelGroup)
	check("ClusterRoleBinding /"+join.StorageGroup, "ClusterRole:"+join.StorageGroup, "Group:"+join.StorageGroup)
	check("RoleBinding "+dns.Namespace+"/"+join.DNSGroup, "Role:"+join.DNSGroup, "Group:"+join.DNSGroup)
	check("RoleBinding kube-system/kone:cluster-settings", "Role:kone:cluster-settings", "Group:"+token.NodeGroup, "Group:system:nodes")
	check("RoleBinding kube-system/kone:server-data", "Role:kone:server-data", "Group:"+token.ServerGroup)
	check("RoleBinding kube-public/kone:bootstrap-signer-clusterinfo", "Role:kone:bootstrap-signer-clusterinfo", "User:system:anonymous")

	// Each object a joining node or server reads by name, and only it, for get only.
	only := func(key, resource, name string) {
		t.Helper()
		rules := role(key)
		if len(rules) != 1 || !slices.Equal(rules[0].Resources, []string{resource}) || !slices.Equal(rules[0].ResourceNames, []string{name}) ||
			!slices.Equal(rules[0].Verbs, []string{"get"}) {
			t.Errorf("%s grants %+v, want get of %s %s alone", key, rules, resource, name)
		}
	}
	// A node's local-path identity creates and deletes no volume: it could pre-bind one to a
	// claim of another namespace and draw its pods onto itself.
	if rules := role("ClusterRole /" + join.StorageGroup); len(rules) != 1 || !slices.Equal(rules[0].Resources, []string{"persistentvolumes"}) ||
		slices.ContainsFunc(rules[0].Verbs, func(v string) bool { return v != "list" && v != "watch" && v != "patch" }) {
		t.Errorf("the local-path identity may %+v; want list, watch and patch of volumes alone", rules)
	}
	only("Role kube-system/kone:cluster-settings", "configmaps", join.SettingsName)
	only("Role kube-system/kone:server-data", "secrets", join.ServerDataName)
	only("Role kube-public/kone:bootstrap-signer-clusterinfo", "configmaps", bootstrapapi.ConfigMapClusterInfo)

	// The policies match the groups and user names of kone's certificates.
	policy := func(name string) *admissionv1.ValidatingAdmissionPolicy {
		t.Helper()
		p, ok := all["ValidatingAdmissionPolicy /"+name].(*admissionv1.ValidatingAdmissionPolicy)
		if !ok {
			t.Fatalf("no policy %s", name)
		}
		if b, ok := all["ValidatingAdmissionPolicyBinding /"+name].(*admissionv1.ValidatingAdmissionPolicyBinding); !ok ||
			b.Spec.PolicyName != name || !slices.Equal(b.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
			t.Errorf("policy %s is not bound to deny", name)
		}
		if p.Spec.FailurePolicy == nil || *p.Spec.FailurePolicy != admissionv1.Fail {
			t.Errorf("policy %s does not fail closed", name)
		}
		return p
	}
	text := func(p *admissionv1.ValidatingAdmissionPolicy) string {
		var all []string
		for _, m := range p.Spec.MatchConditions {
			all = append(all, m.Expression)
		}
		for _, v := range p.Spec.Variables {
			all = append(all, v.Expression)
		}
		for _, v := range p.Spec.Validations {
			all = append(all, v.Expression)
		}
		return strings.Join(all, "\n")
	}
	flannelUser := join.Subject(join.FlannelGroup, "").CommonName
	dnsUser := join.Subject(join.DNSGroup, "").CommonName
	storageUser := join.Subject(join.StorageGroup, "").CommonName
	prefix := dns.ServiceName + "-"
	for name, want := range map[string][]string{
		"kone-local-path-own-node": {fmt.Sprintf("%q in request.userInfo.groups", join.StorageGroup),
			fmt.Sprintf("%q + oldObject.metadata.labels[?%q]", storageUser, storage.NodeLabel)},
		"kone-flannel-own-node": {fmt.Sprintf("%q in request.userInfo.groups", join.FlannelGroup), fmt.Sprintf("%q + object.metadata.name", flannelUser)},
		"kone-coredns-own-slice": {fmt.Sprintf("%q in request.userInfo.groups", join.DNSGroup), fmt.Sprintf("startsWith(%q)", prefix),
			fmt.Sprintf("%q + object.metadata.name.substring(%d)", dnsUser, len(prefix)), fmt.Sprintf("%q].orValue('') == %q", "kubernetes.io/service-name", dns.ServiceName)},
	} {
		got := text(policy(name))
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("policy %s lacks %s:\n%s", name, w, got)
			}
		}
	}
}

// The kube-dns Service, at --cluster-dns, pairs its ports with the endpoints each node's CoreDNS
// publishes (kube-proxy pairs them by name); it has no selector, and each pod asks its own node.
func TestKubeDNSService(t *testing.T) {
	svc, ok := objects(t)["Service "+dns.Namespace+"/"+dns.ServiceName].(*corev1.Service)
	if !ok {
		t.Fatal("no kube-dns Service")
	}
	if svc.Spec.ClusterIP != "10.43.0.10" || svc.Spec.Selector != nil || svc.Spec.InternalTrafficPolicy == nil ||
		*svc.Spec.InternalTrafficPolicy != corev1.ServiceInternalTrafficPolicyLocal {
		t.Errorf("kube-dns: %+v", svc.Spec)
	}
	es := dns.EndpointSlice(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-1"}}, net.ParseIP("10.42.0.1"))
	if len(es.Ports) != len(svc.Spec.Ports) {
		t.Fatalf("the Service has %d ports, a node's endpoints %d", len(svc.Spec.Ports), len(es.Ports))
	}
	for i, p := range svc.Spec.Ports {
		if *es.Ports[i].Name != p.Name || *es.Ports[i].Protocol != p.Protocol || *es.Ports[i].Port != p.Port {
			t.Errorf("port %d: service %+v slice %+v", i, p, es.Ports[i])
		}
	}
}

// A file named after a part that --disable leaves out is that part's: coredns.yaml holds every
// object of kone's CoreDNS, so that --disable coredns removes them all.
func TestParts(t *testing.T) {
	data, err := fs.ReadFile(manifests.Files(), "coredns.yaml")
	if err != nil {
		t.Fatal(err)
	}
	data, err = deploy.Render("coredns.yaml", data, map[string]string{"CLUSTER_DNS": "10.43.0.10", "SERVER_CA_BUNDLE": base64.StdEncoding.EncodeToString([]byte("CA"))})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := deploy.Decode("coredns.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range objs {
		names = append(names, o.GetKind()+" "+o.GetName())
	}
	for _, want := range []string{"Service kube-dns", "ClusterRole " + join.DNSGroup, "ClusterRoleBinding " + join.DNSGroup, "Role " + join.DNSGroup,
		"RoleBinding " + join.DNSGroup, "ValidatingAdmissionPolicy kone-coredns-own-slice", "ValidatingAdmissionPolicyBinding kone-coredns-own-slice"} {
		if !slices.Contains(names, want) {
			t.Errorf("coredns.yaml lacks %s: %v", want, names)
		}
	}
	if class, ok := objects(t)["StorageClass /local-path"].(*storagev1.StorageClass); !ok || class.Provisioner != storage.ProvisionerName ||
		class.VolumeBindingMode == nil || *class.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer ||
		class.Annotations["storageclass.kubernetes.io/is-default-class"] != "true" {
		t.Errorf("the local-path StorageClass is not the default, waiting for the first consumer, of kone's provisioner: %+v", class)
	}
	if _, err := deploy.Render("x.yaml", []byte("clusterIP: %{NO_SUCH}%"), map[string]string{}); err == nil || !strings.Contains(err.Error(), "%{NO_SUCH}%") {
		t.Errorf("a placeholder without a value: %v", err)
	}
}
