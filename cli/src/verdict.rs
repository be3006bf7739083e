//! Judging one aggregator round: is the pod network healthy, broken, or is
//! it too early to say?
//!
//! Pure functions over the `/api/v1` wire types, so every rule is unit
//! tested without a network.

use std::collections::HashSet;

use netmatrix_api::{Finding, FindingKind, Matrix, NodeState, ProbeError, Status};
use serde::Serialize;

/// What one round of the aggregator says.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Round {
    /// Not every expected node has reported yet (or no node is known), or
    /// some paths between them were not measured yet (an agent that has
    /// not discovered a new peer's pods).
    Waiting {
        reporting: usize,
        expected: usize,
        unmeasured: usize,
    },
    /// Every expected node reported, every cell and check passed, and
    /// there is no finding.
    Healthy { nodes: usize },
    /// Something failed: findings (root causes with hints) and/or failing
    /// cells and checks that no finding explains yet (a finding needs a few
    /// rounds to be raised).
    Failing {
        findings: Vec<Finding>,
        failing: Vec<String>,
    },
}

/// Nodes whose agents should report and whose cells count: Ready ones, and
/// ones that joined recently (the aggregator gives those a grace period
/// before naming findings, but right after a cluster is built every node is
/// young, and their cells are measured all the same).
fn is_expected(state: NodeState) -> bool {
    matches!(state, NodeState::Ready | NodeState::Joining)
}

/// Judges one round. Nodes that are cordoned or NotReady are not expected
/// to report (agents do not probe them either).
pub fn judge(matrix: &Matrix, findings: &[Finding]) -> Round {
    let expected: Vec<_> = matrix
        .rows
        .iter()
        .filter(|r| is_expected(r.state))
        .collect();
    let reporting = expected.iter().filter(|r| r.reporting).count();
    if expected.is_empty() || reporting < expected.len() {
        return Round::Waiting {
            reporting,
            expected: expected.len(),
            unmeasured: 0,
        };
    }
    let names: HashSet<&str> = expected.iter().map(|r| r.node.as_str()).collect();
    // `agent-missing` about a node that reports again is the aggregator
    // still clearing it (it clears after a few healthy rounds): right after
    // an install every agent was missing for a moment.
    let findings: Vec<Finding> = findings
        .iter()
        .filter(|f| {
            !(f.kind == FindingKind::AgentMissing
                && f.nodes.iter().all(|n| names.contains(n.as_str())))
        })
        // A filtered protocol or a policy is not a broken network.
        .filter(|f| !f.kind.is_information())
        .cloned()
        .collect();
    let mut failing = Vec::new();
    let mut unmeasured = 0;
    for row in &expected {
        for cell in row.cells.iter().filter(|c| names.contains(&*c.to)) {
            // Not probed yet. The node's own cell stays unknown when it has
            // no companion pod, and that is not a gap.
            if cell.status == Status::Unknown && *cell.to != *row.node {
                unmeasured += 1;
            }
            if cell.status == Status::Failed {
                let error = error_suffix(cell.last_error.as_deref());
                failing.push(format!("{} -> {}{error}", row.node, cell.to));
            }
        }
        for check in row.checks() {
            if check.status == Status::Failed {
                let error = error_suffix(check.last_error.as_ref());
                failing.push(format!("{} {}{error}", row.node, check.column));
            }
        }
    }
    if !findings.is_empty() || !failing.is_empty() {
        Round::Failing { findings, failing }
    } else if unmeasured > 0 {
        Round::Waiting {
            reporting,
            expected: expected.len(),
            unmeasured,
        }
    } else {
        Round::Healthy {
            nodes: expected.len(),
        }
    }
}

