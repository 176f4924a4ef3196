package etcd

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/kone-dev/kone/pkg/pki"
)

// Client reaches the etcd of the server on this machine from another process (kone's commands),
// on loopback with a client certificate, as the apiserver does.
type Client struct {
	URL  string
	CA   string
	Cert pki.File
}

// Dial connects; the caller closes the client.
func (c Client) Dial() (*clientv3.Client, error) {
	tlsConfig, err := transport.TLSInfo{CertFile: c.Cert.Cert, KeyFile: c.Cert.Key, TrustedCAFile: c.CA}.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd client certificate: %w", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.URL}, TLS: tlsConfig, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", c.URL, err)
	}
	return cli, nil
}

// Servers lists the cluster's members by name: the servers, each with its etcd member. A
// member that is still a learner is a server that is joining.
func (c Client) Servers(ctx context.Context) (voters, learners []string, err error) {
	cli, err := c.Dial()
	if err != nil {
		return nil, nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("list the etcd members at %s: %w; is the server running?", c.URL, err)
	}
	for _, m := range resp.Members {
		name := m.Name
		if name == "" {
			name = fmt.Sprintf("%x (not started)", m.ID)
		}
		if m.IsLearner {
			learners = append(learners, name)
		} else {
			voters = append(voters, name)
		}
	}
	return voters, learners, nil
}

// MemberName is the name of the member the client reaches: the server's node name, which a
// command run beside the server may not be given.
func (c Client) MemberName(ctx context.Context, cli *clientv3.Client) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// The answer's header names the member that answered: the one at c.URL.
	members, err := cli.MemberList(ctx)
	if err != nil {
		return "", fmt.Errorf("etcd at %s: %w; is the server running?", c.URL, err)
	}
	for _, m := range members.Members {
		if m.ID == members.Header.MemberId && m.Name != "" {
			return m.Name, nil
		}
	}
	return "", fmt.Errorf("etcd at %s does not know its own member", c.URL)
}
