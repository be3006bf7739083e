//! The lab's cluster DNS: a real DNS server (hickory-server) answering for
//! `cluster.local` the way CoreDNS's kubernetes plugin does, computed at
//! query time from the emulated cluster's Services and Pods:
//!
//! - `<svc>.<ns>.svc.<domain>` A: the ClusterIP, or for a headless Service the
//!   Running pods matching its selector;
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>` SRV: one record per endpoint
//!   (target `<ip-with-dashes>.<svc>...` and its A in the additional section);
//! - a name that does not exist: NXDOMAIN with the zone's SOA, whose minimum
//!   (negative-caching) TTL is 30 s like CoreDNS; an existing name with no
//!   record of the type asked: NODATA with the SOA; outside the zone: REFUSED.
//!
//! [`DnsControl`] lets faults make it answer SERVFAIL or hide a name.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::core::v1::{Pod, Service};

use crate::cluster::ClusterState;

/// TTL of positive answers (CoreDNS's default).
pub const ANSWER_TTL: u32 = 5;
/// SOA minimum: how long resolvers cache a negative answer (CoreDNS: 30 s).
pub const NEGATIVE_TTL: u32 = 30;

/// Switches shared between the lab (faults) and the running server.
#[derive(Clone, Default)]
pub struct DnsControl {
    servfail: Arc<AtomicBool>,
    hidden: Arc<Mutex<BTreeSet<String>>>,
    queries: Arc<AtomicU64>,
}

impl DnsControl {
    /// Answer SERVFAIL to every query (a broken CoreDNS or upstream).
    pub fn set_servfail(&self, on: bool) {
        self.servfail.store(on, Ordering::Relaxed);
    }

    /// Hides (or shows again) every record at a fully-qualified name, e.g. a
    /// headless Service whose record went missing.
    pub fn set_hidden(&self, fqdn: &str, hidden: bool) {
        let mut set = self.hidden.lock().unwrap_or_else(|e| e.into_inner());
        let name = fqdn.trim_end_matches('.').to_ascii_lowercase();
        if hidden {
            set.insert(name);
        } else {
            set.remove(&name);
        }
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn is_hidden(&self, name: &str) -> bool {
        self.hidden
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }
}

/// Serves DNS on the given sockets until the task is dropped.
pub async fn serve(
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    state: ClusterState,
    domain: &str,
    control: DnsControl,
) -> std::io::Result<()> {
    let handler = ClusterDns {
        state,
        domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        control,
    };
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    server
        .block_until_done()
        .await
        .map_err(std::io::Error::other)
}

struct ClusterDns {
    state: ClusterState,
    domain: String,
    control: DnsControl,
}

/// What a name resolves to.
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
        self.control.queries.fetch_add(1, Ordering::Relaxed);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
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
        let answer = if self.control.servfail.load(Ordering::Relaxed) {
            metadata.response_code = ResponseCode::ServFail;
            None
        } else if let Some(query) = request.queries.queries().first() {
            Some(self.answer(&query.name().to_string(), query.query_type()))
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
                response
                    .send_response(builder.build(metadata, &answers, &[], &[], &additionals))
                    .await
            }
            Some(negative @ (Answer::NxDomain | Answer::NoData)) => {
                if negative == Answer::NxDomain {
                    metadata.response_code = ResponseCode::NXDomain;
                }
                // The SOA tells resolvers how long to cache the negative answer.
                response
                    .send_response(builder.build(metadata, &[], &[], &soa, &[]))
                    .await
            }
            Some(Answer::Refused) => {
                metadata.response_code = ResponseCode::Refused;
                metadata.authoritative = false;
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
        let zone = fqdn(&self.domain);
        let soa = SOA::new(
            fqdn(&format!("ns.dns.{}", self.domain)),
            fqdn(&format!("hostmaster.{}", self.domain)),
            1,
            7200,
            1800,
            86400,
            NEGATIVE_TTL,
        );
        Record::from_rdata(zone, NEGATIVE_TTL, RData::SOA(soa))
    }

    /// Answers `qtype` at `name` from the cluster's current state.
    fn answer(&self, name: &str, qtype: RecordType) -> Answer {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name != self.domain && !name.ends_with(&format!(".{}", self.domain)) {
            return Answer::Refused;
        }
        if self.control.is_hidden(&name) {
            return Answer::NxDomain;
        }
        let zone = self.records();
        let at: Vec<&ZoneRecord> = zone.iter().filter(|r| r.name == name).collect();
        if at.is_empty() {
            // An empty non-terminal (`svc.cluster.local`, `ns.svc...`) exists.
            let parent = zone.iter().any(|r| r.name.ends_with(&format!(".{name}")));
            return if parent || name == self.domain {
                Answer::NoData
            } else {
                Answer::NxDomain
            };
        }
        let answers: Vec<Record> = at
            .iter()
            .filter(|r| r.rtype() == qtype)
            .map(|r| r.to_record())
            .collect();
        if answers.is_empty() {
            return Answer::NoData;
        }
        // SRV targets' addresses go in the additional section.
        let targets: BTreeSet<&str> = at.iter().filter_map(|r| r.srv_target()).collect();
        let additionals = zone
            .iter()
            .filter(|r| targets.contains(r.name.as_str()) && r.rtype() == RecordType::A)
            .map(ZoneRecord::to_record)
            .collect();
        Answer::Records {
            answers,
            additionals,
        }
    }

    /// Every record of the zone right now.
    fn records(&self) -> Vec<ZoneRecord> {
        let pods = self.state.pods();
        let mut out = Vec::new();
        for svc in self.state.services() {
            out.extend(service_records(&svc, &pods, &self.domain));
        }
        out
    }
}

#[derive(Debug, Clone)]
struct ZoneRecord {
    name: String,
    data: ZoneData,
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

    fn to_record(&self) -> Record {
        let rdata = match &self.data {
            ZoneData::A(ip) => RData::A(A(*ip)),
            ZoneData::Srv { port, target } => RData::SRV(SRV::new(0, 100, *port, fqdn(target))),
        };
        Record::from_rdata(fqdn(&self.name), ANSWER_TTL, rdata)
    }
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{name}.")).unwrap_or_else(|_| Name::root())
}

/// The records CoreDNS would serve for one Service.
fn service_records(svc: &Service, pods: &[Pod], domain: &str) -> Vec<ZoneRecord> {
    let (Some(name), Some(ns), Some(spec)) = (
        svc.metadata.name.as_deref(),
        svc.metadata.namespace.as_deref(),
        svc.spec.as_ref(),
    ) else {
        return Vec::new();
    };
    let base = format!("{name}.{ns}.svc.{domain}");
    let mut out = Vec::new();
    let ports = spec.ports.clone().unwrap_or_default();
    let srv_name = |p: &k8s_openapi::api::core::v1::ServicePort| {
        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
        p.name
            .as_deref()
            .map(|port| format!("_{port}._{proto}.{base}"))
    };
    match spec.cluster_ip.as_deref() {
        Some("None") => {
            let selector = spec.selector.clone().unwrap_or_default();
            let endpoints = pods.iter().filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.metadata.deletion_timestamp.is_none()
                    && !selector.is_empty()
                    && selector
                        .iter()
                        .all(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
            });
            for ip in endpoints.filter_map(|p| {
                p.status
                    .as_ref()?
                    .pod_ip
                    .as_deref()?
                    .parse::<Ipv4Addr>()
                    .ok()
            }) {
                let host = format!("{}.{base}", ip.to_string().replace('.', "-"));
                out.push(ZoneRecord {
                    name: base.clone(),
                    data: ZoneData::A(ip),
                });
                out.push(ZoneRecord {
                    name: host.clone(),
                    data: ZoneData::A(ip),
                });
                for port in &ports {
                    if let Some(srv) = srv_name(port) {
                        let target_port = u16::try_from(port.port).unwrap_or(0);
                        out.push(ZoneRecord {
                            name: srv,
                            data: ZoneData::Srv {
                                port: target_port,
                                target: host.clone(),
                            },
                        });
                    }
                }
            }
        }
        Some(ip) => {
            if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                out.push(ZoneRecord {
                    name: base.clone(),
                    data: ZoneData::A(ip),
                });
                for port in &ports {
                    if let Some(srv) = srv_name(port) {
                        let target_port = u16::try_from(port.port).unwrap_or(0);
                        out.push(ZoneRecord {
                            name: srv,
                            data: ZoneData::Srv {
                                port: target_port,
                                target: base.clone(),
                            },
                        });
                    }
                }
            }
        }
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{pod, service};

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
        for (name, ip) in [("a1", "10.244.1.2"), ("a2", "10.244.2.2")] {
            state.apply_pod(pod(
                "netmatrix",
                name,
                "node-1",
                ip,
                &[("app", "agent")],
                false,
            ));
        }
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
        assert_eq!(
            count(&dns.answer("kubernetes.default.svc.cluster.local.", RecordType::A)),
            (1, 0)
        );
        assert_eq!(
            count(&dns.answer("agents.netmatrix.svc.cluster.local.", RecordType::A)),
            (2, 0)
        );
        assert_eq!(
            count(&dns.answer(
                "_metrics._tcp.agents.netmatrix.svc.cluster.local.",
                RecordType::SRV
            )),
            (2, 2)
        );
        assert_eq!(
            count(&dns.answer(
                "10-244-2-2.agents.netmatrix.svc.cluster.local.",
                RecordType::A
            )),
            (1, 0)
        );
        assert_eq!(
            dns.answer("missing.default.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            dns.answer("svc.cluster.local.", RecordType::A),
            Answer::NoData
        );
        assert_eq!(
            dns.answer("kubernetes.default.svc.cluster.local.", RecordType::SRV),
            Answer::NoData
        );
        assert_eq!(dns.answer("example.com.", RecordType::A), Answer::Refused);
    }

    #[test]
    fn hidden_names_disappear() {
        let dns = handler();
        dns.control
            .set_hidden("agents.netmatrix.svc.cluster.local", true);
        assert_eq!(
            dns.answer("agents.netmatrix.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        dns.control
            .set_hidden("agents.netmatrix.svc.cluster.local.", false);
        assert_eq!(
            count(&dns.answer("agents.netmatrix.svc.cluster.local.", RecordType::A)),
            (2, 0)
        );
    }

    #[test]
    fn soa_carries_the_negative_ttl() {
        let soa = handler().soa();
        match &soa.data {
            RData::SOA(s) => assert_eq!(s.minimum, NEGATIVE_TTL),
            other => panic!("not an SOA: {other:?}"),
        }
    }
}
