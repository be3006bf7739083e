//! What a well-formed [`Report`] looks like, beyond what serde checks (and
//! the [`Invalid`] that [`Pinglist::validate_for`](crate::Pinglist::validate_for) answers too).
//!
//! The aggregator runs [`Report::validate`] on every report before it
//! touches any state, so that no value a client chooses (a name, a size, a
//! count, a latency) reaches the matrix, the metrics or the logs unchecked.
//! The agent keeps to the same limits when it builds a report (names from its
//! configuration, capped lists, truncated messages), so a real agent never
//! sees a refusal from them.
//!
//! Time is not checked here: only the aggregator's clock can tell whether a
//! report's `started_unix_ms` is plausible.

use crate::{DnsResult, EchoResult, PeerResult, ProbeError, Report, ServiceResult};

/// Longest name Kubernetes allows for a node or a pod (a DNS-1123 subdomain).
pub const MAX_OBJECT_NAME: usize = 253;
/// Longest operator-chosen check name (`--clusterip NAME=...`).
pub const MAX_CHECK_NAME: usize = 63;
/// Longest DNS name queried, with its trailing dot.
pub const MAX_DNS_NAME: usize = 254;
/// Longest entry of a DNS result's `answers`, `expected` and `pending`.
pub const MAX_RECORD_TEXT: usize = 300;
/// Longest error message kept from a probe; longer ones are cut
/// ([`truncate_message`]) by the agent and by the aggregator.
pub const MAX_MESSAGE: usize = 300;

/// How much one report may carry. The defaults are far above what a real
/// agent sends (a sampled agent probes about a hundred pods and a dozen
/// checks) and low enough that a hostile report cannot make any per-report
/// work expensive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Peer pods in one report.
    pub max_peers: usize,
    /// Service checks, and DNS checks, in one report (each).
    pub max_checks: usize,
    /// Entries in each list of a DNS result.
    pub max_records: usize,
    /// Echoes sent to one pod in one round.
    pub max_echoes: u32,
    /// Any latency or round-trip time; probe timeouts are shorter than the
    /// agent's interval, and intervals are at most [`MAX_INTERVAL_MS`].
    pub max_latency_ms: f64,
}

/// Shortest probe interval an agent accepts.
pub const MIN_INTERVAL_MS: u64 = 100;
/// Longest probe interval that still makes sense for a health check.
pub const MAX_INTERVAL_MS: u64 = 3_600_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_peers: 16_384,
            max_checks: 64,
            max_records: 64,
            max_echoes: 1_000,
            max_latency_ms: 60_000.0,
        }
    }
}

/// Why a report is not well-formed: the field (a path such as
/// `peers[3].icmp.rtt_avg_ms`) and what is wrong with it. Neither part
/// quotes the value: a refusal must not echo what a client chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub problem: &'static str,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for Invalid {}

pub(crate) fn invalid(field: impl Into<String>, problem: &'static str) -> Invalid {
    Invalid {
        field: field.into(),
        problem,
    }
}

