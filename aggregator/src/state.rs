//! The aggregator's shared state and the operations on it: ingesting a
//! report, building the matrix, and one evaluation round.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use netmatrix_api::{Finding, Findings, Matrix};

use crate::config::Args;
use crate::diagnosis::{self, Context, Hysteresis};
use crate::inventory::InventorySource;
use crate::matrix::{self, CheckTargets, MatrixPolicy};
use crate::metrics::Metrics;
use crate::store::{self, Accepted, Rejection, ReportStore};

/// Source of "now" in Unix milliseconds; tests pin it.
pub type Clock = fn() -> u64;

/// The system clock.
pub fn system_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Tunables of the aggregator, from the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub policy: MatrixPolicy,
    pub raise_after: u32,
    pub clear_after: u32,
    /// A node is expected to report once it is Ready and this old.
    pub node_grace_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: MatrixPolicy::default(),
            raise_after: 3,
            clear_after: 3,
            node_grace_ms: 120_000,
        }
    }
}

impl Settings {
    pub fn from_args(args: &Args) -> Self {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Settings {
            policy: MatrixPolicy {
                interval_ms: ms(args.interval),
                stale_after: args.stale_after,
                failed_loss: args.failed_loss,
            },
            raise_after: args.raise_after,
            clear_after: args.clear_after,
            node_grace_ms: ms(args.node_grace),
        }
    }
}

/// Nodes known to the matrix, and the subset that must be reporting.
struct NodeSets {
    known: BTreeSet<String>,
    expected: BTreeSet<String>,
}

pub struct Aggregator {
    store: Mutex<ReportStore>,
    inventory: InventorySource,
    settings: Settings,
    hysteresis: Mutex<Hysteresis>,
    /// The latest hysteresis output, served by `GET /api/v1/findings`.
    findings: RwLock<Arc<Findings>>,
    metrics: Metrics,
    clock: Clock,
}

impl Aggregator {
    pub fn new(inventory: InventorySource, settings: Settings) -> Result<Self, prometheus::Error> {
        Ok(Aggregator {
            store: Mutex::default(),
            inventory,
            settings,
            hysteresis: Mutex::new(Hysteresis::new(settings.raise_after, settings.clear_after)),
            findings: RwLock::new(Arc::new(Findings {
                generated_unix_ms: system_clock(),
                findings: Vec::new(),
            })),
            metrics: Metrics::new()?,
            clock: system_clock,
        })
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Validates and stores one report body, counting the outcome.
    pub fn ingest(&self, body: &[u8]) -> Result<Accepted, Rejection> {
        let outcome = store::parse(body).and_then(|report| {
            let inventory = self.inventory.snapshot();
            let now = self.now();
            self.lock_store().insert(report, inventory.as_deref(), now)
        });
        match &outcome {
            Ok(accepted) => {
                self.metrics.report_accepted(accepted.unmapped_peers);
                if accepted.unmapped_peers > 0 {
                    tracing::debug!(
                        node = %accepted.node,
                        peers = accepted.unmapped_peers,
                        "ignored peers whose IP belongs to no known node"
                    );
                }
            }
            Err(rejection) => self.rejected(rejection),
        }
        outcome
    }

    /// Counts and logs a rejection (also those decided before parsing, such
    /// as an oversized body).
    pub fn rejected(&self, rejection: &Rejection) {
        self.metrics.report_rejected(rejection.reason());
        tracing::info!(reason = rejection.reason(), %rejection, "report rejected");
    }

    /// The matrix as of now, from the held reports.
    pub fn matrix(&self) -> Matrix {
        self.matrix_at(self.now()).0
    }

    fn matrix_at(&self, now: u64) -> (Matrix, CheckTargets, BTreeSet<String>) {
        let store = self.lock_store();
        let nodes = self.node_sets(&store, now);
        let (matrix, targets) = matrix::build(&store, &nodes.known, &self.settings.policy, now);
        (matrix, targets, nodes.expected)
    }

    /// With Kubernetes: every node the API lists is known, the Ready ones
    /// past their grace period are expected. Without: every node that has
    /// reported so far is both.
    fn node_sets(&self, store: &ReportStore, now: u64) -> NodeSets {
        match self.inventory.snapshot() {
            Some(inventory) if inventory.synced => NodeSets {
                known: inventory.nodes.keys().cloned().collect(),
                expected: inventory.expected_nodes(now, self.settings.node_grace_ms),
            },
            Some(_) => NodeSets {
                known: BTreeSet::new(),
                expected: BTreeSet::new(),
            },
            None => NodeSets {
                known: store.seen_nodes().clone(),
                expected: store.seen_nodes().clone(),
            },
        }
    }

    pub fn findings(&self) -> Arc<Findings> {
        let findings = self.findings.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&findings)
    }

