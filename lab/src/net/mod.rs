//! The lab's kernel networking: real namespaces, bridges, veth pairs, VXLAN
//! or host-gw routes and iptables, built, broken and healed with the
//! kernel's own tools.

pub mod bgp;
pub mod cni;
pub mod faults;
pub mod forward;
pub mod netns;
pub mod network;
pub mod policy;
pub mod services;
pub mod topology;
