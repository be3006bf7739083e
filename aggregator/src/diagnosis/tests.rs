//! Rule tests on hand-built matrices: what must fire, and what must not.
//!
//! The catalog tests (`catalog_*`) mirror the lab's faults: each builds the
//! matrix the fault produces, side effects included (DNS behind the
//! overlay, the agents' ClusterIP load-balanced over every node...), and
//! expects exactly the named finding.

use netmatrix_api::fixtures;
use netmatrix_api::{
    Cell, CheckCell, ErrorKind, Finding, FindingKind, Matrix, MatrixRow, NetworkMode, NodeState,
    Path, ProbeError, Status,
};

use std::collections::{BTreeMap, BTreeSet};

use super::{
    AgentDown, Condition, Context, DiagnosisPolicy, DownCause, Hysteresis, Subject, evaluate,
};
use crate::diagnosis::CheckTargets;
use crate::history::PathWindow;
use crate::history::PathWindows;

/// Columns of every row, as the lab's agents report them.
const APISERVER: &str = "apiserver";
const KUBE_DNS: &str = "clusterip/kube-dns";
const AGENTS: &str = "clusterip/netmatrix-agent";
const DNS_A: &str = "dns-a/kubernetes.default.svc.cluster.local.";
const DNS_SRV: &str = "dns-srv/_metrics._tcp.netmatrix-agents.netmatrix.svc.cluster.local.";

/// A matrix under construction: every node reporting, every cell and check
/// ok, every path with a clean window of five rounds.
struct Grid {
    matrix: Matrix,
    targets: CheckTargets,
    windows: PathWindows,
    /// Nodes whose agent pod the API lists as Running (`None`: no API).
    running: Option<BTreeSet<String>>,
    /// Why the API says agents cannot run (`None`: no API).
    down: Option<BTreeMap<String, AgentDown>>,
    judge_silence: bool,
    facts: BTreeMap<String, std::sync::Arc<netmatrix_api::facts::NodeFacts>>,
    truth: BTreeMap<String, super::causes::NodeTruth>,
}

fn ok_cell(to: &str) -> Cell {
    Cell {
        loss: Some(0.0),
        rtt_avg_ms: Some(0.3),
        rtt_max_ms: Some(0.5),
        pods: 2,
        mtu: Some(Status::Ok),
        age_ms: Some(1000.0),
        ..fixtures::cell(to, Status::Ok)
    }
}

fn check(column: &str) -> CheckCell {
    CheckCell {
        latency_ms: Some(1.0),
        age_ms: Some(1000.0),
        ..fixtures::check(column, Status::Ok)
    }
}

fn clean_window() -> PathWindow {
    PathWindow {
        rounds: 5,
        sent: 30,
        received: 30,
        partial_rounds: 0,
        rtt_avg_ms: Some(0.3),
        rtt_rounds: 5,
        mtu_sent: 20,
        mtu_received: 20,
    }
}

fn row(node: &str, nodes: &[String]) -> MatrixRow {
    MatrixRow {
        report_age_ms: Some(1000.0),
        services: vec![check(APISERVER), check(KUBE_DNS), check(AGENTS)],
        dns: vec![check(DNS_A), check(DNS_SRV)],
        mtu: Some(check("mtu")),
        ..fixtures::row(node, nodes.iter().map(|to| ok_cell(to)).collect())
    }
}

impl Grid {
    fn new(n: usize) -> Self {
        // Sorted, as the aggregator builds them: the rules binary-search rows.
        let mut nodes: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        nodes.sort();
        let mut targets = CheckTargets::new();
        let mut windows = PathWindows::new();
        for node in &nodes {
            targets.insert((node.clone(), APISERVER.into()), "10.96.0.1:443".into());
            targets.insert((node.clone(), KUBE_DNS.into()), "10.96.0.10:53".into());
            targets.insert((node.clone(), AGENTS.into()), "10.96.100.7:8080".into());
            for dns in [DNS_A, DNS_SRV] {
                targets.insert((node.clone(), dns.into()), "10.96.0.10:53".into());
            }
            for to in &nodes {
                windows.insert((NetworkMode::Pod, node.clone(), to.clone()), clean_window());
            }
        }
        let rows = nodes.iter().map(|node| row(node, &nodes)).collect();
        Grid {
            matrix: Matrix {
                generated_unix_ms: 0,
                nodes,
                rows,
                host_rows: vec![],
            },
            targets,
            windows,
            running: None,
            down: None,
            judge_silence: true,
            facts: BTreeMap::new(),
            truth: BTreeMap::new(),
        }
    }

    /// The API says `node`'s agent cannot run, because of `cause`.
    fn agent_down(mut self, node: &str, cause: DownCause, events: &[&str]) -> Self {
        self.down.get_or_insert_with(BTreeMap::new).insert(
            node.to_owned(),
            AgentDown {
                namespace: "netmatrix".to_owned(),
                cause,
                events: events.iter().map(|e| (*e).to_owned()).collect(),
            },
        );
        self
    }

    /// The API lists every node's agent pod as Running.
    fn agents_running(mut self) -> Self {
        self.running = Some(self.matrix.nodes.iter().cloned().collect());
        self
    }

    /// `node`'s silent agent's report comes relayed by its host agent.
    fn relayed(mut self, node: &str) -> Self {
        self.row_in(NetworkMode::Pod, node).relayed_by = Some(format!("host-agent-{node}"));
        self
    }

    /// Adds host-network rows, all fine, with clean windows.
    fn with_hosts(mut self) -> Self {
        let nodes = self.matrix.nodes.clone();
        for from in &nodes {
            for to in &nodes {
                self.windows.insert(
                    (NetworkMode::Host, from.clone(), to.clone()),
                    clean_window(),
                );
            }
        }
        self.matrix.host_rows = nodes
            .iter()
            .map(|node| {
                let mut r = row(node, &nodes);
                r.dns.clear();
                r.mtu = None;
                r
            })
            .collect();
        self
    }

    fn nodes(&self) -> Vec<String> {
        self.matrix.nodes.clone()
    }

    fn rows_mut(&mut self, network: NetworkMode) -> &mut Vec<MatrixRow> {
        match network {
            NetworkMode::Pod => &mut self.matrix.rows,
            NetworkMode::Host => &mut self.matrix.host_rows,
        }
    }

    fn row_in(&mut self, network: NetworkMode, node: &str) -> &mut MatrixRow {
        self.rows_mut(network)
            .iter_mut()
            .find(|r| r.node == node)
            .expect("node in grid")
    }

    fn cell_in(&mut self, network: NetworkMode, from: &str, to: &str) -> &mut Cell {
        self.row_in(network, from)
            .cells
            .iter_mut()
            .find(|c| *c.to == *to)
            .expect("cell in grid")
    }

    fn cell(&mut self, from: &str, to: &str) -> &mut Cell {
        self.cell_in(NetworkMode::Pod, from, to)
    }

    fn window(&mut self, from: &str, to: &str) -> &mut PathWindow {
        self.windows
            .get_mut(NetworkMode::Pod, from, to)
            .expect("window in grid")
    }

    fn fail_in(mut self, network: NetworkMode, from: &str, to: &str) -> Self {
        let cell = self.cell_in(network, from, to);
        cell.status = Status::Failed;
        cell.loss = Some(1.0);
        cell.rtt_avg_ms = None;
        cell.mtu = cell.mtu.map(|_| Status::Failed);
        cell.last_error = Some(Box::new(ProbeError::new(
            ErrorKind::Timeout,
            "no echo reply",
        )));
        self
    }

    fn fail(self, from: &str, to: &str) -> Self {
        self.fail_in(NetworkMode::Pod, from, to)
    }

    fn host_fail(self, from: &str, to: &str) -> Self {
        self.fail_in(NetworkMode::Host, from, to)
    }

    /// The path `from` -> `to` as the matrix shows it when TCP and UDP were
    /// probed too: each protocol's status, and the path's (the best one's).
    fn protocols(mut self, from: &str, to: &str, icmp: Status, tcp: Status, udp: Status) -> Self {
        let cell = self.cell(from, to);
        cell.icmp = Some(icmp);
        cell.tcp = Some(tcp);
        cell.udp = Some(udp);
        if icmp == Status::Failed {
            cell.loss = Some(1.0);
            cell.last_error = Some(Box::new(ProbeError::new(
                ErrorKind::Timeout,
                "no echo reply",
            )));
            if tcp == Status::Failed && udp == Status::Failed {
                cell.status = Status::Failed;
            }
        }
        self
    }

