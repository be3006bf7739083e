//! Paths that carry some protocols and drop others: filtered, not broken.
//!
//! Agents probe each peer pod over ICMP, TCP (a connect to its port) and
//! UDP (an echo on the same port number). A path on which one protocol
//! fails while another gets through works for the applications that use
//! the other: a firewall, a cloud security group or a NetworkPolicy is
//! dropping one protocol. The matrix already counts such a path as
//! reaching (its status is the best protocol's), so no path rule fires;
//! this rule names the protocol dropped, as information, never a page:
//!
//! - `icmp-filtered`: ICMP dropped where TCP or UDP passes (the classic: a
//!   security group without ICMP on a natively routed CNI);
//! - `tcp-filtered`: TCP dropped where ICMP or UDP passes;
//! - `udp-filtered`: UDP dropped where ICMP or TCP passes.
//!
//! One finding per protocol and source node, listing its paths (as
//! `asymmetric-path` does): a finding is raised once the same node's paths
//! showed the filter for the rounds the hysteresis asks, which random
//! loss elsewhere in the cluster cannot fake. Paths of a lossy node are not
//! judged: random loss takes a TCP handshake or a UDP echo now and then,
//! and one of each a round is all a path gets.
//! A refusal (reset, port unreachable) crossed the path: it is no filter.

use std::collections::{BTreeMap, BTreeSet};

use netmatrix_api::{Cell, FindingKind, NetworkMode, Path, Status};

use super::{View, capped};
use crate::diagnosis::{Condition, Subject};
use crate::history::PathWindow;

/// The protocols a path may filter, in the order a finding names them.
const PROTOCOLS: [(FindingKind, &str); 3] = [
    (FindingKind::IcmpFiltered, "ICMP"),
    (FindingKind::TcpFiltered, "TCP"),
    (FindingKind::UdpFiltered, "UDP"),
];

fn statuses(c: &Cell) -> [Option<Status>; 3] {
    [c.icmp, c.tcp, c.udp]
}

/// The protocols failing on a path that some other protocol crosses.
fn dropped(c: &Cell) -> Vec<usize> {
    let s = statuses(c);
    let through = s.iter().flatten().any(|s| *s == Status::Ok);
    if !through {
        return Vec::new();
    }
    (0..3).filter(|&i| s[i] == Some(Status::Failed)).collect()
}

pub(super) fn diagnose(view: &View, cut_off: &BTreeSet<&str>) -> Vec<Condition> {
    // Random loss at a node takes the one TCP handshake or UDP echo a path
    // gets a round on any of its paths, also where the path's own ICMP
    // echoes came through clean this time: a node losing echoes anywhere,
    // this round or over the window, is not judged for filters (a filter
    // drops every probe of its protocol; loss is the quality rules').
    let mut lossy = view.lossy_nodes();
    for (from, cell, window) in view.known_with_windows(NetworkMode::Pod) {
        if window.and_then(PathWindow::loss).is_some_and(|l| l > 0.0) {
            lossy.extend([from, &*cell.to]);
        }
    }
    // Per protocol and source node: the paths that drop it, with the cell.
    let mut by_protocol: BTreeMap<(usize, &str), Vec<(&str, &Cell)>> = BTreeMap::new();
    for (from, cell) in view.known_cells(NetworkMode::Pod) {
        if cut_off.contains(from) || cut_off.contains(&*cell.to) {
            continue;
        }
        // Window loss put both ends in `lossy` above.
        if lossy.contains(from) || lossy.contains(&*cell.to) {
            continue;
        }
        // A path losing some of its ICMP echoes this round that
        // `lossy_nodes` leaves out (ICMP counted failed, or nearly all
        // lost) loses TCP handshakes and UDP echoes too, at random: that is
        // loss, the quality rules' to name, not a filter.
        if cell.loss.is_some_and(|l| l > 0.0 && l < 1.0) {
            continue;
        }
        for i in dropped(cell) {
            by_protocol.entry((i, from)).or_default().push((from, cell));
        }
    }
    by_protocol
        .into_iter()
        .map(|((i, from), paths)| condition(i, from, &paths))
        .collect()
}

fn condition(i: usize, from: &str, paths: &[(&str, &Cell)]) -> Condition {
    let (kind, protocol) = PROTOCOLS[i];
    let nodes: BTreeSet<&str> = paths.iter().flat_map(|(from, c)| [*from, &*c.to]).collect();
    let evidence = paths
        .iter()
        .map(|(from, c)| {
            let other: Vec<String> = PROTOCOLS
                .iter()
                .zip(statuses(c))
                .filter_map(|((_, name), s)| s.map(|s| format!("{name} {s}")))
                .collect();
            let mut line = format!("{from} -> {}: {}", c.to, other.join(", "));
            if i == 0
                && let Some(e) = &c.last_error
            {
                line += &format!(" ({e})");
            }
            line
        })
        .collect();
    let tos: Vec<&str> = paths.iter().map(|(_, c)| &*c.to).collect();
    let summary = format!(
        "{protocol} from {from}'s pods to the pods of {} is dropped, while other protocols cross: filtered, not broken",
        tos.join(", ")
    );
    let hint = format!(
        "applications using other protocols work; something filters {protocol} on these paths: a firewall or cloud security group between the nodes (natively routed CNIs carry pod addresses on the underlay), a NetworkPolicy selecting the pods, or host rules (iptables -S; nft list ruleset). Allow {protocol} between the pod CIDRs if it should pass"
    );
    Condition::new(
        kind,
        Subject::Node(from.to_owned()),
        nodes.iter().map(|n| (*n).to_owned()).collect(),
        summary,
        capped(evidence),
        hint,
    )
    .with_paths(
        paths
            .iter()
            .map(|(from, c)| Path {
                from: (*from).to_owned(),
                to: c.to.to_string(),
            })
            .collect(),
    )
}
