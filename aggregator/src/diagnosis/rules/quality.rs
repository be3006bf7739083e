//! Paths that work, but badly, judged over the window of recent rounds
//! (one round has about six echoes per cell: too few to call loss):
//!
//! - `packet-loss`: at least `--loss-threshold` of the echoes lost over the
//!   window, with partial loss (some echoes of a pod lost, some answered) in
//!   at least [`MIN_LOSSY_ROUNDS`] rounds. Rounds in which a pod answered
//!   nothing are outages, left out: a pod that went away or a path that
//!   broke and healed is not a lossy path;
//! - `mtu-mismatch`: small echoes answered, large Don't-Fragment echoes
//!   failed this round and at least half lost over the window, on a path
//!   that does not lose small echoes (random loss also takes large ones:
//!   that is `packet-loss`);
//! - `high-latency`: mean RTT over the window above `--latency-floor` and
//!   [`LATENCY_FACTOR`] times the cluster's typical RTT (its first quartile:
//!   one slow node touches most paths of a small cluster, so the median
//!   would be slow itself).
//!
//! Flagged paths are then blamed on a node when that node touches most of
//! its paths' trouble while other paths are clean (one finding per node),
//! else reported per node pair.

use std::collections::{BTreeMap, BTreeSet};

use netmatrix_api::{Cell, FindingKind, NetworkMode, Path, Status};

use super::{Components, View, capped, describe_cell, is_broken};
use crate::diagnosis::{Condition, Subject};
use crate::history::PathWindow;

/// Rounds of the window that must show partial loss.
pub const MIN_LOSSY_ROUNDS: usize = 3;
/// Large echoes lost over the window, for `mtu-mismatch`.
const MTU_WINDOW_LOSS: f64 = 0.5;
/// `high-latency`: this many times the cluster's typical RTT.
pub const LATENCY_FACTOR: f64 = 10.0;
/// `high-latency`: rounds with an RTT in the window, and paths for a baseline.
const MIN_RTT_ROUNDS: usize = 3;
const MIN_PATHS_FOR_BASELINE: usize = 4;

/// A flagged directed path and the evidence line saying why.
struct Flagged<'a> {
    from: &'a str,
    to: &'a str,
    line: String,
}

pub(super) fn diagnose(
    view: &View,
    cut_off: &BTreeSet<&str>,
    components: &Components,
) -> Vec<Condition> {
    // Candidate paths: known, not broken, between nodes of one group.
    let candidates: Vec<(&str, &Cell, Option<&PathWindow>)> = view
        .known_with_windows(NetworkMode::Pod)
        .filter(|(from, c, _)| *from != c.to)
        .filter(|(from, c, _)| !cut_off.contains(from) && !cut_off.contains(c.to.as_str()))
        .filter(|(from, c, _)| components.of.is_empty() || components.same(from, &c.to))
        .filter(|(_, c, _)| !is_broken(c))
        .collect();
    let known: Vec<(&str, &str)> = candidates
        .iter()
        .map(|(f, c, _)| (*f, c.to.as_str()))
        .collect();

    let mut out = Vec::new();
    let kinds: [(FindingKind, Vec<Flagged>); 3] = [
        (
            FindingKind::MtuMismatch,
            mtu_flags(&candidates, view.policy.loss_threshold),
        ),
        (
            FindingKind::PacketLoss,
            loss_flags(&candidates, view.policy.loss_threshold),
        ),
        (
            FindingKind::HighLatency,
            latency_flags(&candidates, view.policy.latency_floor_ms),
        ),
    ];
    for (kind, flagged) in kinds {
        out.extend(attribute(kind, &flagged, &known));
    }
    out
}

