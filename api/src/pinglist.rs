//! What the aggregator tells each agent to probe: its pinglist, one per
//! (node, network), served at [`PINGLIST_PATH`]`/{node}` by ETag with a long
//! poll. The aggregator is the only reader of the Kubernetes API; agents
//! probe what their list names, keep it when the aggregator is away, and
//! fall back to the agents' SRV record without one.
//!
//! The body holds no timestamp and no ETag: the same inputs give the same
//! bytes, and [`etag`] is a hash of those bytes, so an aggregator that
//! restarts and computes the same list answers `304 Not Modified`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::NetworkMode;
use crate::validate::{Invalid, invalid, is_object_name};

/// `GET {PINGLIST_PATH}/{node}[?wait=SECONDS]`, with `If-None-Match`.
pub const PINGLIST_PATH: &str = "/api/v1/pinglist";
/// The version of [`Pinglist`]: additive changes keep it, a new meaning
/// gets `/api/v2`. Agents refuse lists of a later version.
pub const PINGLIST_VERSION: u32 = 1;
/// Largest pinglist body, on both ends (100,000 pods fit with room).
pub const MAX_PINGLIST_BYTES: usize = 16 << 20;
/// Longest long poll: below the servers' request timeout (30 s), so a
/// waiting poll is answered `304`, never `408`.
pub const MAX_PINGLIST_WAIT_SECS: u64 = 25;
/// Most pods a pinglist may name (every node's, summed), and most agents
/// its SRV truth may list.
pub const MAX_PINGLIST_PODS: usize = 100_000;
/// How long a departed agent's address may still be served by DNS: the
/// longest negative-answer TTL a resolver is allowed to keep (RFC 2308's
/// SOA bound, as the agents cap it). A [`GoneAgent`] is dropped after it.
pub const DNS_MAX_NEGATIVE_TTL_MS: u64 = 30 * 60 * 1000;

/// The probe targets of one agent (one node, one network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinglist {
    /// At most [`PINGLIST_VERSION`].
    pub version: u32,
    /// Whose list it is.
    pub node: String,
    pub network: NetworkMode,
    /// The agent's own node and its targets by name; in a full mesh, the
    /// skipped (cordoned, NotReady) nodes too, with [`PinglistNode::skip`].
    pub nodes: BTreeMap<String, PinglistNode>,
    /// Sampled remote nodes (large clusters); `None`: a full mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingWindow>,
    /// What the agents' SRV record should list, as far as this agent judges it.
    pub srv: SrvTruth,
    /// Where the aggregator can be reached directly, when its Service
    /// cannot (reports and polls).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregators: Vec<SocketAddr>,
    /// Host lists: this node's pod-network agent, whose reports the host
    /// agent relays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pod_agent: Option<IpAddr>,
    /// The Kubernetes API's ClusterIP as the aggregator knows it: the A
    /// expectation of agents that have none of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver_ip: Option<IpAddr>,
}

/// One node of a pinglist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinglistNode {
    /// Set when the node's pods are not probed (full mesh only: sampled
    /// lists leave skipped nodes out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<NodeSkip>,
    /// Its probe targets of the list's network, sorted.
    pub pods: Vec<PinglistPod>,
}

/// A pod to probe.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PinglistPod {
    pub pod: String,
    pub ip: IpAddr,
    pub role: PeerRole,
    /// The pod's UDP echo port (`containerPort` of the port named
    /// `udp-echo`); absent: the agent's port flags decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// What a probe target is (`app.kubernetes.io/component`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerRole {
    Agent,
    Companion,
    HostAgent,
    /// Any other component (read from a newer aggregator as well).
    #[serde(other)]
    Other,
}

/// Why the pods of a node are not probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeSkip {
    /// `spec.unschedulable`: cordoned or being drained; its pods are about
    /// to go, and a drain is no network failure.
    Cordoned,
    /// The kubelet's Ready condition is not True: the node itself is down
    /// (or its kubelet is), which the node controller already reports.
    NotReady,
}

impl NodeSkip {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeSkip::Cordoned => "cordoned",
            NodeSkip::NotReady => "not-ready",
        }
    }
}

/// The sampled remote nodes ([`crate::sampling`]), as a window of epochs
/// computed against the ring at the list's last renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplingWindow {
    /// Nodes on the ring at renewal (the report's `sampled.nodes`).
    pub ring_nodes: u32,
    /// Length of an epoch: epoch `e` runs from `e × epoch_ms` (Unix ms).
    pub epoch_ms: u64,
    /// Remote nodes probed in every epoch.
    pub stable: Vec<String>,
    /// Remote nodes probed in addition, per epoch, in epoch order.
    pub rotation: Vec<RotationEpoch>,
}

/// The rotating nodes of one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationEpoch {
    pub epoch: u64,
    pub nodes: Vec<String>,
}

