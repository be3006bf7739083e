//! A generated cluster for the aggregator's benchmarks: `n` nodes, one agent
//! each, probing the remote nodes the hash ring picks (or all of them), every
//! path healthy but for the faults asked for. Shared by `benches/` and
//! `examples/scale.rs`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use netmatrix_aggregator::auth::{Caller, Sender};
use netmatrix_aggregator::config::Settings;
use netmatrix_aggregator::inventory::{AgentPod, Inventory, InventorySource, NodeInfo};
use netmatrix_aggregator::state::Aggregator;
use netmatrix_aggregator::store::{Accepted, Rejection, ReportEncoding};
use netmatrix_api::fixtures::{self, identity};
use netmatrix_api::protobuf;
use netmatrix_api::sampling::{PeerSampling, Ring};
use netmatrix_api::{
    DnsResult, EchoResult, ErrorKind, NetworkMode, PeerResult, PeerSource, ProbeError, RecordType,
    Report, Sampled, ServiceKind, ServiceResult, round_ms,
};

#[derive(Clone)]
pub struct Cluster {
    pub nodes: Vec<String>,
    pub sampling: PeerSampling,
    /// Nodes whose every path (both ways) is down.
    pub isolated: Vec<String>,
    /// With `Some(k)`, paths between nodes below index `k` and the others
    /// are down (a partition in two groups).
    pub split_at: Option<usize>,
    /// Directed paths (from, to) that are down.
    pub broken: Vec<(String, String)>,
    /// How the reports are encoded (protobuf, as agents send them).
    pub encoding: ReportEncoding,
}

/// Each finding's kind and its nodes, sorted: what a run is checked by.
#[allow(dead_code)] // not every user of this module checks findings
pub fn kinds(
    findings: &[netmatrix_api::Finding],
) -> Vec<(netmatrix_api::FindingKind, Vec<String>)> {
    findings
        .iter()
        .map(|f| {
            let mut nodes = f.nodes.clone();
            nodes.sort();
            (f.kind, nodes)
        })
        .collect()
}

pub fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

/// Node `i`'s pods are in 10.0.0.0/8, four addresses each (a /30), so
/// that a million nodes fit; its agent has the third.
fn agent_ip(i: usize) -> IpAddr {
    IpAddr::from(std::net::Ipv4Addr::from(
        0x0a00_0000 + 4 * (i as u32 & 0x3f_ffff) + 2,
    ))
}

impl Cluster {
    /// `n` nodes, each probing `peers` remote nodes (a full mesh when
    /// `peers >= n - 1`).
    pub fn new(n: usize, peers: usize) -> Self {
        let sampling = if peers + 1 >= n {
            PeerSampling {
                full_mesh_max_nodes: n,
                ..PeerSampling::default()
            }
        } else {
            PeerSampling {
                full_mesh_max_nodes: 0,
                stable: peers.saturating_sub(2),
                rotating: peers.min(2),
            }
        };
        Cluster {
            nodes: (0..n).map(node_name).collect(),
            sampling,
            isolated: Vec::new(),
            split_at: None,
            broken: Vec::new(),
            encoding: ReportEncoding::Protobuf,
        }
    }

    /// Hands one of [`Cluster::report_bodies`] to `aggregator`, as its
    /// HTTP route would.
    pub fn ingest(
        &self,
        aggregator: &Aggregator,
        sender: &Sender,
        body: &[u8],
    ) -> Result<Accepted, Rejection> {
        aggregator.ingest_encoded(body, self.encoding, sender, false)
    }

    /// A node and one of its stable targets (probed every round, both
    /// ways).
    // Each user of this module (benches, the scale example, the sampled
    // tests) compiles it on its own, and the benches need no pair.
    #[allow(dead_code)]
    pub fn stable_pair(&self, from: usize) -> (String, String) {
        let ring = Ring::new(self.nodes.iter().map(String::as_str));
        let from = node_name(from);
        let to = ring.targets(&from, &self.sampling, 0)[0].to_owned();
        (from, to)
    }

    pub fn sampled(&self) -> bool {
        self.nodes.len() > self.sampling.full_mesh_max_nodes
    }

    /// What the Kubernetes API would say: every node Ready for long, one
    /// Running agent pod each.
    pub fn inventory(&self) -> Inventory {
        let mut inv = Inventory {
            synced: true,
            ..Default::default()
        };
        for (i, node) in self.nodes.iter().enumerate() {
            let IpAddr::V4(ip) = agent_ip(i) else {
                unreachable!("v4 addresses only")
            };
            let [a, b, c, d] = ip.octets();
            let base = d & !3;
            inv.nodes.insert(
                node.clone(),
                NodeInfo {
                    pod_cidrs: vec![
                        format!("{a}.{b}.{c}.{base}/30")
                            .parse()
                            .expect("valid CIDR"),
                    ],
                    ready: true,
                    created_unix_ms: Some(0),
                    unschedulable: false,
                },
            );
            inv.agents.insert(
                node.clone(),
                vec![AgentPod {
                    name: format!("agent-{node}"),
                    uid: format!("uid-agent-{node}"),
                    ips: vec![agent_ip(i)],
                    network: NetworkMode::Pod,
                    started_unix_ms: Some(0),
                    labels: Default::default(),
                    named_ports: Default::default(),
                }],
            );
        }
        inv
    }

