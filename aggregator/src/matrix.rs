//! Builds the directed node-to-node [`Matrix`] from the held reports.
//!
//! Cell statuses:
//! - `ok`: every echo answered;
//! - `degraded`: some echoes lost, but no more than `failed_loss` of them;
//! - `failed`: more than `failed_loss` (default one half) of the echoes lost,
//!   so that one dead pod out of two on a node reads `degraded`, while a
//!   path that loses most packets reads `failed`;
//! - `unknown`: the source's agent is silent or stale, or it did not probe the
//!   destination (or sent nothing to it).
//!
//! A cell shows the latest round; the diagnosis also gets each path's
//! [`PathWindow`] over the last rounds (see [`crate::history`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::HashMap;

use netmatrix_api::{
    Blocked, Cell, CheckCell, CheckColumn, ColumnKind, Matrix, MatrixRow, NetworkMode, NodeState,
    ProbeError, Status, UnansweredPod,
};

use crate::diagnosis::CheckTargets;
use crate::history::{PathWindow, PathWindows, network_slot};
use crate::policy::{Probe, Screen};
use crate::store::{Counts, HeldPeer, ReportStore, StoredReport};

/// Most pods a cell lists as answering nothing ([`Cell::unanswered`]).
pub const MAX_UNANSWERED: usize = 16;

/// States of the nodes according to the API; `None` without one
/// (`--no-kubernetes`): every node is then `Ready`.
pub type NodeStates = Option<BTreeMap<String, NodeState>>;

/// What [`build`] produces: the matrix and what diagnosis needs beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    pub matrix: Matrix,
    pub targets: CheckTargets,
    pub windows: PathWindows,
}

/// How reports turn into statuses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatrixPolicy {
    /// The aggregator's evaluation interval.
    pub interval_ms: u64,
    /// A report older than this many intervals is stale.
    pub stale_after: u32,
    /// A cell is failed above this loss fraction.
    pub failed_loss: f64,
}

impl Default for MatrixPolicy {
    fn default() -> Self {
        MatrixPolicy {
            interval_ms: 5000,
            stale_after: 3,
            failed_loss: 0.5,
        }
    }
}

impl MatrixPolicy {
    /// Fresh means received less than `stale_after` of the aggregator's
    /// intervals ago. The agent's own interval is not trusted: a report
    /// claiming an hour-long interval would otherwise pin its row.
    pub fn is_fresh(&self, stored: &StoredReport, now_unix_ms: u64) -> bool {
        stored.age_ms(now_unix_ms) <= self.interval_ms.saturating_mul(u64::from(self.stale_after))
    }

    pub fn status_for_loss(&self, loss: f64) -> Status {
        if loss <= 0.0 {
            Status::Ok
        } else if loss > self.failed_loss {
            Status::Failed
        } else {
            Status::Degraded
        }
    }
}

/// Builds the matrix at `now_unix_ms`. Nodes are the union of `known` (the
/// inventory's nodes) and the nodes with a fresh report, sorted.
pub fn build(
    store: &ReportStore,
    known: &BTreeSet<String>,
    states: &NodeStates,
    policy: &MatrixPolicy,
    now_unix_ms: u64,
) -> Built {
    build_screened(store, known, states, policy, None, now_unix_ms)
}

/// [`build`], leaving out the failing probes that a NetworkPolicy denies
/// (each cell's `blocked` says which).
pub fn build_screened(
    store: &ReportStore,
    known: &BTreeSet<String>,
    states: &NodeStates,
    policy: &MatrixPolicy,
    screen: Option<&Screen>,
    now_unix_ms: u64,
) -> Built {
    let mut nodes: BTreeSet<String> = known.clone();
    nodes.extend(
        store
            .reports()
            .filter(|s| policy.is_fresh(s, now_unix_ms))
            .map(|s| s.report.agent.node.clone()),
    );
    let nodes: Vec<String> = nodes.into_iter().collect();
    // Agents of a large cluster probe a sample of the nodes: their rows then
    // hold only the probed paths, or N² unknown cells would dwarf them.
    let sampled = store
        .reports()
        .any(|s| s.report.sampled.is_some() && policy.is_fresh(s, now_unix_ms));
    let state_of = |node: &str| match states {
        None => NodeState::Ready,
        Some(states) => states.get(node).copied().unwrap_or(NodeState::Unknown),
    };

    let mut targets = CheckTargets::new();
    let mut windows = PathWindows::for_nodes(&nodes);
    // Each cell names its destination with one of these (a count, not a copy).
    let names: Vec<Arc<str>> = nodes.iter().map(|n| Arc::from(n.as_str())).collect();
    let builder = RowBuilder {
        nodes: &names,
        ids: &windows.ids,
        store,
        policy,
        screen,
        now_unix_ms,
        dense: !sampled,
    };
    // Each row's windows, by network then source id (rows are in id order).
    let mut row_windows: [Vec<Vec<(u32, PathWindow)>>; 2] = Default::default();
    let mut row = |node: &String, network: NetworkMode| {
        let (mut row, windows) = builder.row(node, network);
        row.state = state_of(node);
        row_windows[network_slot(network)].push(windows);
        row
    };
    let rows: Vec<MatrixRow> = nodes.iter().map(|n| row(n, NetworkMode::Pod)).collect();

    let any_host = store
        .reports()
        .any(|s| s.report.agent.network == NetworkMode::Host);
    let host_rows = if any_host {
        nodes.iter().map(|n| row(n, NetworkMode::Host)).collect()
    } else {
        Vec::new()
    };
    windows.rows = row_windows;
    for node in &nodes {
        if let Some(stored) = store.get(node, NetworkMode::Pod) {
            for service in &stored.report.services {
                targets.insert(
                    (node.clone(), CheckColumn::of_service(service)),
                    service.target.clone(),
                );
            }
            if let Some(server) = &stored.report.dns_server {
                for dns in &stored.report.dns {
                    targets.insert((node.clone(), CheckColumn::of_dns(dns)), server.clone());
                }
            }
        }
    }

    Built {
        matrix: Matrix {
            generated_unix_ms: now_unix_ms,
            nodes,
            rows,
            host_rows,
        },
        targets,
        windows,
    }
}

