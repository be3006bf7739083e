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
//! Flagged paths are then attributed to the nodes that explain them
//! ([`localize`](super::localize)): one finding per blamed node, else per
//! node pair. And the layer: the host-network agents measure the same
//! nodes node to node. When a blamed node's host paths suffer the same way
//! (or a pair's host path does), the fault is in the node network or the
//! underlay, not the pod network, and the finding says so. The host paths
//! only tell the layer of a fault the pod paths established, so their loss
//! needs no [`MIN_LOSSY_ROUNDS`]: a host agent sends fewer echoes per path
//! (one address per node, not every pod), and the threshold over the
//! window is the measure.

use std::collections::{BTreeMap, BTreeSet};

use netmatrix_api::{Cell, FindingKind, NetworkMode, Path, Status};

use super::localize::{PathVote, localize};
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

/// One candidate path as a rule judged it.
struct Judged {
    /// Why it is flagged, when it is.
    line: Option<String>,
    /// It showed the trouble at all over the window.
    tainted: bool,
}

type Candidate<'a> = (&'a str, &'a Cell, Option<&'a PathWindow>);

pub(super) fn diagnose(
    view: &View,
    cut_off: &BTreeSet<&str>,
    components: &Components,
) -> Vec<Condition> {
    let candidates = |network| -> Vec<Candidate> {
        // Known, not broken, between nodes of one group.
        view.known_with_windows(network)
            .filter(|(from, c, _)| **from != *c.to)
            .filter(|(from, c, _)| !cut_off.contains(from) && !cut_off.contains(&*c.to))
            .filter(|(from, c, _)| components.of.is_empty() || components.same(from, &c.to))
            .filter(|(_, c, _)| !is_broken(c))
            .collect()
    };
    let pod = candidates(NetworkMode::Pod);
    let host = candidates(NetworkMode::Host);
    let policy = view.policy;
    let judge = |kind, paths: &[Candidate]| match kind {
        FindingKind::MtuMismatch => mtu_flags(paths, policy.loss_threshold),
        FindingKind::PacketLoss => loss_flags(paths, policy.loss_threshold, MIN_LOSSY_ROUNDS),
        _ => latency_flags(paths, policy.latency_floor_ms),
    };
    let judge_host = |kind, paths: &[Candidate]| match kind {
        FindingKind::PacketLoss => loss_flags(paths, policy.loss_threshold, 1),
        _ => judge(kind, paths),
    };

    let mut out = Vec::new();
    for kind in [
        FindingKind::MtuMismatch,
        FindingKind::PacketLoss,
        FindingKind::HighLatency,
    ] {
        let judged = judge(kind, &pod);
        if judged.iter().all(|j| j.line.is_none()) {
            continue;
        }
        let host_judged = judge_host(kind, &host);
        let host_layer = HostLayer::new(&host, &host_judged);
        out.extend(attribute(kind, &pod, &judged, &host_layer));
    }
    out
}

/// Paths that lost at least `threshold` of their echoes over the window,
/// with partial loss in at least `min_rounds` rounds.
fn loss_flags(candidates: &[Candidate], threshold: f64, min_rounds: usize) -> Vec<Judged> {
    candidates
        .iter()
        .map(|&(from, cell, window)| {
            let loss = window.and_then(PathWindow::loss);
            let tainted = loss.is_some_and(|l| l > 0.0);
            let line = window
                .zip(loss)
                .filter(|(w, loss)| usize::from(w.partial_rounds) >= min_rounds && *loss >= threshold)
                .map(|(w, loss)| {
                    format!(
                        "{from} -> {}: {:.0}% of {} echoes lost over the last {} rounds (partial loss in {} of them); this round {}",
                        cell.to,
                        loss * 100.0,
                        w.sent,
                        w.rounds,
                        w.partial_rounds,
                        this_round(from, cell)
                    )
                });
            Judged { line, tainted }
        })
        .collect()
}

fn mtu_flags(candidates: &[Candidate], loss_threshold: f64) -> Vec<Judged> {
    candidates
        .iter()
        .map(|&(from, cell, window)| {
            let window_loss = window.and_then(PathWindow::mtu_loss);
            let tainted =
                cell.mtu == Some(Status::Failed) || window_loss.is_some_and(|l| l > 0.0);
            let small_fine = matches!(cell.status, Status::Ok | Status::Degraded);
            let flagged = cell.mtu == Some(Status::Failed)
                && small_fine
                && !window_loss.is_some_and(|l| l < MTU_WINDOW_LOSS)
                // Random loss also takes large echoes: that is packet-loss.
                && !window
                    .and_then(PathWindow::loss)
                    .is_some_and(|l| l >= loss_threshold);
            let line = flagged.then(|| {
                let over = match (window, window_loss) {
                    (Some(w), Some(l)) => {
                        format!(", {:.0}% over the last {} rounds", l * 100.0, w.rounds)
                    }
                    _ => String::new(),
                };
                let error = cell
                    .last_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                format!(
                    "{from} -> {}: small echoes {}, large Don't-Fragment echoes failed{over}{error}",
                    cell.to, cell.status
                )
            });
            Judged { line, tainted }
        })
        .collect()
}

