//! DNS checks against an explicit server, compared with the API's truth.
//!
//! The resolver has no cache and one attempt per lookup: every round asks
//! the server again, so the result is the server's answer now, not ours from
//! a minute ago. Names are fully qualified so the pod's search list
//! (`ndots:5`) never turns one query into six.
//!
//! Two checks:
//! - A: the answer must be exactly the expected address (e.g.
//!   `kubernetes.default.svc.cluster.local.` = the API server ClusterIP);
//! - SRV of the agents' headless Service: the addresses behind the records
//!   must be the Running agent pods the API lists. Pods younger than the
//!   negative-cache TTL may legitimately be missing (CoreDNS caches the
//!   NXDOMAIN/NODATA it answered before they existed for about 30 s), so
//!   they do not count as missing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::future::join_all;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record};
use hickory_resolver::{Resolver, TokioResolver};
use netmatrix_api::{DnsResult, ErrorKind, ProbeError, RecordType};

use super::{io_error_kind, millis, os_message};
use crate::config::DnsName;

/// How long a new agent may be absent from the SRV answer: CoreDNS's default
/// negative-cache TTL (see DESIGN.md §3).
pub const NEGATIVE_CACHE_GRACE: Duration = Duration::from_secs(30);
/// At most this many SRV targets without glue records are resolved per round.
const MAX_TARGET_LOOKUPS: usize = 256;
/// At most this many names are listed in a wrong-answer message.
const MAX_LISTED: usize = 10;

/// An agent pod the API says is Running: what the SRV answer should list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedAgent {
    pub pod: String,
    pub ip: IpAddr,
    /// `status.startTime`, Unix milliseconds.
    pub started_unix_ms: Option<u64>,
}

/// What the SRV answer is compared with.
#[derive(Debug, Clone, Default)]
pub struct SrvExpectation {
    pub agents: Vec<ExpectedAgent>,
    /// Addresses of agents that left less than [`NEGATIVE_CACHE_GRACE`] ago:
    /// a cached positive answer may still list them.
    pub recently_departed: HashSet<IpAddr>,
}

/// Resolves against one server, no cache.
pub struct DnsProber {
    resolver: TokioResolver,
    server: SocketAddr,
    timeout: Duration,
}

impl DnsProber {
    pub fn new(server: SocketAddr, timeout: Duration) -> Result<Self, NetError> {
        let mut ns = NameServerConfig::udp_and_tcp(server.ip());
        for connection in &mut ns.connections {
            connection.port = server.port();
        }
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.cache_size = 0;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        let resolver = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()?;
        Ok(Self {
            resolver,
            server,
            timeout,
        })
    }

    /// A (or AAAA, when the expected address is IPv6) lookup of `name`.
    pub async fn check_a(&self, name: &DnsName) -> DnsResult {
        let started = Instant::now();
        let want_v6 = matches!(name.expected, Some(IpAddr::V6(_)));
        let answers = self.addresses(&name.name, want_v6).await;
        let latency = started.elapsed();
        let expected: Vec<String> = name.expected.iter().map(ToString::to_string).collect();
        let (answers, error) = match answers {
            Ok(found) => {
                let error = compare_a(&name.name, &found, name.expected);
                (found.iter().map(ToString::to_string).collect(), error)
            }
            Err(e) => (Vec::new(), Some(e)),
        };
        DnsResult {
            name: name.name.clone(),
            record: RecordType::A,
            ok: error.is_none(),
            latency_ms: Some(millis(latency)),
            answers,
            expected,
            pending: Vec::new(),
            error,
        }
    }