struct RowBuilder<'a> {
    /// Sorted.
    nodes: &'a [Arc<str>],
    /// Position of each node in `nodes` (the windows' ids): hashed once per
    /// peer, where a binary search compared a dozen strings.
    ids: &'a HashMap<String, u32>,
    store: &'a ReportStore,
    policy: &'a MatrixPolicy,
    /// What NetworkPolicies deny (`None`: no policy).
    screen: Option<&'a Screen>,
    now_unix_ms: u64,
    /// A cell for every node (full mesh), or only for the probed ones.
    dense: bool,
}

impl RowBuilder<'_> {
    /// `node`'s row, and the windows of its fresh paths by destination id.
    fn row(&self, node: &str, network: NetworkMode) -> (MatrixRow, Vec<(u32, PathWindow)>) {
        let stored = self.store.get(node, network);
        let age_ms = stored.map(|s| s.age_ms(self.now_unix_ms) as f64);
        let fresh = stored.filter(|s| self.policy.is_fresh(s, self.now_unix_ms));
        // The report's peers grouped by destination node (a stable sort
        // keeps each node's pods in report order; ids sort like names).
        let held = fresh.map_or(&[][..], |s| s.peers.as_slice());
        let mut peers: Vec<(u32, &HeldPeer)> = Vec::with_capacity(held.len());
        peers.extend(
            held.iter()
                .filter_map(|p| Some((*self.ids.get(&*p.node)?, p))),
        );
        peers.sort_by_key(|(id, _)| *id);
        let probed = peers.chunk_by(|a, b| a.0 == b.0);
        let destinations = probed.clone().count();
        // The windows of the same groups of pods, from their history.
        let history = fresh.and_then(|_| self.store.history().tracks(node, network));
        // NetworkPolicies govern pod traffic only.
        let screen = match (self.screen, fresh) {
            (Some(screen), Some(s)) if network == NetworkMode::Pod => {
                Some((screen, node, s.report.agent.pod_ip))
            }
            _ => None,
        };
        // The history's runs and the groups are both in the order of node
        // names (the history may hold nodes the matrix does not): one merge
        // pass by name, no look-up.
        let mut windows: Vec<(u32, PathWindow)> = Vec::with_capacity(destinations);
        if let Some(tracks) = history {
            let mut runs = tracks.by_node().peekable();
            for group in probed.clone() {
                let id = group[0].0;
                let to = &*self.nodes[id as usize];
                while runs.next_if(|(node, _)| *node < to).is_some() {}
                if let Some((_, w)) = runs.next_if(|(node, _)| *node == to) {
                    windows.push((id, w));
                }
            }
        }
        let cells: Vec<Cell> = if self.dense {
            // Both sorted by node: one merge pass.
            let mut probed = probed.peekable();
            (0u32..)
                .zip(self.nodes)
                .map(|(id, to)| match probed.next_if(|group| group[0].0 == id) {
                    Some(group) => self.cell(to, group.iter().map(|(_, p)| *p), age_ms, screen),
                    None => unknown_cell(to, age_ms),
                })
                .collect()
        } else {
            // Sized up front (the rows live for a round, two rounds at once).
            let mut cells = Vec::with_capacity(destinations);
            cells.extend(probed.map(|group| {
                let to = &self.nodes[group[0].0 as usize];
                self.cell(to, group.iter().map(|(_, p)| *p), age_ms, screen)
            }));
            cells
        };
        // A silent node keeps its last check columns, all `unknown`, so the
        // operator still sees what it last saw; diagnosis ignores them.
        let check_status = |ok: bool| match (fresh.is_some(), ok) {
            (false, _) => Status::Unknown,
            (true, true) => Status::Ok,
            (true, false) => Status::Failed,
        };
        let (services, dns) = match stored {
            Some(s) => (
                s.report
                    .services
                    .iter()
                    .map(|c| {
                        let blocked = screen
                            .filter(|_| !c.ok)
                            .and_then(|(screen, from, ip)| screen.denied_service(from, ip, c))
                            .map(|policies| Blocked {
                                protocols: vec!["TCP".to_owned()],
                                policies,
                            });
                        CheckCell {
                            column: CheckColumn::of_service(c),
                            status: if blocked.is_some() {
                                Status::Unknown
                            } else {
                                check_status(c.ok)
                            },
                            latency_ms: c.latency_ms,
                            last_error: c.error.clone(),
                            age_ms,
                            blocked,
                        }
                    })
                    .collect(),
                s.report
                    .dns
                    .iter()
                    .map(|c| CheckCell {
                        column: CheckColumn::of_dns(c),
                        status: check_status(c.ok),
                        latency_ms: c.latency_ms,
                        last_error: c.error.clone(),
                        age_ms,
                        blocked: None,
                    })
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let mtu = self.mtu_summary(&cells, fresh.is_some(), age_ms);
        let row = MatrixRow {
            node: node.to_owned(),
            reporting: fresh.is_some(),
            relayed_by: fresh.and_then(|s| s.relayed_by.clone()),
            report_age_ms: age_ms,
            probe_ip: fresh.map(|s| s.report.agent.pod_ip),
            cells,
            services,
            dns,
            state: NodeState::default(),
            mtu,
        };
        (row, windows)
    }

    /// The row's `mtu` column: the worst large-echo status over its cells,
    /// absent when no cell was MTU-probed.
    fn mtu_summary(&self, cells: &[Cell], fresh: bool, age_ms: Option<f64>) -> Option<CheckCell> {
        let probed: Vec<&Cell> = cells.iter().filter(|c| c.mtu.is_some()).collect();
        if probed.is_empty() {
            return None;
        }
        let worst = probed
            .iter()
            .filter_map(|c| c.mtu)
            .filter(|s| *s != Status::Unknown)
            .max_by_key(|s| match s {
                Status::Ok => 0,
                Status::Degraded => 1,
                Status::Failed => 2,
                Status::Unknown => -1,
            })
            .unwrap_or(Status::Unknown);
        let last_error = probed
            .iter()
            .find(|c| c.mtu == Some(Status::Failed))
            .and_then(|c| c.last_error.as_deref().cloned());
        Some(CheckCell {
            column: CheckColumn::new(ColumnKind::Mtu),
            status: if fresh { worst } else { Status::Unknown },
            latency_ms: None,
            last_error,
            age_ms,
            blocked: None,
        })
    }

    /// Aggregates every probed pod on `to`.
    fn cell<'p>(
        &self,
        to: &Arc<str>,
        peers: impl Iterator<Item = &'p HeldPeer>,
        age_ms: Option<f64>,
        screen: Option<(&Screen, &str, IpAddr)>,
    ) -> Cell {
        let mut pods = 0u32;
        let (mut sent, mut received) = (0u64, 0u64);
        let (mut rtt_weighted, mut rtt_samples) = (0.0f64, 0u64);
        let mut rtt_max: Option<f64> = None;
        // The error of the worst pod is the most telling one.
        let mut worst: Option<(f64, &ProbeError)> = None;
        let (mut mtu_sent, mut mtu_received) = (0u64, 0u64);
        let mut mtu_error: Option<ProbeError> = None;
        let mut tcp = Tally::default();
        let mut udp = Tally::default();
        let mut blocked_protocols: BTreeSet<&'static str> = BTreeSet::new();
        let mut blocked_policies: BTreeSet<String> = BTreeSet::new();
        // Pods that answered nothing, and whether another answered all.
        let mut silent: Vec<UnansweredPod> = Vec::new();
        let mut silent_transport = Vec::new();
        let mut one_answered_all = false;
        for peer in peers {
            // A failing probe a NetworkPolicy denies is left out: the
            // path is not judged by what a policy keeps out.
            let mut denied = |probe: Probe, echoes: Counts| {
                if echoes.received >= echoes.sent {
                    return false;
                }
                let Some((screen, from, src_ip)) = screen else {
                    return false;
                };
                match screen.denied(from, src_ip, &peer.pod, peer.ip, probe) {
                    Some(names) => {
                        blocked_protocols.insert(probe.protocol());
                        blocked_policies.extend(names);
                        true
                    }
                    None => false,
                }
            };
            let port = peer.port.unwrap_or(0);
            let tcp_probe = peer.tcp.as_ref().filter(|t| !denied(Probe::Tcp(port), **t));
            let udp_probe = peer.udp.as_ref().filter(|u| !denied(Probe::Udp(port), **u));
            let icmp_denied = denied(Probe::Icmp, peer.icmp.counts());
            // A pod that answered nothing in any protocol, over two echoes
            // or more (agents send one per pod to nodes with many: one
            // lost echo says nothing).
            let transport_answered = [tcp_probe, udp_probe]
                .into_iter()
                .flatten()
                .any(|e| e.received > 0);
            // Only pods the API (or a report) names: an address a report
            // made up in a node's pod CIDR is no pod to name.
            if !icmp_denied
                && peer.icmp.sent >= 2
                && peer.icmp.received == 0
                && !transport_answered
                && !peer.pod.is_empty()
            {
                silent.push(UnansweredPod {
                    pod: peer.pod.to_string(),
                    ip: peer.ip,
                });
                silent_transport.push((tcp_probe, udp_probe));
            } else {
                tcp.add(tcp_probe);
                udp.add(udp_probe);
            }
            // A pod that answered no small echo says nothing about the MTU
            // (agents send large echoes to one pod per node: a dead one
            // must not read as an MTU fault). Where ICMP is filtered the
            // large echoes are UDP ones, judged against the small UDP ones.
            let answered =
                peer.icmp.received > 0 || peer.udp.as_ref().is_some_and(|u| u.received > 0);
            if let Some(Counts { sent, received }) = peer.mtu.as_ref().filter(|_| answered) {
                mtu_sent += u64::from(*sent);
                mtu_received += u64::from((*received).min(*sent));
                if let Some(e) = peer.mtu_error().filter(|_| mtu_error.is_none()) {
                    mtu_error = Some(ProbeError::new(
                        e.kind,
                        format!("large Don't-Fragment echo: {}", e.message),
                    ));
                }
            }
            let icmp = &peer.icmp;
            pods = pods.saturating_add(1);
            if icmp_denied {
                continue;
            }
            one_answered_all |= icmp.sent > 0 && icmp.received >= icmp.sent;
            let answered = icmp.received.min(icmp.sent);
            sent += u64::from(icmp.sent);
            received += u64::from(answered);
            if let Some(avg) = icmp.rtt_avg_ms() {
                rtt_weighted += avg * f64::from(answered);
                rtt_samples += u64::from(answered);
            }
            if let Some(max) = icmp.rtt_max_ms() {
                rtt_max = Some(rtt_max.map_or(max, |m| m.max(max)));
            }
            if let Some(error) = peer.icmp_error() {
                let loss = icmp.loss();
                if worst.is_none_or(|(l, _)| loss > l) {
                    worst = Some((loss, error));
                }
            }
        }
        // Beside a pod that answered everything, a silent pod is that pod's
        // fault (`pod-unreachable`), not its protocols filtered on the
        // path; otherwise its probes are the path's.
        let unanswered = if one_answered_all {
            // A node runs a few probe targets; a report listing more
            // silent pods than that is not worth a finding each.
            silent.truncate(MAX_UNANSWERED);
            silent
        } else {
            for (t, u) in silent_transport {
                tcp.add(t);
                udp.add(u);
            }
            Vec::new()
        };
        let blocked = (!blocked_protocols.is_empty()).then(|| Blocked {
            protocols: blocked_protocols.iter().map(|p| (*p).to_owned()).collect(),
            policies: blocked_policies.into_iter().collect(),
        });
        let tcp = tcp.status(self.policy);
        let udp = udp.status(self.policy);
        if sent == 0 && tcp.is_none() && udp.is_none() {
            let mut cell = unknown_cell(to, age_ms);
            cell.pods = pods;
            cell.last_error = worst.map(|(_, e)| Box::new(e.clone()));
            cell.blocked = blocked.map(Box::new);
            return cell;
        }
        let loss = 1.0 - received as f64 / sent.max(1) as f64;
        let mtu = (mtu_sent > 0).then(|| {
            self.policy
                .status_for_loss(1.0 - mtu_received as f64 / mtu_sent as f64)
        });
        // ICMP left out entirely (a policy denies it): the path is the
        // other protocols'.
        let icmp = (sent > 0).then(|| self.policy.status_for_loss(loss));
        // The path's status: ICMP's, unless ICMP is dropped where TCP or UDP
        // gets through (filtered, not broken: the best of those).
        let through = [tcp, udp]
            .into_iter()
            .flatten()
            .filter(|s| matches!(s, Status::Ok | Status::Degraded))
            .min_by_key(|s| matches!(s, Status::Degraded));
        let status = match (icmp, through) {
            (Some(Status::Failed) | None, Some(best)) => best,
            (Some(icmp), _) => icmp,
            (None, None) => Status::Failed,
        };
        let probed_more = tcp.is_some() || udp.is_some();
        Cell {
            to: Arc::clone(to),
            status,
            icmp: icmp.filter(|_| probed_more),
            tcp,
            udp,
            blocked: blocked.map(Box::new),
            // Rounded to what is meaningful (0.01 % of echoes, a
            // microsecond): shorter JSON, faster to encode at 1M cells.
            loss: (sent > 0).then(|| round_to(loss, 1e4)),
            rtt_avg_ms: (rtt_samples > 0).then(|| round_to(rtt_weighted / rtt_samples as f64, 1e3)),
            rtt_max_ms: rtt_max.map(|v| round_to(v, 1e3)),
            pods,
            mtu,
            // Small echoes all answered: the large echoes' error is the news.
            last_error: worst.map(|(_, e)| e.clone()).or(mtu_error).map(Box::new),
            age_ms,
            unanswered,
        }
    }
}