fn latency_flags(candidates: &[Candidate], floor_ms: f64) -> Vec<Judged> {
    let rtt = |window: Option<&PathWindow>| {
        window
            .filter(|w| usize::from(w.rtt_rounds) >= MIN_RTT_ROUNDS)
            .and_then(|w| w.rtt_avg_ms)
            .map(f64::from)
    };
    let mut rtts: Vec<f64> = candidates.iter().filter_map(|(_, _, w)| rtt(*w)).collect();
    if rtts.len() < MIN_PATHS_FOR_BASELINE {
        return candidates
            .iter()
            .map(|_| Judged {
                line: None,
                tainted: false,
            })
            .collect();
    }
    // The first quartile, without sorting a quarter of a million RTTs.
    let quartile = rtts.len() / 4;
    let (_, &mut typical, _) = rtts.select_nth_unstable_by(quartile, f64::total_cmp);
    candidates
        .iter()
        .map(|&(from, cell, window)| {
            let slow = rtt(window).filter(|r| *r >= floor_ms && *r >= LATENCY_FACTOR * typical);
            Judged {
                line: slow.map(|rtt| {
                    format!(
                        "{from} -> {}: mean RTT {rtt:.1} ms over the window, {typical:.2} ms on the cluster's fast paths",
                        cell.to
                    )
                }),
                tainted: slow.is_some(),
            }
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

/// The host-network paths of the same rule, to tell the layer.
struct HostLayer<'a> {
    /// Per node: known host paths touching it, and how many are flagged.
    by_node: BTreeMap<&'a str, (usize, usize)>,
    /// Flagged host paths, directed, with their evidence lines.
    flagged: BTreeMap<(&'a str, &'a str), String>,
}

impl<'a> HostLayer<'a> {
    fn new(paths: &[Candidate<'a>], judged: &[Judged]) -> Self {
        let mut layer = HostLayer {
            by_node: BTreeMap::new(),
            flagged: BTreeMap::new(),
        };
        for ((from, cell, _), j) in paths.iter().zip(judged) {
            for node in [*from, &*cell.to] {
                let e = layer.by_node.entry(node).or_default();
                e.0 += 1;
                e.1 += usize::from(j.line.is_some());
            }
            if let Some(line) = &j.line {
                layer
                    .flagged
                    .insert((*from, &*cell.to), format!("host network: {line}"));
            }
        }
        layer
    }

    /// Most of `node`'s host paths suffer too: the node network.
    fn node_suffers(&self, node: &str) -> bool {
        self.by_node
            .get(node)
            .is_some_and(|(known, flagged)| *known > 0 && 2 * flagged >= *known)
    }

    fn pair_suffers(&self, a: &str, b: &str) -> bool {
        self.flagged.contains_key(&(a, b)) || self.flagged.contains_key(&(b, a))
    }

    /// Up to three of the flagged host lines touching `nodes`.
    fn lines_about(&self, nodes: &[&str]) -> Vec<String> {
        self.flagged
            .iter()
            .filter(|((from, to), _)| nodes.contains(from) || nodes.contains(to))
            .take(3)
            .map(|(_, line)| line.clone())
            .collect()
    }
}

/// Attributes the flagged pod paths to nodes or pairs ([`localize`]) and
/// tells the layer from the host paths.
fn attribute(
    kind: FindingKind,
    paths: &[Candidate],
    judged: &[Judged],
    host: &HostLayer,
) -> Vec<Condition> {
    let votes: Vec<PathVote> = paths
        .iter()
        .zip(judged)
        .map(|((from, cell, _), j)| PathVote {
            from,
            to: &cell.to,
            flagged: j.line.is_some(),
            tainted: j.tainted,
        })
        .collect();
    let localized = localize(&votes);
    let flagged_of = |indices: &[usize]| -> Vec<Flagged> {
        indices
            .iter()
            .filter_map(|&i| {
                let (from, cell, _) = paths[i];
                judged[i].line.clone().map(|line| Flagged {
                    from,
                    to: &cell.to,
                    line,
                })
            })
            .collect()
    };
    let mut out = Vec::new();
    for (node, indices) in &localized.nodes {
        let layer = Layer::of(host.node_suffers(node), host.lines_about(&[node]));
        out.push(node_condition(kind, node, &flagged_of(indices), layer));
    }
    for ((a, b), indices) in &localized.pairs {
        let layer = Layer::of(host.pair_suffers(a, b), host.lines_about(&[a, b]));
        out.push(pair_condition(kind, a, b, &flagged_of(indices), layer));
    }
    out
}

/// Where the trouble is: only the pod network, or the node network too.
enum Layer {
    Pod,
    /// The host-network paths suffer too; their evidence lines.
    Node(Vec<String>),
}

impl Layer {
    fn of(host_suffers: bool, lines: Vec<String>) -> Layer {
        if host_suffers {
            Layer::Node(lines)
        } else {
            Layer::Pod
        }
    }
}

fn paths_of(flagged: &[Flagged]) -> Vec<Path> {
    flagged
        .iter()
        .map(|f| Path {
            from: f.from.to_owned(),
            to: f.to.to_owned(),
        })
        .collect()
}

fn node_condition(kind: FindingKind, node: &str, flagged: &[Flagged], layer: Layer) -> Condition {
    let (summary, hint) = texts(kind, node, flagged.len(), &layer);
    let mut evidence: Vec<String> = flagged.iter().map(|f| f.line.clone()).collect();
    if let Layer::Node(lines) = layer {
        evidence.splice(0..0, lines);
    }
    Condition::new(
        kind,
        Subject::Node(node.to_owned()),
        vec![node.to_owned()],
        summary,
        capped(evidence),
        hint,
    )
    .with_paths(paths_of(flagged))
}

fn pair_condition(
    kind: FindingKind,
    a: &str,
    b: &str,
    flagged: &[Flagged],
    layer: Layer,
) -> Condition {
    let (summary, hint) = texts(kind, &format!("{a} and {b}"), flagged.len(), &layer);
    let mut evidence: Vec<String> = flagged.iter().map(|f| f.line.clone()).collect();
    if let Layer::Node(lines) = layer {
        evidence.splice(0..0, lines);
    }
    Condition::new(
        kind,
        Subject::pair(a, b),
        vec![a.to_owned(), b.to_owned()],
        summary,
        capped(evidence),
        hint,
    )
    .with_paths(paths_of(flagged))
}

/// Summary and hint of a quality finding about `who` (a node, or "A and B").
fn texts(kind: FindingKind, who: &str, paths: usize, layer: &Layer) -> (String, String) {
    let node_network = matches!(layer, Layer::Node(_));
    match (kind, node_network) {
        (FindingKind::PacketLoss, false) => (
            format!(
                "pod traffic to and from {who} loses packets ({paths} path(s) over the last rounds), though it gets through, while the node network between the same nodes is clean: the pod network"
            ),
            format!(
                "check {who}'s pod network: the overlay device and the pods' bridge for drops (ip -s link show flannel.1; ip -s link show cni0), conntrack table full (dmesg | grep conntrack), filters matching the overlay (iptables -S | grep -e statistic -e 8472), and the CNI agent's logs"
            ),
        ),
        (FindingKind::PacketLoss, true) => (
            format!(
                "traffic to and from {who} loses packets on the node network itself ({paths} pod path(s), and the host-network paths as well): the node's network or the underlay, not the pod network"
            ),
            format!(
                "check {who}'s node network: its NIC and link for drops and errors (ip -s link show eth0; ethtool -S eth0; dmesg), a saturated or flapping link, the switch port, and the path between the nodes (VPC, security groups, firewalls on eth0); the pod network rides on it and will recover with it"
            ),
        ),
        (FindingKind::MtuMismatch, false) => (
            format!(
                "small packets to and from {who} pass but full-size ones with Don't Fragment are lost ({paths} path(s)), while the node network passes them: an MTU mismatch in the pod network"
            ),
            format!(
                "compare MTUs on {who} and the other nodes (ip -d link show flannel.1; calico: vxlan.calico/tunl0, cilium: cilium_vxlan; the pods' eth0): the overlay device must be the underlay MTU minus its overhead (VXLAN 50 bytes, IP-in-IP 20, WireGuard 60) and pods' eth0 no larger (calico veth_mtu, cilium --mtu); look for firewall rules matching packet length (iptables -S | grep length)"
            ),
        ),
        (FindingKind::MtuMismatch, true) => (
            format!(
                "full-size packets with Don't Fragment to and from {who} are lost on the node network itself ({paths} pod path(s), and the host-network paths as well): the underlay's MTU, not the overlay's"
            ),
            format!(
                "compare the node network's MTU on {who} and along the path (ip link show eth0 on each node; tracepath <other node IP>): a link, tunnel or VPN between the nodes with a smaller MTU, or ICMP \"fragmentation needed\" filtered on the way; lower the underlay-facing MTU consistently, then the overlay's below it"
            ),
        ),
        (_, false) => (
            format!(
                "pod traffic to and from {who} is much slower than the rest of the cluster ({paths} path(s))"
            ),
            format!(
                "check {who}'s load and links: CPU steal and saturation (top, vmstat), interface queues and errors (ip -s link; tc -s qdisc), and the path between the nodes"
            ),
        ),
        (_, true) => (
            format!(
                "traffic to and from {who} is much slower than the rest of the cluster on the node network too ({paths} pod path(s), and the host-network paths as well)"
            ),
            format!(
                "check {who}'s node: CPU steal and saturation (top, vmstat), its NIC's queues and errors (ip -s link show eth0; tc -s qdisc show dev eth0), and the path between the nodes"
            ),
        ),
    }
}
