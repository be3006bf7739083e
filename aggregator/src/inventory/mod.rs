//! What the Kubernetes API says: which nodes exist (each is expected to run an
//! agent), which agent pods may report, and why an agent cannot run
//! ([`reasons`]).
//!
//! [`Inventory`] is a plain snapshot that tests build by hand. In production it
//! is derived from kube-rs reflectors ([`KubeInventory`]) on Nodes, agent
//! Pods and the Pod Events of the agents' namespace; the reflectors
//! keep their last state when the API server becomes unreachable, which is
//! exactly when the operator needs the aggregator to keep judging reports.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::Notify;

use k8s_openapi::api::core::v1::{Event, Namespace, Node, NodeSpec, NodeStatus, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use netmatrix_api::{AgentIdentity, NetworkMode, NodeState};
use netmatrix_runtime::k8s::{self, WatchHealth};

use crate::auth::{Caller, Roster};
use crate::diagnosis::AgentDown;
use crate::diagnosis::causes::NodeTruth;

mod reasons;

/// A running, non-terminating agent pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPod {
    pub name: String,
    /// `metadata.uid`: a token is bound to one pod UID, so a token that
    /// outlived its pod (or a pod re-created under the same name) is refused.
    pub uid: String,
    /// `status.podIPs` (a host-network agent has its node's addresses).
    pub ips: Vec<IpAddr>,
    /// Pod network (`component=agent`) or host network (`component=host-agent`
    /// or `hostNetwork: true`): a report must come from the matching kind.
    pub network: NetworkMode,
    /// When the pod started (`status.startTime`): a freshly started agent
    /// gets the same grace as a new node.
    pub started_unix_ms: Option<u64>,
    /// `metadata.labels`: what NetworkPolicies select it by.
    pub labels: BTreeMap<String, String>,
    /// Named container ports (NetworkPolicies may name them).
    pub named_ports: BTreeMap<String, u16>,
}

/// A node as far as the aggregator cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `spec.podCIDRs`: used to place peers that were discovered without a
    /// node name (agents that fell back to DNS discovery).
    pub pod_cidrs: Vec<Cidr>,
    /// The `Ready` condition is `True`: the kubelet runs pods there.
    pub ready: bool,
    /// `metadata.creationTimestamp`.
    pub created_unix_ms: Option<u64>,
    /// `spec.unschedulable` (cordoned or drained): agents stop probing it.
    pub unschedulable: bool,
}

/// Snapshot of the cluster's nodes and agent pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// `false` until both nodes and agent pods have been listed once: until
    /// then no sender can be verified and no node is expected.
    pub synced: bool,
    /// Every node; each is expected to run a reporting agent.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Running agent pods by node name.
    pub agents: BTreeMap<String, Vec<AgentPod>>,
    /// Nodes whose pod-network agent cannot run, and why.
    pub agents_down: BTreeMap<String, AgentDown>,
    /// Each node's addresses and tunnel endpoint, for the node facts'
    /// cross-check.
    pub truth: BTreeMap<String, NodeTruth>,
    /// The NetworkPolicies of the agents' namespace and its labels: what
    /// may keep probes out ([`crate::policy`]).
    pub policies: crate::policy::PolicySet,
    /// Probe targets that are not agents (companion pods), so that a peer
    /// reported by address alone is named.
    pub targets: Vec<TargetPod>,
    /// Every agent's and target's address, built on first use from the
    /// fields above: leave it at its default.
    pub addresses: AddressIndex,
}

/// The addresses of an [`Inventory`]'s pods and its nodes' pod CIDRs,
/// built when first asked: a snapshot is not changed once shared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressIndex(OnceLock<Addresses>);

// foldhash: a quarter of a million look-ups a round at 5,000 nodes, and the
// keys are the API's, not clients'.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Addresses {
    pods: foldhash::HashMap<IpAddr, PlacedPod>,
    /// Pod CIDRs by [`Cidr::key`], and the prefix lengths present, longest
    /// first: an address no pod has (a report may name any) costs one
    /// look-up per length, never a scan of every node.
    cidrs: foldhash::HashMap<(bool, u8, u128), Arc<str>>,
    prefixes: Vec<(bool, u8)>,
}

/// A probe target of the API's (`--peer-selector`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPod {
    pub node: String,
    pub pod: String,
    pub ip: IpAddr,
}

/// Where an address is: a pod of the API's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPod {
    // Shared: every held peer on the pod names it (a quarter of a million
    // at 5,000 nodes).
    node: Arc<str>,
    pod: Arc<str>,
}

impl Inventory {
    /// The NetworkPolicy screen over this inventory's pod-network agents
    /// (`None` without a policy).
    pub fn policy_screen(&self) -> Option<crate::policy::Screen> {
        let agents = self.agents.iter().flat_map(|(node, pods)| {
            pods.iter()
                .filter(|p| p.network == NetworkMode::Pod)
                .map(move |p| (node.as_str(), p.name.as_str(), &p.labels, &p.named_ports))
        });
        crate::policy::Screen::new(&self.policies, agents)
    }
}

/// Why a verified caller may not send its report. The text says what the
/// API says instead, for the aggregator's log (never for the client), so the
/// operator can tell a stale agent from an impostor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenderMismatch {
    #[error("the API lists no running agent pod named {pod}")]
    NoSuchPod { pod: String },
    #[error("the API lists agent pod {pod} under another UID (the pod was re-created)")]
    WrongUid { pod: String },
    #[error("the API says agent pod {pod} runs on node {actual}")]
    WrongNode { pod: String, actual: String },
    #[error("the token is agent pod {token}'s, not {claimed}'s")]
    WrongPod { token: String, claimed: String },
    #[error("the API says agent pod {pod} has IP(s) {actual}")]
    WrongIp { pod: String, actual: String },
    #[error(
        "the API says agent pod {pod} is a {actual}-network agent, not a {claimed}-network one"
    )]
    WrongNetwork {
        pod: String,
        actual: &'static str,
        claimed: &'static str,
    },
    #[error(
        "agent pod {pod} is a {relay}-network agent relaying a {claimed}-network report; only host-network agents relay, and only pod-network reports"
    )]
    NotARelay {
        pod: String,
        relay: &'static str,
        claimed: &'static str,
    },
    #[error("host agent {pod} on node {node} relayed a report of node {claimed}")]
    RelayAcrossNodes {
        pod: String,
        node: String,
        claimed: String,
    },
}

fn network_name(network: NetworkMode) -> &'static str {
    match network {
        NetworkMode::Pod => "pod",
        NetworkMode::Host => "host",
    }
}

