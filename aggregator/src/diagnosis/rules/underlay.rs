//! `underlay-broken`: a node that neither the other nodes' host-network
//! agents nor their pods reach. The pod network rides on the underlay, so
//! this explains that node's pod findings and its agents' silence (they
//! reach the aggregator over the same link).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use netmatrix_api::{Cell, FindingKind, NetworkMode};

use super::{Tally, View, broken_cells, capped, describe_cell, is_broken};
use crate::diagnosis::{Condition, Subject};

/// Per Ready node X: every known host-network cell into X is broken, every
/// known pod cell into X too, the host agents that fail to reach X reach
/// the other nodes, and X's own host row (if it reports) fails outwards.
/// Host cells failing while pod cells to X work is ICMP filtered between
/// hosts, not a broken underlay: no finding.
pub(super) fn underlay_broken<'a>(view: &View<'a>) -> Vec<Condition> {
    let host: Vec<(&str, &Cell)> = view.cross_cells(NetworkMode::Host).collect();
    if host.is_empty() {
        return Vec::new();
    }
    let by_destination = |cells: Vec<(&'a str, &'a Cell)>| {
        let mut map: BTreeMap<&str, Vec<(&str, &Cell)>> = BTreeMap::new();
        for (from, cell) in cells {
            map.entry(&*cell.to).or_default().push((from, cell));
        }
        map
    };
    let host_to = by_destination(host.clone());
    let pod_to = by_destination(view.cross_cells(NetworkMode::Pod).collect());
    // Only nodes that nothing reaches on the host network are candidates:
    // cheap to find, and few.
    host_to
        .iter()
        .filter(|(_, cells)| cells.iter().all(|(_, c)| is_broken(c)))
        .filter_map(|(x, host_in)| {
            let pod_in = pod_to.get(x).map(Vec::as_slice).unwrap_or_default();
            judge(view, x, host_in, pod_in, &host)
        })
        .collect()
}

fn judge(
    view: &View,
    x: &str,
    host_in: &[(&str, &Cell)],
    pod_in: &[(&str, &Cell)],
    host: &[(&str, &Cell)],
) -> Option<Condition> {
    let all_broken =
        |cells: &[(&str, &Cell)]| !cells.is_empty() && cells.iter().all(|(_, c)| is_broken(c));
    if !all_broken(host_in) || !all_broken(pod_in) {
        return None;
    }
    // The sources themselves are fine: they reach the other nodes.
    let sources: BTreeSet<&str> = host_in.iter().map(|(from, _)| *from).collect();
    let elsewhere = Tally::of(
        host.iter()
            .filter(|(from, c)| sources.contains(from) && *c.to != *x)
            .map(|(_, c)| *c),
    );
    if elsewhere.known() > 0 && !elsewhere.mostly_reachable() {
        return None;
    }
    let host_out = Tally::of(host.iter().filter(|(from, _)| *from == x).map(|(_, c)| *c));
    if host_out.known() > 0 && !host_out.nearly_all_broken() {
        return None;
    }

    let mut evidence = Vec::new();
    let silent = |network| view.row(network, x).is_none_or(|r| !r.reporting);
    if silent(NetworkMode::Pod) && silent(NetworkMode::Host) {
        let age = view
            .row(NetworkMode::Host, x)
            .and_then(|r| r.report_age_ms)
            .or_else(|| view.row(NetworkMode::Pod, x).and_then(|r| r.report_age_ms));
        evidence.push(match age {
            Some(ms) => format!(
                "{x}: its agents do not report (last report {} ago)",
                humantime::format_duration(Duration::from_secs((ms / 1000.0) as u64))
            ),
            None => format!("{x}: its agents do not report"),
        });
    }
    evidence.extend(
        host_in
            .iter()
            .map(|(from, c)| format!("host network: {}", describe_cell(from, c))),
    );
    evidence.extend(
        broken_cells(host.iter().copied().filter(|(from, _)| *from == x))
            .into_iter()
            .map(|line| format!("host network: {line}")),
    );
    evidence.extend(
        pod_in
            .iter()
            .map(|(from, c)| format!("pod network: {}", describe_cell(from, c))),
    );
    Some(Condition::new(
        FindingKind::UnderlayBroken,
        Subject::Node(x.to_owned()),
        vec![x.to_owned()],
        format!(
            "{x} is unreachable from the other nodes on the node network itself ({} of {} host-network probes to {x} failed), so its pods are cut off too: the underlay, not the CNI",
            host_in.len(),
            host_in.len()
        ),
        capped(evidence),
        format!(
            "check {x}'s node network: its link and address (ip link show; ip addr), its route to the other nodes (ip route get <other node IP>), and what sits between the nodes (switch, VPC routes, security groups); the pod network will recover with it"
        ),
    ))
}
