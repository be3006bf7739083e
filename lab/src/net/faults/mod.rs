//! Faults, injected with the kernel's own tools, and their exact
//! undoing. The lab records every applied fault and heals them in reverse
//! order, so `heal` restores what was there and nothing else.
//!
//! | fault | what is done | what netmatrix should name |
//! |---|---|---|
//! | `overlay-down NODE` | vxlan: the node's FDB and neighbour entries for its peers are deleted one by one (flanneld lost its state); host-gw: its routes to the peers' pod subnets | `node-isolated` |
//! | `fdb-flush NODE` | vxlan: `bridge fdb flush` and `ip neigh flush` of the node's `flannel.1` | `node-isolated` |
//! | `vxlan-drop` | UDP 8472 dropped in `INPUT` and `OUTPUT` of every node | `cross-node-broken` |
//! | `partition NODE...` | pod traffic dropped between the given nodes and the others, both ends: vxlan, UDP 8472 between their underlay addresses; host-gw and bgp, forwarded packets between their pod subnets (BGP sessions stay up) | `partition` |
//! | `one-way A B` | flows initiated from A's pods to B's pods dropped in A's `FORWARD` | `asymmetric-path` |
//! | `vtep-down NODE` | the node's VXLAN device `flannel.1` set down (the kernel drops the routes through it) (vxlan) | `node-isolated`, the device named as its cause |
//! | `route-stale A B` | (host-gw) A's route to B's pod subnet points to 198.18.1.99, an address no node has (B re-addressed, A's flanneld not told) | `pair-broken`, the route named as its cause |
//! | `route-del A B` | A's route to B's pod subnet deleted | `pair-broken` (A's replies to B need it too), the missing route named as its cause |
//! | `fdb-stale A B` | A's FDB entry for B's VTEP points to 198.18.1.99, an address no node has (B re-addressed, A's flanneld not told) (vxlan) | `pair-broken`, the entry named as its cause |
//! | `pair A B` | pod traffic between A's and B's pod subnets dropped, both ways | `pair-broken` |
//! | `icmp-drop A B` | ICMP between A's and B's pod subnets dropped, both ways (TCP and UDP pass) | `icmp-filtered` only |
//! | `tcp-drop A B` | TCP between A's and B's pod subnets dropped, both ways (ICMP and UDP pass) | `tcp-filtered` only |
//! | `loss NODE [PERCENT]` | a random share (default 30 %) of the overlay packets arriving at the node dropped | `packet-loss` |
//! | `underlay-loss NODE [PERCENT]` | a random share (default 20 %) of everything arriving at the node's underlay interface `eth0` dropped: tunnel and host-network traffic alike | `packet-loss`, said to be the node network |
//! | `mtu NODE` | packets over 1200 bytes dropped through the node's overlay, both ways | `mtu-mismatch` |
//! | `mtu-lower NODE [MTU]` | the node's `flannel.1` MTU lowered (default 1200) | `mtu-mismatch` |
//! | `underlay-mtu NODE [MTU]` | the node's `eth0` MTU lowered (default 1300): its link to the other nodes, as a node set apart from the network's MTU | `mtu-mismatch`, said to be the node network, the link named as its cause |
//! | `service-route NODE` | the `10.96.0.0/12` route is deleted in the node's pod namespaces: `connect: network is unreachable` | `clusterip-broken` |
//! | `dnat NODE` | the node's service DNAT chain is flushed (kube-proxy rules gone) | `clusterip-broken` |
//! | `stale-service NODE` | the node's rule for the companions' Service points to 10.244.1.99, a deleted pod's address (kube-proxy missed the update); its other Services work | `service-unreachable`, that Service on that node |
//! | `apiserver-block NODE` | the node's pods' packets to the API server's endpoint (198.18.0.1:6443) dropped after DNAT | `apiserver-unreachable` |
//! | `dns-stop` | the DNS server stops (heal starts it on fresh sockets) | `dns-failure` |
//! | `dns-servfail` | the DNS server answers SERVFAIL | `dns-failure` |
//! | `dns-hide NODE` | the DNS server stops serving the node's agent pod in the agents' headless Service | `dns-stale` |
//! | `underlay-cut NODE` | the node's underlay link is set down (switch side) | `underlay-broken` |
//! | `kill-agent NODE` | the node's agent process is killed (heal starts it again) | `agent-missing` |
//! | `forwarding-off NODE` | `net.ipv4.ip_forward=0` in the node: its pods' packets are no longer routed off the node (nor others' to them) | `node-isolated` |
//! | `forward-policy-drop NODE` | the node's `FORWARD` chain policy set to `DROP`, as a Docker install does | `node-isolated` |
//! | `bridge-down NODE` | the node's pod bridge `cni0` set down | `node-isolated` |
//! | `agent-sandbox-fails NODE` | the node's agent pod re-created, and its sandbox fails: `Pending`, `FailedCreatePodSandBox` Events with a CNI IPAM error (the agent process stopped) | `agent-missing`, saying the CNI fails to set up the pod |
//! | `agent-image-pull NODE` | the node's agent pod re-created with an image that cannot be pulled: `ImagePullBackOff`, its `Failed` Events | `agent-missing`, saying the image is not pulled |
//! | `bgp-block A B` | (`--overlay bgp`) TCP 179 between A's and B's BGP speakers dropped on A: after the hold time the session ends and both withdraw the other's pod routes | `pair-broken` A-B, the missing routes named as its cause |
//! | `bird-stop NODE` | (`--overlay bgp`) the node's BIRD stopped (calico-node crashed): its peers withdraw its pod CIDR, it withdraws theirs | `node-isolated`, the missing routes named as its cause |
//! | `bgp-wrong-address NODE` | (`--overlay bgp`) the node's BGP address is its `cni0` address (Calico's IP autodetection picked the wrong interface): the node peers from it and the others dial it; no session comes up | `node-isolated`, the missing routes named as its cause |
//! | `cni-not-ready NODE` | the node `NotReady` with the kubelet's "cni plugin not initialized", its agent pod re-created and not started (`NetworkNotReady` Event) | `agent-missing`, saying the node's network plugin is not ready |
//!
//! The last three cut the node's pods off the node entirely, so its pod
//! agent cannot report either: the aggregator must still name the node's
//! pod network (from its host agent, the relayed report, or the API), not
//! a missing agent.
//!
//! The last three change what the API says (the Kubernetes API emulator's
//! objects and Events, in the kubelet's words) and stop the agent process,
//! as a pod that never starts leaves it.
//!
//! The packet filters are in [`rules`].