/// The agents the SRV record of the agents' Service should list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrvTruth {
    /// Every Running pod agent of the cluster (full mesh). `false`: only
    /// those of the agent's own node and its stable nodes (sampled), so
    /// an answered address outside them is no extra.
    pub complete: bool,
    /// Sorted by node, then pod.
    pub agents: Vec<SrvAgent>,
    /// Agents of those nodes that left recently (DNS may still serve them
    /// for [`DNS_MAX_NEGATIVE_TTL_MS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<GoneAgent>,
}

/// A Running pod agent, as the SRV record should list it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SrvAgent {
    pub node: String,
    pub pod: String,
    pub ip: IpAddr,
    /// The pod's Ready condition (Endpoints list only Ready pods).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub ready: bool,
    /// `status.startTime`, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_ms: Option<u64>,
    /// When the Ready condition last changed, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since_unix_ms: Option<u64>,
}

/// An agent address that left, and when the aggregator saw it go.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GoneAgent {
    pub ip: IpAddr,
    pub since_unix_ms: u64,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The strong ETag of a pinglist body: `pl1-` and 16 hex digits of a
/// 64-bit FNV-1a over the exact bytes served (the fold of
/// [`facts::digest`](crate::facts::digest)). Sent quoted, `ETag: "pl1-…"`.
pub fn etag(body: &[u8]) -> String {
    format!("pl1-{:016x}", crate::fnv1a_64(body))
}

impl Pinglist {
    /// Checks a list before an agent uses it: a version it knows, for
    /// `node` and `network`, Kubernetes names, at most
    /// [`MAX_PINGLIST_PODS`] pods, and every sampled node listed.
    pub fn validate_for(&self, node: &str, network: NetworkMode) -> Result<(), Invalid> {
        if self.version > PINGLIST_VERSION {
            return Err(invalid("version", "newer than this agent reads"));
        }
        if self.node != node {
            return Err(invalid("node", "another node's list"));
        }
        if self.network != network {
            return Err(invalid("network", "another network's list"));
        }
        let mut pods = 0usize;
        for (name, entry) in &self.nodes {
            name_ok(name, "nodes")?;
            pods = pods.saturating_add(entry.pods.len());
            if pods > MAX_PINGLIST_PODS {
                return Err(invalid("nodes", "too many pods"));
            }
            for pod in &entry.pods {
                name_ok(&pod.pod, "nodes[].pods[].pod")?;
            }
        }
        if self.srv.agents.len() > MAX_PINGLIST_PODS || self.srv.gone.len() > MAX_PINGLIST_PODS {
            return Err(invalid("srv", "too many agents"));
        }
        for agent in &self.srv.agents {
            name_ok(&agent.node, "srv.agents[].node")?;
            name_ok(&agent.pod, "srv.agents[].pod")?;
        }
        if let Some(sampling) = &self.sampling {
            let rotating = sampling.rotation.iter().flat_map(|r| &r.nodes);
            for name in sampling.stable.iter().chain(rotating) {
                if !self.nodes.contains_key(name) {
                    return Err(invalid("sampling", "names a node not in nodes"));
                }
            }
            if sampling.epoch_ms == 0 {
                return Err(invalid("sampling.epoch_ms", "zero"));
            }
        }
        Ok(())
    }
}

