//! Prometheus metrics, prefixed `netmatrix_`.
//!
//! Series grow with nodes, not with node pairs: per-node summaries, one
//! gauge per active finding, and per-pair series only for pairs that are
//! failing right now. Every labelled series that no longer applies (a pair
//! that recovered, a finding that cleared, a node that left) is deleted
//! rather than zeroed, so the series count stays bounded over time.

use std::collections::BTreeMap;

use netmatrix_api::{CheckGroup, Finding, FindingKind, Matrix, Status};
use netmatrix_runtime::metrics::GaugeSeries;
use prometheus::core::{AtomicF64, AtomicI64};
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    nodes_expected: IntGauge,
    nodes_reporting: IntGauge,
    node_reachable_peers: GaugeSeries<AtomicI64>,
    node_failing_peers: GaugeSeries<AtomicI64>,
    node_check_up: GaugeSeries<AtomicI64>,
    finding_active: IntGaugeVec,
    finding: GaugeSeries<AtomicI64>,
    finding_flapping: GaugeSeries<AtomicI64>,
    finding_cause: GaugeSeries<AtomicI64>,
    pair_failed: GaugeSeries<AtomicI64>,
    pairs_failed: IntGauge,
    report_age_seconds: GaugeSeries<AtomicF64>,
    node_rtt_seconds: GaugeSeries<AtomicF64>,
    node_loss_ratio: GaugeSeries<AtomicF64>,
    reports_total: IntCounter,
    reports_relayed_total: IntCounter,
    reports_rejected_total: IntCounterVec,
    peers_unplaced_total: IntCounter,
    pinglists: PinglistMetrics,
}

/// What the pinglists cost: how many are held, how often their content
/// changes, how long recomputing them takes, and the polls held open.
#[derive(Clone)]
pub struct PinglistMetrics {
    pub lists: IntGauge,
    pub changes_total: IntCounter,
    pub recompute_seconds: Histogram,
    pub polls_waiting: IntGauge,
}

