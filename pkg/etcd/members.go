package etcd

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/membership"
	etcderrors "go.etcd.io/etcd/server/v3/etcdserver/errors"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kone-dev/kone/pkg/pki"
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
	peerCertKey      = "peer-cert" // proves that the server holds the cluster's keys
	initialKey       = "initial-cluster"
	refusedKey       = "refused" // why the request cannot be answered, for good
	errorKey         = "error"   // why it is not answered yet
	membersInterval  = time.Second
	requestPatience  = 5 * time.Minute
	requestNamespace = metav1.NamespaceSystem
)

// Members is the component that lets servers join: it adds the member each request names as a
// learner and promotes every learner once it has caught up with the leader. It runs on every
// server: etcd orders membership changes itself, and a second server that answers the same
// request finds the member added and answers the same.
type Members struct {
	store   *Etcd
	cs      kubernetes.Interface
	log     *logrus.Logger
	ready   *supervisor.Latch
	changed func() // after the voting members changed, whichever server changed them

	voters string // the voting members as the last round saw them

	mu      sync.Mutex
	deleted map[string]bool // server nodes deleted, whose members are to go
}

// NewMembers returns the component for the local member store; cs may read and write
// ConfigMaps in kube-system. changed is called when the voting members change.
func NewMembers(store *Etcd, cs kubernetes.Interface, log *logrus.Logger, changed func()) *Members {
	return &Members{store: store, cs: cs, log: log, ready: supervisor.NewLatch(), changed: changed, deleted: map[string]bool{}}
}

func (m *Members) Name() string { return "etcd membership" }

func (m *Members) Ready(ctx context.Context) error { return m.ready.Wait(ctx) }

func (m *Members) Run(ctx context.Context) error {
	// A server's node deleted removes its member: `kubectl delete node` is how a server leaves.
	nodes := informers.NewSharedInformerFactoryWithOptions(m.cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = RoleLabel
	}))
	_, err := nodes.Core().V1().Nodes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if node, ok := obj.(*corev1.Node); ok {
				m.mu.Lock()
				m.deleted[node.Name] = true
				m.mu.Unlock()
			}
		},
	})
	if err != nil {
		return err
	}
	nodes.Start(ctx.Done())
	defer nodes.Shutdown()
	// Requests are watched, not listed each round: an idle cluster asks the apiserver nothing.
	requests := informers.NewSharedInformerFactoryWithOptions(m.cs, 0, informers.WithNamespace(requestNamespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = requestLabel }))
	lister := requests.Core().V1().ConfigMaps().Lister()
	requests.Start(ctx.Done())
	defer requests.Shutdown()
	for typ, synced := range requests.WaitForCacheSync(ctx.Done()) {
		if !synced {
			return fmt.Errorf("etcd membership: the %v cache did not sync", typ)
		}
	}
	m.ready.Open()
	for {
		if err := m.sync(ctx, lister); err != nil && ctx.Err() == nil {
			m.log.WithError(err).Debug("etcd membership")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(membersInterval):
		}
	}
}

// RoleLabel marks the nodes of servers, whose names are their etcd members'.
const RoleLabel = "node-role.kubernetes.io/etcd"

// removeDeleted removes the members of the server nodes deleted since the last round: only of
// nodes that are gone (not of one that merely lost its role label), and again in the next
// round when etcd refuses. Every other server tries; all but the first find the member gone.
func (m *Members) removeDeleted(ctx context.Context) {
	m.mu.Lock()
	names := slices.Collect(maps.Keys(m.deleted))
	m.mu.Unlock()
	s := m.store.server.Server
	for _, name := range names {
		done := true
		if _, err := m.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			// It is back, or the apiserver cannot say: nothing to remove, or not yet.
			done = err == nil
		} else {
			for _, member := range s.Cluster().Members() {
				// Never its own: a member that removes itself stops before it can answer, and
				// the others, which would, find nothing left to remove.
				if member.Name != name || member.ID == s.MemberID() {
					continue
				}
				_, err := s.RemoveMember(ctx, uint64(member.ID))
				switch {
				case err == nil:
					m.log.WithField("member", name).Info("removed the etcd member of a deleted server node")
				case errors.Is(err, membership.ErrIDRemoved), errors.Is(err, membership.ErrIDNotFound):
				default:
					m.log.WithError(err).WithField("member", name).Warn("cannot remove the etcd member of a deleted server node yet")
					done = false
				}
			}
		}
		if done {
			m.mu.Lock()
			delete(m.deleted, name)
			m.mu.Unlock()
		}
	}
}

