//! The aggregator's shared state and the operations on it: ingesting a
//! report, building the matrix, and one evaluation round.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use netmatrix_api::facts::NodeFacts;
use netmatrix_api::{Finding, Findings, Matrix};

use crate::auth::{Authenticator, Sender};
use crate::config::Settings;
use crate::diagnosis::causes::NodeTruth;
use crate::diagnosis::{self, AgentDown, Context, CutRecovery, Hysteresis, SilenceGate};
use crate::inventory::{Inventory, InventorySource};
use crate::matrix::{self, Built, NodeStates};
use crate::metrics::Metrics;
use crate::pinglist::PinglistBook;
use crate::published::{Form, Published};
use crate::store::{
    self, Accepted, FactsLookup, Rejection, ReportEncoding, ReportStore, TimeBounds,
};

/// Lines of "report rejected" logged per second at most.
pub const REJECTIONS_LOGGED_PER_SECOND: u32 = 10;

/// Source of "now" in Unix milliseconds; tests pin it.
pub type Clock = fn() -> u64;

/// The system clock.
pub use netmatrix_runtime::now_unix_ms as system_clock;

/// Nodes known to the matrix, the subset that must be reporting, and
/// their states in the API.
struct NodeSets {
    known: BTreeSet<String>,
    expected: BTreeSet<String>,
    states: NodeStates,
    /// Nodes whose pod agent the API lists as Running (`None`: no API).
    running: Option<BTreeSet<String>>,
    /// Why the API says some nodes' agents cannot run (`None`: no API).
    down: Option<BTreeMap<String, AgentDown>>,
    /// What the API says each node is (empty without it).
    truth: BTreeMap<String, NodeTruth>,
    /// The host agents' node facts.
    facts: BTreeMap<String, Arc<NodeFacts>>,
}

pub struct Aggregator {
    store: Mutex<ReportStore>,
    inventory: InventorySource,
    authenticator: Authenticator,
    /// Rejections logged this second, to keep a flood of bad requests
    /// from flooding the log (the metric counts every one).
    rejection_log: Mutex<(u64, u32)>,
    settings: Settings,
    hysteresis: Mutex<Hysteresis>,
    /// Nodes back from an underlay cut, whose agents may still be backing off.
    recovery: Mutex<CutRecovery>,
    /// Whether agents have had time to report since this aggregator started
    /// or was last stalled.
    silence: Mutex<SilenceGate>,
    /// The latest hysteresis output, served by `GET /api/v1/findings`.
    findings: RwLock<Arc<Findings>>,
    /// The matrix of the latest evaluation round, served by the matrix
    /// endpoints as it is: a request costs no rebuild and no store lock.
    published: RwLock<Option<Arc<Published>>>,
    /// Whether the previous round's full and compact JSON were requested:
    /// those are encoded ahead ([`Aggregator::encode_ahead`]).
    polled: Mutex<(bool, bool)>,
    metrics: Metrics,
    clock: Clock,
    /// The agents' pinglists; `None` without Kubernetes (agents stay on
    /// their SRV fallback).
    pinglists: Option<Arc<PinglistBook>>,
}

impl Aggregator {
    pub fn new(inventory: InventorySource, settings: Settings) -> Result<Self, prometheus::Error> {
        let time = TimeBounds {
            interval_ms: settings.policy.interval_ms,
            ..Default::default()
        };
        Ok(Aggregator {
            store: Mutex::new(
                ReportStore::with_history(settings.history_rounds).with_time_bounds(time),
            ),
            inventory,
            authenticator: Authenticator::unverified(),
            rejection_log: Mutex::new((0, 0)),
            settings,
            hysteresis: Mutex::new(
                Hysteresis::new(settings.raise_after, settings.clear_after)
                    .with_outage_rounds(settings.raise_after_outage)
                    .with_flap_window(settings.flap_window),
            ),
            recovery: Mutex::new(CutRecovery::default()),
            silence: Mutex::new(SilenceGate::default()),
            findings: RwLock::new(Arc::new(Findings {
                generated_unix_ms: system_clock(),
                findings: Vec::new(),
                pending: Vec::new(),
            })),
            published: RwLock::new(None),
            polled: Mutex::new((false, false)),
            metrics: Metrics::new()?,
            clock: system_clock,
            pinglists: None,
        })
    }

