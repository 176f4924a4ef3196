// Package token reads, writes and manages kone's join tokens.
//
// A full token is K10<hash>::<id>.<secret>: <hash> is the hex SHA-256 of the cluster CA
// certificate (its DER bytes), so a joining node can pin the CA before it sends anything secret,
// and <id>.<secret> is a Kubernetes bootstrap token, stored as a bootstrap-token Secret in
// kube-system. A user may also give just <id>.<secret>, or any passphrase of at least 16
// characters, from which a bootstrap token is derived the same way on every machine.
//
// A server's own token (ServerFiles) is created in the cluster at its first start only, so that
// deleting it sticks, and Rotate replaces it.
package token
