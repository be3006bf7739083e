//! The lab's cluster DNS: a real DNS server (hickory-server, UDP and TCP)
//! answering for `cluster.local` the way CoreDNS's kubernetes plugin does,
//! computed at query time from the cluster's Services and Pods, so that it
//! follows them as they change:
//!
//! - `<svc>.<ns>.svc.<domain>` A: the ClusterIP, or for a headless Service
//!   (`clusterIP: None`) the Running pods matching its selector;
//! - `<ip-with-dashes>.<svc>.<ns>.svc.<domain>` A: one headless endpoint;
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>` SRV: for a headless Service
//!   one record per endpoint, target `<ip-with-dashes>.<svc>...`; for a
//!   ClusterIP Service one record, target `<svc>.<ns>.svc.<domain>`; the
//!   targets' A records in the additional section;
//! - a name that does not exist: NXDOMAIN with the zone's SOA, whose minimum
//!   (the negative-caching TTL, RFC 2308) is 30 s as with CoreDNS; an
//!   existing name without records of the type asked: NODATA with the SOA;
//! - outside the zone: REFUSED (the lab has no upstream to forward to).
//!
//! Positive answers have CoreDNS's default TTL of 5 s. [`DnsControl`] lets
//! faults make the server answer SERVFAIL, stay silent, or hide names.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, NS, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};

use crate::emulator::cluster::ClusterState;

/// TTL of positive answers (CoreDNS's default).
pub const ANSWER_TTL: u32 = 5;
/// SOA minimum: how long resolvers cache a negative answer (CoreDNS: 30 s).
pub const NEGATIVE_TTL: u32 = 30;

/// How long a TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// Switches shared between the lab (fault injection) and the running server.
#[derive(Clone, Default)]
pub struct DnsControl {
    inner: Arc<ControlInner>,
}

#[derive(Default)]
struct ControlInner {
    servfail: AtomicBool,
    silent: AtomicBool,
    hidden: Mutex<BTreeSet<String>>,
    queries: AtomicU64,
}

impl DnsControl {
    /// Answer SERVFAIL to every query (a broken CoreDNS, or one that cannot
    /// reach the API server).
    pub fn set_servfail(&self, on: bool) {
        self.inner.servfail.store(on, Ordering::Relaxed);
    }

    /// Answer nothing at all: clients time out (an overloaded or
    /// unreachable DNS server, while its socket still exists).
    pub fn set_silent(&self, on: bool) {
        self.inner.silent.store(on, Ordering::Relaxed);
    }

    /// Makes a name disappear from the zone, everything below it included,
    /// while the cluster still has the object: DNS gone stale. Hiding a
    /// headless endpoint (`10-244-2-3.<svc>.<ns>.svc.<domain>`) also drops
    /// it from the Service's A and SRV answers; hiding a Service drops all
    /// its records. Names are case-insensitive, the trailing dot optional.
    pub fn hide(&self, name: &str) {
        self.hidden().insert(normalize(name));
    }

    /// Undoes [`Self::hide`].
    pub fn unhide(&self, name: &str) {
        self.hidden().remove(&normalize(name));
    }

    /// Queries received so far (answered or not).
    pub fn queries(&self) -> u64 {
        self.inner.queries.load(Ordering::Relaxed)
    }

    fn hidden(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.inner.hidden.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a record at `name` stemming from `endpoint` is hidden.
    fn hides(&self, name: &str, endpoint: Option<&str>) -> bool {
        let hidden = self.hidden();
        hidden
            .iter()
            .any(|h| name == h || name.ends_with(&format!(".{h}")) || endpoint == Some(h.as_str()))
    }
}

/// Lower case, no trailing dot: the form names are compared in.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Serves the zone `domain` (e.g. `cluster.local`) on already-bound sockets
/// until the task is dropped or aborted (which closes both sockets: the
/// server's tasks live in a `JoinSet` it owns).
pub async fn serve(
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    state: ClusterState,
    domain: &str,
    control: DnsControl,
) -> std::io::Result<()> {
    let handler = ClusterDns {
        state,
        domain: normalize(domain),
        control,
    };
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 16);
    server
        .block_until_done()
        .await
        .map_err(std::io::Error::other)
}

struct ClusterDns {
    state: ClusterState,
    /// Normalized (see [`normalize`]).
    domain: String,
    control: DnsControl,
}

/// The outcome of one query.
#[derive(Debug, PartialEq)]
enum Answer {
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    NoData,
    NxDomain,
    Refused,
}

#[async_trait::async_trait]
impl RequestHandler for ClusterDns {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        self.control.inner.queries.fetch_add(1, Ordering::Relaxed);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        if self.control.inner.silent.load(Ordering::Relaxed) {
            return ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            });
        }
        // RFC 6891: a query with an OPT record gets one back.
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let answer = if self.control.inner.servfail.load(Ordering::Relaxed) {
            metadata.response_code = ResponseCode::ServFail;
            None
        } else if let Some(query) = request.queries.queries().first() {
            let answer = self.answer(&query.name().to_ascii(), query.query_type());
            tracing::trace!(name = %query.name(), qtype = %query.query_type(), ?answer, "DNS query");
            Some(answer)
        } else {
            metadata.response_code = ResponseCode::FormErr;
            None
        };
        let soa = [self.soa()];
        let sent = match answer {
            Some(Answer::Records {
                answers,
                additionals,
            }) => {
                metadata.authoritative = true;
                let message = builder.build(metadata, &answers, &[], &[], &additionals);
                response.send_response(message).await
            }
            Some(negative @ (Answer::NxDomain | Answer::NoData)) => {
                metadata.authoritative = true;
                if negative == Answer::NxDomain {
                    metadata.response_code = ResponseCode::NXDomain;
                }
                // The SOA tells resolvers how long to cache the negative answer.
                let message = builder.build(metadata, &[], &[], &soa, &[]);
                response.send_response(message).await
            }
            Some(Answer::Refused) => {
                metadata.response_code = ResponseCode::Refused;
                response
                    .send_response(builder.build_no_records(metadata))
                    .await
            }
            None => {
                response
                    .send_response(builder.build_no_records(metadata))
                    .await
            }
        };
        sent.unwrap_or_else(|error| {
            tracing::debug!(%error, "cannot send a DNS answer");
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        })
    }
}

impl ClusterDns {
    fn soa(&self) -> Record {
        let soa = SOA::new(
            fqdn(&format!("ns.dns.{}", self.domain)),
            fqdn(&format!("hostmaster.{}", self.domain)),
            // CoreDNS derives the serial from the time; any value will do.
            1,
            7200,
            1800,
            86400,
            NEGATIVE_TTL,
        );
        Record::from_rdata(fqdn(&self.domain), NEGATIVE_TTL, RData::SOA(soa))
    }

    /// Answers `qtype` at `name` from the cluster's current state.
    fn answer(&self, name: &str, qtype: RecordType) -> Answer {
        let name = normalize(name);
        if name != self.domain && !name.ends_with(&format!(".{}", self.domain)) {
            return Answer::Refused;
        }
        if name == self.domain {
            let apex = match qtype {
                RecordType::SOA => vec![self.soa()],
                RecordType::NS => vec![Record::from_rdata(
                    fqdn(&self.domain),
                    ANSWER_TTL,
                    RData::NS(NS(fqdn(&format!("ns.dns.{}", self.domain)))),
                )],
                _ => return Answer::NoData,
            };
            return Answer::Records {
                answers: apex,
                additionals: Vec::new(),
            };
        }
        let zone = self.records();
        let at: Vec<&ZoneRecord> = zone.iter().filter(|r| r.name == name).collect();
        if at.is_empty() {
            // A name above existing ones (`svc.cluster.local`,
            // `<ns>.svc.cluster.local`) exists, empty (RFC 8020).
            let below = format!(".{name}");
            return if zone.iter().any(|r| r.name.ends_with(&below)) {
                Answer::NoData
            } else {
                Answer::NxDomain
            };
        }
        let matching: Vec<&&ZoneRecord> = at.iter().filter(|r| r.rtype() == qtype).collect();
        if matching.is_empty() {
            return Answer::NoData;
        }
        // CoreDNS spreads SRV weight evenly over the records of an answer.
        let weight = u16::try_from(100 / matching.len()).unwrap_or(1).max(1);
        let answers = matching.iter().map(|r| r.to_record(weight)).collect();
        let targets: BTreeSet<&str> = matching.iter().filter_map(|r| r.srv_target()).collect();
        let additionals = zone
            .iter()
            .filter(|r| r.rtype() == RecordType::A && targets.contains(r.name.as_str()))
            .map(|r| r.to_record(weight))
            .collect();
        Answer::Records {
            answers,
            additionals,
        }
    }

    /// Every record of the zone right now, without the hidden ones. Built per
    /// query: the lab has a handful of Services, and the answers are then
    /// never older than the cluster state.
    fn records(&self) -> Vec<ZoneRecord> {
        let pods = self.state.pods();
        self.state
            .services()
            .iter()
            .flat_map(|svc| service_records(svc, &pods, &self.domain))
            .filter(|r| !self.control.hides(&r.name, r.endpoint.as_deref()))
            .collect()
    }
}

/// One record of the zone, with names normalized.
#[derive(Debug, Clone)]
struct ZoneRecord {
    name: String,
    data: ZoneData,
    /// The headless endpoint's own name this record stems from.
    endpoint: Option<String>,
}

#[derive(Debug, Clone)]
enum ZoneData {
    A(Ipv4Addr),
    Srv { port: u16, target: String },
}

impl ZoneRecord {
    fn rtype(&self) -> RecordType {
        match self.data {
            ZoneData::A(_) => RecordType::A,
            ZoneData::Srv { .. } => RecordType::SRV,
        }
    }

    fn srv_target(&self) -> Option<&str> {
        match &self.data {
            ZoneData::Srv { target, .. } => Some(target),
            ZoneData::A(_) => None,
        }
    }

    fn to_record(&self, srv_weight: u16) -> Record {
        let rdata = match &self.data {
            ZoneData::A(ip) => RData::A(A(*ip)),
            ZoneData::Srv { port, target } => {
                RData::SRV(SRV::new(0, srv_weight, *port, fqdn(target)))
            }
        };
        Record::from_rdata(fqdn(&self.name), ANSWER_TTL, rdata)
    }
}

/// `name` as an absolute DNS name. Names here are built from Kubernetes
/// object names, which are valid DNS labels; should one not be, the record
/// lands at the root, where no query for the zone can reach it.
fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{name}.")).unwrap_or_else(|_| Name::root())
}

/// The records CoreDNS serves for one Service.
fn service_records(svc: &Service, pods: &[Pod], domain: &str) -> Vec<ZoneRecord> {
    let (Some(name), Some(ns), Some(spec)) = (
        svc.metadata.name.as_deref(),
        svc.metadata.namespace.as_deref(),
        svc.spec.as_ref(),
    ) else {
        return Vec::new();
    };
    let base = format!("{name}.{ns}.svc.{domain}").to_ascii_lowercase();
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    let mut add = |name: String, data: ZoneData, endpoint: Option<&str>| {
        out.push(ZoneRecord {
            name,
            data,
            endpoint: endpoint.map(str::to_owned),
        });
    };
    match spec.cluster_ip.as_deref() {
        Some("None") => {
            for ip in endpoints(spec.selector.as_ref(), ns, pods) {
                let host = format!("{}.{base}", ip.to_string().replace('.', "-"));
                add(base.clone(), ZoneData::A(ip), Some(&host));
                add(host.clone(), ZoneData::A(ip), Some(&host));
                for (srv, port) in ports.iter().filter_map(|p| srv_name(p, &base)) {
                    let target = host.clone();
                    add(srv, ZoneData::Srv { port, target }, Some(&host));
                }
            }
        }
        Some(ip) => {
            // Dual-stack and IPv6 ClusterIPs are outside the lab's plan.
            let Ok(ip) = ip.parse::<Ipv4Addr>() else {
                return out;
            };
            add(base.clone(), ZoneData::A(ip), None);
            for (srv, port) in ports.iter().filter_map(|p| srv_name(p, &base)) {
                let target = base.clone();
                add(srv, ZoneData::Srv { port, target }, None);
            }
        }
        None => {}
    }
    out
}

/// `_<port>._<proto>.<base>` and the port number, for named ports.
fn srv_name(port: &ServicePort, base: &str) -> Option<(String, u16)> {
    let name = port.name.as_deref().filter(|n| !n.is_empty())?;
    let proto = port
        .protocol
        .as_deref()
        .unwrap_or("TCP")
        .to_ascii_lowercase();
    let number = u16::try_from(port.port).ok()?;
    Some((
        format!("_{}._{proto}.{base}", name.to_ascii_lowercase()),
        number,
    ))
}

/// The IPv4 addresses of the Running, not terminating pods of namespace
/// `ns` matching `selector` (a Service without a selector has none).
fn endpoints<'a>(
    selector: Option<&'a std::collections::BTreeMap<String, String>>,
    ns: &'a str,
    pods: &'a [Pod],
) -> impl Iterator<Item = Ipv4Addr> + 'a {
    let selector = selector.filter(|s| !s.is_empty());
    pods.iter()
        .filter(move |p| {
            let Some(selector) = selector else {
                return false;
            };
            let labels = p.metadata.labels.as_ref();
            p.metadata.namespace.as_deref() == Some(ns)
                && p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && selector
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::cluster::{pod, service};

    const AGENTS: &str = "agents.netmatrix.svc.cluster.local.";
    const AGENTS_SRV: &str = "_metrics._tcp.agents.netmatrix.svc.cluster.local.";

    fn handler() -> ClusterDns {
        let state = ClusterState::new();
        state.apply_service(service(
            "default",
            "kubernetes",
            Some("10.96.0.1"),
            &[("https", 443, "TCP")],
            &[],
        ));
        state.apply_service(service(
            "netmatrix",
            "agents",
            None,
            &[("metrics", 9090, "TCP")],
            &[("app", "agent")],
        ));
        for (name, ip) in [
            ("a1", "10.244.1.2"),
            ("a2", "10.244.2.2"),
            ("a3", "10.244.3.2"),
        ] {
            state.apply_pod(pod(
                "netmatrix",
                name,
                "node-1",
                ip,
                &[("app", "agent")],
                false,
            ));
        }
        state.set_pod_phase("netmatrix", "a3", "Pending");
        state.apply_pod(pod(
            "netmatrix",
            "other",
            "node-1",
            "10.244.1.3",
            &[("app", "x")],
            false,
        ));
        ClusterDns {
            state,
            domain: "cluster.local".into(),
            control: DnsControl::default(),
        }
    }

    fn count(a: &Answer) -> (usize, usize) {
        match a {
            Answer::Records {
                answers,
                additionals,
            } => (answers.len(), additionals.len()),
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn answers_like_coredns() {
        let dns = handler();
        let a = |name: &str| dns.answer(name, RecordType::A);
        assert_eq!(count(&a("kubernetes.default.svc.cluster.local.")), (1, 0));
        assert_eq!(count(&a("KUBERNETES.default.svc.cluster.local")), (1, 0));
        // Running pods only: a3 is Pending.
        assert_eq!(count(&a(AGENTS)), (2, 0));
        assert_eq!(count(&dns.answer(AGENTS_SRV, RecordType::SRV)), (2, 2));
        assert_eq!(
            count(&a("10-244-2-2.agents.netmatrix.svc.cluster.local.")),
            (1, 0)
        );
        assert_eq!(
            count(&dns.answer(
                "_https._tcp.kubernetes.default.svc.cluster.local.",
                RecordType::SRV
            )),
            (1, 1)
        );
        assert_eq!(a("missing.default.svc.cluster.local."), Answer::NxDomain);
        assert_eq!(
            a("10-244-3-2.agents.netmatrix.svc.cluster.local."),
            Answer::NxDomain
        );
        assert_eq!(a("svc.cluster.local."), Answer::NoData);
        assert_eq!(a("netmatrix.svc.cluster.local."), Answer::NoData);
        assert_eq!(
            dns.answer("kubernetes.default.svc.cluster.local.", RecordType::AAAA),
            Answer::NoData
        );
        assert_eq!(
            count(&dns.answer("cluster.local.", RecordType::SOA)),
            (1, 0)
        );
        assert_eq!(a("example.com."), Answer::Refused);
        assert_eq!(a("notcluster.local."), Answer::Refused);
    }

    #[test]
    fn srv_records_point_at_the_endpoints() {
        let dns = handler();
        let Answer::Records {
            answers,
            additionals,
        } = dns.answer(AGENTS_SRV, RecordType::SRV)
        else {
            panic!("no SRV answer");
        };
        let mut targets: Vec<String> = answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(srv) => {
                    assert_eq!((srv.port, srv.weight, srv.priority), (9090, 50, 0));
                    srv.target.to_ascii()
                }
                other => panic!("not an SRV: {other:?}"),
            })
            .collect();
        targets.sort();
        assert_eq!(
            targets,
            [
                "10-244-1-2.agents.netmatrix.svc.cluster.local.",
                "10-244-2-2.agents.netmatrix.svc.cluster.local."
            ]
        );
        assert!(answers.iter().all(|r| r.ttl == ANSWER_TTL));
        assert!(additionals.iter().all(|r| r.record_type() == RecordType::A));
    }

    #[test]
    fn hidden_names_and_endpoints_disappear() {
        let dns = handler();
        dns.control
            .hide("10-244-2-2.agents.netmatrix.svc.cluster.local");
        assert_eq!(count(&dns.answer(AGENTS, RecordType::A)), (1, 0));
        assert_eq!(count(&dns.answer(AGENTS_SRV, RecordType::SRV)), (1, 1));
        dns.control.hide(AGENTS);
        assert_eq!(dns.answer(AGENTS, RecordType::A), Answer::NxDomain);
        assert_eq!(dns.answer(AGENTS_SRV, RecordType::SRV), Answer::NxDomain);
        dns.control.unhide("AGENTS.netmatrix.svc.cluster.local");
        dns.control
            .unhide("10-244-2-2.agents.netmatrix.svc.cluster.local.");
        assert_eq!(count(&dns.answer(AGENTS, RecordType::A)), (2, 0));
    }

    #[test]
    fn soa_carries_the_negative_ttl() {
        let soa = handler().soa();
        assert_eq!(soa.ttl, NEGATIVE_TTL);
        match &soa.data {
            RData::SOA(s) => assert_eq!(s.minimum, NEGATIVE_TTL),
            other => panic!("not an SOA: {other:?}"),
        }
    }
}
