//! The rules: which matrix signatures name which failure.
//!
//! Only diagnosable data counts: rows of reporting nodes that the API says
//! are Ready, and their cells to Ready nodes (a joining, cordoned, NotReady
//! or departed node is shown, never judged). The joining grace is for nodes
//! that join a working cluster; when no node is Ready, every node is new
//! (netmatrix or the cluster was just installed), nothing is churning, and
//! the joining nodes are judged: a CNI broken from the start is named at
//! once, which is what `netmatrix validate` after an install is for. Rules run from the lowest
//! layer up, and each layer hides what it explains in the layers above, so
//! only the root cause is named:
//!
//! 1. [`underlay`]: a node whose host-network and pod paths both fail;
//! 2. [`overlay`]: the pod network split into groups (`cross-node-broken`,
//!    `node-isolated`, `partition`);
//! 3. [`paths`]: single broken paths inside a group (`pair-broken`,
//!    `asymmetric-path`), and [`pods`]: one pod cut off while its node's
//!    other pods answer (`pod-unreachable`);
//! 4. [`quality`]: paths that work but badly, judged over the window of
//!    recent rounds (`packet-loss`, `mtu-mismatch`, `high-latency`), and
//!    [`filtered`]: paths that carry some protocols only (`icmp-filtered`,
//!    `tcp-filtered`, `udp-filtered`; information, the path works), and
//!    [`policies`]: probes a NetworkPolicy keeps out (`blocked-by-policy`;
//!    information, left out of the cells);
//! 5. [`services`] and [`dns`]: ClusterIP and DNS checks of the nodes no
//!    network finding concerns (CoreDNS and service backends sit behind
//!    the network);
//! 6. [`agents`]: silent agents on nodes the underlay does not explain.

mod agents;
mod checks;
mod dns;
mod filtered;
mod localize;
mod overlay;
mod paths;
mod pods;
mod policies;
mod quality;
mod services;
mod underlay;

use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt, HashSet};

use netmatrix_api::{
    Cell, CheckCell, FindingKind, Matrix, MatrixRow, NetworkMode, NodeState, Status,
};

use super::{Condition, Context, DiagnosisPolicy, causes};
use crate::diagnosis::CheckTargets;
use crate::history::PathWindows;
use crate::history::{PathWindow, network_slot};

/// "(Nearly) all failed": at least this share of the known cells.
const NEARLY_ALL: f64 = 0.9;
/// "Mostly fine": at least this share of the known cells reachable.
const MOSTLY: f64 = 0.5;
/// A cell is *broken* (the path is down, not lossy) when at least this
/// share of its echoes was lost this round. With the usual six echoes per
/// cell that is all of them, which random loss of 30 % does about once in
/// 1400 rounds.
const BROKEN_LOSS: f64 = 0.9;
/// Evidence lines per finding; the rest is summarised in one line.
const MAX_EVIDENCE: usize = 20;

