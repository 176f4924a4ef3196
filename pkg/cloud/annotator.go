package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kone-dev/kone/pkg/supervisor"
)

// Annotator publishes what a node says of itself on its Node, on the node side, with the
// node's own credentials (the Node authorizer lets a node change its own object): its external
// addresses, and any more annotations it is given.
type Annotator struct {
	kubeconfig string
	nodeName   string
	external   []net.IP
	more       map[string]*string
	ready      *supervisor.Latch
}

// NewAnnotator returns the component that annotates node nodeName with its external
// addresses, none being a valid answer, and with more (a nil value removes that annotation),
// as the identity in kubeconfig: kubelet's, which on a joining node exists only once kubelet's
// TLS bootstrap has written it.
func NewAnnotator(kubeconfig, nodeName string, external []net.IP, more map[string]*string) *Annotator {
	return &Annotator{kubeconfig: kubeconfig, nodeName: nodeName, external: external, more: more, ready: supervisor.NewLatch()}
}

func (a *Annotator) Name() string { return "node annotations" }

func (a *Annotator) Run(ctx context.Context) error {
	rc, err := clientcmd.BuildConfigFromFlags("", a.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", a.kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	ips := make([]string, len(a.external))
	for i, ip := range a.external {
		ips[i] = ip.String()
	}
	annotations := map[string]*string{}
	for k, v := range a.more {
		annotations[k] = v
	}
	external := strings.Join(ips, ",")
	annotations[ExternalIPAnnotation] = &external
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return err
	}
	// kubelet registers the node a moment after it serves; until then there is nothing to patch.
	var last error
	for {
		_, err := cs.CoreV1().Nodes().Patch(ctx, a.nodeName, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsNotFound(err) {
			last = fmt.Errorf("annotate node %s: %w", a.nodeName, err)
		} else {
			last = fmt.Errorf("node %s is not registered yet", a.nodeName)
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
	a.ready.Open()
	<-ctx.Done()
	return nil
}

func (a *Annotator) Ready(ctx context.Context) error { return a.ready.Wait(ctx) }
