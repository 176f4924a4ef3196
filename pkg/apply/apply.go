// Package apply puts the objects kone owns into the cluster as kone defines them.
package apply

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// Client is what Ensure needs of a typed client-go client, such as
// clientset.RbacV1().ClusterRoles().
type Client[T metav1.Object] interface {
	Create(context.Context, T, metav1.CreateOptions) (T, error)
	Get(context.Context, string, metav1.GetOptions) (T, error)
	Update(context.Context, T, metav1.UpdateOptions) (T, error)
}

// Ensure creates obj, or puts it back as it is here where it exists, so that each start of a
// new kone version brings its rules and settings with it and undoes changes made by hand
// (labels and annotations too). A write that races another writer is tried again.
func Ensure[T metav1.Object](ctx context.Context, kind string, obj T, c Client[T]) error {
	raced := func(err error) bool { return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) }
	err := retry.OnError(retry.DefaultRetry, raced, func() error {
		current, err := c.Get(ctx, obj.GetName(), metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			obj.SetResourceVersion("")
			_, err = c.Create(ctx, obj, metav1.CreateOptions{})
		case err == nil:
			// An update that changes nothing is no write: the apiserver answers it from what it has.
			obj.SetResourceVersion(current.GetResourceVersion())
			_, err = c.Update(ctx, obj, metav1.UpdateOptions{})
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("ensure %s %s: %w", kind, obj.GetName(), err)
	}
	return nil
}
