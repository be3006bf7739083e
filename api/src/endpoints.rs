//! Where the aggregator and the agents serve (`/api/v1` paths) and the
//! error body of the aggregator's refusals.

use serde::{Deserialize, Serialize};

/// Path prefix of every versioned endpoint.
pub const API_PREFIX: &str = "/api/v1";
/// `POST` a [`Report`](crate::Report) here.
pub const REPORTS_PATH: &str = "/api/v1/reports";
/// `POST` a pod-network agent's [`Report`](crate::Report) here on its behalf: a host-network
/// agent relays its own node's pod agent's report when that agent cannot
/// reach the aggregator (its node's pod network is cut). The aggregator
/// accepts it only from the authenticated host agent of that same node.
pub const RELAYED_REPORTS_PATH: &str = "/api/v1/relayed-reports";
/// An agent serves its newest report that the aggregator has not taken
/// here (`204 No Content` when there is none), on its pod address, for its
/// node's host agent to relay ([`RELAYED_REPORTS_PATH`]).
pub const AGENT_UNDELIVERED_PATH: &str = "/undelivered";
/// `GET` a [`Matrix`](crate::Matrix) here.
pub const MATRIX_PATH: &str = "/api/v1/matrix";
/// `GET` a [`Findings`](crate::Findings) here.
pub const FINDINGS_PATH: &str = "/api/v1/findings";

/// `GET` a [`CompactMatrix`](crate::CompactMatrix) here: the matrix of [`MATRIX_PATH`] in a few
/// bytes per cell, for the web page and other readers of large clusters.
pub const MATRIX_COMPACT_PATH: &str = "/api/v1/matrix/compact";
/// `GET` one full [`Cell`](crate::Cell) here, `?from=NODE&to=NODE[&network=pod|host]`.
pub const MATRIX_CELL_PATH: &str = "/api/v1/matrix/cell";
/// `GET` one node's latest [`facts::NodeFacts`](crate::facts::NodeFacts) here, `?node=NODE`.
pub const NODE_FACTS_PATH: &str = "/api/v1/facts";

/// Error body of every 4xx/5xx answer of the aggregator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable reason, one of [`reasons`].
    pub reason: String,
    /// What happened and what to do, for a human: short, and never quoting
    /// what the client sent or what the Kubernetes API knows.
    pub message: String,
}

/// The stable `reason`s of [`ApiError`] for `POST /api/v1/reports`, also
/// the `reason` label of `netmatrix_reports_rejected_total`.
pub mod reasons {
    /// No bearer token, or one the Kubernetes API does not accept (401).
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// A valid token, but not of a running agent pod, or the report claims
    /// another identity than the token's (403).
    pub const FORBIDDEN: &str = "forbidden";
    /// Not a well-formed v1 report; the message names the field (400).
    pub const INVALID: &str = "invalid";
    /// The body is larger than the aggregator accepts (413).
    pub const TOO_LARGE: &str = "too-large";
    /// Older than the report held for the same pod (409).
    pub const STALE: &str = "stale";
    /// The aggregator has not listed nodes and agents from the API yet (503).
    pub const NOT_READY: &str = "not-ready";
    /// The token could not be verified right now: the Kubernetes API is
    /// unreachable, or token reviews are being rate limited (503). A client
    /// may retry with an older token it still holds.
    pub const AUTH_UNAVAILABLE: &str = "auth-unavailable";
    /// A report in an encoding this aggregator does not read (415): an
    /// agent falls back to JSON.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported-media-type";
}
