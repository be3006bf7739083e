//! The latest report of every agent, and the validation that guards it.
//!
//! A report is only stored after it parsed, its sender matched the Kubernetes
//! API, and it is not older than what is held. A rejected report changes
//! nothing: the matrix keeps showing the last good data until that ages out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netmatrix_api::{NetworkMode, Report};

use crate::history::{History, RoundSample};
use crate::inventory::{Inventory, SenderMismatch};

/// A report as received, with the aggregator's receive time (agents' clocks
/// are not trusted for freshness).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReport {
    pub report: Report,
    pub received_unix_ms: u64,
}

impl StoredReport {
    pub fn age_ms(&self, now_unix_ms: u64) -> u64 {
        now_unix_ms.saturating_sub(self.received_unix_ms)
    }
}

/// Why a report was refused. [`Rejection::reason`] is the stable reason put in
/// the `ApiError` body and in `netmatrix_reports_rejected_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "report body exceeds {limit} bytes; raise --max-body on the aggregator, or probe a subset of nodes per agent"
    )]
    BodyTooLarge { limit: usize },
    #[error("report is not a valid /api/v1 report: {0}")]
    Malformed(String),
    #[error(
        "report claims node {node}, pod {pod}, IP {ip}, but {mismatch}; check that the agent runs from the DaemonSet selected by --agent-selector in the aggregator's namespace"
    )]
    UnknownSender {
        node: String,
        pod: String,
        ip: IpAddr,
        mismatch: SenderMismatch,
    },
    #[error(
        "the aggregator has not listed nodes and agent pods from the Kubernetes API yet; retry next round"
    )]
    InventoryNotSynced,
    #[error(
        "report of round {round} from {pod} started at {started_unix_ms}, before the report held (started at {held_unix_ms}); late retries are dropped"
    )]
    Stale {
        pod: String,
        round: u64,
        started_unix_ms: u64,
        held_unix_ms: u64,
    },
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::BodyTooLarge { .. } => "body-too-large",
            Rejection::Malformed(_) => "malformed-report",
            Rejection::UnknownSender { .. } => "unknown-sender",
            Rejection::InventoryNotSynced => "inventory-not-synced",
            Rejection::Stale { .. } => "stale-report",
        }
    }
}

/// What an accepted report changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub node: String,
    pub round: u64,
    /// Peers without a node name whose IP no node claims; they were dropped.
    pub unmapped_peers: usize,
}

/// Latest report per (node, network mode), and the last rounds' echo
/// counts per probed peer (see [`History`]).
#[derive(Debug, Default)]
pub struct ReportStore {
    latest: BTreeMap<(String, NetworkMode), StoredReport>,
    /// Every node that ever reported: the expected nodes under `--no-kubernetes`.
    seen_nodes: BTreeSet<String>,
    history: History,
}

/// Parses a report body. Done before taking the store's lock: parsing a
/// large body must not hold up other agents.
pub fn parse(body: &[u8]) -> Result<Report, Rejection> {
    let mut report: Report =
        serde_json::from_slice(body).map_err(|e| Rejection::Malformed(e.to_string()))?;
    check_shape(&report)?;
    // Kept until the next report: without the slack of the parser's
    // doubling (64 slots for 50 peers), a fifth of the store's memory.
    report.peers.shrink_to_fit();
    Ok(report)
}

impl ReportStore {
    /// A store keeping `history_rounds` rounds per peer (at least one).
    pub fn with_history(history_rounds: usize) -> Self {
        ReportStore {
            history: History::new(history_rounds),
            ..Default::default()
        }
    }

    /// Parses, verifies and stores one report body.
    pub fn ingest(
        &mut self,
        body: &[u8],
        inventory: Option<&Inventory>,
        now_unix_ms: u64,
    ) -> Result<Accepted, Rejection> {
        self.insert(parse(body)?, inventory, now_unix_ms)
    }