    /// `to`'s pod at `ip` answers nothing from `from`, its other pod
    /// everything: half the cell's echoes lost, the pod listed.
    fn pod_silent(mut self, from: &str, to: &str, ip: &str) -> Self {
        let cell = self.cell(from, to);
        cell.status = Status::Degraded;
        cell.loss = Some(0.5);
        cell.last_error = Some(Box::new(ProbeError::new(
            ErrorKind::Unreachable,
            "sendto: Invalid argument",
        )));
        cell.unanswered.push(netmatrix_api::UnansweredPod {
            pod: format!("companion-{to}"),
            ip: ip.parse().unwrap(),
        });
        self
    }

    fn degrade(mut self, from: &str, to: &str) -> Self {
        let cell = self.cell(from, to);
        cell.status = Status::Degraded;
        cell.loss = Some(1.0 / 6.0);
        self
    }

    /// Random loss on the path: this round `round_loss` (status from it, as
    /// the matrix does), and over the window `window_loss`, with partial
    /// loss in four of five rounds.
    /// `lossy` on the host network.
    fn host_lossy(mut self, from: &str, to: &str, window_loss: f64) -> Self {
        let cell = self.cell_in(NetworkMode::Host, from, to);
        cell.loss = Some(1.0 / 6.0);
        cell.status = Status::Degraded;
        let w = self
            .windows
            .get_mut(NetworkMode::Host, from, to)
            .expect("host window in grid");
        w.received = ((1.0 - window_loss) * f64::from(w.sent)).round() as u32;
        w.partial_rounds = 4;
        self
    }

    fn lossy(mut self, from: &str, to: &str, round_loss: f64, window_loss: f64) -> Self {
        let cell = self.cell(from, to);
        cell.loss = Some(round_loss);
        cell.status = crate::matrix::MatrixPolicy::default().status_for_loss(round_loss);
        if round_loss > 0.0 {
            cell.last_error = Some(Box::new(ProbeError::new(
                ErrorKind::Timeout,
                "no echo reply in 1s",
            )));
        }
        let w = self.window(from, to);
        w.received = ((1.0 - window_loss) * f64::from(w.sent)).round() as u32;
        w.partial_rounds = 4;
        self
    }

    /// Large echoes lost on the path, small ones fine.
    fn mtu_fails(mut self, from: &str, to: &str) -> Self {
        let cell = self.cell(from, to);
        cell.mtu = Some(Status::Failed);
        cell.last_error = Some(Box::new(ProbeError::new(
            ErrorKind::Timeout,
            "large Don't-Fragment echo: no echo reply in 1s",
        )));
        self.window(from, to).mtu_received = 0;
        self
    }

    fn slow(mut self, from: &str, to: &str, rtt_ms: f64) -> Self {
        self.cell(from, to).rtt_avg_ms = Some(rtt_ms);
        self.window(from, to).rtt_avg_ms = Some(rtt_ms as f32);
        self
    }

    /// Fails every cross-node cell touching `node`.
    fn isolate(mut self, node: &str) -> Self {
        for other in self.nodes() {
            if other != node {
                self = self.fail(node, &other).fail(&other, node);
            }
        }
        self
    }

    fn all_cross_node_failed(mut self) -> Self {
        for from in self.nodes() {
            for to in self.nodes() {
                if from != to {
                    self = self.fail(&from, &to);
                }
            }
        }
        self
    }

    fn silent_in(mut self, network: NetworkMode, node: &str) -> Self {
        let row = self.row_in(network, node);
        row.reporting = false;
        row.report_age_ms = Some(65_000.0);
        for c in &mut row.cells {
            *c = Cell {
                status: Status::Unknown,
                loss: None,
                mtu: None,
                ..ok_cell(&c.to)
            };
        }
        for c in row.services.iter_mut().chain(row.dns.iter_mut()) {
            c.status = Status::Unknown;
        }
        self
    }

    fn silent(self, node: &str) -> Self {
        self.silent_in(NetworkMode::Pod, node)
    }

    fn state(mut self, node: &str, state: NodeState) -> Self {
        for network in [NetworkMode::Pod, NetworkMode::Host] {
            if let Some(row) = self.rows_mut(network).iter_mut().find(|r| r.node == node) {
                row.state = state;
            }
        }
        self
    }

    /// Fails every check of `node` whose column starts with `prefix`.
    fn checks_fail_in(
        mut self,
        network: NetworkMode,
        node: &str,
        prefix: &str,
        kind: ErrorKind,
        message: &str,
    ) -> Self {
        let row = self.row_in(network, node);
        let mut found = false;
        for check in row
            .services
            .iter_mut()
            .chain(row.dns.iter_mut())
            .filter(|c| c.column.starts_with(prefix))
        {
            check.status = Status::Failed;
            check.last_error = Some(ProbeError::new(kind, message));
            found = true;
        }
        assert!(found, "no {prefix} check on {node}");
        self
    }

    fn check_fails(self, node: &str, column: &str, kind: ErrorKind, message: &str) -> Self {
        self.checks_fail_in(NetworkMode::Pod, node, column, kind, message)
    }

    fn services_unreachable(self, node: &str) -> Self {
        self.check_fails(
            node,
            APISERVER,
            ErrorKind::Unreachable,
            "dial tcp 10.96.0.1:443: connect: network is unreachable",
        )
        .check_fails(
            node,
            "clusterip/",
            ErrorKind::Unreachable,
            "dial tcp 10.96.100.7:8080: connect: network is unreachable",
        )
    }

    fn dns_fails(self, node: &str, kind: ErrorKind) -> Self {
        self.check_fails(node, "dns-", kind, "lookup failed")
    }

    /// The agents' ClusterIP from `node` hit a backend it cannot reach.
    fn agents_clusterip_times_out(self, node: &str) -> Self {
        self.check_fails(
            node,
            AGENTS,
            ErrorKind::Timeout,
            "dial tcp 10.96.100.7:8080: i/o timeout",
        )
    }

    fn conditions(&self) -> Vec<Condition> {
        let expected: BTreeSet<String> = self.matrix.nodes.iter().cloned().collect();
        self.conditions_expecting(&expected)
    }

    fn conditions_expecting(&self, expected: &BTreeSet<String>) -> Vec<Condition> {
        let policy = DiagnosisPolicy::default();
        let context = Context {
            expected,
            pod_agents_running: self.running.as_ref(),
            agents_down: self.down.as_ref(),
            judge_silence: self.judge_silence,
            facts: &self.facts,
            truth: &self.truth,
            check_targets: &self.targets,
            windows: &self.windows,
            policy: &policy,
        };
        evaluate(&self.matrix, &context)
    }
}

fn kinds(conditions: &[Condition]) -> Vec<(FindingKind, Vec<String>)> {
    let mut v: Vec<_> = conditions
        .iter()
        .map(|c| (c.kind, c.nodes.clone()))
        .collect();
    v.sort();
    v
}

fn on(kind: FindingKind, nodes: &[&str]) -> (FindingKind, Vec<String>) {
    (kind, nodes.iter().map(|n| n.to_string()).collect())
}

fn path(from: &str, to: &str) -> Path {
    Path {
        from: from.into(),
        to: to.into(),
    }
}

/// The only condition, of the expected kind and nodes.
/// Asserts that no condition is of `kind`.
fn none_of(conditions: &[Condition], kind: FindingKind) {
    let all = kinds(conditions);
    assert!(all.iter().all(|(k, _)| *k != kind), "{all:?}");
}

fn only(conditions: &[Condition], kind: FindingKind, nodes: &[&str]) -> Condition {
    assert_eq!(kinds(conditions), [on(kind, nodes)], "{conditions:#?}");
    conditions[0].clone()
}

// ---------------------------------------------------------------------------
// Basics

#[test]
fn healthy_matrix_has_no_conditions() {
    assert_eq!(kinds(&Grid::new(4).conditions()), []);
    assert_eq!(kinds(&Grid::new(4).with_hosts().conditions()), []);
}

#[test]
fn a_few_lost_echoes_raise_nothing() {
    let grid = Grid::new(3).degrade("n1", "n2").degrade("n3", "n1");
    assert_eq!(kinds(&grid.conditions()), []);
    // One noisy round (loss this round, a clean window) is not packet-loss.
    let grid = Grid::new(3).lossy("n1", "n2", 0.5, 0.0);
    assert_eq!(kinds(&grid.conditions()), []);
}

// ---------------------------------------------------------------------------
// The catalog, as the lab produces it