    /// Verifies senders with `authenticator` (without one, nobody is
    /// verified, which [`ReportStore`] refuses once an inventory is set).
    pub fn with_authenticator(mut self, authenticator: Authenticator) -> Self {
        self.authenticator = authenticator;
        self
    }

    /// Serves `book`'s pinglists.
    pub fn with_pinglists(mut self, book: Arc<PinglistBook>) -> Self {
        self.pinglists = Some(book);
        self
    }

    /// The pinglists, when there are any (with Kubernetes).
    pub fn pinglists(&self) -> Option<&Arc<PinglistBook>> {
        self.pinglists.as_ref()
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

    /// Who sent a request with this `Authorization` header.
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Sender, Rejection> {
        let inventory = self.inventory.snapshot();
        // Without Kubernetes nobody is reviewed: an empty roster serves.
        let unverified = Inventory::default();
        let roster = inventory.as_deref().unwrap_or(&unverified);
        let sender = if inventory.is_some() && !roster.synced {
            // Nobody can be told from an impostor before the first listing.
            Err(Rejection::NotReady)
        } else {
            self.authenticator
                .authenticate(authorization, self.now(), roster)
                .await
                .map_err(Rejection::Auth)
        };
        sender.inspect_err(|rejection| self.rejected(rejection))
    }

    /// The network of the pinglist `sender` may read for `node`: that of
    /// its own agent pod, on its own node only.
    pub fn fetcher_network(
        &self,
        sender: &Sender,
        node: &str,
    ) -> Result<netmatrix_api::NetworkMode, Rejection> {
        match sender {
            Sender::Unverified => Err(Rejection::Forbidden(
                "pinglists are served to verified agents only".to_owned(),
            )),
            Sender::Agent(caller) => {
                let inventory = self.inventory.snapshot().ok_or(Rejection::NotReady)?;
                inventory
                    .verify_fetcher(caller, node)
                    .map_err(|mismatch| Rejection::Forbidden(mismatch.to_string()))
            }
        }
    }

    /// Validates and stores one JSON report body from `sender`, counting
    /// the outcome.
    pub fn ingest(&self, body: &[u8], sender: &Sender) -> Result<Accepted, Rejection> {
        self.ingest_encoded(body, ReportEncoding::Json, sender, false)
    }

    /// As [`Aggregator::ingest`], for a body in `encoding`; `relayed`: a
    /// pod agent's report that `sender`, its node's host agent, relays
    /// ([`ReportStore::insert_relayed`]).
    pub fn ingest_encoded(
        &self,
        body: &[u8],
        encoding: ReportEncoding,
        sender: &Sender,
        relayed: bool,
    ) -> Result<Accepted, Rejection> {
        // Protobuf peers are addresses, which only the Kubernetes API's
        // pods name: without it, agents are told to send JSON (415).
        if encoding == ReportEncoding::Protobuf
            && matches!(self.inventory, InventorySource::Unverified)
        {
            let rejection = Rejection::NamesNeeded;
            self.rejected(&rejection);
            return Err(rejection);
        }
        let outcome = store::parse(body, encoding, &self.settings.limits).and_then(|report| {
            let inventory = self.inventory.snapshot();
            let now = self.now();
            let mut store = self.lock_store();
            if relayed {
                store.insert_relayed(report, sender, inventory.as_deref(), now)
            } else {
                store.insert(report, sender, inventory.as_deref(), now)
            }
        });
        match &outcome {
            Ok(accepted) => {
                self.metrics
                    .report_accepted(accepted.unmapped_peers, relayed);
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
    /// as an oversized body). At most [`REJECTIONS_LOGGED_PER_SECOND`] lines
    /// a second: the metric counts every rejection, the log samples them.
    pub fn rejected(&self, rejection: &Rejection) {
        self.metrics.report_rejected(rejection.reason());
        let second = self.now() / 1000;
        let mut log = self
            .rejection_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if log.0 != second {
            if log.1 > REJECTIONS_LOGGED_PER_SECOND {
                tracing::info!(
                    suppressed = log.1 - REJECTIONS_LOGGED_PER_SECOND,
                    "more reports rejected than logged (see netmatrix_reports_rejected_total)"
                );
            }
            *log = (second, 0);
        }
        log.1 = log.1.saturating_add(1);
        if log.1 <= REJECTIONS_LOGGED_PER_SECOND {
            tracing::info!(reason = rejection.reason(), %rejection, "report rejected");
        }
    }

    /// The matrix of the latest evaluation round (the one the findings come
    /// from); before the first round, one built from the reports held now.
    pub fn matrix(&self) -> Arc<Matrix> {
        self.published().matrix.clone()
    }

    /// Encodes the latest round's matrix the ways clients asked for it last
    /// round, so that a page or a script polling the matrix is served from
    /// the cache rather than waiting for a million cells to be encoded.
    /// Nothing when nobody polls. Call after [`Aggregator::evaluate`], off the
    /// async threads.
    pub fn encode_ahead(&self) {
        let (full, compact) = *self.polled.lock().unwrap_or_else(PoisonError::into_inner);
        let published = self.published();
        let forms = [(Form::Full, full), (Form::Compact, compact)];
        for (form, _) in forms.into_iter().filter(|(_, polled)| *polled) {
            if let Err(error) = published.encoded(form) {
                tracing::warn!(%error, ?form, "cannot encode the matrix");
            }
        }
    }

    /// The latest round's matrix with its lazily encoded forms.
    pub fn published(&self) -> Arc<Published> {
        let slot = self
            .published
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match &*slot {
            Some(published) => Arc::clone(published),
            None => {
                drop(slot);
                Arc::new(Published::new(Arc::new(
                    self.matrix_at(self.now()).0.matrix,
                )))
            }
        }
    }

    /// The matrix, the expected nodes, and the nodes whose pod agent is
    /// Running per the API (`None` without Kubernetes).
    fn matrix_at(&self, now: u64) -> (Built, NodeSets) {
        let store = self.lock_store();
        let nodes = self.node_sets(&store, now);
        let screen = self
            .inventory
            .snapshot()
            .and_then(|inventory| inventory.policy_screen());
        let built = matrix::build_screened(
            &store,
            &nodes.known,
            &nodes.states,
            &self.settings.policy,
            screen.as_ref(),
            now,
        );
        (built, nodes)
    }

    /// With Kubernetes: every node the API lists is known, the Ready ones
    /// (past their grace period, schedulable) are expected. Without: every
    /// node that has reported so far is both, and Ready.
    fn node_sets(&self, store: &ReportStore, now: u64) -> NodeSets {
        match self.inventory.snapshot() {
            Some(inventory) if inventory.synced => NodeSets {
                known: inventory.nodes.keys().cloned().collect(),
                expected: inventory.expected_nodes(now, self.settings.node_grace_ms),
                states: Some(inventory.node_states(now, self.settings.node_grace_ms)),
                running: Some(inventory.running_pod_agents()),
                down: Some(inventory.agents_down_after_grace(now, self.settings.node_grace_ms)),
                truth: inventory.truth.clone(),
                facts: store.facts(),
            },
            Some(_) => NodeSets {
                known: BTreeSet::new(),
                expected: BTreeSet::new(),
                states: Some(Default::default()),
                running: Some(BTreeSet::new()),
                down: Some(BTreeMap::new()),
                truth: BTreeMap::new(),
                facts: BTreeMap::new(),
            },
            None => NodeSets {
                known: store.seen_nodes().clone(),
                expected: store.seen_nodes().clone(),
                states: None,
                running: None,
                down: None,
                truth: BTreeMap::new(),
                facts: store.facts(),
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
        let (built, nodes) = self.matrix_at(now);
        let mut expected = nodes.expected;
        let grace = self.settings.node_grace_ms;
        let mut recovery = self.recovery.lock().unwrap_or_else(PoisonError::into_inner);
        recovery.exclude_recovering(&mut expected, now, grace);
        let matrix = Arc::new(built.matrix);
        let policy = &self.settings.policy;
        // After its start or a stall, agents that failed to deliver are
        // backing off, up to their longest pause: wait for that, and for a
        // report to be fresh, before reading silence.
        let backoff_ms = policy
            .interval_ms
            .saturating_mul(u64::from(netmatrix_api::REPORT_BACKOFF_MAX_ROUNDS))
            .min(netmatrix_api::REPORT_BACKOFF_MAX_MS);
        let listen_ms = policy
            .interval_ms
            .saturating_mul(u64::from(policy.stale_after))
            .saturating_add(backoff_ms);
        // Rounds are `interval` apart (a slow round delays the next by its
        // own length); two intervals without one is the aggregator stalled.
        let stall_ms = policy.interval_ms.saturating_mul(2).max(2_000);
        let judge_silence = self
            .silence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(now, listen_ms, stall_ms);
        let context = Context {
            expected: &expected,
            pod_agents_running: nodes.running.as_ref(),
            agents_down: nodes.down.as_ref(),
            facts: &nodes.facts,
            truth: &nodes.truth,
            judge_silence,
            check_targets: &built.targets,
            windows: &built.windows,
            policy: &self.settings.diagnosis,
        };
        let conditions = diagnosis::evaluate(&matrix, &context);
        let wanted = diagnosis::causes::facts_read(&conditions, &nodes.truth)
            .into_iter()
            .map(str::to_owned)
            .collect();
        self.lock_store().want_facts_of(wanted);
        recovery.observe(&conditions, now, grace);
        drop(recovery);
        let (findings, pending) = {
            let mut hysteresis = self
                .hysteresis
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let findings = hysteresis.observe(conditions, now);
            (findings, hysteresis.pending())
        };
        self.metrics.observe(&matrix, expected.len(), &findings);
        let previous = self
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(Arc::new(Published::new(matrix)));
        if let Some(previous) = previous {
            // Remember which encodings clients asked for last round.
            let mut polled = self.polled.lock().unwrap_or_else(PoisonError::into_inner);
            *polled = (
                previous.was_requested(Form::Full),
                previous.was_requested(Form::Compact),
            );
        }

        let published = Arc::new(Findings {
            generated_unix_ms: now,
            findings,
            pending,
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

    /// `node`'s latest network facts from its host agent.
    /// A client's look at `node`'s facts; its host agent is asked to keep
    /// them up to date for a while.
    pub fn node_facts(&self, node: &str) -> FactsLookup {
        self.lock_store().lookup_facts(node, self.now())
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
        let mut r = report(index, node, clock());
        r.round = clock() / 1000;
        aggregator
            .ingest(&serde_json::to_vec(&r).unwrap(), &Sender::Unverified)
            .unwrap();
    }

    /// Without the API nothing names a peer given by address: protobuf
    /// reports are refused as of an unreadable type (agents then send JSON),
    /// and change nothing.
    #[test]
    fn without_kubernetes_protobuf_reports_are_sent_back_for_json() {
        let aggregator = Aggregator::new(InventorySource::Unverified, Settings::default())
            .unwrap()
            .with_clock(clock);
        let r = report(0, "n1", clock());
        let body = netmatrix_api::protobuf::encode_report(&r);
        let refused = aggregator
            .ingest_encoded(&body, ReportEncoding::Protobuf, &Sender::Unverified, false)
            .unwrap_err();
        assert_eq!(refused.reason(), "unsupported-media-type");
        assert!(refused.client_message().contains("send application/json"));
        assert!(aggregator.matrix().nodes.is_empty());
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
        for round in 1..=16 {
            NOW.store(round * 5000, Ordering::SeqCst);
            post(&aggregator, 0, "n1");
            findings = aggregator.evaluate().findings.clone();
            if round < 16 {
                assert_eq!(findings, [], "round {round}");
            }
        }
        // Stale after 15 s, but silence is judged only 65 s after the first
        // round (a report's freshness, 15 s, and the agents' longest
        // backoff, 10 rounds): from round 14, raised on its third (16).
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].kind, FindingKind::AgentMissing);
        assert_eq!(findings[0].nodes, ["n2"]);
        assert_eq!(aggregator.findings().findings, findings);

        let metrics = aggregator.metrics().encode().unwrap();
        assert!(metrics.contains("netmatrix_finding{kind=\"agent-missing\",node=\"n2\"} 1"));
        assert!(metrics.contains("netmatrix_nodes_reporting 1"));
        assert!(metrics.contains("netmatrix_nodes_expected 2"));
    }

    #[test]
    fn the_matrix_is_the_evaluated_rounds_and_polled_encodings_are_made_ahead() {
        let aggregator = Aggregator::new(InventorySource::Unverified, Settings::default())
            .unwrap()
            .with_clock(clock);
        post(&aggregator, 0, "n1");
        aggregator.evaluate();
        let first = aggregator.published();
        assert_eq!(first.matrix.nodes, ["n1"]);
        // A report after the round shows in the next round, not before.
        post(&aggregator, 1, "n2");
        assert_eq!(aggregator.matrix().nodes, ["n1"]);
        assert!(first.request(Form::Full).is_none());
        let body = first.encoded(Form::Full).unwrap();
        assert!(
            Arc::ptr_eq(&aggregator.published(), &first),
            "cached, not rebuilt"
        );
        assert_eq!(
            first.request(Form::Full).unwrap().unwrap().as_ptr(),
            body.as_ptr(),
            "encoded once"
        );

        aggregator.evaluate();
        aggregator.encode_ahead();
        let second = aggregator.published();
        assert_eq!(second.matrix.nodes, ["n1", "n2"]);
        assert!(
            second.request(Form::Full).is_some(),
            "polled last round: encoded ahead"
        );
        assert!(
            second.request(Form::Compact).is_none(),
            "never polled: not encoded"
        );

        // Polled in the second round (the checks above are requests), not
        // in the third: encoded ahead once more, then no longer.
        aggregator.evaluate();
        aggregator.encode_ahead();
        let third = aggregator.published();
        assert!(third.request(Form::Compact).is_some());
        aggregator.evaluate();
        aggregator.encode_ahead();
        assert!(
            !aggregator.published().was_requested(Form::Full)
                && aggregator.published().request(Form::Full).is_none(),
            "nobody polled the full form last round"
        );
    }

    /// A deterministic xorshift generator: the loss pattern is random-like
    /// but the test is reproducible.
    struct Rng(u64);

    impl Rng {
        fn chance(&mut self, p: f64) -> bool {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % 10_000) as f64 / 10_000.0 < p
        }
    }

    /// One round of node `from` (index `i`) in a 3-node cluster with two
    /// pods per node, three small and two large echoes per pod; each echo
    /// touching a lossy node is lost with probability `loss`.
    fn lab_round(
        i: usize,
        from: &str,
        started: u64,
        lossy: Option<&str>,
        loss: f64,
        rng: &mut Rng,
    ) -> netmatrix_api::Report {
        use netmatrix_api::fixtures;
        use netmatrix_api::{DnsResult, EchoResult, ErrorKind, PeerResult, ProbeError, RecordType};
        let nodes = ["n1", "n2", "n3"];
        let mut r = report(i, from, started);
        r.mtu_probe_bytes = Some(1450);
        let mut echoes = |n: u32, p: f64| {
            let received = (0..n).filter(|_| !rng.chance(p)).count() as u32;
            EchoResult {
                sent: n,
                received,
                rtt_avg_ms: (received > 0).then_some(0.4),
                error: (received < n)
                    .then(|| ProbeError::new(ErrorKind::Timeout, "no echo reply in 500ms")),
                ..Default::default()
            }
        };
        for (j, to) in nodes.iter().enumerate() {
            let crosses_lossy = from != *to && lossy.is_some_and(|l| l == from || l == *to);
            let p = if crosses_lossy { loss } else { 0.0 };
            for pod in [2, 3] {
                if *to == from && pod == 2 {
                    continue; // an agent does not probe itself
                }
                let ip = format!("10.244.{}.{pod}", j + 1);
                r.peers.push(PeerResult {
                    mtu: Some(echoes(2, p)),
                    ..fixtures::peer(to, &format!("{to}-{pod}"), &ip, echoes(3, p))
                });
            }
        }
        let dns_times_out = lossy == Some(from) && rng.chance(loss);
        r.dns.push(DnsResult {
            name: "kubernetes.default.svc.cluster.local.".into(),
            record: RecordType::A,
            ok: !dns_times_out,
            latency_ms: Some(1.0),
            answers: vec![],
            expected: vec![],
            pending: vec![],
            error: dns_times_out.then(|| ProbeError::new(ErrorKind::Timeout, "no answer in 500ms")),
        });
        r
    }

    static LOSS_NOW: AtomicU64 = AtomicU64::new(0);

    fn loss_clock() -> u64 {
        LOSS_NOW.load(Ordering::SeqCst)
    }

    /// The lab's `loss n2 30`: per round anything from 0 to 100 % loss on a
    /// cell, DNS timeouts on n2 now and then. Over 300 rounds the only
    /// finding ever raised is packet-loss on n2, and it clears after heal.
    #[test]
    fn thirty_percent_loss_is_packet_loss_and_nothing_else() {
        let aggregator = Aggregator::new(InventorySource::Unverified, Settings::default())
            .unwrap()
            .with_clock(loss_clock);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut raised_at = None;
        let mut cleared_at = None;
        for round in 1..=340u64 {
            let now = round * 5000;
            LOSS_NOW.store(now, Ordering::SeqCst);
            let lossy = (round <= 300).then_some("n2");
            for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
                let r = lab_round(i, node, now, lossy, 0.3, &mut rng);
                aggregator
                    .ingest(&serde_json::to_vec(&r).unwrap(), &Sender::Unverified)
                    .unwrap();
            }
            let findings = aggregator.evaluate().findings.clone();
            for f in &findings {
                assert_eq!(
                    (f.kind, f.nodes.as_slice()),
                    (FindingKind::PacketLoss, &["n2".to_owned()][..]),
                    "round {round}: {f:#?}"
                );
            }
            if !findings.is_empty() && raised_at.is_none() {
                raised_at = Some(round);
            }
            if round > 300 && findings.is_empty() && cleared_at.is_none() {
                cleared_at = Some(round);
            }
            if (20..=300).contains(&round) {
                assert_eq!(findings.len(), 1, "round {round}: packet-loss must hold");
            }
        }
        assert!(raised_at.is_some_and(|r| r <= 8), "raised at {raised_at:?}");
        assert!(
            cleared_at.is_some_and(|r| r <= 312),
            "cleared at {cleared_at:?}"
        );
    }

    static CHURN_NOW: AtomicU64 = AtomicU64::new(0);

    fn churn_clock() -> u64 {
        CHURN_NOW.load(Ordering::SeqCst)
    }

    /// Agents restarting (round counters starting over) and a companion
    /// re-created under a new address (one round of echoes to the old,
    /// gone address) raise nothing.
    #[test]
    fn churn_raises_nothing() {
        let aggregator = Aggregator::new(InventorySource::Unverified, Settings::default())
            .unwrap()
            .with_clock(churn_clock);
        let mut rng = Rng(7);
        for round in 1..=60u64 {
            let now = round * 5000;
            CHURN_NOW.store(now, Ordering::SeqCst);
            for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
                // Agents restart one by one: n1 misses rounds 10-11, n2 20-21.
                let restarting = (node == &"n1" && (10..12).contains(&round))
                    || (node == &"n2" && (20..22).contains(&round));
                if restarting {
                    continue;
                }
                let mut r = lab_round(i, node, now, None, 0.0, &mut rng);
                r.round = if round >= 12 && node == &"n1" {
                    round - 11
                } else {
                    round
                };
                // n3's companion is re-created at round 30: the old pod does
                // not answer that round, then peers list the new one.
                for p in r
                    .peers
                    .iter_mut()
                    .filter(|p| p.node == "n3" && p.pod == "n3-3")
                {
                    if round == 30 {
                        p.icmp.received = 0;
                        p.mtu = None;
                    } else if round > 30 {
                        p.ip = "10.244.3.77".parse().unwrap();
                    }
                }
                aggregator
                    .ingest(&serde_json::to_vec(&r).unwrap(), &Sender::Unverified)
                    .unwrap();
            }
            let findings = aggregator.evaluate().findings.clone();
            assert!(findings.is_empty(), "round {round}: {findings:#?}");
        }
    }
}
