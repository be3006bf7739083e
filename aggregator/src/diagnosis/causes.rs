//! Why a network finding holds: each concerned node's own network facts
//! (read by its host agent, [`NodeFacts`]) checked against what the API
//! says the cluster is ([`NodeTruth`]: each node's pod CIDRs and address).
//!
//! What is checked, where it applies:
//! - the node forwards (`net.ipv4.ip_forward`);
//! - its overlay devices are up, and exist where the other nodes have one;
//! - its bridges are up;
//! - it has a route to each peer's pod CIDRs (a default route does not
//!   count: pod traffic must not leave through the node's gateway);
//! - through a VXLAN device: a neighbour entry for the route's gateway
//!   with the peer's VTEP MAC, and an FDB entry for that MAC pointing at
//!   the peer's address; on host-gw, the route's gateway is the peer's
//!   address;
//! - for `mtu-mismatch`, the overlay device's MTU against the other nodes'.
//!
//! Only what the facts show is said. A finding with no such line has an
//! unknown cause, and says so; nothing is guessed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use netmatrix_api::facts::{LinkFact, NodeFacts, RouteFact};
use netmatrix_api::{FindingKind, Path};

use super::Condition;

/// What the API says a node is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTruth {
    /// `spec.podCIDRs`, as (network, prefix).
    pub pod_cidrs: Vec<(IpAddr, u8)>,
    /// `status.addresses` InternalIP.
    pub internal_ip: Option<IpAddr>,
    /// flannel's `public-ip` annotation: the VTEP address peers must use
    /// (the InternalIP when absent).
    pub public_ip: Option<IpAddr>,
    /// flannel's `backend-data` annotation's `VtepMAC`.
    pub vtep_mac: Option<String>,
}

impl NodeTruth {
    /// Where peers' tunnels must point for this node.
    fn tunnel_ip(&self) -> Option<IpAddr> {
        self.public_ip.or(self.internal_ip)
    }
}

/// Facts and truth of the whole cluster.
pub struct Knowledge<'a> {
    pub facts: &'a BTreeMap<String, Arc<NodeFacts>>,
    pub truth: &'a BTreeMap<String, NodeTruth>,
    /// Every node's pod CIDRs, sorted: whether a node routes by them is
    /// asked for each node and pair, over tables of one entry per node.
    pod_cidrs: Vec<(bool, u128, u8)>,
}

impl<'a> Knowledge<'a> {
    pub fn new(
        facts: &'a BTreeMap<String, Arc<NodeFacts>>,
        truth: &'a BTreeMap<String, NodeTruth>,
    ) -> Self {
        let mut pod_cidrs: Vec<(bool, u128, u8)> = truth
            .values()
            .flat_map(|t| &t.pod_cidrs)
            .map(|&(net, prefix)| {
                let (v6, bits) = as_bits(net);
                (v6, bits, prefix)
            })
            .collect();
        pod_cidrs.sort_unstable();
        Knowledge {
            facts,
            truth,
            pod_cidrs,
        }
    }

    /// Whether `ip` is inside a node's pod CIDR.
    fn in_a_pod_cidr(&self, ip: IpAddr) -> bool {
        self.truth
            .values()
            .flat_map(|t| &t.pod_cidrs)
            .any(|&(net, prefix)| netmatrix_api::facts::same_prefix(net, ip, prefix))
    }

    /// Whether `route` covers some node's pod CIDR: one whose address lies
    /// in the route's range, with a prefix at least as long.
    fn covers_a_pod_cidr(&self, route: &RouteFact) -> bool {
        let (v6, bits) = as_bits(route.dst);
        let width: u32 = if v6 { 128 } else { 32 };
        let host_bits = width - u32::from(route.prefix).min(width);
        let span = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let start = bits & !span;
        let end = start | span;
        let first = self.pod_cidrs.partition_point(|c| (c.0, c.1) < (v6, start));
        self.pod_cidrs[first..]
            .iter()
            .take_while(|c| c.0 == v6 && c.1 <= end)
            .any(|c| c.2 >= route.prefix)
    }
}

/// An address as (is IPv6, its bits in the low end of a u128).
fn as_bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

/// At most this many node pairs are checked per finding: a cluster-wide
/// finding on thousands of nodes is explained by its first pairs as well.
const MAX_PAIRS: usize = 64;
/// Cause lines per finding.
const MAX_LINES: usize = 10;

