//! From a matrix to findings, in two steps:
//!
//! 1. [`evaluate`]: a pure function from one [`Matrix`](netmatrix_api::Matrix)
//!    (and each path's window of recent rounds) to the [`Condition`]s that
//!    hold in it right now;
//! 2. [`Hysteresis`]: a small state machine that raises a condition as a
//!    [`Finding`](netmatrix_api::Finding) only after it held for a number of
//!    consecutive rounds, and clears it likewise, so one lost echo or one late
//!    report pages nobody.

mod agent_down;
pub mod causes;
pub mod hysteresis;
mod recovery;
mod rules;
mod silence;
#[cfg(test)]
mod tests;

pub use agent_down::{AgentDown, DownCause, quote};
pub use hysteresis::Hysteresis;
pub use recovery::CutRecovery;
pub use rules::evaluate;
pub use silence::SilenceGate;

use std::collections::{BTreeMap, BTreeSet};

use netmatrix_api::{CheckColumn, FindingKind, Path};

use crate::history::PathWindows;

/// `ip:port` dialled by each service check, by (node, column): the matrix
/// has no room for it, but findings quote it as evidence.
pub type CheckTargets = BTreeMap<(String, CheckColumn), String>;

/// Thresholds of the windowed rules, from the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiagnosisPolicy {
    /// A path loses packets when at least this fraction of its echoes was
    /// lost over the window (`--loss-threshold`).
    pub loss_threshold: f64,
    /// A path is slow only above this mean RTT (`--latency-floor`).
    pub latency_floor_ms: f64,
    /// The probe interval (`--interval`): rows whose data are further apart
    /// in time than this are not compared as the same moment.
    pub interval_ms: f64,
}

impl Default for DiagnosisPolicy {
    fn default() -> Self {
        DiagnosisPolicy {
            loss_threshold: 0.1,
            latency_floor_ms: 100.0,
            interval_ms: 5000.0,
        }
    }
}

/// What the rules need beside the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Nodes whose agent must be reporting; other silent rows are shown but
    /// raise nothing (nodes that just joined, NotReady nodes).
    pub expected: &'a BTreeSet<String>,
    /// Nodes whose pod-network agent pod the API lists as Running; `None`
    /// without Kubernetes. A Running agent that is silent while no node
    /// reaches its node's pods is the node's pod network, not the agent.
    pub pod_agents_running: Option<&'a BTreeSet<String>>,
    /// Nodes whose pod-network agent the API says cannot run, and why
    /// (`None` without Kubernetes).
    pub agents_down: Option<&'a BTreeMap<String, AgentDown>>,
    /// Each node's latest network facts from its host agent.
    pub facts: &'a BTreeMap<String, std::sync::Arc<netmatrix_api::facts::NodeFacts>>,
    /// What the API says each node is (empty without Kubernetes).
    pub truth: &'a BTreeMap<String, causes::NodeTruth>,
    /// Whether silence is judged this round. `false` for one freshness
    /// window after the aggregator started or was stalled: agents have had
    /// no chance to report yet, and their silence says nothing.
    pub judge_silence: bool,
    /// `ip:port` behind service columns, quoted in evidence.
    pub check_targets: &'a CheckTargets,
    /// Each fresh path's last rounds (loss, MTU, latency are judged on them).
    pub windows: &'a PathWindows,
    pub policy: &'a DiagnosisPolicy,
}

/// What a condition is about. Together with the kind it identifies a finding
/// across rounds, so a cluster-wide finding keeps its `since` when nodes come
/// and go.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    Cluster,
    Node(String),
    /// An unordered node pair, sorted.
    Pair(String, String),
    /// One Service (its check column) from one node, or from every node.
    Service(Option<String>, CheckColumn),
    /// A NetworkPolicy (`namespace/name`).
    Policy(String),
    /// One pod, by its node and address.
    Pod(String, std::net::IpAddr),
}

impl Subject {
    /// The subject of the pair `a`, `b` in either order.
    pub fn pair(a: &str, b: &str) -> Subject {
        if a <= b {
            Subject::Pair(a.to_owned(), b.to_owned())
        } else {
            Subject::Pair(b.to_owned(), a.to_owned())
        }
    }
}

/// A diagnosis that holds in one matrix (before hysteresis).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub kind: FindingKind,
    pub subject: Subject,
    /// Nodes concerned, sorted.
    pub nodes: Vec<String>,
    /// `partition`: the groups that still reach each other, largest first.
    pub groups: Vec<Vec<String>>,
    /// Path findings: the directed paths concerned, sorted.
    pub paths: Vec<Path>,
    pub summary: String,
    pub evidence: Vec<String>,
    pub hint: String,
    /// Why, from the node facts ([`causes`]); empty: unknown.
    pub cause: Vec<String>,
    /// Without a cause: the nodes whose facts it would read and which are
    /// not held yet.
    pub facts_missing: Vec<String>,
}

impl Condition {
    /// A condition without groups or paths.
    pub fn new(
        kind: FindingKind,
        subject: Subject,
        nodes: Vec<String>,
        summary: String,
        evidence: Vec<String>,
        hint: String,
    ) -> Self {
        Condition {
            kind,
            subject,
            nodes,
            groups: Vec::new(),
            paths: Vec::new(),
            summary,
            evidence,
            hint,
            cause: Vec::new(),
            facts_missing: Vec::new(),
        }
    }

    pub fn with_paths(mut self, mut paths: Vec<Path>) -> Self {
        paths.sort();
        paths.dedup();
        self.paths = paths;
        self
    }

    pub fn with_groups(mut self, groups: Vec<Vec<String>>) -> Self {
        self.groups = groups;
        self
    }
}