pub mod rules;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::net::netns::NetnsError;
use crate::net::network;
use crate::net::services;
use crate::net::topology::{NodePlan, Overlay, POD_MTU, Topology, UNDERLAY_MTU};

/// The kinds of fault. The doc comments are the CLI's help.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// NODE: delete its VXLAN FDB and neighbour entries to each peer (host-gw: its routes).
    OverlayDown,
    /// NODE: flush its flannel.1 FDB and neighbour tables (vxlan).
    FdbFlush,
    /// Drop VXLAN (UDP 8472) in INPUT and OUTPUT of every node (vxlan).
    VxlanDrop,
    /// NODE...: these nodes against the rest; pod traffic between the two groups dropped (the underlay and BGP pass).
    Partition,
    /// A B: drop flows started by A's pods towards B's pods; B to A untouched.
    OneWay,
    /// A B: drop pod traffic between A's and B's pods, both ways.
    Pair,
    /// A B: drop ICMP between A's and B's pods, both ways (TCP and UDP pass).
    IcmpDrop,
    /// A B: drop TCP between A's and B's pods, both ways (ICMP and UDP pass).
    TcpDrop,
    /// A B: point A's FDB entry for B's VTEP at an address no node has (vxlan).
    FdbStale,
    /// NODE: set NODE's VXLAN device flannel.1 down (vxlan).
    VtepDown,
    /// A B: delete A's route to B's pod subnet (vxlan, host-gw).
    RouteDel,
    /// A B: point A's route to B's pod subnet at an address no node has (host-gw).
    RouteStale,
    /// A B: a blackhole route on A to B's companion pod alone (its /32).
    PodBlackhole,
    /// NODE [PERCENT]: drop PERCENT % (default 30) of the overlay packets arriving at NODE.
    Loss,
    /// NODE [PERCENT]: drop PERCENT % (default 20) of everything arriving at NODE's eth0 (node network and overlay alike).
    UnderlayLoss,
    /// NODE: drop packets over 1200 bytes through NODE's overlay, both ways.
    Mtu,
    /// NODE [MTU]: lower NODE's flannel.1 MTU from 1450 to MTU (default 1200) (vxlan).
    MtuLower,
    /// NODE [MTU]: lower the MTU of NODE's link to the other nodes (eth0) from 1500 to MTU (default 1300).
    UnderlayMtu,
    /// NODE: delete the route to the service network (10.96.0.0/12) in NODE's pods.
    ServiceRoute,
    /// NODE: flush NODE's service DNAT rules (kube-proxy stand-in).
    Dnat,
    /// NODE: point NODE's rule for the companions' Service at a deleted pod's address.
    StaleService,
    /// NODE: drop NODE's pods' traffic to the API server's endpoint (after DNAT).
    ApiserverBlock,
    /// Stop the cluster DNS server.
    DnsStop,
    /// The cluster DNS server answers SERVFAIL.
    DnsServfail,
    /// NODE: DNS stops serving NODE's agent pod in the agents' headless Service.
    DnsHide,
    /// NODE: set NODE's underlay link down.
    UnderlayCut,
    /// NODE: kill NODE's agent process.
    KillAgent,
    /// NODE: turn IPv4 forwarding off in NODE (net.ipv4.ip_forward=0).
    ForwardingOff,
    /// NODE: set NODE's FORWARD chain policy to DROP (as a Docker install does).
    ForwardPolicyDrop,
    /// NODE: set NODE's pod bridge cni0 down.
    BridgeDown,
    /// NODE: re-create NODE's agent pod with a sandbox the CNI fails to set up.
    AgentSandboxFails,
    /// NODE: re-create NODE's agent pod with an image that cannot be pulled.
    AgentImagePull,
    /// NODE: NODE NotReady, "cni plugin not initialized"; its agent pod not started.
    CniNotReady,
    /// A B: drop BGP (TCP 179) between A's and B's BIRD; they withdraw each other's routes (bgp).
    BgpBlock,
    /// NODE: stop NODE's BIRD, as calico-node crashing (bgp).
    BirdStop,
    /// NODE: NODE's BGP address autodetected from the wrong interface (cni0): no session comes up (bgp).
    BgpWrongAddress,
}

