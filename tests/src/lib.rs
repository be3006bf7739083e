//! netmatrix lab: a virtual Kubernetes cluster made of Linux network
//! namespaces on one machine, with real kernel networking, and the pieces of
//! Kubernetes that netmatrix talks to (an API server emulator, a DNS server,
//! iptables rules in place of kube-proxy).
//!
//! How it fits together:
//! - [`topology`]: the plan (names and addresses), pure;
//! - [`netns`]: `ip`/`bridge`/`iptables` inside namespaces, sockets inside them;
//! - [`network`]: underlay switch, nodes, `cni0`, pods, VXLAN or host-gw, masquerade;
//! - [`services`]: the kube-proxy stand-in (iptables DNAT);
//! - [`state`]: the lab's state directory under `/run/netmatrix-lab`, and `down`;
//! - [`process`]: the agents and the aggregator, run inside the namespaces;
//! - [`forward`]: `127.0.0.1:PORT` in the root namespace to the aggregator;
//! - [`faults`]: breaking and healing the network with the kernel's tools;
//! - [`lab`]: [`lab::Lab`], which brings all of it up and down, and churns it (cordon, agent restart, pod re-creation, nodes joining and leaving, and [`lab::Lab::churn`], a churn run that watches for false alarms);
//! - [`control`]: the Unix socket through which `netmatrix-lab fault` reaches a running lab;
//! - [`view`]: queries on the matrix and findings, and their text tables.
//!
//! Servers the lab hosts in-process (their sockets are opened inside the lab's
//! namespaces):
pub mod apiserver;
pub mod cluster;
pub mod dns;
pub mod pki;

pub mod control;
pub mod faults;
pub mod forward;
pub mod lab;
pub mod netns;
pub mod network;
pub mod process;
pub mod services;
pub mod state;
pub mod topology;
pub mod view;

pub use faults::{Fault, FaultKind};
pub use lab::{AgentNetwork, Lab, LabConfig, LabError, Snapshot};
pub use topology::Overlay;