impl Inventory {
    /// Checks a caller the API server vouched for, and the identity its
    /// report claims: the token's pod must be a running agent pod with the
    /// token's UID, on the token's node (when the review names it), and the
    /// report must claim exactly that pod, its node, its network and one of
    /// its IPs.
    pub fn verify_caller(
        &self,
        caller: &Caller,
        claimed: &AgentIdentity,
    ) -> Result<(), SenderMismatch> {
        let node = caller.node.as_deref().unwrap_or(&claimed.node);
        let pod = self.caller_pod(caller, node)?;
        if claimed.pod != caller.pod {
            return Err(SenderMismatch::WrongPod {
                token: caller.pod.clone(),
                claimed: claimed.pod.clone(),
            });
        }
        if claimed.node != node {
            return Err(SenderMismatch::WrongNode {
                pod: caller.pod.clone(),
                actual: node.to_owned(),
            });
        }
        if pod.network != claimed.network {
            return Err(SenderMismatch::WrongNetwork {
                pod: caller.pod.clone(),
                actual: network_name(pod.network),
                claimed: network_name(claimed.network),
            });
        }
        if !pod.ips.contains(&claimed.pod_ip) {
            return Err(SenderMismatch::WrongIp {
                pod: caller.pod.clone(),
                actual: join(&pod.ips),
            });
        }
        Ok(())
    }

    /// Checks a host-network agent relaying its node's pod-network agent's
    /// report ([`netmatrix_api::RELAYED_REPORTS_PATH`]): the caller must be a
    /// running host-network agent pod with the token's UID, and the report
    /// must claim the running pod-network agent of the caller's own node
    /// (name and one of its IPs). Returns that pod agent's UID: its reports
    /// are ordered as one pod's, whoever carried them.
    pub fn verify_relay(
        &self,
        caller: &Caller,
        claimed: &AgentIdentity,
    ) -> Result<String, SenderMismatch> {
        let node = caller.node.as_deref().unwrap_or(&claimed.node);
        let relay = self.caller_pod(caller, node)?;
        if relay.network != NetworkMode::Host || claimed.network != NetworkMode::Pod {
            return Err(SenderMismatch::NotARelay {
                pod: caller.pod.clone(),
                relay: network_name(relay.network),
                claimed: network_name(claimed.network),
            });
        }
        if claimed.node != node {
            return Err(SenderMismatch::RelayAcrossNodes {
                pod: caller.pod.clone(),
                node: node.to_owned(),
                claimed: claimed.node.clone(),
            });
        }
        let agent = self
            .agents
            .get(node)
            .and_then(|pods| {
                pods.iter()
                    .find(|p| p.name == claimed.pod && p.network == NetworkMode::Pod)
            })
            .ok_or_else(|| SenderMismatch::NoSuchPod {
                pod: claimed.pod.clone(),
            })?;
        if !agent.ips.contains(&claimed.pod_ip) {
            return Err(SenderMismatch::WrongIp {
                pod: claimed.pod.clone(),
                actual: join(&agent.ips),
            });
        }
        Ok(agent.uid.clone())
    }

    /// The caller's pod on `node`, with the token's UID.
    /// The network of the pinglist `caller` may read for `node`: its own
    /// pod's, on its own node only.
    pub fn verify_fetcher(
        &self,
        caller: &Caller,
        node: &str,
    ) -> Result<NetworkMode, SenderMismatch> {
        if let Some(actual) = caller.node.as_deref()
            && actual != node
        {
            return Err(SenderMismatch::WrongNode {
                pod: caller.pod.clone(),
                actual: actual.to_owned(),
            });
        }
        self.caller_pod(caller, node).map(|pod| pod.network)
    }

    fn caller_pod(&self, caller: &Caller, node: &str) -> Result<&AgentPod, SenderMismatch> {
        let on_node = self
            .agents
            .get(node)
            .and_then(|pods| pods.iter().find(|p| p.name == caller.pod));
        let Some(pod) = on_node else {
            return Err(match self.agent_by_name(&caller.pod) {
                Some((actual, _)) => SenderMismatch::WrongNode {
                    pod: caller.pod.clone(),
                    actual: actual.to_owned(),
                },
                None => SenderMismatch::NoSuchPod {
                    pod: caller.pod.clone(),
                },
            });
        };
        if pod.uid != caller.pod_uid {
            return Err(SenderMismatch::WrongUid {
                pod: caller.pod.clone(),
            });
        }
        Ok(pod)
    }

    /// Nodes whose pod-network agent pod the API lists as Running.
    pub fn running_pod_agents(&self) -> BTreeSet<String> {
        self.agents
            .iter()
            .filter(|(_, pods)| pods.iter().any(|p| p.network == NetworkMode::Pod))
            .map(|(node, _)| node.clone())
            .collect()
    }

    fn agent_by_name(&self, pod: &str) -> Option<(&str, &AgentPod)> {
        self.agents.iter().find_map(|(node, pods)| {
            pods.iter()
                .find(|p| p.name == pod)
                .map(|p| (node.as_str(), p))
        })
    }

    /// Nodes whose agent must be reporting: the [`NodeState::Ready`] ones.
    /// A node that just joined (autoscaling) gets time to pull and start the
    /// agent; a NotReady node runs no pods and is the kubelet's alarm to
    /// raise, not ours; a cordoned node is usually on its way out. All still
    /// appear in the matrix.
    pub fn expected_nodes(&self, now_unix_ms: u64, grace_ms: u64) -> BTreeSet<String> {
        self.node_states(now_unix_ms, grace_ms)
            .into_iter()
            .filter(|(_, state)| *state == NodeState::Ready)
            .map(|(name, _)| name)
            .collect()
    }

    /// Why agents cannot run ([`Inventory::agents_down`]), for the nodes
    /// past their grace period only. A machine that just joined is NotReady
    /// until its CNI's own pod (flannel, calico-node...) has set its network
    /// up, and the agent pod waits for that: the node is joining, not
    /// broken.
    pub fn agents_down_after_grace(
        &self,
        now_unix_ms: u64,
        grace_ms: u64,
    ) -> BTreeMap<String, AgentDown> {
        let young = |node: &str| {
            self.nodes
                .get(node)
                .and_then(|info| info.created_unix_ms)
                .is_some_and(|t| now_unix_ms.saturating_sub(t) < grace_ms)
        };
        self.agents_down
            .iter()
            .filter(|(node, _)| !young(node))
            .map(|(node, why)| (node.clone(), why.clone()))
            .collect()
    }

    /// The state of every node the API lists (nothing before the first sync).
    pub fn node_states(&self, now_unix_ms: u64, grace_ms: u64) -> BTreeMap<String, NodeState> {
        if !self.synced {
            return BTreeMap::new();
        }
        self.nodes
            .iter()
            .map(|(name, info)| {
                (
                    name.clone(),
                    self.node_state(name, info, now_unix_ms, grace_ms),
                )
            })
            .collect()
    }

    /// NotReady and cordoned win over joining: a node in those states is
    /// not probed at all, whatever its age.
    fn node_state(
        &self,
        name: &str,
        info: &NodeInfo,
        now_unix_ms: u64,
        grace_ms: u64,
    ) -> NodeState {
        if !info.ready {
            return NodeState::NotReady;
        }
        if info.unschedulable {
            return NodeState::Cordoned;
        }
        let young = |t: Option<u64>| t.is_some_and(|t| now_unix_ms.saturating_sub(t) < grace_ms);
        let agent_young = self
            .agents
            .get(name)
            .into_iter()
            .flatten()
            .any(|pod| young(pod.started_unix_ms));
        if young(info.created_unix_ms) || agent_young {
            NodeState::Joining
        } else {
            NodeState::Ready
        }
    }

