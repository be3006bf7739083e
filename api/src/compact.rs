//! The [`Matrix`](crate::Matrix) in a few bytes per cell, for the web page
//! and other readers of large clusters.

use serde::{Deserialize, Serialize};

use crate::{CheckColumn, ErrorKind, NodeState, Status};

/// `GET /api/v1/matrix/compact`: the same [`Matrix`](crate::Matrix), a few bytes per cell.
///
/// The full matrix costs about 100 bytes of JSON per cell (100 MB at 1,000
/// nodes); this one costs about 5. Per row, cell `i` is in position `i` of
/// `status`, `loss_pct` and `rtt_avg_us`, for destination `nodes[i]`; check
/// `j` is in position `j` of `checks` and `check_latency_us`, for column
/// `columns[j]`. Errors, rare in a healthy network, are listed sparsely.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactMatrix {
    pub generated_unix_ms: u64,
    /// As [`Matrix::nodes`](crate::Matrix::nodes).
    pub nodes: Vec<String>,
    /// Service, DNS and `mtu` columns over all rows (pod and host), in the
    /// order of first appearance: `services`, then `dns`, then `mtu`.
    #[serde(default)]
    pub columns: Vec<CheckColumn>,
    /// Pod-network rows, as [`Matrix::rows`](crate::Matrix::rows).
    pub rows: Vec<CompactRow>,
    /// Host-network rows, as [`Matrix::host_rows`](crate::Matrix::host_rows) (omitted when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_rows: Vec<CompactRow>,
}

/// One source node of a [`CompactMatrix`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactRow {
    pub node: String,
    #[serde(default)]
    pub state: NodeState,
    pub reporting: bool,
    /// As [`MatrixRow::relayed_by`](crate::MatrixRow::relayed_by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed_by: Option<String>,
    /// Age of the node's last report, rounded to milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_age_ms: Option<u64>,
    /// One character per destination node ([`status_char`]): `o` ok,
    /// `d` degraded, `f` failed, `u` unknown.
    pub status: String,
    /// Echo loss per destination in whole percent (rounded up, so that any
    /// loss shows), `-1` when unknown.
    pub loss_pct: Vec<i16>,
    /// Mean RTT per destination in microseconds (rounded), `-1` when unknown.
    pub rtt_avg_us: Vec<i64>,
    /// Cells that carry a `last_error`, by destination index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<CompactError>,
    /// One character per entry of [`CompactMatrix::columns`]: as `status`,
    /// plus `-` when this row has no such check.
    #[serde(default)]
    pub checks: String,
    /// Check latency per column in microseconds (rounded), `-1` when unknown.
    #[serde(default)]
    pub check_latency_us: Vec<i64>,
    /// Checks that carry a `last_error`, by column index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub check_errors: Vec<CompactError>,
}

/// The `last_error` of the cell or check at index `i`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactError {
    pub i: u32,
    pub kind: ErrorKind,
    pub message: String,
}

/// The one-character code of a status in [`CompactRow::status`].
pub fn status_char(status: Status) -> char {
    match status {
        Status::Ok => 'o',
        Status::Degraded => 'd',
        Status::Failed => 'f',
        Status::Unknown => 'u',
    }
}

/// The status of a [`CompactRow::status`] character (`None` for `-` and
/// anything unknown).
pub fn status_from_char(c: char) -> Option<Status> {
    match c {
        'o' => Some(Status::Ok),
        'd' => Some(Status::Degraded),
        'f' => Some(Status::Failed),
        'u' => Some(Status::Unknown),
        _ => None,
    }
}