/// Evaluates every rule on one matrix.
pub fn evaluate(matrix: &Matrix, context: &Context) -> Vec<Condition> {
    let view = View::new(matrix, context.windows, context.policy);
    let targets = context.check_targets;

    let underlay = underlay::underlay_broken(&view);
    let cut_off: BTreeSet<&str> = underlay
        .iter()
        .flat_map(|c| c.nodes.iter().map(String::as_str))
        .collect();

    let alive = overlay::Liveness {
        running: context.pod_agents_running,
    };
    let overlay = overlay::diagnose(&view, &cut_off, &alive);
    let scope = PathScope {
        cut_off: &cut_off,
        components: &overlay.components,
    };
    let paths = paths::diagnose(&view, &scope);
    let quality = quality::diagnose(&view, &cut_off, &overlay.components);
    let filtered = filtered::diagnose(&view, &cut_off);
    let blocked = policies::diagnose(&view);

    let network: Vec<&Condition> = underlay
        .iter()
        .chain(&overlay.conditions)
        .chain(&paths)
        .chain(&quality)
        .collect();
    let behind_network: BTreeSet<&str> = network
        .iter()
        .flat_map(|c| c.nodes.iter().map(String::as_str))
        .collect();
    // The pod network split across the cluster may sit between any node
    // and CoreDNS, whose node we do not know: DNS timeouts are then not a
    // DNS finding. A finding about some nodes only (one node cut off, a
    // pair, loss) leaves the others' DNS judged: a second fault must not
    // hide behind the first.
    let split = network.iter().any(|c| {
        matches!(
            c.kind,
            FindingKind::CrossNodeBroken | FindingKind::Partition
        )
    });
    let cut_nodes: Vec<&str> = network
        .iter()
        .filter(|c| {
            matches!(
                c.kind,
                FindingKind::NodeIsolated | FindingKind::UnderlayBroken
            )
        })
        .flat_map(|c| c.nodes.iter().map(String::as_str))
        .collect();
    let loss_somewhere = quality.iter().any(|c| c.kind == FindingKind::PacketLoss);
    let pods = pods::diagnose(&view, &scope);
    let suppress = Suppression {
        nodes: behind_network,
        lossy: view.lossy_nodes(),
        dns_timeouts_everywhere: split,
        cut_off: cut_nodes,
        loss_somewhere,
        pods_out_of_reach: filtered
            .iter()
            .filter(|c| c.kind == FindingKind::TcpFiltered)
            .filter_map(|c| match &c.subject {
                super::Subject::Node(from) => Some(from.as_str()),
                _ => None,
            })
            // A node that cannot reach some pod cannot reach it behind a
            // Service either.
            .chain(
                pods.iter()
                    .flat_map(|c| c.paths.iter().map(|p| p.from.as_str())),
            )
            .collect(),
    };

    // A node the underlay or the pod network cuts off is not missing an
    // agent: its agent cannot reach the aggregator, and the finding says why.
    let explained: BTreeSet<&str> = cut_off
        .iter()
        .copied()
        .chain(
            overlay
                .conditions
                .iter()
                .filter(|c| c.kind == FindingKind::NodeIsolated)
                .flat_map(|c| c.nodes.iter().map(String::as_str)),
        )
        .collect();
    let silence = agents::Silence {
        expected: context.expected,
        explained: &explained,
        down: context.agents_down,
        judge: context.judge_silence,
    };
    let mut conditions = agents::agent_missing(&view, &silence);
    conditions.extend(services::diagnose(&view, targets, &suppress));
    conditions.extend(dns::diagnose(&view, targets, &suppress));
    conditions.extend(underlay);
    conditions.extend(overlay.conditions);
    conditions.extend(paths);
    conditions.extend(pods);
    conditions.extend(quality);
    conditions.extend(filtered);
    conditions.extend(blocked);
    let knowledge = causes::Knowledge::new(context.facts, context.truth);
    causes::explain(&mut conditions, &knowledge);
    conditions
}

/// What the network findings hide from the service and DNS rules.
struct Suppression<'a> {
    /// Nodes a network finding concerns: no service or DNS finding.
    nodes: BTreeSet<&'a str>,
    /// Nodes with a cell losing echoes this round: their DNS timeouts may be
    /// lost packets (a `packet-loss` finding is still being established).
    lossy: BTreeSet<&'a str>,
    /// The pod network is split across the cluster: DNS timeouts anywhere
    /// are suspect.
    dns_timeouts_everywhere: bool,
    /// Nodes cut off (`node-isolated`, `underlay-broken`): if CoreDNS runs
    /// only there, the other nodes' DNS timeouts follow; DNS findings say so.
    cut_off: Vec<&'a str>,
    /// A `packet-loss` condition names some node: a Service backend there
    /// loses handshakes at random, so a Service timing out from some other
    /// node may be picking it.
    loss_somewhere: bool,
    /// Nodes whose TCP to some pods is filtered (`tcp-filtered`), or that
    /// cannot reach some pod (`pod-unreachable`): a Service timing out from
    /// them may be picking a backend behind the filter.
    pods_out_of_reach: BTreeSet<&'a str>,
}

