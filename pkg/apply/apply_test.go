package apply

import (
	"context"
	"errors"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func role(verbs ...string) *rbacv1.Role {
	return &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "kone:test", Namespace: "kube-system"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: verbs}},
	}
}

// TestEnsureCreatesAndPutsBack checks the three cases: missing (created), changed by hand or by
// an older kone (put back), and a failing apiserver (an error that names the object).
func TestEnsureCreatesAndPutsBack(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	roles := cs.RbacV1().Roles("kube-system")
	if err := Ensure(ctx, "Role", role("get"), roles); err != nil {
		t.Fatal(err)
	}
	if got, err := roles.Get(ctx, "kone:test", metav1.GetOptions{}); err != nil || got.Rules[0].Verbs[0] != "get" {
		t.Fatalf("not created: %v %v", got, err)
	}
	if err := Ensure(ctx, "Role", role("get", "list"), roles); err != nil {
		t.Fatal(err)
	}
	got, err := roles.Get(ctx, "kone:test", metav1.GetOptions{})
	if err != nil || len(got.Rules[0].Verbs) != 2 {
		t.Fatalf("not put back as defined: %v %v", got, err)
	}

	// Another writer got in between: the update is refused once, and tried again.
	conflicts := 0
	cs.PrependReactor("update", "roles", func(k8stesting.Action) (bool, runtime.Object, error) {
		if conflicts++; conflicts == 1 {
			return true, nil, apierrors.NewConflict(rbacv1.Resource("roles"), "kone:test", errors.New("the object has been modified"))
		}
		return false, nil, nil
	})
	if err := Ensure(ctx, "Role", role("get", "list", "watch"), roles); err != nil {
		t.Fatal(err)
	}
	if got, err := roles.Get(ctx, "kone:test", metav1.GetOptions{}); err != nil || conflicts != 2 || len(got.Rules[0].Verbs) != 3 {
		t.Fatalf("after a conflict: %d updates, %v %v", conflicts, got, err)
	}

	cs.PrependReactor("get", "roles", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("etcdserver: request timed out")
	})
	err = Ensure(ctx, "Role", role("get"), roles)
	if err == nil || !strings.Contains(err.Error(), "Role kone:test") || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("want an error naming the role and the cause, got %v", err)
	}
}