fn loss_flags<'a>(
    candidates: &[(&'a str, &'a Cell, Option<&PathWindow>)],
    threshold: f64,
) -> Vec<Flagged<'a>> {
    candidates
        .iter()
        .filter_map(|&(from, cell, window)| {
            let w = window?;
            let loss = w.loss()?;
            (w.partial_rounds >= MIN_LOSSY_ROUNDS && loss >= threshold).then(|| Flagged {
                from,
                to: &cell.to,
                line: format!(
                    "{from} -> {}: {:.0}% of {} echoes lost over the last {} rounds (partial loss in {} of them); this round {}",
                    cell.to,
                    loss * 100.0,
                    w.sent,
                    w.rounds,
                    w.partial_rounds,
                    this_round(from, cell)
                ),
            })
        })
        .collect()
}

fn mtu_flags<'a>(
    candidates: &[(&'a str, &'a Cell, Option<&PathWindow>)],
    loss_threshold: f64,
) -> Vec<Flagged<'a>> {
    candidates
        .iter()
        .filter(|(_, cell, _)| {
            cell.mtu == Some(Status::Failed)
                && matches!(cell.status, Status::Ok | Status::Degraded)
        })
        .filter_map(|&(from, cell, window)| {
            let window_loss = window.and_then(PathWindow::mtu_loss);
            if window_loss.is_some_and(|l| l < MTU_WINDOW_LOSS) {
                return None;
            }
            if window
                .and_then(PathWindow::loss)
                .is_some_and(|l| l >= loss_threshold)
            {
                return None;
            }
            let over = match (window, window_loss) {
                (Some(w), Some(l)) => format!(", {:.0}% over the last {} rounds", l * 100.0, w.rounds),
                _ => String::new(),
            };
            let error = cell
                .last_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            Some(Flagged {
                from,
                to: &cell.to,
                line: format!(
                    "{from} -> {}: small echoes {}, large Don't-Fragment echoes failed{over}{error}",
                    cell.to, cell.status
                ),
            })
        })
        .collect()
}

fn latency_flags<'a>(
    candidates: &[(&'a str, &'a Cell, Option<&PathWindow>)],
    floor_ms: f64,
) -> Vec<Flagged<'a>> {
    let rtts: Vec<(&str, &Cell, f64)> = candidates
        .iter()
        .filter_map(|&(from, cell, window)| {
            let w = window.filter(|w| w.rtt_rounds >= MIN_RTT_ROUNDS)?;
            Some((from, cell, w.rtt_avg_ms?))
        })
        .collect();
    if rtts.len() < MIN_PATHS_FOR_BASELINE {
        return Vec::new();
    }
    let mut sorted: Vec<f64> = rtts.iter().map(|(_, _, r)| *r).collect();
    sorted.sort_by(f64::total_cmp);
    let typical = sorted[sorted.len() / 4];
    rtts.into_iter()
        .filter(|(_, _, rtt)| *rtt >= floor_ms && *rtt >= LATENCY_FACTOR * typical)
        .map(|(from, cell, rtt)| Flagged {
            from,
            to: &cell.to,
            line: format!(
                "{from} -> {}: mean RTT {rtt:.1} ms over the window, {typical:.2} ms on the cluster's fast paths",
                cell.to
            ),
        })
        .collect()
}

fn this_round(from: &str, cell: &Cell) -> String {
    let line = describe_cell(from, cell);
    // "from -> to: status..." without the repeated path.
    match line.split_once(": ") {
        Some((_, rest)) => rest.to_owned(),
        None => line,
    }
}