/// The matrix as the rules see it.
struct View<'a> {
    matrix: &'a Matrix,
    /// Hashed: looked up for every cell.
    ready: HashSet<&'a str>,
    /// [`View::known_cells`] by network with each path's window, collected
    /// once: the rules walk them several times, and each walk checked every
    /// destination.
    known: [Vec<(&'a str, &'a Cell, Option<&'a PathWindow>)>; 2],
    policy: &'a DiagnosisPolicy,
    /// [`View::pod_tallies`], counted once: the service and the DNS rules
    /// both ask.
    pod_tallies: std::cell::OnceCell<HashMap<&'a str, Tally>>,
}

impl<'a> View<'a> {
    fn new(matrix: &'a Matrix, windows: &'a PathWindows, policy: &'a DiagnosisPolicy) -> Self {
        let fresh_install = !matrix.rows.iter().any(|r| r.state == NodeState::Ready);
        let judged = |state: NodeState| {
            state == NodeState::Ready || (fresh_install && state == NodeState::Joining)
        };
        let ready: HashSet<&str> = matrix
            .rows
            .iter()
            .filter(|r| judged(r.state))
            .map(|r| r.node.as_str())
            .collect();
        let known = |network, rows: &'a [MatrixRow]| {
            let mut known: Vec<(&'a str, &'a Cell, Option<&'a PathWindow>)> = Vec::new();
            for row in rows
                .iter()
                .filter(|r| r.reporting && ready.contains(r.node.as_str()))
            {
                let mut row_windows = windows.row_windows(network, &row.node);
                known.extend(
                    row.cells
                        .iter()
                        .filter(|c| c.status != Status::Unknown && ready.contains(&*c.to))
                        .map(|c| (row.node.as_str(), c, row_windows.find(&c.to))),
                );
            }
            known
        };
        let known = [
            known(NetworkMode::Pod, &matrix.rows),
            known(NetworkMode::Host, &matrix.host_rows),
        ];
        View {
            matrix,
            ready,
            known,
            policy,
            pod_tallies: std::cell::OnceCell::new(),
        }
    }

    fn is_ready(&self, node: &str) -> bool {
        self.ready.contains(node)
    }

    /// Rows are in `Matrix::nodes` order (sorted).
    fn row(&self, network: NetworkMode, node: &str) -> Option<&'a MatrixRow> {
        let rows = self.matrix.rows_of(network);
        rows.binary_search_by(|r| r.node.as_str().cmp(node))
            .ok()
            .map(|i| &rows[i])
    }

    /// The known cell `from -> to` of a judged row, as [`View::known_cells`]
    /// would yield it (cells are sorted by destination).
    fn known_cell(&self, network: NetworkMode, from: &str, to: &str) -> Option<&'a Cell> {
        let row = self
            .row(network, from)
            .filter(|r| r.reporting && self.is_ready(&r.node))?;
        let i = row.cells.binary_search_by(|c| (*c.to).cmp(to)).ok()?;
        Some(&row.cells[i]).filter(|c| c.status != Status::Unknown && self.is_ready(&c.to))
    }

    /// Rows whose data is judged: reporting, from a Ready node.
    fn judged_rows<'s>(
        &'s self,
        network: NetworkMode,
    ) -> impl Iterator<Item = &'a MatrixRow> + use<'a, 's> {
        self.matrix
            .rows_of(network)
            .iter()
            .filter(move |r| r.reporting && self.is_ready(&r.node))
    }

    /// Known cells of judged rows to Ready nodes, as `(from, cell)`.
    fn known_cells<'s>(
        &'s self,
        network: NetworkMode,
    ) -> impl Iterator<Item = (&'a str, &'a Cell)> + use<'a, 's> {
        self.known_with_windows(network)
            .map(|(from, c, _)| (from, c))
    }

    /// [`View::known_cells`] with each path's window over the last rounds.
    fn known_with_windows<'s>(
        &'s self,
        network: NetworkMode,
    ) -> impl Iterator<Item = (&'a str, &'a Cell, Option<&'a PathWindow>)> + use<'a, 's> {
        self.known[network_slot(network)].iter().copied()
    }

    fn cross_cells<'s>(
        &'s self,
        network: NetworkMode,
    ) -> impl Iterator<Item = (&'a str, &'a Cell)> + use<'a, 's> {
        self.known_cells(network)
            .filter(|(from, c)| **from != *c.to)
    }

    /// Pod cells touching each node (row and column, same-node included).
    fn pod_tallies(&self) -> &HashMap<&'a str, Tally> {
        self.pod_tallies.get_or_init(|| self.count_pod_tallies())
    }

    fn count_pod_tallies(&self) -> HashMap<&'a str, Tally> {
        let mut tallies: HashMap<&str, Tally> = HashMap::new();
        for (from, cell) in self.known_cells(NetworkMode::Pod) {
            let t = Tally::of([cell]);
            for node in [from, &*cell.to] {
                let entry = tallies.entry(node).or_default();
                entry.reachable += t.reachable;
                entry.broken += t.broken;
                if *from == *cell.to {
                    break; // a same-node cell counts once
                }
            }
        }
        tallies
    }

    /// Nodes touching a pod cross-node cell that lost some (not all) of its
    /// echoes this round. A path that is down is a network finding's, not
    /// loss on every node that probes it.
    fn lossy_nodes(&self) -> BTreeSet<&'a str> {
        self.cross_cells(NetworkMode::Pod)
            .filter(|(_, c)| {
                // ICMP filtered is not loss.
                c.loss.is_some_and(|l| l > 0.0) && !is_broken(c) && c.icmp != Some(Status::Failed)
            })
            .flat_map(|(from, c)| [from, &*c.to])
            .collect()
    }
}