/// overlay-down / fdb-flush on n2: n2's pod cells fail both ways, its DNS
/// (CoreDNS on n1, behind the overlay) and the agents' ClusterIP fail; the
/// other nodes' agents ClusterIP fails when it picks n2's backend; the host
/// network is fine.
#[test]
fn catalog_node_isolated() {
    let grid = Grid::new(3)
        .with_hosts()
        .isolate("n2")
        .dns_fails("n2", ErrorKind::Timeout)
        .check_fails("n2", KUBE_DNS, ErrorKind::Timeout, "i/o timeout")
        .agents_clusterip_times_out("n2")
        .agents_clusterip_times_out("n1")
        .agents_clusterip_times_out("n3");
    let c = only(&grid.conditions(), FindingKind::NodeIsolated, &["n2"]);
    assert_eq!(c.subject, Subject::Node("n2".into()));
    assert_eq!(c.evidence.len(), 4);
    assert!(
        c.evidence.contains(
            &"n1 -> n2: failed, 100% loss over 2 pod(s): timeout: no echo reply".to_owned()
        ),
        "{:?}",
        c.evidence
    );
    assert!(c.evidence.iter().any(|e| e.starts_with("n2 -> n3: failed")));
    assert!(c.hint.contains("check the pod network on n2"));
    assert!(c.hint.contains("bridge fdb show dev flannel.1"));
    assert!(c.hint.contains("ip -d link show flannel.1"));
}

/// vxlan-drop: every cross-node pod cell fails, same-node fine; DNS fails
/// on n2 and n3; the host network is fine.
#[test]
fn catalog_cross_node_broken() {
    let grid = Grid::new(3)
        .with_hosts()
        .all_cross_node_failed()
        .dns_fails("n2", ErrorKind::Timeout)
        .dns_fails("n3", ErrorKind::Timeout)
        .agents_clusterip_times_out("n1");
    let c = only(
        &grid.conditions(),
        FindingKind::CrossNodeBroken,
        &["n1", "n2", "n3"],
    );
    assert_eq!(c.subject, Subject::Cluster);
    assert!(c.hint.contains("UDP 8472"));
    assert!(
        c.evidence
            .contains(&"same-node cells: 3 of 3 reachable".to_owned())
    );
}

/// partition n1 n2 | n3 n4: the overlay dropped between the groups; DNS
/// fails on the side without CoreDNS.
#[test]
fn catalog_partition() {
    let mut grid = Grid::new(4).with_hosts();
    for (a, b) in [("n1", "n3"), ("n1", "n4"), ("n2", "n3"), ("n2", "n4")] {
        grid = grid.fail(a, b).fail(b, a);
    }
    let grid = grid
        .dns_fails("n3", ErrorKind::Timeout)
        .dns_fails("n4", ErrorKind::Timeout)
        .agents_clusterip_times_out("n1")
        .agents_clusterip_times_out("n4");
    let c = only(
        &grid.conditions(),
        FindingKind::Partition,
        &["n1", "n2", "n3", "n4"],
    );
    assert_eq!(
        c.groups,
        [
            vec!["n1".to_owned(), "n2".to_owned()],
            vec!["n3".to_owned(), "n4".to_owned()]
        ]
    );
    assert!(c.summary.contains("[n1, n2] | [n3, n4]"), "{}", c.summary);
    assert_eq!(c.evidence.len(), 9, "the groups line and 8 cells");
}

#[test]
fn partition_groups_are_largest_first() {
    let mut grid = Grid::new(5);
    for a in ["n1", "n2"] {
        for b in ["n3", "n4", "n5"] {
            grid = grid.fail(a, b).fail(b, a);
        }
    }
    let c = only(
        &grid.conditions(),
        FindingKind::Partition,
        &["n1", "n2", "n3", "n4", "n5"],
    );
    assert_eq!(c.groups[0], ["n3", "n4", "n5"]);
    assert_eq!(c.groups[1], ["n1", "n2"]);
}

/// one-way n2 n3: flows started by n2's pods towards n3's pods dropped.
#[test]
fn catalog_asymmetric_path() {
    let grid = Grid::new(3)
        .fail("n2", "n3")
        .agents_clusterip_times_out("n2");
    let c = only(
        &grid.conditions(),
        FindingKind::AsymmetricPath,
        &["n2", "n3"],
    );
    assert_eq!(c.paths, [path("n2", "n3")]);
    assert_eq!(c.subject, Subject::Node("n2".into()));
    assert_eq!(
        c.evidence[0],
        "n2 -> n3: failed, 100% loss over 2 pod(s): timeout: no echo reply"
    );
    assert_eq!(c.evidence[1], "n3 -> n2: ok, 0% loss over 2 pod(s)");
    assert!(c.hint.contains("rp_filter"));
}

/// One node cannot reach one pod (a blackhole route to its address) while
/// every other node can, and it reaches the pod's neighbours: the pod is
/// named, with the source that cannot reach it.
#[test]
fn one_pod_unreachable_from_one_node_is_named_with_that_node() {
    let grid = Grid::new(4).pod_silent("n1", "n3", "10.244.3.3");
    let c = only(
        &grid.conditions(),
        FindingKind::PodUnreachable,
        &["n1", "n3"],
    );
    assert_eq!(c.paths, [path("n1", "n3")]);
    assert_eq!(
        c.subject,
        Subject::Pod("n3".into(), "10.244.3.3".parse().unwrap())
    );
    assert_eq!(
        c.summary,
        "pod companion-n3 (10.244.3.3) on n3 answers nothing from n1 while n2, n3, n4 reach it"
    );
    assert!(c.hint.contains("ip route get 10.244.3.3"), "{}", c.hint);
}

/// Nobody reaches the pod, its own node included: the pod's own network.
/// Its own node reaches it but no other node does: its node's forwarding.
#[test]
fn where_a_pod_is_unreachable_from_says_where_to_look() {
    let mut grid = Grid::new(3);
    for from in ["n1", "n2", "n3"] {
        grid = grid.pod_silent(from, "n2", "10.244.2.3");
    }
    let c = only(
        &grid.conditions(),
        FindingKind::PodUnreachable,
        &["n1", "n2", "n3"],
    );
    assert!(
        c.summary
            .contains("answers no node that probes it, its own included"),
        "{}",
        c.summary
    );
    assert!(c.hint.contains("the pod's own network"), "{}", c.hint);
    // The same, where the node's own cell holds that pod alone (the agent
    // does not probe itself): the cell is down, and lists nobody.
    let grid = Grid::new(3)
        .pod_silent("n1", "n2", "10.244.2.3")
        .pod_silent("n3", "n2", "10.244.2.3")
        .fail("n2", "n2");
    let c = only(
        &grid.conditions(),
        FindingKind::PodUnreachable,
        &["n1", "n2", "n3"],
    );
    assert!(c.summary.contains("its own included"), "{}", c.summary);
    assert!(c.paths.contains(&path("n2", "n2")), "{:?}", c.paths);

    let grid = Grid::new(3)
        .pod_silent("n1", "n2", "10.244.2.3")
        .pod_silent("n3", "n2", "10.244.2.3");
    let c = only(
        &grid.conditions(),
        FindingKind::PodUnreachable,
        &["n1", "n2", "n3"],
    );
    assert_eq!(
        c.summary,
        "pod companion-n2 (10.244.2.3) on n2 answers its own node but not n1, n3: traffic from other nodes to it stops at n2"
    );
}

/// node-1 cannot reach node-3's agent pod alone: node-3's probes to
/// node-1 get no replies either (they go back to that address). That is
/// the pod's address, not a one-way path between the nodes.
#[test]
fn a_probing_pod_out_of_reach_is_no_one_way_path() {
    let mut grid = Grid::new(3)
        .pod_silent("n1", "n3", "10.244.3.2")
        .fail("n3", "n1");
    grid.row_in(NetworkMode::Pod, "n3").probe_ip = Some("10.244.3.2".parse().unwrap());
    let c = only(
        &grid.conditions(),
        FindingKind::PodUnreachable,
        &["n1", "n3"],
    );
    assert!(
        c.summary.ends_with(
            "it is the pod n3 probes from, so n3's probes to them get no replies either"
        ),
        "{}",
        c.summary
    );
    assert!(
        c.evidence
            .iter()
            .any(|e| e.starts_with("n3 -> n1: failed") && e.ends_with("(replies to 10.244.3.2)")),
        "{:#?}",
        c.evidence
    );
}

/// A cell that lost echoes but lists no pod says nothing of the pod: its
/// source is not counted as reaching it (n3 lost one more echo of the
/// agent, so no pod of n2 answered everything and none is listed).
#[test]
fn a_lossy_cell_that_lists_nobody_reaches_nobody() {
    let mut grid = Grid::new(3)
        .pod_silent("n1", "n2", "10.244.2.3")
        .fail("n2", "n2");
    let n3 = grid.cell("n3", "n2");
    n3.status = Status::Failed;
    n3.loss = Some(4.0 / 6.0);
    let c = only(
        &grid.conditions(),
        FindingKind::PodUnreachable,
        &["n1", "n2"],
    );
    assert!(
        c.summary
            .contains("answers no node that probes it, its own included"),
        "{}",
        c.summary
    );
}