    /// One evaluation round: forget departed nodes, build the matrix, run the
    /// rules and hysteresis, update metrics, publish the findings.
    pub fn evaluate(&self) -> Arc<Findings> {
        let now = self.now();
        self.forget_departed_nodes(now);
        let (matrix, check_targets, expected) = self.matrix_at(now);
        let context = Context {
            expected: &expected,
            check_targets: &check_targets,
        };
        let conditions = diagnosis::evaluate(&matrix, &context);
        let findings = self
            .hysteresis
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(conditions, now);
        self.metrics.observe(&matrix, expected.len(), &findings);

        let published = Arc::new(Findings {
            generated_unix_ms: now,
            findings,
        });
        let mut slot = self
            .findings
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        log_transitions(&slot.findings, &published.findings);
        *slot = Arc::clone(&published);
        published
    }

    /// Drops stale reports of nodes the API no longer lists.
    fn forget_departed_nodes(&self, now: u64) {
        let Some(inventory) = self.inventory.snapshot() else {
            return;
        };
        if !inventory.synced {
            return;
        }
        self.lock_store().retain(|stored| {
            inventory.nodes.contains_key(&stored.report.agent.node)
                || self.settings.policy.is_fresh(stored, now)
        });
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, ReportStore> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn log_transitions(before: &[Finding], after: &[Finding]) {
    let key = |f: &Finding| (f.kind, f.nodes.clone());
    let old: BTreeSet<_> = before.iter().map(key).collect();
    let new: BTreeSet<_> = after.iter().map(key).collect();
    for f in after.iter().filter(|f| !old.contains(&key(f))) {
        tracing::warn!(kind = %f.kind, nodes = ?f.nodes, summary = %f.summary, "finding raised");
    }
    for f in before.iter().filter(|f| !new.contains(&key(f))) {
        tracing::info!(kind = %f.kind, nodes = ?f.nodes, "finding cleared");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use netmatrix_api::FindingKind;

    use super::*;
    use crate::store::tests::report;

    static NOW: AtomicU64 = AtomicU64::new(0);

    fn clock() -> u64 {
        NOW.load(Ordering::SeqCst)
    }

    fn post(aggregator: &Aggregator, index: usize, node: &str) {
        let r = report(index, node, clock());
        aggregator.ingest(&serde_json::to_vec(&r).unwrap()).unwrap();
    }

    #[test]
    fn without_kubernetes_only_seen_nodes_go_missing() {
        let aggregator = Aggregator::new(InventorySource::Unverified, Settings::default())
            .unwrap()
            .with_clock(clock);
        post(&aggregator, 0, "n1");
        post(&aggregator, 1, "n2");
        assert_eq!(aggregator.matrix().nodes, ["n1", "n2"]);

        // n2 falls silent; n1 keeps reporting every 5 s.
        let mut findings = Vec::new();
        for round in 1..=6 {
            NOW.store(round * 5000, Ordering::SeqCst);
            post(&aggregator, 0, "n1");
            findings = aggregator.evaluate().findings.clone();
        }
        // Stale after 15 s (round 4), raised on the third round (round 6).
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].kind, FindingKind::AgentMissing);
        assert_eq!(findings[0].nodes, ["n2"]);
        assert_eq!(aggregator.findings().findings, findings);

        let metrics = aggregator.metrics().encode().unwrap();
        assert!(metrics.contains("netmatrix_finding{kind=\"agent-missing\",node=\"n2\"} 1"));
        assert!(metrics.contains("netmatrix_nodes_reporting 1"));
        assert!(metrics.contains("netmatrix_nodes_expected 2"));
    }
}