    /// SRV lookup of `name`, compared with `expectation` when the API's view
    /// is available (`None`: only require a non-empty answer).
    pub async fn check_srv(
        &self,
        name: &str,
        expectation: Option<&SrvExpectation>,
        now_unix_ms: u64,
    ) -> DnsResult {
        let started = Instant::now();
        let found = self.srv_endpoints(name).await;
        let latency = started.elapsed();
        let expected: Vec<String> = expectation
            .map(|e| {
                e.agents
                    .iter()
                    .map(|a| a.ip.to_string())
                    .collect::<BTreeSet<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .collect();
        let (answers, error) = match found {
            Ok(endpoints) => {
                let error = match expectation {
                    Some(e) => compare_srv(name, &endpoints.addresses, e, now_unix_ms),
                    None if endpoints.is_empty() => Some(ProbeError::new(
                        ErrorKind::WrongAnswer,
                        format!("{name}: no SRV records"),
                    )),
                    None => None,
                };
                (endpoints.describe(), error)
            }
            Err(e) => (Vec::new(), Some(e)),
        };
        DnsResult {
            name: name.to_owned(),
            record: RecordType::Srv,
            ok: error.is_none(),
            latency_ms: Some(millis(latency)),
            answers,
            expected,
            pending: Vec::new(),
            error,
        }
    }

    /// Addresses behind an SRV name (the discovery fallback at start-up).
    pub async fn srv_addresses(&self, name: &str) -> Result<BTreeSet<IpAddr>, ProbeError> {
        self.srv_endpoints(name).await.map(|e| e.addresses)
    }

    async fn addresses(&self, name: &str, v6: bool) -> Result<BTreeSet<IpAddr>, ProbeError> {
        let lookup = if v6 {
            self.bounded(self.resolver.ipv6_lookup(name)).await
        } else {
            self.bounded(self.resolver.ipv4_lookup(name)).await
        };
        match lookup {
            Ok(lookup) => Ok(lookup.answers().iter().filter_map(address_of).collect()),
            Err(e) => self.no_data_or_error(name, e).map(|()| BTreeSet::new()),
        }
    }

    async fn srv_endpoints(&self, name: &str) -> Result<SrvEndpoints, ProbeError> {
        let lookup = match self.bounded(self.resolver.srv_lookup(name)).await {
            Ok(lookup) => lookup,
            Err(e) => {
                return self
                    .no_data_or_error(name, e)
                    .map(|()| SrvEndpoints::default());
            }
        };
        // Glue from the additional section, as CoreDNS sends for headless Services.
        let mut glue: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for record in lookup.additionals() {
            if let Some(ip) = address_of(record) {
                glue.entry(record.name.to_string().to_ascii_lowercase())
                    .or_default()
                    .insert(ip);
            }
        }
        let mut endpoints = SrvEndpoints::default();
        let mut unresolved = Vec::new();
        for record in lookup.answers() {
            if let RData::SRV(srv) = &record.data {
                let target = srv.target.to_string();
                match glue.get(&target.to_ascii_lowercase()) {
                    Some(ips) => endpoints.addresses.extend(ips),
                    None => unresolved.push((target, srv.port)),
                }
            }
        }
        let lookups = unresolved
            .iter()
            .take(MAX_TARGET_LOOKUPS)
            .map(|(target, _)| self.addresses(target, false));
        let resolved = join_all(lookups).await;
        for ((target, port), result) in unresolved.iter().zip(resolved) {
            match result {
                Ok(ips) if !ips.is_empty() => endpoints.addresses.extend(ips),
                _ => endpoints.unresolved.push(format!("{target}:{port}")),
            }
        }
        endpoints.unresolved.extend(
            unresolved
                .iter()
                .skip(MAX_TARGET_LOOKUPS)
                .map(|(t, p)| format!("{t}:{p}")),
        );
        Ok(endpoints)
    }

    /// Bounds a lookup by our timeout plus a little: the resolver's own
    /// timeout covers one attempt, not connection setup and retransmits.
    async fn bounded<T>(
        &self,
        lookup: impl std::future::Future<Output = Result<T, NetError>>,
    ) -> Result<T, NetError> {
        match tokio::time::timeout(self.timeout + Duration::from_millis(100), lookup).await {
            Ok(r) => r,
            Err(_) => Err(NetError::Timeout),
        }
    }

    /// NODATA (the name exists, no record of this type) is an empty answer,
    /// judged by the comparison; everything else is a classified error.
    fn no_data_or_error(&self, name: &str, err: NetError) -> Result<(), ProbeError> {
        if let NetError::Dns(DnsError::NoRecordsFound(nr)) = &err
            && nr.response_code == ResponseCode::NoError
        {
            return Ok(());
        }
        Err(classify(&err, name, self.server))
    }
}

/// Addresses found behind SRV records.
#[derive(Debug, Default)]
struct SrvEndpoints {
    addresses: BTreeSet<IpAddr>,
    /// `target:port` of records whose target did not resolve.
    unresolved: Vec<String>,
}

impl SrvEndpoints {
    fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.unresolved.is_empty()
    }

    fn describe(&self) -> Vec<String> {
        self.addresses
            .iter()
            .map(ToString::to_string)
            .chain(self.unresolved.iter().cloned())
            .collect()
    }
}

fn address_of(record: &Record) -> Option<IpAddr> {
    match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// Maps a resolver error to a probe error kind.
pub(crate) fn classify(err: &NetError, name: &str, server: SocketAddr) -> ProbeError {
    let (kind, what) = match err {
        NetError::Dns(DnsError::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::NXDomain =>
        {
            (ErrorKind::Nxdomain, "NXDOMAIN".to_owned())
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            (ErrorKind::Servfail, "SERVFAIL".to_owned())
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => {
            (ErrorKind::Refused, "the server answered REFUSED".to_owned())
        }
        NetError::Timeout => (ErrorKind::Timeout, "no answer in time".to_owned()),
        NetError::Io(io) => (io_error_kind(io), os_message(io)),
        other => {
            let text = other.to_string();
            let lower = text.to_ascii_lowercase();
            let kind = if lower.contains("connection refused") {
                ErrorKind::Refused
            } else if lower.contains("timed out") || lower.contains("timeout") {
                ErrorKind::Timeout
            } else if lower.contains("unreachable") || lower.contains("no route to host") {
                ErrorKind::Unreachable
            } else {
                ErrorKind::Other
            };
            (kind, text)
        }
    };
    ProbeError::new(kind, format!("lookup {name} on {server}: {what}"))
}

/// An A answer is right when it is exactly the expected address.
fn compare_a(name: &str, found: &BTreeSet<IpAddr>, expected: Option<IpAddr>) -> Option<ProbeError> {
    let wrong = |detail: String| {
        Some(ProbeError::new(
            ErrorKind::WrongAnswer,
            format!("{name}: {detail}"),
        ))
    };
    match expected {
        _ if found.is_empty() => wrong("no address records (NODATA)".to_owned()),
        Some(ip) if found.len() != 1 || !found.contains(&ip) => {
            wrong(format!("expected {ip}, got {}", join(found.iter())))
        }
        _ => None,
    }
}

/// Compares the addresses behind the SRV records with the API's agents.
pub fn compare_srv(
    name: &str,
    found: &BTreeSet<IpAddr>,
    expectation: &SrvExpectation,
    now_unix_ms: u64,
) -> Option<ProbeError> {
    let grace_ms = u64::try_from(NEGATIVE_CACHE_GRACE.as_millis()).unwrap_or(u64::MAX);
    let missing: Vec<String> = expectation
        .agents
        .iter()
        .filter(|a| !found.contains(&a.ip))
        .filter(|a| {
            // Unknown start time: treat as old, the API would know if it were new.
            a.started_unix_ms
                .is_none_or(|t| now_unix_ms.saturating_sub(t) >= grace_ms)
        })
        .map(|a| format!("{} ({})", a.pod, a.ip))
        .collect();
    let known: HashSet<IpAddr> = expectation.agents.iter().map(|a| a.ip).collect();
    let unexpected: Vec<String> = found
        .iter()
        .filter(|ip| !known.contains(ip) && !expectation.recently_departed.contains(ip))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "missing {} running agent(s) older than {}s: {}",
            missing.len(),
            NEGATIVE_CACHE_GRACE.as_secs(),
            join(missing.iter())
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} record(s) for no running agent: {}",
            unexpected.len(),
            join(unexpected.iter())
        ));
    }
    Some(ProbeError::new(
        ErrorKind::WrongAnswer,
        format!("{name}: {}", parts.join("; ")),
    ))
}

