package server

import (
	"context"
	"fmt"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kone-dev/kone/pkg/apply"
	"github.com/kone-dev/kone/pkg/dns"
	"github.com/kone-dev/kone/pkg/join"
	"github.com/kone-dev/kone/pkg/token"
)

// ensureRBAC grants kone's identities their rights: the apiserver reaches kubelets, joining
// nodes ask for certificates, kubelets renew their own client certificates, each node's flannel
// learns every node's subnet and publishes its own, and each node's CoreDNS reads what it serves
// and publishes its node's endpoint of kube-dns. RBAC cannot say "its own node", so admission
// policies hold flannel and CoreDNS to their node, the way NodeRestriction holds kubelets.
// kone owns these objects: each start puts them back as they are here.
func ensureRBAC(ctx context.Context, cs kubernetes.Interface) error {
	group := func(name string) []rbacv1.Subject {
		return []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: name}}
	}
	role := func(name string) rbacv1.RoleRef {
		return rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name}
	}
	read := []string{"get", "list", "watch"}
	clusterRoles := []*rbacv1.ClusterRole{{
		ObjectMeta: metav1.ObjectMeta{Name: join.DNSGroup},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "namespaces"}, Verbs: read},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		},
	}, {
		ObjectMeta: metav1.ObjectMeta{Name: join.FlannelGroup},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		},
	}}
	bindings := []*rbacv1.ClusterRoleBinding{
		{ObjectMeta: metav1.ObjectMeta{Name: "kone:kube-apiserver-kubelet-client"}, RoleRef: role("system:kubelet-api-admin"),
			Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "system:kube-apiserver-kubelet-client"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "kone:node-bootstrapper"}, RoleRef: role("system:node-bootstrapper"),
			Subjects: group(token.NodeGroup)},
		{ObjectMeta: metav1.ObjectMeta{Name: "kone:node-client-renewal"},
			RoleRef:  role("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"),
			Subjects: group("system:nodes")},
		{ObjectMeta: metav1.ObjectMeta{Name: join.DNSGroup}, RoleRef: role(join.DNSGroup), Subjects: group(join.DNSGroup)},
		{ObjectMeta: metav1.ObjectMeta{Name: join.FlannelGroup}, RoleRef: role(join.FlannelGroup), Subjects: group(join.FlannelGroup)},
	}
	dnsWriter := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: join.DNSGroup, Namespace: dns.Namespace},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"},
			Verbs: []string{"get", "create", "update"}}},
	}
	dnsWriterBinding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: join.DNSGroup, Namespace: dns.Namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: join.DNSGroup}, Subjects: group(join.DNSGroup),
	}
	rbac := cs.RbacV1()
	for _, r := range clusterRoles {
		if err := apply.Ensure(ctx, "ClusterRole", r, rbac.ClusterRoles()); err != nil {
			return err
		}
	}
	for _, b := range bindings {
		if err := apply.Ensure(ctx, "ClusterRoleBinding", b, rbac.ClusterRoleBindings()); err != nil {
			return err
		}
	}
	if err := apply.Ensure(ctx, "Role", dnsWriter, rbac.Roles(dns.Namespace)); err != nil {
		return err
	}
	if err := apply.Ensure(ctx, "RoleBinding", dnsWriterBinding, rbac.RoleBindings(dns.Namespace)); err != nil {
		return err
	}
	admission := cs.AdmissionregistrationV1()
	for _, p := range ownNodePolicies() {
		if err := apply.Ensure(ctx, "ValidatingAdmissionPolicy", p, admission.ValidatingAdmissionPolicies()); err != nil {
			return err
		}
		binding := &admissionv1.ValidatingAdmissionPolicyBinding{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name},
			Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: p.Name,
				ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny}},
		}
		if err := apply.Ensure(ctx, "ValidatingAdmissionPolicyBinding", binding, admission.ValidatingAdmissionPolicyBindings()); err != nil {
			return err
		}
	}
	return nil
}

// ownNodePolicies hold flannel and CoreDNS, whose user names end in their node's name
// (join.Subject), to that node: flannel may change only its own Node, and neither its spec nor
// its labels; CoreDNS may write only its node's slice of the kube-dns Service.
func ownNodePolicies() []*admissionv1.ValidatingAdmissionPolicy {
	policy := func(name, group string, rule admissionv1.RuleWithOperations, checks ...admissionv1.Validation) *admissionv1.ValidatingAdmissionPolicy {
		for i := range checks {
			// A refusal of rights, as RBAC's and NodeRestriction's are; the default says "Invalid".
			checks[i].Reason = ptr.To(metav1.StatusReasonForbidden)
		}
		return &admissionv1.ValidatingAdmissionPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: admissionv1.ValidatingAdmissionPolicySpec{
				FailurePolicy:    ptr.To(admissionv1.Fail),
				MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{RuleWithOperations: rule}}},
				MatchConditions:  []admissionv1.MatchCondition{{Name: "node-component", Expression: fmt.Sprintf("%q in request.userInfo.groups", group)}},
				Validations:      checks,
			},
		}
	}
	rule := func(group string, resources []string, ops ...admissionv1.OperationType) admissionv1.RuleWithOperations {
		return admissionv1.RuleWithOperations{Operations: ops, Rule: admissionv1.Rule{
			APIGroups: []string{group}, APIVersions: []string{"v1"}, Resources: resources}}
	}
	flannelUser := join.Subject(join.FlannelGroup, "").CommonName
	dnsUser := join.Subject(join.DNSGroup, "").CommonName
	slicePrefix := dns.ServiceName + "-"
	return []*admissionv1.ValidatingAdmissionPolicy{
		policy("kone-flannel-own-node", join.FlannelGroup, rule("", []string{"nodes", "nodes/status"}, admissionv1.Update),
			admissionv1.Validation{
				Expression: fmt.Sprintf("request.userInfo.username == %q + object.metadata.name", flannelUser),
				Message:    "flannel may change only its own node",
			},
			admissionv1.Validation{
				Expression: "object.spec == oldObject.spec && " +
					"(has(object.metadata.labels) ? object.metadata.labels : {}) == (has(oldObject.metadata.labels) ? oldObject.metadata.labels : {})",
				Message: "flannel may change neither a node's spec nor its labels",
			}),
		policy("kone-coredns-own-slice", join.DNSGroup, rule("discovery.k8s.io", []string{"endpointslices"}, admissionv1.Create, admissionv1.Update),
			admissionv1.Validation{
				Expression: fmt.Sprintf("object.metadata.name.startsWith(%q) && request.userInfo.username == %q + object.metadata.name.substring(%d)",
					slicePrefix, dnsUser, len(slicePrefix)),
				Message: "CoreDNS may write only its own node's endpoints of " + dns.ServiceName,
			},
			admissionv1.Validation{
				Expression: fmt.Sprintf("has(object.metadata.labels) && object.metadata.labels[?%q].orValue('') == %q", discoveryv1.LabelServiceName, dns.ServiceName),
				Message:    "CoreDNS may write only endpoints of " + dns.ServiceName,
			}),
	}
}