/// The reverse direction "works" only on data older than the broken
/// direction's by more than an interval (n3's row relayed late, its last
/// data from before the fault): no one-way path is named on it.
#[test]
fn a_reverse_that_reaches_on_older_data_names_no_one_way_path() {
    let n3_data_aged = |ms: f64| {
        let mut grid = Grid::new(3).fail("n2", "n3");
        let n3 = grid
            .matrix
            .rows
            .iter_mut()
            .find(|r| r.node == "n3")
            .unwrap();
        for cell in &mut n3.cells {
            cell.age_ms = Some(ms);
        }
        grid.conditions()
    };
    // n2's data are 1 s old; n3's 8 s, more than an interval (5 s) older.
    let conditions = n3_data_aged(8000.0);
    assert!(
        !conditions
            .iter()
            .any(|c| c.kind == FindingKind::AsymmetricPath),
        "{conditions:?}"
    );
    // Within an interval of each other: judged.
    only(
        &n3_data_aged(5000.0),
        FindingKind::AsymmetricPath,
        &["n2", "n3"],
    );
}

/// pair n2 n3: traffic between the two dropped both ways.
#[test]
fn catalog_pair_broken() {
    let grid = Grid::new(3)
        .fail("n2", "n3")
        .fail("n3", "n2")
        .agents_clusterip_times_out("n2")
        .agents_clusterip_times_out("n3");
    let c = only(&grid.conditions(), FindingKind::PairBroken, &["n2", "n3"]);
    assert_eq!(c.paths, [path("n2", "n3"), path("n3", "n2")]);
    assert_eq!(c.subject, Subject::pair("n3", "n2"));
    assert!(c.hint.contains("bridge fdb show dev flannel.1"));
}

/// loss n2 30%: every path touching n2 loses about 30 % over the window;
/// this round some cells are degraded, one even failed (but not broken);
/// n2's DNS timed out this round.
fn loss_on_n2() -> Grid {
    Grid::new(3)
        .with_hosts()
        .lossy("n1", "n2", 1.0 / 6.0, 0.3)
        .lossy("n2", "n1", 4.0 / 6.0, 0.3)
        .lossy("n2", "n3", 0.0, 0.27)
        .lossy("n3", "n2", 2.0 / 6.0, 0.33)
        .check_fails("n2", DNS_A, ErrorKind::Timeout, "no answer in 500ms")
}

#[test]
fn catalog_packet_loss() {
    let c = only(&loss_on_n2().conditions(), FindingKind::PacketLoss, &["n2"]);
    assert_eq!(c.subject, Subject::Node("n2".into()));
    assert_eq!(
        c.paths,
        [
            path("n1", "n2"),
            path("n2", "n1"),
            path("n2", "n3"),
            path("n3", "n2")
        ]
    );
    assert!(
        c.evidence.iter().any(|e| e.starts_with(
            "n2 -> n1: 30% of 30 echoes lost over the last 5 rounds (partial loss in 4 of them); this round failed, 67% loss"
        )),
        "{:?}",
        c.evidence
    );
    assert!(c.hint.contains("ip -s link"));
}

/// The same loss on n2's host-network paths: n2's node network or the
/// underlay, not the pod network.
#[test]
fn loss_on_the_host_network_too_is_the_node_network() {
    let mut grid = loss_on_n2();
    for (a, b) in [("n1", "n2"), ("n2", "n1"), ("n2", "n3"), ("n3", "n2")] {
        grid = grid.host_lossy(a, b, 0.3);
    }
    let c = only(&grid.conditions(), FindingKind::PacketLoss, &["n2"]);
    assert!(
        c.summary.contains("on the node network itself"),
        "{}",
        c.summary
    );
    assert!(c.hint.contains("ethtool -S eth0"), "{}", c.hint);
    assert!(
        c.evidence[0].starts_with("host network: "),
        "{:?}",
        c.evidence
    );
    // Pod paths only: the pod network, and the hint says so.
    let c = only(&loss_on_n2().conditions(), FindingKind::PacketLoss, &["n2"]);
    assert!(c.summary.contains("the pod network"), "{}", c.summary);
    assert!(c.hint.contains("flannel.1"), "{}", c.hint);
}

/// Early in the window only n1 <-> n2 is over the threshold: n2 is named
/// (all its paths lose echoes), never n1 by its name.
#[test]
fn loss_is_pinned_on_the_node_all_of_whose_paths_lose() {
    let grid = Grid::new(3)
        .lossy("n1", "n2", 1.0 / 6.0, 0.3)
        .lossy("n2", "n1", 2.0 / 6.0, 0.3)
        .lossy("n2", "n3", 0.0, 0.03)
        .lossy("n3", "n2", 0.0, 0.03);
    only(&grid.conditions(), FindingKind::PacketLoss, &["n2"]);
    // Two lossy nodes of five: both, and nothing else.
    let mut grid = Grid::new(5);
    for bad in ["n2", "n4"] {
        for other in ["n1", "n2", "n3", "n4", "n5"] {
            if other != bad {
                grid = grid
                    .lossy(bad, other, 2.0 / 6.0, 0.3)
                    .lossy(other, bad, 1.0 / 6.0, 0.3);
            }
        }
    }
    let mut found = kinds(&grid.conditions());
    found.sort();
    assert_eq!(
        found,
        [
            on(FindingKind::PacketLoss, &["n2"]),
            on(FindingKind::PacketLoss, &["n4"])
        ]
    );
}

#[test]
fn packet_loss_is_not_isolation_even_when_every_cell_failed_this_round() {
    // An unlucky round: all of n2's cells above the failed threshold, but
    // echoes still came back: lossy, not broken.
    let mut grid = loss_on_n2();
    for (a, b) in [("n1", "n2"), ("n2", "n1"), ("n2", "n3"), ("n3", "n2")] {
        grid = grid.lossy(a, b, 5.0 / 6.0, 0.35);
    }
    only(&grid.conditions(), FindingKind::PacketLoss, &["n2"]);
}

#[test]
fn dns_timeouts_on_a_lossy_node_are_not_dns_failure() {
    // The window has not filled yet (no packet-loss), but this round n2's
    // cells lose echoes: its DNS timeouts are not a DNS finding.
    let grid = Grid::new(3).lossy("n1", "n2", 2.0 / 6.0, 0.05).check_fails(
        "n2",
        DNS_A,
        ErrorKind::Timeout,
        "no answer in 500ms",
    );
    assert_eq!(kinds(&grid.conditions()), []);
    // A SERVFAIL is an answer, not a lost packet.
    let grid = Grid::new(3).lossy("n1", "n2", 2.0 / 6.0, 0.05).check_fails(
        "n2",
        DNS_A,
        ErrorKind::Servfail,
        "SERVFAIL",
    );
    only(&grid.conditions(), FindingKind::DnsFailure, &["n2"]);
}

#[test]
fn an_outage_that_healed_is_not_packet_loss() {
    // Two rounds of total loss in the window are outages, not loss: the
    // window counts only rounds with partial loss, here none.
    let mut grid = Grid::new(3);
    let w = grid.window("n1", "n2");
    w.sent = 18;
    w.received = 18;
    w.rounds = 5;
    assert_eq!(kinds(&grid.conditions()), []);
    // Partial loss in too few rounds.
    let mut grid = Grid::new(3).lossy("n1", "n2", 0.0, 0.2);
    grid.window("n1", "n2").partial_rounds = 2;
    assert_eq!(kinds(&grid.conditions()), []);
}

#[test]
fn packet_loss_between_two_nodes_names_the_pair() {
    let grid = Grid::new(2)
        .lossy("n1", "n2", 1.0 / 6.0, 0.3)
        .lossy("n2", "n1", 2.0 / 6.0, 0.3);
    let c = only(&grid.conditions(), FindingKind::PacketLoss, &["n1", "n2"]);
    assert_eq!(c.subject, Subject::pair("n1", "n2"));
    assert_eq!(c.paths.len(), 2);
}

