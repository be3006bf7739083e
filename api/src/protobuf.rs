//! The [`Report`] in Protocol Buffers: what agents send by default, with
//! `Content-Type: `[`REPORT_PROTOBUF`]. JSON stays for people, scripts and
//! older agents; both decode to the same [`Report`].
//!
//! Built for the aggregator's cost at scale, where parsing JSON was half of
//! a round (a quarter of a million peer results a round at 5,000 nodes):
//!
//! - **Peers are their addresses.** No node or pod names: an address is
//!   what was probed, the aggregator knows every probe target's address from
//!   the Kubernetes API, and it places the peer itself rather than trusting
//!   names a client chose. It needs no agreement on a list version either,
//!   which indices into the agent's pinglist would (a list changes between
//!   a round's start and its report).
//! - **Columns, not records.** Each echo kind is a few packed integer
//!   arrays, one entry per peer: a 50-peer report is about a kilobyte
//!   instead of eleven, and decoding it is a handful of allocations.
//! - **Microseconds as integers**, the precision latencies carry in JSON
//!   too ([`round_ms`](crate::round_ms)), so both encodings decode to the
//!   same values.
//!
//! The schema is the `prost` attributes below (field numbers are the wire
//! contract: never reuse one). Errors say which field was wrong, never
//! quote the body.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use prost::Message;

use crate::{
    AgentIdentity, DnsResult, EchoResult, ErrorKind, NetworkMode, PeerResult, PeerSource,
    ProbeError, RecordType, Report, Sampled, ServiceKind, ServiceResult, ServiceStage, facts,
};

/// The media type of a report in Protocol Buffers.
pub const REPORT_PROTOBUF: &str = "application/vnd.netmatrix.report.v1+protobuf";

/// Why a body is not a protobuf report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body: not a protobuf report ({0})")]
    Protobuf(String),
    #[error("{field}: {problem}")]
    Field {
        field: &'static str,
        problem: &'static str,
    },
}

fn field(field: &'static str, problem: &'static str) -> DecodeError {
    DecodeError::Field { field, problem }
}

