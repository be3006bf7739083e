//! Probing rounds: one round ([`Prober::round`]) and the loop
//! ([`RoundLoop`]). Who to probe is [`crate::discovery`]'s, what DNS should
//! answer [`crate::probes::dns`]'s.
//!
//! A round runs every probe concurrently — ICMP to each peer, the API server,
//! each ClusterIP, each DNS name and the SRV record — and folds the results
//! into one [`Report`]. Every probe starts after its own random delay of up
//! to a tenth of the interval, so that thousands of agents started by one
//! DaemonSet rollout do not fire in lockstep at the same targets.
//!
//! The loop ([`RoundLoop::run`]) ticks every `--interval` no matter what:
//! an unreachable API server, DNS server or aggregator is a result to
//! report, never a reason to stop.
//!
//! Churn is not a failure: a peer that left during the round (deleted,
//! terminating, new address, node cordoned) is dropped from the report
//! before it is sent ([`discovery::drop_departed_peers`]), and the DNS
//! comparison allows for DNS lagging the API ([`AgentHistory`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use netmatrix_api::sampling::{self, PeerSampling};
use netmatrix_api::{
    AgentIdentity, DnsResult, NetworkMode, PeerResult, PeerSource, Report, ServiceResult,
};
use netmatrix_runtime::now_unix_ms;
use tokio::sync::watch;

use crate::discovery::{self, Discovery, NodeSkip, PeerView, PodInfo};
use crate::http::StatusBoard;
use crate::metrics::{Metrics, Probe};
use crate::probes::apiserver::ApiserverProbe;
use crate::probes::dns::{AgentHistory, DnsName, DnsProber, SrvExpectation};
use crate::probes::icmp::IcmpProber;
use crate::probes::tcp::ClusterIpTarget;
use crate::probes::udp::{PeerPorts, TransportProber};
use crate::probes::{dns, tcp};

/// Everything a round probes with.
pub struct Prober {
    pub identity: AgentIdentity,
    pub interval: Duration,
    pub icmp: IcmpProber,
    /// TCP and UDP to the peers' ports; `None`: ICMP only.
    pub transport: Option<(TransportProber, PeerPorts)>,
    pub apiserver: ApiserverProbe,
    pub clusterips: Vec<ClusterIpTarget>,
    pub tcp_timeout: Duration,
    pub dns: DnsProber,
    pub dns_names: Vec<DnsName>,
    pub srv_name: Option<String>,
    pub metrics: Arc<Metrics>,
}