    pub fn aggregator(&self, interval_ms: u64, clock: fn() -> u64) -> Aggregator {
        let mut settings = Settings::default();
        settings.policy.interval_ms = interval_ms;
        Aggregator::new(InventorySource::Fixed(Arc::new(self.inventory())), settings)
            .expect("metrics registry")
            .with_clock(clock)
    }

    /// Every node's report body for the round started at `now`, as the
    /// agents would post them, with the sender their tokens prove; made one
    /// at a time, so that holding them does not weigh on the memory measured.
    pub fn report_bodies(
        &self,
        round: u64,
        now: u64,
    ) -> impl Iterator<Item = (Sender, Vec<u8>)> + '_ {
        let index: BTreeMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let ring = Ring::new(self.nodes.iter().map(String::as_str));
        self.nodes.iter().enumerate().map(move |(i, node)| {
            let targets = ring.targets(node, &self.sampling, round / 6);
            let peers = targets
                .iter()
                .map(|to| {
                    let j = index[to];
                    let split = self.split_at.is_some_and(|k| (i < k) != (j < k));
                    let down = split
                        || self.isolated.iter().any(|x| x == node || x == to)
                        || self.broken.iter().any(|(f, t)| f == node && t == to);
                    PeerResult {
                        node: (*to).to_owned(),
                        pod: format!("agent-{to}"),
                        ip: agent_ip(j),
                        icmp: echoes(3, down, (i * 7 + j * 13) % 900),
                        mtu: Some(echoes(2, down, 0)),
                        tcp: None,
                        udp: None,
                        port: None,
                    }
                })
                .collect();
            let agent = identity(node, &format!("agent-{node}"), &agent_ip(i).to_string());
            let report = Report {
                round,
                started_unix_ms: now,
                interval_ms: 10_000,
                peers,
                services: vec![
                    service(ServiceKind::Apiserver, "kubernetes", "10.96.0.1:443"),
                    service(ServiceKind::Clusterip, "companion", "10.96.0.20:80"),
                ],
                dns: vec![
                    dns("kubernetes.default.svc.cluster.local.", RecordType::A),
                    dns(
                        "netmatrix-agents.netmatrix.svc.cluster.local.",
                        RecordType::Srv,
                    ),
                ],
                peer_source: PeerSource::Api,
                mtu_probe_bytes: Some(1450),
                sampled: self.sampled().then_some(Sampled {
                    nodes: self.nodes.len() as u32,
                    probed: targets.len() as u32,
                }),
                ..fixtures::report(agent)
            };
            let sender = Sender::Agent(Caller {
                service_account: "netmatrix-agent".to_owned(),
                pod: format!("agent-{node}"),
                pod_uid: format!("uid-agent-{node}"),
                node: Some(node.clone()),
            });
            let body = match self.encoding {
                ReportEncoding::Json => serde_json::to_vec(&report).expect("a report encodes"),
                ReportEncoding::Protobuf => protobuf::encode_report(&report),
            };
            (sender, body)
        })
    }
}

fn echoes(sent: u32, down: bool, jitter_us: usize) -> EchoResult {
    let rtt = 0.3 + jitter_us as f64 / 1000.0;
    EchoResult {
        sent,
        received: if down { 0 } else { sent },
        // Rounded to the microsecond, as agents send them.
        rtt_min_ms: (!down).then(|| round_ms(rtt * 0.8)),
        rtt_avg_ms: (!down).then(|| round_ms(rtt)),
        rtt_max_ms: (!down).then(|| round_ms(rtt * 1.5)),
        error: down.then(|| ProbeError::new(ErrorKind::Timeout, "no echo reply in 1s")),
    }
}

fn service(kind: ServiceKind, name: &str, target: &str) -> ServiceResult {
    ServiceResult {
        kind,
        name: name.to_owned(),
        target: target.to_owned(),
        ok: true,
        reached: None,
        latency_ms: Some(1.2),
        error: None,
    }
}

fn dns(name: &str, record: RecordType) -> DnsResult {
    DnsResult {
        name: name.to_owned(),
        record,
        ok: true,
        latency_ms: Some(0.8),
        answers: vec!["10.96.0.1".to_owned()],
        expected: vec!["10.96.0.1".to_owned()],
        pending: Vec::new(),
        error: None,
    }
}
