// Package join is how a machine becomes a node of a kone cluster, both sides of it.
//
// The agent's side (Discover, RequestCertificate, ReadSettings) reads kube-public/cluster-info
// anonymously, pins the CA against the hash in the join token before it sends anything secret,
// checks the cluster-info signature that proves the server knows the token, and then uses the
// token, over the pinned connection, to read the cluster's settings and to obtain certificates
// for its kube-proxy, CoreDNS and flannel (Subject: the last two carry the node's name, which the
// server's admission policies hold them to). kubelet gets its own client certificate through upstream's
// TLS bootstrap with the same token.
//
// The server's side (Approver, PublishSettings) approves exactly the certificate requests that
// joining nodes make, and publishes the settings agents need. A node name is claimed by the
// first machine that joins with it: another machine asking for the same name while that node
// exists is refused, while the same machine (same machine id) joining again is let in.
package join