impl Prober {
    /// Runs one round against `view`'s peers. `expectation` is what the SRV
    /// answer is compared with (`None`: no API view of the agents);
    /// `answered` are the peers that answered last round (they are preferred
    /// for the large echoes).
    pub async fn round(
        &self,
        round: u64,
        view: &PeerView,
        expectation: Option<SrvExpectation>,
        answered: &HashSet<IpAddr>,
    ) -> Report {
        let started_unix_ms = now_unix_ms();
        let max_jitter = self.interval / 10;

        let mtu_probed = mtu_probed_peers(&view.peers, answered);
        let pods_on = pods_per_node(&view.peers);
        let peers = join_all(view.peers.iter().map(|peer| {
            let large = mtu_probed.contains(&peer.ip);
            let count = echoes_per_pod(self.icmp.count(), pods_on.get(peer.node.as_str()));
            self.timed(Probe::Icmp, max_jitter, async move {
                // TCP and UDP to the same pod per node as the large echoes:
                // a protocol filter is the path's, and each probe costs a
                // socket (per pod, they tripled the round's CPU at 2,500
                // peers).
                let transport = self
                    .transport
                    .as_ref()
                    .filter(|_| large)
                    .map(|(prober, ports)| {
                        let port = ports.of(peer.component.as_deref());
                        (prober, std::net::SocketAddr::new(peer.ip, port))
                    });
                // Small and large echoes together: both see the same path;
                // TCP and UDP beside them.
                let (icmp, mut mtu, tcp, udp) = tokio::join!(
                    self.icmp.echo_n(peer.ip, count),
                    async {
                        if large {
                            self.icmp.echo_large(peer.ip).await
                        } else {
                            None
                        }
                    },
                    async {
                        match transport {
                            Some((prober, addr)) => Some(prober.connect(addr).await),
                            None => None,
                        }
                    },
                    async {
                        match transport {
                            Some((prober, addr)) => Some(prober.echo(addr, count, None).await),
                            None => None,
                        }
                    }
                );
                // ICMP filtered where UDP passes: the path's MTU is probed
                // with large Don't-Fragment UDP datagrams instead.
                // (TCP and UDP go only to the pod that gets large echoes.)
                if let (Some((prober, addr)), Some(udp), Some(bytes)) =
                    (transport, udp.as_ref(), self.icmp.mtu_probe_bytes())
                    && icmp.received == 0
                    && udp.received > 0
                {
                    mtu = Some(prober.echo(addr, 1, Some(bytes)).await);
                }
                let error = icmp.error.as_ref().map(|e| e.kind);
                let result = PeerResult {
                    node: peer.node.clone(),
                    pod: peer.pod.clone(),
                    ip: peer.ip,
                    icmp,
                    mtu,
                    tcp,
                    udp,
                    port: transport.map(|(_, addr)| addr.port()),
                };
                (result, error)
            })
        }));

        let apiserver = self.timed(Probe::Apiserver, max_jitter, async {
            service_outcome(self.apiserver.check().await)
        });
        let clusterips = join_all(self.clusterips.iter().map(|target| {
            self.timed(Probe::Clusterip, max_jitter, async move {
                service_outcome(
                    tcp::check_clusterip(&target.name, target.addr, self.tcp_timeout).await,
                )
            })
        }));

        let a_lookups = join_all(self.dns_names.iter().map(|name| {
            self.timed(Probe::Dns, max_jitter, async move {
                dns_outcome(self.dns.check_a(name, now_unix_ms()).await)
            })
        }));
        let srv_lookup = async {
            match &self.srv_name {
                Some(name) => Some(
                    self.timed(Probe::Dns, max_jitter, async {
                        dns_outcome(
                            self.dns
                                .check_srv(name, expectation.as_ref(), now_unix_ms())
                                .await,
                        )
                    })
                    .await,
                ),
                None => None,
            }
        };

        // The host agent sits in the node's own network namespace: it reads
        // the node's network facts beside its probes.
        let facts = async {
            if self.identity.network != NetworkMode::Host {
                return None;
            }
            match tokio::task::spawn_blocking(crate::facts::read).await {
                Ok(Ok(facts)) => Some(facts),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot read the node's network facts");
                    None
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the node's network facts failed");
                    None
                }
            }
        };

        let (peers, apiserver, clusterips, a_lookups, srv, facts) =
            tokio::join!(peers, apiserver, clusterips, a_lookups, srv_lookup, facts);

        let mut services = vec![apiserver];
        services.extend(clusterips);
        let mut dns = a_lookups;
        dns.extend(srv);
        let mut report = Report {
            agent: self.identity.clone(),
            round,
            started_unix_ms,
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            peers,
            services,
            dns,
            peer_source: view.source,
            mtu_probe_bytes: self.icmp.mtu_probe_bytes(),
            dns_server: Some(self.dns.server().to_string()),
            sampled: view.sampled,
            facts_digest: facts.as_ref().map(netmatrix_api::facts::digest),
            facts,
        };
        // OS and TLS errors can be long; the aggregator keeps 300 characters.
        report.truncate_messages();
        report
    }

    /// Waits a random jitter, runs `probe`, records its duration and failure.
    async fn timed<T>(
        &self,
        probe: Probe,
        max_jitter: Duration,
        run: impl Future<Output = (T, Option<netmatrix_api::ErrorKind>)>,
    ) -> T {
        tokio::time::sleep(jitter(max_jitter)).await;
        let started = Instant::now();
        let (result, error) = run.await;
        self.metrics.observe_probe(probe, started.elapsed(), error);
        result
    }
}

fn service_outcome(r: ServiceResult) -> (ServiceResult, Option<netmatrix_api::ErrorKind>) {
    let error = r.error.as_ref().map(|e| e.kind);
    (r, error)
}

fn dns_outcome(r: DnsResult) -> (DnsResult, Option<netmatrix_api::ErrorKind>) {
    let error = r.error.as_ref().map(|e| e.kind);
    (r, error)
}

