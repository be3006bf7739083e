//! From a matrix to findings, in two steps:
//!
//! 1. [`evaluate`]: a pure function from one [`Matrix`](netmatrix_api::Matrix)
//!    to the [`Condition`]s that hold in it right now;
//! 2. [`Hysteresis`]: a small state machine that raises a condition as a
//!    [`Finding`](netmatrix_api::Finding) only after it held for a number of
//!    consecutive rounds, and clears it likewise, so one lost echo or one late
//!    report pages nobody.

mod hysteresis;
mod rules;
#[cfg(test)]
mod tests;

pub use hysteresis::Hysteresis;
pub use rules::evaluate;

use std::collections::BTreeSet;

use netmatrix_api::FindingKind;

use crate::matrix::CheckTargets;

/// What the rules need beside the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Nodes whose agent must be reporting; other silent rows are shown but
    /// raise nothing (nodes that just joined, NotReady nodes).
    pub expected: &'a BTreeSet<String>,
    /// `ip:port` behind service columns, quoted in evidence.
    pub check_targets: &'a CheckTargets,
}

/// What a condition is about. Together with the kind it identifies a finding
/// across rounds, so a cluster-wide finding keeps its `since` when nodes come
/// and go.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    Cluster,
    Node(String),
}

/// A diagnosis that holds in one matrix (before hysteresis).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub kind: FindingKind,
    pub subject: Subject,
    /// Nodes concerned, sorted.
    pub nodes: Vec<String>,
    pub summary: String,
    pub evidence: Vec<String>,
    pub hint: String,
}