    /// The node an address belongs to: an agent pod's IP first, then the
    /// most specific node pod CIDR that contains it.
    pub fn node_of_ip(&self, ip: IpAddr) -> Option<Arc<str>> {
        self.place(ip).map(|(node, _)| node)
    }

    /// The node and pod of a probed address: an agent's or a probe
    /// target's (a hash look-up, for the quarter of a million peers a round
    /// at 5,000 nodes); else the node whose pod CIDR holds it, with no pod
    /// name (`""`).
    pub fn place(&self, ip: IpAddr) -> Option<(Arc<str>, Arc<str>)> {
        let addresses = self.addresses.0.get_or_init(|| self.index_addresses());
        if let Some(placed) = addresses.pods.get(&ip) {
            return Some((Arc::clone(&placed.node), Arc::clone(&placed.pod)));
        }
        // The most specific pod CIDR holding it.
        addresses
            .prefixes
            .iter()
            .filter(|(v6, _)| *v6 == ip.is_ipv6())
            .find_map(|&(_, prefix)| addresses.cidrs.get(&Cidr { addr: ip, prefix }.key()))
            .map(|node| (Arc::clone(node), crate::store::no_pod()))
    }

    /// Pod-network agents first, then host agents (their node's
    /// addresses), then the other probe targets: the first claim wins.
    /// Of nodes claiming one pod CIDR, the last by name wins.
    fn index_addresses(&self) -> Addresses {
        let mut addresses = foldhash::HashMap::default();
        let agents = |network: NetworkMode| {
            self.agents.iter().flat_map(move |(node, pods)| {
                pods.iter()
                    .filter(move |p| p.network == network)
                    .flat_map(move |p| p.ips.iter().map(move |ip| (*ip, node, &p.name)))
            })
        };
        let targets = self.targets.iter().map(|t| (t.ip, &t.node, &t.pod));
        // One copy of each node's name.
        let mut names: foldhash::HashMap<&str, Arc<str>> = foldhash::HashMap::default();
        fn shared<'a>(names: &mut foldhash::HashMap<&'a str, Arc<str>>, node: &'a str) -> Arc<str> {
            Arc::clone(names.entry(node).or_insert_with(|| Arc::from(node)))
        }
        for (ip, node, pod) in agents(NetworkMode::Pod)
            .chain(agents(NetworkMode::Host))
            .chain(targets)
        {
            if let std::collections::hash_map::Entry::Vacant(entry) = addresses.entry(ip) {
                entry.insert(PlacedPod {
                    node: shared(&mut names, node),
                    pod: Arc::from(pod.as_str()),
                });
            }
        }
        let mut cidrs = foldhash::HashMap::default();
        for (node, info) in &self.nodes {
            let name = shared(&mut names, node);
            for cidr in &info.pod_cidrs {
                cidrs.insert(cidr.key(), Arc::clone(&name));
            }
        }
        let mut prefixes: Vec<(bool, u8)> = cidrs.keys().map(|&(v6, p, _)| (v6, p)).collect();
        prefixes.sort_unstable_by(|a, b| b.cmp(a));
        prefixes.dedup();
        Addresses {
            pods: addresses,
            cidrs,
            prefixes,
        }
    }

    /// Builds a snapshot from Nodes and agent Pods. Pods that are not
    /// Running, are terminating, have no node or no IP are not agents that
    /// may report.
    pub fn from_objects<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
        synced: bool,
    ) -> Self {
        let nodes: Vec<&Node> = nodes.into_iter().collect();
        let pods: Vec<&Pod> = pods.into_iter().collect();
        Self::from_api(&nodes, &pods, &[], "", synced)
    }

    /// [`Inventory::from_objects`], and why agents cannot run from the Pod
    /// Events of the agents' `namespace` too.
    pub fn from_api(
        nodes: &[&Node],
        pods: &[&Pod],
        events: &[&Event],
        namespace: &str,
        synced: bool,
    ) -> Self {
        let agents_down = reasons::agents_down(nodes, pods, events, namespace);
        let truth = nodes
            .iter()
            .map(|node| (node.name_any(), node_truth(node)))
            .collect();
        let nodes = nodes
            .iter()
            .copied()
            .map(|node| {
                let info = NodeInfo {
                    pod_cidrs: pod_cidrs(node),
                    ready: k8s::node_is_ready(node),
                    created_unix_ms: node
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .and_then(k8s::time_to_unix_ms),
                    unschedulable: k8s::node_is_cordoned(node),
                };
                (node.name_any(), info)
            })
            .collect();
        let mut agents: BTreeMap<String, Vec<AgentPod>> = BTreeMap::new();
        for pod in pods {
            if let Some((node, agent)) = running_agent(pod) {
                agents.entry(node).or_default().push(agent);
            }
        }
        Inventory {
            synced,
            nodes,
            agents,
            agents_down,
            truth,
            policies: Default::default(),
            targets: Vec::new(),
            addresses: AddressIndex::default(),
        }
    }
}

/// flannel's annotations on a Node: the address its VTEP is reached at
/// (when not its InternalIP) and its VTEP's MAC.
const FLANNEL_PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
const FLANNEL_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";

/// Drops what the aggregator does not read before a Node enters the
/// watch's cache: a real Node is 10 to 50 KB, mostly its image list, and
/// the aggregator caches every Node (5 GB at 100,000 nodes untrimmed). Kept:
/// the name, creation time and labels; flannel's two annotations; the pod
/// CIDRs and `unschedulable`; the Ready condition and the addresses.
pub fn trim_node(node: &mut Node) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    meta.owner_references = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k == FLANNEL_PUBLIC_IP || k == FLANNEL_BACKEND_DATA);
    }
    if let Some(spec) = node.spec.as_mut() {
        *spec = NodeSpec {
            pod_cidr: spec.pod_cidr.take(),
            pod_cidrs: spec.pod_cidrs.take(),
            unschedulable: spec.unschedulable,
            ..Default::default()
        };
    }
    if let Some(status) = node.status.as_mut() {
        *status = NodeStatus {
            addresses: status.addresses.take(),
            conditions: status
                .conditions
                .take()
                .map(|c| c.into_iter().filter(|c| c.type_ == k8s::READY).collect()),
            ..Default::default()
        };
    }
}

/// The node a pod is bound to.
fn pod_node(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone()
}

/// `spec.podCIDRs`, else `spec.podCIDR`, parsed.
fn pod_cidrs(node: &Node) -> Vec<Cidr> {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.pod_cidrs.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

fn node_truth(node: &Node) -> NodeTruth {
    let pod_cidrs = pod_cidrs(node)
        .into_iter()
        .map(|c| (c.addr, c.prefix))
        .collect();
    let internal_ip = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok());
    let annotation = |key: &str| node.metadata.annotations.as_ref()?.get(key).cloned();
    let vtep_mac = annotation(FLANNEL_BACKEND_DATA)
        .and_then(|data| serde_json::from_str::<serde_json::Value>(&data).ok())
        .and_then(|v| v.get("VtepMAC")?.as_str().map(str::to_ascii_lowercase));
    NodeTruth {
        pod_cidrs,
        internal_ip,
        public_ip: annotation(FLANNEL_PUBLIC_IP).and_then(|ip| ip.parse().ok()),
        vtep_mac,
    }
}

