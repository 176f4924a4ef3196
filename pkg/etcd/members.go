package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/membership"
	etcderrors "go.etcd.io/etcd/server/v3/etcdserver/errors"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kone-dev/kone/pkg/supervisor"
)

// A server that joins asks for membership through the Kubernetes API, which every server
// serves and which checks who asks: etcd's own client port stays on loopback. The request is
// a ConfigMap in kube-system with this label, named for the member; a server answers it by
// adding the member as a learner and writing the cluster it joins into the same ConfigMap.
const (
	requestLabel     = "kone.dev/etcd-member-request"
	requestPrefix    = "kone-etcd-member-"
	peerURLKey       = "peer-url"
	initialKey       = "initial-cluster"
	membersInterval  = time.Second
	requestPatience  = 5 * time.Minute
	requestNamespace = metav1.NamespaceSystem
)

// Members is the component that lets servers join: it adds the member each request names as a
// learner and promotes every learner once it has caught up with the leader. It runs on every
// server: etcd orders membership changes itself, and a second server that answers the same
// request finds the member added and answers the same.
type Members struct {
	store *Etcd
	cs    kubernetes.Interface
	log   *logrus.Logger
	ready *supervisor.Latch
}

// NewMembers returns the component for the local member store; cs may read and write
// ConfigMaps in kube-system.
func NewMembers(store *Etcd, cs kubernetes.Interface, log *logrus.Logger) *Members {
	return &Members{store: store, cs: cs, log: log, ready: supervisor.NewLatch()}
}

func (m *Members) Name() string { return "etcd membership" }

func (m *Members) Ready(ctx context.Context) error { return m.ready.Wait(ctx) }

func (m *Members) Run(ctx context.Context) error {
	m.ready.Open()
	for {
		if err := m.sync(ctx); err != nil && ctx.Err() == nil {
			m.log.WithError(err).Debug("etcd membership")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(membersInterval):
		}
	}
}

func (m *Members) sync(ctx context.Context) error {
	s := m.store.server.Server
	for _, member := range s.Cluster().Members() {
		if !member.IsLearner {
			continue
		}
		// etcd refuses until the learner has caught up; the next round tries again.
		_, err := s.PromoteMember(ctx, uint64(member.ID))
		switch {
		case err == nil:
			m.log.WithField("member", memberName(member)).Info("etcd member promoted to a voting member")
		case !errors.Is(err, etcderrors.ErrLearnerNotReady):
			m.log.WithError(err).WithField("member", memberName(member)).Debug("etcd member not promoted yet")
		}
	}
	requests, err := m.cs.CoreV1().ConfigMaps(requestNamespace).List(ctx, metav1.ListOptions{LabelSelector: requestLabel})
	if err != nil {
		return err
	}
	var errs []error
	for i := range requests.Items {
		if err := m.answer(ctx, &requests.Items[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// answer adds the member a request names, unless it is a member already, and writes the
// cluster it joins into the request. A member that has started and voted needs no answer any
// more: its request is deleted.
func (m *Members) answer(ctx context.Context, req *corev1.ConfigMap) error {
	s := m.store.server.Server
	name := req.Labels[requestLabel]
	peer := req.Data[peerURLKey]
	if _, err := url.Parse(peer); err != nil || name == "" || peer == "" {
		return fmt.Errorf("etcd member request %s: no member name or peer URL", req.Name)
	}
	var self *membership.Member
	for _, member := range s.Cluster().Members() {
		if slices.Contains(member.PeerURLs, peer) {
			self = member
		}
	}
	if self != nil && self.Name == name && !self.IsLearner {
		return m.cs.CoreV1().ConfigMaps(requestNamespace).Delete(ctx, req.Name, metav1.DeleteOptions{})
	}
	if _, answered := req.Data[initialKey]; answered && self != nil {
		return nil
	}
	if self == nil {
		urls, err := types.NewURLs([]string{peer})
		if err != nil {
			return err
		}
		now := time.Now()
		learner := membership.NewMemberAsLearner(name, urls, "", &now)
		// etcd takes one learner at a time: a second server that asks meanwhile is answered
		// once the first has been promoted.
		if _, err := s.AddMember(ctx, *learner); err != nil {
			return fmt.Errorf("add etcd member %s: %w", name, err)
		}
		m.log.WithFields(logrus.Fields{"member": name, "peer": peer}).Info("etcd member added as a learner")
	}
	if req.Data == nil {
		req.Data = map[string]string{}
	}
	req.Data[initialKey] = InitialCluster(s.Cluster().Members(), name, peer)
	_, err := m.cs.CoreV1().ConfigMaps(requestNamespace).Update(ctx, req, metav1.UpdateOptions{})
	return err
}

// InitialCluster is etcd's initial-cluster setting for the member at peer, named name, that
// joins a cluster of members: every member, started or not, by its peer URL. A member added
// but never started has no name yet; it is named for its id.
func InitialCluster(members []*membership.Member, name, peer string) string {
	var parts []string
	for _, member := range members {
		n := memberName(member)
		if slices.Contains(member.PeerURLs, peer) {
			n = name
		}
		for _, u := range member.PeerURLs {
			parts = append(parts, n+"="+u)
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func memberName(m *membership.Member) string {
	if m.Name == "" {
		return m.ID.String()
	}
	return m.Name
}

// RequestMembership asks the cluster behind cs to add a member named name at peer, and
// returns the initial cluster it joins, once a server has added it.
func RequestMembership(ctx context.Context, cs kubernetes.Interface, name, peer string) (string, error) {
	req := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: requestPrefix + name, Namespace: requestNamespace, Labels: map[string]string{requestLabel: name}},
		Data:       map[string]string{peerURLKey: peer},
	}
	api := cs.CoreV1().ConfigMaps(requestNamespace)
	// A request left by an earlier try may hold an answer for another address: ask afresh.
	if err := api.Delete(ctx, req.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("ask to join etcd: %w", err)
	}
	if _, err := api.Create(ctx, req, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("ask to join etcd: %w", err)
	}
	deadline := time.Now().Add(requestPatience)
	for {
		got, err := api.Get(ctx, req.Name, metav1.GetOptions{})
		if err == nil && got.Data[initialKey] != "" {
			return got.Data[initialKey], nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no server added this one to etcd within %s: check the servers' logs; a cluster whose etcd has lost quorum adds no member", requestPatience)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
