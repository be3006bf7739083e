//! Prometheus metrics of one agent (`netmatrix_agent_*`).
//!
//! Cardinality is bounded by nodes and configuration, never by peer pods:
//! per-peer data lives in the report and `/status`. The only per-node
//! series, `netmatrix_agent_peer_node_failing{peer_node}` and
//! `netmatrix_agent_peer_node_mtu_failing{peer_node}`, exist only while that
//! node is failing; after every round the label sets of nodes that recovered
//! or left (no peer of theirs in the round: departed, cordoned, NotReady) are
//! deleted, so a healthy cluster of any size exports a constant number of
//! series, and a departed node leaves none behind.

use std::collections::BTreeSet;
use std::time::Duration;

use netmatrix_api::{ErrorKind, PeerResult, PeerSource, RecordType, Report};
use netmatrix_runtime::metrics::GaugeSeries;
use prometheus::core::AtomicI64;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const PREFIX: &str = "netmatrix_agent";

/// Which probe a duration or failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Icmp,
    Apiserver,
    Clusterip,
    Dns,
}

impl Probe {
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Icmp => "icmp",
            Probe::Apiserver => "apiserver",
            Probe::Clusterip => "clusterip",
            Probe::Dns => "dns",
        }
    }
}

/// Outcome of one attempt to deliver a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    Ok,
    /// The aggregator answered 4xx (the report will not be retried).
    Rejected,
    /// Connect failure, timeout or 5xx on every endpoint.
    Error,
    /// Not sent: backing off after repeated failures.
    Skipped,
}

impl ReportOutcome {
    fn as_str(self) -> &'static str {
        match self {
            ReportOutcome::Ok => "ok",
            ReportOutcome::Rejected => "rejected",
            ReportOutcome::Error => "error",
            ReportOutcome::Skipped => "skipped",
        }
    }
}

/// Peer scope label: relative to this agent's node.
fn scope(peer_node: &str, my_node: &str) -> &'static str {
    if peer_node.is_empty() {
        "unknown"
    } else if peer_node == my_node {
        "same-node"
    } else {
        "cross-node"
    }
}

pub struct Metrics {
    registry: Registry,
    rounds: IntCounter,
    peers: IntGaugeVec,
    peers_failing: IntGaugeVec,
    peers_mtu_failing: IntGaugeVec,
    mtu_probe_bytes: IntGauge,
    probe_duration: HistogramVec,
    probe_failures: IntCounterVec,
    service_up: IntGaugeVec,
    dns_up: IntGaugeVec,
    dns_pending: IntGaugeVec,
    /// One series per peer node, present (1) only while that node fails a
    /// check: those of nodes that recovered or left are deleted.
    peer_node_failing: GaugeSeries<AtomicI64>,
    peer_node_mtu_failing: GaugeSeries<AtomicI64>,
    reports: IntCounterVec,
    relays: IntCounterVec,
    peer_source: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let name = |n: &str| format!("{PREFIX}_{n}");
        let rounds = IntCounter::new(name("rounds_total"), "Probing rounds completed.")?;
        let peers = IntGaugeVec::new(
            Opts::new(name("peers"), "Peer pods probed in the last round."),
            &["scope"],
        )?;
        let peers_failing = IntGaugeVec::new(
            Opts::new(
                name("peers_failing"),
                "Peer pods that answered no echo in the last round.",
            ),
            &["scope"],
        )?;
        let peers_mtu_failing = IntGaugeVec::new(
            Opts::new(
                name("peers_mtu_failing"),
                "Peer pods that answered small echoes but none of the large Don't-Fragment ones in the last round.",
            ),
            &["scope"],
        )?;
        let mtu_probe_bytes = IntGauge::new(
            name("mtu_probe_bytes"),
            "Size of the IP packets of the MTU probe (0: off).",
        )?;
        let probe_duration = HistogramVec::new(
            HistogramOpts::new(
                name("probe_duration_seconds"),
                "Duration of one probe, until success or failure.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["probe"],
        )?;
        let probe_failures = IntCounterVec::new(
            Opts::new(
                name("probe_failures_total"),
                "Failed probes by probe and error kind.",
            ),
            &["probe", "error"],
        )?;
        let service_up = IntGaugeVec::new(
            Opts::new(
                name("service_up"),
                "1 when the last check of the API server / ClusterIP service passed.",
            ),
            &["service"],
        )?;
        let dns_up = IntGaugeVec::new(
            Opts::new(
                name("dns_up"),
                "1 when the last DNS check passed (answered, and matched the API).",
            ),
            &["name", "record"],
        )?;
        let dns_pending = IntGaugeVec::new(
            Opts::new(
                name("dns_pending"),
                "Expected DNS records missing but younger than the negative-cache TTL, in the last check.",
            ),
            &["name", "record"],
        )?;
        let peer_node_mtu_failing = IntGaugeVec::new(
            Opts::new(
                name("peer_node_mtu_failing"),
                "Present (1) only for peer nodes with a pod that answered small echoes but no large Don't-Fragment one in the last round.",
            ),
            &["peer_node"],
        )?;
        let peer_node_failing = IntGaugeVec::new(
            Opts::new(
                name("peer_node_failing"),
                "Present (1) only for peer nodes with a pod that answered no echo in the last round.",
            ),
            &["peer_node"],
        )?;
        let reports = IntCounterVec::new(
            Opts::new(
                name("reports_total"),
                "Report deliveries to the aggregator by result.",
            ),
            &["result"],
        )?;
        let relays = IntCounterVec::new(
            Opts::new(
                name("relays_total"),
                "Host agents: the node's pod agent's undelivered reports relayed to the aggregator, by result (unreachable: the pod agent could not be asked).",
            ),
            &["result"],
        )?;
        let peer_source = IntGaugeVec::new(
            Opts::new(
                name("peer_source"),
                "1 for where the last round's peer list came from (api, last-known, dns).",
            ),
            &["source"],
        )?;
        registry.register(Box::new(rounds.clone()))?;
        registry.register(Box::new(peers.clone()))?;
        registry.register(Box::new(peers_failing.clone()))?;
        registry.register(Box::new(peers_mtu_failing.clone()))?;
        registry.register(Box::new(mtu_probe_bytes.clone()))?;
        registry.register(Box::new(dns_pending.clone()))?;
        registry.register(Box::new(peer_node_mtu_failing.clone()))?;
        registry.register(Box::new(probe_duration.clone()))?;
        registry.register(Box::new(probe_failures.clone()))?;
        registry.register(Box::new(service_up.clone()))?;
        registry.register(Box::new(dns_up.clone()))?;
        registry.register(Box::new(peer_node_failing.clone()))?;
        registry.register(Box::new(reports.clone()))?;
        registry.register(Box::new(relays.clone()))?;
        registry.register(Box::new(peer_source.clone()))?;
        Ok(Self {
            registry,
            rounds,
            peers,
            peers_failing,
            peers_mtu_failing,
            mtu_probe_bytes,
            probe_duration,
            probe_failures,
            service_up,
            dns_up,
            dns_pending,
            peer_node_failing: GaugeSeries::new(peer_node_failing),
            peer_node_mtu_failing: GaugeSeries::new(peer_node_mtu_failing),
            reports,
            relays,
            peer_source,
        })
    }