/// Only agent pods of the watch are worth a TokenReview.
impl Roster for Inventory {
    fn is_agent(&self, pod: &str, uid: &str, node: Option<&str>) -> bool {
        let this = |p: &AgentPod| p.name == pod && p.uid == uid;
        match node {
            Some(node) => self
                .agents
                .get(node)
                .is_some_and(|pods| pods.iter().any(this)),
            None => self.agents.values().flatten().any(this),
        }
    }

    fn agents(&self) -> usize {
        self.agents.values().map(Vec::len).sum()
    }
}

/// A Running (no container waiting), non-terminating pod on a node, with
/// an address: the shared reading of [`netmatrix_runtime::k8s`].
fn running_agent(pod: &Pod) -> Option<(String, AgentPod)> {
    if !reasons::runs(pod) {
        return None;
    }
    let node = k8s::pod_node(pod)?.to_owned();
    let ips = k8s::pod_ips(pod);
    if ips.is_empty() {
        return None;
    }
    let network = if reasons::is_host_agent(pod) {
        NetworkMode::Host
    } else {
        NetworkMode::Pod
    };
    Some((
        node,
        AgentPod {
            name: pod.name_any(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ips,
            network,
            started_unix_ms: k8s::pod_started_unix_ms(pod),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            named_ports: named_ports(pod),
        },
    ))
}

/// The pod's named container ports.
fn named_ports(pod: &Pod) -> BTreeMap<String, u16> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect()
}

fn join(ips: &[IpAddr]) -> String {
    let v: Vec<String> = ips.iter().map(ToString::to_string).collect();
    v.join(", ")
}

