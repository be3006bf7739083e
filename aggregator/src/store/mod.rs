//! The latest report of every agent, and the validation that guards it.
//!
//! A report is only stored after it parsed, passed [`Report::validate`], its
//! sender's token ([`crate::auth`]) named a running agent pod that matches the
//! body, its time is plausible by the aggregator's clock, and it is not older
//! than what is held for that pod. A rejected report changes nothing: the
//! matrix keeps showing the last good data until that ages out.
//!
//! The aggregator owns time: reports are ordered per pod by the agent's round
//! counter while the held report is fresh, and by arrival otherwise (a
//! restarted container counts from 1 again); freshness is judged on the
//! receive time. The agent's own clock is data, bounded
//! ([`TimeBounds`]), and never decides what is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use netmatrix_api::facts::NodeFacts;
use netmatrix_api::validate::{Invalid, Limits};
use netmatrix_api::{NetworkMode, Report, protobuf, reasons};

pub(crate) mod held;

pub use held::{Counts, Echoes, HeldPeer, no_pod};

use crate::auth::{AuthError, Caller, Sender, truncated};
use crate::history::{History, RoundSample};
use crate::inventory::{Inventory, SenderMismatch};

/// A report as received, with the aggregator's receive time (agents' clocks
/// are not trusted for freshness) and who sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReport {
    /// The report, its peers moved to `peers`.
    pub report: Report,
    /// Its peers, each placed on a node, held compact.
    pub peers: Vec<HeldPeer>,
    pub received_unix_ms: u64,
    /// The sending pod's UID when verified (its name otherwise): reports
    /// are ordered per pod.
    pub sender: String,
    /// The host-network agent pod that relayed it, if it was relayed.
    pub relayed_by: Option<String>,
}

impl StoredReport {
    pub fn age_ms(&self, now_unix_ms: u64) -> u64 {
        now_unix_ms.saturating_sub(self.received_unix_ms)
    }
}

/// Why a report was refused. [`Rejection::reason`] is the stable reason put in
/// the `ApiError` body and in `netmatrix_reports_rejected_total{reason}`;
/// [`Rejection::client_message`] is all the client hears; the `Display` text,
/// with the detail, is for the log (client-chosen parts escaped and cut).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("report body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("not a v1 report: {0}")]
    Malformed(String),
    #[error("invalid report: {0}")]
    Invalid(Invalid),
    /// Decided by the token alone ([`crate::auth`]).
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error("the aggregator has not listed nodes and agent pods from the Kubernetes API yet")]
    NotReady,
    #[error("round {round} of {pod} is not newer than round {held} held")]
    Stale { pod: String, round: u64, held: u64 },
    #[error("a report of type {0}, which this aggregator does not read")]
    UnsupportedType(String),
    #[error(
        "a protobuf report, whose peers only the Kubernetes API names, and the aggregator runs without it"
    )]
    NamesNeeded,
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => reasons::TOO_LARGE,
            Rejection::Malformed(_) | Rejection::Invalid(_) => reasons::INVALID,
            Rejection::Auth(AuthError::Missing | AuthError::Rejected(_)) => {
                reasons::UNAUTHENTICATED
            }
            Rejection::Auth(AuthError::NotAnAgent(_)) | Rejection::Forbidden(_) => {
                reasons::FORBIDDEN
            }
            Rejection::Auth(AuthError::Unavailable(_)) => reasons::AUTH_UNAVAILABLE,
            Rejection::NotReady => reasons::NOT_READY,
            Rejection::Stale { .. } => reasons::STALE,
            Rejection::UnsupportedType(_) | Rejection::NamesNeeded => {
                reasons::UNSUPPORTED_MEDIA_TYPE
            }
        }
    }

    /// The short answer for the client: never a value it sent, nor anything
    /// the Kubernetes API knows.
    pub fn client_message(&self) -> String {
        match self {
            Rejection::TooLarge { limit } => format!(
                "too-large: the report exceeds {limit} bytes; raise --max-body on the aggregator"
            ),
            Rejection::Malformed(path) => format!("invalid: {path}"),
            Rejection::Invalid(invalid) => format!("invalid: {invalid}"),
            Rejection::Auth(auth) => auth.client_message().to_owned(),
            Rejection::Forbidden(_) => {
                "forbidden: the report does not match the agent pod of its token".to_owned()
            }
            Rejection::NotReady => {
                "not-ready: the aggregator has not synced with the Kubernetes API yet; retry next round"
                    .to_owned()
            }
            Rejection::Stale { .. } => {
                "stale: a newer report of this pod is held; late retries are dropped".to_owned()
            }
            Rejection::UnsupportedType(_) => format!(
                "unsupported-media-type: send application/json or {}",
                netmatrix_api::protobuf::REPORT_PROTOBUF
            ),
            Rejection::NamesNeeded => "unsupported-media-type: this aggregator runs without the Kubernetes API (--no-kubernetes) and cannot name peers given by address; send application/json".to_owned(),
        }
    }
}

/// How far a report's start time may stray from the aggregator's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    /// The aggregator's interval: a round cannot start more than two of
    /// them in the future (a clock ahead by more is broken, or a forgery
    /// trying to pin the row), and a held report orders its pod's next
    /// ones for two of them.
    pub interval_ms: u64,
    /// A report of a round that started longer ago than this is refused.
    pub max_age_ms: u64,
}

impl Default for TimeBounds {
    fn default() -> Self {
        TimeBounds {
            interval_ms: 5000,
            max_age_ms: MAX_REPORT_AGE_MS,
        }
    }
}