/// Series of `netmatrix_pair_failed` at most. A partition of a large
/// cluster fails every path across it (125,000 at 5,000 nodes sampling 50
/// peers): a series each would load Prometheus exactly when it is needed,
/// and the findings already name the groups. The first pairs in node order
/// are kept, so the same ones stay from round to round.
pub const MAX_PAIR_SERIES: usize = 1000;

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("netmatrix".to_owned()), None)?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let gauges =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let float_gauges =
            |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, prometheus::Error> {
                let g = GaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let metrics = Metrics {
            nodes_expected: gauge("nodes_expected", "Nodes expected to run a reporting agent.")?,
            nodes_reporting: gauge("nodes_reporting", "Nodes whose agent reported recently.")?,
            node_reachable_peers: GaugeSeries::new(gauges(
                "node_reachable_peers",
                "Destination nodes (its own included) whose pods this node reaches (ok or degraded).",
                &["node"],
            )?),
            node_failing_peers: GaugeSeries::new(gauges(
                "node_failing_peers",
                "Destination nodes (its own included) whose pods this node fails to reach.",
                &["node"],
            )?),
            node_check_up: GaugeSeries::new(gauges(
                "node_check_up",
                "1 when every check of this kind (apiserver, clusterip, dns, mtu) passes from this node, 0 when one fails.",
                &["node", "check"],
            )?),
            finding_active: gauges(
                "finding_active",
                "Number of active findings of this kind.",
                &["kind"],
            )?,
            finding: GaugeSeries::new(gauges(
                "finding",
                "1 for each node concerned by an active finding of this kind.",
                &["kind", "node"],
            )?),
            finding_flapping: GaugeSeries::new(gauges(
                "finding_flapping",
                "1 for each node concerned by an active finding that is flapping (it cleared and came back within the flap window, and is held raised).",
                &["kind", "node"],
            )?),
            finding_cause: GaugeSeries::new(gauges(
                "finding_cause",
                "1 for each node concerned by an active finding whose cause the nodes' network facts tell; `cause` is its first line (at most 200 characters), for alert annotations.",
                &["kind", "node", "cause"],
            )?),
            pair_failed: GaugeSeries::new(gauges(
                "pair_failed",
                "1 for each directed node pair whose pod-network cell is failed (absent otherwise); at most 1,000 pairs, the first in node order: netmatrix_pairs_failed counts them all.",
                &["from", "to"],
            )?),
            pairs_failed: gauge(
                "pairs_failed",
                "Directed node pairs whose pod-network cell is failed, all of them (netmatrix_pair_failed names at most 1,000).",
            )?,
            report_age_seconds: GaugeSeries::new(float_gauges(
                "report_age_seconds",
                "Age of the node's last pod-network report.",
                &["node"],
            )?),
            node_rtt_seconds: GaugeSeries::new(float_gauges(
                "node_rtt_seconds",
                "Mean ICMP round-trip time from this node to the nodes it reaches (pod network, last round).",
                &["node"],
            )?),
            node_loss_ratio: GaugeSeries::new(float_gauges(
                "node_loss_ratio",
                "Fraction of ICMP echoes from this node that were lost, averaged over its destination nodes (pod network, last round).",
                &["node"],
            )?),
            reports_total: {
                let c = IntCounter::new("reports_total", "Reports accepted.")?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            reports_relayed_total: {
                let c = IntCounter::new(
                    "reports_relayed_total",
                    "Pod agents' reports accepted from their node's host agent (the pod agent could not reach the aggregator); also counted in reports_total.",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            reports_rejected_total: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "reports_rejected_total",
                        "Reports rejected, by reason (pinglist fetches refused for their token too).",
                    ),
                    &["reason"],
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            peers_unplaced_total: {
                let c = IntCounter::new(
                    "peers_unplaced_total",
                    "Peer results without a node name whose IP matched no node; they were ignored.",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            pinglists: PinglistMetrics {
                lists: gauge(
                    "pinglists",
                    "Pinglists held, one per agent (node and network).",
                )?,
                changes_total: {
                    let c = IntCounter::new(
                        "pinglist_changes_total",
                        "Pinglists republished because their content changed (each wakes its agent's poll).",
                    )?;
                    registry.register(Box::new(c.clone()))?;
                    c
                },
                recompute_seconds: {
                    let h = Histogram::with_opts(
                        HistogramOpts::new(
                            "pinglist_recompute_seconds",
                            "Time to recompute the pinglists after watch events or at an epoch boundary.",
                        )
                        .buckets(vec![0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 60.0]),
                    )?;
                    registry.register(Box::new(h.clone()))?;
                    h
                },
                polls_waiting: gauge(
                    "pinglist_polls_waiting",
                    "Pinglist long polls held open (at most 1,024; more are answered at once).",
                )?,
            },
            registry,
        };
        // Every finding kind exists (at 0) before it first fires: alert rules
        // can then tell 0 from absent.
        for kind in FindingKind::ALL {
            metrics
                .finding_active
                .with_label_values(&[kind.as_str()])
                .set(0);
        }
        Ok(metrics)
    }

    pub fn report_accepted(&self, unplaced_peers: usize, relayed: bool) {
        self.reports_total.inc();
        if relayed {
            self.reports_relayed_total.inc();
        }
        self.peers_unplaced_total
            .inc_by(u64::try_from(unplaced_peers).unwrap_or(u64::MAX));
    }

    /// The pinglists' instruments, for the task that maintains them and
    /// the endpoint that serves them.
    pub fn pinglists(&self) -> &PinglistMetrics {
        &self.pinglists
    }

    pub fn report_rejected(&self, reason: &str) {
        self.reports_rejected_total
            .with_label_values(&[reason])
            .inc();
    }

    /// Publishes one evaluation round.
    pub fn observe(&self, matrix: &Matrix, expected_nodes: usize, findings: &[Finding]) {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.nodes_expected.set(as_i64(expected_nodes));
        self.nodes_reporting
            .set(as_i64(matrix.rows.iter().filter(|r| r.reporting).count()));

        let mut reachable = Vec::new();
        let mut failing = Vec::new();
        let mut checks = Vec::new();
        let mut pairs = Vec::new();
        let mut ages = Vec::new();
        let mut rtts = Vec::new();
        let mut losses = Vec::new();
        let mut failed_pairs = 0usize;
        for row in &matrix.rows {
            let node = row.node.clone();
            let count = |wanted: &[Status]| {
                as_i64(
                    row.cells
                        .iter()
                        .filter(|c| wanted.contains(&c.status))
                        .count(),
                )
            };
            reachable.push((vec![node.clone()], count(&[Status::Ok, Status::Degraded])));
            failing.push((vec![node.clone()], count(&[Status::Failed])));
            for (check, up) in check_groups(row) {
                checks.push((vec![node.clone(), check.to_owned()], i64::from(up)));
            }
            for cell in row.cells.iter().filter(|c| c.status == Status::Failed) {
                failed_pairs += 1;
                if pairs.len() < MAX_PAIR_SERIES {
                    pairs.push((vec![node.clone(), cell.to.to_string()], 1));
                }
            }
            if let Some(rtt_ms) = mean(row.cells.iter().filter_map(|c| c.rtt_avg_ms)) {
                rtts.push((vec![node.clone()], rtt_ms / 1000.0));
            }
            if let Some(loss) = mean(row.cells.iter().filter_map(|c| c.loss)) {
                losses.push((vec![node.clone()], loss));
            }
            if let Some(age) = row.report_age_ms {
                ages.push((vec![node], age / 1000.0));
            }
        }

        let mut active: BTreeMap<FindingKind, i64> =
            FindingKind::ALL.iter().map(|k| (*k, 0)).collect();
        let mut finding_nodes = Vec::new();
        let mut flapping = Vec::new();
        let mut causes = Vec::new();
        for f in findings {
            *active.entry(f.kind).or_default() += 1;
            let cause: Option<String> = f.cause.first().map(|c| c.chars().take(200).collect());
            for node in &f.nodes {
                let labels = vec![f.kind.as_str().to_owned(), node.clone()];
                if f.flapping {
                    flapping.push((labels.clone(), 1));
                }
                if let Some(cause) = &cause {
                    let mut with_cause = labels.clone();
                    with_cause.push(cause.clone());
                    causes.push((with_cause, 1));
                }
                finding_nodes.push((labels, 1));
            }
        }
        for (kind, n) in active {
            self.finding_active
                .with_label_values(&[kind.as_str()])
                .set(n);
        }

        // Series of nodes, pairs and findings that are gone this round are
        // deleted (absent, not 0).
        self.node_reachable_peers.set(reachable);
        self.node_failing_peers.set(failing);
        self.node_check_up.set(checks);
        self.pair_failed.set(pairs);
        self.pairs_failed.set(as_i64(failed_pairs));
        self.finding.set(finding_nodes);
        self.finding_flapping.set(flapping);
        self.finding_cause.set(causes);
        self.report_age_seconds.set(ages);
        self.node_rtt_seconds.set(rtts);
        self.node_loss_ratio.set(losses);
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }

    pub fn content_type(&self) -> &'static str {
        prometheus::TEXT_FORMAT
    }
}

/// Mean of the values, `None` when there are none (no series rather than a
/// misleading 0).
fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0u32), |(sum, n), v| (sum + v, n + 1));
    (n > 0).then(|| sum / f64::from(n))
}