/// TCP or UDP probes to one node's pods.
#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
}

impl Tally {
    fn add(&mut self, r: Option<&Counts>) {
        if let Some(r) = r {
            self.sent += u64::from(r.sent);
            self.received += u64::from(r.received.min(r.sent));
        }
    }

    /// `None` when not probed.
    fn status(&self, policy: &MatrixPolicy) -> Option<Status> {
        (self.sent > 0)
            .then(|| policy.status_for_loss(1.0 - self.received as f64 / self.sent as f64))
    }
}

fn round_to(value: f64, scale: f64) -> f64 {
    (value * scale).round() / scale
}

fn unknown_cell(to: &Arc<str>, age_ms: Option<f64>) -> Cell {
    Cell {
        to: Arc::clone(to),
        status: Status::Unknown,
        loss: None,
        rtt_avg_ms: None,
        rtt_max_ms: None,
        pods: 0,
        mtu: None,
        icmp: None,
        tcp: None,
        udp: None,
        blocked: None,
        last_error: None,
        age_ms,
        unanswered: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{agent, inventory, report};
    use netmatrix_api::fixtures;
    use netmatrix_api::{EchoResult, ErrorKind, PeerResult, Report, ServiceKind, ServiceResult};

    /// Name of the row's MTU column.
    const MTU_COLUMN: &str = "mtu";

    /// A peer pod on `node`, each under its own address (a report lists
    /// every pod once).
    fn peer(node: &str, sent: u32, received: u32, rtt: f64) -> PeerResult {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip = std::net::Ipv4Addr::from(0x0a64_0000 + n).to_string();
        let icmp = EchoResult {
            rtt_avg_ms: (received > 0).then_some(rtt),
            rtt_max_ms: (received > 0).then_some(rtt * 2.0),
            error: (received < sent).then(|| ProbeError::new(ErrorKind::Timeout, "no reply")),
            ..fixtures::echoes(sent, received)
        };
        fixtures::peer(node, &format!("p-{node}"), &ip, icmp)
    }

    fn ingest(store: &mut ReportStore, r: Report, now: u64) {
        let nodes = ["n1", "n2", "n3"];
        let sender = agent(&r.agent.pod);
        store
            .ingest(
                &serde_json::to_vec(&r).unwrap(),
                &sender,
                Some(&inventory(&nodes)),
                now,
            )
            .unwrap();
    }

    fn expected() -> BTreeSet<String> {
        ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn aggregates_pods_per_destination_node() {
        let mut store = ReportStore::default();
        let mut r = report(0, "n1", 1);
        r.peers = vec![
            peer("n1", 3, 3, 0.1),
            peer("n2", 3, 3, 1.0),
            peer("n2", 3, 0, 0.0),
            peer("n3", 3, 2, 1.0),
            peer("n3", 3, 3, 1.0),
        ];
        ingest(&mut store, r, 1000);
        let m = build(&store, &expected(), &None, &MatrixPolicy::default(), 1000).matrix;
        assert_eq!(m.nodes, ["n1", "n2", "n3"]);
        let row = &m.rows[0];
        assert!(row.reporting);
        let statuses: Vec<_> = row.cells.iter().map(|c| c.status).collect();
        // n2: one dead pod out of two is half the echoes: degraded, not failed.
        assert_eq!(statuses, [Status::Ok, Status::Degraded, Status::Degraded]);
        assert_eq!(row.cells[1].pods, 2);
        assert_eq!(row.cells[1].loss, Some(0.5));
        assert_eq!(row.cells[1].rtt_avg_ms, Some(1.0));
        assert_eq!(row.cells[1].rtt_max_ms, Some(2.0));
        assert_eq!(
            row.cells[1].last_error.as_ref().map(|e| e.kind),
            Some(ErrorKind::Timeout)
        );
        // The dead pod is listed beside one that answered every echo; on
        // n3 every pod answered something, and none is listed.
        let dead = &row.cells[1].unanswered;
        assert_eq!(dead.len(), 1);
        assert_eq!(Some(dead[0].ip), held_peer_ip(&store, 2));
        assert!(row.cells[2].unanswered.is_empty());
        // Rows of nodes that never reported are unknown, never ok.
        assert!(!m.rows[1].reporting);
        assert!(m.rows[1].cells.iter().all(|c| c.status == Status::Unknown));
    }

    /// The address of peer `i` of n1's held report.
    fn held_peer_ip(store: &ReportStore, i: usize) -> Option<std::net::IpAddr> {
        let held = store.get("n1", netmatrix_api::NetworkMode::Pod)?;
        held.peers.get(i).map(|p| p.ip)
    }

    /// A pod is unanswered only beside one that answered everything, and
    /// only on two echoes or more (one lost echo says nothing).
    #[test]
    fn unanswered_pods_need_an_answering_neighbour_and_two_echoes() {
        let mut store = ReportStore::default();
        let mut r = report(0, "n1", 1);
        r.peers = vec![
            peer("n2", 3, 2, 1.0),
            peer("n2", 3, 0, 0.0),
            peer("n3", 1, 0, 0.0),
            peer("n3", 1, 1, 1.0),
        ];
        ingest(&mut store, r, 1000);
        let m = build(&store, &expected(), &None, &MatrixPolicy::default(), 1000).matrix;
        assert!(m.rows[0].cells.iter().all(|c| c.unanswered.is_empty()));
    }

    #[test]
    fn status_thresholds() {
        let p = MatrixPolicy::default();
        assert_eq!(p.status_for_loss(0.0), Status::Ok);
        assert_eq!(p.status_for_loss(1.0 / 3.0), Status::Degraded);
        assert_eq!(p.status_for_loss(0.5), Status::Degraded);
        assert_eq!(p.status_for_loss(2.0 / 3.0), Status::Failed);
        assert_eq!(p.status_for_loss(1.0), Status::Failed);
    }

    #[test]
    fn stale_rows_turn_unknown_and_unprobed_cells_are_unknown() {
        let mut store = ReportStore::default();
        let mut r = report(0, "n1", 1);
        r.peers = vec![peer("n2", 3, 3, 1.0), peer("n3", 0, 0, 0.0)];
        r.services = vec![ServiceResult {
            kind: ServiceKind::Apiserver,
            name: "kubernetes".into(),
            target: "10.96.0.1:443".into(),
            ok: true,
            reached: None,
            latency_ms: Some(1.0),
            error: None,
        }];
        ingest(&mut store, r, 0);
        let p = MatrixPolicy::default();

        let Built {
            matrix: fresh,
            targets,
            ..
        } = build(&store, &expected(), &None, &p, 1000);
        let cells: Vec<_> = fresh.rows[0].cells.iter().map(|c| c.status).collect();
        assert_eq!(cells, [Status::Unknown, Status::Ok, Status::Unknown]);
        assert_eq!(fresh.rows[0].services[0].status, Status::Ok);
        assert_eq!(
            targets
                .get(&("n1".into(), "apiserver".into()))
                .map(String::as_str),
            Some("10.96.0.1:443")
        );

        let stale = build(&store, &expected(), &None, &p, 15_001).matrix;
        let row = &stale.rows[0];
        assert!(!row.reporting);
        assert_eq!(row.report_age_ms, Some(15_001.0));
        assert!(row.cells.iter().all(|c| c.status == Status::Unknown));
        assert_eq!(row.services[0].status, Status::Unknown);
    }

    #[test]
    fn host_rows_only_when_host_agents_report() {
        let mut store = ReportStore::default();
        ingest(&mut store, report(0, "n1", 1), 0);
        let m = build(&store, &expected(), &None, &MatrixPolicy::default(), 0).matrix;
        assert!(m.host_rows.is_empty());

        let mut host = report(0, "n1", 1);
        host.agent.network = NetworkMode::Host;
        host.peers = vec![peer("n2", 3, 3, 1.0)];
        store
            .ingest(
                &serde_json::to_vec(&host).unwrap(),
                &crate::auth::Sender::Unverified,
                None,
                0,
            )
            .unwrap();
        let m = build(&store, &expected(), &None, &MatrixPolicy::default(), 0).matrix;
        assert_eq!(m.host_rows.len(), 3);
        assert_eq!(m.host_rows[0].cells[1].status, Status::Ok);
        // Pod-network rows are untouched by host results.
        assert_eq!(m.rows[0].cells[1].status, Status::Unknown);
    }

    fn with_mtu(mut p: PeerResult, sent: u32, received: u32) -> PeerResult {
        p.mtu = Some(EchoResult {
            sent,
            received,
            error: (received < sent)
                .then(|| ProbeError::new(ErrorKind::Other, "message too long, mtu=1200")),
            ..Default::default()
        });
        p
    }

    #[test]
    fn large_echoes_fill_the_mtu_cell_and_column() {
        let mut store = ReportStore::default();
        let mut r = report(0, "n1", 1);
        r.peers = vec![
            with_mtu(peer("n1", 3, 3, 0.1), 2, 2),
            with_mtu(peer("n2", 3, 3, 1.0), 2, 0),
            peer("n3", 3, 3, 1.0),
        ];
        ingest(&mut store, r, 1000);
        let m = build(&store, &expected(), &None, &MatrixPolicy::default(), 1000).matrix;
        let row = &m.rows[0];
        let mtu: Vec<_> = row.cells.iter().map(|c| c.mtu).collect();
        assert_eq!(mtu, [Some(Status::Ok), Some(Status::Failed), None]);
        // Small echoes fine: the large echoes' error is the cell's news.
        assert_eq!(row.cells[1].status, Status::Ok);
        let error = row.cells[1].last_error.as_ref().unwrap();
        assert!(error.message.contains("Don't-Fragment"), "{error}");
        let column = row.mtu.as_ref().unwrap();
        assert_eq!(
            (column.column.as_str(), column.status),
            (MTU_COLUMN, Status::Failed)
        );
        assert!(column.last_error.is_some());
        // A row without MTU probes has no mtu column.
        assert!(m.rows[1].mtu.is_none());
    }

    /// TCP or UDP probes: `sent`, of which `received` got through.
    fn echoes(sent: u32, received: u32) -> Option<EchoResult> {
        Some(EchoResult {
            sent,
            received,
            ..EchoResult::default()
        })
    }

    /// Each protocol's status in the cell; the path's is ICMP's unless ICMP
    /// is dropped where TCP or UDP passes (filtered, not broken).
    #[test]
    fn tcp_and_udp_keep_their_status_and_carry_a_path_icmp_does_not() {
        let mut store = ReportStore::default();
        let mut r = report(0, "n1", 1);
        let mut filtered = peer("n2", 3, 0, 1.0);
        filtered.tcp = echoes(1, 1);
        filtered.udp = echoes(3, 3);
        // ICMP dropped on the way and back: the large echoes went as UDP.
        filtered.mtu = echoes(2, 2);
        let mut dead = peer("n3", 3, 0, 1.0);
        dead.tcp = echoes(1, 0);
        dead.udp = echoes(3, 0);
        let mut tcp_dropped = peer("n1", 3, 3, 0.1);
        tcp_dropped.tcp = echoes(1, 0);
        tcp_dropped.udp = echoes(3, 3);
        r.peers = vec![tcp_dropped, filtered, dead];
        ingest(&mut store, r, 1000);
        let m = build(&store, &expected(), &None, &MatrixPolicy::default(), 1000).matrix;
        let got: Vec<_> = m.rows[0]
            .cells
            .iter()
            .map(|c| (c.status, c.icmp, c.tcp, c.udp, c.mtu))
            .collect();
        use Status::{Failed, Ok};
        assert_eq!(
            got,
            [
                (Ok, Some(Ok), Some(Failed), Some(Ok), None),
                (Ok, Some(Failed), Some(Ok), Some(Ok), Some(Ok)),
                (Failed, Some(Failed), Some(Failed), Some(Failed), None),
            ]
        );
    }

    /// Failing probes a NetworkPolicy denies are left out, and said; a
    /// denied probe that gets through (the CNI does not enforce) counts.
    #[test]
    fn failing_probes_a_policy_denies_are_left_out() {
        let mut inv = crate::store::tests::inventory(&["n1", "n2"]);
        let policy: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "tcp-only", "namespace": "netmatrix"},
                "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 9090}]}]}
            }))
            .unwrap();
        inv.policies = crate::policy::PolicySet(std::sync::Arc::new(crate::policy::Policies {
            policies: vec![policy],
            namespace: "netmatrix".into(),
            ..Default::default()
        }));
        let screen = inv.policy_screen().unwrap();
        let mut store = ReportStore::default();
        let mut r = report(0, "n1", 1);
        let mut blocked = peer("n2", 3, 0, 1.0);
        blocked.tcp = echoes(1, 1);
        blocked.udp = echoes(3, 0);
        blocked.port = Some(9090);
        // Same node: ICMP denied too, but it got through.
        let mut through = peer("n1", 3, 3, 0.1);
        through.tcp = echoes(1, 1);
        through.udp = echoes(3, 3);
        through.port = Some(9090);
        r.peers = vec![through, blocked];
        ingest(&mut store, r, 1000);
        let m = build_screened(
            &store,
            &expected(),
            &None,
            &MatrixPolicy::default(),
            Some(&screen),
            1000,
        )
        .matrix;
        let cells = &m.rows[0].cells;
        assert_eq!(
            (cells[0].status, cells[0].blocked.as_ref()),
            (Status::Ok, None)
        );
        assert_eq!(cells[1].status, Status::Ok, "TCP, allowed, gets through");
        assert_eq!(
            (cells[1].icmp, cells[1].tcp, cells[1].udp),
            (None, Some(Status::Ok), None)
        );
        let b = cells[1].blocked.as_ref().unwrap();
        assert_eq!(b.protocols, ["ICMP", "UDP"]);
        assert_eq!(b.policies, ["netmatrix/tcp-only"]);
    }

    #[test]
    fn rows_carry_the_api_state_and_unknown_nodes_are_unknown() {
        let mut store = ReportStore::default();
        ingest(&mut store, report(0, "n1", 1), 1000);
        let states: NodeStates = Some(
            [("n1", NodeState::Ready), ("n2", NodeState::Cordoned)]
                .map(|(n, s)| (n.to_owned(), s))
                .into(),
        );
        let m = build(&store, &expected(), &states, &MatrixPolicy::default(), 1000).matrix;
        let got: Vec<_> = m.rows.iter().map(|r| r.state).collect();
        assert_eq!(
            got,
            [NodeState::Ready, NodeState::Cordoned, NodeState::Unknown]
        );
        let m = build(&store, &expected(), &None, &MatrixPolicy::default(), 1000).matrix;
        assert!(m.rows.iter().all(|r| r.state == NodeState::Ready));
    }

    /// Each destination's window is over its own pods only, and nodes the
    /// matrix does not hold (before, between and after the others by name)
    /// are passed over.
    #[test]
    fn windows_follow_each_destination_and_pass_over_unknown_nodes() {
        let mut store = ReportStore::default();
        let at = |node: &str, ip: &str, sent, received| {
            let mut p = peer(node, sent, received, 1.0);
            p.ip = ip.parse().unwrap();
            p
        };
        for round in 1..=3u64 {
            let mut r = report(0, "n1", round);
            r.peers = vec![
                at("a-ghost", "10.9.0.1", 3, 0),
                at("n2", "10.244.2.2", 3, 3),
                at("n2", "10.244.2.3", 3, if round == 2 { 2 } else { 3 }),
                at("n25-ghost", "10.9.0.2", 3, 1),
                at("n3", "10.244.3.2", 3, if round == 3 { 1 } else { 3 }),
                at("zz-ghost", "10.9.0.3", 3, 0),
            ];
            ingest(&mut store, r, round * 1000);
        }
        let built = build(&store, &expected(), &None, &MatrixPolicy::default(), 3000);
        let window = |to: &str| {
            let w = built.windows.get(NetworkMode::Pod, "n1", to).copied();
            w.map(|w| (w.rounds, w.sent, w.received, w.partial_rounds))
        };
        // n2: 6/6, then 6/5, then 6/6.
        assert_eq!(window("n2"), Some((3, 18, 17, 1)));
        assert_eq!(window("n3"), Some((3, 9, 7, 1)));
        for ghost in ["a-ghost", "n25-ghost", "zz-ghost"] {
            assert_eq!(window(ghost), None, "{ghost}");
        }
        let tos: Vec<&str> = built.matrix.rows[0].cells.iter().map(|c| &*c.to).collect();
        assert_eq!(tos, ["n1", "n2", "n3"]);
    }

    #[test]
    fn fresh_rows_get_windows_over_their_last_rounds() {
        let mut store = ReportStore::default();
        for round in 1..=3u64 {
            let mut r = report(0, "n1", round);
            let mut same_pod = peer("n2", 3, if round == 2 { 2 } else { 3 }, 1.0);
            same_pod.ip = "10.244.2.2".parse().unwrap();
            r.peers = vec![same_pod];
            ingest(&mut store, r, round * 1000);
        }
        let built = build(&store, &expected(), &None, &MatrixPolicy::default(), 3000);
        let w = built
            .windows
            .get(NetworkMode::Pod, "n1", "n2")
            .copied()
            .unwrap();
        assert_eq!(
            (w.rounds, w.sent, w.received, w.partial_rounds),
            (3, 9, 8, 1)
        );
        // The cell itself shows the latest round only.
        assert_eq!(built.matrix.rows[0].cells[1].status, Status::Ok);
        // A stale row has no window.
        let stale = build(&store, &expected(), &None, &MatrixPolicy::default(), 60_000);
        assert!(stale.windows.is_empty());
    }
}