/// mtu n2 / mtu-lower n2: small echoes fine everywhere, large ones lost on
/// every path through n2's overlay.
#[test]
fn catalog_mtu_mismatch() {
    let mut grid = Grid::new(3).with_hosts();
    for (a, b) in [("n1", "n2"), ("n2", "n1"), ("n2", "n3"), ("n3", "n2")] {
        grid = grid.mtu_fails(a, b);
    }
    let c = only(&grid.conditions(), FindingKind::MtuMismatch, &["n2"]);
    assert_eq!(c.paths.len(), 4);
    assert!(
        c.evidence.contains(
            &"n1 -> n2: small echoes ok, large Don't-Fragment echoes failed, 100% over the last 5 rounds: timeout: large Don't-Fragment echo: no echo reply in 1s".to_owned()
        ),
        "{:?}",
        c.evidence
    );
    assert!(c.hint.contains("ip -d link show flannel.1"));
    assert!(c.hint.contains("VXLAN 50 bytes"));
}

#[test]
fn mtu_needs_the_window_to_agree() {
    // Large echoes lost this round only: a blip.
    let mut grid = Grid::new(3).mtu_fails("n1", "n2").mtu_fails("n2", "n1");
    grid.window("n1", "n2").mtu_received = 18;
    grid.window("n2", "n1").mtu_received = 18;
    assert_eq!(kinds(&grid.conditions()), []);
}

/// dnat n2: kube-proxy's rules gone on n2: every ClusterIP check fails from
/// its pods and from the node itself, DNS (a ClusterIP) too.
#[test]
fn catalog_clusterip_broken_by_dnat() {
    let grid = Grid::new(3)
        .with_hosts()
        .check_fails(
            "n2",
            APISERVER,
            ErrorKind::Timeout,
            "dial tcp 10.96.0.1:443: i/o timeout",
        )
        .check_fails("n2", "clusterip/", ErrorKind::Timeout, "i/o timeout")
        .dns_fails("n2", ErrorKind::Timeout)
        .checks_fail_in(
            NetworkMode::Host,
            "n2",
            "",
            ErrorKind::Timeout,
            "i/o timeout",
        );
    let c = only(&grid.conditions(), FindingKind::ClusteripBroken, &["n2"]);
    assert!(
        c.hint.contains("iptables -t nat -S KUBE-SERVICES"),
        "{}",
        c.hint
    );
    assert!(
        c.evidence.contains(
            &"host network: n2 -> apiserver 10.96.0.1:443: timeout: i/o timeout".to_owned()
        ),
        "{:?}",
        c.evidence
    );
}

/// service-route n2: n2's pods have no route to 10.96.0.0/12; the node
/// itself is fine.
#[test]
fn catalog_clusterip_broken_by_service_route() {
    let grid = Grid::new(3)
        .with_hosts()
        .services_unreachable("n2")
        .dns_fails("n2", ErrorKind::Unreachable);
    let c = only(&grid.conditions(), FindingKind::ClusteripBroken, &["n2"]);
    assert!(
        c.evidence.contains(
            &"n2 -> apiserver 10.96.0.1:443: unreachable: dial tcp 10.96.0.1:443: connect: network is unreachable"
                .to_owned()
        ),
        "{:?}",
        c.evidence
    );
    assert!(c.hint.contains("ip route show 10.96.0.0/12"), "{}", c.hint);
    assert!(
        c.evidence
            .iter()
            .any(|e| e.contains("from the node itself pass"))
    );
}

/// apiserver-block n2: only the API server's endpoint is dropped.
#[test]
fn catalog_apiserver_unreachable() {
    let grid = Grid::new(3).check_fails(
        "n2",
        APISERVER,
        ErrorKind::Timeout,
        "dial tcp 10.96.0.1:443: i/o timeout",
    );
    let c = only(
        &grid.conditions(),
        FindingKind::ApiserverUnreachable,
        &["n2"],
    );
    assert_eq!(
        c.evidence[0],
        "n2 -> apiserver 10.96.0.1:443: timeout: dial tcp 10.96.0.1:443: i/o timeout"
    );
}

/// dns-stop: every lookup times out, and the TCP check of the DNS Service
/// is refused; the other ClusterIPs work.
#[test]
fn catalog_dns_failure_when_dns_stops() {
    let mut grid = Grid::new(3).with_hosts();
    for n in ["n1", "n2", "n3"] {
        grid = grid.dns_fails(n, ErrorKind::Timeout).check_fails(
            n,
            KUBE_DNS,
            ErrorKind::Refused,
            "connection refused",
        );
    }
    let c = only(
        &grid.conditions(),
        FindingKind::DnsFailure,
        &["n1", "n2", "n3"],
    );
    assert_eq!(c.subject, Subject::Cluster);
    assert_eq!(c.summary, "DNS lookups fail on every node (timeout)");
    assert_eq!(c.evidence.len(), 6);
}

#[test]
fn catalog_dns_failure_on_servfail() {
    let mut grid = Grid::new(3);
    for n in ["n1", "n2", "n3"] {
        grid = grid.dns_fails(n, ErrorKind::Servfail);
    }
    let c = only(
        &grid.conditions(),
        FindingKind::DnsFailure,
        &["n1", "n2", "n3"],
    );
    assert!(c.summary.contains("servfail"));
    assert!(c.hint.contains("CoreDNS"));
}

/// dns-hide n3: the headless Service's SRV answer misses n3's agent for
/// longer than the negative TTL, on every node.
#[test]
fn catalog_dns_stale() {
    let mut grid = Grid::new(3);
    for n in ["n1", "n2", "n3"] {
        grid = grid.check_fails(
            n,
            "dns-srv/",
            ErrorKind::WrongAnswer,
            "missing agent-n3.netmatrix-agents.netmatrix.svc.cluster.local.:9090 for 42s",
        );
    }
    let c = only(
        &grid.conditions(),
        FindingKind::DnsStale,
        &["n1", "n2", "n3"],
    );
    assert_eq!(c.subject, Subject::Cluster);
    assert!(c.evidence[0].contains("wrong-answer: missing agent-n3"));
}

/// underlay-cut n3: both of n3's agents are silent (they reach the
/// aggregator over the underlay); everybody's pod and host cells to n3
/// fail; the agents' ClusterIP fails now and then elsewhere.
#[test]
fn catalog_underlay_broken() {
    let grid = Grid::new(3)
        .with_hosts()
        .silent("n3")
        .silent_in(NetworkMode::Host, "n3")
        .fail("n1", "n3")
        .fail("n2", "n3")
        .host_fail("n1", "n3")
        .host_fail("n2", "n3")
        .agents_clusterip_times_out("n1");
    let c = only(&grid.conditions(), FindingKind::UnderlayBroken, &["n3"]);
    assert!(
        c.evidence[0].starts_with("n3: its agents do not report"),
        "{:?}",
        c.evidence
    );
    assert!(
        c.evidence
            .iter()
            .any(|e| e.starts_with("host network: n1 -> n3: failed"))
    );
    assert!(
        c.evidence
            .iter()
            .any(|e| e.starts_with("pod network: n2 -> n3: failed"))
    );
    assert!(c.hint.contains("ip route get"));
}

#[test]
fn underlay_broken_while_the_node_still_reports() {
    let mut grid = Grid::new(3).with_hosts().isolate("n3");
    for other in ["n1", "n2"] {
        grid = grid.host_fail(other, "n3").host_fail("n3", other);
    }
    only(&grid.conditions(), FindingKind::UnderlayBroken, &["n3"]);
}

#[test]
fn host_icmp_filtered_with_pods_fine_is_not_underlay() {
    let mut grid = Grid::new(3).with_hosts();
    for other in ["n1", "n2"] {
        grid = grid.host_fail(other, "n3").host_fail("n3", other);
    }
    assert_eq!(kinds(&grid.conditions()), []);
}

/// kill-agent n3: its pod agent is silent, its pods still answer, its host
/// agent still reports.
#[test]
fn catalog_agent_missing() {
    let grid = Grid::new(3).with_hosts().silent("n3");
    let c = only(&grid.conditions(), FindingKind::AgentMissing, &["n3"]);
    assert_eq!(c.evidence, ["n3: last report 1m 5s ago"]);
    assert!(c.hint.contains("spec.nodeName=n3"));
}

