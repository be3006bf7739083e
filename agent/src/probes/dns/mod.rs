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
//!   must be the Ready agent pods the API lists.
//!
//! DNS lags the API by design, so a disagreement is only a failure once it
//! outlasts the negative-cache TTL ([`DnsProber::negative_ttl`]):
//! - an expected record that is missing (from the answer, or because the
//!   answer is NXDOMAIN/NODATA) while it is younger than the TTL goes to
//!   `pending` and the check stays ok: a resolver may still serve the
//!   negative answer it cached before the record existed. "Younger" counts
//!   from when the record should exist: for an agent, since it became Ready
//!   (per the API, or, for agents that appeared after this agent started,
//!   since this agent first saw it); for an A name, since this agent first
//!   checked it;
//! - missing for longer, or an address the API does not have listed for
//!   longer than the TTL (counted from the agent's departure when known, else
//!   from when it was first answered), is `ok: false` with
//!   [`ErrorKind::WrongAnswer`], which the aggregator names `dns-stale`. That
//!   includes an NXDOMAIN/NODATA for a name the API says has records: the
//!   name exists, DNS is behind;
//! - every other failure keeps its kind (timeout, SERVFAIL, REFUSED,
//!   unreachable, and NXDOMAIN for a name nothing says should exist), which
//!   the aggregator names `dns-failure`.
//!
//! The TTL is `--dns-negative-ttl`, raised to the SOA's negative TTL (RFC
//! 2308: the SOA minimum, capped by the SOA record's own TTL) when a negative
//! answer for the name carried one: the flag stands for caches in front of
//! the server (CoreDNS `cache`, node-local DNS), the SOA for what the zone
//! allows; a record is only late once both may have expired.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
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

mod expectation;

pub use expectation::{
    AgentHistory, ExpectedAgent, History, SrvExpectation, Verdict, compare_a, compare_srv,
};

/// Default of `--dns-negative-ttl`: CoreDNS's negative-cache TTL (see
/// `docs/architecture.md`).
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// An SOA cannot make the agent wait longer than this for a record (CoreDNS
/// `cache` caps denials at 30 minutes too): a zone with a day-long minimum
/// must not silence the check for a day. The aggregator keeps departed
/// agents in the pinglists' `srv.gone` as long (the same constant).
pub const MAX_SOA_NEGATIVE_TTL: Duration =
    Duration::from_millis(netmatrix_api::DNS_MAX_NEGATIVE_TTL_MS);
/// At most this many SRV targets without glue records are resolved per round.
const MAX_TARGET_LOOKUPS: usize = 256;
/// At most this many names are listed in a wrong-answer message, and
/// records per list of a result.
const MAX_LISTED: usize = 10;

/// A name resolved with an A/AAAA lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsName {
    /// Fully qualified (trailing dot), so that search lists never apply.
    pub name: String,
    /// The only address the answer may contain; `None`: any answer is fine.
    pub expected: Option<IpAddr>,
}

/// A negative answer: the name does not exist (NXDOMAIN), or has no record
/// of the type asked (NODATA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegativeAnswer {
    pub nxdomain: bool,
    /// The negative TTL of the SOA the answer carried, if any.
    pub soa_ttl: Option<Duration>,
}

impl NegativeAnswer {
    fn describe(self) -> &'static str {
        if self.nxdomain { "NXDOMAIN" } else { "NODATA" }
    }
}

/// What a lookup found, short of an error.
#[derive(Debug, Default)]
struct Found<T> {
    records: T,
    negative: Option<NegativeAnswer>,
}

/// Resolves against one server, no cache.
pub struct DnsProber {
    resolver: TokioResolver,
    server: SocketAddr,
    timeout: Duration,
    negative_ttl: Duration,
    history: Mutex<HashMap<(String, RecordType), History>>,
}

