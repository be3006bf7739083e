//! The pod network split into groups: nodes are joined when a pod cell
//! between them reaches (in either direction); every known cell between two
//! groups is then broken by construction. The shape of the groups names the
//! failure:
//!
//! - every node alone: `cross-node-broken` (if pods on the same node still
//!   reach each other);
//! - one group of two or more nodes plus lone nodes: each lone node seen
//!   failing both ways is `node-isolated`. A lone node whose agent is
//!   silent is isolated too when something else says the node itself is
//!   alive: its host-network agent reports, or the API says the node is
//!   Ready and its agent pod Running. A node whose pods cannot send
//!   anything off the node cannot report either; that is the commonest
//!   CNI failure, and blaming the agent would send the operator to the
//!   DaemonSet. A lone silent node without such a sign is left to
//!   `agent-missing`, whose hint then names the CNI;
//! - two or more groups of two or more nodes: `partition`.
//!
//! So with three nodes one node cut off is `node-isolated`, not a partition,
//! and with two nodes nothing says which side is broken: `cross-node-broken`.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt};

use netmatrix_api::{Cell, FindingKind, NetworkMode};

use super::{Components, Tally, View, broken_cells, capped, is_reaching, sorted_nodes};
use crate::diagnosis::{Condition, Subject};

pub(super) struct Overlay {
    pub conditions: Vec<Condition>,
    pub components: Components,
}

/// What says a silent node is alive, besides its pod agent (and its state
/// in the API: only Ready nodes past their grace are judged).
pub(super) struct Liveness<'a> {
    /// Nodes whose pod agent pod the API lists as Running (`None`: no API).
    pub running: Option<&'a BTreeSet<String>>,
}

pub(super) fn diagnose(view: &View, cut_off: &BTreeSet<&str>, alive: &Liveness) -> Overlay {
    let cells: Vec<(&str, &Cell)> = view
        .cross_cells(NetworkMode::Pod)
        .filter(|(from, c)| !cut_off.contains(from) && !cut_off.contains(&*c.to))
        .collect();
    let groups = groups(&cells);
    let components = Components {
        of: groups
            .iter()
            .enumerate()
            .flat_map(|(i, g)| g.iter().map(move |n| (n.clone(), i)))
            .collect(),
    };
    let conditions = if groups.len() < 2 {
        Vec::new()
    } else if groups.iter().all(|g| g.len() == 1) {
        cross_node_broken(view, &cells).into_iter().collect()
    } else if groups.iter().filter(|g| g.len() >= 2).count() >= 2 {
        vec![partition(&cells, &groups)]
    } else {
        groups
            .iter()
            .filter(|g| g.len() == 1)
            .filter_map(|g| node_isolated(view, &cells, &g[0], alive))
            .collect()
    };
    Overlay {
        conditions,
        components,
    }
}

/// Connected components of the "reaches" relation, each sorted, largest
/// first (then by first node).
fn groups(cells: &[(&str, &Cell)]) -> Vec<Vec<String>> {
    // Hashed: two lookups per cell.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for node in cells.iter().flat_map(|(f, c)| [*f, &*c.to]) {
        let next = index.len();
        index.entry(node).or_insert(next);
    }
    let mut nodes: Vec<(&str, usize)> = index.iter().map(|(n, i)| (*n, *i)).collect();
    nodes.sort_unstable();
    let mut parent: Vec<usize> = (0..nodes.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (from, cell) in cells.iter().filter(|(_, c)| is_reaching(c)) {
        if let (Some(&a), Some(&b)) = (index.get(*from), index.get(&*cell.to)) {
            let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
            parent[ra] = rb;
        }
    }
    let mut by_root: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for &(node, i) in &nodes {
        let r = root(&mut parent, i);
        by_root.entry(r).or_default().push((*node).to_owned());
    }
    let mut groups: Vec<Vec<String>> = by_root.into_values().collect();
    groups.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    groups
}

/// Every node alone, seen from at least two reporting nodes, while pods on
/// the same node reach each other (or that is not measured).
fn cross_node_broken(view: &View, cells: &[(&str, &Cell)]) -> Option<Condition> {
    let sources: BTreeSet<&str> = cells.iter().map(|(from, _)| *from).collect();
    if sources.len() < 2 {
        return None;
    }
    let same = Tally::of(
        view.known_cells(NetworkMode::Pod)
            .filter(|(from, c)| **from == *c.to)
            .map(|(_, c)| c),
    );
    if same.known() > 0 && !same.mostly_reachable() {
        return None;
    }
    let tally = Tally::of(cells.iter().map(|(_, c)| *c));
    let mut evidence = broken_cells(cells.iter().copied());
    evidence.push(if same.known() > 0 {
        format!(
            "same-node cells: {} of {} reachable",
            same.reachable,
            same.known()
        )
    } else {
        "no same-node data (no companion pods probed)".to_owned()
    });
    let nodes = sorted_nodes(cells.iter().flat_map(|(f, c)| [*f, &*c.to]));
    Some(Condition::new(
        FindingKind::CrossNodeBroken,
        Subject::Cluster,
        nodes,
        format!(
            "pod traffic between nodes fails everywhere ({} of {} cross-node cells failed) while pods on the same node reach each other",
            tally.broken,
            tally.known()
        ),
        capped(evidence),
        "the overlay transport between nodes is blocked or misconfigured: check that VXLAN (UDP 8472 for flannel, 4789 for calico and cilium) or IP-in-IP (IP protocol 4) passes between the nodes' addresses (host firewalls, security groups: iptables -S INPUT on a node), and that the CNI uses the right interface (flannel --iface, calico IP_AUTODETECTION_METHOD)".to_owned(),
    ))
}