/// How many nodes a fault is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// The whole cluster (or no node at all).
    None,
    One,
    /// An ordered pair (A, B).
    Two,
    /// One group of nodes, the rest being the other.
    Group,
}

/// The number a fault may take after its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueSpec {
    pub name: &'static str,
    pub default: u32,
    pub min: u32,
    pub max: u32,
}

impl FaultKind {
    /// Whether the fault acts on the pods the process mode plans (the
    /// agent and companion pods, their processes, their DNS names and
    /// fixed Service rules), which the container runtime mode does not
    /// have: there the cluster's workloads make their own pods.
    pub fn needs_planned_pods(self) -> bool {
        matches!(
            self,
            FaultKind::PodBlackhole
                | FaultKind::ServiceRoute
                | FaultKind::Dnat
                | FaultKind::StaleService
                | FaultKind::DnsHide
                | FaultKind::KillAgent
                | FaultKind::AgentSandboxFails
                | FaultKind::AgentImagePull
                | FaultKind::CniNotReady
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::OverlayDown => "overlay-down",
            FaultKind::FdbFlush => "fdb-flush",
            FaultKind::VxlanDrop => "vxlan-drop",
            FaultKind::Partition => "partition",
            FaultKind::OneWay => "one-way",
            FaultKind::Pair => "pair",
            FaultKind::IcmpDrop => "icmp-drop",
            FaultKind::TcpDrop => "tcp-drop",
            FaultKind::FdbStale => "fdb-stale",
            FaultKind::VtepDown => "vtep-down",
            FaultKind::RouteDel => "route-del",
            FaultKind::RouteStale => "route-stale",
            FaultKind::PodBlackhole => "pod-blackhole",
            FaultKind::Loss => "loss",
            FaultKind::UnderlayLoss => "underlay-loss",
            FaultKind::Mtu => "mtu",
            FaultKind::MtuLower => "mtu-lower",
            FaultKind::UnderlayMtu => "underlay-mtu",
            FaultKind::ServiceRoute => "service-route",
            FaultKind::Dnat => "dnat",
            FaultKind::StaleService => "stale-service",
            FaultKind::ApiserverBlock => "apiserver-block",
            FaultKind::DnsStop => "dns-stop",
            FaultKind::DnsServfail => "dns-servfail",
            FaultKind::DnsHide => "dns-hide",
            FaultKind::UnderlayCut => "underlay-cut",
            FaultKind::KillAgent => "kill-agent",
            FaultKind::ForwardingOff => "forwarding-off",
            FaultKind::ForwardPolicyDrop => "forward-policy-drop",
            FaultKind::BridgeDown => "bridge-down",
            FaultKind::AgentSandboxFails => "agent-sandbox-fails",
            FaultKind::AgentImagePull => "agent-image-pull",
            FaultKind::CniNotReady => "cni-not-ready",
            FaultKind::BgpBlock => "bgp-block",
            FaultKind::BirdStop => "bird-stop",
            FaultKind::BgpWrongAddress => "bgp-wrong-address",
        }
    }

    pub fn arity(self) -> Arity {
        match self {
            FaultKind::VxlanDrop | FaultKind::DnsStop | FaultKind::DnsServfail => Arity::None,
            FaultKind::OneWay
            | FaultKind::Pair
            | FaultKind::IcmpDrop
            | FaultKind::TcpDrop
            | FaultKind::FdbStale
            | FaultKind::RouteDel
            | FaultKind::RouteStale
            | FaultKind::PodBlackhole
            | FaultKind::BgpBlock => Arity::Two,
            FaultKind::Partition => Arity::Group,
            _ => Arity::One,
        }
    }

    /// The optional number after the nodes.
    pub fn value(self) -> Option<ValueSpec> {
        match self {
            FaultKind::Loss => Some(ValueSpec {
                name: "PERCENT",
                default: 30,
                min: 1,
                max: 100,
            }),
            FaultKind::UnderlayLoss => Some(ValueSpec {
                name: "PERCENT",
                default: 20,
                min: 1,
                max: 100,
            }),
            FaultKind::MtuLower => Some(ValueSpec {
                name: "MTU",
                default: 1200,
                // IPv4's minimum; at most one below the pods' MTU ("lower").
                min: 576,
                max: POD_MTU - 1,
            }),
            FaultKind::UnderlayMtu => Some(ValueSpec {
                name: "MTU",
                default: 1300,
                // Below IPv6's minimum the kernel takes IPv6 off the link.
                min: 1280,
                max: UNDERLAY_MTU - 1,
            }),
            _ => None,
        }
    }

