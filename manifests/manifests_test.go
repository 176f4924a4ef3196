package manifests_test

import (
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"

	"github.com/kone-dev/kone/manifests"
	"github.com/kone-dev/kone/pkg/deploy"
	"github.com/kone-dev/kone/pkg/dns"
	"github.com/kone-dev/kone/pkg/join"
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
	}
	all := map[string]any{}
	for _, name := range names {
		data, err := fs.ReadFile(manifests.Files(), name)
		if err != nil {
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
		for _, v := range p.Spec.Validations {
			all = append(all, v.Expression)
		}
		return strings.Join(all, "\n")
	}
	flannelUser := join.Subject(join.FlannelGroup, "").CommonName
	dnsUser := join.Subject(join.DNSGroup, "").CommonName
	prefix := dns.ServiceName + "-"
	for name, want := range map[string][]string{
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