/// A report describes the last round: ten minutes is far beyond any
/// delivery delay, and within any sane clock skew.
pub const MAX_REPORT_AGE_MS: u64 = 10 * 60 * 1000;

impl TimeBounds {
    fn check(&self, started_unix_ms: u64, now_unix_ms: u64) -> Result<(), Rejection> {
        let field = "started_unix_ms".to_owned();
        if started_unix_ms > now_unix_ms.saturating_add(self.interval_ms.saturating_mul(2)) {
            return Err(Rejection::Invalid(Invalid {
                field,
                problem: "ahead of the aggregator's clock by more than two intervals; check the node's clock (NTP)",
            }));
        }
        if started_unix_ms < now_unix_ms.saturating_sub(self.max_age_ms) {
            return Err(Rejection::Invalid(Invalid {
                field,
                problem: "more than 10 minutes behind the aggregator's clock; check the node's clock (NTP)",
            }));
        }
        Ok(())
    }
}

/// What an accepted report changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub node: String,
    pub network: NetworkMode,
    pub round: u64,
    /// Peers without a node name whose IP no node claims; they were dropped.
    pub unmapped_peers: usize,
    /// Ask the host agent for its node's facts with the next report.
    pub want_facts: bool,
}

/// Latest report per (node, network mode), and the last rounds' echo
/// counts per probed peer (see [`History`]).
#[derive(Debug, Default)]
pub struct ReportStore {
    latest: BTreeMap<(String, NetworkMode), StoredReport>,
    time: TimeBounds,
    /// Every node that ever reported: the expected nodes under `--no-kubernetes`.
    seen_nodes: BTreeSet<String>,
    history: History,
    /// Each node's latest network facts from its host agent, with their
    /// digest (sent on request, so kept apart from the reports).
    facts: BTreeMap<String, (String, Arc<NodeFacts>)>,
    /// The digest of each node's facts in its host agent's latest report.
    digests: BTreeMap<String, String>,
    /// Nodes whose facts the last evaluation's network conditions read.
    facts_wanted: BTreeSet<String>,
    /// Nodes whose facts a client asked for (`explain`), until when (unix
    /// ms): kept fresh for a while, as the conditions' ones are.
    facts_asked: BTreeMap<String, u64>,
}

/// How long a client's request for a node's facts keeps them fresh.
const FACTS_ASKED_MS: u64 = 60_000;
/// At most this many nodes are asked for by clients at once (the oldest
/// request gives way): reading facts costs a host agent little, sending
/// them a few KB per node, and any client may ask.
const MAX_FACTS_ASKED: usize = 64;

/// What the aggregator holds of a node's network facts.
#[derive(Debug, Clone)]
pub enum FactsLookup {
    /// The last facts received (up to date, or asked for again).
    Held(Arc<NodeFacts>),
    /// Its host agent reports but has not sent them yet: asked for, they
    /// come with its next report.
    Asked,
    /// No host agent reports them for this node.
    NoHostAgent,
}

/// How a report body is encoded (its `Content-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportEncoding {
    /// `application/json`, and bodies without a type (`curl -d`).
    #[default]
    Json,
    /// [`protobuf::REPORT_PROTOBUF`]: what agents send.
    Protobuf,
}

impl ReportEncoding {
    /// The encoding a `Content-Type` names; parameters (`; charset=utf-8`)
    /// and case are ignored.
    pub fn of_content_type(content_type: Option<&[u8]>) -> Result<ReportEncoding, Rejection> {
        let Some(raw) = content_type else {
            return Ok(ReportEncoding::Json);
        };
        let text = String::from_utf8_lossy(raw);
        let essence = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "" | "application/json" => Ok(ReportEncoding::Json),
            protobuf::REPORT_PROTOBUF => Ok(ReportEncoding::Protobuf),
            _ => Err(Rejection::UnsupportedType(truncated(&essence))),
        }
    }
}

/// Parses and validates a report body. Done before taking the store's
/// lock: parsing a large body must not hold up other agents.
pub fn parse(body: &[u8], encoding: ReportEncoding, limits: &Limits) -> Result<Report, Rejection> {
    let mut report: Report = match encoding {
        ReportEncoding::Json => serde_json::from_slice(body).map_err(|_| malformed(body))?,
        ReportEncoding::Protobuf => protobuf::decode_report(body, limits.max_peers)
            .map_err(|e| Rejection::Malformed(e.to_string()))?,
    };
    report.validate(limits).map_err(Rejection::Invalid)?;
    report.truncate_messages();
    // Node facts get our own digest (what the agent claims is only a hint
    // that its copy changed), here rather than under the store's lock.
    if let Some(facts) = &report.facts {
        report.facts_digest = Some(netmatrix_api::facts::digest(facts));
    }
    Ok(report)
}

/// Where a body stops being a v1 report, as a field path (`peers[3].icmp.sent`)
/// and the kind of problem, without quoting the body. Parsed a second time,
/// with path tracking, only for bodies that failed: the common case pays
/// nothing for it.
fn malformed(body: &[u8]) -> Rejection {
    let mut de = serde_json::Deserializer::from_slice(body);
    let problem = match serde_path_to_error::deserialize::<_, Report>(&mut de) {
        Ok(_) => return Rejection::Malformed("body: trailing data after the report".into()),
        Err(error) => error,
    };
    let kind = match problem.inner().classify() {
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Eof => "cut short",
        serde_json::error::Category::Data => "wrong type or value",
        serde_json::error::Category::Io => "unreadable",
    };
    let path = problem.path().to_string();
    let path = if path == "." { "body".to_owned() } else { path };
    Rejection::Malformed(format!("{}: {kind}", truncated(&path)))
}

