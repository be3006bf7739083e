//! What the aggregator tells each agent to probe (its pinglist), and the
//! node states it carries.

use serde::{Deserialize, Serialize};

/// Why the pods of a node are not probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeSkip {
    /// `spec.unschedulable`: cordoned or being drained; its pods are about
    /// to go, and a drain is no network failure.
    Cordoned,
    /// The kubelet's Ready condition is not True: the node itself is down
    /// (or its kubelet is), which the node controller already reports.
    NotReady,
}

impl NodeSkip {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeSkip::Cordoned => "cordoned",
            NodeSkip::NotReady => "not-ready",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_skips_are_written_as_named() {
        for skip in [NodeSkip::Cordoned, NodeSkip::NotReady] {
            assert_eq!(serde_json::to_value(skip).unwrap(), skip.as_str());
        }
    }
}