/// `": MESSAGE"` of a cell's or check's last error, empty without one.
fn error_suffix(error: Option<&ProbeError>) -> String {
    error
        .map(|e| format!(": {}", e.message))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::fixtures;
    use netmatrix_api::{Cell, MatrixRow};

    fn cell(to: &str, status: Status) -> Cell {
        Cell {
            pods: 2,
            ..fixtures::cell(to, status)
        }
    }

    fn row(node: &str, reporting: bool, cells: Vec<Cell>) -> MatrixRow {
        MatrixRow {
            reporting,
            report_age_ms: reporting.then_some(1000.0),
            ..fixtures::row(node, cells)
        }
    }

    fn matrix(rows: Vec<MatrixRow>) -> Matrix {
        Matrix {
            generated_unix_ms: 1,
            ..fixtures::matrix(rows)
        }
    }

    fn finding(kind: FindingKind, nodes: &[&str]) -> Finding {
        Finding {
            summary: "s".into(),
            hint: "h".into(),
            ..fixtures::finding(kind, nodes)
        }
    }

    fn all_ok(nodes: &[&str]) -> Vec<MatrixRow> {
        nodes
            .iter()
            .map(|n| {
                row(
                    n,
                    true,
                    nodes.iter().map(|to| cell(to, Status::Ok)).collect(),
                )
            })
            .collect()
    }

    /// A filtered protocol or a policy is information: the round is
    /// healthy when every path and check works.
    #[test]
    fn information_findings_do_not_fail() {
        let m = matrix(all_ok(&["a", "b"]));
        let info = [
            finding(FindingKind::IcmpFiltered, &["a", "b"]),
            finding(FindingKind::BlockedByPolicy, &["a"]),
        ];
        assert_eq!(judge(&m, &info), Round::Healthy { nodes: 2 });
        let broken = [finding(FindingKind::ServiceUnreachable, &["a"])];
        assert!(matches!(judge(&m, &broken), Round::Failing { .. }));
    }

    #[test]
    fn waits_until_every_ready_node_reports() {
        let mut rows = all_ok(&["a", "b"]);
        rows[1].reporting = false;
        assert_eq!(
            judge(&matrix(rows), &[]),
            Round::Waiting {
                reporting: 1,
                expected: 2,
                unmeasured: 0
            }
        );
        assert_eq!(
            judge(&matrix(vec![]), &[]),
            Round::Waiting {
                reporting: 0,
                expected: 0,
                unmeasured: 0
            }
        );
    }

    #[test]
    fn cordoned_and_not_ready_nodes_are_not_expected() {
        let mut rows = all_ok(&["a", "b", "c"]);
        rows[2].state = NodeState::Cordoned;
        rows[2].reporting = false;
        rows[1].state = NodeState::Joining;
        // a's cell to the cordoned node is not probed and may read failed.
        rows[0].cells[2].status = Status::Failed;
        assert_eq!(judge(&matrix(rows), &[]), Round::Healthy { nodes: 2 });
    }

    #[test]
    fn paths_not_measured_yet_are_waiting_not_healthy() {
        let mut rows = all_ok(&["a", "b"]);
        rows[0].cells[1].status = Status::Unknown;
        // No companion: a node's own cell is never measured, and that is fine.
        rows[1].cells[1].status = Status::Unknown;
        assert_eq!(
            judge(&matrix(rows.clone()), &[]),
            Round::Waiting {
                reporting: 2,
                expected: 2,
                unmeasured: 1
            }
        );
        // A failure is a failure, measured or not elsewhere.
        rows[1].cells[0].status = Status::Failed;
        assert!(matches!(judge(&matrix(rows), &[]), Round::Failing { .. }));
    }

    #[test]
    fn all_ok_without_findings_is_healthy() {
        assert_eq!(
            judge(&matrix(all_ok(&["a", "b"])), &[]),
            Round::Healthy { nodes: 2 }
        );
    }

    #[test]
    fn findings_and_unexplained_failures_are_failing() {
        let rows = all_ok(&["a", "b"]);
        let f = finding(FindingKind::NodeIsolated, &["b"]);
        let Round::Failing { findings, failing } = judge(&matrix(rows), &[f]) else {
            panic!("not failing");
        };
        assert_eq!(findings.len(), 1);
        assert!(failing.is_empty());

        let mut rows = all_ok(&["a", "b"]);
        rows[0].cells[1].status = Status::Failed;
        rows[0].cells[1].last_error = Some(Box::new(ProbeError {
            kind: netmatrix_api::ErrorKind::Timeout,
            message: "no echo reply".into(),
        }));
        rows[1]
            .services
            .push(fixtures::check("apiserver", Status::Failed));
        let Round::Failing { findings, failing } = judge(&matrix(rows), &[]) else {
            panic!("not failing");
        };
        assert!(findings.is_empty());
        assert_eq!(failing, ["a -> b: no echo reply", "b apiserver"]);
    }

    #[test]
    fn agent_missing_of_a_node_that_reports_again_is_settling_not_failing() {
        let rows = all_ok(&["a", "b"]);
        let settled = finding(FindingKind::AgentMissing, &["b"]);
        assert_eq!(
            judge(&matrix(rows.clone()), &[settled]),
            Round::Healthy { nodes: 2 }
        );
        let mut rows = rows;
        rows.push(row("c", false, vec![]));
        rows[2].state = NodeState::NotReady;
        let missing = finding(FindingKind::AgentMissing, &["c"]);
        assert!(matches!(
            judge(&matrix(rows), &[missing]),
            Round::Failing { .. }
        ));
    }
}