/// Blames flagged paths on nodes, greedily: the node touching most of the
/// remaining flagged paths (at least two) is blamed when at least half of
/// its known paths are flagged and some path not touching it is clean (with
/// two nodes nothing is clean elsewhere: no blame). What no node explains
/// is reported per node pair.
fn attribute(kind: FindingKind, flagged: &[Flagged], known: &[(&str, &str)]) -> Vec<Condition> {
    let is_flagged: BTreeSet<(&str, &str)> = flagged.iter().map(|f| (f.from, f.to)).collect();
    let touches = |n: &str, (a, b): (&str, &str)| a == n || b == n;
    let mut residual: Vec<&Flagged> = flagged.iter().collect();
    let mut out = Vec::new();
    loop {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &residual {
            *counts.entry(f.from).or_default() += 1;
            *counts.entry(f.to).or_default() += 1;
        }
        let mut ranked: Vec<(&str, usize)> = counts.into_iter().filter(|(_, n)| *n >= 2).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let blamed = ranked.into_iter().map(|(n, _)| n).find(|&n| {
            let mine: Vec<_> = known.iter().filter(|p| touches(n, **p)).collect();
            let mine_flagged = mine.iter().filter(|p| is_flagged.contains(p)).count();
            let clean_elsewhere = known
                .iter()
                .any(|p| !touches(n, *p) && !is_flagged.contains(p));
            2 * mine_flagged >= mine.len() && clean_elsewhere
        });
        let Some(node) = blamed else { break };
        let (mine, rest): (Vec<&Flagged>, Vec<&Flagged>) = residual
            .into_iter()
            .partition(|f| touches(node, (f.from, f.to)));
        residual = rest;
        out.push(node_condition(kind, node, &mine));
    }
    let mut by_pair: BTreeMap<(&str, &str), Vec<&Flagged>> = BTreeMap::new();
    for f in residual {
        let key = if f.from <= f.to {
            (f.from, f.to)
        } else {
            (f.to, f.from)
        };
        by_pair.entry(key).or_default().push(f);
    }
    out.extend(
        by_pair
            .into_iter()
            .map(|((a, b), paths)| pair_condition(kind, a, b, &paths)),
    );
    out
}

fn paths_of(flagged: &[&Flagged]) -> Vec<Path> {
    flagged
        .iter()
        .map(|f| Path {
            from: f.from.to_owned(),
            to: f.to.to_owned(),
        })
        .collect()
}

fn node_condition(kind: FindingKind, node: &str, flagged: &[&Flagged]) -> Condition {
    let (summary, hint) = texts(kind, node, flagged.len());
    Condition::new(
        kind,
        Subject::Node(node.to_owned()),
        vec![node.to_owned()],
        summary,
        capped(flagged.iter().map(|f| f.line.clone()).collect()),
        hint,
    )
    .with_paths(paths_of(flagged))
}

fn pair_condition(kind: FindingKind, a: &str, b: &str, flagged: &[&Flagged]) -> Condition {
    let (summary, hint) = texts(kind, &format!("{a} and {b}"), flagged.len());
    Condition::new(
        kind,
        Subject::pair(a, b),
        vec![a.to_owned(), b.to_owned()],
        summary,
        flagged.iter().map(|f| f.line.clone()).collect(),
        hint,
    )
    .with_paths(paths_of(flagged))
}

/// Summary and hint of a quality finding about `who` (a node, or "A and B").
fn texts(kind: FindingKind, who: &str, paths: usize) -> (String, String) {
    match kind {
        FindingKind::PacketLoss => (
            format!(
                "pod traffic to and from {who} loses packets ({paths} path(s) over the last rounds), though it gets through"
            ),
            format!(
                "check {who}'s interfaces for drops and errors (ip -s link show eth0; ip -s link show flannel.1; ethtool -S eth0), a saturated or flapping link, conntrack table full (dmesg | grep conntrack), and the CNI agent's logs"
            ),
        ),
        FindingKind::MtuMismatch => (
            format!(
                "small packets to and from {who} pass but full-size ones with Don't Fragment are lost ({paths} path(s)): an MTU mismatch"
            ),
            format!(
                "compare MTUs on {who} and the other nodes (ip link show eth0; ip -d link show flannel.1; calico: vxlan.calico/tunl0, cilium: cilium_vxlan): the overlay device must be the underlay MTU minus its overhead (VXLAN 50 bytes, IP-in-IP 20, WireGuard 60) and pods' eth0 no larger (calico veth_mtu, cilium --mtu); look for firewall rules matching packet length (iptables -S | grep length)"
            ),
        ),
        _ => (
            format!(
                "pod traffic to and from {who} is much slower than the rest of the cluster ({paths} path(s))"
            ),
            format!(
                "check {who}'s load and links: CPU steal and saturation (top, vmstat), interface queues and errors (ip -s link; tc -s qdisc), and the path between the nodes"
            ),
        ),
    }
}
