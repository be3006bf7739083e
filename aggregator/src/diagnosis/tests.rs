//! Rule tests on hand-built matrices: what must fire, and what must not.

use netmatrix_api::{
    Cell, CheckCell, ErrorKind, Finding, FindingKind, Matrix, MatrixRow, ProbeError, Status,
};

use std::collections::BTreeSet;

use super::{Condition, Context, Hysteresis, Subject, evaluate};
use crate::matrix::CheckTargets;

/// A matrix under construction: every node reporting, every cell and check ok.
struct Grid {
    matrix: Matrix,
    targets: CheckTargets,
}

fn ok_cell(to: &str) -> Cell {
    Cell {
        to: to.into(),
        status: Status::Ok,
        loss: Some(0.0),
        rtt_avg_ms: Some(0.3),
        rtt_max_ms: Some(0.5),
        pods: 2,
        mtu: None,
        last_error: None,
        age_ms: Some(1000.0),
    }
}

fn check(column: &str) -> CheckCell {
    CheckCell {
        column: column.into(),
        status: Status::Ok,
        latency_ms: Some(1.0),
        last_error: None,
        age_ms: Some(1000.0),
    }
}

impl Grid {
    fn new(n: usize) -> Self {
        let nodes: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let mut targets = CheckTargets::new();
        let rows = nodes
            .iter()
            .map(|node| {
                targets.insert((node.clone(), "apiserver".into()), "10.96.0.1:443".into());
                targets.insert(
                    (node.clone(), "clusterip/netmatrix-agent".into()),
                    "10.96.100.7:8080".into(),
                );
                MatrixRow {
                    node: node.clone(),
                    reporting: true,
                    report_age_ms: Some(1000.0),
                    cells: nodes.iter().map(|to| ok_cell(to)).collect(),
                    services: vec![check("apiserver"), check("clusterip/netmatrix-agent")],
                    dns: vec![
                        check("dns-a/kubernetes.default.svc.cluster.local."),
                        check("dns-srv/_http._tcp.netmatrix-agent.netmatrix.svc.cluster.local."),
                    ],
                    state: Default::default(),
                    mtu: None,
                }
            })
            .collect();
        Grid {
            matrix: Matrix {
                generated_unix_ms: 0,
                nodes,
                rows,
                host_rows: vec![],
            },
            targets,
        }
    }

    fn row(&mut self, node: &str) -> &mut MatrixRow {
        self.matrix
            .rows
            .iter_mut()
            .find(|r| r.node == node)
            .expect("node in grid")
    }

    fn cell(&mut self, from: &str, to: &str) -> &mut Cell {
        self.row(from)
            .cells
            .iter_mut()
            .find(|c| c.to == to)
            .expect("cell in grid")
    }

    fn fail(mut self, from: &str, to: &str) -> Self {
        let cell = self.cell(from, to);
        cell.status = Status::Failed;
        cell.loss = Some(1.0);
        cell.rtt_avg_ms = None;
        cell.last_error = Some(ProbeError::new(ErrorKind::Timeout, "no echo reply"));
        self
    }

    fn degrade(mut self, from: &str, to: &str) -> Self {
        let cell = self.cell(from, to);
        cell.status = Status::Degraded;
        cell.loss = Some(1.0 / 6.0);
        self
    }

    /// Fails every cross-node cell touching `node`.
    fn isolate(mut self, node: &str) -> Self {
        for other in self.matrix.nodes.clone() {
            if other != node {
                self = self.fail(node, &other).fail(&other, node);
            }
        }
        self
    }

    fn all_cross_node_failed(mut self) -> Self {
        for from in self.matrix.nodes.clone() {
            for to in self.matrix.nodes.clone() {
                if from != to {
                    self = self.fail(&from, &to);
                }
            }
        }
        self
    }

    fn silent(mut self, node: &str) -> Self {
        let row = self.row(node);
        row.reporting = false;
        row.report_age_ms = Some(65_000.0);
        for c in &mut row.cells {
            *c = Cell {
                status: Status::Unknown,
                loss: None,
                ..ok_cell(&c.to)
            };
        }
        for c in row.services.iter_mut().chain(row.dns.iter_mut()) {
            c.status = Status::Unknown;
        }
        self
    }

