//! What DNS should answer, per the API, and the comparison of an answer
//! with it: the agents the SRV record should list and since when
//! ([`AgentHistory`], [`SrvExpectation`]), each name's history of
//! disagreements ([`History`]), and the verdict ([`compare_a`],
//! [`compare_srv`]). See the [parent module](super) for the rules.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use netmatrix_api::{ErrorKind, ProbeError};

use super::{MAX_LISTED, MAX_SOA_NEGATIVE_TTL, NegativeAnswer};
use crate::discovery::AgentTruth;

/// A Ready agent pod: what the SRV answer should list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedAgent {
    pub pod: String,
    pub ip: IpAddr,
    /// Since when DNS should list it (Unix milliseconds); `None`: unknown,
    /// taken as old (the API would say if it were new).
    pub since_unix_ms: Option<u64>,
}

/// What the SRV answer is compared with.
#[derive(Debug, Clone, Default)]
pub struct SrvExpectation {
    /// Agents DNS must list.
    pub agents: Vec<ExpectedAgent>,
    /// Agents DNS may list or not: Running but not Ready (the endpoints
    /// controller drops them, after a delay).
    pub optional: HashSet<IpAddr>,
    /// Agents that left (or stopped being Ready), and when (Unix
    /// milliseconds): a cached positive answer may list them for up to the
    /// TTL after that.
    pub departed: HashMap<IpAddr, u64>,
    /// The truth covers part of the cluster (a sampled pinglist): answered
    /// agents it does not know are not extras. Those it saw leave still are.
    pub outside_scope_ok: bool,
}

/// What the loop remembers of the agent pods, to tell DNS lagging the API
/// from DNS being wrong: since when each Ready agent should be listed, and
/// when the others left.
#[derive(Debug, Default)]
pub struct AgentHistory {
    /// Ready agents (pod name and address), expected in DNS since (Unix ms).
    expected_since: HashMap<(String, IpAddr), u64>,
    /// Addresses of agents that left or stopped being Ready, and when.
    departed: HashMap<IpAddr, u64>,
    /// Whether the first API view has been seen.
    primed: bool,
}

impl AgentHistory {
    /// Records this round's agents (per the API) and returns what the SRV
    /// answer should be compared with.
    pub fn update(&mut self, truth: &AgentTruth, now_unix_ms: u64) -> SrvExpectation {
        let agents = &truth.agents;
        // The aggregator saw these leave the scope, maybe before this agent
        // started: the time they left is its.
        for (ip, since) in &truth.gone {
            self.departed.entry(*ip).or_insert(*since);
        }
        let mut next = HashMap::new();
        let mut expected = Vec::new();
        for agent in agents.iter().filter(|a| a.ready) {
            let key = (agent.pod.clone(), agent.ip);
            let since = match self.expected_since.get(&key) {
                Some(since) => *since,
                // In the first view this agent sees: when the API says the
                // pod became Ready (this agent just started, the pod did
                // not), else now.
                None if !self.primed => agent
                    .ready_since_unix_ms
                    .or(agent.started_unix_ms)
                    .unwrap_or(now_unix_ms),
                // Appeared since: counted from when this agent first saw it.
                None => now_unix_ms,
            };
            expected.push(ExpectedAgent {
                pod: agent.pod.clone(),
                ip: agent.ip,
                since_unix_ms: Some(since),
            });
            next.insert(key, since);
        }
        let still: HashSet<IpAddr> = next.keys().map(|(_, ip)| *ip).collect();
        // Gone from a partial truth may mean gone from its scope only (the
        // ring changed), not from the cluster: there, only the
        // aggregator's `gone` says an agent left.
        if !truth.partial {
            for (_, ip) in self.expected_since.keys() {
                if !still.contains(ip) {
                    self.departed.entry(*ip).or_insert(now_unix_ms);
                }
            }
        }
        // Kept as long as the longest TTL an SOA may impose.
        let keep_ms = u64::try_from(MAX_SOA_NEGATIVE_TTL.as_millis()).unwrap_or(u64::MAX);
        self.departed
            .retain(|ip, left| !still.contains(ip) && now_unix_ms.saturating_sub(*left) < keep_ms);
        self.expected_since = next;
        self.primed = true;
        SrvExpectation {
            agents: expected,
            optional: agents
                .iter()
                .filter(|a| !a.ready && !still.contains(&a.ip))
                .map(|a| a.ip)
                .collect(),
            departed: self.departed.clone(),
            outside_scope_ok: truth.partial,
        }
    }
}