func (m *Members) sync(ctx context.Context, lister corelisters.ConfigMapLister) error {
	s := m.store.server.Server
	var voters []string
	for _, member := range s.Cluster().Members() {
		if !member.IsLearner {
			voters = append(voters, member.ID.String())
		}
	}
	slices.Sort(voters)
	if now := strings.Join(voters, ","); now != m.voters {
		if m.voters != "" {
			m.changed()
		}
		m.voters = now
	}
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
	requests, err := lister.ConfigMaps(requestNamespace).List(labels.Everything())
	if err != nil {
		return err
	}
	var errs []error
	for _, req := range requests {
		// A copy: the cache's objects are shared.
		if err := m.answer(ctx, req.DeepCopy()); err != nil {
			errs = append(errs, err)
		}
	}
	m.removeOrphans(ctx, requests)
	m.removeDeleted(ctx)
	return errors.Join(errs...)
}

// answer adds the member a request names, unless it is a member already, and writes the
// cluster it joins into the request. A request that would give the cluster a second member of
// the same name, or take the place of a member that runs, is refused with the reason. A member
// that has started and votes needs no answer any more: its request is deleted.
func (m *Members) answer(ctx context.Context, req *corev1.ConfigMap) error {
	s := m.store.server.Server
	api := m.cs.CoreV1().ConfigMaps(requestNamespace)
	name := req.Labels[requestLabel]
	peer := req.Data[peerURLKey]
	if _, err := url.Parse(peer); err != nil || name == "" || peer == "" {
		return fmt.Errorf("etcd member request %s: no member name or peer URL", req.Name)
	}
	if req.Data[refusedKey] != "" {
		return nil
	}
	// Creating a ConfigMap in kube-system is not proof enough: the member's peer certificate,
	// issued for its address by the cluster's peer CA, which only servers hold, is.
	if err := m.checkPeerCert(peer, []byte(req.Data[peerCertKey])); err != nil {
		req.Data[refusedKey] = err.Error()
		_, uerr := api.Update(ctx, req, metav1.UpdateOptions{})
		return errors.Join(fmt.Errorf("etcd member request %s: %w", req.Name, err), uerr)
	}
	var atURL, named *membership.Member
	for _, member := range s.Cluster().Members() {
		if slices.Contains(member.PeerURLs, peer) {
			atURL = member
		}
		if member.Name == name {
			named = member
		}
	}
	_, answered := req.Data[initialKey]
	var refusal string
	switch {
	case answered && atURL != nil && atURL.Name == name && !atURL.IsLearner:
		return api.Delete(ctx, req.Name, metav1.DeleteOptions{})
	case answered:
		return nil
	case named != nil && (atURL == nil || atURL.ID != named.ID):
		refusal = fmt.Sprintf("another server of the cluster is named %s already: give this one another --node-name", name)
	case atURL != nil && atURL.Name != "":
		refusal = fmt.Sprintf("the server %s at %s is a member of the cluster already; if it lost its data, take it out first (kubectl delete node %s) and join again", atURL.Name, peer, atURL.Name)
	}
	if refusal != "" {
		req.Data[refusedKey] = refusal
		_, err := api.Update(ctx, req, metav1.UpdateOptions{})
		return err
	}
	if atURL == nil {
		urls, err := types.NewURLs([]string{peer})
		if err != nil {
			return fmt.Errorf("etcd member request %s: %w", req.Name, err)
		}
		now := time.Now()
		learner := membership.NewMemberAsLearner(name, urls, "", &now)
		// etcd takes one learner at a time: a second server that asks meanwhile is answered
		// once the first has been promoted.
		if _, err := s.AddMember(ctx, *learner); err != nil {
			req.Data[errorKey] = err.Error()
			_, _ = api.Update(ctx, req, metav1.UpdateOptions{})
			return fmt.Errorf("add etcd member %s: %w", name, err)
		}
		m.log.WithFields(logrus.Fields{"member": name, "peer": peer}).Info("etcd member added as a learner")
	}
	delete(req.Data, errorKey)
	req.Data[initialKey] = InitialCluster(s.Cluster().Members(), name, peer)
	_, err := api.Update(ctx, req, metav1.UpdateOptions{})
	return err
}

