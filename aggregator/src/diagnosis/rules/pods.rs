//! One pod cut off while its node's other pods answer: `pod-unreachable`.
//!
//! The path rules judge nodes: a cell whose pods partly answer is a path
//! that works. A pod that answers nothing while its neighbours answer
//! everything (the cell's [`unanswered`](netmatrix_api::Cell::unanswered))
//! is a fault of that pod's address, and where it is seen from says where
//! to look:
//!
//! - from every node that probes it, its own included: the pod's own
//!   network (its interface, address or sandbox);
//! - from every other node, while its own node reaches it: its node's
//!   forwarding to it from outside (a route, a filter, the overlay's entry
//!   for that address);
//! - from some nodes only, while others reach it: those nodes' way to that
//!   address (a blackhole or stale route, a neighbour or FDB entry, a
//!   filter naming it).
//!
//! A pod down for a moment (restarting, being deleted) is no finding: the
//! hysteresis raises one only after it held for several rounds, and a pod
//! the API no longer lists leaves the pinglists within a round.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netmatrix_api::{Cell, FindingKind, NetworkMode, Path};

use super::{PathScope, View, capped, describe_cell, is_broken};
use crate::diagnosis::{Condition, Subject};

/// What the judged rows say of one pod: who gets nothing from it.
#[derive(Default)]
struct Seen<'a> {
    pod: &'a str,
    silent_from: Vec<(&'a str, &'a Cell)>,
    reached_from: BTreeSet<&'a str>,
}

/// Judged in the path rule's [`PathScope`], so that where the path rule
/// leaves a broken direction to this one (the replies to a node's own
/// agent lost), this one sees the reverse cell.
pub(super) fn diagnose(view: &View, scope: &PathScope) -> Vec<Condition> {
    let judged = |from: &str, c: &Cell| scope.judges(from, c);
    let mut pods: BTreeMap<(&str, IpAddr), Seen> = BTreeMap::new();
    for (from, cell) in view
        .known_cells(NetworkMode::Pod)
        .filter(|(from, c)| !c.unanswered.is_empty() && judged(from, c))
    {
        for pod in &cell.unanswered {
            let seen = pods.entry((&*cell.to, pod.ip)).or_default();
            seen.pod = &pod.pod;
            seen.silent_from.push((from, cell));
        }
    }
    if pods.is_empty() {
        return Vec::new();
    }
    let prober = |node: &str, ip: IpAddr| {
        view.row(NetworkMode::Pod, node)
            .is_some_and(|r| r.probe_ip == Some(ip))
    };
    // Who reaches them: a cell to their node that lost no echo at all (so
    // every pod it probed answered every echo; every pod of a probed node
    // is probed). A cell with some loss that does not list the pod says
    // nothing of it (it may have been left out for a single echo, or for
    // want of a neighbour that answered everything). A node's own cell
    // never holds its own agent.
    let their_nodes: BTreeSet<&str> = pods.keys().map(|(node, _)| *node).collect();
    for (from, cell) in view
        .known_cells(NetworkMode::Pod)
        .filter(|(from, c)| judged(from, c) && c.loss == Some(0.0) && their_nodes.contains(&*c.to))
    {
        let on_node = pods
            .range_mut((&*cell.to, IpAddr::from([0u8; 4]))..)
            .take_while(|((node, _), _)| **node == *cell.to);
        for ((node, ip), seen) in on_node {
            if !(from == *node && prober(node, *ip)) {
                seen.reached_from.insert(from);
            }
        }
    }
    // A node's own cell lists no pod when the agent probes a single pod
    // there (the agent does not probe itself): that cell broken is that
    // pod silent from its own node (unless the pod is that agent).
    for ((node, ip), seen) in pods.iter_mut() {
        let own = view
            .known_cell(NetworkMode::Pod, node, node)
            .filter(|c| is_broken(c) && judged(node, c) && !prober(node, *ip));
        if let Some(own) = own
            && !seen.silent_from.iter().any(|(from, _)| from == node)
        {
            seen.silent_from.push((node, own));
        }
    }
    pods.iter()
        .map(|((node, ip), seen)| {
            let prober = prober(node, *ip);
            let back: Vec<&Cell> = if prober {
                seen.silent_from
                    .iter()
                    .filter(|(from, _)| from != node)
                    .filter_map(|(from, _)| view.known_cell(NetworkMode::Pod, node, from))
                    .filter(|c| is_broken(c))
                    .collect()
            } else {
                Vec::new()
            };
            pod_unreachable(node, *ip, seen, prober, &back)
        })
        .collect()
}