impl DnsProber {
    /// `negative_ttl`: how long DNS may lag the API (`--dns-negative-ttl`).
    pub fn new(
        server: SocketAddr,
        timeout: Duration,
        negative_ttl: Duration,
    ) -> Result<Self, NetError> {
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
            negative_ttl,
            history: Mutex::new(HashMap::new()),
        })
    }

    /// The least time DNS may lag the API (`--dns-negative-ttl`).
    /// The server asked.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn negative_ttl(&self) -> Duration {
        self.negative_ttl
    }

    /// A (or AAAA, when the expected address is IPv6) lookup of `name`.
    pub async fn check_a(&self, name: &DnsName, now_unix_ms: u64) -> DnsResult {
        let want_v6 = matches!(name.expected, Some(IpAddr::V6(_)));
        let check = Check {
            name: &name.name,
            record: RecordType::A,
            what: "address",
            expected: name.expected.iter().map(ToString::to_string).collect(),
        };
        let judge = name.expected.map(|ip| {
            move |found: &BTreeSet<IpAddr>, negative, history: &mut History, ttl| {
                let answers = found.iter().map(ToString::to_string).collect();
                compare_a(
                    &name.name,
                    ip,
                    &answers,
                    negative,
                    ttl,
                    history,
                    now_unix_ms,
                )
            }
        });
        let lookup = self.addresses(&name.name, want_v6);
        self.check(check, lookup, judge, now_unix_ms).await
    }

    /// SRV lookup of `name`, compared with `expectation` when the API's view
    /// is available (`None`: only require a non-empty answer).
    pub async fn check_srv(
        &self,
        name: &str,
        expectation: Option<&SrvExpectation>,
        now_unix_ms: u64,
    ) -> DnsResult {
        let check = Check {
            name,
            record: RecordType::Srv,
            what: "SRV",
            expected: expectation
                .map(|e| {
                    e.agents
                        .iter()
                        .map(|a| a.ip.to_string())
                        .collect::<BTreeSet<_>>()
                })
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        let judge = expectation.map(|e| {
            move |found: &SrvEndpoints, negative, history: &mut History, ttl| {
                compare_srv(
                    name,
                    &found.addresses,
                    e,
                    negative,
                    ttl,
                    history,
                    now_unix_ms,
                )
            }
        });
        self.check(check, self.srv_endpoints(name), judge, now_unix_ms)
            .await
    }

    /// The flow both checks share: look up (timed), list the answers, and
    /// judge them against the API's truth when there is one (`judge`), else
    /// only require an answer.
    async fn check<T: Records>(
        &self,
        check: Check<'_>,
        lookup: impl Future<Output = Result<Found<T>, ProbeError>>,
        judge: Option<impl FnOnce(&T, Option<NegativeAnswer>, &mut History, Duration) -> Verdict>,
        now_unix_ms: u64,
    ) -> DnsResult {
        let started = Instant::now();
        let found = lookup.await;
        let latency = started.elapsed();
        let mut result = DnsResult {
            name: check.name.to_owned(),
            record: check.record,
            ok: false,
            latency_ms: Some(millis(latency)),
            answers: Vec::new(),
            expected: check.expected,
            pending: Vec::new(),
            error: None,
        };
        match found {
            Err(e) => result.error = Some(e),
            Ok(found) => {
                result.answers = found.records.describe();
                match judge {
                    None => result.error = empty_answer(check.name, check.what, &found),
                    Some(judge) => {
                        let verdict = self.judged(
                            check.name,
                            check.record,
                            now_unix_ms,
                            found.negative,
                            |h, ttl| judge(&found.records, found.negative, h, ttl),
                        );
                        result.pending = verdict.pending;
                        result.error = verdict.error;
                    }
                }
            }
        }
        result.ok = result.error.is_none();
        result
    }

    /// Runs a comparison with the name's history and TTL.
    fn judged(
        &self,
        name: &str,
        record: RecordType,
        now_unix_ms: u64,
        negative: Option<NegativeAnswer>,
        compare: impl FnOnce(&mut History, Duration) -> Verdict,
    ) -> Verdict {
        // A poisoned lock only means a panic elsewhere; the map is still usable.
        let mut all = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let history = all
            .entry((name.to_owned(), record))
            .or_insert_with(|| History::new(now_unix_ms));
        if let Some(soa) = negative.and_then(|n| n.soa_ttl) {
            history.soa_negative_ttl = Some(soa);
        }
        let ttl = history.ttl(self.negative_ttl);
        compare(history, ttl)
    }

    /// Addresses behind an SRV name (the discovery fallback at start-up).
    pub async fn srv_addresses(&self, name: &str) -> Result<BTreeSet<IpAddr>, ProbeError> {
        let found = self.srv_endpoints(name).await?;
        match found.negative {
            Some(negative) if negative.nxdomain => Err(ProbeError::new(
                ErrorKind::Nxdomain,
                format!("lookup {name} on {}: NXDOMAIN", self.server),
            )),
            _ => Ok(found.records.addresses),
        }
    }

    async fn addresses(&self, name: &str, v6: bool) -> Result<Found<BTreeSet<IpAddr>>, ProbeError> {
        let lookup = if v6 {
            self.bounded(self.resolver.ipv6_lookup(name)).await
        } else {
            self.bounded(self.resolver.ipv4_lookup(name)).await
        };
        match lookup {
            Ok(lookup) => Ok(Found {
                records: lookup.answers().iter().filter_map(address_of).collect(),
                negative: None,
            }),
            Err(e) => self.negative_or_error(name, e).map(|negative| Found {
                records: BTreeSet::new(),
                negative: Some(negative),
            }),
        }
    }

    async fn srv_endpoints(&self, name: &str) -> Result<Found<SrvEndpoints>, ProbeError> {
        let lookup = match self.bounded(self.resolver.srv_lookup(name)).await {
            Ok(lookup) => lookup,
            Err(e) => {
                return self.negative_or_error(name, e).map(|negative| Found {
                    records: SrvEndpoints::default(),
                    negative: Some(negative),
                });
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
                Ok(found) if !found.records.is_empty() => endpoints.addresses.extend(found.records),
                _ => endpoints.unresolved.push(format!("{target}:{port}")),
            }
        }
        endpoints.unresolved.extend(
            unresolved
                .iter()
                .skip(MAX_TARGET_LOOKUPS)
                .map(|(t, p)| format!("{t}:{p}")),
        );
        Ok(Found {
            records: endpoints,
            negative: None,
        })
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

    /// NXDOMAIN and NODATA are answers, judged by the comparison with the
    /// API (the name may rightly not exist yet); everything else is a
    /// classified error.
    fn negative_or_error(&self, name: &str, err: NetError) -> Result<NegativeAnswer, ProbeError> {
        if let NetError::Dns(DnsError::NoRecordsFound(nr)) = &err
            && matches!(
                nr.response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            )
        {
            return Ok(NegativeAnswer {
                nxdomain: nr.response_code == ResponseCode::NXDomain,
                soa_ttl: nr.negative_ttl.map(|s| Duration::from_secs(u64::from(s))),
            });
        }
        Err(classify(&err, name, self.server))
    }
}

/// What differs between the checks' results, beside their records.
struct Check<'a> {
    name: &'a str,
    record: RecordType,
    /// The records' kind, for a NODATA message (`no address records`).
    what: &'static str,
    /// What the API says the answer should be (the result's `expected`).
    expected: Vec<String>,
}

