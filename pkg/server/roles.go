package server

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/kone-dev/kone/pkg/etcd"
	"github.com/kone-dev/kone/pkg/probe"
	"github.com/kone-dev/kone/pkg/supervisor"
)

// roleLabels are the roles of a server's node, as k3s labels them, which `kubectl get nodes`
// shows under ROLES.
var roleLabels = map[string]string{
	"node-role.kubernetes.io/control-plane": "true",
	etcd.RoleLabel:                          "true",
}

// roles labels the server's own node with its roles once it has registered: kubelet may not set
// node-role labels on its own Node (NodeRestriction refuses them), so the server does.
type roles struct {
	cs    kubernetes.Interface
	node  string
	ready *supervisor.Latch
}

func newRoles(cs kubernetes.Interface, node string) *roles {
	return &roles{cs: cs, node: node, ready: supervisor.NewLatch()}
}

func (r *roles) Name() string { return "node roles" }

func (r *roles) Run(ctx context.Context) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": roleLabels}})
	if err != nil {
		return err
	}
	err = probe.Until(ctx, 250*time.Millisecond, func() error {
		_, err := r.cs.CoreV1().Nodes().Patch(ctx, r.node, types.MergePatchType, patch, metav1.PatchOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("label node %s with its roles: %w", r.node, err)
	}
	r.ready.Open()
	<-ctx.Done()
	return nil
}

func (r *roles) Ready(ctx context.Context) error { return r.ready.Wait(ctx) }