/// `prober`: the pod is `node`'s agent, whose probes' replies come back to
/// it; `back`: `node`'s broken cells to the nodes that cannot reach it.
fn pod_unreachable(node: &str, ip: IpAddr, seen: &Seen, prober: bool, back: &[&Cell]) -> Condition {
    let name = if seen.pod.is_empty() {
        ip.to_string()
    } else {
        format!("{} ({ip})", seen.pod)
    };
    let sources: Vec<&str> = seen.silent_from.iter().map(|(from, _)| *from).collect();
    let own_silent = sources.contains(&node);
    let own_reaches = seen.reached_from.contains(node);
    let remote_reach = seen.reached_from.iter().any(|n| *n != node);
    let remote: Vec<&str> = sources.iter().copied().filter(|n| *n != node).collect();
    let (mut summary, hint) = if seen.reached_from.is_empty() {
        let own = if own_silent {
            ", its own included,"
        } else {
            ""
        };
        (
            format!(
                "pod {name} on {node} answers no node that probes it{own} while the other pods on {node} answer"
            ),
            format!(
                "the pod's own network: on {node}, is its interface up with its address (kubectl -n <namespace> exec <pod> -- ip addr; or the host end: ip link | grep <veth>; bridge link), is the host route or neighbour entry for {ip} right (ip route get {ip}; ip neigh show {ip}), and is its sandbox alive (crictl pods; kubelet log)"
            ),
        )
    } else if own_reaches && !remote_reach && !remote.is_empty() {
        (
            format!(
                "pod {name} on {node} answers its own node but not {}: traffic from other nodes to it stops at {node}",
                remote.join(", ")
            ),
            format!(
                "{node}'s forwarding to {ip} from outside: on {node}, ip route get {ip} from <a remote pod IP> iif <overlay device>; a filter naming it (iptables -S FORWARD | grep {ip}; nft list ruleset | grep {ip}); calico: the /32 route to its cali interface"
            ),
        )
    } else {
        (
            format!(
                "pod {name} on {node} answers nothing from {} while {} reach it",
                sources.join(", "),
                reach_text(&seen.reached_from)
            ),
            format!(
                "the way from {} to {ip}: ip route get {ip} (a blackhole, unreachable or stale /32 route), ip neigh show {ip} and the overlay's FDB entry for {node}'s VTEP, and filters naming it (iptables -S | grep {ip})",
                sources.join(", ")
            ),
        )
    };
    let mut nodes: Vec<String> = std::iter::once(node)
        .chain(sources.iter().copied())
        .map(str::to_owned)
        .collect();
    nodes.sort();
    nodes.dedup();
    let mut evidence: Vec<String> = seen
        .silent_from
        .iter()
        .map(|(from, cell)| {
            format!(
                "{} (pod {name}: no echo answered)",
                describe_cell(from, cell)
            )
        })
        .collect();
    // The pod is the one `node` probes from: its probes to those sources
    // get no replies either, for the same reason.
    if prober {
        summary.push_str(&format!(
            "; it is the pod {node} probes from, so {node}'s probes to them get no replies either"
        ));
        evidence.extend(
            back.iter()
                .map(|cell| format!("{} (replies to {ip})", describe_cell(node, cell))),
        );
    }
    if !seen.reached_from.is_empty() {
        evidence.push(format!("reached from {}", reach_text(&seen.reached_from)));
    }
    Condition::new(
        FindingKind::PodUnreachable,
        Subject::Pod(node.to_owned(), ip),
        nodes,
        summary,
        capped(evidence),
        hint,
    )
    .with_paths(
        sources
            .iter()
            .map(|from| Path {
                from: (*from).to_owned(),
                to: node.to_owned(),
            })
            .collect(),
    )
}

/// "node-1, node-3" or, for many, "12 nodes".
fn reach_text(nodes: &BTreeSet<&str>) -> String {
    if nodes.len() <= 5 {
        nodes.iter().copied().collect::<Vec<_>>().join(", ")
    } else {
        format!("{} nodes", nodes.len())
    }
}