/// Without the API's truth an empty answer is a plain DNS failure: NXDOMAIN
/// keeps its kind; NODATA is `Other` (the name exists, without records).
fn empty_answer<T: Records>(name: &str, what: &str, found: &Found<T>) -> Option<ProbeError> {
    if !found.records.is_empty() {
        return None;
    }
    Some(match found.negative {
        Some(n) if n.nxdomain => ProbeError::new(ErrorKind::Nxdomain, format!("{name}: NXDOMAIN")),
        _ => ProbeError::new(
            ErrorKind::Other,
            format!("{name}: no {what} records (NODATA)"),
        ),
    })
}

/// What a lookup found: the addresses of an A lookup, or the endpoints
/// behind SRV records.
trait Records {
    fn is_empty(&self) -> bool;
    /// As a result lists them.
    fn describe(&self) -> Vec<String>;
}

impl Records for BTreeSet<IpAddr> {
    fn is_empty(&self) -> bool {
        BTreeSet::is_empty(self)
    }

    fn describe(&self) -> Vec<String> {
        self.iter().map(ToString::to_string).collect()
    }
}

impl Records for SrvEndpoints {
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

/// Addresses found behind SRV records.
#[derive(Debug, Default)]
struct SrvEndpoints {
    addresses: BTreeSet<IpAddr>,
    /// `target:port` of records whose target did not resolve.
    unresolved: Vec<String>,
}

/// Caps the record lists of a result at [`MAX_LISTED`] each, before the
/// report is sent (and after the metrics counted them). In a cluster of
/// thousands of nodes the SRV record lists every agent: 5,000 answers and
/// 5,000 expected addresses in every report would be most of what the
/// aggregator parses. The error message names what disagrees; the lists are
/// for a human.
pub fn cap_listed(result: &mut DnsResult) {
    for list in [
        &mut result.answers,
        &mut result.expected,
        &mut result.pending,
    ] {
        if list.len() > MAX_LISTED {
            let more = list.len() - MAX_LISTED;
            list.truncate(MAX_LISTED);
            list.push(format!("... and {more} more"));
        }
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

#[cfg(test)]
mod tests {
    use super::expectation::tests::{NOW, TTL, agent};
    use super::*;

    #[test]
    fn long_record_lists_are_capped() {
        let mut r = DnsResult {
            name: "agents.netmatrix.svc.cluster.local.".into(),
            record: RecordType::Srv,
            ok: true,
            latency_ms: None,
            answers: (0..5000)
                .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
                .collect(),
            expected: vec!["10.0.0.1".into()],
            pending: Vec::new(),
            error: None,
        };
        super::cap_listed(&mut r);
        assert_eq!(r.answers.len(), super::MAX_LISTED + 1);
        assert_eq!(
            r.answers.last().map(String::as_str),
            Some("... and 4990 more")
        );
        assert_eq!(r.expected, ["10.0.0.1"]);
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

    /// A loopback UDP DNS server: answers every query with the given
    /// response code and no answers; with `soa`, an SOA in the authority
    /// section whose TTL and minimum are both `soa` (a negative answer as
    /// RFC 2308 has it).
    async fn udp_server(rcode: u8, soa: Option<u32>) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                if n < 12 {
                    continue;
                }
                // Header and question only (drop the query's EDNS record).
                let mut end = 12;
                while end < n && buf[end] != 0 {
                    end += usize::from(buf[end]) + 1;
                }
                let end = (end + 5).min(n);
                let mut answer = buf[..end].to_vec();
                answer[2] |= 0x80; // QR: response
                answer[3] = (answer[3] & 0xf0) | rcode;
                answer[6..12].fill(0); // no answer, authority, additional
                if let Some(ttl) = soa {
                    answer[9] = 1;
                    // Owner: the question's name; SOA, IN, TTL, 22 bytes of
                    // root mname and rname, then five u32, minimum last.
                    answer.extend_from_slice(&[0xc0, 12, 0, 6, 0, 1]);
                    answer.extend_from_slice(&ttl.to_be_bytes());
                    answer.extend_from_slice(&[0, 22, 0, 0]);
                    for field in [1, 3600, 600, 86_400, ttl] {
                        answer.extend_from_slice(&u32::to_be_bytes(field));
                    }
                }
                let _ = socket.send_to(&answer, peer).await;
            }
        });
        addr
    }

