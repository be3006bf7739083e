//! netmatrix lab: a virtual Kubernetes cluster made of Linux network
//! namespaces on one machine, with real kernel networking, and the pieces of
//! Kubernetes that netmatrix talks to (an API server emulator, a DNS server,
//! iptables rules in place of kube-proxy).
//!
//! Servers the lab hosts in-process (their sockets are opened inside the lab's
//! namespaces):
pub mod apiserver;
pub mod cluster;
pub mod dns;
pub mod netns;
pub mod pki;