/// An IPv4 or IPv6 prefix such as `10.244.1.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addr.is_ipv6() == ip.is_ipv6() && self.key() == Cidr { addr: ip, ..*self }.key()
    }

    /// The prefix as a hash key: family, length, and the network bits.
    fn key(&self) -> (bool, u8, u128) {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            let shift = u32::from(width - prefix.min(width));
            if shift >= 128 { 0 } else { bits >> shift }
        }
        match self.addr {
            IpAddr::V4(net) => (
                false,
                self.prefix,
                masked(u32::from(net).into(), self.prefix, 32),
            ),
            IpAddr::V6(net) => (true, self.prefix, masked(u128::from(net), self.prefix, 128)),
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s}: not a CIDR"))?;
        let addr: IpAddr = addr.parse().map_err(|e| format!("{s}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{s}: {e}"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > width {
            return Err(format!("{s}: prefix longer than {width}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where expected nodes and sender identities come from.
#[derive(Clone)]
pub enum InventorySource {
    /// `--no-kubernetes`: nothing is verified; the nodes that have reported
    /// are the expected ones.
    Unverified,
    /// A fixed snapshot (tests, trials).
    Fixed(Arc<Inventory>),
    /// Live reflectors on the Kubernetes API.
    Kubernetes(KubeInventory),
}

impl InventorySource {
    /// The current snapshot, `None` when identities are not verified.
    pub fn snapshot(&self) -> Option<Arc<Inventory>> {
        match self {
            InventorySource::Unverified => None,
            InventorySource::Fixed(inventory) => Some(Arc::clone(inventory)),
            InventorySource::Kubernetes(kube) => Some(kube.snapshot()),
        }
    }
}

/// Reflectors on Nodes and agent Pods, turned into [`Inventory`] snapshots,
/// and on the probe targets (agents and companions), which with the Nodes
/// and the reporters feed the pinglists ([`crate::pinglist`]).
///
/// A snapshot is rebuilt only after a watch event arrived, so report
/// validation costs a pointer clone in the steady state.
#[derive(Clone)]
pub struct KubeInventory {
    nodes: Store<Node>,
    pods: Store<Pod>,
    /// `--peer-selector`, trimmed as the agents trimmed them.
    targets: Store<Pod>,
    events: Store<Event>,
    policies: Store<NetworkPolicy>,
    namespaces: Store<Namespace>,
    namespace: Arc<str>,
    state: Arc<WatchState>,
}

struct WatchState {
    /// Bumped on every event of every watch.
    generation: Arc<AtomicU64>,
    /// Nodes and agent pods gate the inventory's sync.
    nodes: Arc<WatchHealth>,
    pods: Arc<WatchHealth>,
    targets: Arc<WatchHealth>,
    /// Bumped, and [`WatchState::targets_changed`] notified, on events of
    /// the watches the pinglists read (nodes, reporters, probe targets)
    /// only: Events and NetworkPolicies do not wake the pinglist task.
    targets_gen: Arc<AtomicU64>,
    targets_changed: Arc<Notify>,
    /// The nodes those events touched, for an update of their lists only.
    touched: Arc<Mutex<TouchedNodes>>,
    reporters_by_node: PodsByNode,
    targets_by_node: PodsByNode,
    cache: Mutex<Option<(u64, Arc<Inventory>)>>,
}

/// The nodes the pinglists' watches touched since the pinglist task last
/// looked: a Node's own events, a pod's events by its `spec.nodeName`.
#[derive(Debug, Default)]
pub struct TouchedNodes {
    pub nodes: HashSet<String>,
    /// A watch (re)listed: what was deleted meanwhile was never an event,
    /// so everything must be read again.
    pub relisted: bool,
}

/// The names of a pod watch's objects by the node they are bound to, so
/// that the pods of a few nodes are found without reading them all. It may
/// name pods deleted during a watch outage: the store is the truth.
type PodsByNode = Arc<Mutex<HashMap<String, BTreeSet<String>>>>;

/// The `on_event` of a watch the pinglists read: wakes their task and
/// notes which node the event touched (`node_of` its object), and keeps
/// `by_node` (pod watches).
fn touch<K: kube::Resource + 'static>(
    bump: impl Fn() + Send + 'static,
    touched: &Arc<Mutex<TouchedNodes>>,
    node_of: fn(&K) -> Option<String>,
    by_node: Option<PodsByNode>,
) -> impl Fn(&watcher::Event<K>) + Send + 'static {
    let touched = Arc::clone(touched);
    move |event| {
        let index = |object: &K, present: bool| {
            let (Some(by_node), Some(node)) = (&by_node, node_of(object)) else {
                return;
            };
            let mut by_node = by_node.lock().unwrap_or_else(PoisonError::into_inner);
            let name = object.meta().name.clone().unwrap_or_default();
            if present {
                by_node.entry(node).or_default().insert(name);
            } else if let Some(names) = by_node.get_mut(&node) {
                names.remove(&name);
                if names.is_empty() {
                    by_node.remove(&node);
                }
            }
        };
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                index(object, true)
            }
            watcher::Event::Delete(object) => index(object, false),
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
        {
            let mut touched = touched.lock().unwrap_or_else(PoisonError::into_inner);
            match event {
                watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                    if let Some(node) = node_of(object) {
                        touched.nodes.insert(node);
                    }
                }
                watcher::Event::InitDone => touched.relisted = true,
                watcher::Event::Init | watcher::Event::InitApply(_) => {}
            }
        }
        bump();
    }
}

impl KubeInventory {
    /// Starts the watches. They run for the life of the process, retrying
    /// with kube-rs' default backoff; the stores only advance while polled.
    pub fn spawn(
        client: Client,
        namespace: &str,
        agent_selector: &str,
        peer_selector: &str,
    ) -> Self {
        let generation = Arc::new(AtomicU64::new(0));
        let targets_gen = Arc::new(AtomicU64::new(0));
        let targets_changed = Arc::new(Notify::new());
        let touched = Arc::new(Mutex::new(TouchedNodes::default()));
        let reporters_by_node = PodsByNode::default();
        let targets_by_node = PodsByNode::default();
        // Every event the store applied makes the cached snapshot stale.
        let bump = || {
            let generation = Arc::clone(&generation);
            move || {
                generation.fetch_add(1, Ordering::AcqRel);
            }
        };
        // ... and, for the watches the pinglists read, wakes their task (a
        // stored permit: an event while it works is not lost).
        let bump_targets = || {
            let bump = bump();
            let targets_gen = Arc::clone(&targets_gen);
            let notify = Arc::clone(&targets_changed);
            move || {
                bump();
                targets_gen.fetch_add(1, Ordering::AcqRel);
                notify.notify_one();
            }
        };
        let (nodes, nodes_health) = k8s::spawn_reflector(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            "nodes",
            trim_node,
            touch(
                bump_targets(),
                &touched,
                |n: &Node| Some(n.name_any()),
                None,
            ),
        );
        let (pods, pods_health) = k8s::spawn_reflector(
            Api::<Pod>::namespaced(client.clone(), namespace),
            watcher::Config::default().labels(agent_selector),
            "agent pods",
            |_| {},
            touch(
                bump_targets(),
                &touched,
                pod_node,
                Some(Arc::clone(&reporters_by_node)),
            ),
        );
        // The probe targets (agents and companions): what the pod agents'
        // pinglists name. Cached as the agents cached them (trimmed).
        let (targets, targets_health) = k8s::spawn_reflector(
            Api::<Pod>::namespaced(client.clone(), namespace),
            watcher::Config::default().labels(peer_selector),
            "probe targets",
            k8s::targets::trim_pod,
            touch(
                bump_targets(),
                &touched,
                pod_node,
                Some(Arc::clone(&targets_by_node)),
            ),
        );
        // The Events about Pods in the agents' namespace: why an agent pod
        // does not start (FailedCreatePodSandBox, image pulls). Optional:
        // without them (no RBAC for events) the rest works, so their sync
        // does not gate the inventory.
        let (events, _) = k8s::spawn_reflector(
            Api::<Event>::namespaced(client.clone(), namespace),
            watcher::Config::default().fields("involvedObject.kind=Pod"),
            "agent pod events",
            |e: &mut Event| e.managed_fields_mut().clear(),
            {
                let bump = bump();
                move |_| bump()
            },
        );
        // The NetworkPolicies of the agents' namespace and its labels: a
        // probe a policy denies is named as such, not as a broken network.
        // Optional like the Events (without RBAC, probes are judged as if
        // no policy existed).
        let (policies, _) = k8s::spawn_reflector(
            Api::<NetworkPolicy>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
            "network policies",
            |p: &mut NetworkPolicy| p.managed_fields_mut().clear(),
            {
                let bump = bump();
                move |_| bump()
            },
        );
        let (namespaces, _) = k8s::spawn_reflector(
            Api::<Namespace>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={namespace}")),
            "the agents' namespace",
            |n: &mut Namespace| n.managed_fields_mut().clear(),
            {
                let bump = bump();
                move |_| bump()
            },
        );

        KubeInventory {
            nodes,
            pods,
            targets,
            events,
            policies,
            namespaces,
            namespace: namespace.into(),
            state: Arc::new(WatchState {
                generation,
                nodes: nodes_health,
                pods: pods_health,
                targets: targets_health,
                targets_gen,
                targets_changed,
                touched,
                reporters_by_node,
                targets_by_node,
                cache: Mutex::new(None),
            }),
        }
    }

    pub fn snapshot(&self) -> Arc<Inventory> {
        let generation = self.state.generation.load(Ordering::Acquire);
        let mut cache = self
            .state
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((cached, inventory)) = cache.as_ref()
            && *cached == generation
        {
            return Arc::clone(inventory);
        }
        let synced = self.state.nodes.synced() && self.state.pods.synced();
        let nodes = self.nodes.state();
        let pods = self.pods.state();
        let events = self.events.state();
        let mut inventory = Inventory::from_api(
            &refs(&nodes),
            &refs(&pods),
            &refs(&events),
            &self.namespace,
            synced,
        );
        inventory.policies = crate::policy::PolicySet(Arc::new(crate::policy::Policies {
            policies: self
                .policies
                .state()
                .iter()
                .map(|p| NetworkPolicy::clone(p))
                .collect(),
            namespace_labels: self
                .namespaces
                .state()
                .iter()
                .map(|n| (n.name_any(), n.labels().clone()))
                .collect(),
            namespace: self.namespace.to_string(),
        }));
        inventory.targets = self
            .targets
            .state()
            .iter()
            .filter_map(|pod| netmatrix_runtime::k8s::targets::running_pod(pod))
            .filter(|t| !t.is_agent())
            .map(|t| TargetPod {
                node: t.node,
                pod: t.pod,
                ip: t.ip,
            })
            .collect();
        let inventory = Arc::new(inventory);
        *cache = Some((generation, Arc::clone(&inventory)));
        inventory
    }
}

/// What the pinglists are computed from: the Nodes, the reporters and the
/// probe targets, as the stores hold them.
pub type PinglistInputs = (Vec<Arc<Node>>, Vec<Arc<Pod>>, Vec<Arc<Pod>>);

impl KubeInventory {
    /// Whether the three watches the pinglists read have listed (for good:
    /// a watch that fails later keeps its objects).
    pub fn pinglist_synced(&self) -> bool {
        [&self.state.nodes, &self.state.pods, &self.state.targets]
            .iter()
            .all(|h| h.synced())
    }

    /// The pinglists' inputs on `nodes` only: those Nodes, and the
    /// reporter and probe-target pods bound to them. Costs those nodes'
    /// objects, not the cluster's.
    pub fn pinglist_inputs_on(&self, nodes: &HashSet<String>) -> PinglistInputs {
        let on = |by_node: &PodsByNode, store: &Store<Pod>| -> Vec<Arc<Pod>> {
            let by_node = by_node.lock().unwrap_or_else(PoisonError::into_inner);
            nodes
                .iter()
                .filter_map(|node| by_node.get(node))
                .flatten()
                .filter_map(|pod| store.get(&ObjectRef::new(pod).within(&self.namespace)))
                .collect()
        };
        (
            nodes
                .iter()
                .filter_map(|n| self.nodes.get(&ObjectRef::new(n)))
                .collect(),
            on(&self.state.reporters_by_node, &self.pods),
            on(&self.state.targets_by_node, &self.targets),
        )
    }

    /// The pinglists' inputs, once all three watches have listed.
    pub fn pinglist_inputs(&self) -> Option<PinglistInputs> {
        self.pinglist_synced()
            .then(|| (self.nodes.state(), self.pods.state(), self.targets.state()))
    }

    /// The nodes touched since the last call, and whether a watch relisted.
    pub fn take_touched(&self) -> TouchedNodes {
        let mut touched = self
            .state
            .touched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *touched)
    }

    /// Resolves after an event of the nodes, reporter or probe-target
    /// watches (at once when one came since the last call).
    pub async fn targets_changed(&self) {
        self.state.targets_changed.notified().await;
    }

    /// How many events those watches have applied.
    pub fn targets_generation(&self) -> u64 {
        self.state.targets_gen.load(Ordering::Acquire)
    }
}