    /// Why the fault cannot exist with `overlay`, or `None` where it can.
    /// Faults on routes and filters between pod subnets apply to every
    /// overlay; those on a mode's own machinery only to that mode.
    pub fn not_with(self, overlay: Overlay) -> Option<&'static str> {
        use FaultKind::*;
        match (self, overlay) {
            (
                FdbFlush | FdbStale | VtepDown | VxlanDrop | MtuLower,
                Overlay::HostGw | Overlay::Bgp,
            ) => Some(
                "it breaks flannel's VXLAN device: start the lab with --overlay vxlan (the default)",
            ),
            (BgpBlock | BirdStop | BgpWrongAddress, Overlay::Vxlan | Overlay::HostGw) => {
                Some("it breaks BGP: start the lab with --overlay bgp")
            }
            (RouteStale, Overlay::Vxlan) => {
                Some("with VXLAN the routes go through flannel.1; its stale entry is fdb-stale")
            }
            (RouteStale, Overlay::Bgp) => Some(
                "the routes are BIRD's: a stale one would sit beside BIRD's own, where heal does not look; break BGP instead (bgp-block, bgp-wrong-address)",
            ),
            (OverlayDown | RouteDel, Overlay::Bgp) => Some(
                "BIRD puts deleted routes back at its next scan; break BGP instead (bgp-block, bird-stop)",
            ),
            _ => None,
        }
    }

    /// Whether the fault exists with `overlay`.
    pub fn applies_to(self, overlay: Overlay) -> bool {
        self.not_with(overlay).is_none()
    }

    /// The command-line arguments after the kind, e.g. `NODE [PERCENT]`.
    pub fn usage(self) -> String {
        let nodes = match self.arity() {
            Arity::None => "",
            Arity::One => "NODE",
            Arity::Two => "A B",
            Arity::Group => "NODE...",
        };
        match self.value() {
            Some(v) => format!("{nodes} [{}]", v.name),
            None => nodes.to_owned(),
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fault: its kind, the nodes it is about (none, one, an ordered pair,
/// or one group) and, for the kinds that take one, a number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// `loss`, `underlay-loss`: percent; `mtu-lower`, `underlay-mtu`: the
    /// MTU. `None`: the kind's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
}

impl Fault {
    /// A validated fault: the right number of distinct nodes for its kind, a
    /// value only where it takes one and within range (the default filled
    /// in). Whether the nodes exist is checked against the lab when applied.
    pub fn new(
        kind: FaultKind,
        nodes: Vec<String>,
        value: Option<u32>,
    ) -> Result<Self, FaultError> {
        let arity_ok = match kind.arity() {
            Arity::None => nodes.is_empty(),
            Arity::One => nodes.len() == 1,
            Arity::Two => nodes.len() == 2,
            Arity::Group => !nodes.is_empty(),
        };
        if !arity_ok {
            return Err(FaultError::Usage {
                kind,
                usage: kind.usage(),
                got: format!("{} node(s)", nodes.len()),
            });
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = nodes.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(FaultError::DuplicateNode {
                kind,
                node: dup.clone(),
            });
        }
        let value = match (kind.value(), value) {
            (None, None) => None,
            (None, Some(v)) => {
                return Err(FaultError::Usage {
                    kind,
                    usage: kind.usage(),
                    got: format!("the number {v}"),
                });
            }
            (Some(spec), v) => {
                let v = v.unwrap_or(spec.default);
                if !(spec.min..=spec.max).contains(&v) {
                    return Err(FaultError::Value {
                        kind,
                        name: spec.name,
                        value: v,
                        min: spec.min,
                        max: spec.max,
                    });
                }
                Some(v)
            }
        };
        Ok(Fault { kind, nodes, value })
    }

    /// From the command line: node names, then an optional number.
    pub fn parse(kind: FaultKind, args: &[String]) -> Result<Self, FaultError> {
        let (value, nodes) = match args.split_last() {
            Some((last, rest)) if last.parse::<u32>().is_ok() => (last.parse().ok(), rest),
            _ => (None, args),
        };
        if let Some(n) = nodes.iter().find(|n| n.parse::<u32>().is_ok()) {
            return Err(FaultError::Usage {
                kind,
                usage: kind.usage(),
                got: format!("the number {n} before a node"),
            });
        }
        Fault::new(kind, nodes.to_vec(), value)
    }

    /// The first node (the only one of one-node faults).
    pub fn node(&self) -> Option<&str> {
        self.nodes.first().map(String::as_str)
    }

    /// The value, or the kind's default (0 when the kind takes none).
    pub fn value_or_default(&self) -> u32 {
        self.value
            .or(self.kind.value().map(|v| v.default))
            .unwrap_or(0)
    }

    fn on(kind: FaultKind, nodes: &[&str], value: Option<u32>) -> Self {
        Fault {
            kind,
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            value,
        }
    }

    pub fn overlay_down(node: &str) -> Self {
        Self::on(FaultKind::OverlayDown, &[node], None)
    }

    pub fn fdb_flush(node: &str) -> Self {
        Self::on(FaultKind::FdbFlush, &[node], None)
    }

    pub fn vxlan_drop() -> Self {
        Self::on(FaultKind::VxlanDrop, &[], None)
    }

    /// `nodes` against the rest of the cluster.
    pub fn partition(nodes: &[&str]) -> Self {
        Self::on(FaultKind::Partition, nodes, None)
    }

    /// `from`'s pods can no longer start flows towards `to`'s pods.
    pub fn one_way(from: &str, to: &str) -> Self {
        Self::on(FaultKind::OneWay, &[from, to], None)
    }

    pub fn pair(a: &str, b: &str) -> Self {
        Self::on(FaultKind::Pair, &[a, b], None)
    }

    pub fn icmp_drop(a: &str, b: &str) -> Self {
        Self::on(FaultKind::IcmpDrop, &[a, b], None)
    }

    pub fn tcp_drop(a: &str, b: &str) -> Self {
        Self::on(FaultKind::TcpDrop, &[a, b], None)
    }

    pub fn stale_service(node: &str) -> Self {
        Self::on(FaultKind::StaleService, &[node], None)
    }

    pub fn loss(node: &str, percent: u32) -> Self {
        Self::on(FaultKind::Loss, &[node], Some(percent))
    }

    pub fn underlay_loss(node: &str, percent: u32) -> Self {
        Self::on(FaultKind::UnderlayLoss, &[node], Some(percent))
    }

    pub fn fdb_stale(from: &str, to: &str) -> Self {
        Self::on(FaultKind::FdbStale, &[from, to], None)
    }

    pub fn vtep_down(node: &str) -> Self {
        Self::on(FaultKind::VtepDown, &[node], None)
    }

    pub fn route_del(from: &str, to: &str) -> Self {
        Self::on(FaultKind::RouteDel, &[from, to], None)
    }

    pub fn route_stale(from: &str, to: &str) -> Self {
        Self::on(FaultKind::RouteStale, &[from, to], None)
    }

    pub fn pod_blackhole(from: &str, to: &str) -> Self {
        Self::on(FaultKind::PodBlackhole, &[from, to], None)
    }

    pub fn mtu(node: &str) -> Self {
        Self::on(FaultKind::Mtu, &[node], None)
    }

    pub fn mtu_lower(node: &str, mtu: u32) -> Self {
        Self::on(FaultKind::MtuLower, &[node], Some(mtu))
    }

    pub fn underlay_mtu(node: &str, mtu: u32) -> Self {
        Self::on(FaultKind::UnderlayMtu, &[node], Some(mtu))
    }

    pub fn service_route(node: &str) -> Self {
        Self::on(FaultKind::ServiceRoute, &[node], None)
    }

    pub fn dnat(node: &str) -> Self {
        Self::on(FaultKind::Dnat, &[node], None)
    }

    pub fn apiserver_block(node: &str) -> Self {
        Self::on(FaultKind::ApiserverBlock, &[node], None)
    }

    pub fn dns_stop() -> Self {
        Self::on(FaultKind::DnsStop, &[], None)
    }

    pub fn dns_servfail() -> Self {
        Self::on(FaultKind::DnsServfail, &[], None)
    }

    pub fn dns_hide(node: &str) -> Self {
        Self::on(FaultKind::DnsHide, &[node], None)
    }

    pub fn underlay_cut(node: &str) -> Self {
        Self::on(FaultKind::UnderlayCut, &[node], None)
    }

    pub fn forwarding_off(node: &str) -> Self {
        Self::on(FaultKind::ForwardingOff, &[node], None)
    }

    pub fn forward_policy_drop(node: &str) -> Self {
        Self::on(FaultKind::ForwardPolicyDrop, &[node], None)
    }

    pub fn bridge_down(node: &str) -> Self {
        Self::on(FaultKind::BridgeDown, &[node], None)
    }

    pub fn agent_sandbox_fails(node: &str) -> Self {
        Self::on(FaultKind::AgentSandboxFails, &[node], None)
    }

    pub fn agent_image_pull(node: &str) -> Self {
        Self::on(FaultKind::AgentImagePull, &[node], None)
    }

    pub fn cni_not_ready(node: &str) -> Self {
        Self::on(FaultKind::CniNotReady, &[node], None)
    }

    pub fn kill_agent(node: &str) -> Self {
        Self::on(FaultKind::KillAgent, &[node], None)
    }

    pub fn bgp_block(a: &str, b: &str) -> Self {
        Self::on(FaultKind::BgpBlock, &[a, b], None)
    }

    pub fn bird_stop(node: &str) -> Self {
        Self::on(FaultKind::BirdStop, &[node], None)
    }

    pub fn bgp_wrong_address(node: &str) -> Self {
        Self::on(FaultKind::BgpWrongAddress, &[node], None)
    }
}

impl std::fmt::Display for Fault {
    /// `loss node-2 30%`, `one-way node-2 node-3`, `dns-stop`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind.as_str())?;
        for n in &self.nodes {
            write!(f, " {n}")?;
        }
        match (self.kind, self.value) {
            (FaultKind::Loss | FaultKind::UnderlayLoss, Some(v)) => write!(f, " {v}%"),
            (_, Some(v)) => write!(f, " {v}"),
            (_, None) => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("fault {kind} takes {usage:?} (e.g. `fault {kind} {example}`), got {got}", example = example(*kind))]
    Usage {
        kind: FaultKind,
        usage: String,
        got: String,
    },
    #[error("fault {kind}: {node} is named twice")]
    DuplicateNode { kind: FaultKind, node: String },
    #[error("fault {kind}: {name} {value} is not within {min}..={max}")]
    Value {
        kind: FaultKind,
        name: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
    #[error("no node {node} in this lab (it has {known})")]
    UnknownNode { node: String, known: String },
    #[error(
        "fault partition: name some of the nodes, not all of them ({0}): the rest form the other group"
    )]
    WholeCluster(String),
    #[error("fault {kind} does not exist with --overlay {overlay}: {why}")]
    WrongOverlay {
        kind: FaultKind,
        overlay: Overlay,
        why: &'static str,
    },
    #[error("fault {0} is already applied; run `heal` first")]
    AlreadyApplied(Fault),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Lab(String),
}

/// An example of the arguments of `kind`, for error messages.
fn example(kind: FaultKind) -> &'static str {
    match kind.arity() {
        Arity::None => "",
        Arity::One => "node-2",
        Arity::Two => "node-2 node-3",
        Arity::Group => "node-1 node-2",
    }
}

