//! Single broken paths between nodes that otherwise reach each other (same
//! group, see [`super::overlay`]):
//!
//! - `pair-broken`: A -> B and B -> A both broken; one finding per pair;
//! - `asymmetric-path`: A -> B broken while B -> A reaches; one finding per
//!   source node, listing its broken paths.
//!
//! A broken direction whose reverse shows the source's own probing pod
//! unanswered is that pod's address, not the path (`pod-unreachable`).
//!
//! A path whose reverse is unknown (silent or unprobed node) names nothing:
//! one direction alone cannot tell a one-way path from a dead node. Nor
//! does a reverse that reaches on data older than the broken direction's by
//! more than an interval (a relayed or delayed row): it may show the path
//! before whatever broke the other direction, so it is judged again once
//! both directions are measured at the same time.

use std::collections::BTreeMap;

use netmatrix_api::{Cell, FindingKind, NetworkMode, Path};

use super::{PathScope, View, capped, describe_cell, is_broken, is_reaching};
use crate::diagnosis::{Condition, Subject};

pub(super) fn diagnose(view: &View, scope: &PathScope) -> Vec<Condition> {
    let judged = |from: &str, c: &Cell| scope.judges(from, c);
    let mut pairs = Vec::new();
    let mut one_way: BTreeMap<&str, Vec<(&str, &Cell, &Cell)>> = BTreeMap::new();
    // Cells come sorted by (from, to); only broken ones need their reverse.
    for (a, forward) in view
        .cross_cells(NetworkMode::Pod)
        .filter(|(from, c)| is_broken(c) && judged(from, c))
    {
        let b = &*forward.to;
        let Some(reverse) = view
            .known_cell(NetworkMode::Pod, b, a)
            .filter(|c| judged(b, c))
        else {
            continue;
        };
        if is_broken(reverse) {
            if a < b {
                pairs.push(pair_broken(a, b, forward, reverse));
            }
        } else if is_reaching(reverse)
            && measured_together(forward, reverse, view)
            && !replies_lost(view, a, reverse)
        {
            one_way.entry(a).or_default().push((b, forward, reverse));
        }
    }
    pairs.extend(
        one_way
            .into_iter()
            .map(|(from, paths)| asymmetric(from, &paths)),
    );
    pairs
}

fn pair_broken(a: &str, b: &str, forward: &Cell, reverse: &Cell) -> Condition {
    Condition::new(
        FindingKind::PairBroken,
        Subject::pair(a, b),
        vec![a.to_owned(), b.to_owned()],
        format!(
            "pods on {a} and {b} cannot reach each other in either direction, while both reach the other nodes"
        ),
        vec![describe_cell(a, forward), describe_cell(b, reverse)],
        format!(
            "check what {a} and {b} know of each other: the overlay's FDB and neighbour entries (bridge fdb show dev flannel.1 | grep <peer VTEP MAC>; ip neigh show dev flannel.1), the routes to each other's pod subnet (ip route get <peer pod IP>; calico: BGP peering with calicoctl node status), and any firewall rule between the two nodes"
        ),
    )
    .with_paths(vec![path(a, b), path(b, a)])
}

fn asymmetric(from: &str, broken: &[(&str, &Cell, &Cell)]) -> Condition {
    let tos: Vec<&str> = broken.iter().map(|(to, _, _)| *to).collect();
    let mut nodes: Vec<String> = std::iter::once(from)
        .chain(tos.iter().copied())
        .map(str::to_owned)
        .collect();
    nodes.sort();
    let mut evidence = Vec::new();
    for (to, forward, reverse) in broken {
        evidence.push(describe_cell(from, forward));
        evidence.push(describe_cell(to, reverse));
    }
    Condition::new(
        FindingKind::AsymmetricPath,
        Subject::Node(from.to_owned()),
        nodes,
        format!(
            "pods on {from} cannot reach the pods on {}, although traffic in the other direction works",
            tos.join(", ")
        ),
        capped(evidence),
        format!(
            "a one-way path: check on {from} the route and overlay entry towards {} (ip route get <peer pod IP>; bridge fdb show dev flannel.1), reverse-path filtering (sysctl net.ipv4.conf.all.rp_filter), and firewall rules dropping new flows (iptables -S FORWARD; calico/cilium network policies)",
            tos.join(", ")
        ),
    )
    .with_paths(tos.iter().map(|to| path(from, to)).collect())
}

/// Whether `b` reaches `a`'s other pods but not the one `a` probes from
/// (`reverse`, the cell `b -> a`, lists it unanswered): then `a`'s probes
/// are lost on their way back to that one address, which is no one-way
/// path between the nodes but `pod-unreachable` ([`super::pods`]).
fn replies_lost(view: &View, a: &str, reverse: &Cell) -> bool {
    let prober = view.row(NetworkMode::Pod, a).and_then(|row| row.probe_ip);
    prober.is_some_and(|ip| reverse.unanswered.iter().any(|u| u.ip == ip))
}

/// Whether `reverse`'s data are not older than `forward`'s by more than an
/// interval (rows report at their own phase within an interval); unknown
/// ages are taken as recent.
fn measured_together(forward: &Cell, reverse: &Cell, view: &View) -> bool {
    match (forward.age_ms, reverse.age_ms) {
        (Some(forward), Some(reverse)) => reverse <= forward + view.policy.interval_ms,
        _ => true,
    }
}

fn path(from: &str, to: &str) -> Path {
    Path {
        from: from.to_owned(),
        to: to.to_owned(),
    }
}