fn name_ok(name: &str, field: &'static str) -> Result<(), Invalid> {
    if is_object_name(name) {
        Ok(())
    } else {
        Err(invalid(field, "not a Kubernetes name (DNS-1123 subdomain)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A sampled host list with every field set.
    fn full() -> Pinglist {
        let pod = |name: &str, addr: &str, role| PinglistPod {
            pod: name.into(),
            ip: ip(addr),
            role,
            port: None,
        };
        Pinglist {
            nodes: BTreeMap::from([
                (
                    "node-1".into(),
                    PinglistNode {
                        skip: None,
                        pods: vec![pod("host-agent-1", "198.18.0.1", PeerRole::HostAgent)],
                    },
                ),
                (
                    "node-2".into(),
                    PinglistNode {
                        skip: Some(NodeSkip::Cordoned),
                        pods: vec![PinglistPod {
                            port: Some(8081),
                            ..pod("companion-2", "10.244.2.3", PeerRole::Companion)
                        }],
                    },
                ),
                (
                    "node-3".into(),
                    PinglistNode {
                        skip: None,
                        pods: vec![pod("agent-3", "10.244.3.2", PeerRole::Agent)],
                    },
                ),
            ]),
            sampling: Some(SamplingWindow {
                ring_nodes: 5000,
                epoch_ms: 30_000,
                stable: vec!["node-2".into()],
                rotation: vec![RotationEpoch {
                    epoch: 7,
                    nodes: vec!["node-3".into()],
                }],
            }),
            srv: SrvTruth {
                complete: false,
                agents: vec![
                    SrvAgent {
                        node: "node-1".into(),
                        pod: "agent-1".into(),
                        ip: ip("10.244.1.2"),
                        ready: false,
                        started_unix_ms: Some(1),
                        ready_since_unix_ms: Some(2),
                    },
                    SrvAgent {
                        node: "node-2".into(),
                        pod: "agent-2".into(),
                        ip: ip("10.244.2.2"),
                        ready: true,
                        started_unix_ms: None,
                        ready_since_unix_ms: None,
                    },
                ],
                gone: vec![GoneAgent {
                    ip: ip("10.244.9.2"),
                    since_unix_ms: 3,
                }],
            },
            aggregators: vec!["10.244.0.5:8080".parse().unwrap()],
            local_pod_agent: Some(ip("10.244.1.2")),
            apiserver_ip: Some(ip("10.96.0.1")),
            ..fixtures::pinglist("node-1", NetworkMode::Host)
        }
    }

    #[test]
    fn a_pinglist_survives_the_wire() {
        for list in [full(), fixtures::pinglist("node-1", NetworkMode::Pod)] {
            let body = serde_json::to_vec(&list).unwrap();
            let back: Pinglist = serde_json::from_slice(&body).unwrap();
            assert_eq!(back, list);
            assert_eq!(back.validate_for(&list.node, list.network), Ok(()));
        }
        // Defaults are omitted: a ready agent says nothing about it.
        let json = serde_json::to_value(full()).unwrap();
        assert_eq!(json["srv"]["agents"][1].as_object().unwrap().len(), 3);
        assert_eq!(json["srv"]["agents"][0]["ready"], false);
        assert_eq!(json["nodes"]["node-2"]["skip"], "cordoned");
        assert_eq!(json["nodes"]["node-1"]["pods"][0]["role"], "host-agent");
        assert_eq!(json["network"], "host");
    }

    #[test]
    fn unknown_fields_and_roles_are_ignored() {
        let json = r#"{"version":1,"node":"node-1","network":"pod","later":{"x":1},
            "nodes":{"node-2":{"pods":[{"pod":"p","ip":"10.0.0.2","role":"sidecar","new":2}],"extra":[]}},
            "srv":{"complete":true,"agents":[{"node":"node-2","pod":"p","ip":"10.0.0.2","more":true}]}}"#;
        let list: Pinglist = serde_json::from_str(json).unwrap();
        assert_eq!(list.nodes["node-2"].pods[0].role, PeerRole::Other);
        assert!(list.srv.agents[0].ready, "absent means ready");
        assert_eq!(list.sampling, None);
        assert_eq!(list.validate_for("node-1", NetworkMode::Pod), Ok(()));
    }

    /// Fixed bytes and a fixed hash: a change to either makes every
    /// agent's held ETag miss once, on upgrade. Change it knowingly.
    #[test]
    fn the_etag_is_a_hash_of_the_exact_bytes() {
        let body = serde_json::to_vec(&fixtures::pinglist("node-1", NetworkMode::Pod)).unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"version":1,"node":"node-1","network":"pod","nodes":{},"srv":{"complete":true,"agents":[]}}"#
        );
        // Computed apart (Python, the same fold) from the bytes above.
        assert_eq!(etag(&body), "pl1-19dd4fa0fd6c2ce8");
        assert_eq!(etag(b""), "pl1-cbf29ce484222325", "FNV-1a's offset basis");
        let mut other = body.clone();
        other.push(b' ');
        assert_ne!(etag(&other), etag(&body));
    }

    #[test]
    fn validate_for_refuses_what_an_agent_must_not_use() {
        type Mutation = fn(&mut Pinglist);
        let cases: [(&str, Mutation); 10] = [
            ("version", |l| l.version = 2),
            ("node", |l| l.node = "node-9".into()),
            ("network", |l| l.network = NetworkMode::Pod),
            ("nodes", |l| {
                let n = l.nodes.remove("node-3").unwrap();
                l.nodes.insert("Node_3".into(), n);
            }),
            ("nodes[].pods[].pod", |l| {
                l.nodes.get_mut("node-1").unwrap().pods[0].pod = "a b".into()
            }),
            ("srv.agents[].pod", |l| l.srv.agents[0].pod = String::new()),
            ("sampling", |l| {
                l.sampling.as_mut().unwrap().stable.push("node-7".into())
            }),
            ("sampling", |l| {
                l.sampling.as_mut().unwrap().rotation[0].nodes = vec!["node-8".into()]
            }),
            ("sampling.epoch_ms", |l| {
                l.sampling.as_mut().unwrap().epoch_ms = 0
            }),
            ("nodes", |l| {
                let p = l.nodes["node-1"].pods[0].clone();
                l.nodes.get_mut("node-1").unwrap().pods = vec![p; MAX_PINGLIST_PODS + 1];
            }),
        ];
        assert_eq!(full().validate_for("node-1", NetworkMode::Host), Ok(()));
        for (field, mutate) in cases {
            let mut list = full();
            mutate(&mut list);
            let err = list.validate_for("node-1", NetworkMode::Host).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn node_skips_are_written_as_named() {
        for skip in [NodeSkip::Cordoned, NodeSkip::NotReady] {
            assert_eq!(serde_json::to_value(skip).unwrap(), skip.as_str());
        }
    }
}
