//! Wire types of netmatrix, version 1 (`/api/v1`).
//!
//! This crate is the single definition of everything that crosses the wire
//! between the agent, the aggregator and the tools that read the aggregator
//! (the `validate` command, the web page, the lab). Both sides depend on it, so
//! a field renamed here is renamed everywhere at compile time.
//!
//! Conventions:
//! - field names are `snake_case`, enum values `kebab-case`;
//! - durations are milliseconds as `f64` (`*_ms`), timestamps are Unix
//!   milliseconds as `u64` (`*_unix_ms`);
//! - optional fields are omitted when empty, and unknown fields are ignored on
//!   read, so that a newer agent can talk to an older aggregator.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub mod facts;
pub mod labels;
pub mod sampling;
pub mod validate;

/// Path prefix of every versioned endpoint.
pub const API_PREFIX: &str = "/api/v1";
/// `POST` a [`Report`] here.
pub const REPORTS_PATH: &str = "/api/v1/reports";
/// `POST` a pod-network agent's [`Report`] here on its behalf: a host-network
/// agent relays its own node's pod agent's report when that agent cannot
/// reach the aggregator (its node's pod network is cut). The aggregator
/// accepts it only from the authenticated host agent of that same node.
pub const RELAYED_REPORTS_PATH: &str = "/api/v1/relayed-reports";
/// An agent serves its newest report that the aggregator has not taken
/// here (`204 No Content` when there is none), on its pod address, for its
/// node's host agent to relay ([`RELAYED_REPORTS_PATH`]).
pub const AGENT_UNDELIVERED_PATH: &str = "/undelivered";
/// `GET` a [`Matrix`] here.
pub const MATRIX_PATH: &str = "/api/v1/matrix";
/// `GET` a [`Findings`] here.
pub const FINDINGS_PATH: &str = "/api/v1/findings";

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
    /// probes a sample of the remote nodes ([`sampling`]): the aggregator
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
}

/// Error body of every 4xx/5xx answer of the aggregator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable reason, one of [`reasons`].
    pub reason: String,
    /// What happened and what to do, for a human: short, and never quoting
    /// what the client sent or what the Kubernetes API knows.
    pub message: String,
}

/// The stable `reason`s of [`ApiError`] for `POST /api/v1/reports`, also
/// the `reason` label of `netmatrix_reports_rejected_total`.
pub mod reasons {
    /// No bearer token, or one the Kubernetes API does not accept (401).
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// A valid token, but not of a running agent pod, or the report claims
    /// another identity than the token's (403).
    pub const FORBIDDEN: &str = "forbidden";
    /// Not a well-formed v1 report; the message names the field (400).
    pub const INVALID: &str = "invalid";
    /// The body is larger than the aggregator accepts (413).
    pub const TOO_LARGE: &str = "too-large";
    /// Older than the report held for the same pod (409).
    pub const STALE: &str = "stale";
    /// The aggregator has not listed nodes and agents from the API yet (503).
    pub const NOT_READY: &str = "not-ready";
    /// The token could not be verified right now: the Kubernetes API is
    /// unreachable, or token reviews are being rate limited (503). A client
    /// may retry with an older token it still holds.
    pub const AUTH_UNAVAILABLE: &str = "auth-unavailable";
}