/// Other nodes whose overlay MTU a node's is compared with.
const MAX_MTU_PEERS: usize = 32;

/// Fills `cause` of the network conditions.
pub fn explain(conditions: &mut [Condition], k: &Knowledge) {
    for c in conditions.iter_mut() {
        c.cause = causes(c, k);
        // Without a cause, say whether facts were missing: "unknown" must
        // not read as "checked, nothing wrong" while they are on their way.
        c.facts_missing = if c.cause.is_empty() {
            nodes_read(c, k.truth)
                .into_iter()
                .filter(|n| !k.facts.contains_key(*n))
                .take(MAX_LINES)
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
    }
}

/// Whether facts can tell the cause of this kind of finding.
fn explained_kind(kind: FindingKind) -> bool {
    matches!(
        kind,
        FindingKind::NodeIsolated
            | FindingKind::PairBroken
            | FindingKind::AsymmetricPath
            | FindingKind::CrossNodeBroken
            | FindingKind::Partition
            | FindingKind::MtuMismatch
            | FindingKind::PodUnreachable
    )
}

/// The nodes whose facts explaining `conditions` reads: the aggregator asks
/// their host agents for them when they changed.
pub fn facts_read<'a>(
    conditions: &'a [Condition],
    truth: &'a BTreeMap<String, NodeTruth>,
) -> BTreeSet<&'a str> {
    conditions
        .iter()
        .flat_map(|c| nodes_read(c, truth))
        .collect()
}

/// The nodes whose facts explaining one condition reads.
fn nodes_read<'a>(c: &'a Condition, truth: &'a BTreeMap<String, NodeTruth>) -> BTreeSet<&'a str> {
    let mut nodes = BTreeSet::new();
    if !explained_kind(c.kind) {
        return nodes;
    }
    nodes.extend(c.nodes.iter().map(String::as_str));
    for (a, b) in pairs(c, truth) {
        nodes.insert(a);
        nodes.insert(b);
    }
    if c.kind == FindingKind::MtuMismatch {
        for node in &c.nodes {
            nodes.extend(mtu_peers(node, truth));
        }
    }
    nodes
}

/// The node pairs whose way to each other's pods is checked, at most
/// [`MAX_PAIRS`], the same every round.
fn pairs<'a>(c: &'a Condition, truth: &'a BTreeMap<String, NodeTruth>) -> Vec<(&'a str, &'a str)> {
    // Lazily: a cluster-wide finding on thousands of nodes has millions of
    // pairs, of which only the first are checked.
    match c.kind {
        FindingKind::NodeIsolated => c
            .nodes
            .iter()
            .flat_map(|n| {
                truth
                    .keys()
                    .filter(move |m| *m != n)
                    .flat_map(move |m| [(n.as_str(), m.as_str()), (m.as_str(), n.as_str())])
            })
            .take(MAX_PAIRS)
            .collect(),
        FindingKind::PairBroken | FindingKind::AsymmetricPath if !c.paths.is_empty() => {
            paths_both_ways(&c.paths)
                .into_iter()
                .take(MAX_PAIRS)
                .collect()
        }
        FindingKind::PairBroken
        | FindingKind::AsymmetricPath
        | FindingKind::CrossNodeBroken
        | FindingKind::Partition => c
            .nodes
            .iter()
            .flat_map(|a| {
                c.nodes
                    .iter()
                    .filter(move |b| a != *b)
                    .map(move |b| (a.as_str(), b.as_str()))
            })
            .take(MAX_PAIRS)
            .collect(),
        _ => Vec::new(),
    }
}

/// The other nodes a node's overlay MTU is compared with.
fn mtu_peers<'a>(
    node: &str,
    truth: &'a BTreeMap<String, NodeTruth>,
) -> impl Iterator<Item = &'a str> {
    truth
        .keys()
        .map(String::as_str)
        .filter(move |m| *m != node)
        .take(MAX_MTU_PEERS)
}