/// What a fault needs from the running lab besides the kernel's tools.
pub trait Hooks {
    fn stop_dns(&self) -> Result<(), FaultError>;
    fn start_dns(&self) -> Result<(), FaultError>;
    fn dns_servfail(&self, on: bool);
    /// Hides (or shows again) a name and what stems from it in DNS.
    fn dns_hide(&self, name: &str, hidden: bool);
    fn stop_agent(&self, node: &NodePlan) -> Result<(), FaultError>;
    fn start_agent(&self, node: &NodePlan) -> Result<(), FaultError>;
    /// Stops the node's agent and puts its pod (and node) in the state
    /// `fault` describes, in the API; `None` brings them back to Running
    /// and starts the agent.
    fn agent_pod_trouble(
        &self,
        node: &NodePlan,
        fault: Option<FaultKind>,
    ) -> Result<(), FaultError>;
    /// Stops (or starts again) the node's BIRD, as calico-node crashing.
    fn bird(&self, node: &NodePlan, running: bool) -> Result<(), FaultError>;
    /// Gives the node a wrong BGP address (its `cni0` address, as Calico's
    /// autodetection picking the wrong interface), or its own back; every
    /// node's BIRD is reconfigured.
    fn bgp_wrong_address(&self, node: &NodePlan, wrong: bool) -> Result<(), FaultError>;
}