/// Status of one matrix cell or check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    Degraded,
    Failed,
    /// No fresh data: the source agent is silent, or never probed this pair.
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /api/v1/matrix`: the directed node-to-node connectivity matrix plus
/// per-node service and DNS columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    pub generated_unix_ms: u64,
    /// Every node the aggregator knows (expected or reporting), sorted.
    pub nodes: Vec<String>,
    /// Pod-network rows, one per node in `nodes`, same order.
    pub rows: Vec<MatrixRow>,
    /// Host-network rows (empty when no host-network agent reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_rows: Vec<MatrixRow>,
}

/// What the Kubernetes API says of a node, as far as diagnosis cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Ready and schedulable: its cells count.
    #[default]
    Ready,
    /// Joined less than the grace period ago: shown, not diagnosed.
    Joining,
    /// `spec.unschedulable` (cordoned, drained): agents do not probe it.
    Cordoned,
    /// The kubelet's Ready condition is not True: agents do not probe it.
    NotReady,
    /// Not (or no longer) in the API, but reports or cells still mention it.
    Unknown,
}

/// What one source node sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixRow {
    /// Source node.
    pub node: String,
    /// The node's state in the API.
    #[serde(default)]
    pub state: NodeState,
    /// `true` when the node's agent has reported recently.
    pub reporting: bool,
    /// The host-network agent pod that relayed this row's latest report:
    /// the agent could not reach the aggregator itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed_by: Option<String>,
    /// Age of the node's last report, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_age_ms: Option<f64>,
    /// Directed cells from `node` to each destination node, in `Matrix::nodes`
    /// order. In a sampled cluster (more nodes than a full mesh covers, see
    /// [`sampling`]) only the probed destinations have a cell; find a cell by
    /// its `to`, never by position.
    pub cells: Vec<Cell>,
    /// API server and ClusterIP checks of this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<CheckCell>,
    /// DNS checks of this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<CheckCell>,
    /// Large Don't-Fragment echoes of this node to every peer, summarised
    /// (column `mtu`); absent when the agent does not run the MTU probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<CheckCell>,
}

/// One directed node-to-node cell (all pods on `to` probed from `node`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Destination node.
    pub to: String,
    pub status: Status,
    /// Fraction of echoes lost, 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_avg_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_max_ms: Option<f64>,
    /// How many peer pods on `to` were probed.
    #[serde(default)]
    pub pods: u32,
    /// Status of the large Don't-Fragment echoes on this path (absent when
    /// not probed). `ok` small and `failed` large is an MTU mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<Status>,
    /// Each protocol's status on this path, when more than ICMP was probed.
    /// `status` is then the path's: failed only when no protocol gets
    /// through; a protocol failing where another passes is filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<Status>,
    /// Probes on this path that failed and that a NetworkPolicy denies:
    /// left out of the statuses (the path is not judged by them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ProbeError>,
    /// Age of the data behind this cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<f64>,
}

/// Probes a NetworkPolicy denies, and which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// `ICMP`, `TCP`, `UDP`.
    pub protocols: Vec<String>,
    /// `namespace/name` of the policies.
    pub policies: Vec<String>,
}

/// A per-node service or DNS check in the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckCell {
    /// Column name, e.g. `apiserver`, `clusterip/aggregator`, `dns-a/kubernetes.default.svc.cluster.local.`.
    pub column: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ProbeError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<f64>,
    /// A failed check of netmatrix's own companions' Service that a
    /// NetworkPolicy denies (its status is then `unknown`: not judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
}

/// Stable identifier of a diagnosis. Alerts and runbooks key on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    NodeIsolated,
    CrossNodeBroken,
    Partition,
    AsymmetricPath,
    PairBroken,
    PacketLoss,
    HighLatency,
    MtuMismatch,
    ApiserverUnreachable,
    ClusteripBroken,
    DnsFailure,
    DnsStale,
    UnderlayBroken,
    AgentMissing,
    IcmpFiltered,
    TcpFiltered,
    UdpFiltered,
    ServiceUnreachable,
    BlockedByPolicy,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::NodeIsolated => "node-isolated",
            FindingKind::CrossNodeBroken => "cross-node-broken",
            FindingKind::Partition => "partition",
            FindingKind::AsymmetricPath => "asymmetric-path",
            FindingKind::PairBroken => "pair-broken",
            FindingKind::PacketLoss => "packet-loss",
            FindingKind::HighLatency => "high-latency",
            FindingKind::MtuMismatch => "mtu-mismatch",
            FindingKind::ApiserverUnreachable => "apiserver-unreachable",
            FindingKind::ClusteripBroken => "clusterip-broken",
            FindingKind::DnsFailure => "dns-failure",
            FindingKind::DnsStale => "dns-stale",
            FindingKind::UnderlayBroken => "underlay-broken",
            FindingKind::AgentMissing => "agent-missing",
            FindingKind::IcmpFiltered => "icmp-filtered",
            FindingKind::TcpFiltered => "tcp-filtered",
            FindingKind::UdpFiltered => "udp-filtered",
            FindingKind::ServiceUnreachable => "service-unreachable",
            FindingKind::BlockedByPolicy => "blocked-by-policy",
        }
    }
}

impl FindingKind {
    /// Information, not a failure: the network works (a protocol filtered
    /// where others pass, probes a NetworkPolicy keeps out). Never pages,
    /// never fails `validate`, never marks a Node.
    pub fn is_information(self) -> bool {
        matches!(
            self,
            FindingKind::IcmpFiltered
                | FindingKind::TcpFiltered
                | FindingKind::UdpFiltered
                | FindingKind::BlockedByPolicy
        )
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named failure, raised after it held for a number of rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// Nodes concerned, sorted.
    pub nodes: Vec<String>,
    /// For `partition`: the groups of nodes that still reach each other,
    /// each sorted, largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Vec<String>>,
    /// For path findings (`asymmetric-path`, `pair-broken`, `mtu-mismatch`,
    /// `packet-loss`...): the directed paths concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<Path>,
    /// One sentence for a human.
    pub summary: String,
    /// Cells and errors behind the finding.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// What to check first.
    pub hint: String,
    /// When the condition started to hold (RFC 3339, UTC).
    pub since: String,
    /// Same instant as `since`, for machines.
    pub since_unix_ms: u64,
    /// The finding came back soon after it cleared: it is held raised
    /// through the gaps (until it stays away for the flap window) instead of
    /// being raised and cleared with every cycle, so alerts fire on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flapping: bool,
    /// Why, from the nodes' own network facts checked against the API
    /// (a host agent's reading): one line per cause found, e.g. "node-2:
    /// net.ipv4.ip_forward = 0". Empty when none was found: the cause is
    /// then unknown, not absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cause: Vec<String>,
    /// With no cause found: the nodes whose network facts would be checked
    /// and are not held (no host agent reports them, or they were just
    /// asked for and come with its next report). The cause is then
    /// unknown *so far*.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub facts_missing: Vec<String>,
}

/// A directed node-to-node path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Path {
    pub from: String,
    pub to: String,
}

/// `GET /api/v1/findings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Findings {
    pub generated_unix_ms: u64,
    pub findings: Vec<Finding>,
    /// Conditions seen in the latest rounds but not raised yet (a finding
    /// needs a few rounds): a failure being named, for `validate` to wait on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingFinding>,
}

