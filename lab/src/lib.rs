//! netmatrix lab: a virtual Kubernetes cluster made of Linux network
//! namespaces on one machine, with real kernel networking, and the pieces of
//! Kubernetes that netmatrix talks to (an API server emulator, a DNS server,
//! iptables rules in place of kube-proxy).
//!
//! How it fits together (see `lab/README.md` for the picture and the fault
//! catalog, `docs/architecture.md` for where the lab sits in the project):
//! - [`net`]: the cluster's kernel networking: the plan of names and
//!   addresses ([`net::topology`], pure), the namespaces and the kernel's
//!   tools ([`net::netns`]), the underlay, nodes, `cni0`, pods and overlay
//!   ([`net::network`]), the kube-proxy stand-in ([`net::services`]),
//!   NetworkPolicy enforcement ([`net::policy`]), the loopback forwarder
//!   ([`net::forward`]) and the faults with their exact undoing
//!   ([`net::faults`]);
//! - [`emulator`]: the servers the lab hosts in-process, their sockets opened
//!   inside the lab's namespaces: the Kubernetes API server emulator
//!   ([`emulator::apiserver`]) over the cluster's stored objects
//!   ([`emulator::cluster`]), the cluster DNS ([`emulator::dns`]) and the
//!   certificates and credentials ([`emulator::pki`]);
//! - [`lab`]: [`lab::Lab`], which brings all of it up and down, and churns it
//!   (cordon, agent restart, pod re-creation, nodes joining and leaving, and
//!   [`lab::Lab::churn`], a churn run that watches for false alarms);
//! - [`process`]: the agents and the aggregator, run inside the namespaces;
//! - [`state`]: the lab's state directory under `/run/netmatrix-lab`, and `down`;
//! - [`control`]: the Unix socket through which `netmatrix-lab fault` reaches a running lab;
//! - [`view`]: queries on the matrix and findings, and their text tables;
//! - [`bench`]: `netmatrix-lab bench`, measurements in throw-away namespaces;
//! - [`workloads`]: the container runtime mode's kubelet, controllers and
//!   kube-proxy, which run the chart `helm install` stored, from the image.

pub mod emulator;
pub mod net;

pub mod bench;
pub mod control;
pub mod lab;
pub mod process;
pub mod state;
pub mod view;
pub mod workloads;

pub use lab::{AgentNetwork, ContainerConfig, Lab, LabConfig, LabError, Runtime, Snapshot};
pub use net::faults::{Fault, FaultKind};
pub use net::topology::Overlay;
