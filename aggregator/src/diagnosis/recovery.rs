//! Nodes coming back from a cut (`underlay-broken`, or `node-isolated`:
//! a node whose pods cannot leave it). While a node is cut off, its agents
//! cannot reach the aggregator and back off their reporting (up to a
//! minute). When the node heals, the other nodes see it at once, but its
//! own agent reports again only at its next attempt: without a grace, the
//! end of the cut would be followed by a spurious `agent-missing`. A node
//! named by either finding is therefore not expected to report until the
//! node grace has passed since it was last cut off, as if it had just
//! joined. (An isolated node whose agent kept reporting loses nothing: it
//! is reporting.)

use std::collections::{BTreeMap, BTreeSet};

use netmatrix_api::FindingKind;

use super::Condition;

#[derive(Debug, Default)]
pub struct CutRecovery {
    /// Node -> last time (Unix ms) an `underlay-broken` condition named it.
    last_cut: BTreeMap<String, u64>,
}

impl CutRecovery {
    /// Records the nodes this round's conditions find cut off, and forgets
    /// those whose grace is over.
    pub fn observe(&mut self, conditions: &[Condition], now: u64, grace_ms: u64) {
        for c in conditions.iter().filter(|c| {
            matches!(
                c.kind,
                FindingKind::UnderlayBroken | FindingKind::NodeIsolated
            )
        }) {
            for node in &c.nodes {
                self.last_cut.insert(node.clone(), now);
            }
        }
        self.last_cut
            .retain(|_, cut| now.saturating_sub(*cut) < grace_ms);
    }

    /// Removes from `expected` the nodes cut off less than `grace_ms` ago.
    pub fn exclude_recovering(&self, expected: &mut BTreeSet<String>, now: u64, grace_ms: u64) {
        expected.retain(|node| {
            self.last_cut
                .get(node)
                .is_none_or(|cut| now.saturating_sub(*cut) >= grace_ms)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis::Subject;

    fn cut(node: &str) -> Condition {
        Condition::new(
            FindingKind::UnderlayBroken,
            Subject::Node(node.into()),
            vec![node.into()],
            String::new(),
            Vec::new(),
            String::new(),
        )
    }

    fn expected() -> BTreeSet<String> {
        ["n1", "n2", "n3"].map(String::from).into()
    }

    #[test]
    fn an_isolated_node_gets_the_grace_too() {
        let mut recovery = CutRecovery::default();
        let mut isolated = cut("n2");
        isolated.kind = FindingKind::NodeIsolated;
        recovery.observe(&[isolated], 10_000, 15_000);
        let mut e = expected();
        recovery.exclude_recovering(&mut e, 11_000, 15_000);
        assert_eq!(e, ["n1", "n3"].map(String::from).into());
    }

    #[test]
    fn a_node_back_from_a_cut_is_not_expected_during_the_grace() {
        let mut recovery = CutRecovery::default();
        recovery.observe(&[cut("n3")], 10_000, 15_000);
        // The link is back at 12 s: no condition any more.
        recovery.observe(&[], 12_000, 15_000);
        let mut e = expected();
        recovery.exclude_recovering(&mut e, 24_999, 15_000);
        assert_eq!(e, ["n1", "n2"].map(String::from).into());

        recovery.observe(&[], 25_000, 15_000);
        let mut e = expected();
        recovery.exclude_recovering(&mut e, 25_000, 15_000);
        assert_eq!(e, expected());
        assert!(recovery.last_cut.is_empty(), "forgotten after the grace");
    }

    #[test]
    fn other_findings_do_not_start_a_grace() {
        let mut recovery = CutRecovery::default();
        let mut pair = cut("n2");
        pair.kind = FindingKind::PairBroken;
        recovery.observe(&[pair], 10_000, 15_000);
        let mut e = expected();
        recovery.exclude_recovering(&mut e, 11_000, 15_000);
        assert_eq!(e, expected());
    }
}