/// A condition that held in the latest round and is not raised yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFinding {
    pub kind: FindingKind,
    pub nodes: Vec<String>,
    /// Consecutive rounds it held so far.
    pub held_rounds: u32,
    /// Rounds it must hold to be raised.
    pub raise_after: u32,
}

/// `GET` a [`CompactMatrix`] here: the matrix of [`MATRIX_PATH`] in a few
/// bytes per cell, for the web page and other readers of large clusters.
pub const MATRIX_COMPACT_PATH: &str = "/api/v1/matrix/compact";
/// `GET` one full [`Cell`] here, `?from=NODE&to=NODE[&network=pod|host]`.
pub const MATRIX_CELL_PATH: &str = "/api/v1/matrix/cell";
/// `GET` one node's latest [`facts::NodeFacts`] here, `?node=NODE`.
pub const NODE_FACTS_PATH: &str = "/api/v1/facts";

/// `GET /api/v1/matrix/compact`: the same [`Matrix`], a few bytes per cell.
///
/// The full matrix costs about 100 bytes of JSON per cell (100 MB at 1,000
/// nodes); this one costs about 5. Per row, cell `i` is in position `i` of
/// `status`, `loss_pct` and `rtt_avg_us`, for destination `nodes[i]`; check
/// `j` is in position `j` of `checks` and `check_latency_us`, for column
/// `columns[j]`. Errors, rare in a healthy network, are listed sparsely.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactMatrix {
    pub generated_unix_ms: u64,
    /// As [`Matrix::nodes`].
    pub nodes: Vec<String>,
    /// Service, DNS and `mtu` columns over all rows (pod and host), in the
    /// order of first appearance: `services`, then `dns`, then `mtu`.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Pod-network rows, as [`Matrix::rows`].
    pub rows: Vec<CompactRow>,
    /// Host-network rows, as [`Matrix::host_rows`] (omitted when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_rows: Vec<CompactRow>,
}

/// One source node of a [`CompactMatrix`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactRow {
    pub node: String,
    #[serde(default)]
    pub state: NodeState,
    pub reporting: bool,
    /// As [`MatrixRow::relayed_by`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed_by: Option<String>,
    /// Age of the node's last report, rounded to milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_age_ms: Option<u64>,
    /// One character per destination node ([`status_char`]): `o` ok,
    /// `d` degraded, `f` failed, `u` unknown.
    pub status: String,
    /// Echo loss per destination in whole percent (rounded up, so that any
    /// loss shows), `-1` when unknown.
    pub loss_pct: Vec<i16>,
    /// Mean RTT per destination in microseconds (rounded), `-1` when unknown.
    pub rtt_avg_us: Vec<i64>,
    /// Cells that carry a `last_error`, by destination index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<CompactError>,
    /// One character per entry of [`CompactMatrix::columns`]: as `status`,
    /// plus `-` when this row has no such check.
    #[serde(default)]
    pub checks: String,
    /// Check latency per column in microseconds (rounded), `-1` when unknown.
    #[serde(default)]
    pub check_latency_us: Vec<i64>,
    /// Checks that carry a `last_error`, by column index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub check_errors: Vec<CompactError>,
}

/// The `last_error` of the cell or check at index `i`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactError {
    pub i: u32,
    pub kind: ErrorKind,
    pub message: String,
}

/// The one-character code of a status in [`CompactRow::status`].
pub fn status_char(status: Status) -> char {
    match status {
        Status::Ok => 'o',
        Status::Degraded => 'd',
        Status::Failed => 'f',
        Status::Unknown => 'u',
    }
}

/// The status of a [`CompactRow::status`] character (`None` for `-` and
/// anything unknown).
pub fn status_from_char(c: char) -> Option<Status> {
    match c {
        'o' => Some(Status::Ok),
        'd' => Some(Status::Degraded),
        'f' => Some(Status::Failed),
        'u' => Some(Status::Unknown),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_use_kebab_case_on_the_wire() {
        let v = serde_json::to_value(FindingKind::ApiserverUnreachable).unwrap();
        assert_eq!(v, "apiserver-unreachable");
        assert_eq!(
            FindingKind::ApiserverUnreachable.as_str(),
            "apiserver-unreachable"
        );
        let v = serde_json::to_value(ErrorKind::WrongAnswer).unwrap();
        assert_eq!(v, ErrorKind::WrongAnswer.as_str());
        assert_eq!(serde_json::to_value(RecordType::Srv).unwrap(), "SRV");
    }

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
