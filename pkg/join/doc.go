// Package join is how a machine becomes a node of a kone cluster, both sides of it.
//
// The agent's side (Discover, KubeletCertificate, ClientCertificate, ReadSettings) reads
// kube-public/cluster-info anonymously, pins the CA against the hash in the join token before
// it sends anything secret, checks the cluster-info signature that proves the server knows the
// token, and then uses the token, over the pinned connection, to read the cluster's settings and
// to obtain the client certificates of its kubelet, kube-proxy, CoreDNS and flannel (Subject:
// the last two carry the node's name, which the server's admission policies hold them to).
// kone asks for kubelet's first certificate itself, because kubelet's own TLS bootstrap cannot
// prove the node's secret; kubelet renews it from then on.
//
// Every request proves the node's secret (NodeSecret): an Ed25519 key made at the first join,
// which signs the request's exact bytes. The server's side (Approver, PublishSettings) approves
// exactly the requests that joining and joined nodes make, and publishes the settings agents
// need. A node name is claimed by the first secret that proves itself for it, and the claim
// keeps only the hash of its public key: another secret asking for the same name while that
// node exists is refused (a machine reinstalled without its secret too), and a server's own
// node name is held for good.
package join