impl ReportStore {
    /// A store keeping `history_rounds` rounds per peer (at least one).
    pub fn with_history(history_rounds: usize) -> Self {
        ReportStore {
            history: History::new(history_rounds),
            ..Default::default()
        }
    }

    /// Sets how far reports' start times may stray from the aggregator's clock.
    pub fn with_time_bounds(mut self, time: TimeBounds) -> Self {
        self.time = time;
        self
    }

    /// Parses, verifies and stores one report body.
    pub fn ingest(
        &mut self,
        body: &[u8],
        sender: &Sender,
        inventory: Option<&Inventory>,
        now_unix_ms: u64,
    ) -> Result<Accepted, Rejection> {
        self.insert(
            parse(body, ReportEncoding::Json, &Limits::default())?,
            sender,
            inventory,
            now_unix_ms,
        )
    }

    /// Verifies and stores a parsed report.
    ///
    /// `inventory` is `None` when identities are not verified (`--no-kubernetes`).
    pub fn insert(
        &mut self,
        report: Report,
        sender: &Sender,
        inventory: Option<&Inventory>,
        now_unix_ms: u64,
    ) -> Result<Accepted, Rejection> {
        let sender_id = match verified(inventory, sender)? {
            Some((inventory, caller)) => {
                inventory
                    .verify_caller(caller, &report.agent)
                    .map_err(|mismatch| forbidden(caller, &report, &mismatch))?;
                caller.pod_uid.clone()
            }
            None => report.agent.pod.clone(),
        };
        self.store(report, sender_id, None, inventory, now_unix_ms)
    }

    /// Verifies and stores a pod-network agent's report relayed by
    /// `sender`, the host-network agent of the same node
    /// ([`Inventory::verify_relay`]). It is ordered with the pod agent's own
    /// reports: a round it delivered itself is not taken twice.
    pub fn insert_relayed(
        &mut self,
        report: Report,
        sender: &Sender,
        inventory: Option<&Inventory>,
        now_unix_ms: u64,
    ) -> Result<Accepted, Rejection> {
        let (sender_id, relayed_by) = match verified(inventory, sender)? {
            Some((inventory, caller)) => {
                let uid = inventory
                    .verify_relay(caller, &report.agent)
                    .map_err(|mismatch| forbidden(caller, &report, &mismatch))?;
                (uid, caller.pod.clone())
            }
            None if report.agent.network != NetworkMode::Pod => {
                return Err(Rejection::Forbidden(
                    "only a pod-network agent's report can be relayed".into(),
                ));
            }
            None => (
                report.agent.pod.clone(),
                format!("the host agent of {} (unverified)", report.agent.node),
            ),
        };
        self.store(report, sender_id, Some(relayed_by), inventory, now_unix_ms)
    }

    fn store(
        &mut self,
        mut report: Report,
        sender_id: String,
        relayed_by: Option<String>,
        inventory: Option<&Inventory>,
        now_unix_ms: u64,
    ) -> Result<Accepted, Rejection> {
        self.time.check(report.started_unix_ms, now_unix_ms)?;

        let key = (report.agent.node.clone(), report.agent.network);
        if let Some(held) = self.latest.get(&key) {
            // A pod's reports are ordered by its round counter while the
            // held one is fresh; a replacement pod, or a container that
            // restarted (counting from 1 again) after a pause, always wins.
            let recent = held.age_ms(now_unix_ms) < self.time.interval_ms.saturating_mul(2);
            if held.sender == sender_id && recent && report.round <= held.report.round {
                return Err(Rejection::Stale {
                    pod: report.agent.pod.clone(),
                    round: report.round,
                    held: held.report.round,
                });
            }
        }

        // Only a host agent reads its node's network; facts in a pod
        // agent's report are not its to give.
        let facts = report.facts.take();
        let digest = report.facts_digest.take();
        let mut want_facts = false;
        if report.agent.network == NetworkMode::Host {
            let node = &report.agent.node;
            if let Some(digest) = digest {
                self.digests.insert(node.clone(), digest.clone());
                // With facts, `parse` gave them our own digest.
                if let Some(facts) = facts {
                    self.facts.insert(node.clone(), (digest, Arc::new(facts)));
                }
            }
            let asked = self
                .facts_asked
                .get(node)
                .is_some_and(|&until| until > now_unix_ms);
            want_facts = (asked || self.facts_wanted.contains(node)) && !self.facts_fresh(node);
        }
        let (peers, unmapped_peers) = self.place_peers(&mut report, inventory);
        let accepted = Accepted {
            node: report.agent.node.clone(),
            network: report.agent.network,
            round: report.round,
            unmapped_peers,
            want_facts,
        };
        self.seen_nodes.insert(report.agent.node.clone());
        let samples = peers
            .iter()
            .map(|p| (p.ip, Arc::clone(&p.node), RoundSample::of(p)));
        self.history
            .record(&report.agent.node, report.agent.network, samples);
        self.latest.insert(
            key,
            StoredReport {
                report,
                peers,
                received_unix_ms: now_unix_ms,
                sender: sender_id,
                relayed_by,
            },
        );
        Ok(accepted)
    }

