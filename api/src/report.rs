//! What an agent sends: one probing round ([`Report`]), its results per
//! peer, Service and DNS name, and the aggregator's answer.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::facts;

/// Longest pause, in milliseconds, between an agent's attempts to deliver
/// a report after failures. The aggregator waits this long (beside its
/// freshness window) after its own start or stall before it reads the
/// agents' silence.
pub const REPORT_BACKOFF_MAX_MS: u64 = 60_000;
/// The same pause in rounds of the probe interval (fast rounds retry
/// sooner than [`REPORT_BACKOFF_MAX_MS`]).
pub const REPORT_BACKOFF_MAX_ROUNDS: u32 = 10;

/// Which network an agent probes from.
///
/// Pod-network and host-network results are kept apart so that "pod path
/// broken, node path fine" (the CNI) can be told from "both broken" (the
/// underlay).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    #[default]
    Pod,
    Host,
}

/// Who sent a report. The aggregator checks it against the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    /// Kubernetes node name (`spec.nodeName` of the agent pod).
    pub node: String,
    /// Agent pod name.
    pub pod: String,
    /// Agent pod IP (`status.podIP`).
    pub pod_ip: IpAddr,
    #[serde(default)]
    pub network: NetworkMode,
}

/// One probing round of one agent, sent to the aggregator with
/// `POST /api/v1/reports`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub agent: AgentIdentity,
    /// Round counter of this agent process; restarts at 1 when the agent does.
    pub round: u64,
    /// When the round started.
    pub started_unix_ms: u64,
    /// The agent's probe interval, so the aggregator can tell stale data.
    pub interval_ms: u64,
    /// Echo results per peer pod (same node and other nodes).
    #[serde(default)]
    pub peers: Vec<PeerResult>,
    /// API server and ClusterIP checks.
    #[serde(default)]
    pub services: Vec<ServiceResult>,
    /// DNS lookups.
    #[serde(default)]
    pub dns: Vec<DnsResult>,
    /// Where the agent's peer list came from this round.
    #[serde(default)]
    pub peer_source: PeerSource,
    /// Size in bytes of the IP packets of the large (path-MTU) echoes, sent
    /// with Don't Fragment set; absent when the MTU probe is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_probe_bytes: Option<u32>,
    /// The DNS server (`ip:port`) the DNS checks asked: the DNS Service's
    /// ClusterIP, so a failing ClusterIP check is known to be DNS's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_server: Option<String>,
    /// Present when the cluster is too large for a full mesh and this agent
    /// probes a sample of the remote nodes ([`sampling`](crate::sampling)): the aggregator
    /// then shows unprobed paths as absent rather than unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<Sampled>,
    /// Host-network agents: a digest of the node's own network ([`facts`])
    /// every round, so the aggregator knows when its copy is out of date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts_digest: Option<String>,
    /// The facts themselves, only when the aggregator asked for them
    /// ([`ReportAccepted::want_facts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<facts::NodeFacts>,
}

/// How an agent sampled the remote nodes this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sampled {
    /// Nodes the agent knows (its own included).
    pub nodes: u32,
    /// Remote nodes it probes this round.
    pub probed: u32,
}

/// Where an agent's peer list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PeerSource {
    /// A live watch of the Kubernetes API.
    #[default]
    Api,
    /// The last peer set seen before the API became unreachable.
    LastKnown,
    /// The SRV record of the agents' headless Service (start-up fallback).
    Dns,
    /// The agent's pinglist, fetched from the aggregator ([`crate::Pinglist`]).
    Aggregator,
}

/// A probed peer pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerResult {
    /// Node the peer pod runs on.
    pub node: String,
    pub pod: String,
    pub ip: IpAddr,
    /// Small ICMP echoes.
    pub icmp: EchoResult,
    /// Large echoes with Don't Fragment set, sized to the path MTU
    /// ([`Report::mtu_probe_bytes`]); absent when the MTU probe is off.
    /// Small fine and large lost is an MTU mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<EchoResult>,
    /// TCP connects to the pod's port (one a round; `received`: connected);
    /// absent when not probed (host-network rows, older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<EchoResult>,
    /// UDP echoes to the pod's echo on the same port number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<EchoResult>,
    /// The port TCP and UDP went to (NetworkPolicies allow by port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Milliseconds to the microsecond, the precision latencies carry on the