    /// One probe finished after `duration`, failing with `error` if any.
    pub fn observe_probe(&self, probe: Probe, duration: Duration, error: Option<ErrorKind>) {
        self.probe_duration
            .with_label_values(&[probe.as_str()])
            .observe(duration.as_secs_f64());
        if let Some(kind) = error {
            self.probe_failures
                .with_label_values(&[probe.as_str(), kind.as_str()])
                .inc();
        }
    }

    /// Updates the gauges from a finished round.
    pub fn observe_round(&self, report: &Report) {
        self.rounds.inc();
        let my_node = report.agent.node.as_str();
        for s in ["same-node", "cross-node", "unknown"] {
            let total = report.peers.iter().filter(|p| scope(&p.node, my_node) == s);
            let (count, failing, mtu_failing) = total.fold((0, 0, 0), |(c, f, m), p| {
                (
                    c + 1,
                    f + i64::from(peer_failing(p)),
                    m + i64::from(peer_mtu_failing(p)),
                )
            });
            self.peers.with_label_values(&[s]).set(count);
            self.peers_failing.with_label_values(&[s]).set(failing);
            self.peers_mtu_failing
                .with_label_values(&[s])
                .set(mtu_failing);
        }
        self.mtu_probe_bytes
            .set(report.mtu_probe_bytes.map_or(0, i64::from));
        for service in &report.services {
            self.service_up
                .with_label_values(&[service.name.as_str()])
                .set(i64::from(service.ok));
        }
        for dns in &report.dns {
            let record = match dns.record {
                RecordType::A => "A",
                RecordType::Srv => "SRV",
            };
            self.dns_up
                .with_label_values(&[dns.name.as_str(), record])
                .set(i64::from(dns.ok));
            self.dns_pending
                .with_label_values(&[dns.name.as_str(), record])
                .set(i64::try_from(dns.pending.len()).unwrap_or(i64::MAX));
        }
        for (source, label) in [
            (PeerSource::Api, "api"),
            (PeerSource::Aggregator, "aggregator"),
            (PeerSource::LastKnown, "last-known"),
            (PeerSource::Dns, "dns"),
        ] {
            self.peer_source
                .with_label_values(&[label])
                .set(i64::from(report.peer_source == source));
        }
        // Nodes with no peer in this round (departed, cordoned, NotReady)
        // are in neither set: their series go.
        // Absent means "not failing": not 0.
        let nodes = |failing: fn(&PeerResult) -> bool| {
            let nodes: BTreeSet<&str> = report
                .peers
                .iter()
                .filter(|p| !p.node.is_empty() && failing(p))
                .map(|p| p.node.as_str())
                .collect();
            nodes.into_iter().map(|n| (vec![n.to_owned()], 1))
        };
        self.peer_node_failing.set(nodes(peer_failing));
        self.peer_node_mtu_failing.set(nodes(peer_mtu_failing));
    }

