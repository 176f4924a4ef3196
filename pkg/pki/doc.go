// Package pki keeps a kone server's certificates: the certificate authorities, the leaf
// certificates signed by them, the service-account key pair, and kubeconfigs that use them.
//
// Ensure is idempotent and safe to run at every start: it creates what is missing, re-issues a
// leaf that is within RenewBefore of expiry or whose names no longer cover what is asked (keeping
// its key), and refuses, without touching anything, a file it cannot parse. Every file is written
// to a temporary name and renamed into place, so a crash never leaves a half-written one, and
// the next write of a file removes the temporary files a killed write left. A certificate and
// its key change together (WritePair, RecoverPair): a crash at any moment leaves the old pair or
// the new one, never a key without its certificate. Kubelet serving certificates come from a CA
// of their own, which no client of the apiserver trusts.
package pki