/// The API says why the agent does not run: the cause is in the finding,
/// and a NotReady node is judged when its NotReady is the pod network.
#[test]
fn agent_missing_says_why_from_the_api() {
    let sandbox = "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to set up sandbox container network: networkPlugin cni failed to set up pod \"netmatrix-agent-x_netmatrix\" network: unable to allocate IP address: dial tcp 127.0.0.1:6784: connect: connection refused";
    let grid = Grid::new(3).silent("n2").agent_down(
        "n2",
        DownCause::SandboxFails {
            pod: "netmatrix-agent-x".into(),
            message: sandbox.into(),
        },
        &["FailedCreatePodSandBox (×7): Failed to create pod sandbox: ..."],
    );
    let c = only(&grid.conditions(), FindingKind::AgentMissing, &["n2"]);
    assert!(
        c.summary.contains("the CNI fails to set up its network"),
        "{}",
        c.summary
    );
    assert!(
        c.summary.contains("connect: connection refused"),
        "{}",
        c.summary
    );
    assert!(c.evidence[1].starts_with("netmatrix/netmatrix-agent-x: FailedCreatePodSandBox"));
    assert!(c.evidence[2].starts_with("event FailedCreatePodSandBox (×7)"));
    assert!(c.hint.contains("check the CNI on n2"), "{}", c.hint);

    let grid = Grid::new(3).silent("n2").agent_down(
        "n2",
        DownCause::ImageNotPulled {
            pod: "netmatrix-agent-x".into(),
            reason: "ImagePullBackOff".into(),
            message: "Back-off pulling image \"ghcr.io/netmatrix/netmatrix:9.9\"".into(),
        },
        &[],
    );
    let c = only(&grid.conditions(), FindingKind::AgentMissing, &["n2"]);
    assert!(
        c.summary.contains("image is not pulled (ImagePullBackOff)"),
        "{}",
        c.summary
    );
    assert!(c.hint.contains("image.tag"), "{}", c.hint);

    // NotReady nodes are not judged, unless their network is why.
    let not_ready = Grid::new(3).silent("n2").state("n2", NodeState::NotReady);
    assert_eq!(kinds(&not_ready.conditions()), []);
    let cni = "KubeletNotReady: container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized";
    let grid = Grid::new(3)
        .silent("n2")
        .state("n2", NodeState::NotReady)
        .agent_down(
            "n2",
            DownCause::NodeNetworkNotReady {
                message: cni.into(),
            },
            &[],
        );
    let c = only(&grid.conditions(), FindingKind::AgentMissing, &["n2"]);
    assert!(
        c.summary
            .starts_with("n2 is NotReady because its container runtime's network is not ready")
    );
    assert!(
        c.evidence[1].ends_with("cni plugin not initialized"),
        "{:?}",
        c.evidence
    );
}

/// Every agent silent at once, no reason from the API: one finding about
/// what they share, not one per node. Not judged at all while the
/// aggregator has just started or resumed from a stall.
#[test]
fn every_agent_silent_at_once_is_one_finding() {
    let mut grid = Grid::new(4);
    for n in ["n1", "n2", "n3", "n4"] {
        grid = grid.silent(n);
    }
    let conditions = grid.conditions();
    let c = only(
        &conditions,
        FindingKind::AgentMissing,
        &["n1", "n2", "n3", "n4"],
    );
    assert_eq!(c.subject, Subject::Cluster);
    assert!(
        c.summary.contains("the aggregator or the way to it"),
        "{}",
        c.summary
    );

    grid.judge_silence = false;
    assert_eq!(kinds(&grid.conditions()), []);

    // One reason known: each node is judged on its own.
    let grid = grid.agent_down("n1", DownCause::NoPod, &[]);
    let mut grid = grid;
    grid.judge_silence = true;
    let conditions = grid.conditions();
    assert_eq!(conditions.len(), 4, "{:?}", kinds(&conditions));
    assert!(
        conditions
            .iter()
            .all(|c| c.kind == FindingKind::AgentMissing)
    );
}

#[test]
fn high_latency_names_the_slow_node() {
    let mut grid = Grid::new(4);
    for other in ["n1", "n2", "n3"] {
        grid = grid.slow("n4", other, 180.0).slow(other, "n4", 150.0);
    }
    let c = only(&grid.conditions(), FindingKind::HighLatency, &["n4"]);
    assert_eq!(c.paths.len(), 6);
    // Slow, but under the absolute floor: nothing.
    let mut grid = Grid::new(4);
    for other in ["n1", "n2", "n3"] {
        grid = grid.slow("n4", other, 20.0).slow(other, "n4", 20.0);
    }
    assert_eq!(kinds(&grid.conditions()), []);
}

// ---------------------------------------------------------------------------
// Small clusters and precedence

#[test]
fn two_nodes_cannot_tell_which_side_is_isolated() {
    // With two nodes either side could be broken: that is cross-node-broken.
    let conditions = Grid::new(2).isolate("n2").conditions();
    only(&conditions, FindingKind::CrossNodeBroken, &["n1", "n2"]);
}

#[test]
fn node_isolated_with_a_silent_third_node_that_others_reach() {
    // n1's agent is silent but its pods answer n3: n2 alone is cut off.
    let conditions = Grid::new(3).silent("n1").isolate("n2").conditions();
    let mut found = kinds(&conditions);
    found.sort();
    assert_eq!(
        found,
        [
            on(FindingKind::NodeIsolated, &["n2"]),
            on(FindingKind::AgentMissing, &["n1"])
        ]
    );
}

#[test]
fn cross_node_broken_takes_precedence_and_swallows_service_findings() {
    let grid = Grid::new(4)
        .all_cross_node_failed()
        .services_unreachable("n3")
        .dns_fails("n1", ErrorKind::Timeout);
    let c = only(
        &grid.conditions(),
        FindingKind::CrossNodeBroken,
        &["n1", "n2", "n3", "n4"],
    );
    assert!(
        c.evidence
            .iter()
            .any(|e| e == "same-node cells: 4 of 4 reachable")
    );
    // 12 failed cells, capped at 20 lines: all there plus the same-node line.
    assert_eq!(c.evidence.len(), 13);
}

#[test]
fn cross_node_broken_needs_same_node_traffic_to_work() {
    let mut grid = Grid::new(3).all_cross_node_failed();
    for n in ["n1", "n2", "n3"] {
        grid = grid.fail(n, n);
    }
    assert_eq!(kinds(&grid.conditions()), []);
}

#[test]
fn silent_isolated_node_is_agent_missing_with_a_cni_hint() {
    // Nobody reaches n3's pods and n3 is silent, no host agents to tell the
    // underlay: the overlay on n3 is the likely cause, and it also explains
    // the silence. Only agent-missing.
    let conditions = Grid::new(4).isolate("n3").silent("n3").conditions();
    let c = only(&conditions, FindingKind::AgentMissing, &["n3"]);
    assert!(c.hint.contains("CNI on n3"));
    assert_eq!(c.evidence.len(), 4);
}

/// A node whose pods cannot send anything off the node (forwarding off,
/// FORWARD dropped, its bridge down): its pod agent cannot report either.
/// Its host agent reports, or the API says its agent pod runs: that is the
/// node's pod network, not a missing agent.
#[test]
fn a_silent_node_nobody_reaches_is_isolated_when_it_is_otherwise_alive() {
    let by_host = Grid::new(3).with_hosts().isolate("n2").silent("n2");
    let c = only(&by_host.conditions(), FindingKind::NodeIsolated, &["n2"]);
    assert_eq!(
        c.evidence[0],
        "n2's agent is silent (last report 1m 5s ago)"
    );
    assert_eq!(
        c.evidence[1],
        "n2's host-network agent reports (the node network works), and 2 of 2 host-network probes to n2 succeed"
    );
    assert!(
        c.summary.contains("its agent cannot report"),
        "{}",
        c.summary
    );
    assert!(c.hint.contains("ip_forward"), "{}", c.hint);

    let by_api = Grid::new(3).isolate("n2").silent("n2").agents_running();
    let c = only(&by_api.conditions(), FindingKind::NodeIsolated, &["n2"]);
    assert!(
        c.evidence[1].contains("agent pod is Running"),
        "{:?}",
        c.evidence
    );

    // Nothing says the node is up: the agent may be gone with the node.
    let neither = Grid::new(3).isolate("n2").silent("n2");
    only(&neither.conditions(), FindingKind::AgentMissing, &["n2"]);
    // Joining: shown, not judged.
    let grid = Grid::new(3)
        .with_hosts()
        .isolate("n2")
        .silent("n2")
        .state("n2", NodeState::Joining);
    assert_eq!(kinds(&grid.conditions()), []);
    // Back from a cut (not expected for the grace): still isolated while
    // the cut lasts, not missing after.
    let expected: BTreeSet<String> = ["n1".to_owned(), "n3".to_owned()].into();
    let grid = Grid::new(3).with_hosts().isolate("n2").silent("n2");
    only(
        &grid.conditions_expecting(&expected),
        FindingKind::NodeIsolated,
        &["n2"],
    );
    assert_eq!(
        kinds(&Grid::new(3).silent("n2").conditions_expecting(&expected)),
        []
    );
    // Its host network is cut as well: the underlay, as before.
    let mut grid = Grid::new(3).with_hosts().isolate("n2").silent("n2");
    for other in ["n1", "n3"] {
        grid = grid.host_fail(other, "n2");
    }
    let grid = grid.silent_in(NetworkMode::Host, "n2").agents_running();
    only(&grid.conditions(), FindingKind::UnderlayBroken, &["n2"]);
}