fn causes(c: &Condition, k: &Knowledge) -> Vec<String> {
    if !explained_kind(c.kind) {
        return Vec::new();
    }
    let mut lines = Vec::new();
    for node in &c.nodes {
        if let Some(f) = k.facts.get(node) {
            node_lines(node, f, k, &mut lines);
        }
    }
    if c.kind == FindingKind::MtuMismatch {
        for node in &c.nodes {
            mtu_lines(node, k, &mut lines);
        }
    }
    for (from, to) in pairs(c, k.truth) {
        pair_lines(from, to, k, &mut lines);
    }
    if let super::Subject::Pod(_, ip) = &c.subject {
        for node in &c.nodes {
            if let Some(f) = k.facts.get(node) {
                pod_route_lines(node, *ip, f, &mut lines);
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    lines.retain(|l| seen.insert(l.clone()));
    lines.truncate(MAX_LINES);
    lines
}

fn paths_both_ways(paths: &[Path]) -> Vec<(&str, &str)> {
    paths
        .iter()
        .flat_map(|p| {
            [
                (p.from.as_str(), p.to.as_str()),
                (p.to.as_str(), p.from.as_str()),
            ]
        })
        .collect()
}

fn is_overlay(link: &LinkFact) -> bool {
    matches!(
        link.kind.as_str(),
        "vxlan" | "ipip" | "geneve" | "wireguard" | "gre" | "sit"
    )
}

/// What is wrong on the node itself.
fn node_lines(node: &str, f: &NodeFacts, k: &Knowledge, lines: &mut Vec<String>) {
    if f.ip_forward == Some(false) {
        lines.push(format!(
            "{node}: net.ipv4.ip_forward = 0, so it does not route its pods' packets"
        ));
    }
    for link in f.links.iter().filter(|l| !l.up) {
        if is_overlay(link) {
            lines.push(format!("{node}: {} ({}) is down", link.name, link.kind));
        } else if link.kind == "bridge" {
            lines.push(format!("{node}: bridge {} is down", link.name));
        }
    }
    // An overlay device the other nodes have and this one lacks (one
    // example of a node that has it).
    let mut elsewhere: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for (other, of) in k.facts.iter().filter(|(n, _)| n.as_str() != node) {
        for link in of.links.iter().filter(|l| is_overlay(l)) {
            elsewhere
                .entry(link.name.as_str())
                .or_insert((other.as_str(), link.kind.as_str()));
        }
    }
    for (name, (other, kind)) in elsewhere {
        if f.link(name).is_none() {
            lines.push(format!(
                "{node} has no {name} device; {other} has one ({kind})"
            ));
        }
    }
    if let Some(truth) = k.truth.get(node)
        && routes_by_pod_cidr(f, k)
    {
        for &(net, prefix) in &truth.pod_cidrs {
            if specific_route(f, net, prefix).is_none() {
                lines.push(format!(
                    "{node} has no route to its own pod CIDR {net}/{prefix} (its pods' bridge gone or down?)"
                ));
            }
        }
    }
}

/// A route on `node` that drops what is sent to `ip`: the kernel's choice
/// for it rejects (a blackhole, unreachable or prohibit route, often a
/// per-pod /32 left behind).
fn pod_route_lines(node: &str, ip: IpAddr, f: &NodeFacts, lines: &mut Vec<String>) {
    if let Some(route) = RouteFact::lookup(&f.routes, ip)
        && let Some(reject) = route.reject
    {
        lines.push(format!(
            "{node} has a {} route to {}/{}: it drops what is sent to {ip}",
            reject.as_str(),
            route.dst,
            route.prefix
        ));
    }
}

/// Whether the node routes pods by the API's pod CIDRs at all (flannel,
/// host-gw, the reference plugins do): it has a route covering at least
/// one node's. A CNI with its own IP management (calico's /26 blocks,
/// cilium's cluster-pool) routes other prefixes, and a missing route to a
/// `spec.podCIDR` would then mean nothing: not said.
fn routes_by_pod_cidr(f: &NodeFacts, k: &Knowledge) -> bool {
    f.routes
        .iter()
        .filter(|r| r.prefix > 0)
        .any(|r| k.covers_a_pod_cidr(r))
}

/// The most specific non-default route covering `net/prefix`.
fn specific_route(f: &NodeFacts, net: IpAddr, prefix: u8) -> Option<&RouteFact> {
    f.routes
        .iter()
        .filter(|r| r.prefix > 0 && r.covers(net, prefix))
        .max_by_key(|r| r.prefix)
}

/// What is wrong on `from`'s way to `to`'s pods.
fn pair_lines(from: &str, to: &str, k: &Knowledge, lines: &mut Vec<String>) {
    let (Some(f), Some(truth)) = (k.facts.get(from), k.truth.get(to)) else {
        return;
    };
    let by_pod_cidr = routes_by_pod_cidr(f, k);
    for &(net, prefix) in &truth.pod_cidrs {
        let Some(route) = specific_route(f, net, prefix) else {
            if by_pod_cidr {
                lines.push(format!(
                    "{from} has no route to {net}/{prefix} ({to}'s pod CIDR)"
                ));
            }
            continue;
        };
        let dev = route.dev.as_deref().unwrap_or_default();
        let vxlan = f.link(dev).filter(|l| l.vxlan.is_some());
        match (vxlan, route.via) {
            (Some(link), Some(gateway)) => vxlan_lines(from, to, link, gateway, k, lines),
            (None, Some(gateway)) => {
                // Host-gw: straight to the peer's address.
                if let Some(ip) = truth.internal_ip
                    && gateway != ip
                    // A physical device, or a containerised node's veth
                    // uplink: not a tunnel, whose gateway is a VTEP.
                    && f.link(dev).is_some_and(|l| l.kind.is_empty() || l.kind == "veth")
                    // A next hop inside the pods' addresses is the CNI's
                    // own (cilium's router address), never a node's.
                    && !k.in_a_pod_cidr(gateway)
                {
                    lines.push(format!(
                        "{from}'s route to {net}/{prefix} ({to}'s pod CIDR) goes via {gateway}, {to}'s InternalIP is {ip}"
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Flannel's VXLAN: the route's gateway (the peer's VTEP address) must
/// have a neighbour entry with the peer's VTEP MAC, and that MAC an FDB
/// entry pointing at the peer's address.
fn vxlan_lines(
    from: &str,
    to: &str,
    link: &LinkFact,
    gateway: IpAddr,
    k: &Knowledge,
    lines: &mut Vec<String>,
) {
    let Some(f) = k.facts.get(from) else { return };
    let dev = link.name.as_str();
    let truth = k.truth.get(to);
    let peer_mac = k
        .facts
        .get(to)
        .and_then(|t| t.link(dev))
        .and_then(|l| l.mac.clone())
        .or_else(|| truth.and_then(|t| t.vtep_mac.clone()));
    let neighbour = f.neighbours.iter().find(|n| {
        n.dev == dev && n.ip == gateway && n.state != "failed" && n.state != "incomplete"
    });
    match (neighbour, &peer_mac) {
        (None, _) => lines.push(format!(
            "{from} has no neighbour entry for {gateway} ({to}'s VTEP) on {dev}"
        )),
        (Some(n), Some(mac)) if n.mac.as_deref() != Some(mac.as_str()) => lines.push(format!(
            "{from}'s neighbour entry for {gateway} ({to}'s VTEP) on {dev} is {}, {to}'s VTEP MAC is {mac}",
            n.mac.as_deref().unwrap_or("empty")
        )),
        _ => {}
    }
    let Some(mac) = peer_mac else { return };
    let entry = f.fdb.iter().find(|e| e.dev == dev && e.mac == mac);
    match (entry, truth.and_then(NodeTruth::tunnel_ip)) {
        (None, _) => lines.push(format!(
            "{from}'s {dev} has no FDB entry for {to}'s VTEP ({mac})"
        )),
        (Some(e), Some(ip)) if e.dst.is_some_and(|d| d != ip) => lines.push(format!(
            "{from}'s FDB entry for {to}'s VTEP ({mac}) on {dev} points to {}, {to}'s InternalIP is {ip}",
            e.dst.map(|d| d.to_string()).unwrap_or_default()
        )),
        _ => {}
    }
}

/// The node's overlay MTU against the other nodes' most common one.
fn mtu_lines(node: &str, k: &Knowledge, lines: &mut Vec<String>) {
    let Some(f) = k.facts.get(node) else { return };
    for link in f.links.iter().filter(|l| is_overlay(l)) {
        let others = mtu_peers(node, k.truth)
            .filter_map(|peer| k.facts.get(peer)?.link(&link.name).map(|l| l.mtu));
        if let Some(usual) = most_common(others)
            && usual != link.mtu
        {
            lines.push(format!(
                "{node}: {} MTU is {}, {usual} on the other nodes",
                link.name, link.mtu
            ));
        }
    }
    uplink_mtu_line(node, k, lines);
}

/// The MTU more than half of `mtus` have, when there are at least two:
/// with one peer, or a tie, which side is set apart cannot be told.
fn most_common(mtus: impl Iterator<Item = u32>) -> Option<u32> {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    let mut total = 0;
    for mtu in mtus {
        *counts.entry(mtu).or_default() += 1;
        total += 1;
    }
    counts
        .into_iter()
        .find(|(_, n)| *n >= 2 && *n * 2 > total)
        .map(|(mtu, _)| mtu)
}

/// The node's link to the other nodes (whatever its name: `eth0`, `ens5`,
/// a bond) against theirs to it: an underlay MTU set apart on one node
/// (jumbo frames on some, a cloud's 1460 on others) loses full-size
/// packets between them, tunnelled or routed.
fn uplink_mtu_line(node: &str, k: &Knowledge, lines: &mut Vec<String>) {
    let (Some(f), Some(own_ip)) = (
        k.facts.get(node),
        k.truth.get(node).and_then(|t| t.internal_ip),
    ) else {
        return;
    };
    let peers: Vec<&str> = mtu_peers(node, k.truth).collect();
    let Some(link) = peers
        .iter()
        .find_map(|p| uplink(f, k.truth.get(*p)?.internal_ip?))
        .filter(|l| !is_overlay(l))
    else {
        return;
    };
    let others = peers
        .into_iter()
        .filter_map(|peer| uplink(k.facts.get(peer)?, own_ip))
        .filter(|l| !is_overlay(l))
        .map(|l| l.mtu);
    if let Some(usual) = most_common(others)
        && usual != link.mtu
    {
        lines.push(format!(
            "{node}: {} (its link to the other nodes) MTU is {}, {usual} on the other nodes",
            link.name, link.mtu
        ));
    }
}

/// The device `f`'s node sends to `ip` through (the kernel's route choice).
fn uplink(f: &NodeFacts, ip: IpAddr) -> Option<&LinkFact> {
    let route = RouteFact::lookup(&f.routes, ip)?;
    f.link(route.dev.as_deref()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis::Subject;
    use netmatrix_api::facts::{FdbFact, NeighbourFact, RejectRoute, VxlanFact};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn mac(i: usize) -> String {
        format!("0a:58:0a:f4:0{i}:00")
    }

    /// A healthy flannel VXLAN cluster of `n` nodes, as the lab wires it.
    fn cluster(n: usize) -> (BTreeMap<String, NodeFacts>, BTreeMap<String, NodeTruth>) {
        let mut facts = BTreeMap::new();
        let mut truth = BTreeMap::new();
        for i in 1..=n {
            let mut f = NodeFacts {
                ip_forward: Some(true),
                ..Default::default()
            };
            f.links.push(LinkFact {
                name: "flannel.1".into(),
                kind: "vxlan".into(),
                up: true,
                mtu: 1450,
                mac: Some(mac(i)),
                vxlan: Some(VxlanFact {
                    vni: 1,
                    local: Some(ip(&format!("198.18.0.{i}"))),
                    port: Some(8472),
                }),
            });
            f.links.push(LinkFact {
                name: "cni0".into(),
                kind: "bridge".into(),
                up: true,
                mtu: 1450,
                mac: None,
                vxlan: None,
            });
            f.routes.push(RouteFact {
                dst: ip(&format!("10.244.{i}.0")),
                prefix: 24,
                via: None,
                dev: Some("cni0".into()),
                reject: None,
            });
            for j in (1..=n).filter(|j| *j != i) {
                f.routes.push(RouteFact {
                    dst: ip(&format!("10.244.{j}.0")),
                    prefix: 24,
                    via: Some(ip(&format!("10.244.{j}.0"))),
                    dev: Some("flannel.1".into()),
                    reject: None,
                });
                f.neighbours.push(NeighbourFact {
                    dev: "flannel.1".into(),
                    ip: ip(&format!("10.244.{j}.0")),
                    mac: Some(mac(j)),
                    state: "permanent".into(),
                });
                f.fdb.push(FdbFact {
                    dev: "flannel.1".into(),
                    mac: mac(j),
                    dst: Some(ip(&format!("198.18.0.{j}"))),
                });
            }
            let node = format!("node-{i}");
            facts.insert(node.clone(), f);
            truth.insert(
                node,
                NodeTruth {
                    pod_cidrs: vec![(ip(&format!("10.244.{i}.0")), 24)],
                    internal_ip: Some(ip(&format!("198.18.0.{i}"))),
                    ..Default::default()
                },
            );
        }
        (facts, truth)
    }

    fn explained(
        kind: FindingKind,
        nodes: &[&str],
        facts: BTreeMap<String, NodeFacts>,
        truth: &BTreeMap<String, NodeTruth>,
    ) -> Vec<String> {
        let facts = facts.into_iter().map(|(n, f)| (n, Arc::new(f))).collect();
        let mut c = vec![Condition::new(
            kind,
            Subject::Cluster,
            nodes.iter().map(|n| (*n).to_owned()).collect(),
            String::new(),
            Vec::new(),
            String::new(),
        )];
        explain(&mut c, &Knowledge::new(&facts, truth));
        c.remove(0).cause
    }

    /// The sorted lookup agrees with covering each pod CIDR one by one.
    #[test]
    fn a_route_covers_a_pod_cidr_as_route_facts_say() {
        let (_, truth) = cluster(3);
        let facts = BTreeMap::new();
        let k = Knowledge::new(&facts, &truth);
        let route = |dst: &str, prefix| RouteFact {
            dst: ip(dst),
            prefix,
            via: None,
            dev: None,
            reject: None,
        };
        for (r, want) in [
            (route("10.244.2.0", 24), true),
            (route("10.244.2.7", 24), true),
            (route("10.244.0.0", 16), true),
            (route("10.0.0.0", 8), true),
            (route("10.244.2.0", 25), false),
            (route("10.244.9.0", 24), false),
            (route("10.245.0.0", 16), false),
            (route("::", 1), false),
        ] {
            let one_by_one = truth
                .values()
                .flat_map(|t| &t.pod_cidrs)
                .any(|&(net, prefix)| r.covers(net, prefix));
            assert_eq!(k.covers_a_pod_cidr(&r), want, "{r:?}");
            assert_eq!(one_by_one, want, "{r:?}");
        }
    }

    #[test]
    fn a_healthy_cluster_has_no_cause_to_tell() {
        let (facts, truth) = cluster(3);
        assert_eq!(
            explained(FindingKind::NodeIsolated, &["node-2"], facts, &truth),
            Vec::<String>::new()
        );
    }

    #[test]
    fn missing_and_wrong_overlay_entries_are_named() {
        let (mut facts, truth) = cluster(3);
        let n1 = facts.get_mut("node-1").unwrap();
        n1.fdb.retain(|e| e.mac != mac(2));
        n1.neighbours.retain(|e| e.ip != ip("10.244.2.0"));
        let cause = explained(FindingKind::NodeIsolated, &["node-2"], facts, &truth);
        assert_eq!(
            cause,
            [
                "node-1 has no neighbour entry for 10.244.2.0 (node-2's VTEP) on flannel.1",
                "node-1's flannel.1 has no FDB entry for node-2's VTEP (0a:58:0a:f4:02:00)",
            ]
        );

        let (mut facts, truth) = cluster(3);
        for e in &mut facts.get_mut("node-1").unwrap().fdb {
            if e.mac == mac(2) {
                e.dst = Some(ip("198.18.0.99"));
            }
        }
        let stale = "node-1's FDB entry for node-2's VTEP (0a:58:0a:f4:02:00) on flannel.1 points to 198.18.0.99, node-2's InternalIP is 198.18.0.2";
        let pair = explained(
            FindingKind::PairBroken,
            &["node-1", "node-2"],
            facts.clone(),
            &truth,
        );
        assert_eq!(pair, [stale]);
        assert_eq!(
            explained(FindingKind::NodeIsolated, &["node-2"], facts, &truth),
            [stale]
        );
    }

    #[test]
    fn node_settings_devices_routes_and_mtu_are_named() {
        let (mut facts, truth) = cluster(3);
        let n2 = facts.get_mut("node-2").unwrap();
        n2.ip_forward = Some(false);
        n2.links[0].up = false;
        let cause = explained(FindingKind::NodeIsolated, &["node-2"], facts, &truth);
        assert_eq!(
            &cause[..2],
            [
                "node-2: net.ipv4.ip_forward = 0, so it does not route its pods' packets",
                "node-2: flannel.1 (vxlan) is down",
            ]
        );

        let (mut facts, truth) = cluster(3);
        let n3 = facts.get_mut("node-3").unwrap();
        n3.routes.retain(|r| r.dst != ip("10.244.1.0"));
        // A default route does not count.
        n3.routes.push(RouteFact {
            dst: ip("0.0.0.0"),
            prefix: 0,
            via: Some(ip("198.18.0.254")),
            dev: Some("eth0".into()),
            reject: None,
        });
        assert_eq!(
            explained(FindingKind::NodeIsolated, &["node-1"], facts, &truth),
            ["node-3 has no route to 10.244.1.0/24 (node-1's pod CIDR)"]
        );

        let (mut facts, truth) = cluster(3);
        facts.get_mut("node-3").unwrap().links[0].mtu = 1200;
        assert_eq!(
            explained(FindingKind::MtuMismatch, &["node-3"], facts, &truth),
            ["node-3: flannel.1 MTU is 1200, 1450 on the other nodes"]
        );

        // A CNI with its own address management routes other prefixes:
        // the API's pod CIDRs say nothing about its routes.
        let (mut facts, truth) = cluster(3);
        for f in facts.values_mut() {
            f.routes.retain(|r| r.prefix == 0);
            f.routes.push(RouteFact {
                dst: ip("192.168.77.64"),
                prefix: 26,
                via: None,
                dev: Some("tunl0".into()),
                reject: None,
            });
        }
        assert!(explained(FindingKind::NodeIsolated, &["node-1"], facts, &truth).is_empty());

        // Loss has no cause the facts can tell.
        let (facts, truth) = cluster(3);
        assert!(explained(FindingKind::PacketLoss, &["node-3"], facts, &truth).is_empty());
    }

    /// host-gw on nodes that are containers (kind, the lab): the routes go
    /// through a veth uplink to the peers' InternalIPs; a healthy cluster
    /// has nothing to tell, a route through the wrong gateway is named.
    #[test]
    fn host_gw_routes_through_a_veth_uplink_are_read() {
        let (mut facts, truth) = cluster(3);
        for (i, f) in facts.values_mut().enumerate() {
            let i = i + 1;
            f.links.retain(|l| l.kind != "vxlan");
            f.links.push(LinkFact {
                name: "eth0".into(),
                kind: "veth".into(),
                up: true,
                mtu: 1500,
                mac: None,
                vxlan: None,
            });
            f.fdb.clear();
            f.neighbours.clear();
            for r in f.routes.iter_mut().filter(|r| r.via.is_some()) {
                let peer = r.dst.to_string().split('.').nth(2).unwrap().to_owned();
                r.via = Some(ip(&format!("198.18.0.{peer}")));
                r.dev = Some("eth0".into());
            }
            assert_eq!(f.routes.len(), 3, "node-{i}");
        }
        assert!(
            explained(
                FindingKind::AsymmetricPath,
                &["node-2", "node-3"],
                facts.clone(),
                &truth
            )
            .is_empty()
        );
        for r in &mut facts.get_mut("node-2").unwrap().routes {
            if r.dst == ip("10.244.3.0") {
                r.via = Some(ip("198.18.0.1"));
            }
        }
        assert_eq!(
            explained(
                FindingKind::PairBroken,
                &["node-2", "node-3"],
                facts.clone(),
                &truth
            ),
            [
                "node-2's route to 10.244.3.0/24 (node-3's pod CIDR) goes via 198.18.0.1, node-3's InternalIP is 198.18.0.3"
            ]
        );
        // Through the CNI's own router address on the node (cilium's
        // cilium_host, a veth): not a wrong gateway.
        for r in &mut facts.get_mut("node-2").unwrap().routes {
            if r.dst == ip("10.244.3.0") {
                r.via = Some(ip("10.244.2.76"));
            }
        }
        assert!(
            explained(
                FindingKind::PairBroken,
                &["node-2", "node-3"],
                facts,
                &truth
            )
            .is_empty()
        );
    }

    /// One node's link to the others set to a lower MTU: named by role,
    /// whatever the device is called on each node; never a healthy node,
    /// and nothing when which side is set apart cannot be told.
    #[test]
    fn an_underlay_mtu_set_apart_is_named() {
        // `mtus[i]` is node-(i+1)'s link MTU; node-1's link is ens5, and
        // node-1 also has a standby link with a second default route.
        let with_links = |mtus: &[u32]| {
            let (mut facts, truth) = cluster(mtus.len());
            for (i, f) in facts.values_mut().enumerate() {
                let name = if i == 0 { "ens5" } else { "eth0" };
                let link = |name: &str, mtu| LinkFact {
                    name: name.into(),
                    kind: String::new(),
                    up: true,
                    mtu,
                    mac: None,
                    vxlan: None,
                };
                f.links.push(link(name, mtus[i]));
                let route = |prefix, dev: &str| RouteFact {
                    dst: ip("198.18.0.0"),
                    prefix,
                    via: None,
                    dev: Some(dev.into()),
                    reject: None,
                };
                f.routes.push(route(15, name));
                if i == 0 {
                    f.links.push(link("ens6", 9001));
                    f.routes.push(route(15, "ens6"));
                }
            }
            (facts, truth)
        };
        let (facts, truth) = with_links(&[1500, 1300, 1500, 1500]);
        assert_eq!(
            explained(FindingKind::MtuMismatch, &["node-2"], facts.clone(), &truth),
            ["node-2: eth0 (its link to the other nodes) MTU is 1300, 1500 on the other nodes"]
        );
        assert!(explained(FindingKind::MtuMismatch, &["node-1"], facts, &truth).is_empty());
        // Of node-1's two equal routes, the first (the kernel's, lowest
        // metric) is its link: ens5, not the standby ens6.
        let (facts, truth) = with_links(&[1300, 1500, 1500, 1500]);
        assert_eq!(
            explained(FindingKind::MtuMismatch, &["node-1"], facts, &truth),
            ["node-1: ens5 (its link to the other nodes) MTU is 1300, 1500 on the other nodes"]
        );
        // A tie (one peer each way) and a single peer tell nothing.
        let (facts, truth) = with_links(&[1500, 1300, 9000]);
        assert!(explained(FindingKind::MtuMismatch, &["node-1"], facts, &truth).is_empty());
        let (facts, truth) = with_links(&[1500, 1300]);
        assert!(explained(FindingKind::MtuMismatch, &["node-2"], facts, &truth).is_empty());
    }

    /// A pod out of reach: the kernel's choice of route for its address,
    /// on the nodes concerned, rejects it.
    #[test]
    fn a_rejecting_route_to_a_pod_is_named() {
        let (mut facts, truth) = cluster(3);
        let unreachable = |facts: BTreeMap<String, Arc<NodeFacts>>| {
            let mut c = vec![Condition::new(
                FindingKind::PodUnreachable,
                Subject::Pod("node-3".into(), ip("10.244.3.3")),
                vec!["node-1".into(), "node-3".into()],
                String::new(),
                Vec::new(),
                String::new(),
            )];
            explain(&mut c, &Knowledge::new(&facts, &truth));
            c.remove(0).cause
        };
        let plain: BTreeMap<String, Arc<NodeFacts>> = facts
            .iter()
            .map(|(n, f)| (n.clone(), Arc::new(f.clone())))
            .collect();
        assert!(unreachable(plain).is_empty());
        for (dst, reject) in [
            ("10.244.3.3", RejectRoute::Blackhole),
            // A wider rejecting route loses to the pod CIDR's: not said.
            ("10.244.0.0", RejectRoute::Unreachable),
        ] {
            facts.get_mut("node-1").unwrap().routes.push(RouteFact {
                dst: ip(dst),
                prefix: if dst.ends_with(".3") { 32 } else { 16 },
                via: None,
                dev: None,
                reject: Some(reject),
            });
        }
        let facts: BTreeMap<String, Arc<NodeFacts>> =
            facts.into_iter().map(|(n, f)| (n, Arc::new(f))).collect();
        assert_eq!(
            unreachable(facts),
            ["node-1 has a blackhole route to 10.244.3.3/32: it drops what is sent to 10.244.3.3"]
        );
    }
}