impl Report {
    /// Checks every field against Kubernetes' naming rules and `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<(), Invalid> {
        object_name(&self.agent.node, "agent.node", false)?;
        object_name(&self.agent.pod, "agent.pod", false)?;
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&self.interval_ms) {
            return Err(invalid("interval_ms", "out of range (100 ms to 1 h)"));
        }
        if let Some(bytes) = self.mtu_probe_bytes
            && !(68..=65_535).contains(&bytes)
        {
            return Err(invalid("mtu_probe_bytes", "out of range (68 to 65535)"));
        }
        if let Some(server) = &self.dns_server
            && server.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid("dns_server", "not an IP:port"));
        }
        if let Some(sampled) = self.sampled
            && sampled.probed > sampled.nodes
        {
            return Err(invalid("sampled.probed", "more than sampled.nodes"));
        }
        if self.peers.len() > limits.max_peers {
            return Err(invalid("peers", "too many entries"));
        }
        // An echo times out before the next round: no RTT is longer than
        // the agent's interval.
        let echo_limits = Limits {
            max_latency_ms: limits.max_latency_ms.min(self.interval_ms as f64),
            ..*limits
        };
        for (i, peer) in self.peers.iter().enumerate() {
            peer_ok(peer, &echo_limits).map_err(|e| e.under(&format!("peers[{i}]")))?;
        }
        if let Some(i) = first_duplicate(self.peers.iter().map(|p| p.ip)) {
            return Err(invalid(format!("peers[{i}].ip"), "listed twice"));
        }
        if self.services.len() > limits.max_checks {
            return Err(invalid("services", "too many entries"));
        }
        for (i, service) in self.services.iter().enumerate() {
            service_ok(service, limits).map_err(|e| e.under(&format!("services[{i}]")))?;
        }
        let service_keys = self.services.iter().map(|s| (s.kind, s.name.as_str()));
        if let Some(i) = first_duplicate(service_keys) {
            return Err(invalid(format!("services[{i}].name"), "listed twice"));
        }
        if self.dns.len() > limits.max_checks {
            return Err(invalid("dns", "too many entries"));
        }
        for (i, dns) in self.dns.iter().enumerate() {
            dns_ok(dns, limits).map_err(|e| e.under(&format!("dns[{i}]")))?;
        }
        if let Some(i) = first_duplicate(self.dns.iter().map(|d| (d.record, d.name.as_str()))) {
            return Err(invalid(format!("dns[{i}].name"), "listed twice"));
        }
        if let Some(facts) = &self.facts {
            facts.validate()?;
        }
        if let Some(d) = &self.facts_digest
            && !crate::facts::is_digest(d)
        {
            return Err(invalid("facts_digest", "not a digest"));
        }
        Ok(())
    }

    /// Cuts every probe error message to [`MAX_MESSAGE`] characters and
    /// replaces control characters: messages are free text that ends up in
    /// findings, pages and logs.
    pub fn truncate_messages(&mut self) {
        let errors = self
            .peers
            .iter_mut()
            .flat_map(|p| {
                [
                    Some(&mut p.icmp),
                    p.mtu.as_mut(),
                    p.tcp.as_mut(),
                    p.udp.as_mut(),
                ]
            })
            .flatten()
            .filter_map(|e| e.error.as_mut())
            .chain(self.services.iter_mut().filter_map(|s| s.error.as_mut()))
            .chain(self.dns.iter_mut().filter_map(|d| d.error.as_mut()));
        for error in errors {
            truncate_message(error);
        }
    }
}

impl Invalid {
    fn under(self, parent: &str) -> Invalid {
        Invalid {
            field: format!("{parent}.{}", self.field),
            problem: self.problem,
        }
    }
}

/// Cuts `error.message` to [`MAX_MESSAGE`] characters (marking the cut with
/// `...`) and turns control characters (newlines among them) into spaces.
pub fn truncate_message(error: &mut ProbeError) {
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    let message = &error.message;
    let needs_work =
        message.chars().nth(MAX_MESSAGE).is_some() || message.chars().any(char::is_control);
    if needs_work {
        let mut cut: String = message.chars().take(MAX_MESSAGE).map(clean).collect();
        if message.chars().nth(MAX_MESSAGE).is_some() {
            cut.push_str("...");
        }
        error.message = cut;
    }
}

/// A Kubernetes object name: a DNS-1123 subdomain (lowercase letters,
/// digits, `-` and `.`, starting and ending with a letter or digit, at most
/// 253 characters). `empty_ok` for peers found through DNS, whose names are
/// not known.
pub fn is_object_name(name: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_OBJECT_NAME
        && bytes.iter().all(|&c| alnum(c) || c == b'-' || c == b'.')
        && bytes.first().is_some_and(|&c| alnum(c))
        && bytes.last().is_some_and(|&c| alnum(c))
}

/// An operator-chosen check name: letters, digits, `-`, `_` and `.`, at
/// most [`MAX_CHECK_NAME`] characters.
pub fn is_check_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHECK_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS name as queried: letters, digits, `-`, `_` (SRV labels) and `.`.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DNS_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn object_name(name: &str, field: &str, empty_ok: bool) -> Result<(), Invalid> {
    if (empty_ok && name.is_empty()) || is_object_name(name) {
        Ok(())
    } else {
        Err(invalid(field, "not a Kubernetes name (DNS-1123 subdomain)"))
    }
}

fn peer_ok(peer: &PeerResult, limits: &Limits) -> Result<(), Invalid> {
    // Peers found through the SRV fallback carry no node or pod name.
    object_name(&peer.node, "node", true)?;
    object_name(&peer.pod, "pod", true)?;
    echoes_ok(&peer.icmp, limits).map_err(|e| e.under("icmp"))?;
    if let Some(mtu) = &peer.mtu {
        echoes_ok(mtu, limits).map_err(|e| e.under("mtu"))?;
    }
    if let Some(tcp) = &peer.tcp {
        echoes_ok(tcp, limits).map_err(|e| e.under("tcp"))?;
    }
    if let Some(udp) = &peer.udp {
        echoes_ok(udp, limits).map_err(|e| e.under("udp"))?;
    }
    Ok(())
}