/// A uniformly random delay in `[0, max]`.
fn jitter(max: Duration) -> Duration {
    let max_us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    if max_us == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(rand::random_range(0..=max_us))
}

/// The forever loop: peers, round, publish.
pub struct RoundLoop {
    pub prober: Prober,
    pub discovery: Arc<Discovery>,
    pub status: Arc<StatusBoard>,
    pub reports: watch::Sender<Option<Arc<Report>>>,
    /// Which remote nodes to probe in a large cluster.
    pub sampling: PeerSampling,
}

/// The peers that get the large (MTU) echoes: one pod per node, since the
/// MTU is a property of the path between two nodes, not of a pod (at 50 pods
/// a node this saves 98 % of the large echoes). The pod is one that answered
/// small echoes last round when there is one: only such a pod speaks for the
/// MTU (the aggregator ignores large echoes to a pod that answers nothing).
/// Peers without a node name (SRV fallback) all get them.
fn mtu_probed_peers(peers: &[PodInfo], answered: &HashSet<IpAddr>) -> BTreeSet<IpAddr> {
    let mut chosen: HashMap<&str, IpAddr> = HashMap::new();
    let mut out = BTreeSet::new();
    for p in peers {
        if p.node.is_empty() {
            out.insert(p.ip);
            continue;
        }
        chosen
            .entry(p.node.as_str())
            .and_modify(|ip| {
                if !answered.contains(ip) && answered.contains(&p.ip) {
                    *ip = p.ip;
                }
            })
            .or_insert(p.ip);
    }
    out.extend(chosen.into_values());
    out
}

fn pods_per_node(peers: &[PodInfo]) -> HashMap<&str, u16> {
    let mut pods: HashMap<&str, u16> = HashMap::new();
    for p in peers.iter().filter(|p| !p.node.is_empty()) {
        let n = pods.entry(p.node.as_str()).or_default();
        *n = n.saturating_add(1);
    }
    pods
}

/// Small echoes per pod: `--icmp-count`, or one when the pod's node has at
/// least that many pods to probe. A cell (all pods of a node) then still
/// gets at least `--icmp-count` echoes a round, while a node running 50
/// probe targets does not cost 150 echoes: at 2,500 peers that is a third
/// of the echoes.
fn echoes_per_pod(count: u16, pods_on_node: Option<&u16>) -> u16 {
    match pods_on_node {
        Some(&pods) if pods >= count => 1,
        _ => count,
    }
}

impl RoundLoop {
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.prober.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut agents = AgentHistory::default();
        let mut last_source = None;
        let mut last_skipped = BTreeMap::new();
        // Peers that answered small echoes last round (large echoes go to them).
        let mut answered = HashSet::new();
        for round in 1u64.. {
            ticker.tick().await;
            self.status.heartbeat();
            let srv =
                (self.prober.srv_name.as_deref()).map(|name| self.prober.dns.srv_addresses(name));
            let list_at_start = self.discovery.list_etag();
            let mut view = self.discovery.view_or_srv(srv).await;
            let interval_ms = u64::try_from(self.prober.interval.as_millis()).unwrap_or(u64::MAX);
            let epoch = sampling::epoch(now_unix_ms(), interval_ms, sampling::ROTATE_EVERY_ROUNDS);
            discovery::sample::apply(&mut view, &self.prober.identity.node, &self.sampling, epoch);
            if last_source != Some(view.source) {
                tracing::info!(source = ?view.source, peers = view.peers.len(), "peer source");
                last_source = Some(view.source);
            }
            if last_skipped != view.skipped_nodes {
                log_skipped_nodes(&view.skipped_nodes);
                last_skipped = view.skipped_nodes.clone();
            }
            let expectation = view
                .agents
                .as_ref()
                .map(|truth| agents.update(truth, now_unix_ms()));
            self.prober
                .icmp
                .retain_targets(&view.peers.iter().map(|p| p.ip).collect());

            let mut report = self
                .prober
                .round(round, &view, expectation, &answered)
                .await;
            answered = report
                .peers
                .iter()
                .filter(|p| p.icmp.received > 0)
                .map(|p| p.ip)
                .collect();
            // Only the API's view can say a peer left; results of a round
            // run on the SRV fallback (no pod names) are all kept. A
            // pinglist that did not change during the round dropped nobody
            // (and its rotation must not: the epoch may have moved on).
            let list_changed =
                list_at_start.is_none() || self.discovery.list_etag() != list_at_start;
            if view.source != PeerSource::Dns
                && list_changed
                && let Some(now) = self.discovery.view()
            {
                let dropped = discovery::drop_departed_peers(&mut report, &now.peers);
                if dropped > 0 {
                    tracing::debug!(
                        dropped,
                        "results of peers that left during the round dropped"
                    );
                }
            }
            // Metrics count the full DNS lists; the report carries capped ones.
            self.prober.metrics.observe_round(&report);
            report.dns.iter_mut().for_each(dns::cap_listed);
            let report = Arc::new(report);
            log_summary(&report);
            self.status.set_report(report.clone());
            // No receiver (reporting disabled) is fine.
            let _ = self.reports.send(Some(report));
        }
    }
}