/// Joins at most [`MAX_LISTED`] items, saying how many were left out.
fn join<T: ToString>(items: impl ExactSizeIterator<Item = T>) -> String {
    let total = items.len();
    let mut listed: Vec<String> = items.take(MAX_LISTED).map(|i| i.to_string()).collect();
    if total > MAX_LISTED {
        listed.push(format!("and {} more", total - MAX_LISTED));
    }
    listed.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000;

    fn agent(pod: &str, ip: &str, age_s: Option<u64>) -> ExpectedAgent {
        ExpectedAgent {
            pod: pod.into(),
            ip: ip.parse().unwrap(),
            started_unix_ms: age_s.map(|s| NOW - s * 1000),
        }
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn srv_matching_the_api_is_ok() {
        let e = SrvExpectation {
            agents: vec![
                agent("a", "10.244.1.2", Some(600)),
                agent("b", "10.244.2.2", None),
            ],
            ..Default::default()
        };
        assert_eq!(
            compare_srv("x.", &ips(&["10.244.1.2", "10.244.2.2"]), &e, NOW),
            None
        );
    }

    #[test]
    fn young_pods_missing_from_dns_are_not_a_failure() {
        let e = SrvExpectation {
            agents: vec![
                agent("a", "10.244.1.2", Some(600)),
                agent("new", "10.244.3.2", Some(5)),
            ],
            ..Default::default()
        };
        assert_eq!(compare_srv("x.", &ips(&["10.244.1.2"]), &e, NOW), None);
    }

    #[test]
    fn old_missing_pods_and_extra_records_are_named() {
        let e = SrvExpectation {
            agents: vec![
                agent("a", "10.244.1.2", Some(600)),
                agent("old", "10.244.3.2", Some(31)),
            ],
            recently_departed: ips(&["10.244.7.7"]).into_iter().collect(),
        };
        let err = compare_srv(
            "x.",
            &ips(&["10.244.1.2", "10.244.9.9", "10.244.7.7"]),
            &e,
            NOW,
        )
        .unwrap();
        assert_eq!(err.kind, ErrorKind::WrongAnswer);
        assert_eq!(
            err.message,
            "x.: missing 1 running agent(s) older than 30s: old (10.244.3.2); 1 record(s) for no running agent: 10.244.9.9"
        );
    }

    #[test]
    fn a_answers_must_be_exactly_the_expected_address() {
        let ip: IpAddr = "10.96.0.1".parse().unwrap();
        assert_eq!(compare_a("k.", &ips(&["10.96.0.1"]), Some(ip)), None);
        assert_eq!(compare_a("k.", &ips(&["10.96.0.9"]), None), None);
        let err = compare_a("k.", &ips(&["10.96.0.9"]), Some(ip)).unwrap();
        assert_eq!(err.kind, ErrorKind::WrongAnswer);
        assert_eq!(err.message, "k.: expected 10.96.0.1, got 10.96.0.9");
        assert!(compare_a("k.", &ips(&[]), None).is_some());
    }

    #[test]
    fn long_lists_are_cut() {
        let s = join((0..12).map(|i| i.to_string()).collect::<Vec<_>>().iter());
        assert!(s.ends_with("9, and 2 more"), "{s}");
    }

    #[test]
    fn resolver_errors_keep_their_kind() {
        let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let e = classify(&NetError::Timeout, "a.", server);
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert_eq!(e.message, "lookup a. on 127.0.0.1:53: no answer in time");
        let e = classify(
            &NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)),
            "a.",
            server,
        );
        assert_eq!(e.kind, ErrorKind::Servfail);
    }

    /// A one-shot loopback UDP DNS server: answers the first query with the
    /// given response code and no records.
    async fn udp_server(rcode: u8) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                if n < 12 {
                    continue;
                }
                let mut answer = buf[..n].to_vec();
                answer[2] |= 0x80; // QR: response
                answer[3] = (answer[3] & 0xf0) | rcode;
                let _ = socket.send_to(&answer, peer).await;
            }
        });
        addr
    }

    fn name(n: &str) -> DnsName {
        DnsName {
            name: n.into(),
            expected: Some("10.96.0.1".parse().unwrap()),
        }
    }

    #[tokio::test]
    async fn nxdomain_and_servfail_from_a_loopback_server() {
        let p = DnsProber::new(udp_server(3).await, Duration::from_secs(1)).unwrap();
        let r = p.check_a(&name("nope.cluster.local.")).await;
        assert!(!r.ok);
        assert_eq!(r.error.unwrap().kind, ErrorKind::Nxdomain);

        let p = DnsProber::new(udp_server(2).await, Duration::from_secs(1)).unwrap();
        let r = p.check_srv("_x._tcp.svc.cluster.local.", None, NOW).await;
        assert_eq!(
            r.error.unwrap().kind,
            ErrorKind::Servfail,
            "{:?}",
            r.answers
        );
    }

    #[tokio::test]
    async fn silent_server_times_out_and_closed_port_is_refused() {
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let p = DnsProber::new(silent.local_addr().unwrap(), Duration::from_millis(300)).unwrap();
        let r = p
            .check_a(&name("kubernetes.default.svc.cluster.local."))
            .await;
        assert_eq!(r.error.unwrap().kind, ErrorKind::Timeout);

        let closed = silent.local_addr().unwrap();
        drop(silent);
        let p = DnsProber::new(closed, Duration::from_millis(500)).unwrap();
        let r = p
            .check_a(&name("kubernetes.default.svc.cluster.local."))
            .await;
        let e = r.error.unwrap();
        assert!(
            matches!(e.kind, ErrorKind::Refused | ErrorKind::Timeout),
            "{e}"
        );
    }
}
