//! What the aggregator serves: the directed node-to-node [`Matrix`] and
//! its per-node check columns.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{CheckColumn, NetworkMode, ProbeError};

/// Status of one matrix cell or check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    Degraded,
    Failed,
    /// No fresh data: the source agent is silent, or never probed this pair.
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /api/v1/matrix`: the directed node-to-node connectivity matrix plus
/// per-node service and DNS columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    pub generated_unix_ms: u64,
    /// Every node the aggregator knows (expected or reporting), sorted.
    pub nodes: Vec<String>,
    /// Pod-network rows, one per node in `nodes`, same order.
    pub rows: Vec<MatrixRow>,
    /// Host-network rows (empty when no host-network agent reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_rows: Vec<MatrixRow>,
}

impl Matrix {
    /// The rows of `network`: [`Matrix::rows`] or [`Matrix::host_rows`].
    pub fn rows_of(&self, network: NetworkMode) -> &[MatrixRow] {
        match network {
            NetworkMode::Pod => &self.rows,
            NetworkMode::Host => &self.host_rows,
        }
    }

    /// The row of `node` in `network`.
    pub fn row(&self, node: &str, network: NetworkMode) -> Option<&MatrixRow> {
        self.rows_of(network).iter().find(|r| r.node == node)
    }

    /// The directed cell `from -> to` in `network`.
    pub fn cell(&self, from: &str, to: &str, network: NetworkMode) -> Option<&Cell> {
        self.row(from, network)?.cell(to)
    }

    /// Whether `node` is one of [`Matrix::nodes`] (sorted).
    pub fn has_node(&self, node: &str) -> bool {
        self.nodes
            .binary_search_by(|n| n.as_str().cmp(node))
            .is_ok()
    }
}

/// What the Kubernetes API says of a node, as far as diagnosis cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Ready and schedulable: its cells count.
    #[default]
    Ready,
    /// Joined less than the grace period ago: shown, not diagnosed.
    Joining,
    /// `spec.unschedulable` (cordoned, drained): agents do not probe it.
    Cordoned,
    /// The kubelet's Ready condition is not True: agents do not probe it.
    NotReady,
    /// Not (or no longer) in the API, but reports or cells still mention it.
    Unknown,
}

/// What one source node sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixRow {
    /// Source node.
    pub node: String,
    /// The node's state in the API.
    #[serde(default)]
    pub state: NodeState,
    /// `true` when the node's agent has reported recently.
    pub reporting: bool,
    /// The host-network agent pod that relayed this row's latest report:
    /// the agent could not reach the aggregator itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed_by: Option<String>,
    /// Age of the node's last report, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_age_ms: Option<f64>,
    /// The address this row's probes leave from (its agent pod's), while it
    /// reports: replies to it are this row's as much as the probes are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_ip: Option<std::net::IpAddr>,
    /// Directed cells from `node` to each destination node, in `Matrix::nodes`
    /// order. In a sampled cluster (more nodes than a full mesh covers, see
    /// [`sampling`](crate::sampling)) only the probed destinations have a cell; find a cell by
    /// its `to`, never by position.
    pub cells: Vec<Cell>,
    /// API server and ClusterIP checks of this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<CheckCell>,
    /// DNS checks of this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<CheckCell>,
    /// Large Don't-Fragment echoes of this node to every peer, summarised
    /// (column `mtu`); absent when the agent does not run the MTU probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<CheckCell>,
}

impl MatrixRow {
    /// The cell to `to`, if this row has one (a sampled row has cells only
    /// for the nodes it probes).
    pub fn cell(&self, to: &str) -> Option<&Cell> {
        self.cells.iter().find(|c| &*c.to == to)
    }

    /// The row's checks in column order: services, DNS, then `mtu`.
    pub fn checks(&self) -> impl Iterator<Item = &CheckCell> {
        self.services.iter().chain(&self.dns).chain(&self.mtu)
    }

    /// The check of `column`, if the row has it.
    pub fn check(&self, column: &str) -> Option<&CheckCell> {
        self.checks().find(|c| c.column == column)
    }
}

/// One directed node-to-node cell (all pods on `to` probed from `node`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Destination node. Shared with the matrix's node list: a matrix of
    /// 5,000 nodes holds a quarter of a million cells, and the rules read
    /// every cell's destination several times a round.
    pub to: Arc<str>,
    pub status: Status,
    /// Fraction of echoes lost, 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_avg_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_max_ms: Option<f64>,
    /// How many peer pods on `to` were probed.
    #[serde(default)]
    pub pods: u32,
    /// Status of the large Don't-Fragment echoes on this path (absent when
    /// not probed). `ok` small and `failed` large is an MTU mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<Status>,
    /// Each protocol's status on this path, when more than ICMP was probed.
    /// `status` is then the path's: failed only when no protocol gets
    /// through; a protocol failing where another passes is filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<Status>,
    /// Probes on this path that failed and that a NetworkPolicy denies:
    /// left out of the statuses (the path is not judged by them). Boxed,
    /// as the error: most cells have neither, and a matrix of 5,000 nodes
    /// holds a quarter of a million cells (the JSON is the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Box<Blocked>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Box<ProbeError>>,
    /// Age of the data behind this cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<f64>,
    /// Pods of `to` that answered none of this round's echoes (at least
    /// two, none a NetworkPolicy denies) while another pod of `to` answered
    /// every one: those pods are cut off, not the path (`loss` counts them;
    /// `pod-unreachable` names them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<UnansweredPod>,
}

/// A pod of a [`Cell`] that answered nothing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnansweredPod {
    /// Its name, when the aggregator knows it (`""` otherwise).
    #[serde(default)]
    pub pod: String,
    pub ip: std::net::IpAddr,
}

/// Probes a NetworkPolicy denies, and which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// `ICMP`, `TCP`, `UDP`.
    pub protocols: Vec<String>,
    /// `namespace/name` of the policies.
    pub policies: Vec<String>,
}

/// A per-node service or DNS check in the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckCell {
    /// Which check: e.g. `apiserver`, `clusterip/aggregator`,
    /// `dns-a/kubernetes.default.svc.cluster.local.`.
    pub column: CheckColumn,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ProbeError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<f64>,
    /// A failed check of netmatrix's own companions' Service that a
    /// NetworkPolicy denies (its status is then `unknown`: not judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cell, check, matrix, row};

    /// Two matrices of a quarter of a million cells each are alive at
    /// 5,000 nodes: what most cells lack is boxed.
    #[test]
    fn a_cell_stays_small() {
        assert!(std::mem::size_of::<Cell>() <= 136);
    }

    #[test]
    fn lookups_find_rows_cells_and_checks_by_name() {
        let mut m = matrix(vec![
            row("n1", vec![cell("n2", Status::Failed)]),
            row("n2", vec![cell("n1", Status::Ok), cell("n2", Status::Ok)]),
        ]);
        m.host_rows = vec![row("n1", vec![cell("n2", Status::Ok)])];
        m.rows[0].services = vec![check("apiserver", Status::Ok)];
        m.rows[0].mtu = Some(check("mtu", Status::Degraded));

        assert_eq!(m.rows_of(NetworkMode::Host).len(), 1);
        assert_eq!(m.row("n2", NetworkMode::Pod).unwrap().cells.len(), 2);
        assert!(m.row("n2", NetworkMode::Host).is_none());
        let status = |from, to, network| m.cell(from, to, network).map(|c| c.status);
        assert_eq!(status("n1", "n2", NetworkMode::Pod), Some(Status::Failed));
        assert_eq!(status("n1", "n2", NetworkMode::Host), Some(Status::Ok));
        assert_eq!(status("n1", "n1", NetworkMode::Pod), None, "sampled out");
        assert!(m.has_node("n2") && !m.has_node("n3"));

        let r = &m.rows[0];
        let columns: Vec<&str> = r.checks().map(|c| c.column.as_str()).collect();
        assert_eq!(columns, ["apiserver", "mtu"]);
        assert_eq!(r.check("mtu").map(|c| c.status), Some(Status::Degraded));
        assert!(r.check("dns-a/x.").is_none());
    }
}