fn log_skipped_nodes(skipped: &BTreeMap<String, NodeSkip>) {
    if skipped.is_empty() {
        tracing::info!("probing the pods of every node");
    } else {
        let nodes: Vec<String> = skipped
            .iter()
            .map(|(node, why)| format!("{node} ({})", why.as_str()))
            .collect();
        tracing::info!(?nodes, "not probing the pods of cordoned or NotReady nodes");
    }
}

fn log_summary(report: &Report) {
    let failing_peers = report.peers.iter().filter(|p| p.icmp.received == 0).count();
    let failing_services: Vec<&str> = report
        .services
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.name.as_str())
        .collect();
    let failing_dns: Vec<&str> = report
        .dns
        .iter()
        .filter(|d| !d.ok)
        .map(|d| d.name.as_str())
        .collect();
    if failing_peers == 0 && failing_services.is_empty() && failing_dns.is_empty() {
        tracing::debug!(round = report.round, peers = report.peers.len(), "round ok");
    } else {
        tracing::info!(
            round = report.round,
            peers = report.peers.len(),
            failing_peers,
            ?failing_services,
            ?failing_dns,
            "round finished with failures"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::AgentTruth;
    use crate::probes::apiserver::{CaSource, Credentials};
    use netmatrix_api::{ErrorKind, ServiceKind};
    use netmatrix_runtime::k8s::targets::fixtures::info;
    use tokio::net::TcpListener;

    #[test]
    fn busy_nodes_get_one_echo_per_pod_and_every_cell_at_least_the_count() {
        assert_eq!(echoes_per_pod(3, Some(&2)), 3, "2 pods: 6 echoes");
        assert_eq!(echoes_per_pod(3, Some(&3)), 1, "3 pods: 3 echoes");
        assert_eq!(echoes_per_pod(3, Some(&50)), 1);
        assert_eq!(echoes_per_pod(3, None), 3, "no node name (SRV fallback)");
        assert_eq!(echoes_per_pod(1, Some(&1)), 1);
        let peers = [
            info("10.0.0.1"),
            info("10.0.0.2"),
            PodInfo {
                node: String::new(),
                ..info("10.0.0.3")
            },
        ];
        let pods = pods_per_node(&peers);
        assert_eq!(pods.get("n1"), Some(&2));
        assert_eq!(pods.len(), 1);
    }

    #[test]
    fn large_echoes_go_to_one_pod_per_node() {
        let on = |node: &str, ip: &str| PodInfo {
            node: node.into(),
            ..info(ip)
        };
        let peers = [
            on("n1", "10.0.1.2"),
            on("n1", "10.0.1.3"),
            on("n2", "10.0.2.2"),
            on("", "10.0.9.9"),
            on("", "10.0.9.8"),
        ];
        let probed = |answered: &[&str]| -> Vec<String> {
            let answered = answered.iter().map(|a| a.parse().unwrap()).collect();
            mtu_probed_peers(&peers, &answered)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            probed(&[]),
            ["10.0.1.2", "10.0.2.2", "10.0.9.8", "10.0.9.9"]
        );
        assert_eq!(
            probed(&["10.0.1.3", "10.0.2.2"]),
            ["10.0.1.3", "10.0.2.2", "10.0.9.8", "10.0.9.9"],
            "a pod that answered last round is preferred"
        );
    }

    #[test]
    fn jitter_stays_in_bounds() {
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(10)) <= Duration::from_millis(10));
        }
    }

    /// A whole round against loopback only: one peer (127.0.0.1), a
    /// ClusterIP that listens, an API server port that refuses, and a DNS
    /// server that never answers.
    #[tokio::test]
    async fn a_round_reports_every_probe() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let silent_dns = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let interval = Duration::from_secs(1);
        let timeout = Duration::from_millis(300);
        // The peer's port: TCP on `listener`, the UDP echo on the same number.
        let port = listener.local_addr().unwrap().port();
        let echo = netmatrix_runtime::udp_echo::bind(
            ("127.0.0.1".parse::<IpAddr>().unwrap(), port).into(),
        )
        .await
        .unwrap();
        tokio::spawn(netmatrix_runtime::udp_echo::serve(echo));
        let prober = Prober {
            identity: netmatrix_api::fixtures::identity("n1", "agent-1", "10.244.1.2"),
            interval,
            icmp: IcmpProber::new(
                2,
                timeout,
                interval,
                Some(crate::probes::icmp::MtuProbe {
                    bytes: 1450,
                    count: 2,
                }),
            )
            .unwrap(),
            transport: Some((
                TransportProber::new(timeout, Duration::from_millis(5)),
                PeerPorts {
                    agent: port,
                    companion: port,
                },
            )),
            apiserver: ApiserverProbe::new(
                refused,
                CaSource::Unverified,
                Credentials::None,
                timeout,
            )
            .unwrap(),
            clusterips: vec![ClusterIpTarget {
                name: "aggregator".into(),
                addr: listener.local_addr().unwrap(),
            }],
            tcp_timeout: timeout,
            dns: DnsProber::new(
                silent_dns.local_addr().unwrap(),
                timeout,
                crate::probes::dns::DEFAULT_NEGATIVE_TTL,
            )
            .unwrap(),
            dns_names: vec![DnsName {
                name: "kubernetes.default.svc.cluster.local.".into(),
                expected: None,
            }],
            srv_name: Some("_metrics._tcp.netmatrix-agents.netmatrix.svc.cluster.local.".into()),
            metrics: Arc::new(Metrics::new().unwrap()),
        };
        let view = PeerView {
            peers: vec![info("127.0.0.1")],
            agents: Some(AgentTruth::complete(vec![info("127.0.0.1")])),
            source: PeerSource::Api,
            skipped_nodes: BTreeMap::new(),
            sampled: None,
            decided_upstream: false,
        };
        let expectation = AgentHistory::default().update(
            &AgentTruth::complete(vec![info("127.0.0.1")]),
            now_unix_ms(),
        );
        let report = prober
            .round(3, &view, Some(expectation), &HashSet::new())
            .await;
        assert_eq!(report.round, 3);
        assert_eq!(report.interval_ms, 1000);
        assert_eq!(report.mtu_probe_bytes, Some(1450));
        assert_eq!(report.peers.len(), 1);
        assert_eq!(report.peers[0].icmp.received, 2, "{:?}", report.peers[0]);
        let mtu = report.peers[0].mtu.as_ref().unwrap();
        assert_eq!((mtu.sent, mtu.received), (2, 2), "{mtu:?}");
        let tcp = report.peers[0].tcp.as_ref().unwrap();
        assert_eq!((tcp.sent, tcp.received), (1, 1), "{tcp:?}");
        let udp = report.peers[0].udp.as_ref().unwrap();
        assert_eq!((udp.sent, udp.received), (2, 2), "{udp:?}");
        assert_eq!(report.services.len(), 2);
        assert_eq!(report.services[0].kind, ServiceKind::Apiserver);
        assert_eq!(
            report.services[0].error.as_ref().unwrap().kind,
            ErrorKind::Refused
        );
        assert!(report.services[1].ok);
        assert_eq!(report.dns.len(), 2);
        assert!(
            report
                .dns
                .iter()
                .all(|d| d.error.as_ref().unwrap().kind == ErrorKind::Timeout)
        );
        let text = prober.metrics.encode().unwrap();
        assert!(
            text.contains("probe_failures_total{error=\"timeout\",probe=\"dns\"} 2"),
            "{text}"
        );
    }
}
