//! Prometheus helpers shared by the agent and the aggregator.

use foldhash::{HashMap, HashMapExt};
use std::sync::{Mutex, PoisonError};

use prometheus::core::{Atomic, GenericGauge, GenericGaugeVec};

/// A gauge vector whose series are exactly the label sets written in the
/// last [`set`](Self::set): it remembers what it wrote, and deletes the
/// series that are not written again (a node that left, a finding that
/// cleared). Absent means "nothing to say", which a stale 0 or 1 would not.
pub struct GaugeSeries<P: Atomic> {
    vec: GenericGaugeVec<P>,
    // The series written last time, with their handles: tens of thousands
    // are set a round on a large cluster, and a series written again is set
    // through its handle (one look-up here) instead of being hashed and
    // looked up in the vector again.
    written: Mutex<HashMap<Vec<String>, GenericGauge<P>>>,
}

impl<P: Atomic> GaugeSeries<P> {
    pub fn new(vec: GenericGaugeVec<P>) -> Self {
        Self {
            vec,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// The vector (to register it).
    pub fn vec(&self) -> &GenericGaugeVec<P> {
        &self.vec
    }

    /// Sets the series of `current` and deletes the ones written last time
    /// that `current` does not have.
    pub fn set(&self, current: impl IntoIterator<Item = (Vec<String>, P::T)>) {
        // A poisoned lock only means a panic elsewhere; the map is still valid.
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let mut now = HashMap::with_capacity(written.len());
        for (labels, value) in current {
            // Written last time: its handle. A series listed twice is in
            // `now` already, and the vector hands out the same gauge.
            let gauge = written.remove(&labels).unwrap_or_else(|| {
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                self.vec.with_label_values(&refs)
            });
            gauge.set(value);
            now.insert(labels, gauge);
        }
        // What is left was not written again.
        for (gone, _) in written.drain() {
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
        // Deleted, then written again: a new series, not a lost handle's.
        series.set([(labels("n2", "dns"), 5), (labels("n2", "dns"), 6)]);
        let text = TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains("failing{check=\"dns\",node=\"n2\"} 6"),
            "{text}"
        );
    }
}