/// Groups of two or more nodes that reach each other, and nothing between.
fn partition(cells: &[(&str, &Cell)], groups: &[Vec<String>]) -> Condition {
    let group_of: BTreeMap<&str, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(i, g)| g.iter().map(move |n| (n.as_str(), i)))
        .collect();
    let between: Vec<(&str, &Cell)> = cells
        .iter()
        .copied()
        .filter(|(from, c)| group_of.get(from) != group_of.get(&*c.to))
        .collect();
    let nodes = sorted_nodes(groups.iter().flatten().map(String::as_str));
    let shown: Vec<String> = groups
        .iter()
        .map(|g| format!("[{}]", g.join(", ")))
        .collect();
    let mut evidence = vec![format!("groups: {}", shown.join(" | "))];
    evidence.extend(broken_cells(between.iter().copied()));
    Condition::new(
        FindingKind::Partition,
        Subject::Cluster,
        nodes,
        format!(
            "the pod network is split in {} groups that reach each other inside but not between ({} cells between groups failed): {}",
            groups.len(),
            between.len(),
            shown.join(" | ")
        ),
        capped(evidence),
        "something between the groups drops the overlay: compare the groups' subnets, racks or zones; check the firewall or security groups between them for the overlay's traffic (UDP 8472 flannel, 4789 calico/cilium VXLAN, IP protocol 4 for IP-in-IP, TCP 179 for calico BGP) and the routes between the subnets".to_owned(),
    )
    .with_groups(groups.to_vec())
}

/// A lone node that fails to reach the others (or is silent but alive,
/// [`silent_but_alive`]) and is not reached.
fn node_isolated(
    view: &View,
    cells: &[(&str, &Cell)],
    x: &str,
    alive: &Liveness,
) -> Option<Condition> {
    let row = view.row(NetworkMode::Pod, x);
    let reporting = row.is_some_and(|r| r.reporting && view.is_ready(x));
    let outbound: Vec<(&str, &Cell)> = cells.iter().copied().filter(|(f, _)| *f == x).collect();
    let inbound: Vec<(&str, &Cell)> = cells.iter().copied().filter(|(_, c)| *c.to == *x).collect();
    if inbound.is_empty() {
        return None;
    }
    let mut evidence = Vec::new();
    let summary = if reporting && !outbound.is_empty() {
        if let Some(relay) = row.and_then(|r| r.relayed_by.as_deref()) {
            evidence.push(format!(
                "{x}'s agent cannot reach the aggregator: its report was relayed by {x}'s host agent ({relay})"
            ));
        }
        format!(
            "{x} is cut off from the other nodes' pods: {} of {} probes from {x} and {} of {} probes to {x} failed, while the other nodes reach each other",
            outbound.len(),
            outbound.len(),
            inbound.len(),
            inbound.len()
        )
    } else if !reporting {
        evidence.extend(silent_but_alive(view, x, alive)?);
        format!(
            "{x} is cut off from the other nodes' pods: its agent cannot report and {} of {} probes to {x} failed, while {x} itself is up and the other nodes reach each other",
            inbound.len(),
            inbound.len()
        )
    } else {
        return None;
    };
    evidence.extend(broken_cells(outbound.iter().chain(&inbound).copied()));
    Some(Condition::new(
        FindingKind::NodeIsolated,
        Subject::Node(x.to_owned()),
        vec![x.to_owned()],
        summary,
        capped(evidence),
        format!(
            "check the pod network on {x}: forwarding (sysctl net.ipv4.ip_forward must be 1), the FORWARD chain (iptables -S FORWARD: a DROP policy, as a Docker install sets, drops every pod packet leaving the node), the pods' bridge and veths (ip link show cni0), the tunnel device (ip -d link show flannel.1; calico: vxlan.calico or tunl0; cilium: cilium_vxlan), its FDB and neighbours (bridge fdb show dev flannel.1; ip neigh show dev flannel.1), routes (ip route), and the CNI agent's logs (flanneld, calico-node, cilium-agent)"
        ),
    ))
}

/// The signs that a node whose pod agent is silent is itself up, as
/// evidence lines; `None` when there are none (then the agent may really be
/// missing, or the whole node down).
fn silent_but_alive(view: &View, x: &str, alive: &Liveness) -> Option<Vec<String>> {
    let age = view
        .row(NetworkMode::Pod, x)
        .and_then(|r| r.report_age_ms)
        .map_or_else(
            || "no report received since the aggregator started".to_owned(),
            |ms| {
                format!(
                    "last report {} ago",
                    humantime::format_duration(std::time::Duration::from_secs(
                        (ms / 1000.0) as u64
                    ))
                )
            },
        );
    let mut signs = Vec::new();
    if view.row(NetworkMode::Host, x).is_some_and(|r| r.reporting) {
        let host_in = Tally::of(
            view.cross_cells(NetworkMode::Host)
                .filter(|(_, c)| *c.to == *x)
                .map(|(_, c)| c),
        );
        if host_in.known() > 0 && !host_in.mostly_reachable() {
            return None;
        }
        let reached = if host_in.known() > 0 {
            format!(
                ", and {} of {} host-network probes to {x} succeed",
                host_in.reachable,
                host_in.known()
            )
        } else {
            String::new()
        };
        signs.push(format!(
            "{x}'s host-network agent reports (the node network works){reached}"
        ));
    }
    if alive.running.is_some_and(|running| running.contains(x)) {
        signs.push(format!(
            "the API says {x} is Ready (its kubelet reaches the control plane) and its agent pod is Running"
        ));
    }
    if signs.is_empty() {
        return None;
    }
    signs.insert(0, format!("{x}'s agent is silent ({age})"));
    Some(signs)
}