/// What one name's earlier checks left behind: enough to say how long a
/// disagreement has lasted.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// When this agent first checked the name (the age of an A expectation).
    pub first_checked_unix_ms: u64,
    /// The SOA negative TTL of the last negative answer that carried one.
    pub soa_negative_ttl: Option<Duration>,
    /// Expected records missing from the answers, since when (first seen).
    missing_since: HashMap<String, u64>,
    /// Records the API does not have, answered since when (first seen).
    extra_since: HashMap<String, u64>,
}

impl History {
    pub fn new(now_unix_ms: u64) -> Self {
        Self {
            first_checked_unix_ms: now_unix_ms,
            ..Self::default()
        }
    }

    /// The TTL in force for this name: the flag, raised by the SOA.
    pub(super) fn ttl(&self, flag: Duration) -> Duration {
        self.soa_negative_ttl
            .map_or(flag, |soa| flag.max(soa.min(MAX_SOA_NEGATIVE_TTL)))
    }
}

/// The outcome of a comparison with the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Expected records missing, but younger than the TTL.
    pub pending: Vec<String>,
    /// `WrongAnswer` when DNS has disagreed for longer than the TTL.
    pub error: Option<ProbeError>,
}

/// One record the API says DNS should answer.
#[derive(Debug, Clone)]
struct Want {
    /// As it appears in the answers (an address).
    record: String,
    /// For messages, e.g. `agent-3 (10.244.3.2)`.
    label: String,
    since_unix_ms: Option<u64>,
}

/// Records DNS may answer without the API having them.
#[derive(Debug, Default)]
struct Tolerance {
    optional: HashSet<String>,
    /// Departure time of records the API had, Unix milliseconds.
    departed: HashMap<String, u64>,
    /// Only `departed` records are extras (a partial truth).
    outside_scope_ok: bool,
}

/// The A answer must be exactly `expected`. The expectation counts from the
/// name's first check by this agent.
pub fn compare_a(
    name: &str,
    expected: IpAddr,
    found: &BTreeSet<String>,
    negative: Option<NegativeAnswer>,
    ttl: Duration,
    history: &mut History,
    now_unix_ms: u64,
) -> Verdict {
    let want = Want {
        record: expected.to_string(),
        label: expected.to_string(),
        since_unix_ms: Some(history.first_checked_unix_ms),
    };
    let input = Comparison {
        name,
        wants: &[want],
        found,
        tolerance: &Tolerance::default(),
        negative,
        ttl,
    };
    input.judge(history, now_unix_ms)
}

/// The addresses behind the SRV records must be the Ready agents.
pub fn compare_srv(
    name: &str,
    found: &BTreeSet<IpAddr>,
    expectation: &SrvExpectation,
    negative: Option<NegativeAnswer>,
    ttl: Duration,
    history: &mut History,
    now_unix_ms: u64,
) -> Verdict {
    let wants: Vec<Want> = expectation
        .agents
        .iter()
        .map(|a| Want {
            record: a.ip.to_string(),
            label: format!("{} ({})", a.pod, a.ip),
            since_unix_ms: a.since_unix_ms,
        })
        .collect();
    let tolerance = Tolerance {
        optional: expectation
            .optional
            .iter()
            .map(ToString::to_string)
            .collect(),
        departed: expectation
            .departed
            .iter()
            .map(|(ip, t)| (ip.to_string(), *t))
            .collect(),
        outside_scope_ok: expectation.outside_scope_ok,
    };
    let found: BTreeSet<String> = found.iter().map(ToString::to_string).collect();
    let input = Comparison {
        name,
        wants: &wants,
        found: &found,
        tolerance: &tolerance,
        negative,
        ttl,
    };
    input.judge(history, now_unix_ms)
}