/// wire: finer digits are timer and scheduling noise, and every digit is
/// parsed by the aggregator a quarter of a million times a round at 5,000
/// nodes (`0.348` instead of `0.34812345600000003`).
pub fn round_ms(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

/// Outcome of a series of ICMP echoes to one address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct EchoResult {
    pub sent: u32,
    pub received: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_min_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_avg_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_max_ms: Option<f64>,
    /// Last error seen, when at least one echo was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProbeError>,
}

impl EchoResult {
    /// Fraction of echoes lost, 0.0 to 1.0 (1.0 when nothing was sent).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - f64::from(self.received.min(self.sent)) / f64::from(self.sent)
    }
}

/// What kind of service check this was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    /// TCP connect, TLS handshake and `GET /livez` to the API server's ClusterIP.
    Apiserver,
    /// TCP connect to a configured ClusterIP service.
    Clusterip,
}

/// How far a service check got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceStage {
    Tcp,
    Tls,
    Http,
}

/// One API server or ClusterIP check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceResult {
    pub kind: ServiceKind,
    /// Operator-facing name (`kubernetes`, or the configured name of the target).
    pub name: String,
    /// `ip:port` that was dialled.
    pub target: String,
    pub ok: bool,
    /// The last stage that succeeded (`None`: not even TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<ServiceStage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProbeError>,
}

/// DNS record type probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordType {
    A,
    Srv,
}

/// One DNS lookup, compared with what the Kubernetes API says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsResult {
    /// Fully qualified name queried (trailing dot).
    pub name: String,
    pub record: RecordType,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Answers received: addresses for A, `target:port` (or the target's
    /// address) for SRV.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<String>,
    /// What the API says the answer should contain; empty when not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected: Vec<String>,
    /// Expected answers still missing but younger than the negative-cache
    /// TTL: DNS may rightly not know them yet, so they do not fail the check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProbeError>,
}

/// Kind of a probe failure. Kept from the probe to the finding so the operator
/// sees "unreachable" and not just "failed".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// No answer in time.
    Timeout,
    /// The kernel or a router said there is no route (`ENETUNREACH`,
    /// `EHOSTUNREACH`, ICMP unreachable).
    Unreachable,
    /// Connection refused (`ECONNREFUSED` / TCP RST).
    Refused,
    /// TLS handshake or certificate failure.
    Tls,
    /// Connected, but the HTTP answer was wrong.
    Http,
    /// DNS name does not exist.
    Nxdomain,
    /// DNS server failure.
    Servfail,
    /// DNS answered, but not what the API says, for longer than the
    /// negative-cache TTL (a stale answer: `dns-stale`).
    WrongAnswer,
    /// Anything else (the message says what).
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Refused => "refused",
            ErrorKind::Tls => "tls",
            ErrorKind::Http => "http",
            ErrorKind::Nxdomain => "nxdomain",
            ErrorKind::Servfail => "servfail",
            ErrorKind::WrongAnswer => "wrong-answer",
            ErrorKind::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A probe failure: its kind and the underlying message (OS error text,
/// DNS response code, TLS alert...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProbeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// Answer of the aggregator to an accepted report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportAccepted {
    pub node: String,
    pub round: u64,
    /// The aggregator wants this node's network facts with the next report:
    /// they changed (`facts_digest`) and a network finding is being judged
    /// that reads them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub want_facts: bool,
    /// The ETag of the reporting agent's current pinglist. An agent that
    /// holds another fetches the list at once, so on a large cluster it
    /// needs no poll held open to learn of a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinglist_etag: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_and_ignores_unknown_fields() {
        let json = r#"{
            "agent": {"node": "n1", "pod": "a", "pod_ip": "10.244.1.2"},
            "round": 3, "started_unix_ms": 1, "interval_ms": 5000,
            "peers": [{"node": "n2", "pod": "b", "ip": "10.244.2.2",
                       "icmp": {"sent": 3, "received": 2, "rtt_avg_ms": 0.4}}],
            "future_field": true
        }"#;
        let r: Report = serde_json::from_str(json).unwrap();
        assert_eq!(r.agent.network, NetworkMode::Pod);
        assert!((r.peers[0].icmp.loss() - 1.0 / 3.0).abs() < 1e-9);
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn loss_is_total_when_nothing_was_sent() {
        assert_eq!(EchoResult::default().loss(), 1.0);
    }
}