/// The whole report.
#[derive(Clone, PartialEq, Message)]
pub struct ReportPb {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(string, tag = "2")]
    pub pod: String,
    /// 4 or 16 bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub pod_ip: Vec<u8>,
    #[prost(enumeration = "NetworkPb", tag = "4")]
    pub network: i32,
    #[prost(uint64, tag = "5")]
    pub round: u64,
    #[prost(uint64, tag = "6")]
    pub started_unix_ms: u64,
    #[prost(uint64, tag = "7")]
    pub interval_ms: u64,
    #[prost(enumeration = "PeerSourcePb", tag = "8")]
    pub peer_source: i32,
    #[prost(uint32, optional, tag = "9")]
    pub mtu_probe_bytes: Option<u32>,
    #[prost(string, optional, tag = "10")]
    pub dns_server: Option<String>,
    #[prost(message, optional, tag = "11")]
    pub sampled: Option<SampledPb>,
    #[prost(string, optional, tag = "12")]
    pub facts_digest: Option<String>,
    /// The node facts as their JSON: sent once per change and only when
    /// asked for, they are not worth a schema of their own.
    #[prost(bytes = "vec", optional, tag = "13")]
    pub facts_json: Option<Vec<u8>>,
    #[prost(message, optional, tag = "14")]
    pub peers: Option<PeersPb>,
    #[prost(message, repeated, tag = "15")]
    pub services: Vec<ServicePb>,
    #[prost(message, repeated, tag = "16")]
    pub dns: Vec<DnsPb>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum NetworkPb {
    Pod = 0,
    Host = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PeerSourcePb {
    Api = 0,
    LastKnown = 1,
    Dns = 2,
    Aggregator = 3,
}

#[derive(Clone, PartialEq, Message)]
pub struct SampledPb {
    #[prost(uint32, tag = "1")]
    pub nodes: u32,
    #[prost(uint32, tag = "2")]
    pub probed: u32,
}

/// The peers, IPv4 ones first: peer `i` is the `i`-th address of `ipv4`
/// (4 bytes each), then of `ipv6` (16 bytes each).
#[derive(Clone, PartialEq, Message)]
pub struct PeersPb {
    #[prost(bytes = "vec", tag = "1")]
    pub ipv4: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub ipv6: Vec<u8>,
    /// One per peer (0: none), or empty when no peer has a port.
    #[prost(uint32, repeated, tag = "3")]
    pub port: Vec<u32>,
    #[prost(message, optional, tag = "4")]
    pub icmp: Option<EchoesPb>,
    #[prost(message, optional, tag = "5")]
    pub mtu: Option<EchoesPb>,
    #[prost(message, optional, tag = "6")]
    pub tcp: Option<EchoesPb>,
    #[prost(message, optional, tag = "7")]
    pub udp: Option<EchoesPb>,
}

/// One kind of echo to some of the peers, a column per field.
#[derive(Clone, PartialEq, Message)]
pub struct EchoesPb {
    /// The peers these entries are for, ascending; empty: every peer, in
    /// order.
    #[prost(uint32, repeated, tag = "1")]
    pub peer: Vec<u32>,
    #[prost(uint32, repeated, tag = "2")]
    pub sent: Vec<u32>,
    #[prost(uint32, repeated, tag = "3")]
    pub received: Vec<u32>,
    /// Microseconds plus one (0: no RTT); each column one per entry, or
    /// empty when no entry has an RTT.
    #[prost(uint32, repeated, tag = "4")]
    pub rtt_min_us: Vec<u32>,
    #[prost(uint32, repeated, tag = "5")]
    pub rtt_avg_us: Vec<u32>,
    #[prost(uint32, repeated, tag = "6")]
    pub rtt_max_us: Vec<u32>,
    /// The entries' errors, by entry position, ascending.
    #[prost(message, repeated, tag = "7")]
    pub errors: Vec<ErrorPb>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ErrorPb {
    /// Position of the entry this error is for (echo columns only).
    #[prost(uint32, tag = "1")]
    pub at: u32,
    #[prost(enumeration = "ErrorKindPb", tag = "2")]
    pub kind: i32,
    #[prost(string, tag = "3")]
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ErrorKindPb {
    Other = 0,
    Timeout = 1,
    Unreachable = 2,
    Refused = 3,
    Tls = 4,
    Http = 5,
    Nxdomain = 6,
    Servfail = 7,
    WrongAnswer = 8,
}

#[derive(Clone, PartialEq, Message)]
pub struct ServicePb {
    #[prost(enumeration = "ServiceKindPb", tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub target: String,
    #[prost(bool, tag = "4")]
    pub ok: bool,
    /// 0: not even TCP; 1: TCP; 2: TLS; 3: HTTP.
    #[prost(uint32, tag = "5")]
    pub reached: u32,
    #[prost(uint64, optional, tag = "6")]
    pub latency_us: Option<u64>,
    #[prost(message, optional, tag = "7")]
    pub error: Option<ErrorPb>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ServiceKindPb {
    Apiserver = 0,
    Clusterip = 1,
}

#[derive(Clone, PartialEq, Message)]
pub struct DnsPb {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(enumeration = "RecordTypePb", tag = "2")]
    pub record: i32,
    #[prost(bool, tag = "3")]
    pub ok: bool,
    #[prost(uint64, optional, tag = "4")]
    pub latency_us: Option<u64>,
    #[prost(string, repeated, tag = "5")]
    pub answers: Vec<String>,
    #[prost(string, repeated, tag = "6")]
    pub expected: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub pending: Vec<String>,
    #[prost(message, optional, tag = "8")]
    pub error: Option<ErrorPb>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RecordTypePb {
    A = 0,
    Srv = 1,
}

/// Encodes `report`. Peer names are left out (the aggregator places peers
/// by address); everything else decodes as it was, latencies to the
/// microsecond.
pub fn encode_report(report: &Report) -> Vec<u8> {
    report_pb(report).encode_to_vec()
}

/// Decodes a body of type [`REPORT_PROTOBUF`]. Peers come without names
/// (`node` and `pod` empty). At most `max_peers` peers are built: the caller
/// validates the rest.
pub fn decode_report(body: &[u8], max_peers: usize) -> Result<Report, DecodeError> {
    let pb = ReportPb::decode(body).map_err(|e| DecodeError::Protobuf(short(&e)))?;
    report_of(pb, max_peers)
}

/// prost's message names the Rust types and the path; keep the cause.
fn short(error: &prost::DecodeError) -> String {
    let text = error.to_string();
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    text.chars().take(120).collect()
}

fn report_pb(r: &Report) -> ReportPb {
    ReportPb {
        node: r.agent.node.clone(),
        pod: r.agent.pod.clone(),
        pod_ip: ip_bytes(r.agent.pod_ip),
        network: match r.agent.network {
            NetworkMode::Pod => NetworkPb::Pod,
            NetworkMode::Host => NetworkPb::Host,
        } as i32,
        round: r.round,
        started_unix_ms: r.started_unix_ms,
        interval_ms: r.interval_ms,
        peer_source: match r.peer_source {
            PeerSource::Api => PeerSourcePb::Api,
            PeerSource::LastKnown => PeerSourcePb::LastKnown,
            PeerSource::Dns => PeerSourcePb::Dns,
            PeerSource::Aggregator => PeerSourcePb::Aggregator,
        } as i32,
        mtu_probe_bytes: r.mtu_probe_bytes,
        dns_server: r.dns_server.clone(),
        sampled: r.sampled.map(|s| SampledPb {
            nodes: s.nodes,
            probed: s.probed,
        }),
        facts_digest: r.facts_digest.clone(),
        // Facts are plain data: they always serialize.
        facts_json: r.facts.as_ref().and_then(|f| serde_json::to_vec(f).ok()),
        peers: (!r.peers.is_empty()).then(|| peers_pb(&r.peers)),
        services: r.services.iter().map(service_pb).collect(),
        dns: r.dns.iter().map(dns_pb).collect(),
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn peers_pb(peers: &[PeerResult]) -> PeersPb {
    // IPv4 first: the order of peers carries no meaning.
    let mut order: Vec<&PeerResult> = peers.iter().filter(|p| p.ip.is_ipv4()).collect();
    order.extend(peers.iter().filter(|p| p.ip.is_ipv6()));
    let mut pb = PeersPb::default();
    for peer in &order {
        match peer.ip {
            IpAddr::V4(v4) => pb.ipv4.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => pb.ipv6.extend_from_slice(&v6.octets()),
        }
    }
    if order.iter().any(|p| p.port.is_some()) {
        pb.port = order.iter().map(|p| p.port.map_or(0, u32::from)).collect();
    }
    pb.icmp = echoes_pb(&order, |p| Some(&p.icmp));
    pb.mtu = echoes_pb(&order, |p| p.mtu.as_ref());
    pb.tcp = echoes_pb(&order, |p| p.tcp.as_ref());
    pb.udp = echoes_pb(&order, |p| p.udp.as_ref());
    pb
}

fn echoes_pb(
    peers: &[&PeerResult],
    echo: impl Fn(&PeerResult) -> Option<&EchoResult>,
) -> Option<EchoesPb> {
    let entries: Vec<(u32, &EchoResult)> = peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((u32::try_from(i).ok()?, echo(p)?)))
        .collect();
    if entries.is_empty() {
        return None;
    }
    let mut pb = EchoesPb::default();
    if entries.len() < peers.len() {
        pb.peer = entries.iter().map(|(i, _)| *i).collect();
    }
    pb.sent = entries.iter().map(|(_, e)| e.sent).collect();
    pb.received = entries.iter().map(|(_, e)| e.received).collect();
    if entries.iter().any(|(_, e)| e.rtt_avg_ms.is_some()) {
        pb.rtt_min_us = entries.iter().map(|(_, e)| rtt_us(e.rtt_min_ms)).collect();
        pb.rtt_avg_us = entries.iter().map(|(_, e)| rtt_us(e.rtt_avg_ms)).collect();
        pb.rtt_max_us = entries.iter().map(|(_, e)| rtt_us(e.rtt_max_ms)).collect();
    }
    pb.errors = entries
        .iter()
        .enumerate()
        .filter_map(|(at, (_, e))| Some(error_pb(e.error.as_ref()?, at)))
        .collect();
    Some(pb)
}

/// Microseconds plus one, 0 for none; saturating (an RTT above 71 minutes
/// is no RTT the validation lets through anyway).
fn rtt_us(ms: Option<f64>) -> u32 {
    ms.map_or(0, |ms| {
        let us = (ms * 1e3).round();
        if us.is_nan() || us < 0.0 {
            0
        } else if us >= f64::from(u32::MAX - 1) {
            u32::MAX
        } else {
            us as u32 + 1
        }
    })
}

fn latency_us(ms: Option<f64>) -> Option<u64> {
    ms.map(|ms| (ms * 1e3).round().max(0.0) as u64)
}

fn ms_of_us(us: u64) -> f64 {
    us as f64 / 1e3
}

fn error_pb(error: &ProbeError, at: usize) -> ErrorPb {
    ErrorPb {
        at: u32::try_from(at).unwrap_or(u32::MAX),
        kind: match error.kind {
            ErrorKind::Other => ErrorKindPb::Other,
            ErrorKind::Timeout => ErrorKindPb::Timeout,
            ErrorKind::Unreachable => ErrorKindPb::Unreachable,
            ErrorKind::Refused => ErrorKindPb::Refused,
            ErrorKind::Tls => ErrorKindPb::Tls,
            ErrorKind::Http => ErrorKindPb::Http,
            ErrorKind::Nxdomain => ErrorKindPb::Nxdomain,
            ErrorKind::Servfail => ErrorKindPb::Servfail,
            ErrorKind::WrongAnswer => ErrorKindPb::WrongAnswer,
        } as i32,
        message: error.message.clone(),
    }
}

fn service_pb(s: &ServiceResult) -> ServicePb {
    ServicePb {
        kind: match s.kind {
            ServiceKind::Apiserver => ServiceKindPb::Apiserver,
            ServiceKind::Clusterip => ServiceKindPb::Clusterip,
        } as i32,
        name: s.name.clone(),
        target: s.target.clone(),
        ok: s.ok,
        reached: match s.reached {
            None => 0,
            Some(ServiceStage::Tcp) => 1,
            Some(ServiceStage::Tls) => 2,
            Some(ServiceStage::Http) => 3,
        },
        latency_us: latency_us(s.latency_ms),
        error: s.error.as_ref().map(|e| error_pb(e, 0)),
    }
}

fn dns_pb(d: &DnsResult) -> DnsPb {
    DnsPb {
        name: d.name.clone(),
        record: match d.record {
            RecordType::A => RecordTypePb::A,
            RecordType::Srv => RecordTypePb::Srv,
        } as i32,
        ok: d.ok,
        latency_us: latency_us(d.latency_ms),
        answers: d.answers.clone(),
        expected: d.expected.clone(),
        pending: d.pending.clone(),
        error: d.error.as_ref().map(|e| error_pb(e, 0)),
    }
}

fn report_of(pb: ReportPb, max_peers: usize) -> Result<Report, DecodeError> {
    let pod_ip = ip_of(&pb.pod_ip).ok_or_else(|| field("pod_ip", "not 4 or 16 bytes"))?;
    let network = match NetworkPb::try_from(pb.network) {
        Ok(NetworkPb::Pod) => NetworkMode::Pod,
        Ok(NetworkPb::Host) => NetworkMode::Host,
        Err(_) => return Err(field("network", "unknown value")),
    };
    // An unknown source from a newer agent reads as the API's, the default.
    let peer_source = match PeerSourcePb::try_from(pb.peer_source) {
        Ok(PeerSourcePb::LastKnown) => PeerSource::LastKnown,
        Ok(PeerSourcePb::Dns) => PeerSource::Dns,
        Ok(PeerSourcePb::Aggregator) => PeerSource::Aggregator,
        Ok(PeerSourcePb::Api) | Err(_) => PeerSource::Api,
    };
    let facts = match pb.facts_json {
        Some(json) => Some(
            serde_json::from_slice::<facts::NodeFacts>(&json)
                .map_err(|_| field("facts_json", "not node facts"))?,
        ),
        None => None,
    };
    Ok(Report {
        agent: AgentIdentity {
            node: pb.node,
            pod: pb.pod,
            pod_ip,
            network,
        },
        round: pb.round,
        started_unix_ms: pb.started_unix_ms,
        interval_ms: pb.interval_ms,
        peers: match pb.peers {
            Some(peers) => peers_of(peers, max_peers)?,
            None => Vec::new(),
        },
        services: pb
            .services
            .into_iter()
            .map(service_of)
            .collect::<Result<_, _>>()?,
        dns: pb.dns.into_iter().map(dns_of).collect::<Result<_, _>>()?,
        peer_source,
        mtu_probe_bytes: pb.mtu_probe_bytes,
        dns_server: pb.dns_server,
        sampled: pb.sampled.map(|s| Sampled {
            nodes: s.nodes,
            probed: s.probed,
        }),
        facts_digest: pb.facts_digest,
        facts,
    })
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|v6| IpAddr::V6(Ipv6Addr::from(v6)))
}

fn peers_of(pb: PeersPb, max_peers: usize) -> Result<Vec<PeerResult>, DecodeError> {
    if !pb.ipv4.len().is_multiple_of(4) {
        return Err(field("peers.ipv4", "not a multiple of 4 bytes"));
    }
    if !pb.ipv6.len().is_multiple_of(16) {
        return Err(field("peers.ipv6", "not a multiple of 16 bytes"));
    }
    let count = pb.ipv4.len() / 4 + pb.ipv6.len() / 16;
    if count > max_peers {
        return Err(field("peers", "too many entries"));
    }
    if !pb.port.is_empty() && pb.port.len() != count {
        return Err(field("peers.port", "not one per peer"));
    }
    let v4 = pb.ipv4.chunks_exact(4).filter_map(ip_of);
    let v6 = pb.ipv6.chunks_exact(16).filter_map(ip_of);
    // Sized once: collected through `Result` the vector would grow by
    // doubling, copying peers of a few hundred bytes each time (at 5,000
    // reports a round, a seventh of the aggregator's ingest).
    let mut peers: Vec<PeerResult> = Vec::with_capacity(count);
    for (i, ip) in v4.chain(v6).enumerate() {
        let port = match pb.port.get(i).copied() {
            None | Some(0) => None,
            Some(port) => {
                Some(u16::try_from(port).map_err(|_| field("peers.port", "above 65535"))?)
            }
        };
        peers.push(PeerResult {
            node: String::new(),
            pod: String::new(),
            ip,
            icmp: EchoResult::default(),
            mtu: None,
            tcp: None,
            udp: None,
            port,
        });
    }
    let icmp = pb
        .icmp
        .ok_or_else(|| field("peers.icmp", "missing (every peer is pinged)"))?;
    let icmp = echoes_of(icmp, count, "peers.icmp")?;
    if icmp.len() != count {
        return Err(field("peers.icmp", "not one per peer"));
    }
    for (i, echo) in icmp {
        peers[i].icmp = echo;
    }
    type Slot = fn(&mut PeerResult) -> &mut Option<EchoResult>;
    let optional: [(Option<EchoesPb>, &'static str, Slot); 3] = [
        (pb.mtu, "peers.mtu", |p| &mut p.mtu),
        (pb.tcp, "peers.tcp", |p| &mut p.tcp),
        (pb.udp, "peers.udp", |p| &mut p.udp),
    ];
    for (echoes, name, slot) in optional {
        if let Some(echoes) = echoes {
            for (i, echo) in echoes_of(echoes, count, name)? {
                *slot(&mut peers[i]) = Some(echo);
            }
        }
    }
    Ok(peers)
}

/// The entries of one echo column set, as (peer index, result).
fn echoes_of(
    pb: EchoesPb,
    peers: usize,
    name: &'static str,
) -> Result<Vec<(usize, EchoResult)>, DecodeError> {
    let index: Vec<usize> = if pb.peer.is_empty() {
        (0..pb.sent.len()).collect()
    } else {
        let index: Vec<usize> = pb.peer.iter().map(|&i| i as usize).collect();
        if index.windows(2).any(|w| w[0] >= w[1]) {
            return Err(field(name, "peer indices not ascending"));
        }
        index
    };
    let len = index.len();
    if index.last().is_some_and(|&i| i >= peers) {
        return Err(field(name, "peer index out of range"));
    }
    if pb.sent.len() != len || pb.received.len() != len {
        return Err(field(name, "columns of different lengths"));
    }
    let rtts = [&pb.rtt_min_us, &pb.rtt_avg_us, &pb.rtt_max_us];
    if rtts.iter().any(|c| !c.is_empty() && c.len() != len) {
        return Err(field(name, "columns of different lengths"));
    }
    let rtt = |column: &Vec<u32>, i: usize| match column.get(i).copied() {
        None | Some(0) => None,
        Some(us) => Some(ms_of_us(u64::from(us - 1))),
    };
    let mut errors = pb.errors.into_iter().peekable();
    let mut entries = Vec::with_capacity(len);
    for (at, &peer) in index.iter().enumerate() {
        let mut echo = EchoResult {
            sent: pb.sent[at],
            received: pb.received[at],
            rtt_min_ms: rtt(&pb.rtt_min_us, at),
            rtt_avg_ms: rtt(&pb.rtt_avg_us, at),
            rtt_max_ms: rtt(&pb.rtt_max_us, at),
            error: None,
        };
        if errors.peek().is_some_and(|e| e.at as usize == at)
            && let Some(error) = errors.next()
        {
            echo.error = Some(probe_error_of(error));
        }
        entries.push((peer, echo));
    }
    if errors.next().is_some() {
        return Err(field(name, "errors not ascending or out of range"));
    }
    Ok(entries)
}

fn probe_error_of(pb: ErrorPb) -> ProbeError {
    // An unknown kind from a newer agent reads as `other`; its message stays.
    let kind = match ErrorKindPb::try_from(pb.kind) {
        Ok(ErrorKindPb::Timeout) => ErrorKind::Timeout,
        Ok(ErrorKindPb::Unreachable) => ErrorKind::Unreachable,
        Ok(ErrorKindPb::Refused) => ErrorKind::Refused,
        Ok(ErrorKindPb::Tls) => ErrorKind::Tls,
        Ok(ErrorKindPb::Http) => ErrorKind::Http,
        Ok(ErrorKindPb::Nxdomain) => ErrorKind::Nxdomain,
        Ok(ErrorKindPb::Servfail) => ErrorKind::Servfail,
        Ok(ErrorKindPb::WrongAnswer) => ErrorKind::WrongAnswer,
        Ok(ErrorKindPb::Other) | Err(_) => ErrorKind::Other,
    };
    ProbeError {
        kind,
        message: pb.message,
    }
}

fn service_of(pb: ServicePb) -> Result<ServiceResult, DecodeError> {
    Ok(ServiceResult {
        kind: match ServiceKindPb::try_from(pb.kind) {
            Ok(ServiceKindPb::Apiserver) => ServiceKind::Apiserver,
            Ok(ServiceKindPb::Clusterip) => ServiceKind::Clusterip,
            Err(_) => return Err(field("services.kind", "unknown value")),
        },
        name: pb.name,
        target: pb.target,
        ok: pb.ok,
        reached: match pb.reached {
            0 => None,
            1 => Some(ServiceStage::Tcp),
            2 => Some(ServiceStage::Tls),
            3 => Some(ServiceStage::Http),
            _ => return Err(field("services.reached", "unknown stage")),
        },
        latency_ms: pb.latency_us.map(ms_of_us),
        error: pb.error.map(probe_error_of),
    })
}

fn dns_of(pb: DnsPb) -> Result<DnsResult, DecodeError> {
    Ok(DnsResult {
        name: pb.name,
        record: match RecordTypePb::try_from(pb.record) {
            Ok(RecordTypePb::A) => RecordType::A,
            Ok(RecordTypePb::Srv) => RecordType::Srv,
            Err(_) => return Err(field("dns.record", "unknown value")),
        },
        ok: pb.ok,
        latency_ms: pb.latency_us.map(ms_of_us),
        answers: pb.answers,
        expected: pb.expected,
        pending: pb.pending,
        error: pb.error.map(probe_error_of),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    /// A report with every field set, as an agent sends it: peers of both
    /// families, some without MTU or TCP results, errors, services, DNS.
    fn full_report() -> Report {
        let mut r = fixtures::report(fixtures::identity("n1", "agent-1", "10.244.1.2"));
        r.round = 7;
        r.mtu_probe_bytes = Some(1400);
        r.dns_server = Some("10.96.0.10:53".into());
        r.sampled = Some(Sampled {
            nodes: 5000,
            probed: 52,
        });
        r.peer_source = PeerSource::Aggregator;
        r.peers = (0..6)
            .map(|i| {
                let ip: IpAddr = if i == 4 {
                    "fd00::5".parse().unwrap()
                } else {
                    format!("10.244.{i}.2").parse().unwrap()
                };
                let echo = |received: u32| EchoResult {
                    sent: 3,
                    received,
                    rtt_min_ms: (received > 0).then_some(0.201),
                    rtt_avg_ms: (received > 0).then_some(0.348),
                    rtt_max_ms: (received > 0).then_some(1.5),
                    error: (received < 3).then(|| ProbeError::new(ErrorKind::Timeout, "no reply")),
                };
                PeerResult {
                    node: String::new(),
                    pod: String::new(),
                    ip,
                    icmp: echo(if i == 2 { 0 } else { 3 }),
                    mtu: (i % 2 == 0).then(|| echo(if i == 4 { 1 } else { 3 })),
                    tcp: (i == 3).then(|| echo(1)),
                    udp: None,
                    port: (i != 5).then_some(8081),
                }
            })
            .collect();
        r.services = vec![ServiceResult {
            kind: ServiceKind::Apiserver,
            name: "kubernetes".into(),
            target: "10.96.0.1:443".into(),
            ok: false,
            reached: Some(ServiceStage::Tcp),
            latency_ms: Some(2.125),
            error: Some(ProbeError::new(ErrorKind::Tls, "handshake")),
        }];
        r.dns = vec![DnsResult {
            name: "kubernetes.default.svc.cluster.local.".into(),
            record: RecordType::A,
            ok: true,
            latency_ms: Some(0.9),
            answers: vec!["10.96.0.1".into()],
            expected: vec!["10.96.0.1".into()],
            pending: vec![],
            error: None,
        }];
        r
    }

    /// What decoding gives back: the same report, IPv4 peers first.
    fn ipv4_first(mut r: Report) -> Report {
        r.peers.sort_by_key(|p| p.ip.is_ipv6());
        r
    }

    #[test]
    fn a_report_round_trips_but_for_peer_names_and_order() {
        let r = full_report();
        let back = decode_report(&encode_report(&r), 1000).unwrap();
        assert_eq!(back, ipv4_first(r));
    }

    #[test]
    fn peer_names_are_left_out() {
        let mut r = full_report();
        r.peers[0].node = "n2".into();
        r.peers[0].pod = "agent-x".into();
        let back = decode_report(&encode_report(&r), 1000).unwrap();
        assert_eq!(
            (back.peers[0].node.as_str(), back.peers[0].pod.as_str()),
            ("", "")
        );
    }

    #[test]
    fn fifty_peers_fit_in_a_kilobyte_and_a_half() {
        let mut r = fixtures::report(fixtures::identity(
            "node-01234",
            "agent-abcde",
            "10.244.9.2",
        ));
        r.mtu_probe_bytes = Some(1400);
        r.peers = (0..50u8)
            .map(|i| {
                let mut p =
                    fixtures::peer("x", "y", &format!("10.244.{i}.2"), fixtures::echoes(3, 3));
                p.icmp.rtt_avg_ms = Some(0.348 + f64::from(i) / 100.0);
                p.icmp.rtt_min_ms = Some(0.2);
                p.icmp.rtt_max_ms = Some(0.9);
                p.mtu = Some(p.icmp.clone());
                p
            })
            .collect();
        let json = serde_json::to_vec(&r).unwrap().len();
        let pb = encode_report(&r).len();
        assert!(pb < 1536, "{pb} bytes (JSON: {json})");
    }

    #[test]
    fn broken_bodies_are_named_not_quoted() {
        let garbage = decode_report(b"\xff\xff\xff\xff", 10).unwrap_err();
        assert!(matches!(garbage, DecodeError::Protobuf(_)), "{garbage}");
        let mut pb = report_pb(&full_report());
        let peers = pb.peers.as_mut().unwrap();
        peers.ipv4.pop();
        let error = report_of(pb.clone(), 10).unwrap_err();
        assert_eq!(error.to_string(), "peers.ipv4: not a multiple of 4 bytes");

        let mut pb = report_pb(&full_report());
        pb.peers.as_mut().unwrap().icmp.as_mut().unwrap().sent.pop();
        assert_eq!(
            report_of(pb, 10).unwrap_err().to_string(),
            "peers.icmp: columns of different lengths"
        );
        let mut pb = report_pb(&full_report());
        pb.peers.as_mut().unwrap().mtu.as_mut().unwrap().peer = vec![0, 9, 10];
        assert_eq!(
            report_of(pb, 10).unwrap_err().to_string(),
            "peers.mtu: peer index out of range"
        );
        let mut pb = report_pb(&full_report());
        pb.peers.as_mut().unwrap().mtu.as_mut().unwrap().peer = vec![2, 0, 4];
        assert_eq!(
            report_of(pb, 10).unwrap_err().to_string(),
            "peers.mtu: peer indices not ascending"
        );
        assert_eq!(
            decode_report(&encode_report(&full_report()), 5)
                .unwrap_err()
                .to_string(),
            "peers: too many entries"
        );
    }

    proptest::proptest! {
        /// Whatever a client sends, decoding answers: a report or an error,
        /// never a panic (bytes of any kind, and a real report with bytes
        /// flipped, cut or inserted).
        #[test]
        fn no_body_panics_the_decoder(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            flips in proptest::collection::vec((0usize..2048, proptest::prelude::any::<u8>()), 0..8),
            cut in 0usize..4096,
        ) {
            let _ = decode_report(&noise, 100);
            let mut body = encode_report(&full_report());
            for (at, byte) in flips {
                let at = at % body.len();
                body[at] ^= byte;
            }
            let _ = decode_report(&body, 100);
            body.truncate(cut.min(body.len()));
            let _ = decode_report(&body, 100);
        }
    }

    #[test]
    fn every_error_kind_survives() {
        for kind in [
            ErrorKind::Timeout,
            ErrorKind::Unreachable,
            ErrorKind::Refused,
            ErrorKind::Tls,
            ErrorKind::Http,
            ErrorKind::Nxdomain,
            ErrorKind::Servfail,
            ErrorKind::WrongAnswer,
            ErrorKind::Other,
        ] {
            let e = ProbeError::new(kind, "m");
            assert_eq!(probe_error_of(error_pb(&e, 0)), e);
        }
    }
}