    pub fn record_report(&self, outcome: ReportOutcome) {
        self.reports.with_label_values(&[outcome.as_str()]).inc();
    }

    /// A relay attempt's result: a [`ReportOutcome`], or `unreachable`.
    pub fn record_relay(&self, outcome: Option<ReportOutcome>) {
        let label = outcome.map_or("unreachable", ReportOutcome::as_str);
        self.relays.with_label_values(&[label]).inc();
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// A peer is failing when not one echo came back.
pub fn peer_failing(peer: &PeerResult) -> bool {
    peer.icmp.received == 0
}

/// The MTU signature: small echoes answered, not one large
/// Don't-Fragment echo (a peer that answers nothing is failing, not this).
pub fn peer_mtu_failing(peer: &PeerResult) -> bool {
    !peer_failing(peer) && peer.mtu.as_ref().is_some_and(|m| m.received == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::EchoResult;

    fn peer(node: &str, received: u32) -> PeerResult {
        PeerResult {
            node: node.into(),
            pod: format!("agent-{node}"),
            ip: "10.244.0.2".parse().unwrap(),
            icmp: EchoResult {
                sent: 3,
                received,
                ..Default::default()
            },
            mtu: None,
            tcp: None,
            udp: None,
            port: None,
        }
    }

    fn report(peers: Vec<PeerResult>) -> Report {
        Report {
            peers,
            started_unix_ms: 0,
            peer_source: PeerSource::LastKnown,
            ..netmatrix_api::fixtures::report(netmatrix_api::fixtures::identity(
                "n1",
                "agent-n1",
                "10.244.1.2",
            ))
        }
    }

    #[test]
    fn failing_node_series_exist_only_while_failing() {
        let m = Metrics::new().unwrap();
        m.observe_round(&report(vec![peer("n1", 3), peer("n2", 0), peer("n3", 0)]));
        let text = m.encode().unwrap();
        assert!(
            text.contains("netmatrix_agent_peer_node_failing{peer_node=\"n2\"} 1"),
            "{text}"
        );
        assert!(text.contains("netmatrix_agent_peers{scope=\"cross-node\"} 2"));
        assert!(text.contains("netmatrix_agent_peers_failing{scope=\"cross-node\"} 2"));
        assert!(text.contains("netmatrix_agent_peers{scope=\"same-node\"} 1"));
        assert!(text.contains("netmatrix_agent_peer_source{source=\"last-known\"} 1"));

        // n2 recovers, n3 leaves the cluster.
        m.observe_round(&report(vec![peer("n1", 3), peer("n2", 2)]));
        let text = m.encode().unwrap();
        assert!(!text.contains("peer_node_failing{"), "{text}");
        assert!(text.contains("netmatrix_agent_rounds_total 2"));
    }

    fn with_mtu(mut p: PeerResult, received: u32) -> PeerResult {
        p.mtu = Some(EchoResult {
            sent: 2,
            received,
            ..Default::default()
        });
        p
    }

    #[test]
    fn series_of_departed_peer_nodes_are_deleted() {
        let m = Metrics::new().unwrap();
        let mut r = report(vec![
            peer("n1", 3),
            with_mtu(peer("n2", 3), 0),
            peer("n3", 0),
            with_mtu(peer("n4", 3), 2),
        ]);
        r.mtu_probe_bytes = Some(1450);
        m.observe_round(&r);
        let text = m.encode().unwrap();
        assert!(
            text.contains("netmatrix_agent_peer_node_mtu_failing{peer_node=\"n2\"} 1"),
            "{text}"
        );
        assert!(text.contains("netmatrix_agent_peer_node_failing{peer_node=\"n3\"} 1"));
        assert!(text.contains("netmatrix_agent_peers_mtu_failing{scope=\"cross-node\"} 1"));
        assert!(text.contains("netmatrix_agent_mtu_probe_bytes 1450"));
        assert!(!text.contains("peer_node=\"n4\""), "healthy: no series");

        // n2 and n3 leave while failing (deleted, or their node cordoned):
        // nothing of theirs remains.
        m.observe_round(&report(vec![peer("n1", 3), with_mtu(peer("n4", 3), 2)]));
        let text = m.encode().unwrap();
        assert!(!text.contains("peer_node="), "{text}");
        assert!(text.contains("netmatrix_agent_peers_mtu_failing{scope=\"cross-node\"} 0"));
        assert!(text.contains("netmatrix_agent_mtu_probe_bytes 0"));
    }

    #[test]
    fn probe_failures_are_counted_by_kind() {
        let m = Metrics::new().unwrap();
        m.observe_probe(
            Probe::Apiserver,
            Duration::from_millis(3),
            Some(ErrorKind::Unreachable),
        );
        m.record_report(ReportOutcome::Rejected);
        let text = m.encode().unwrap();
        assert!(text.contains(
            "netmatrix_agent_probe_failures_total{error=\"unreachable\",probe=\"apiserver\"} 1"
        ));
        assert!(text.contains("netmatrix_agent_reports_total{result=\"rejected\"} 1"));
        assert!(
            text.contains("netmatrix_agent_probe_duration_seconds_count{probe=\"apiserver\"} 1")
        );
    }
}
