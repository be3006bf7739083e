//! Prometheus helpers shared by the agent and the aggregator.

use foldhash::HashSet;
use std::sync::{Mutex, PoisonError};

use prometheus::core::{Atomic, GenericGaugeVec};

/// A gauge vector whose series are exactly the label sets written in the
/// last [`set`](Self::set): it remembers what it wrote, and deletes the
/// series that are not written again (a node that left, a finding that
/// cleared). Absent means "nothing to say", which a stale 0 or 1 would not.
pub struct GaugeSeries<P: Atomic> {
    vec: GenericGaugeVec<P>,
    // Hashed: tens of thousands of label sets a round on a large cluster,
    // and only their difference is ever asked.
    written: Mutex<HashSet<Vec<String>>>,
}

impl<P: Atomic> GaugeSeries<P> {
    pub fn new(vec: GenericGaugeVec<P>) -> Self {
        Self {
            vec,
            written: Mutex::new(HashSet::default()),
        }
    }

    /// The vector (to register it).
    pub fn vec(&self) -> &GenericGaugeVec<P> {
        &self.vec
    }

    /// Sets the series of `current` and deletes the ones written last time
    /// that `current` does not have.
    pub fn set(&self, current: impl IntoIterator<Item = (Vec<String>, P::T)>) {
        let mut now = HashSet::default();
        for (labels, value) in current {
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.vec.with_label_values(&refs).set(value);
            now.insert(labels);
        }
        // A poisoned lock only means a panic elsewhere; the set is still valid.
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        for gone in written.difference(&now) {
            let refs: Vec<&str> = gone.iter().map(String::as_str).collect();
            // Absent already is fine: the goal is that it is absent.
            let _ = self.vec.remove_label_values(&refs);
        }
        *written = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntGaugeVec, Opts, Registry, TextEncoder};

    #[test]
    fn series_not_written_again_are_deleted() {
        let registry = Registry::new();
        let series = GaugeSeries::new(
            IntGaugeVec::new(Opts::new("failing", "help"), &["node", "check"]).unwrap(),
        );
        registry.register(Box::new(series.vec().clone())).unwrap();
        let labels = |n: &str, c: &str| vec![n.to_owned(), c.to_owned()];
        series.set([(labels("n1", "dns"), 1), (labels("n2", "dns"), 3)]);
        series.set([(labels("n2", "dns"), 2), (labels("n3", "mtu"), 1)]);
        let text = TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(!text.contains("n1"), "{text}");
        assert!(
            text.contains("failing{check=\"dns\",node=\"n2\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("failing{check=\"mtu\",node=\"n3\"} 1"),
            "{text}"
        );
        series.set([]);
        let text = TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(!text.contains("failing{"), "{text}");
    }
}