    /// The report's peers, taken out of it and held compact, each placed
    /// on a node. Peers found through DNS, and every peer of a protobuf
    /// report, carry no names: they are placed by IP through the inventory
    /// (agent and target pod IPs, node pod CIDRs), or, without one, through
    /// the addresses of agents that have reported. Unplaceable peers are
    /// dropped (counted in the second value), since a cell needs a
    /// destination node.
    fn place_peers(
        &self,
        report: &mut Report,
        inventory: Option<&Inventory>,
    ) -> (Vec<HeldPeer>, usize) {
        let parsed = std::mem::take(&mut report.peers);
        let before = parsed.len();
        let mut held = Vec::with_capacity(before);
        for mut peer in parsed {
            let placed = if peer.node.is_empty() {
                match inventory {
                    Some(inventory) => inventory.place(peer.ip),
                    None => self
                        .reporter_of_ip(peer.ip)
                        .map(|(node, pod)| (Arc::from(node), Arc::from(pod))),
                }
            } else {
                // The inventory's copy of the name when it agrees (shared,
                // like a protobuf peer's), else the report's.
                let known = inventory
                    .and_then(|inventory| inventory.place(peer.ip))
                    .map(|(node, _)| node)
                    .filter(|node| **node == *peer.node);
                let node = known.unwrap_or_else(|| Arc::from(std::mem::take(&mut peer.node)));
                Some((node, no_pod()))
            };
            let Some((node, placed_pod)) = placed else {
                continue;
            };
            // A name the report gave is kept.
            let pod = if peer.pod.is_empty() {
                placed_pod
            } else {
                Arc::from(std::mem::take(&mut peer.pod))
            };
            held.push(HeldPeer::new(peer, node, pod));
        }
        let dropped = before - held.len();
        (held, dropped)
    }

    fn reporter_of_ip(&self, ip: IpAddr) -> Option<(&str, &str)> {
        self.latest
            .values()
            .find(|s| s.report.agent.pod_ip == ip)
            .map(|s| (s.report.agent.node.as_str(), s.report.agent.pod.as_str()))
    }

    pub fn get(&self, node: &str, network: NetworkMode) -> Option<&StoredReport> {
        self.latest.get(&(node.to_owned(), network))
    }

    /// Every held report.
    pub fn reports(&self) -> impl Iterator<Item = &StoredReport> {
        self.latest.values()
    }

    pub fn seen_nodes(&self) -> &BTreeSet<String> {
        &self.seen_nodes
    }

    /// Whether the facts held for `node` are those its host agent last
    /// reported having.
    fn facts_fresh(&self, node: &str) -> bool {
        matches!(
            (self.facts.get(node), self.digests.get(node)),
            (Some((held, _)), Some(latest)) if held == latest
        )
    }

    /// Each node's latest facts. Out of date ones too: a node whose tables
    /// change every round (neighbour entries going `incomplete`, `failed`
    /// while a peer is unreachable) would otherwise flicker in and out of
    /// the causes; they are asked for again meanwhile.
    pub fn facts(&self) -> BTreeMap<String, Arc<NodeFacts>> {
        self.facts
            .iter()
            .map(|(node, (_, facts))| (node.clone(), Arc::clone(facts)))
            .collect()
    }

    /// The last facts received from `node`'s host agent, up to date or not.
    pub fn held_facts(&self, node: &str) -> Option<Arc<NodeFacts>> {
        self.facts.get(node).map(|(_, f)| Arc::clone(f))
    }

    /// A client's look at `node`'s facts: what is held, and its host agent
    /// asked to keep them up to date for a while.
    pub fn lookup_facts(&mut self, node: &str, now_unix_ms: u64) -> FactsLookup {
        if !self.digests.contains_key(node) && !self.facts.contains_key(node) {
            return FactsLookup::NoHostAgent;
        }
        self.facts_asked.retain(|_, until| *until > now_unix_ms);
        if self.facts_asked.len() >= MAX_FACTS_ASKED && !self.facts_asked.contains_key(node) {
            let oldest = self
                .facts_asked
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                self.facts_asked.remove(&oldest);
            }
        }
        self.facts_asked
            .insert(node.to_owned(), now_unix_ms.saturating_add(FACTS_ASKED_MS));
        match self.held_facts(node) {
            Some(facts) => FactsLookup::Held(facts),
            None => FactsLookup::Asked,
        }
    }

    /// Nodes whose facts are asked for when out of date.
    pub fn want_facts_of(&mut self, nodes: BTreeSet<String>) {
        self.facts_wanted = nodes;
    }

    /// The last rounds of every source's peers.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Drops the reports for which `keep` says no (nodes that left the
    /// cluster), with their history, so memory and the matrix follow the
    /// cluster's size.
    pub fn retain(&mut self, mut keep: impl FnMut(&StoredReport) -> bool) {
        let history = &mut self.history;
        let facts = &mut self.facts;
        let digests = &mut self.digests;
        self.latest.retain(|(node, network), stored| {
            let kept = keep(stored);
            if !kept {
                history.forget(node, *network);
                if *network == NetworkMode::Host {
                    facts.remove(node);
                    digests.remove(node);
                }
            }
            kept
        });
    }
}

/// The verified mode's first checks, shared by direct and relayed reports:
/// the inventory synced and an authenticated caller. `None` without an
/// inventory (`--no-kubernetes`: nothing is verified).
fn verified<'a>(
    inventory: Option<&'a Inventory>,
    sender: &'a Sender,
) -> Result<Option<(&'a Inventory, &'a Caller)>, Rejection> {
    match (inventory, sender) {
        (Some(inventory), _) if !inventory.synced => Err(Rejection::NotReady),
        (Some(inventory), Sender::Agent(caller)) => Ok(Some((inventory, caller))),
        (Some(_), Sender::Unverified) => Err(Rejection::Forbidden(
            "an unverified sender in verified mode".into(),
        )),
        (None, _) => Ok(None),
    }
}