/// The nodes a fault is about, checked against the plan, in the fault's
/// order; also refuses faults this lab cannot have (a partition of every
/// node, vxlan faults on host-gw).
pub fn targets<'a>(t: &'a Topology, fault: &Fault) -> Result<Vec<&'a NodePlan>, FaultError> {
    let nodes = fault
        .nodes
        .iter()
        .map(|name| {
            t.node(name).ok_or_else(|| FaultError::UnknownNode {
                node: name.clone(),
                known: t
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if fault.kind == FaultKind::Partition && nodes.len() >= t.nodes.len() {
        return Err(FaultError::WholeCluster(fault.nodes.join(" ")));
    }
    if let Some(why) = fault.kind.not_with(t.overlay) {
        return Err(FaultError::WrongOverlay {
            kind: fault.kind,
            overlay: t.overlay,
            why,
        });
    }
    Ok(nodes)
}

fn peers<'a>(t: &'a Topology, n: &'a NodePlan) -> impl Iterator<Item = &'a NodePlan> {
    t.nodes.iter().filter(move |p| p.index != n.index)
}

fn reconnect(t: &Topology, n: &NodePlan) -> Result<(), NetnsError> {
    peers(t, n).try_for_each(|peer| network::connect_peer(t.overlay, n, peer))
}

/// Breaks what `fault` says. On failure, what was already done is undone
/// where that is possible (the fault is then not applied at all).
pub fn apply(t: &Topology, fault: &Fault, hooks: &dyn Hooks) -> Result<(), FaultError> {
    let nodes = targets(t, fault)?;
    let rules = rules::for_fault(t, fault, &nodes);
    if !rules.is_empty() {
        return Ok(rules::install(&rules)?);
    }
    let Some(n) = nodes.first().copied() else {
        return match fault.kind {
            FaultKind::DnsStop => hooks.stop_dns(),
            FaultKind::DnsServfail => {
                hooks.dns_servfail(true);
                Ok(())
            }
            kind => Err(FaultError::Lab(format!("fault {kind} has nothing to do"))),
        };
    };
    match fault.kind {
        FaultKind::FdbStale => {
            if let [a, b] = nodes[..] {
                network::misdirect_peer(a, b)?;
            }
        }
        FaultKind::RouteDel => {
            if let [a, b] = nodes[..] {
                network::delete_peer_route(a, b)?;
            }
        }
        FaultKind::RouteStale => {
            if let [a, b] = nodes[..] {
                network::misroute_peer(a, b)?;
            }
        }
        FaultKind::PodBlackhole => {
            if let [a, b] = nodes[..] {
                network::blackhole_pod(a, &b.companion, true)?;
            }
        }
        FaultKind::VtepDown => network::set_vtep_link(n, false)?,
        FaultKind::OverlayDown => {
            let done =
                peers(t, n).try_for_each(|peer| network::disconnect_peer(t.overlay, n, peer));
            if let Err(e) = done {
                let _ = reconnect(t, n);
                return Err(e.into());
            }
        }
        FaultKind::FdbFlush => {
            if let Err(e) = network::flush_vtep(n) {
                let _ = reconnect(t, n);
                return Err(e.into());
            }
        }
        FaultKind::MtuLower => network::set_vtep_mtu(n, fault.value_or_default())?,
        FaultKind::UnderlayMtu => network::set_underlay_mtu(n, fault.value_or_default())?,
        FaultKind::ServiceRoute => {
            for pod in t.pods_of(n) {
                network::delete_service_route(pod)?;
            }
        }
        FaultKind::Dnat => services::flush(n)?,
        FaultKind::StaleService => services::stale(t, n)?,
        FaultKind::DnsHide => hooks.dns_hide(&n.agent_dns_name(), true),
        FaultKind::UnderlayCut => network::set_underlay_link(t, n, false)?,
        FaultKind::KillAgent => hooks.stop_agent(n)?,
        FaultKind::ForwardingOff => network::set_forwarding(n, false)?,
        FaultKind::ForwardPolicyDrop => network::set_forward_policy(n, false)?,
        FaultKind::BridgeDown => network::set_pod_bridge(n, false)?,
        kind @ (FaultKind::AgentSandboxFails
        | FaultKind::AgentImagePull
        | FaultKind::CniNotReady) => hooks.agent_pod_trouble(n, Some(kind))?,
        FaultKind::BirdStop => hooks.bird(n, false)?,
        FaultKind::BgpWrongAddress => hooks.bgp_wrong_address(n, true)?,
        kind => return Err(FaultError::Lab(format!("fault {kind} has nothing to do"))),
    }
    Ok(())
}

/// Undoes [`apply`] of the same fault.
pub fn heal(t: &Topology, fault: &Fault, hooks: &dyn Hooks) -> Result<(), FaultError> {
    let nodes = targets(t, fault)?;
    let rules = rules::for_fault(t, fault, &nodes);
    if !rules.is_empty() {
        return Ok(rules::remove(&rules)?);
    }
    let Some(n) = nodes.first().copied() else {
        return match fault.kind {
            FaultKind::DnsStop => hooks.start_dns(),
            FaultKind::DnsServfail => {
                hooks.dns_servfail(false);
                Ok(())
            }
            kind => Err(FaultError::Lab(format!("fault {kind} has nothing to undo"))),
        };
    };
    match fault.kind {
        FaultKind::FdbStale | FaultKind::RouteDel | FaultKind::RouteStale => {
            if let [a, b] = nodes[..] {
                network::connect_peer(t.overlay, a, b)?;
            }
        }
        FaultKind::PodBlackhole => {
            if let [a, b] = nodes[..] {
                network::blackhole_pod(a, &b.companion, false)?;
            }
        }
        FaultKind::VtepDown => {
            network::set_vtep_link(n, true)?;
            reconnect(t, n)?;
        }
        FaultKind::OverlayDown | FaultKind::FdbFlush => reconnect(t, n)?,
        FaultKind::MtuLower | FaultKind::UnderlayMtu => {
            if fault.kind == FaultKind::MtuLower {
                network::set_vtep_mtu(n, POD_MTU)?;
            } else {
                network::set_underlay_mtu(n, UNDERLAY_MTU)?;
            }
            // The pods learnt the lower path MTU from "fragmentation needed"
            // errors; forget it, or their large echoes keep failing locally.
            network::flush_route_cache(&n.netns)?;
            for pod in t.pods_of(n) {
                network::flush_route_cache(&pod.netns)?;
            }
        }
        FaultKind::ServiceRoute => {
            for pod in t.pods_of(n) {
                network::add_service_route(n, pod)?;
            }
        }
        FaultKind::Dnat | FaultKind::StaleService => services::restore(t, n)?,
        FaultKind::DnsHide => hooks.dns_hide(&n.agent_dns_name(), false),
        FaultKind::UnderlayCut => network::set_underlay_link(t, n, true)?,
        FaultKind::KillAgent => hooks.start_agent(n)?,
        FaultKind::ForwardingOff => network::set_forwarding(n, true)?,
        FaultKind::ForwardPolicyDrop => network::set_forward_policy(n, true)?,
        FaultKind::BridgeDown => network::set_pod_bridge(n, true)?,
        FaultKind::AgentSandboxFails | FaultKind::AgentImagePull | FaultKind::CniNotReady => {
            hooks.agent_pod_trouble(n, None)?
        }
        FaultKind::BirdStop => hooks.bird(n, true)?,
        FaultKind::BgpWrongAddress => hooks.bgp_wrong_address(n, false)?,
        kind => return Err(FaultError::Lab(format!("fault {kind} has nothing to undo"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn arity_is_checked() {
        assert!(Fault::new(FaultKind::OverlayDown, vec![], None).is_err());
        assert!(Fault::new(FaultKind::DnsStop, args("node-1"), None).is_err());
        assert!(Fault::new(FaultKind::OneWay, args("node-1"), None).is_err());
        assert!(Fault::new(FaultKind::Pair, args("node-1 node-1"), None).is_err());
        assert!(Fault::new(FaultKind::Partition, vec![], None).is_err());
        let f = Fault::new(FaultKind::ServiceRoute, args("node-3"), None).unwrap();
        assert_eq!(f.to_string(), "service-route node-3");
        assert_eq!(f.node(), Some("node-3"));
        assert_eq!(Fault::dns_stop().to_string(), "dns-stop");
    }

    #[test]
    fn json_carries_nodes_and_value() {
        let f = Fault::service_route("node-3");
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, r#"{"kind":"service-route","nodes":["node-3"]}"#);
        let f = Fault::loss("node-2", 30);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, r#"{"kind":"loss","nodes":["node-2"],"value":30}"#);
        assert_eq!(serde_json::from_str::<Fault>(&json).unwrap(), f);
        let none: Fault = serde_json::from_str(r#"{"kind":"vxlan-drop"}"#).unwrap();
        assert_eq!(none, Fault::vxlan_drop());
    }

    #[test]
    fn command_line_arguments_are_nodes_then_a_number() {
        let f = Fault::parse(FaultKind::Loss, &args("node-2")).unwrap();
        assert_eq!(f, Fault::loss("node-2", 30), "the default is filled in");
        assert_eq!(f.to_string(), "loss node-2 30%");
        let f = Fault::parse(FaultKind::Loss, &args("node-2 10")).unwrap();
        assert_eq!(f.value, Some(10));
        assert!(Fault::parse(FaultKind::Loss, &args("node-2 0")).is_err());
        assert!(Fault::parse(FaultKind::Loss, &args("node-2 101")).is_err());
        assert!(Fault::parse(FaultKind::Loss, &args("30 node-2")).is_err());
        assert!(Fault::parse(FaultKind::Pair, &args("node-2 node-3 5")).is_err());
        let f = Fault::parse(FaultKind::MtuLower, &args("node-2")).unwrap();
        assert_eq!(f.to_string(), "mtu-lower node-2 1200");
        assert!(Fault::parse(FaultKind::MtuLower, &args("node-2 1450")).is_err());
        let f = Fault::parse(FaultKind::Partition, &args("node-1 node-2")).unwrap();
        assert_eq!(f, Fault::partition(&["node-1", "node-2"]));
        let f = Fault::parse(FaultKind::OneWay, &args("node-2 node-3")).unwrap();
        assert_eq!(f.to_string(), "one-way node-2 node-3");
        let err = Fault::parse(FaultKind::OneWay, &args("node-2")).unwrap_err();
        assert!(err.to_string().contains("\"A B\""), "{err}");
        assert!(Fault::parse(FaultKind::VxlanDrop, &[]).is_ok());
    }

    #[test]
    fn targets_are_checked_against_the_lab() {
        let t = Topology::plan("nmabcd", 3, Overlay::Vxlan).unwrap();
        let nodes = targets(&t, &Fault::one_way("node-3", "node-1")).unwrap();
        assert_eq!(nodes[0].name, "node-3");
        assert_eq!(nodes[1].name, "node-1");
        assert!(matches!(
            targets(&t, &Fault::overlay_down("node-9")),
            Err(FaultError::UnknownNode { .. })
        ));
        assert!(matches!(
            targets(&t, &Fault::partition(&["node-1", "node-2", "node-3"])),
            Err(FaultError::WholeCluster(_))
        ));
        let hostgw = Topology::plan("nmabcd", 3, Overlay::HostGw).unwrap();
        assert!(matches!(
            targets(&hostgw, &Fault::vxlan_drop()),
            Err(FaultError::WrongOverlay {
                kind: FaultKind::VxlanDrop,
                ..
            })
        ));
        assert!(targets(&hostgw, &Fault::loss("node-2", 30)).is_ok());
        assert!(targets(&hostgw, &Fault::partition(&["node-1"])).is_ok());
        let bgp = Topology::plan("nmabcd", 3, Overlay::Bgp).unwrap();
        let err = targets(&bgp, &Fault::route_del("node-1", "node-2")).unwrap_err();
        assert!(
            err.to_string().contains("BIRD puts deleted routes back"),
            "{err}"
        );
        assert!(targets(&bgp, &Fault::bird_stop("node-1")).is_ok());
        assert!(targets(&hostgw, &Fault::bird_stop("node-1")).is_err());
    }

    #[test]
    fn every_kind_has_a_name_a_usage_and_help() {
        use clap::ValueEnum;
        for kind in FaultKind::value_variants() {
            let pv = kind.to_possible_value().unwrap();
            assert_eq!(pv.get_name(), kind.as_str());
            let help = pv.get_help().map(|h| h.to_string()).unwrap_or_default();
            let usage = kind.usage();
            assert!(
                usage.is_empty() || help.starts_with(&format!("{usage}:")),
                "{kind}: help {help:?} should start with {usage:?}"
            );
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
    }
}