    /// Verifies and stores a parsed report.
    ///
    /// `inventory` is `None` when identities are not verified (`--no-kubernetes`).
    pub fn insert(
        &mut self,
        mut report: Report,
        inventory: Option<&Inventory>,
        now_unix_ms: u64,
    ) -> Result<Accepted, Rejection> {
        if let Some(inventory) = inventory {
            if !inventory.synced {
                return Err(Rejection::InventoryNotSynced);
            }
            inventory.verify_sender(&report.agent).map_err(|mismatch| {
                Rejection::UnknownSender {
                    node: report.agent.node.clone(),
                    pod: report.agent.pod.clone(),
                    ip: report.agent.pod_ip,
                    mismatch,
                }
            })?;
        }

        let key = (report.agent.node.clone(), report.agent.network);
        if let Some(held) = self.latest.get(&key) {
            // Only the same pod's reports are ordered: a replacement pod
            // (verified above) always wins over its predecessor.
            let same_pod = held.report.agent.pod == report.agent.pod;
            if same_pod && report.started_unix_ms < held.report.started_unix_ms {
                return Err(Rejection::Stale {
                    pod: report.agent.pod.clone(),
                    round: report.round,
                    started_unix_ms: report.started_unix_ms,
                    held_unix_ms: held.report.started_unix_ms,
                });
            }
        }

        let unmapped_peers = self.place_unnamed_peers(&mut report, inventory);
        let accepted = Accepted {
            node: report.agent.node.clone(),
            round: report.round,
            unmapped_peers,
        };
        self.seen_nodes.insert(report.agent.node.clone());
        let samples = report
            .peers
            .iter()
            .map(|p| (p.ip, p.node.clone(), RoundSample::of(p)));
        self.history
            .record(&report.agent.node, report.agent.network, samples);
        self.latest.insert(
            key,
            StoredReport {
                report,
                received_unix_ms: now_unix_ms,
            },
        );
        Ok(accepted)
    }

    /// Peers found through DNS carry no node name: place them by IP through
    /// the inventory (agent pod IPs, node pod CIDRs), or, without one, through
    /// the addresses of agents that have reported. Unplaceable peers are
    /// dropped, since a cell needs a destination node.
    fn place_unnamed_peers(&self, report: &mut Report, inventory: Option<&Inventory>) -> usize {
        let before = report.peers.len();
        report.peers.retain_mut(|peer| {
            if !peer.node.is_empty() {
                return true;
            }
            let node = inventory
                .and_then(|inv| inv.node_of_ip(peer.ip))
                .or_else(|| self.reporter_of_ip(peer.ip));
            match node {
                Some(node) => {
                    peer.node = node.to_owned();
                    true
                }
                None => false,
            }
        });
        before - report.peers.len()
    }

    fn reporter_of_ip(&self, ip: IpAddr) -> Option<&str> {
        self.latest
            .values()
            .find(|s| s.report.agent.pod_ip == ip)
            .map(|s| s.report.agent.node.as_str())
    }

    pub fn get(&self, node: &str, network: NetworkMode) -> Option<&StoredReport> {
        self.latest.get(&(node.to_owned(), network))
    }

    /// Every held report.
    pub fn reports(&self) -> impl Iterator<Item = &StoredReport> {
        self.latest.values()
    }

    pub fn seen_nodes(&self) -> &BTreeSet<String> {
        &self.seen_nodes
    }

    /// The last rounds of every source's peers.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Drops the reports for which `keep` says no (nodes that left the
    /// cluster), with their history, so memory and the matrix follow the
    /// cluster's size.
    pub fn retain(&mut self, mut keep: impl FnMut(&StoredReport) -> bool) {
        let history = &mut self.history;
        self.latest.retain(|(node, network), stored| {
            let kept = keep(stored);
            if !kept {
                history.forget(node, *network);
            }
            kept
        });
    }
}