/// Borrows what a reflector store holds.
fn refs<K>(objects: &[Arc<K>]) -> Vec<&K> {
    objects.iter().map(AsRef::as_ref).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        NodeCondition, NodeSpec, NodeStatus, PodIP, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use netmatrix_api::NetworkMode;
    use netmatrix_api::fixtures::identity;
    use netmatrix_api::labels;

    fn node(name: &str, cidr: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(cidr.into()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod(name: &str, node: &str, ip: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: Some(ip.into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                ..Default::default()
            }),
        }
    }

    /// The caller a TokenReview would give for the pod `id` claims.
    fn caller(pod: &str) -> Caller {
        Caller {
            service_account: "netmatrix-agent".into(),
            pod: pod.into(),
            pod_uid: format!("uid-{pod}"),
            node: None,
        }
    }

    fn verify(inv: &Inventory, id: &AgentIdentity) -> Result<(), SenderMismatch> {
        inv.verify_caller(&caller(&id.pod), id)
    }

    fn sample() -> Inventory {
        let mut terminating = pod("agent-old", "n1", "10.244.1.9", "Running");
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        Inventory::from_objects(
            &[node("n1", "10.244.1.0/24"), node("n2", "10.244.2.0/24")],
            &[
                pod("agent-a", "n1", "10.244.1.2", "Running"),
                pod("agent-b", "n2", "10.244.2.2", "Running"),
                pod("agent-pending", "n2", "10.244.2.3", "Pending"),
                terminating,
            ],
            true,
        )
    }

    #[test]
    fn only_running_live_pods_are_agents() {
        let inv = sample();
        assert_eq!(inv.nodes.len(), 2);
        let names: Vec<_> = inv.agents.values().flatten().map(|p| &p.name).collect();
        assert_eq!(names, ["agent-a", "agent-b"]);
    }

    /// The shared reading (netmatrix_runtime::k8s): an empty nodeName is no
    /// node, and podIPs come first, podIP after them when missing.
    #[test]
    fn agents_need_a_node_name_and_take_every_pod_ip() {
        let mut dual = pod("agent-d", "n1", "10.244.1.4", "Running");
        dual.status.as_mut().unwrap().pod_ips = Some(vec![PodIP {
            ip: "fd00::4".into(),
        }]);
        let inv = Inventory::from_objects(
            &[node("n1", "10.244.1.0/24")],
            &[pod("agent-x", "", "10.244.1.3", "Running"), dual],
            true,
        );
        assert!(!inv.agents.contains_key(""));
        let ips: Vec<String> = inv.agents["n1"][0]
            .ips
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ips, ["fd00::4", "10.244.1.4"]);
    }

    #[test]
    fn verifies_sender_and_says_what_the_api_says() {
        let inv = sample();
        assert_eq!(
            verify(&inv, &identity("n1", "agent-a", "10.244.1.2")),
            Ok(())
        );
        let wrong_node = verify(&inv, &identity("n2", "agent-a", "10.244.1.2"));
        assert_eq!(
            wrong_node.unwrap_err().to_string(),
            "the API says agent pod agent-a runs on node n1"
        );
        let wrong_ip = verify(&inv, &identity("n1", "agent-a", "10.244.1.3"));
        assert!(wrong_ip.unwrap_err().to_string().contains("10.244.1.2"));
        let terminating = verify(&inv, &identity("n1", "agent-old", "10.244.1.9"));
        assert!(matches!(terminating, Err(SenderMismatch::NoSuchPod { .. })));
    }

    #[test]
    fn the_token_decides_who_is_speaking() {
        let inv = sample();
        let a = identity("n1", "agent-a", "10.244.1.2");
        // agent-b's token, with agent-a's real identity in the body.
        assert!(matches!(
            inv.verify_caller(&caller("agent-b"), &a),
            Err(SenderMismatch::WrongNode { .. })
        ));
        let b_as_a = identity("n2", "agent-a", "10.244.2.2");
        assert_eq!(
            inv.verify_caller(&caller("agent-b"), &b_as_a),
            Err(SenderMismatch::WrongPod {
                token: "agent-b".into(),
                claimed: "agent-a".into()
            })
        );
        // A token of an earlier pod of the same name.
        let mut old = caller("agent-a");
        old.pod_uid = "uid-before".into();
        assert_eq!(
            inv.verify_caller(&old, &a),
            Err(SenderMismatch::WrongUid {
                pod: "agent-a".into()
            })
        );
        // The review names the node: the body must agree.
        let mut on_n2 = caller("agent-a");
        on_n2.node = Some("n2".into());
        assert!(inv.verify_caller(&on_n2, &a).is_err());
        let mut on_n1 = caller("agent-a");
        on_n1.node = Some("n1".into());
        assert_eq!(inv.verify_caller(&on_n1, &a), Ok(()));
        let elsewhere = identity("n2", "agent-a", "10.244.1.2");
        assert!(matches!(
            inv.verify_caller(&on_n1, &elsewhere),
            Err(SenderMismatch::WrongNode { .. })
        ));
    }

    #[test]
    fn expects_ready_nodes_after_a_grace_period() {
        let mut not_ready = node("n3", "10.244.3.0/24");
        not_ready.status = None;
        let mut young = node("n4", "10.244.4.0/24");
        young.metadata.creation_timestamp = Some(at(100_000));
        let inv =
            Inventory::from_objects(&[node("n1", "10.244.1.0/24"), not_ready, young], &[], true);
        let expected = |now| {
            inv.expected_nodes(now, 60_000)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(expected(120_000), ["n1"]);
        assert_eq!(expected(160_000), ["n1", "n4"]);
        assert_eq!(inv.nodes.len(), 3, "every node is still known");
    }

    fn at(ms: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_millisecond(ms).unwrap())
    }

    fn host_agent(name: &str, node: &str, ip: &str) -> Pod {
        let mut p = pod(name, node, ip, "Running");
        p.metadata.labels = Some(
            [
                (labels::NAME.to_owned(), labels::APP.to_owned()),
                (
                    labels::COMPONENT.to_owned(),
                    labels::COMPONENT_HOST_AGENT.to_owned(),
                ),
            ]
            .into(),
        );
        p
    }

    #[test]
    fn node_states_follow_the_api_and_the_grace_period() {
        let mut cordoned = node("n2", "10.244.2.0/24");
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let mut not_ready = node("n3", "10.244.3.0/24");
        not_ready.status = None;
        let mut new_node = node("n4", "10.244.4.0/24");
        new_node.metadata.creation_timestamp = Some(at(100_000));
        let mut fresh_agent = pod("agent-n5", "n5", "10.244.5.2", "Running");
        fresh_agent.status.as_mut().unwrap().start_time = Some(at(110_000));
        let inv = Inventory::from_objects(
            &[
                node("n1", "10.244.1.0/24"),
                cordoned,
                not_ready,
                new_node,
                node("n5", "10.244.5.0/24"),
            ],
            &[fresh_agent],
            true,
        );
        let states = inv.node_states(120_000, 60_000);
        let got: Vec<NodeState> = states.values().copied().collect();
        assert_eq!(
            got,
            [
                NodeState::Ready,
                NodeState::Cordoned,
                NodeState::NotReady,
                NodeState::Joining,
                NodeState::Joining
            ]
        );
        let later = inv.node_states(200_000, 60_000);
        assert_eq!(later["n4"], NodeState::Ready);
        assert_eq!(later["n5"], NodeState::Ready);
        assert_eq!(
            inv.expected_nodes(200_000, 60_000)
                .into_iter()
                .collect::<Vec<_>>(),
            ["n1", "n4", "n5"]
        );
        let mut unsynced = inv.clone();
        unsynced.synced = false;
        assert!(unsynced.node_states(200_000, 60_000).is_empty());

        // A joining node NotReady for its CNI is not judged within its
        // grace period; an old one is.
        let mut joining = inv.clone();
        for node in ["n1", "n4"] {
            joining.agents_down.insert(
                node.into(),
                AgentDown {
                    namespace: "netmatrix".into(),
                    cause: crate::diagnosis::DownCause::NodeNetworkNotReady {
                        message: "cni plugin not initialized".into(),
                    },
                    events: Vec::new(),
                },
            );
        }
        let judged = |now| -> Vec<String> {
            joining
                .agents_down_after_grace(now, 60_000)
                .into_keys()
                .filter(|n| n == "n1" || n == "n4")
                .collect()
        };
        assert_eq!(judged(120_000), ["n1"]);
        assert_eq!(judged(200_000), ["n1", "n4"]);
    }

    #[test]
    fn host_agents_may_only_send_host_reports() {
        let mut by_spec = pod("host-b", "n2", "198.18.0.2", "Running");
        by_spec.spec.as_mut().unwrap().host_network = Some(true);
        let inv = Inventory::from_objects(
            &[node("n1", "10.244.1.0/24"), node("n2", "10.244.2.0/24")],
            &[
                pod("agent-a", "n1", "10.244.1.2", "Running"),
                host_agent("host-a", "n1", "198.18.0.1"),
                by_spec,
            ],
            true,
        );
        let mut host = identity("n1", "host-a", "198.18.0.1");
        host.network = NetworkMode::Host;
        assert_eq!(verify(&inv, &host), Ok(()));
        let mut host_b = identity("n2", "host-b", "198.18.0.2");
        host_b.network = NetworkMode::Host;
        assert_eq!(verify(&inv, &host_b), Ok(()));
        let err = verify(&inv, &identity("n1", "host-a", "198.18.0.1")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the API says agent pod host-a is a host-network agent, not a pod-network one"
        );
        let mut pod_as_host = identity("n1", "agent-a", "10.244.1.2");
        pod_as_host.network = NetworkMode::Host;
        assert!(matches!(
            verify(&inv, &pod_as_host),
            Err(SenderMismatch::WrongNetwork { .. })
        ));
        // The node's address belongs to the node.
        assert_eq!(
            inv.node_of_ip("198.18.0.2".parse().unwrap()).as_deref(),
            Some("n2")
        );
    }

    /// What the node facts are checked against: pod CIDRs, the
    /// InternalIP, and flannel's annotations when present.
    #[test]
    fn node_truth_reads_addresses_and_flannel_annotations() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2", "annotations": {
                "flannel.alpha.coreos.com/public-ip": "192.0.2.7",
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0A:58:0A:F4:02:00\"}"
            }},
            "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24", "fd00:2::/64"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n2"},
                {"type": "InternalIP", "address": "198.18.0.2"}
            ]}
        }))
        .unwrap();
        let t = node_truth(&node);
        assert_eq!(
            t.pod_cidrs,
            [
                ("10.244.2.0".parse().unwrap(), 24),
                ("fd00:2::".parse().unwrap(), 64)
            ]
        );
        assert_eq!(t.internal_ip, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(t.public_ip, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(t.vtep_mac.as_deref(), Some("0a:58:0a:f4:02:00"));
        // Without annotations: the InternalIP is where tunnels point.
        let plain = node_truth(&node_named("n3"));
        assert_eq!(plain.public_ip, None);
        assert_eq!(plain.vtep_mac, None);
    }

    fn node_named(name: &str) -> Node {
        node(name, "10.244.3.0/24")
    }

    /// The trimmed Node reads the same (truth, readiness, cordon, age) and
    /// keeps none of the bulk (images, node info, other annotations).
    #[test]
    fn a_trimmed_node_reads_the_same_without_its_bulk() {
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2", "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": {
                "flannel.alpha.coreos.com/public-ip": "192.0.2.7",
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0A:58:0A:F4:02:00\"}",
                "node.alpha.kubernetes.io/ttl": "0"
            }, "managedFields": [{"manager": "kubelet"}]},
            "spec": {"podCIDR": "10.244.2.0/24", "unschedulable": true, "providerID": "aws:///i-1"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "198.18.0.2"}],
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True"}
                ],
                "images": [{"names": ["registry.example/app:1"], "sizeBytes": 1}],
                "nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                    "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "",
                    "operatingSystem": "linux", "osImage": "", "systemUUID": ""}
            }
        }))
        .unwrap();
        let before = (
            node_truth(&node),
            pod_cidrs(&node),
            k8s::node_is_ready(&node),
            k8s::node_is_cordoned(&node),
            node.metadata.creation_timestamp.clone(),
        );
        trim_node(&mut node);
        let after = (
            node_truth(&node),
            pod_cidrs(&node),
            k8s::node_is_ready(&node),
            k8s::node_is_cordoned(&node),
            node.metadata.creation_timestamp.clone(),
        );
        assert_eq!(before, after);
        let status = node.status.as_ref().unwrap();
        assert!(status.images.is_none() && status.node_info.is_none());
        assert_eq!(status.conditions.as_ref().unwrap().len(), 1);
        assert_eq!(node.metadata.annotations.as_ref().unwrap().len(), 2);
        assert!(node.metadata.managed_fields.is_none());
        assert!(node.spec.as_ref().unwrap().provider_id.is_none());
    }

    #[test]
    fn places_addresses_on_nodes() {
        let inv = sample();
        assert_eq!(
            inv.node_of_ip("10.244.2.2".parse().unwrap()).as_deref(),
            Some("n2")
        );
        // A companion pod: not an agent, but inside n1's pod CIDR.
        assert_eq!(
            inv.node_of_ip("10.244.1.77".parse().unwrap()).as_deref(),
            Some("n1")
        );
        assert_eq!(
            inv.node_of_ip("192.0.2.1".parse().unwrap()).as_deref(),
            None
        );
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.244.1.0/24".parse().unwrap();
        assert!(c.contains("10.244.1.255".parse().unwrap()));
        assert!(!c.contains("10.244.2.0".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("198.18.0.1".parse().unwrap()));
        let v6: Cidr = "fd00:10:244:1::/64".parse().unwrap();
        assert!(v6.contains("fd00:10:244:1::5".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("garbage".parse::<Cidr>().is_err());
    }

    /// An address no pod has goes to the most specific pod CIDR holding
    /// it, of its own family.
    #[test]
    fn unknown_addresses_go_to_the_longest_pod_cidr() {
        let node = |cidrs: &[&str]| NodeInfo {
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            ready: true,
            created_unix_ms: None,
            unschedulable: false,
        };
        let mut inv = Inventory::default();
        inv.nodes.insert("wide".into(), node(&["10.244.0.0/16"]));
        // Its first 16 bits are those of 10.244/16: another family.
        inv.nodes.insert("v6-wide".into(), node(&["af4::/16"]));
        inv.nodes.insert(
            "narrow".into(),
            node(&["10.244.7.0/24", "fd00:10:244:7::/64"]),
        );
        let at = |ip: &str| inv.node_of_ip(ip.parse().unwrap()).map(|n| n.to_string());
        assert_eq!(at("10.244.7.9").as_deref(), Some("narrow"));
        assert_eq!(at("10.244.8.9").as_deref(), Some("wide"));
        assert_eq!(at("fd00:10:244:7::9").as_deref(), Some("narrow"));
        // The same leading bits in the other family are the other /16.
        assert_eq!(at("af4::1").as_deref(), Some("v6-wide"));
        assert_eq!(at("10.245.0.1"), None);
        assert_eq!(at("af5::1"), None);
        // A single address, and everything.
        inv.nodes.insert("one".into(), node(&["10.245.0.1/32"]));
        inv.nodes.insert("all".into(), node(&["0.0.0.0/0"]));
        inv.addresses = AddressIndex::default();
        let at = |ip: &str| inv.node_of_ip(ip.parse().unwrap()).map(|n| n.to_string());
        assert_eq!(at("10.245.0.1").as_deref(), Some("one"));
        assert_eq!(at("10.245.0.2").as_deref(), Some("all"));
        assert_eq!(at("10.244.7.9").as_deref(), Some("narrow"));
        assert_eq!(at("af5::1"), None);
    }

    /// The reflectors against a minimal API server on loopback: list, then a
    /// watch that stays open with no events.
    #[tokio::test]
    async fn kube_inventory_syncs_from_the_api() {
        use axum::Router;
        use axum::body::{Body, Bytes};
        use axum::extract::Query;
        use axum::routing::get;
        use std::collections::HashMap;

        fn answer(query: &HashMap<String, String>, list: serde_json::Value) -> Body {
            if query.get("watch").map(String::as_str) == Some("true") {
                Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())
            } else {
                Body::from(list.to_string())
            }
        }
        let nodes = serde_json::json!({
            "apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1"},
            "items": [serde_json::to_value(node("n1", "10.244.1.0/24")).unwrap()]
        });
        let pods = serde_json::json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
            "items": [serde_json::to_value(pod("agent-a", "n1", "10.244.1.2", "Running")).unwrap()]
        });
        // The probe targets: the agent and its node's companion.
        let target = netmatrix_runtime::k8s::targets::fixtures::pod;
        let targets = serde_json::json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
            "items": [
                serde_json::to_value(target("agent-a", "n1", "10.244.1.2", "Running", "agent")).unwrap(),
                serde_json::to_value(target("companion-a", "n1", "10.244.1.3", "Running", "companion")).unwrap(),
            ]
        });
        let app = Router::new()
            .route(
                "/api/v1/nodes",
                get(move |Query(q): Query<HashMap<String, String>>| {
                    let nodes = nodes.clone();
                    async move { answer(&q, nodes) }
                }),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods",
                get(move |Query(q): Query<HashMap<String, String>>| {
                    let (pods, targets) = (pods.clone(), targets.clone());
                    async move {
                        let list = match q.get("labelSelector").map(String::as_str) {
                            Some(netmatrix_api::labels::AGENT_SELECTOR) => pods,
                            Some(netmatrix_api::labels::PEER_SELECTOR) => targets,
                            _ => serde_json::json!({}),
                        };
                        answer(&q, list)
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let url = format!("http://{addr}").parse().unwrap();
        let client = Client::try_from(kube::Config::new(url)).unwrap();
        let kube = KubeInventory::spawn(
            client,
            "netmatrix",
            netmatrix_api::labels::AGENT_SELECTOR,
            netmatrix_api::labels::PEER_SELECTOR,
        );
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let snapshot = loop {
            let snapshot = kube.snapshot();
            if snapshot.synced || tokio::time::Instant::now() > deadline {
                break snapshot;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(snapshot.synced);
        assert_eq!(snapshot.nodes.keys().collect::<Vec<_>>(), ["n1"]);
        assert_eq!(
            verify(&snapshot, &identity("n1", "agent-a", "10.244.1.2")),
            Ok(())
        );
        // Unchanged generation: the same snapshot, not a rebuild.
        assert!(Arc::ptr_eq(&snapshot, &kube.snapshot()));
        // The pinglists' inputs: the probe-target watch sees the companion.
        let inputs = loop {
            if let Some(inputs) = kube.pinglist_inputs() {
                break inputs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "targets never synced"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(kube.targets_generation() > 0);
        let (nodes, reporters, targets) = &inputs;
        let view = crate::pinglist::ClusterView::from_stores(
            nodes.iter().map(AsRef::as_ref),
            reporters.iter().map(AsRef::as_ref),
            targets.iter().map(AsRef::as_ref),
        );
        let on_n1: Vec<&str> = view.nodes["n1"]
            .pod_targets
            .iter()
            .map(|p| p.pod.as_str())
            .collect();
        assert_eq!(on_n1, ["agent-a", "companion-a"]);
        assert!(view.pod_ring.contains("n1"));
        // The initial lists are noted as a relist (read everything), and
        // n1's objects are found by node without reading them all.
        assert!(kube.take_touched().relisted);
        assert!(!kube.take_touched().relisted, "taken");
        let n1: HashSet<String> = ["n1".to_owned()].into();
        let (nodes_on, reporters_on, targets_on) = kube.pinglist_inputs_on(&n1);
        let names = |pods: &[Arc<Pod>]| {
            let mut names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
            names.sort();
            names
        };
        assert_eq!(nodes_on.len(), 1);
        assert_eq!(names(&reporters_on), names(reporters));
        assert_eq!(names(&targets_on), names(targets));
        let none = kube.pinglist_inputs_on(&["n9".to_owned()].into());
        assert!(none.0.is_empty() && none.1.is_empty() && none.2.is_empty());
    }
}