/// Answers against the API's truth.
struct Comparison<'a> {
    name: &'a str,
    wants: &'a [Want],
    found: &'a BTreeSet<String>,
    tolerance: &'a Tolerance,
    negative: Option<NegativeAnswer>,
    ttl: Duration,
}

impl Comparison<'_> {
    fn judge(&self, history: &mut History, now: u64) -> Verdict {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let age = |since: u64| now.saturating_sub(since);

        let mut pending = Vec::new();
        let mut late = Vec::new();
        let missing: Vec<&Want> = self
            .wants
            .iter()
            .filter(|w| !self.found.contains(&w.record))
            .collect();
        history
            .missing_since
            .retain(|r, _| missing.iter().any(|w| &w.record == r));
        for want in missing {
            let missing_since = *history
                .missing_since
                .entry(want.record.clone())
                .or_insert(now);
            match want.since_unix_ms.map(age) {
                // Young: a resolver may still hold the negative answer it
                // cached before the record existed.
                Some(expected_for) if expected_for < ttl_ms => pending.push(want.record.clone()),
                expected_for => late.push(format!(
                    "{} ({}not answered for {})",
                    want.label,
                    expected_for.map_or(String::new(), |ms| format!("expected for {}, ", secs(ms))),
                    secs(age(missing_since)),
                )),
            }
        }

        let wanted: HashSet<&str> = self.wants.iter().map(|w| w.record.as_str()).collect();
        let extra: Vec<&String> = self
            .found
            .iter()
            .filter(|r| !wanted.contains(r.as_str()) && !self.tolerance.optional.contains(*r))
            .filter(|r| {
                !self.tolerance.outside_scope_ok || self.tolerance.departed.contains_key(*r)
            })
            .collect();
        history.extra_since.retain(|r, _| extra.contains(&r));
        let mut stale = Vec::new();
        for record in extra {
            let first_answered = *history.extra_since.entry(record.clone()).or_insert(now);
            // Counted from when the API stopped having it, when known.
            let since = self
                .tolerance
                .departed
                .get(record)
                .copied()
                .unwrap_or(first_answered);
            if age(since) >= ttl_ms {
                stale.push(format!("{record} (for {})", secs(age(since))));
            }
        }

        pending.sort();
        if late.is_empty() && stale.is_empty() {
            return Verdict {
                pending,
                error: None,
            };
        }
        let mut parts = Vec::new();
        match self.negative {
            Some(negative) => parts.push(negative.describe().to_owned()),
            None if !late.is_empty() => parts.push(format!("answered {}", join(self.found.iter()))),
            None => {}
        }
        if !late.is_empty() {
            parts.push(format!(
                "{} expected record(s) missing for longer than the negative-cache TTL ({}): {}",
                late.len(),
                secs(ttl_ms),
                join(late.iter())
            ));
        }
        if !stale.is_empty() {
            parts.push(format!(
                "{} record(s) the API does not have, answered for longer than {}: {}",
                stale.len(),
                secs(ttl_ms),
                join(stale.iter())
            ));
        }
        Verdict {
            pending,
            error: Some(ProbeError::new(
                ErrorKind::WrongAnswer,
                format!("{}: {}", self.name, parts.join("; ")),
            )),
        }
    }
}