#[test]
fn a_relayed_row_is_judged_and_said_to_be_relayed() {
    let grid = Grid::new(3).with_hosts().isolate("n2").relayed("n2");
    let c = only(&grid.conditions(), FindingKind::NodeIsolated, &["n2"]);
    assert_eq!(
        c.evidence[0],
        "n2's agent cannot reach the aggregator: its report was relayed by n2's host agent (host-agent-n2)"
    );
    assert_eq!(c.evidence.len(), 5, "{:?}", c.evidence);
}

/// Two faults at once: n2 cut off and CoreDNS down. Both are named; the
/// DNS finding says the cut may explain it if CoreDNS runs only on n2.
#[test]
fn a_second_fault_is_named_while_a_node_is_cut_off() {
    let mut grid = Grid::new(4).with_hosts().isolate("n2").silent("n2");
    for n in ["n1", "n3", "n4"] {
        grid = grid.dns_fails(n, ErrorKind::Timeout);
    }
    let mut found = kinds(&grid.conditions());
    found.sort();
    assert_eq!(
        found,
        [
            on(FindingKind::NodeIsolated, &["n2"]),
            on(FindingKind::DnsFailure, &["n1", "n3", "n4"]),
        ]
    );
    let conditions = grid.conditions();
    let dns = conditions
        .iter()
        .find(|c| c.kind == FindingKind::DnsFailure)
        .expect("dns-failure");
    assert_eq!(
        dns.evidence
            .iter()
            .filter(|e| e.starts_with("n2 cut off"))
            .count(),
        1,
        "{:?}",
        dns.evidence
    );
    // Split across the cluster, DNS timeouts stay suspect.
    let mut grid = Grid::new(4).all_cross_node_failed();
    for n in ["n1", "n2", "n3", "n4"] {
        grid = grid.dns_fails(n, ErrorKind::Timeout);
    }
    only(
        &grid.conditions(),
        FindingKind::CrossNodeBroken,
        &["n1", "n2", "n3", "n4"],
    );
}

/// Right after an install every node is joining: nothing churns, so a
/// failure is named at once. One node joining a working cluster keeps its
/// grace.
#[test]
fn a_cluster_of_joining_nodes_is_judged_a_joining_node_among_ready_ones_is_not() {
    let mut grid = Grid::new(3).with_hosts().isolate("n2");
    for n in ["n1", "n2", "n3"] {
        grid = grid.state(n, NodeState::Joining);
    }
    only(&grid.conditions(), FindingKind::NodeIsolated, &["n2"]);
    let grid = Grid::new(3)
        .with_hosts()
        .isolate("n2")
        .state("n2", NodeState::Joining);
    assert_eq!(kinds(&grid.conditions()), []);
}

#[test]
fn silent_node_that_is_not_expected_raises_nothing() {
    let grid = Grid::new(3).silent("n3");
    let expected: BTreeSet<String> = ["n1".to_owned(), "n2".to_owned()].into();
    assert_eq!(kinds(&grid.conditions_expecting(&expected)), []);
}

#[test]
fn apiserver_unreachable_everywhere_is_one_finding() {
    let mut grid = Grid::new(3);
    for n in ["n1", "n2", "n3"] {
        grid = grid.check_fails(n, APISERVER, ErrorKind::Refused, "connection refused");
    }
    let c = only(
        &grid.conditions(),
        FindingKind::ApiserverUnreachable,
        &["n1", "n2", "n3"],
    );
    assert_eq!(c.subject, Subject::Cluster);
}

#[test]
fn clusterip_broken_not_when_pod_cells_fail_too() {
    // n4 reaches hardly anything, even on its own node, though others reach
    // it: not isolated, but its pod path is not fine either.
    let grid = Grid::new(4)
        .fail("n4", "n1")
        .fail("n4", "n2")
        .fail("n4", "n3")
        .fail("n4", "n4")
        .fail("n1", "n4")
        .services_unreachable("n4");
    let found = kinds(&grid.conditions());
    assert!(
        found
            .iter()
            .all(|(k, _)| *k != FindingKind::ClusteripBroken),
        "{found:?}"
    );
}

/// ICMP dropped between two nodes' pods while TCP and UDP cross: filtered,
/// information only, no path finding. Every protocol dropped is broken.
#[test]
fn a_protocol_dropped_where_others_pass_is_filtered_not_broken() {
    use Status::{Failed, Ok};
    let grid = Grid::new(3)
        .protocols("n1", "n2", Failed, Ok, Ok)
        .protocols("n2", "n1", Failed, Ok, Ok);
    assert_eq!(
        kinds(&grid.conditions()),
        [
            (
                FindingKind::IcmpFiltered,
                vec!["n1".to_owned(), "n2".to_owned()]
            ),
            (
                FindingKind::IcmpFiltered,
                vec!["n1".to_owned(), "n2".to_owned()]
            ),
        ]
    );
    let conditions = grid.conditions();
    let c = conditions
        .iter()
        .find(|c| c.subject == Subject::Node("n1".into()))
        .expect("one finding per source node");
    assert_eq!(c.paths.len(), 1);
    assert_eq!(
        c.summary,
        "ICMP from n1's pods to the pods of n2 is dropped, while other protocols cross: filtered, not broken"
    );
    assert_eq!(
        c.evidence[0],
        "n1 -> n2: ICMP failed, TCP ok, UDP ok (timeout: no echo reply)"
    );
    // TCP only (a policy allowing ICMP and UDP).
    let grid = Grid::new(3).protocols("n3", "n1", Ok, Failed, Ok);
    only(&grid.conditions(), FindingKind::TcpFiltered, &["n1", "n3"]);
    // ICMP and UDP dropped, TCP passing: both named.
    let grid = Grid::new(3).protocols("n3", "n1", Failed, Ok, Failed);
    assert_eq!(
        kinds(&grid.conditions()),
        [
            (
                FindingKind::IcmpFiltered,
                vec!["n1".to_owned(), "n3".to_owned()]
            ),
            (
                FindingKind::UdpFiltered,
                vec!["n1".to_owned(), "n3".to_owned()]
            ),
        ]
    );
    // A lossy path loses a TCP handshake now and then: loss, no filter.
    let grid = Grid::new(3)
        .degrade("n1", "n2")
        .protocols("n1", "n2", Status::Degraded, Failed, Ok);
    none_of(&grid.conditions(), FindingKind::TcpFiltered);
    // Loss at the node: a handshake lost on a path whose echoes came
    // through clean this round is the node's loss (on another path this
    // round, or over this path's window), no filter.
    for grid in [
        Grid::new(4).degrade("n3", "n4"),
        Grid::new(4).lossy("n3", "n4", 0.0, 0.2),
        Grid::new(4).lossy("n2", "n3", 0.0, 0.2),
    ] {
        let grid = grid.protocols("n3", "n2", Ok, Failed, Ok);
        none_of(&grid.conditions(), FindingKind::TcpFiltered);
    }
    // Everything dropped: the path is broken, as before.
    let grid = Grid::new(3)
        .protocols("n1", "n2", Failed, Failed, Failed)
        .protocols("n2", "n1", Failed, Failed, Failed);
    assert_eq!(
        kinds(&grid.conditions()),
        [(
            FindingKind::PairBroken,
            vec!["n1".to_owned(), "n2".to_owned()]
        )]
    );
}

/// Probes a NetworkPolicy keeps out are left out of the cells (unknown),
/// and named once per policy, with no network finding.
#[test]
fn probes_a_policy_denies_are_named_as_the_policy_only() {
    let mut grid = Grid::new(3);
    for from in ["n1", "n2", "n3"] {
        for to in ["n1", "n2", "n3"] {
            let cell = grid.cell(from, to);
            cell.status = Status::Unknown;
            cell.loss = None;
            cell.blocked = Some(Box::new(netmatrix_api::Blocked {
                protocols: vec!["ICMP".into(), "TCP".into(), "UDP".into()],
                policies: vec!["netmatrix/default-deny".into()],
            }));
        }
    }
    let c = only(
        &grid.conditions(),
        FindingKind::BlockedByPolicy,
        &["n1", "n2", "n3"],
    );
    assert_eq!(c.subject, Subject::Policy("netmatrix/default-deny".into()));
    assert!(c.summary.contains("ICMP, TCP, UDP"), "{}", c.summary);
    assert_eq!(c.paths.len(), 9);
    assert_eq!(
        c.evidence[0],
        "n1 -> n1: ICMP, TCP, UDP denied by netmatrix/default-deny"
    );
}