fn echoes_ok(echoes: &EchoResult, limits: &Limits) -> Result<(), Invalid> {
    if echoes.sent > limits.max_echoes {
        return Err(invalid("sent", "too many echoes"));
    }
    if echoes.received > echoes.sent {
        return Err(invalid("received", "more than sent"));
    }
    let min = latency(echoes.rtt_min_ms, "rtt_min_ms", limits)?;
    let avg = latency(echoes.rtt_avg_ms, "rtt_avg_ms", limits)?;
    let max = latency(echoes.rtt_max_ms, "rtt_max_ms", limits)?;
    let ordered = |low: Option<f64>, high: Option<f64>| match (low, high) {
        (Some(low), Some(high)) => low <= high,
        _ => true,
    };
    if !ordered(min, avg) || !ordered(avg, max) || !ordered(min, max) {
        return Err(invalid(
            "rtt_avg_ms",
            "not between rtt_min_ms and rtt_max_ms",
        ));
    }
    Ok(())
}

fn latency(ms: Option<f64>, field: &'static str, limits: &Limits) -> Result<Option<f64>, Invalid> {
    match ms {
        Some(ms) if !(ms.is_finite() && (0.0..=limits.max_latency_ms).contains(&ms)) => {
            Err(invalid(
                field,
                "out of range (0 to 60 s, and echoes within the interval)",
            ))
        }
        ms => Ok(ms),
    }
}

fn service_ok(service: &ServiceResult, limits: &Limits) -> Result<(), Invalid> {
    if !is_check_name(&service.name) {
        return Err(invalid(
            "name",
            "not a check name (letters, digits, - _ ., at most 63)",
        ));
    }
    if service.target.len() > 64 || service.target.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid("target", "not IP:PORT"));
    }
    latency(service.latency_ms, "latency_ms", limits)?;
    Ok(())
}

fn dns_ok(dns: &DnsResult, limits: &Limits) -> Result<(), Invalid> {
    if !is_dns_name(&dns.name) {
        return Err(invalid("name", "not a DNS name"));
    }
    latency(dns.latency_ms, "latency_ms", limits)?;
    for (field, list) in [
        ("answers", &dns.answers),
        ("expected", &dns.expected),
        ("pending", &dns.pending),
    ] {
        if list.len() > limits.max_records {
            return Err(invalid(field, "too many entries"));
        }
        if list
            .iter()
            .any(|r| r.len() > MAX_RECORD_TEXT || r.chars().any(char::is_control))
        {
            return Err(invalid(field, "entry too long or not printable"));
        }
    }
    Ok(())
}