/// A 403 whose log line says what the token and the body claimed (escaped)
/// and what the API says.
fn forbidden(caller: &Caller, report: &Report, mismatch: &SenderMismatch) -> Rejection {
    Rejection::Forbidden(format!(
        "token of pod {} ({}), report claims node {}, pod {}, IP {}: {mismatch}",
        truncated(&caller.pod),
        caller.service_account,
        truncated(&report.agent.node),
        truncated(&report.agent.pod),
        report.agent.pod_ip,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::inventory::{AgentPod, NodeInfo};
    use netmatrix_api::fixtures::{self, echoes, identity, peer};
    use netmatrix_api::{EchoResult, PeerResult};
    use serde_json::json;

    pub(crate) fn inventory(nodes: &[&str]) -> Inventory {
        let mut inv = Inventory {
            synced: true,
            ..Default::default()
        };
        let agent_pod = |name: String, ip: String, network| AgentPod {
            uid: format!("uid-{name}"),
            name,
            ips: vec![ip.parse().unwrap()],
            network,
            started_unix_ms: None,
            labels: Default::default(),
            named_ports: Default::default(),
        };
        for (i, node) in nodes.iter().enumerate() {
            inv.nodes.insert(
                node.to_string(),
                NodeInfo {
                    pod_cidrs: vec![format!("10.244.{}.0/24", i + 1).parse().unwrap()],
                    ready: true,
                    created_unix_ms: None,
                    unschedulable: false,
                },
            );
            inv.agents.insert(
                node.to_string(),
                vec![
                    agent_pod(
                        format!("agent-{node}"),
                        format!("10.244.{}.2", i + 1),
                        NetworkMode::Pod,
                    ),
                    agent_pod(
                        format!("host-agent-{node}"),
                        format!("198.18.0.{}", i + 1),
                        NetworkMode::Host,
                    ),
                ],
            );
        }
        inv
    }

    pub(crate) fn report(node_index: usize, node: &str, started: u64) -> Report {
        let pod_ip = format!("10.244.{}.2", node_index + 1);
        Report {
            round: started,
            started_unix_ms: started,
            ..fixtures::report(identity(node, &format!("agent-{node}"), &pod_ip))
        }
    }

    /// The host-network agent's report of node `node_index` (its IP is the node's).
    pub(crate) fn host_report(node_index: usize, node: &str, started: u64) -> Report {
        let mut r = report(node_index, node, started);
        r.agent.pod = format!("host-agent-{node}");
        r.agent.pod_ip = format!("198.18.0.{}", node_index + 1).parse().unwrap();
        r.agent.network = NetworkMode::Host;
        r
    }

    fn body(report: &Report) -> Vec<u8> {
        serde_json::to_vec(report).unwrap()
    }

    /// The sender a TokenReview gives for the agent pod `pod`.
    pub(crate) fn agent(pod: &str) -> Sender {
        Sender::Agent(Caller {
            service_account: "netmatrix-agent".into(),
            pod: pod.into(),
            pod_uid: format!("uid-{pod}"),
            node: None,
        })
    }

    /// Stores `r` as sent by its own pod (verified against `inv`, or
    /// unverified without one).
    fn ingest(
        store: &mut ReportStore,
        r: &Report,
        inv: Option<&Inventory>,
        now: u64,
    ) -> Result<Accepted, Rejection> {
        let sender = match inv {
            Some(_) => agent(&r.agent.pod),
            None => Sender::Unverified,
        };
        store.ingest(&body(r), &sender, inv, now)
    }

    /// Facts travel only when asked for: the digest says they changed, a
    /// condition reads them. Only a host agent's are taken.
    #[test]
    fn node_facts_are_asked_for_when_wanted_and_out_of_date() {
        use netmatrix_api::facts::{NodeFacts, digest};
        let mut store = ReportStore::default();
        let facts = NodeFacts {
            ip_forward: Some(false),
            ..Default::default()
        };
        let host = |round: u64, with: Option<&NodeFacts>, d: &str| {
            let mut r = report(0, "n1", 10 + round);
            r.round = round;
            r.agent.network = NetworkMode::Host;
            r.facts_digest = Some(d.to_owned());
            r.facts = with.cloned();
            r
        };
        let d = digest(&facts);
        let a = ingest(&mut store, &host(1, None, &d), None, 1000).unwrap();
        assert!(!a.want_facts, "nobody reads them yet");
        store.want_facts_of(["n1".to_owned()].into());
        let a = ingest(&mut store, &host(2, None, &d), None, 2000).unwrap();
        assert!(a.want_facts);
        assert!(store.facts().is_empty());
        let a = ingest(&mut store, &host(3, Some(&facts), &d), None, 3000).unwrap();
        assert!(!a.want_facts);
        assert_eq!(store.facts()["n1"].ip_forward, Some(false));
        // Changed on the node: asked for again, the last copy kept meanwhile.
        let a = ingest(&mut store, &host(4, None, "00000000000000ff"), None, 4000).unwrap();
        assert!(a.want_facts);
        assert_eq!(store.facts()["n1"].ip_forward, Some(false));
        // A pod agent's facts are not taken.
        let mut pod = report(1, "n2", 10);
        pod.facts = Some(facts.clone());
        ingest(&mut store, &pod, None, 5000).unwrap();
        assert!(store.held_facts("n2").is_none());
    }

    /// A client's look (`explain`) asks for a node's facts for a while, as
    /// a condition does; a node without a host agent is said to have none.
    #[test]
    fn a_clients_look_asks_for_facts_for_a_while() {
        use netmatrix_api::facts::{NodeFacts, digest};
        let mut store = ReportStore::default();
        let facts = NodeFacts::default();
        let d = digest(&facts);
        let mut host = host_report(0, "n1", 1);
        host.facts_digest = Some(d.clone());
        let a = ingest(&mut store, &host, None, 1000).unwrap();
        assert!(!a.want_facts);
        assert!(matches!(
            store.lookup_facts("n2", 1500),
            FactsLookup::NoHostAgent
        ));
        assert!(matches!(store.lookup_facts("n1", 1500), FactsLookup::Asked));
        host.round = 2;
        host.started_unix_ms = 2;
        let a = ingest(&mut store, &host, None, 2000).unwrap();
        assert!(a.want_facts, "asked by a client");
        host.round = 3;
        host.started_unix_ms = 3;
        host.facts = Some(facts.clone());
        let a = ingest(&mut store, &host, None, 3000).unwrap();
        assert!(!a.want_facts, "fresh");
        assert!(matches!(
            store.lookup_facts("n1", 3500),
            FactsLookup::Held(_)
        ));
        // Changed on the node, the ask long expired: not sent again.
        host.round = 4;
        host.started_unix_ms = 4;
        host.facts = None;
        host.facts_digest = Some("00000000000000ff".to_owned());
        let later = 3500 + FACTS_ASKED_MS + 1;
        let a = ingest(&mut store, &host, None, later).unwrap();
        assert!(!a.want_facts);
        // The number of nodes asked for at once is bounded.
        for i in 0..(MAX_FACTS_ASKED + 10) {
            let node = format!("m{i}");
            store.digests.insert(node.clone(), d.clone());
            store.lookup_facts(&node, later);
        }
        assert_eq!(store.facts_asked.len(), MAX_FACTS_ASKED);
    }

    #[test]
    fn accepts_a_verified_report() {
        let inv = inventory(&["n1", "n2"]);
        let mut store = ReportStore::default();
        let ok = ingest(&mut store, &report(0, "n1", 10), Some(&inv), 1000);
        assert_eq!(ok.unwrap().node, "n1");
        let held = store.get("n1", NetworkMode::Pod).unwrap();
        assert_eq!(held.received_unix_ms, 1000);
        assert_eq!(held.sender, "uid-agent-n1");
    }

    /// A protobuf report names its peers by address alone: the inventory
    /// names them (an agent, a companion, an address in a node's pod CIDR),
    /// and an address of no node's is dropped and counted.
    #[test]
    fn protobuf_peers_are_placed_by_address() {
        let mut inv = inventory(&["n1", "n2"]);
        inv.targets.push(crate::inventory::TargetPod {
            node: "n2".into(),
            pod: "companion-n2".into(),
            ip: "10.244.2.3".parse().unwrap(),
        });
        let mut r = report(0, "n1", 10);
        for ip in ["10.244.2.2", "10.244.2.3", "10.244.2.77", "192.0.2.1"] {
            r.peers.push(peer("claimed", "claimed", ip, echoes(3, 3)));
        }
        let body = protobuf::encode_report(&r);
        let parsed = parse(&body, ReportEncoding::Protobuf, &Limits::default()).unwrap();
        let mut store = ReportStore::default();
        let accepted = store
            .insert(parsed, &agent("agent-n1"), Some(&inv), 1000)
            .unwrap();
        assert_eq!(accepted.unmapped_peers, 1);
        let held = store.get("n1", NetworkMode::Pod).unwrap();
        let placed: Vec<(&str, &str)> = held.peers.iter().map(|p| (&*p.node, &*p.pod)).collect();
        assert_eq!(
            placed,
            [("n2", "agent-n2"), ("n2", "companion-n2"), ("n2", "")]
        );
    }

    #[test]
    fn content_types_choose_the_parser() {
        let of = |t: Option<&str>| ReportEncoding::of_content_type(t.map(str::as_bytes));
        assert_eq!(of(None).unwrap(), ReportEncoding::Json);
        assert_eq!(
            of(Some("application/json; charset=utf-8")).unwrap(),
            ReportEncoding::Json
        );
        assert_eq!(
            of(Some("Application/VND.netmatrix.report.v1+protobuf")).unwrap(),
            ReportEncoding::Protobuf
        );
        let refused = of(Some("text/plain")).unwrap_err();
        assert_eq!(refused.reason(), "unsupported-media-type");
        let garbage = parse(b"\x0a\xff", ReportEncoding::Protobuf, &Limits::default());
        assert_eq!(garbage.unwrap_err().reason(), "invalid");
    }

    #[test]
    fn rejections_change_nothing() {
        let inv = inventory(&["n1", "n2"]);
        let mut store = ReportStore::default();
        ingest(&mut store, &report(0, "n1", 10), Some(&inv), 1000).unwrap();
        let before = store.get("n1", NetworkMode::Pod).cloned();
        let n1 = agent("agent-n1");

        let malformed = store.ingest(b"{\"agent\": 3}", &n1, Some(&inv), 2000);
        let err = malformed.unwrap_err();
        assert_eq!(err.reason(), "invalid");
        assert_eq!(err.client_message(), "invalid: agent: wrong type or value");
        let wrong_type = json!({"agent": {"node": "n1", "pod": "agent-n1", "pod_ip": "10.244.1.2"},
            "round": "three", "started_unix_ms": 20, "interval_ms": 5000});
        let err = store
            .ingest(wrong_type.to_string().as_bytes(), &n1, Some(&inv), 2000)
            .unwrap_err();
        assert_eq!(err.client_message(), "invalid: round: wrong type or value");
        let err = store
            .ingest(b"{\"agent\"", &n1, Some(&inv), 2000)
            .unwrap_err();
        assert_eq!(err.client_message(), "invalid: body: cut short");

        // n1's agent, with its own token, pretending to be n2's.
        let mut impostor = report(0, "n1", 20);
        impostor.agent.node = "n2".into();
        let err = store
            .ingest(&body(&impostor), &n1, Some(&inv), 2000)
            .unwrap_err();
        assert_eq!(err.reason(), "forbidden");
        assert!(err.to_string().contains("runs on node n1"), "{err}");
        assert!(
            !err.client_message().contains("n1"),
            "{}",
            err.client_message()
        );
        // n1's token, n2's whole identity in the body.
        let err = store
            .ingest(&body(&report(1, "n2", 20)), &n1, Some(&inv), 2000)
            .unwrap_err();
        assert_eq!(err.reason(), "forbidden");

        let err = ingest(&mut store, &report(0, "n1", 5), Some(&inv), 2000).unwrap_err();
        assert_eq!(err.reason(), "stale");

        assert_eq!(store.get("n1", NetworkMode::Pod).cloned(), before);
        assert!(store.get("n2", NetworkMode::Pod).is_none());
    }

    #[test]
    fn refuses_everyone_until_the_inventory_synced() {
        let mut inv = inventory(&["n1"]);
        inv.synced = false;
        let err = ingest(
            &mut ReportStore::default(),
            &report(0, "n1", 1),
            Some(&inv),
            1,
        )
        .unwrap_err();
        assert_eq!(err, Rejection::NotReady);
        inv.synced = true;
        let unverified = ReportStore::default()
            .ingest(
                &body(&report(0, "n1", 1)),
                &Sender::Unverified,
                Some(&inv),
                1,
            )
            .unwrap_err();
        assert_eq!(unverified.reason(), "forbidden");
    }

    #[test]
    fn a_replacement_pod_is_not_stale() {
        let mut inv = inventory(&["n1"]);
        let mut store = ReportStore::default();
        ingest(&mut store, &report(0, "n1", 100), Some(&inv), 100).unwrap();
        let pods = inv.agents.get_mut("n1").unwrap();
        pods[0].name = "agent-n1-new".into();
        pods[0].uid = "uid-agent-n1-new".into();
        let mut new = report(0, "n1", 50);
        new.agent.pod = "agent-n1-new".into();
        new.round = 1;
        assert!(ingest(&mut store, &new, Some(&inv), 200).is_ok());
    }

    #[test]
    fn the_aggregator_orders_a_pods_reports_by_round_not_by_its_clock() {
        let inv = inventory(&["n1"]);
        let bounds = TimeBounds {
            interval_ms: 1000,
            max_age_ms: MAX_REPORT_AGE_MS,
        };
        let mut store = ReportStore::default().with_time_bounds(bounds);
        let now = 10_000_000;
        let at = |round: u64, started: u64| {
            let mut r = report(0, "n1", started);
            r.round = round;
            r
        };
        ingest(&mut store, &at(10, now), Some(&inv), now).unwrap();
        // The node's clock steps back a minute: the next round is accepted.
        assert!(ingest(&mut store, &at(11, now - 60_000), Some(&inv), now + 1000).is_ok());
        // A late retry of an earlier round is not.
        let late = ingest(&mut store, &at(10, now), Some(&inv), now + 1100);
        assert_eq!(late.unwrap_err().reason(), "stale");
        // The container restarts and counts from 1 again: accepted once the
        // last report is two intervals old.
        assert!(ingest(&mut store, &at(1, now + 1200), Some(&inv), now + 1200).is_err());
        assert!(ingest(&mut store, &at(1, now + 3100), Some(&inv), now + 3100).is_ok());
    }

    #[test]
    fn start_times_are_bounded_by_the_aggregators_clock() {
        let inv = inventory(&["n1"]);
        let bounds = TimeBounds {
            interval_ms: 5000,
            max_age_ms: MAX_REPORT_AGE_MS,
        };
        let now = 1_000_000_000;
        for (started, ok) in [
            (now, true),
            (now + 9_000, true),
            (now + 11_000, false),
            (u64::MAX, false),
            (now - MAX_REPORT_AGE_MS + 1000, true),
            (now - MAX_REPORT_AGE_MS - 1000, false),
            (0, false),
        ] {
            let mut store = ReportStore::default().with_time_bounds(bounds);
            let got = ingest(&mut store, &report(0, "n1", started), Some(&inv), now);
            assert_eq!(got.is_ok(), ok, "started {started}: {got:?}");
            if let Err(err) = got {
                assert_eq!(
                    err.client_message().split(':').nth(1),
                    Some(" started_unix_ms")
                );
                assert!(store.get("n1", NetworkMode::Pod).is_none());
            }
        }
    }

    #[test]
    fn places_peers_without_node_by_ip() {
        let inv = inventory(&["n1", "n2"]);
        let mut r = report(0, "n1", 1);
        for ip in ["10.244.2.2", "10.244.2.7", "192.0.2.9"] {
            r.peers.push(peer("", "p", ip, EchoResult::default()));
        }
        let mut store = ReportStore::default();
        let accepted = ingest(&mut store, &r, Some(&inv), 1).unwrap();
        assert_eq!(accepted.unmapped_peers, 1);
        let held = store.get("n1", NetworkMode::Pod).unwrap();
        let nodes: Vec<_> = held.peers.iter().map(|p| &*p.node).collect();
        assert_eq!(nodes, ["n2", "n2"]);
    }

    #[test]
    fn unverified_mode_accepts_anyone_and_remembers_nodes() {
        let mut store = ReportStore::default();
        ingest(&mut store, &report(0, "n1", 1), None, 1).unwrap();
        ingest(&mut store, &report(1, "n2", 1), None, 1).unwrap();
        assert_eq!(store.seen_nodes().len(), 2);
        let err = store.ingest(b"", &Sender::Unverified, None, 1).unwrap_err();
        assert_eq!(err.reason(), "invalid");
    }

    #[test]
    fn host_reports_are_verified_against_host_agent_pods() {
        let inv = inventory(&["n1", "n2"]);
        let mut store = ReportStore::default();
        ingest(&mut store, &host_report(0, "n1", 1), Some(&inv), 1).unwrap();
        assert!(store.get("n1", NetworkMode::Host).is_some());
        assert!(store.get("n1", NetworkMode::Pod).is_none());

        // The pod agent claiming to be a host agent, and the other way round.
        let mut claims_host = report(0, "n1", 2);
        claims_host.agent.network = NetworkMode::Host;
        let err = ingest(&mut store, &claims_host, Some(&inv), 2).unwrap_err();
        assert_eq!(err.reason(), "forbidden");
        assert!(err.to_string().contains("pod-network agent"), "{err}");
        let mut claims_pod = host_report(1, "n2", 2);
        claims_pod.agent.network = NetworkMode::Pod;
        assert!(ingest(&mut store, &claims_pod, Some(&inv), 2).is_err());
    }

    fn echo(node: &str, ip: &str, sent: u32, received: u32) -> PeerResult {
        peer(node, &format!("p-{ip}"), ip, echoes(sent, received))
    }

    #[test]
    fn only_the_same_nodes_host_agent_relays_a_pod_agents_report() {
        let inv = inventory(&["n1", "n2"]);
        let mut store = ReportStore::default();
        let relay = |store: &mut ReportStore, r: &Report, by: &str, now: u64| {
            store.insert_relayed(r.clone(), &agent(by), Some(&inv), now)
        };
        relay(&mut store, &report(0, "n1", 5), "host-agent-n1", 5).unwrap();
        let held = store.get("n1", NetworkMode::Pod).unwrap();
        assert_eq!(held.relayed_by.as_deref(), Some("host-agent-n1"));
        // Ordered as the pod's own reports: the same round is not taken
        // twice, the pod's next round directly is.
        let err = ingest(&mut store, &report(0, "n1", 5), Some(&inv), 6).unwrap_err();
        assert_eq!(err.reason(), "stale");
        ingest(&mut store, &report(0, "n1", 6), Some(&inv), 7).unwrap();
        assert_eq!(store.get("n1", NetworkMode::Pod).unwrap().relayed_by, None);

        let refused = |store: &mut ReportStore, r: Report, by: &str, words: &str| {
            let err = relay(store, &r, by, 8).unwrap_err();
            assert_eq!(err.reason(), "forbidden", "{err}");
            assert!(err.to_string().contains(words), "{err}");
        };
        // Another node's host agent, a pod agent, a host report, a pod the
        // API does not list on that node, an IP that is not the pod's.
        refused(
            &mut store,
            report(0, "n1", 9),
            "host-agent-n2",
            "runs on node n2",
        );
        refused(
            &mut store,
            report(0, "n1", 9),
            "agent-n1",
            "only host-network agents relay",
        );
        refused(
            &mut store,
            host_report(0, "n1", 9),
            "host-agent-n1",
            "relay",
        );
        let mut other_pod = report(0, "n1", 9);
        other_pod.agent.pod = "agent-n2".into();
        refused(
            &mut store,
            other_pod,
            "host-agent-n1",
            "no running agent pod named agent-n2",
        );
        let mut other_ip = report(0, "n1", 9);
        other_ip.agent.pod_ip = "10.244.1.99".parse().unwrap();
        refused(
            &mut store,
            other_ip,
            "host-agent-n1",
            "has IP(s) 10.244.1.2",
        );
        // A review that names the node: the relay's node decides.
        let from_n2 = Sender::Agent(Caller {
            node: Some("n2".into()),
            ..match agent("host-agent-n2") {
                Sender::Agent(caller) => caller,
                Sender::Unverified => unreachable!(),
            }
        });
        let err = store
            .insert_relayed(report(0, "n1", 9), &from_n2, Some(&inv), 8)
            .unwrap_err();
        assert!(
            err.to_string().contains("relayed a report of node n1"),
            "{err}"
        );
        assert_eq!(store.get("n1", NetworkMode::Pod).unwrap().report.round, 6);
    }

    #[test]
    fn history_follows_the_peers_and_departed_sources() {
        let inv = inventory(&["n1", "n2"]);
        let mut store = ReportStore::with_history(3);
        for round in 1..=4u64 {
            let mut r = report(0, "n1", round);
            r.peers = vec![
                echo("n2", "10.244.2.2", 3, 2),
                echo("n2", "10.244.2.3", 3, 3),
            ];
            if round == 4 {
                // The companion was re-created under a new address.
                r.peers[1] = echo("n2", "10.244.2.9", 3, 3);
            }
            ingest(&mut store, &r, Some(&inv), round).unwrap();
        }
        let w = store
            .history()
            .window("n1", NetworkMode::Pod, "n2")
            .unwrap();
        assert_eq!(w.rounds, 3, "capped at --history-rounds");
        assert_eq!(
            (w.sent, w.received),
            (9 + 3, 6 + 3),
            "the old companion is gone"
        );

        store.retain(|s| s.report.agent.node != "n1");
        assert!(
            store
                .history()
                .window("n1", NetworkMode::Pod, "n2")
                .is_none()
        );
        assert_eq!(store.history().sources(), 0);
    }
}