/// Checks what serde cannot: identities must name something.
fn check_shape(report: &Report) -> Result<(), Rejection> {
    let agent = &report.agent;
    if agent.node.trim().is_empty() || agent.pod.trim().is_empty() {
        return Err(Rejection::Malformed(
            "agent.node and agent.pod must not be empty".into(),
        ));
    }
    if report.interval_ms == 0 {
        return Err(Rejection::Malformed("interval_ms must be positive".into()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::inventory::{AgentPod, NodeInfo};
    use netmatrix_api::{AgentIdentity, EchoResult, PeerResult};
    use serde_json::json;

    pub(crate) fn inventory(nodes: &[&str]) -> Inventory {
        let mut inv = Inventory {
            synced: true,
            ..Default::default()
        };
        for (i, node) in nodes.iter().enumerate() {
            inv.nodes.insert(
                node.to_string(),
                NodeInfo {
                    pod_cidrs: vec![format!("10.244.{}.0/24", i + 1).parse().unwrap()],
                    ready: true,
                    created_unix_ms: None,
                    unschedulable: false,
                },
            );
            inv.agents.insert(
                node.to_string(),
                vec![
                    AgentPod {
                        name: format!("agent-{node}"),
                        ips: vec![format!("10.244.{}.2", i + 1).parse().unwrap()],
                        network: NetworkMode::Pod,
                        started_unix_ms: None,
                    },
                    AgentPod {
                        name: format!("host-agent-{node}"),
                        ips: vec![format!("198.18.0.{}", i + 1).parse().unwrap()],
                        network: NetworkMode::Host,
                        started_unix_ms: None,
                    },
                ],
            );
        }
        inv
    }

    pub(crate) fn report(node_index: usize, node: &str, started: u64) -> Report {
        Report {
            agent: AgentIdentity {
                node: node.into(),
                pod: format!("agent-{node}"),
                pod_ip: format!("10.244.{}.2", node_index + 1).parse().unwrap(),
                network: NetworkMode::Pod,
            },
            round: started,
            started_unix_ms: started,
            interval_ms: 5000,
            peers: vec![],
            services: vec![],
            dns: vec![],
            peer_source: Default::default(),
            mtu_probe_bytes: None,
            sampled: None,
        }
    }

    /// The host-network agent's report of node `node_index` (its IP is the node's).
    pub(crate) fn host_report(node_index: usize, node: &str, started: u64) -> Report {
        let mut r = report(node_index, node, started);
        r.agent.pod = format!("host-agent-{node}");
        r.agent.pod_ip = format!("198.18.0.{}", node_index + 1).parse().unwrap();
        r.agent.network = NetworkMode::Host;
        r
    }

    fn body(report: &Report) -> Vec<u8> {
        serde_json::to_vec(report).unwrap()
    }

    #[test]
    fn accepts_a_verified_report() {
        let inv = inventory(&["n1", "n2"]);
        let mut store = ReportStore::default();
        let ok = store.ingest(&body(&report(0, "n1", 10)), Some(&inv), 1000);
        assert_eq!(ok.unwrap().node, "n1");
        let held = store.get("n1", NetworkMode::Pod).unwrap();
        assert_eq!(held.received_unix_ms, 1000);
    }

    #[test]
    fn rejections_change_nothing() {
        let inv = inventory(&["n1", "n2"]);
        let mut store = ReportStore::default();
        store
            .ingest(&body(&report(0, "n1", 10)), Some(&inv), 1000)
            .unwrap();
        let before = store.get("n1", NetworkMode::Pod).cloned();

        let malformed = store.ingest(b"{\"agent\": 3}", Some(&inv), 2000);
        assert_eq!(malformed.unwrap_err().reason(), "malformed-report");
        let wrong_type = json!({"agent": {"node": "n1", "pod": "agent-n1", "pod_ip": "10.244.1.2"},
            "round": "three", "started_unix_ms": 20, "interval_ms": 5000});
        let err = store
            .ingest(wrong_type.to_string().as_bytes(), Some(&inv), 2000)
            .unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");

        // n1's agent pretending to be n2's.
        let mut impostor = report(0, "n1", 20);
        impostor.agent.node = "n2".into();
        let err = store
            .ingest(&body(&impostor), Some(&inv), 2000)
            .unwrap_err();
        assert_eq!(err.reason(), "unknown-sender");
        assert!(err.to_string().contains("runs on node n1"), "{err}");

        let err = store
            .ingest(&body(&report(0, "n1", 5)), Some(&inv), 2000)
            .unwrap_err();
        assert_eq!(err.reason(), "stale-report");

        assert_eq!(store.get("n1", NetworkMode::Pod).cloned(), before);
        assert!(store.get("n2", NetworkMode::Pod).is_none());
    }

    #[test]
    fn refuses_everyone_until_the_inventory_synced() {
        let mut inv = inventory(&["n1"]);
        inv.synced = false;
        let err = ReportStore::default()
            .ingest(&body(&report(0, "n1", 1)), Some(&inv), 1)
            .unwrap_err();
        assert_eq!(err, Rejection::InventoryNotSynced);
    }

    #[test]
    fn a_replacement_pod_is_not_stale() {
        let mut inv = inventory(&["n1"]);
        let mut store = ReportStore::default();
        store
            .ingest(&body(&report(0, "n1", 100)), Some(&inv), 1)
            .unwrap();
        inv.agents.get_mut("n1").unwrap()[0].name = "agent-n1-new".into();
        let mut new = report(0, "n1", 50);
        new.agent.pod = "agent-n1-new".into();
        assert!(store.ingest(&body(&new), Some(&inv), 2).is_ok());
    }

    #[test]
    fn places_peers_without_node_by_ip() {
        let inv = inventory(&["n1", "n2"]);
        let mut r = report(0, "n1", 1);
        for ip in ["10.244.2.2", "10.244.2.7", "192.0.2.9"] {
            r.peers.push(PeerResult {
                node: String::new(),
                pod: "p".into(),
                ip: ip.parse().unwrap(),
                icmp: EchoResult::default(),
                mtu: None,
            });
        }
        let mut store = ReportStore::default();
        let accepted = store.ingest(&body(&r), Some(&inv), 1).unwrap();
        assert_eq!(accepted.unmapped_peers, 1);
        let held = &store.get("n1", NetworkMode::Pod).unwrap().report;
        let nodes: Vec<_> = held.peers.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(nodes, ["n2", "n2"]);
    }

    #[test]
    fn unverified_mode_accepts_anyone_and_remembers_nodes() {
        let mut store = ReportStore::default();
        store.ingest(&body(&report(0, "n1", 1)), None, 1).unwrap();
        store.ingest(&body(&report(1, "n2", 1)), None, 1).unwrap();
        assert_eq!(store.seen_nodes().len(), 2);
        let err = store.ingest(b"", None, 1).unwrap_err();
        assert_eq!(err.reason(), "malformed-report");
    }

    #[test]
    fn host_reports_are_verified_against_host_agent_pods() {
        let inv = inventory(&["n1", "n2"]);
        let mut store = ReportStore::default();
        store
            .ingest(&body(&host_report(0, "n1", 1)), Some(&inv), 1)
            .unwrap();
        assert!(store.get("n1", NetworkMode::Host).is_some());
        assert!(store.get("n1", NetworkMode::Pod).is_none());

        // The pod agent claiming to be a host agent, and the other way round.
        let mut claims_host = report(0, "n1", 2);
        claims_host.agent.network = NetworkMode::Host;
        let err = store
            .ingest(&body(&claims_host), Some(&inv), 2)
            .unwrap_err();
        assert_eq!(err.reason(), "unknown-sender");
        assert!(err.to_string().contains("pod-network agent"), "{err}");
        let mut claims_pod = host_report(1, "n2", 2);
        claims_pod.agent.network = NetworkMode::Pod;
        assert!(store.ingest(&body(&claims_pod), Some(&inv), 2).is_err());
    }

    fn echo(node: &str, ip: &str, sent: u32, received: u32) -> PeerResult {
        PeerResult {
            node: node.into(),
            pod: format!("p-{ip}"),
            ip: ip.parse().unwrap(),
            icmp: EchoResult {
                sent,
                received,
                ..Default::default()
            },
            mtu: None,
        }
    }

    #[test]
    fn history_follows_the_peers_and_departed_sources() {
        let inv = inventory(&["n1", "n2"]);
        let mut store = ReportStore::with_history(3);
        for round in 1..=4u64 {
            let mut r = report(0, "n1", round);
            r.peers = vec![
                echo("n2", "10.244.2.2", 3, 2),
                echo("n2", "10.244.2.3", 3, 3),
            ];
            if round == 4 {
                // The companion was re-created under a new address.
                r.peers[1] = echo("n2", "10.244.2.9", 3, 3);
            }
            store.ingest(&body(&r), Some(&inv), round).unwrap();
        }
        let w = store
            .history()
            .window("n1", NetworkMode::Pod, "n2")
            .unwrap();
        assert_eq!(w.rounds, 3, "capped at --history-rounds");
        assert_eq!(
            (w.sent, w.received),
            (9 + 3, 6 + 3),
            "the old companion is gone"
        );

        store.retain(|s| s.report.agent.node != "n1");
        assert!(
            store
                .history()
                .window("n1", NetworkMode::Pod, "n2")
                .is_none()
        );
        assert_eq!(store.history().sources(), 0);
    }
}