/// Index of the first item equal to an earlier one.
fn first_duplicate<T: Ord + Copy>(items: impl Iterator<Item = T>) -> Option<usize> {
    let mut seen: Vec<(T, usize)> = items.enumerate().map(|(i, t)| (t, i)).collect();
    seen.sort_unstable();
    seen.windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[1].1.max(w[0].1))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, echoes, identity, peer};
    use crate::{RecordType, ServiceKind};

    pub(crate) fn report() -> Report {
        Report {
            peers: vec![peer(
                "node-2",
                "netmatrix-agent-abcde",
                "10.244.2.2",
                EchoResult {
                    rtt_min_ms: Some(0.2),
                    rtt_avg_ms: Some(0.3),
                    rtt_max_ms: Some(0.4),
                    ..echoes(3, 3)
                },
            )],
            services: vec![ServiceResult {
                kind: ServiceKind::Clusterip,
                name: "kube-dns".into(),
                target: "10.96.0.10:53".into(),
                ok: true,
                reached: None,
                latency_ms: Some(1.0),
                error: None,
            }],
            dns: vec![DnsResult {
                name: "_metrics._tcp.netmatrix-agents.netmatrix.svc.cluster.local.".into(),
                record: RecordType::Srv,
                ok: true,
                latency_ms: Some(1.0),
                answers: vec!["10.244.2.2:9090".into()],
                expected: vec![],
                pending: vec![],
                error: None,
            }],
            mtu_probe_bytes: Some(1450),
            ..fixtures::report(identity("node-1", "netmatrix-agent-x7k2p", "10.244.1.2"))
        }
    }

    fn field(r: &Report) -> String {
        r.validate(&Limits::default()).unwrap_err().field
    }

    #[test]
    fn a_real_report_is_valid() {
        assert_eq!(report().validate(&Limits::default()), Ok(()));
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        for bad in [
            "",
            "Node-1",
            "node_1",
            "-node",
            "node-",
            "a\nb",
            &"a".repeat(254),
        ] {
            let mut r = report();
            r.agent.node = bad.into();
            assert_eq!(field(&r), "agent.node", "{bad:?}");
        }
        assert!(is_object_name(&"a".repeat(253)));
        assert!(is_object_name("ip-10-0-1-2.ec2.internal"));
        let mut r = report();
        r.peers[0].node = String::new();
        r.peers[0].pod = String::new();
        assert_eq!(r.validate(&Limits::default()), Ok(()), "DNS-found peers");
        r.peers[0].pod = "x y".into();
        assert_eq!(field(&r), "peers[0].pod");
    }

    #[test]
    fn values_are_bounded() {
        type Mutation = fn(&mut Report);
        let cases: [(&str, Mutation); 13] = [
            ("peers[0].icmp.rtt_avg_ms", |r| {
                r.peers[0].icmp.rtt_avg_ms = Some(-1.0)
            }),
            ("peers[0].icmp.rtt_max_ms", |r| {
                r.peers[0].icmp.rtt_max_ms = Some(1e308)
            }),
            ("peers[0].icmp.rtt_min_ms", |r| {
                r.peers[0].icmp.rtt_min_ms = Some(f64::NAN)
            }),
            ("peers[0].icmp.rtt_avg_ms", |r| {
                r.peers[0].icmp.rtt_avg_ms = Some(0.5)
            }),
            ("peers[0].icmp.received", |r| r.peers[0].icmp.received = 4),
            ("peers[0].tcp.received", |r| {
                r.peers[0].tcp = Some(EchoResult {
                    sent: 1,
                    received: 2,
                    ..EchoResult::default()
                })
            }),
            ("dns_server", |r| r.dns_server = Some("10.96.0.10".into())),
            ("peers[0].icmp.sent", |r| {
                r.peers[0].icmp.sent = 100_000;
            }),
            ("interval_ms", |r| r.interval_ms = u64::MAX),
            ("peers[0].icmp.rtt_max_ms", |r| {
                r.interval_ms = 1000;
                r.peers[0].icmp.rtt_max_ms = Some(1500.0);
            }),
            ("services[0].target", |r| {
                r.services[0].target = "x".repeat(100)
            }),
            ("dns[0].answers", |r| {
                r.dns[0].answers = vec!["a".into(); 65]
            }),
            ("mtu_probe_bytes", |r| r.mtu_probe_bytes = Some(1 << 20)),
        ];
        for (expected, mutate) in cases {
            let mut r = report();
            mutate(&mut r);
            assert_eq!(field(&r), expected);
        }
    }

    #[test]
    fn each_peer_and_check_counts_once() {
        let mut r = report();
        let first = r.peers[0].clone();
        r.peers.extend(std::iter::repeat_n(first, 799));
        assert_eq!(field(&r), "peers[1].ip");
        let mut r = report();
        r.services.push(r.services[0].clone());
        assert_eq!(field(&r), "services[1].name");
        let mut r = report();
        r.services = (0..10_000)
            .map(|i| ServiceResult {
                name: format!("s{i}"),
                ..r.services[0].clone()
            })
            .collect();
        assert_eq!(field(&r), "services");
    }

    #[test]
    fn refusals_do_not_quote_the_value() {
        let mut r = report();
        r.agent.pod = "x".repeat(200_000);
        let text = r.validate(&Limits::default()).unwrap_err().to_string();
        assert!(text.len() < 100, "{text}");
    }

    #[test]
    fn messages_are_cut_and_cleaned() {
        let mut r = report();
        r.peers[0].icmp.error = Some(ProbeError::new(
            crate::ErrorKind::Other,
            "a\nforged log line",
        ));
        r.services[0].error = Some(ProbeError::new(crate::ErrorKind::Other, "é".repeat(1000)));
        r.truncate_messages();
        assert_eq!(
            r.peers[0].icmp.error.as_ref().unwrap().message,
            "a forged log line"
        );
        let long = &r.services[0].error.as_ref().unwrap().message;
        assert_eq!(long.chars().count(), MAX_MESSAGE + 3);
    }
}