    fn check_fails(mut self, node: &str, column: &str, kind: ErrorKind, message: &str) -> Self {
        let row = self.row(node);
        let check = row
            .services
            .iter_mut()
            .chain(row.dns.iter_mut())
            .find(|c| c.column.starts_with(column))
            .expect("check in grid");
        check.status = Status::Failed;
        check.last_error = Some(ProbeError::new(kind, message));
        self
    }

    fn services_unreachable(self, node: &str) -> Self {
        self.check_fails(
            node,
            "apiserver",
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
        self.check_fails(node, "dns-a/", kind, "lookup failed")
    }

    fn conditions(&self) -> Vec<Condition> {
        let expected: BTreeSet<String> = self.matrix.nodes.iter().cloned().collect();
        self.conditions_expecting(&expected)
    }

    fn conditions_expecting(&self, expected: &BTreeSet<String>) -> Vec<Condition> {
        let context = Context {
            expected,
            check_targets: &self.targets,
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

#[test]
fn healthy_matrix_has_no_conditions() {
    assert_eq!(kinds(&Grid::new(4).conditions()), []);
}

#[test]
fn a_few_lost_echoes_raise_nothing() {
    let grid = Grid::new(3).degrade("n1", "n2").degrade("n3", "n1");
    assert_eq!(kinds(&grid.conditions()), []);
    // Even a single failed pair is not a node or cluster problem.
    assert_eq!(kinds(&Grid::new(3).fail("n1", "n2").conditions()), []);
}

#[test]
fn node_isolated_names_the_node_with_evidence_and_hint() {
    let conditions = Grid::new(3).isolate("n2").conditions();
    assert_eq!(kinds(&conditions), [on(FindingKind::NodeIsolated, &["n2"])]);
    let c = &conditions[0];
    assert_eq!(c.subject, Subject::Node("n2".into()));
    assert_eq!(c.evidence.len(), 4);
    assert!(
        c.evidence.contains(
            &"n1 -> n2: failed, 100% loss over 2 pod(s): timeout: no echo reply".to_owned()
        )
    );
    assert!(c.evidence.iter().any(|e| e.starts_with("n2 -> n3: failed")));
    assert!(c.hint.contains("check the CNI on n2"));
    assert!(c.hint.contains("bridge fdb show dev flannel.1"));
}

#[test]
fn node_isolated_needs_three_reporting_nodes() {
    // With two nodes either side could be broken: that is cross-node-broken.
    let conditions = Grid::new(2).isolate("n2").conditions();
    assert_eq!(
        kinds(&conditions),
        [on(FindingKind::CrossNodeBroken, &["n1", "n2"])]
    );
    // Three nodes but one silent: only two report.
    let conditions = Grid::new(3).silent("n1").isolate("n2").conditions();
    assert!(
        kinds(&conditions)
            .iter()
            .all(|(k, _)| *k != FindingKind::NodeIsolated)
    );
}

#[test]
fn node_isolated_needs_the_rest_of_the_cluster_healthy() {
    // A 2-2 partition: each node reaches its partner, so nobody is isolated.
    let mut grid = Grid::new(4);
    for (a, b) in [("n1", "n3"), ("n1", "n4"), ("n2", "n3"), ("n2", "n4")] {
        grid = grid.fail(a, b).fail(b, a);
    }
    assert_eq!(kinds(&grid.conditions()), []);
}

#[test]
fn cross_node_broken_takes_precedence_and_swallows_service_findings() {
    let grid = Grid::new(4)
        .all_cross_node_failed()
        .services_unreachable("n3")
        .dns_fails("n1", ErrorKind::Timeout);
    let conditions = grid.conditions();
    assert_eq!(
        kinds(&conditions),
        [on(FindingKind::CrossNodeBroken, &["n1", "n2", "n3", "n4"])]
    );
    let c = &conditions[0];
    assert_eq!(c.subject, Subject::Cluster);
    assert!(c.hint.contains("UDP 8472"));
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
fn silent_node_is_agent_missing_not_isolated() {
    let conditions = Grid::new(3).silent("n3").conditions();
    assert_eq!(kinds(&conditions), [on(FindingKind::AgentMissing, &["n3"])]);
    assert_eq!(conditions[0].evidence, ["n3: last report 1m 5s ago"]);
    assert!(conditions[0].hint.contains("spec.nodeName=n3"));

    // Nobody reaches n3's pods either: the overlay on n3 is the likely cause,
    // and it also explains the silence. Still only agent-missing.
    let conditions = Grid::new(4).isolate("n3").silent("n3").conditions();
    assert_eq!(kinds(&conditions), [on(FindingKind::AgentMissing, &["n3"])]);
    assert!(conditions[0].hint.contains("CNI on n3"));
    assert_eq!(conditions[0].evidence.len(), 4);
}

#[test]
fn silent_node_that_is_not_expected_raises_nothing() {
    let grid = Grid::new(3).silent("n3");
    let expected: BTreeSet<String> = ["n1".to_owned(), "n2".to_owned()].into();
    assert_eq!(kinds(&grid.conditions_expecting(&expected)), []);
}

#[test]
fn apiserver_unreachable_when_other_clusterips_work() {
    let grid = Grid::new(3).check_fails(
        "n2",
        "apiserver",
        ErrorKind::Timeout,
        "dial tcp 10.96.0.1:443: i/o timeout",
    );
    let conditions = grid.conditions();
    assert_eq!(
        kinds(&conditions),
        [on(FindingKind::ApiserverUnreachable, &["n2"])]
    );
    assert_eq!(
        conditions[0].evidence[0],
        "n2 -> apiserver 10.96.0.1:443: timeout: dial tcp 10.96.0.1:443: i/o timeout"
    );
}

#[test]
fn apiserver_unreachable_everywhere_is_one_finding() {
    let mut grid = Grid::new(3);
    for n in ["n1", "n2", "n3"] {
        grid = grid.check_fails(n, "apiserver", ErrorKind::Refused, "connection refused");
    }
    let conditions = grid.conditions();
    assert_eq!(
        kinds(&conditions),
        [on(FindingKind::ApiserverUnreachable, &["n1", "n2", "n3"])]
    );
    assert_eq!(conditions[0].subject, Subject::Cluster);
}

#[test]
fn clusterip_broken_shows_the_apiserver_error_and_explains_dns() {
    let grid = Grid::new(3)
        .services_unreachable("n3")
        .dns_fails("n3", ErrorKind::Timeout);
    let conditions = grid.conditions();
    assert_eq!(
        kinds(&conditions),
        [on(FindingKind::ClusteripBroken, &["n3"])]
    );
    let c = &conditions[0];
    assert!(
        c.evidence.contains(
            &"n3 -> apiserver 10.96.0.1:443: unreachable: dial tcp 10.96.0.1:443: connect: network is unreachable"
                .to_owned()
        ),
        "{:?}",
        c.evidence
    );
    assert!(c.hint.contains("iptables-save -t nat | grep KUBE-SERVICES"));
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

#[test]
fn isolated_node_gets_no_service_or_dns_findings() {
    let grid = Grid::new(3)
        .isolate("n2")
        .services_unreachable("n2")
        .dns_fails("n2", ErrorKind::Timeout);
    assert_eq!(
        kinds(&grid.conditions()),
        [on(FindingKind::NodeIsolated, &["n2"])]
    );
}

#[test]
fn dns_failure_keeps_the_error_kind() {
    let conditions = Grid::new(3)
        .dns_fails("n1", ErrorKind::Servfail)
        .conditions();
    assert_eq!(kinds(&conditions), [on(FindingKind::DnsFailure, &["n1"])]);
    assert!(conditions[0].summary.contains("servfail"));
    assert_eq!(
        conditions[0].evidence,
        ["n1 -> dns-a/kubernetes.default.svc.cluster.local.: servfail: lookup failed"]
    );
}

#[test]
fn dns_failure_everywhere_is_one_finding_and_wrong_answers_are_not_failures() {
    let mut grid = Grid::new(3);
    for n in ["n1", "n2", "n3"] {
        grid = grid.dns_fails(n, ErrorKind::Nxdomain);
    }
    let conditions = grid.conditions();
    assert_eq!(
        kinds(&conditions),
        [on(FindingKind::DnsFailure, &["n1", "n2", "n3"])]
    );
    assert_eq!(conditions[0].subject, Subject::Cluster);
    assert_eq!(conditions[0].evidence.len(), 3);

    let grid = Grid::new(3).dns_fails("n1", ErrorKind::WrongAnswer);
    assert_eq!(kinds(&grid.conditions()), []);
}

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
