//! Faults, injected with the kernel's own tools (DESIGN §7), and their exact
//! undoing. The lab records every applied fault and heals them in reverse
//! order, so `heal` restores what was there and nothing else.
//!
//! | fault | what is done | what netmatrix should name |
//! |---|---|---|
//! | `overlay-down NODE` | vxlan: the node's FDB and neighbour entries for its peers are deleted (flanneld lost its state); host-gw: its routes to the peers' pod subnets | `node-isolated` |
//! | `service-route NODE` | the `10.96.0.0/12` route is deleted in the node's pod namespaces: `connect: network is unreachable` | `clusterip-broken` |
//! | `dnat NODE` | the node's service DNAT chain is flushed (kube-proxy rules gone) | `clusterip-broken` |
//! | `dns-stop` | the DNS server stops (heal starts it on fresh sockets) | `dns-failure` |
//! | `kill-agent NODE` | the node's agent process is killed (heal starts it again) | `agent-missing` |

use serde::{Deserialize, Serialize};

use crate::netns::NetnsError;
use crate::network;
use crate::services;
use crate::topology::{NodePlan, Topology};

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Delete the node's VXLAN FDB and neighbour entries (host-gw: its routes) to its peers.
    OverlayDown,
    /// Delete the route to the service network (10.96.0.0/12) in the node's pods.
    ServiceRoute,
    /// Flush the node's service DNAT rules (kube-proxy stand-in).
    Dnat,
    /// Stop the cluster DNS server.
    DnsStop,
    /// Kill the node's agent process.
    KillAgent,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::OverlayDown => "overlay-down",
            FaultKind::ServiceRoute => "service-route",
            FaultKind::Dnat => "dnat",
            FaultKind::DnsStop => "dns-stop",
            FaultKind::KillAgent => "kill-agent",
        }
    }

    /// Whether the fault is about one node.
    pub fn needs_node(self) -> bool {
        !matches!(self, FaultKind::DnsStop)
    }
}

/// One fault: its kind and, for node faults, the node's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Fault {
    /// A validated fault (a node for node faults, none otherwise).
    pub fn new(kind: FaultKind, node: Option<String>) -> Result<Self, FaultError> {
        match (kind.needs_node(), &node) {
            (true, None) => Err(FaultError::NodeRequired(kind)),
            (false, Some(_)) => Err(FaultError::NoNode(kind)),
            _ => Ok(Fault { kind, node }),
        }
    }

    pub fn overlay_down(node: &str) -> Self {
        Self::on(FaultKind::OverlayDown, node)
    }

    pub fn service_route(node: &str) -> Self {
        Self::on(FaultKind::ServiceRoute, node)
    }

    pub fn dnat(node: &str) -> Self {
        Self::on(FaultKind::Dnat, node)
    }

    pub fn kill_agent(node: &str) -> Self {
        Self::on(FaultKind::KillAgent, node)
    }

    pub fn dns_stop() -> Self {
        Fault {
            kind: FaultKind::DnsStop,
            node: None,
        }
    }

    fn on(kind: FaultKind, node: &str) -> Self {
        Fault {
            kind,
            node: Some(node.to_string()),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.node {
            Some(node) => write!(f, "{} {node}", self.kind.as_str()),
            None => f.write_str(self.kind.as_str()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("fault {0}: say which node with --node, e.g. --node node-2")]
    NodeRequired(FaultKind),
    #[error("fault {0} is not about one node: drop --node")]
    NoNode(FaultKind),
    #[error("no node {node} in this lab (it has {known})")]
    UnknownNode { node: String, known: String },
    #[error("fault {0} is already applied; run `heal` first")]
    AlreadyApplied(Fault),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Lab(String),
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a fault needs from the running lab besides the kernel's tools.
pub trait Hooks {
    fn stop_dns(&self) -> Result<(), FaultError>;
    fn start_dns(&self) -> Result<(), FaultError>;
    fn stop_agent(&self, node: &NodePlan) -> Result<(), FaultError>;
    fn start_agent(&self, node: &NodePlan) -> Result<(), FaultError>;
}

/// The node a fault is about, checked against the plan.
pub fn target<'a>(t: &'a Topology, fault: &Fault) -> Result<Option<&'a NodePlan>, FaultError> {
    let Some(name) = &fault.node else {
        return Ok(None);
    };
    t.node(name)
        .map(Some)
        .ok_or_else(|| FaultError::UnknownNode {
            node: name.clone(),
            known: t
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Breaks what `fault` says.
pub fn apply(t: &Topology, fault: &Fault, hooks: &dyn Hooks) -> Result<(), FaultError> {
    let node = target(t, fault)?;
    match (fault.kind, node) {
        (FaultKind::OverlayDown, Some(n)) => {
            for peer in t.nodes.iter().filter(|p| p.index != n.index) {
                network::disconnect_peer(t.overlay, n, peer)?;
            }
        }
        (FaultKind::ServiceRoute, Some(n)) => {
            for pod in t.pods_of(n) {
                network::delete_service_route(pod)?;
            }
        }
        (FaultKind::Dnat, Some(n)) => services::flush(n)?,
        (FaultKind::KillAgent, Some(n)) => hooks.stop_agent(n)?,
        (FaultKind::DnsStop, _) => hooks.stop_dns()?,
        (kind, None) => return Err(FaultError::NodeRequired(kind)),
    }
    Ok(())
}

/// Undoes [`apply`] of the same fault.
pub fn heal(t: &Topology, fault: &Fault, hooks: &dyn Hooks) -> Result<(), FaultError> {
    let node = target(t, fault)?;
    match (fault.kind, node) {
        (FaultKind::OverlayDown, Some(n)) => {
            for peer in t.nodes.iter().filter(|p| p.index != n.index) {
                network::connect_peer(t.overlay, n, peer)?;
            }
        }
        (FaultKind::ServiceRoute, Some(n)) => {
            for pod in t.pods_of(n) {
                network::add_service_route(n, pod)?;
            }
        }
        (FaultKind::Dnat, Some(n)) => services::restore(t, n)?,
        (FaultKind::KillAgent, Some(n)) => hooks.start_agent(n)?,
        (FaultKind::DnsStop, _) => hooks.start_dns()?,
        (kind, None) => return Err(FaultError::NodeRequired(kind)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_faults_need_a_node_and_others_refuse_one() {
        assert!(Fault::new(FaultKind::OverlayDown, None).is_err());
        assert!(Fault::new(FaultKind::DnsStop, Some("node-1".into())).is_err());
        let f = Fault::new(FaultKind::ServiceRoute, Some("node-3".into())).unwrap();
        assert_eq!(f.to_string(), "service-route node-3");
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, r#"{"kind":"service-route","node":"node-3"}"#);
        assert_eq!(Fault::dns_stop().to_string(), "dns-stop");
    }
}