// checkPeerCert verifies that certPEM was issued by the cluster's etcd peer CA for the
// address of peer.
func (m *Members) checkPeerCert(peer string, certPEM []byte) error {
	u, err := url.Parse(peer)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(m.store.cfg.PeerTLSInfo.TrustedCAFile)
	if err != nil {
		return fmt.Errorf("etcd peer CA: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	cert, err := pki.ParseCert(certPEM)
	if err != nil {
		return fmt.Errorf("the request's peer certificate: %w", err)
	}
	_, err = cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: u.Hostname(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("the request's peer certificate is not the cluster's for %s: %w", u.Hostname(), err)
	}
	return nil
}

// removeOrphans removes the learners that never started and that no request asks for any more:
// a server whose join failed for good would otherwise keep every other from joining, as etcd
// takes one learner at a time.
func (m *Members) removeOrphans(ctx context.Context, requests []*corev1.ConfigMap) {
	s := m.store.server.Server
	var orphans []*membership.Member
	for _, member := range s.Cluster().Members() {
		if member.IsLearner && member.Name == "" && !askedFor(member, requests) {
			orphans = append(orphans, member)
		}
	}
	if len(orphans) == 0 {
		return
	}
	// This server's cache may not have the request yet that another server just added the
	// learner for: only the apiserver's own answer removes it.
	live, err := m.cs.CoreV1().ConfigMaps(requestNamespace).List(ctx, metav1.ListOptions{LabelSelector: requestLabel})
	if err != nil {
		return
	}
	current := make([]*corev1.ConfigMap, len(live.Items))
	for i := range live.Items {
		current[i] = &live.Items[i]
	}
	for _, member := range orphans {
		if askedFor(member, current) {
			continue
		}
		if _, err := s.RemoveMember(ctx, uint64(member.ID)); err == nil {
			m.log.WithField("peer", member.PeerURLs).Info("removed an etcd learner that never started and that no server asks for")
		}
	}
}

// askedFor reports whether one of the membership requests asks for member's peer URL.
func askedFor(member *membership.Member, requests []*corev1.ConfigMap) bool {
	return slices.ContainsFunc(requests, func(r *corev1.ConfigMap) bool { return slices.Contains(member.PeerURLs, r.Data[peerURLKey]) })
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

// RequestMembership asks the cluster behind cs to add a member named name at peer, whose peer
// certificate is peerCert, and returns the initial cluster it joins, once a server has added it.
func RequestMembership(ctx context.Context, cs kubernetes.Interface, name, peer string, peerCert []byte) (string, error) {
	req := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: requestPrefix + name, Namespace: requestNamespace, Labels: map[string]string{requestLabel: name}},
		Data:       map[string]string{peerURLKey: peer, peerCertKey: string(peerCert)},
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
	last := "a cluster whose etcd has lost quorum adds no member"
	for {
		got, err := api.Get(ctx, req.Name, metav1.GetOptions{})
		switch {
		case err == nil && got.Data[refusedKey] != "":
			return "", errors.New(got.Data[refusedKey])
		case err == nil && got.Data[initialKey] != "":
			return got.Data[initialKey], nil
		case err == nil && got.Data[errorKey] != "":
			last = got.Data[errorKey]
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no server added this one to etcd within %s (%s); check the servers' logs", requestPatience, last)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