    fn name(n: &str, expected: Option<&str>) -> DnsName {
        DnsName {
            name: n.into(),
            expected: expected.map(|ip| ip.parse().unwrap()),
        }
    }

    fn prober(server: SocketAddr, timeout: Duration) -> DnsProber {
        DnsProber::new(server, timeout, TTL).unwrap()
    }

    #[tokio::test]
    async fn nxdomain_and_servfail_from_a_loopback_server() {
        let p = prober(udp_server(3, None).await, Duration::from_secs(1));
        // Nothing says this name should exist: a DNS failure.
        let r = p.check_a(&name("nope.cluster.local.", None), NOW).await;
        assert!(!r.ok);
        assert_eq!(r.error.unwrap().kind, ErrorKind::Nxdomain);
        // The API says it should: pending while young, then stale.
        let k = name("kubernetes.default.svc.cluster.local.", Some("10.96.0.1"));
        let r = p.check_a(&k, NOW).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.pending, ["10.96.0.1"]);
        let r = p.check_a(&k, NOW + 30_000).await;
        assert_eq!(r.error.unwrap().kind, ErrorKind::WrongAnswer);

        let p = prober(udp_server(2, None).await, Duration::from_secs(1));
        let r = p.check_srv("_x._tcp.svc.cluster.local.", None, NOW).await;
        assert_eq!(
            r.error.unwrap().kind,
            ErrorKind::Servfail,
            "{:?}",
            r.answers
        );
    }

    #[tokio::test]
    async fn the_negative_ttl_comes_from_the_soa() {
        let p = prober(udp_server(3, Some(120)).await, Duration::from_secs(1));
        let e = SrvExpectation {
            agents: vec![agent("a", "10.244.1.2", Some(0))],
            ..Default::default()
        };
        let srv_name = "_metrics._tcp.agents.netmatrix.svc.cluster.local.";
        let r = p.check_srv(srv_name, Some(&e), NOW).await;
        assert!(r.ok, "{r:?}");
        // 60 s later: past the flag, within the SOA's 120 s.
        let r = p.check_srv(srv_name, Some(&e), NOW + 60_000).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.pending, ["10.244.1.2"]);
        let r = p.check_srv(srv_name, Some(&e), NOW + 121_000).await;
        let err = r.error.unwrap();
        assert_eq!(err.kind, ErrorKind::WrongAnswer);
        assert!(err.message.contains("TTL (2m)"), "{err}");
        // Without the API's truth, NXDOMAIN is a plain failure.
        let r = p.check_srv(srv_name, None, NOW).await;
        assert_eq!(r.error.unwrap().kind, ErrorKind::Nxdomain);
    }

    #[tokio::test]
    async fn silent_server_times_out_and_closed_port_is_refused() {
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let k = name("kubernetes.default.svc.cluster.local.", Some("10.96.0.1"));
        let p = prober(silent.local_addr().unwrap(), Duration::from_millis(300));
        let r = p.check_a(&k, NOW).await;
        assert_eq!(r.error.unwrap().kind, ErrorKind::Timeout);

        let closed = silent.local_addr().unwrap();
        drop(silent);
        let p = prober(closed, Duration::from_millis(500));
        let r = p.check_a(&k, NOW).await;
        let e = r.error.unwrap();
        assert!(
            matches!(e.kind, ErrorKind::Refused | ErrorKind::Timeout),
            "{e}"
        );
    }
}
