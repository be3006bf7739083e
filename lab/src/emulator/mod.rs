//! What the lab serves in place of a cluster's control plane and add-ons,
//! in-process, on sockets opened inside the lab's namespaces.
//!
//! The API server is an emulator (nothing else can run here): it serves the
//! subset of the Kubernetes API that netmatrix uses, in the real wire format.
//! The DNS server is a real one (hickory-server) answering as CoreDNS does.

pub mod apiserver;
pub mod cluster;
pub mod dns;
pub mod pki;