/// The path is down this round (not merely lossy).
fn is_broken(cell: &Cell) -> bool {
    cell.status == Status::Failed && cell.loss.is_none_or(|l| l >= BROKEN_LOSS)
}

/// Known and not down: at least some echoes came back.
fn is_reaching(cell: &Cell) -> bool {
    cell.status != Status::Unknown && !is_broken(cell)
}

/// Counts of known cells.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    reachable: usize,
    broken: usize,
}

impl Tally {
    fn of<'c>(cells: impl IntoIterator<Item = &'c Cell>) -> Tally {
        let mut t = Tally::default();
        for cell in cells {
            if is_broken(cell) {
                t.broken += 1;
            } else if cell.status != Status::Unknown {
                t.reachable += 1;
            }
        }
        t
    }

    fn known(self) -> usize {
        self.reachable + self.broken
    }

    fn nearly_all_broken(self) -> bool {
        self.known() > 0 && self.broken as f64 >= NEARLY_ALL * self.known() as f64
    }

    fn mostly_reachable(self) -> bool {
        self.known() > 0 && self.reachable as f64 >= MOSTLY * self.known() as f64
    }
}

fn describe_cell(from: &str, cell: &Cell) -> String {
    let mut s = format!("{from} -> {}: {}", cell.to, cell.status);
    if let Some(loss) = cell.loss {
        s += &format!(", {:.0}% loss over {} pod(s)", loss * 100.0, cell.pods);
    }
    if let Some(error) = &cell.last_error {
        s += &format!(": {error}");
    }
    s
}

fn describe_check(node: &str, check: &CheckCell, targets: &CheckTargets) -> String {
    let mut s = format!("{node} -> {}", check.column);
    if let Some(target) = targets.get(&(node.to_owned(), check.column.clone())) {
        s += &format!(" {target}");
    }
    match &check.last_error {
        Some(error) => s + &format!(": {error}"),
        None => s + &format!(": {} (no error reported)", check.status),
    }
}

/// Caps evidence so a 500-node cluster does not produce a 250 000-line finding.
fn capped(mut lines: Vec<String>) -> Vec<String> {
    if lines.len() > MAX_EVIDENCE {
        let more = lines.len() - MAX_EVIDENCE;
        lines.truncate(MAX_EVIDENCE);
        lines.push(format!("... and {more} more"));
    }
    lines
}

fn broken_cells<'c>(cells: impl IntoIterator<Item = (&'c str, &'c Cell)>) -> Vec<String> {
    cells
        .into_iter()
        .filter(|(_, c)| is_broken(c))
        .map(|(from, c)| describe_cell(from, c))
        .collect()
}

fn sorted_nodes<'n>(nodes: impl IntoIterator<Item = &'n str>) -> Vec<String> {
    let set: BTreeSet<&str> = nodes.into_iter().collect();
    set.into_iter().map(str::to_owned).collect()
}

/// Groups of nodes connected by reaching cells (in either direction), from
/// [`overlay::diagnose`]; the path rules only judge pairs inside a group.
#[derive(Debug, Default)]
struct Components {
    of: HashMap<String, usize>,
}

/// The paths judged one by one ([`paths`], [`pods`]): between nodes the
/// underlay does not cut off, within one group of the overlay (the cells
/// across groups are the group finding's).
struct PathScope<'a> {
    cut_off: &'a BTreeSet<&'a str>,
    components: &'a Components,
}

impl PathScope<'_> {
    fn judges(&self, from: &str, cell: &Cell) -> bool {
        !self.cut_off.contains(from)
            && !self.cut_off.contains(&*cell.to)
            && self.components.same(from, &cell.to)
    }
}

impl Components {
    fn same(&self, a: &str, b: &str) -> bool {
        match (self.of.get(a), self.of.get(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        }
    }
}
