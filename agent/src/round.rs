//! Probing rounds.
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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use netmatrix_api::{AgentIdentity, DnsResult, PeerResult, PeerSource, Report, ServiceResult};
use tokio::sync::watch;

use crate::config::{ClusterIpTarget, DnsName};
use crate::discovery::{self, Discovery, PeerView, PodInfo};
use crate::http::StatusBoard;
use crate::metrics::{Metrics, Probe};
use crate::probes::apiserver::ApiserverProbe;
use crate::probes::dns::{DnsProber, ExpectedAgent, NEGATIVE_CACHE_GRACE, SrvExpectation};
use crate::probes::icmp::IcmpProber;
use crate::probes::tcp;
use crate::report::unix_ms_now;

/// Everything a round probes with.
pub struct Prober {
    pub identity: AgentIdentity,
    pub interval: Duration,
    pub icmp: IcmpProber,
    pub apiserver: ApiserverProbe,
    pub clusterips: Vec<ClusterIpTarget>,
    pub tcp_timeout: Duration,
    pub dns: DnsProber,
    pub dns_names: Vec<DnsName>,
    pub srv_name: Option<String>,
    pub metrics: Arc<Metrics>,
}

impl Prober {
    /// Runs one round against `view`'s peers. `recently_departed` are agent
    /// IPs a cached SRV answer may still list.
    pub async fn round(
        &self,
        round: u64,
        view: &PeerView,
        recently_departed: HashSet<IpAddr>,
    ) -> Report {
        let started_unix_ms = unix_ms_now();
        let max_jitter = self.interval / 10;

        let peers = join_all(view.peers.iter().map(|peer| {
            self.timed(Probe::Icmp, max_jitter, async move {
                let icmp = self.icmp.echo(peer.ip).await;
                let error = icmp.error.as_ref().map(|e| e.kind);
                let result = PeerResult {
                    node: peer.node.clone(),
                    pod: peer.pod.clone(),
                    ip: peer.ip,
                    icmp,
                    mtu: None,
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
                dns_outcome(self.dns.check_a(name).await)
            })
        }));
        let expectation = view.agents.as_ref().map(|agents| SrvExpectation {
            agents: agents.iter().map(expected_agent).collect(),
            recently_departed,
        });
        let srv_lookup = async {
            match &self.srv_name {
                Some(name) => Some(
                    self.timed(Probe::Dns, max_jitter, async {
                        dns_outcome(
                            self.dns
                                .check_srv(name, expectation.as_ref(), unix_ms_now())
                                .await,
                        )
                    })
                    .await,
                ),
                None => None,
            }
        };

        let (peers, apiserver, clusterips, a_lookups, srv) =
            tokio::join!(peers, apiserver, clusterips, a_lookups, srv_lookup);

        let mut services = vec![apiserver];
        services.extend(clusterips);
        let mut dns = a_lookups;
        dns.extend(srv);
        Report {
            agent: self.identity.clone(),
            round,
            started_unix_ms,
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            peers,
            services,
            dns,
            peer_source: view.source,
            mtu_probe_bytes: None,
        }
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

fn expected_agent(p: &PodInfo) -> ExpectedAgent {
    ExpectedAgent {
        pod: p.pod.clone(),
        ip: p.ip,
        started_unix_ms: p.started_unix_ms,
    }
}

/// A uniformly random delay in `[0, max]`.
fn jitter(max: Duration) -> Duration {
    let max_us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    if max_us == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(rand::random_range(0..=max_us))
}

/// Remembers agents that left recently: a cached SRV answer may still list
/// them for up to [`NEGATIVE_CACHE_GRACE`], which is not DNS being wrong.
#[derive(Debug, Default)]
pub struct DepartedAgents {
    current: HashSet<IpAddr>,
    departed: HashMap<IpAddr, Instant>,
}

impl DepartedAgents {
    /// Records this round's agents; returns the IPs that left within the grace.
    pub fn update(&mut self, agents: &[PodInfo], now: Instant) -> HashSet<IpAddr> {
        let next: HashSet<IpAddr> = agents.iter().map(|a| a.ip).collect();
        for gone in self.current.difference(&next) {
            self.departed.insert(*gone, now);
        }
        self.departed.retain(|ip, left| {
            !next.contains(ip) && now.duration_since(*left) < NEGATIVE_CACHE_GRACE
        });
        self.current = next;
        self.departed.keys().copied().collect()
    }
}

/// The forever loop: peers, round, publish.
pub struct RoundLoop {
    pub prober: Prober,
    pub discovery: Arc<Discovery>,
    pub status: Arc<StatusBoard>,
    pub reports: watch::Sender<Option<Arc<Report>>>,
}

impl RoundLoop {
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.prober.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut departed = DepartedAgents::default();
        let mut last_source = None;
        for round in 1u64.. {
            ticker.tick().await;
            self.status.heartbeat();
            let view = self.peer_view().await;
            if last_source != Some(view.source) {
                tracing::info!(source = ?view.source, peers = view.peers.len(), "peer source");
                last_source = Some(view.source);
            }
            let recently_departed = view
                .agents
                .as_deref()
                .map(|agents| departed.update(agents, Instant::now()))
                .unwrap_or_default();
            self.prober
                .icmp
                .retain_targets(&view.peers.iter().map(|p| p.ip).collect());

            let report = Arc::new(self.prober.round(round, &view, recently_departed).await);
            self.prober.metrics.observe_round(&report);
            log_summary(&report);
            self.status.set_report(report.clone());
            // No receiver (reporting disabled) is fine.
            let _ = self.reports.send(Some(report));
        }
    }

    /// Peers from the watch; before it has synced, from the agents' SRV
    /// record; with neither, nothing (and say so).
    async fn peer_view(&self) -> PeerView {
        if let Some(view) = self.discovery.view() {
            return view;
        }
        if let Some(name) = &self.prober.srv_name {
            match self.prober.dns.srv_addresses(name).await {
                Ok(addresses) => {
                    return discovery::fallback_from_srv(&addresses, &self.prober.identity);
                }
                Err(error) => {
                    tracing::warn!(%error, "no pod list from the API yet, and the SRV fallback failed")
                }
            }
        }
        PeerView {
            peers: Vec::new(),
            agents: None,
            source: PeerSource::LastKnown,
        }
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
    use crate::probes::apiserver::{CaSource, Credentials};
    use netmatrix_api::{ErrorKind, NetworkMode, ServiceKind};
    use tokio::net::TcpListener;

    fn info(ip: &str) -> PodInfo {
        PodInfo {
            node: "n1".into(),
            pod: format!("agent-{ip}"),
            ip: ip.parse().unwrap(),
            component: Some("agent".into()),
            started_unix_ms: None,
        }
    }

    #[test]
    fn departed_agents_are_tolerated_for_the_grace_period() {
        let mut d = DepartedAgents::default();
        let t0 = Instant::now();
        assert!(
            d.update(&[info("10.0.0.1"), info("10.0.0.2")], t0)
                .is_empty()
        );
        let gone = d.update(&[info("10.0.0.1")], t0 + Duration::from_secs(1));
        assert_eq!(gone, HashSet::from(["10.0.0.2".parse().unwrap()]));
        assert!(
            d.update(&[info("10.0.0.1")], t0 + Duration::from_secs(40))
                .is_empty()
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
        let prober = Prober {
            identity: AgentIdentity {
                node: "n1".into(),
                pod: "agent-1".into(),
                pod_ip: "10.244.1.2".parse().unwrap(),
                network: NetworkMode::Pod,
            },
            interval,
            icmp: IcmpProber::new(2, timeout, interval).unwrap(),
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
            dns: DnsProber::new(silent_dns.local_addr().unwrap(), timeout).unwrap(),
            dns_names: vec![DnsName {
                name: "kubernetes.default.svc.cluster.local.".into(),
                expected: None,
            }],
            srv_name: Some("_metrics._tcp.netmatrix-agents.netmatrix.svc.cluster.local.".into()),
            metrics: Arc::new(Metrics::new().unwrap()),
        };
        let view = PeerView {
            peers: vec![info("127.0.0.1")],
            agents: Some(vec![info("127.0.0.1")]),
            source: PeerSource::Api,
        };
        let report = prober.round(3, &view, HashSet::new()).await;
        assert_eq!(report.round, 3);
        assert_eq!(report.interval_ms, 1000);
        assert_eq!(report.peers.len(), 1);
        assert_eq!(report.peers[0].icmp.received, 2, "{:?}", report.peers[0]);
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
