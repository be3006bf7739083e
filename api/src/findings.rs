//! What the aggregator names: [`Findings`], raised and pending.

use serde::{Deserialize, Serialize};

/// Declares [`FindingKind`] from one list, so that its variants, their
/// names on the wire ([`FindingKind::as_str`]) and [`FindingKind::ALL`]
/// cannot drift apart.
macro_rules! finding_kinds {
    ($($variant:ident => $name:literal,)+) => {
        /// Stable identifier of a diagnosis. Alerts and runbooks key on it.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(rename_all = "kebab-case")]
        pub enum FindingKind {
            $($variant,)+
        }

        impl FindingKind {
            /// Every kind, in declaration order.
            pub const ALL: &[FindingKind] = &[$(FindingKind::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(FindingKind::$variant => $name,)+
                }
            }
        }
    };
}

finding_kinds! {
    NodeIsolated => "node-isolated",
    CrossNodeBroken => "cross-node-broken",
    Partition => "partition",
    AsymmetricPath => "asymmetric-path",
    PairBroken => "pair-broken",
    PodUnreachable => "pod-unreachable",
    PacketLoss => "packet-loss",
    HighLatency => "high-latency",
    MtuMismatch => "mtu-mismatch",
    ApiserverUnreachable => "apiserver-unreachable",
    ClusteripBroken => "clusterip-broken",
    DnsFailure => "dns-failure",
    DnsStale => "dns-stale",
    UnderlayBroken => "underlay-broken",
    AgentMissing => "agent-missing",
    IcmpFiltered => "icmp-filtered",
    TcpFiltered => "tcp-filtered",
    UdpFiltered => "udp-filtered",
    ServiceUnreachable => "service-unreachable",
    BlockedByPolicy => "blocked-by-policy",
}

impl FindingKind {
    /// Information, not a failure: the network works (a protocol filtered
    /// where others pass, probes a NetworkPolicy keeps out). Never pages,
    /// never fails `validate`, never marks a Node.
    pub fn is_information(self) -> bool {
        matches!(
            self,
            FindingKind::IcmpFiltered
                | FindingKind::TcpFiltered
                | FindingKind::UdpFiltered
                | FindingKind::BlockedByPolicy
        )
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named failure, raised after it held for a number of rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// Nodes concerned, sorted.
    pub nodes: Vec<String>,
    /// For `partition`: the groups of nodes that still reach each other,
    /// each sorted, largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Vec<String>>,
    /// For path findings (`asymmetric-path`, `pair-broken`, `mtu-mismatch`,
    /// `packet-loss`...): the directed paths concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<Path>,
    /// One sentence for a human.
    pub summary: String,
    /// Cells and errors behind the finding.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// What to check first.
    pub hint: String,
    /// When the condition started to hold (RFC 3339, UTC).
    pub since: String,
    /// Same instant as `since`, for machines.
    pub since_unix_ms: u64,
    /// The finding came back soon after it cleared: it is held raised
    /// through the gaps (until it stays away for the flap window) instead of
    /// being raised and cleared with every cycle, so alerts fire on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flapping: bool,
    /// Why, from the nodes' own network facts checked against the API
    /// (a host agent's reading): one line per cause found, e.g. "node-2:
    /// net.ipv4.ip_forward = 0". Empty when none was found: the cause is
    /// then unknown, not absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cause: Vec<String>,
    /// With no cause found: the nodes whose network facts would be checked
    /// and are not held (no host agent reports them, or they were just
    /// asked for and come with its next report). The cause is then
    /// unknown *so far*.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub facts_missing: Vec<String>,
}

/// A directed node-to-node path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Path {
    pub from: String,
    pub to: String,
}

/// `GET /api/v1/findings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Findings {
    pub generated_unix_ms: u64,
    pub findings: Vec<Finding>,
    /// Conditions seen in the latest rounds but not raised yet (a finding
    /// needs a few rounds): a failure being named, for `validate` to wait on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingFinding>,
}

/// A condition that held in the latest round and is not raised yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFinding {
    pub kind: FindingKind,
    pub nodes: Vec<String>,
    /// Consecutive rounds it held so far.
    pub held_rounds: u32,
    /// Rounds it must hold to be raised.
    pub raise_after: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_under_its_wire_name() {
        let mut names: Vec<&str> = FindingKind::ALL.iter().map(|k| k.as_str()).collect();
        for kind in FindingKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FindingKind::ALL.len());
    }
}