/// Milliseconds as whole seconds, the way people read them (`2m 5s`).
fn secs(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
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
pub(super) mod tests {
    use super::*;
    use crate::discovery::PodInfo;
    use crate::probes::dns::DEFAULT_NEGATIVE_TTL;
    use netmatrix_runtime::k8s::targets::fixtures::info;

    pub(in crate::probes::dns) const NOW: u64 = 1_000_000_000;
    pub(in crate::probes::dns) const TTL: Duration = DEFAULT_NEGATIVE_TTL;

    pub(in crate::probes::dns) fn agent(pod: &str, ip: &str, age_s: Option<u64>) -> ExpectedAgent {
        ExpectedAgent {
            pod: pod.into(),
            ip: ip.parse().unwrap(),
            since_unix_ms: age_s.map(|s| NOW - s * 1000),
        }
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn strings(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn srv(found: &[&str], e: &SrvExpectation, h: &mut History, now: u64) -> Verdict {
        compare_srv("x.", &ips(found), e, None, TTL, h, now)
    }

    const NXDOMAIN: Option<NegativeAnswer> = Some(NegativeAnswer {
        nxdomain: true,
        soa_ttl: None,
    });

    #[test]
    fn srv_matching_the_api_is_ok() {
        let e = SrvExpectation {
            agents: vec![
                agent("a", "10.244.1.2", Some(600)),
                agent("b", "10.244.2.2", None),
            ],
            ..Default::default()
        };
        let v = srv(&["10.244.1.2", "10.244.2.2"], &e, &mut History::new(0), NOW);
        assert_eq!(v, Verdict::default());
    }

    #[test]
    fn young_agents_missing_from_dns_are_pending_not_failures() {
        let e = SrvExpectation {
            agents: vec![
                agent("a", "10.244.1.2", Some(600)),
                agent("new", "10.244.3.2", Some(5)),
            ],
            ..Default::default()
        };
        let mut h = History::new(0);
        let v = srv(&["10.244.1.2"], &e, &mut h, NOW);
        assert_eq!(v.error, None);
        assert_eq!(v.pending, ["10.244.3.2"]);

        // Still missing once the record is older than the TTL: stale.
        let later = NOW + 26_000;
        let v = srv(&["10.244.1.2"], &e, &mut h, later);
        assert!(v.pending.is_empty());
        let err = v.error.unwrap();
        assert_eq!(err.kind, ErrorKind::WrongAnswer);
        assert_eq!(
            err.message,
            "x.: answered 10.244.1.2; 1 expected record(s) missing for longer than the \
             negative-cache TTL (30s): new (10.244.3.2) (expected for 31s, not answered for 26s)"
        );
    }

    #[test]
    fn an_nxdomain_for_a_name_the_api_has_is_pending_then_stale() {
        let e = SrvExpectation {
            agents: vec![agent("a", "10.244.1.2", Some(10))],
            ..Default::default()
        };
        let mut h = History::new(0);
        let v = compare_srv("x.", &ips(&[]), &e, NXDOMAIN, TTL, &mut h, NOW);
        assert_eq!((v.pending.len(), v.error), (1, None));
        let v = compare_srv("x.", &ips(&[]), &e, NXDOMAIN, TTL, &mut h, NOW + 20_000);
        let err = v.error.unwrap();
        assert_eq!(err.kind, ErrorKind::WrongAnswer, "stale, not a DNS failure");
        assert!(
            err.message
                .starts_with("x.: NXDOMAIN; 1 expected record(s) missing"),
            "{err}"
        );

        // With no Ready agent at all, NXDOMAIN is the right answer.
        let none = SrvExpectation::default();
        let v = compare_srv("x.", &ips(&[]), &none, NXDOMAIN, TTL, &mut h, NOW);
        assert_eq!(v, Verdict::default());
    }

    #[test]
    fn extra_records_are_tolerated_for_the_ttl() {
        let e = SrvExpectation {
            agents: vec![agent("a", "10.244.1.2", Some(600))],
            // Not Ready: may be listed or not.
            optional: HashSet::from(["10.244.5.2".parse().unwrap()]),
            departed: HashMap::from([
                // Left 10 s ago: a cached answer may still list it.
                ("10.244.7.7".parse().unwrap(), NOW - 10_000),
                // Left 40 s ago: it should be gone by now.
                ("10.244.8.8".parse().unwrap(), NOW - 40_000),
            ]),
            outside_scope_ok: false,
        };
        let mut h = History::new(0);
        let found = [
            "10.244.1.2",
            "10.244.5.2",
            "10.244.7.7",
            "10.244.8.8",
            "10.244.9.9",
        ];
        let err = srv(&found, &e, &mut h, NOW).error.unwrap();
        assert_eq!(
            err.message,
            "x.: 1 record(s) the API does not have, answered for longer than 30s: 10.244.8.8 (for 40s)"
        );
        // 10.244.9.9 was never known: counted from its first answer.
        let err = srv(&found, &e, &mut h, NOW + 30_000).error.unwrap();
        assert!(
            err.message
                .contains("10.244.7.7 (for 40s), 10.244.8.8 (for 1m 10s), 10.244.9.9 (for 30s)"),
            "{err}"
        );
        assert!(!err.message.contains("10.244.5.2"), "{err}");
        // Gone from the answer: forgotten, and a reappearance starts over.
        assert_eq!(srv(&["10.244.1.2"], &e, &mut h, NOW + 31_000).error, None);
        assert_eq!(
            srv(&["10.244.1.2", "10.244.9.9"], &e, &mut h, NOW + 32_000).error,
            None
        );
    }

    #[test]
    fn a_answers_are_compared_from_the_first_check() {
        let ip: IpAddr = "10.96.0.1".parse().unwrap();
        let mut h = History::new(NOW);
        let a = |found: &[&str], h: &mut History, now| {
            compare_a("k.", ip, &strings(found), None, TTL, h, now)
        };
        assert_eq!(a(&["10.96.0.1"], &mut h, NOW), Verdict::default());
        // Within the TTL of the agent's first check: pending.
        let v = a(&["10.96.0.9"], &mut h, NOW + 1_000);
        assert_eq!((v.pending, v.error), (vec!["10.96.0.1".to_owned()], None));
        let err = a(&["10.96.0.9"], &mut h, NOW + 31_000).error.unwrap();
        assert_eq!(err.kind, ErrorKind::WrongAnswer);
        assert_eq!(
            err.message,
            "k.: answered 10.96.0.9; 1 expected record(s) missing for longer than the negative-cache \
             TTL (30s): 10.96.0.1 (expected for 31s, not answered for 30s); 1 record(s) the API does \
             not have, answered for longer than 30s: 10.96.0.9 (for 30s)"
        );
        let err = compare_a("k.", ip, &strings(&[]), NXDOMAIN, TTL, &mut h, NOW + 40_000)
            .error
            .unwrap();
        assert!(err.message.starts_with("k.: NXDOMAIN; 1 expected"), "{err}");
    }

    #[test]
    fn the_soa_can_raise_the_ttl_within_a_cap() {
        let mut h = History::new(0);
        assert_eq!(h.ttl(TTL), TTL);
        h.soa_negative_ttl = Some(Duration::from_secs(5));
        assert_eq!(h.ttl(TTL), TTL, "the flag is a floor");
        h.soa_negative_ttl = Some(Duration::from_secs(300));
        assert_eq!(h.ttl(TTL), Duration::from_secs(300));
        h.soa_negative_ttl = Some(Duration::from_secs(86_400));
        assert_eq!(h.ttl(TTL), MAX_SOA_NEGATIVE_TTL);
    }

    #[test]
    fn long_lists_are_cut() {
        let s = join((0..12).map(|i| i.to_string()).collect::<Vec<_>>().iter());
        assert!(s.ends_with("9, and 2 more"), "{s}");
    }

    fn ready_since(ip: &str, since: u64) -> PodInfo {
        PodInfo {
            ready_since_unix_ms: Some(since),
            ..info(ip)
        }
    }

    fn since_of(e: &SrvExpectation, ip: &str) -> Option<u64> {
        let ip: IpAddr = ip.parse().unwrap();
        e.agents.iter().find(|a| a.ip == ip)?.since_unix_ms
    }

    #[test]
    fn agents_are_expected_from_when_they_became_ready() {
        const T0: u64 = 1_000_000;
        let mut h = AgentHistory::default();
        // First view: the API's Ready time (the agent restarted, not the pods).
        let e = h.update(
            &truth(vec![ready_since("10.0.0.1", 10), info("10.0.0.2")]),
            T0,
        );
        assert_eq!(since_of(&e, "10.0.0.1"), Some(10));
        assert_eq!(since_of(&e, "10.0.0.2"), Some(T0));
        // Later arrivals count from when this agent first saw them, even if
        // the API says they became Ready earlier.
        let e = h.update(
            &truth(vec![
                ready_since("10.0.0.1", 10),
                info("10.0.0.2"),
                ready_since("10.0.0.3", 5),
            ]),
            T0 + 1_000,
        );
        assert_eq!(since_of(&e, "10.0.0.3"), Some(T0 + 1_000));
        assert_eq!(since_of(&e, "10.0.0.1"), Some(10), "remembered");
        assert!(e.departed.is_empty());

        // 10.0.0.2 leaves, 10.0.0.3 stops being Ready: both may linger in
        // DNS; the unready one is optional, not departed.
        let mut unready = ready_since("10.0.0.3", 5);
        unready.ready = false;
        let e = h.update(
            &truth(vec![ready_since("10.0.0.1", 10), unready]),
            T0 + 2_000,
        );
        assert_eq!(e.agents.len(), 1);
        assert_eq!(
            e.departed,
            HashMap::from([
                ("10.0.0.2".parse().unwrap(), T0 + 2_000),
                ("10.0.0.3".parse().unwrap(), T0 + 2_000),
            ])
        );
        assert_eq!(e.optional, HashSet::from(["10.0.0.3".parse().unwrap()]));
        // Forgotten after the longest TTL.
        let e = h.update(
            &truth(vec![ready_since("10.0.0.1", 10)]),
            T0 + 2_000 + 1_800_000,
        );
        assert!(e.departed.is_empty());
    }

    fn truth(agents: Vec<PodInfo>) -> AgentTruth {
        AgentTruth::complete(agents)
    }

    /// A sampled pinglist's truth covers this node and its stable
    /// neighbours: the other agents DNS answers are not extras, an agent of
    /// the scope missing from DNS still is, and so is one the aggregator saw
    /// leave, once the TTL has passed since it left.
    #[test]
    fn a_partial_truth_judges_its_scope_only() {
        const T0: u64 = 10_000_000;
        let ttl = Duration::from_secs(30);
        let partial = |agents: Vec<PodInfo>, gone: Vec<(IpAddr, u64)>| AgentTruth {
            agents,
            partial: true,
            gone,
        };
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let found = |ips: &[&str]| ips.iter().map(|s| ip(s)).collect::<BTreeSet<IpAddr>>();
        let mut h = AgentHistory::default();
        let mut history = History::new(T0);
        let scope = vec![ready_since("10.0.0.1", 10), ready_since("10.0.0.2", 10)];
        let e = h.update(&partial(scope.clone(), vec![]), T0);
        assert!(e.outside_scope_ok);
        // Everyone in the scope, and agents beyond it: fine.
        let v = compare_srv(
            "srv",
            &found(&["10.0.0.1", "10.0.0.2", "10.0.9.9"]),
            &e,
            None,
            ttl,
            &mut history,
            T0,
        );
        assert!(v.error.is_none() && v.pending.is_empty(), "{v:?}");
        // An agent of the scope missing for long: wrong.
        let v = compare_srv(
            "srv",
            &found(&["10.0.0.1", "10.0.9.9"]),
            &e,
            None,
            ttl,
            &mut history,
            T0,
        );
        assert!(v.error.is_some(), "{v:?}");
        // 10.0.0.2 leaves the scope (the ring changed), not the cluster:
        // DNS still answers it, rightly.
        let e = h.update(&partial(vec![scope[0].clone()], vec![]), T0 + 60_000);
        let v = compare_srv(
            "srv",
            &found(&["10.0.0.1", "10.0.0.2"]),
            &e,
            None,
            ttl,
            &mut history,
            T0 + 120_000,
        );
        assert!(v.error.is_none(), "{v:?}");
        // The aggregator saw 10.0.0.3 leave at T0: still answered after the
        // TTL is stale.
        let e = h.update(
            &partial(vec![scope[0].clone()], vec![(ip("10.0.0.3"), T0)]),
            T0 + 120_000,
        );
        let v = compare_srv(
            "srv",
            &found(&["10.0.0.1", "10.0.0.3"]),
            &e,
            None,
            ttl,
            &mut history,
            T0 + 120_000,
        );
        assert!(v.error.is_some(), "{v:?}");
    }
}