/// Per check group of a row: up (every known check ok) or down (one failed).
/// Groups with no known check are absent.
fn check_groups(row: &netmatrix_api::MatrixRow) -> Vec<(&'static str, bool)> {
    let mut groups: BTreeMap<&'static str, bool> = BTreeMap::new();
    for check in row.checks().filter(|c| c.status != Status::Unknown) {
        // A column this version does not know is counted with DNS.
        let group = check
            .column
            .kind()
            .group()
            .map_or("dns", CheckGroup::as_str);
        let up = groups.entry(group).or_insert(true);
        *up &= check.status == Status::Ok;
    }
    groups.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::fixtures::{self, cell, check, finding, row};
    use netmatrix_api::{Cell, ColumnKind, MatrixRow};

    fn matrix(nodes: &[&str], failed: &[(&str, &str)]) -> Matrix {
        let cell = |from: &str, to: &str| {
            let failed = failed.contains(&(from, to));
            Cell {
                loss: Some(if failed { 1.0 } else { 0.0 }),
                rtt_avg_ms: (!failed).then_some(2.0),
                pods: 1,
                ..cell(to, if failed { Status::Failed } else { Status::Ok })
            }
        };
        let rows = nodes
            .iter()
            .map(|from| MatrixRow {
                report_age_ms: Some(2500.0),
                ..row(from, nodes.iter().map(|to| cell(from, to)).collect())
            })
            .collect();
        fixtures::matrix(rows)
    }

    #[test]
    fn pair_series_exist_only_while_failing_and_departed_nodes_vanish() {
        let m = Metrics::new().unwrap();
        m.observe(&matrix(&["n1", "n2", "n3"], &[("n1", "n3")]), 3, &[]);
        let text = m.encode().unwrap();
        assert!(text.contains("netmatrix_pair_failed{from=\"n1\",to=\"n3\"} 1"));
        assert!(text.contains("netmatrix_node_failing_peers{node=\"n1\"} 1"));
        assert!(text.contains("netmatrix_node_reachable_peers{node=\"n1\"} 2"));
        assert!(text.contains("netmatrix_report_age_seconds{node=\"n3\"} 2.5"));
        // n1 lost everything to one of its three destinations.
        let loss = value(&text, "netmatrix_node_loss_ratio{node=\"n1\"}");
        assert!((loss - 1.0 / 3.0).abs() < 1e-9, "{text}");
        assert_eq!(
            value(&text, "netmatrix_node_rtt_seconds{node=\"n1\"}"),
            0.002
        );
        assert_eq!(value(&text, "netmatrix_node_loss_ratio{node=\"n2\"}"), 0.0);

        m.observe(&matrix(&["n1", "n2"], &[]), 2, &[]);
        let text = m.encode().unwrap();
        assert!(!text.contains("netmatrix_pair_failed{"), "{text}");
        assert!(!text.contains("node=\"n3\""), "{text}");
        assert!(text.contains("netmatrix_nodes_expected 2"));
    }

    /// A partition fails thousands of pairs: the series stop at the cap,
    /// the count does not, and the same pairs are kept round after round.
    #[test]
    fn failed_pair_series_are_capped_and_counted() {
        let nodes: Vec<String> = (0..50).map(|i| format!("n{i:02}")).collect();
        let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let (left, right) = names.split_at(25);
        let across: Vec<(&str, &str)> = left
            .iter()
            .flat_map(|a| right.iter().flat_map(move |b| [(*a, *b), (*b, *a)]))
            .collect();
        assert!(across.len() > MAX_PAIR_SERIES);
        let m = Metrics::new().unwrap();
        let mut kept = None;
        for _ in 0..2 {
            m.observe(&matrix(&names, &across), names.len(), &[]);
            let text = m.encode().unwrap();
            assert_eq!(
                value(&text, "netmatrix_pairs_failed"),
                across.len() as f64,
                "{text}"
            );
            let series: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("netmatrix_pair_failed{"))
                .map(str::to_owned)
                .collect();
            assert_eq!(series.len(), MAX_PAIR_SERIES);
            assert_eq!(*kept.get_or_insert(series.clone()), series);
        }
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    }

    fn series(text: &str, name: &str) -> usize {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .count()
    }

    #[test]
    fn finding_series_stay_bounded_and_vanish_when_cleared() {
        let m = Metrics::new().unwrap();
        let nodes: Vec<String> = (1..=6).map(|i| format!("n{i}")).collect();
        let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
        // Many rounds of changing findings: a partition over every node,
        // node findings moving from node to node.
        for round in 0..50 {
            let moving = names[round % names.len()];
            let findings = [
                finding(FindingKind::Partition, &names),
                finding(FindingKind::PacketLoss, &[moving]),
                finding(FindingKind::AsymmetricPath, &[moving, "n1"]),
            ];
            m.observe(&matrix(&names, &[]), names.len(), &findings);
            let text = m.encode().unwrap();
            assert_eq!(
                series(&text, "netmatrix_finding_active"),
                FindingKind::ALL.len()
            );
            assert!(series(&text, "netmatrix_finding") <= names.len() + 2 + 2);
        }
        let text = m.encode().unwrap();
        assert!(text.contains("netmatrix_finding_active{kind=\"partition\"} 1"));
        assert!(text.contains("netmatrix_finding{kind=\"partition\",node=\"n6\"} 1"));

        // Everything clears and n6 leaves the cluster.
        m.observe(&matrix(&names[..5], &[]), 5, &[]);
        let text = m.encode().unwrap();
        assert_eq!(series(&text, "netmatrix_finding"), 0, "{text}");
        assert!(text.contains("netmatrix_finding_active{kind=\"partition\"} 0"));
        assert!(!text.contains("node=\"n6\""), "{text}");
    }

    #[test]
    fn mtu_column_is_a_check_group() {
        let m = Metrics::new().unwrap();
        let mut mx = matrix(&["n1", "n2"], &[]);
        mx.rows[0].mtu = Some(check(ColumnKind::Mtu, Status::Failed));
        m.observe(&mx, 2, &[]);
        let text = m.encode().unwrap();
        assert!(
            text.contains("netmatrix_node_check_up{check=\"mtu\",node=\"n1\"} 0"),
            "{text}"
        );
        m.observe(&matrix(&["n1", "n2"], &[]), 2, &[]);
        assert!(!m.encode().unwrap().contains("check=\"mtu\""));
    }
}