/// A stale kube-proxy rule for one Service on one node: that Service on
/// that node, nothing else (not `clusterip-broken`: the node's other
/// Services work).
#[test]
fn one_service_failing_on_one_node_is_named_alone() {
    let grid = Grid::new(3).agents_clusterip_times_out("n1");
    let c = only(&grid.conditions(), FindingKind::ServiceUnreachable, &["n1"]);
    assert_eq!(
        c.subject,
        Subject::Service(Some("n1".into()), AGENTS.into())
    );
    assert!(
        c.summary
            .contains("netmatrix-agent Service (10.96.100.7:8080)"),
        "{}",
        c.summary
    );
    assert_eq!(
        c.evidence[0],
        "n1 -> clusterip/netmatrix-agent 10.96.100.7:8080: timeout: dial tcp 10.96.100.7:8080: i/o timeout"
    );
    assert!(c.hint.contains("kube-proxy on n1"));
    // Two Services failing on two nodes: one finding each.
    let grid = Grid::new(3).agents_clusterip_times_out("n1").check_fails(
        "n2",
        KUBE_DNS,
        ErrorKind::Refused,
        "connection refused",
    );
    assert_eq!(
        kinds(&grid.conditions()),
        [
            (FindingKind::ServiceUnreachable, vec!["n1".to_owned()]),
            (FindingKind::ServiceUnreachable, vec!["n2".to_owned()]),
        ]
    );
}

/// One Service failing from every node is the Service's (its endpoints),
/// named once.
#[test]
fn one_service_failing_everywhere_is_one_finding() {
    let grid = Grid::new(3)
        .agents_clusterip_times_out("n1")
        .agents_clusterip_times_out("n2")
        .agents_clusterip_times_out("n3");
    let c = only(
        &grid.conditions(),
        FindingKind::ServiceUnreachable,
        &["n1", "n2", "n3"],
    );
    assert_eq!(c.subject, Subject::Service(None, AGENTS.into()));
    assert!(c.hint.contains("endpointslices"));
}

/// A Service timing out from a node whose TCP to some pods is filtered may
/// be picking a backend behind the filter: the filter is named, not the
/// Service.
#[test]
fn a_service_timing_out_behind_a_tcp_filter_is_not_named() {
    let grid = Grid::new(3)
        .protocols("n3", "n2", Status::Ok, Status::Failed, Status::Ok)
        .agents_clusterip_times_out("n3");
    assert_eq!(
        kinds(&grid.conditions()),
        [(
            FindingKind::TcpFiltered,
            vec!["n2".to_owned(), "n3".to_owned()]
        )]
    );
}

/// A Service timing out while a node is cut off may be picking a backend
/// there: the network finding names it, not the Service.
#[test]
fn a_service_timing_out_behind_a_cut_off_node_is_not_named() {
    let grid = Grid::new(3)
        .isolate("n2")
        .agents_clusterip_times_out("n1")
        .agents_clusterip_times_out("n3");
    assert_eq!(
        kinds(&grid.conditions()),
        [(FindingKind::NodeIsolated, vec!["n2".to_owned()])]
    );
}

/// A Service timing out from one node while a node loses packets may be
/// picking a backend there, whose handshakes fail at random (seen in the
/// lab: loss on node-2, the companions Service timed out from node-3 three
/// rounds in a row): the loss is named, not the Service. A refusal is still
/// judged, the same timeout without loss is the Service's, and so is a
/// Service timing out from every judged node: loss does not do that.
#[test]
fn a_service_timing_out_while_a_node_loses_packets_is_not_named() {
    let grid = loss_on_n2().agents_clusterip_times_out("n3");
    assert_eq!(
        kinds(&grid.conditions()),
        [(FindingKind::PacketLoss, vec!["n2".to_owned()])]
    );
    let grid = loss_on_n2().check_fails("n3", AGENTS, ErrorKind::Refused, "connection refused");
    assert!(
        kinds(&grid.conditions())
            .contains(&(FindingKind::ServiceUnreachable, vec!["n3".to_owned()])),
        "{:?}",
        kinds(&grid.conditions())
    );
    only(
        &Grid::new(3)
            .with_hosts()
            .agents_clusterip_times_out("n3")
            .conditions(),
        FindingKind::ServiceUnreachable,
        &["n3"],
    );
    let grid = loss_on_n2()
        .agents_clusterip_times_out("n1")
        .agents_clusterip_times_out("n3");
    let conditions = grid.conditions();
    assert_eq!(
        kinds(&conditions),
        [
            (FindingKind::PacketLoss, vec!["n2".to_owned()]),
            (
                FindingKind::ServiceUnreachable,
                vec!["n1".to_owned(), "n3".to_owned()]
            ),
        ]
    );
    assert!(
        conditions
            .iter()
            .any(|c| c.subject == Subject::Service(None, AGENTS.into())),
        "one finding for the Service, not per node"
    );
}

#[test]
fn dns_failure_keeps_the_error_kind() {
    let grid = Grid::new(3).check_fails("n1", DNS_A, ErrorKind::Servfail, "lookup failed");
    let c = only(&grid.conditions(), FindingKind::DnsFailure, &["n1"]);
    assert!(c.summary.contains("servfail"));
    assert_eq!(
        c.evidence,
        [
            "n1 -> dns-a/kubernetes.default.svc.cluster.local. 10.96.0.10:53: servfail: lookup failed"
        ]
    );
}

#[test]
fn wrong_answers_are_stale_not_failures() {
    let grid = Grid::new(3).check_fails("n1", DNS_SRV, ErrorKind::WrongAnswer, "missing x");
    only(&grid.conditions(), FindingKind::DnsStale, &["n1"]);
}

// ---------------------------------------------------------------------------
// Churn: nodes that are not Ready are shown, never judged

#[test]
fn cordoned_joining_not_ready_and_departed_nodes_are_not_judged() {
    for state in [
        NodeState::Cordoned,
        NodeState::Joining,
        NodeState::NotReady,
        NodeState::Unknown,
    ] {
        // Cells to and from the node fail (agents skip it, or it is still
        // starting), and its agent is silent.
        let grid = Grid::new(4)
            .with_hosts()
            .isolate("n4")
            .silent("n4")
            .state("n4", state);
        assert_eq!(kinds(&grid.conditions()), [], "{state:?}");
        // Reporting, with its own checks failing.
        let grid = Grid::new(4)
            .isolate("n4")
            .dns_fails("n4", ErrorKind::Timeout)
            .state("n4", state);
        assert_eq!(kinds(&grid.conditions()), [], "{state:?}");
    }
}

#[test]
fn a_joining_node_does_not_make_a_partition_or_hide_a_real_one() {
    // n3 joins (cells to it fail while it starts); n2 is really isolated.
    let grid = Grid::new(5)
        .isolate("n3")
        .state("n3", NodeState::Joining)
        .isolate("n2");
    only(&grid.conditions(), FindingKind::NodeIsolated, &["n2"]);
}

// ---------------------------------------------------------------------------
// With hysteresis

/// Rules and hysteresis together, round by round.
fn findings_per_round(rounds: &[Grid]) -> Vec<Vec<Finding>> {
    let mut h = Hysteresis::new(3, 3);
    rounds
        .iter()
        .enumerate()
        .map(|(i, g)| h.observe(g.conditions(), 5000 * i as u64))
        .collect()
}

#[test]
fn one_bad_round_raises_nothing() {
    let rounds = [
        Grid::new(3),
        Grid::new(3).isolate("n2"),
        Grid::new(3),
        Grid::new(3),
    ];
    assert!(findings_per_round(&rounds).iter().all(Vec::is_empty));
}

#[test]
fn finding_raised_after_three_rounds_and_cleared_after_three_good_ones() {
    let bad = || Grid::new(3).isolate("n2");
    let rounds = [
        bad(),
        bad(),
        bad(),
        Grid::new(3),
        Grid::new(3),
        Grid::new(3),
    ];
    let counts: Vec<usize> = findings_per_round(&rounds).iter().map(Vec::len).collect();
    assert_eq!(counts, [0, 0, 1, 1, 1, 0]);
    let raised = &findings_per_round(&rounds)[2][0];
    assert_eq!(raised.kind, FindingKind::NodeIsolated);
    assert_eq!(
        raised.since_unix_ms, 0,
        "since is when the condition first held"
    );
}

#[test]
fn findings_carry_groups_and_paths() {
    let bad = || Grid::new(3).fail("n2", "n3");
    let findings = findings_per_round(&[bad(), bad(), bad()]);
    let f = &findings[2][0];
    assert_eq!(f.kind, FindingKind::AsymmetricPath);
    assert_eq!(f.paths, [path("n2", "n3")]);
}
