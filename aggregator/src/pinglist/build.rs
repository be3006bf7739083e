//! One pinglist from the view: a pure function, so the same inputs give
//! the same bytes (and the same ETag) in any process.
//!
//! - **Full mesh** (a small ring, the rule of [`Ring::targets`]): every node
//!   with targets of the list's network, skipped ones with their `skip`,
//!   and the SRV truth of the whole cluster (`complete`).
//! - **Sampled**: the own node, its `stable` nodes on the current ring, and
//!   the nodes the rotation [`Window`] names; the SRV truth of the own and
//!   stable nodes only, with their departed agents (`gone`).
//!
//! Rotation is computed against the ring at the list's last renewal and
//! kept for [`ROTATION_WINDOW_EPOCHS`] epochs, so a join or a leave touches
//! only the lists whose stable set or named nodes it changes. Renewals are
//! staggered by the node's ring position: about 1/W of the lists per epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use serde_json::value::RawValue;

use netmatrix_api::sampling::{PeerSampling, Ring, ring_position};
use netmatrix_api::{
    GoneAgent, NetworkMode, PINGLIST_VERSION, PeerRole, Pinglist, PinglistNode, PinglistPod,
    RotationEpoch, SamplingWindow, SrvAgent, SrvTruth, labels,
};
use netmatrix_runtime::k8s::targets::PodInfo;

use super::view::{ClusterView, NETWORKS, NodeEntry};

/// Epochs a rotation window covers beyond its base: `[b, b + W]`, W + 1
/// entries, so the list due at `b + W` still covers that epoch while it is
/// being renewed.
pub const ROTATION_WINDOW_EPOCHS: u64 = 8;
/// An epoch is this many probe intervals, as for agents on their own watches.
pub use netmatrix_api::sampling::ROTATE_EVERY_ROUNDS;

/// What every list shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinglistConfig {
    pub sampling: PeerSampling,
    /// Length of an epoch, in ms (`--interval` × [`ROTATE_EVERY_ROUNDS`]).
    pub epoch_ms: u64,
    /// Where the aggregator is reached directly (`--advertise`).
    pub aggregators: Vec<SocketAddr>,
    /// The API's ClusterIP, for agents with no A expectation of their own.
    pub apiserver_ip: Option<IpAddr>,
}

impl Default for PinglistConfig {
    fn default() -> Self {
        PinglistConfig {
            sampling: PeerSampling::default(),
            epoch_ms: 5_000 * ROTATE_EVERY_ROUNDS,
            aggregators: Vec::new(),
            apiserver_ip: None,
        }
    }
}

impl PinglistConfig {
    /// The epoch at `unix_ms`.
    pub fn epoch(&self, unix_ms: u64) -> u64 {
        unix_ms / self.epoch_ms.max(1)
    }

    /// Whether a ring of `ring_len` nodes is probed as a full mesh.
    pub fn full_mesh(&self, ring_len: usize) -> bool {
        ring_len <= self.sampling.full_mesh_max_nodes
            || ring_len.saturating_sub(1) <= self.sampling.per_agent()
    }
}

/// The departed pod agents by the node they were on, oldest first.
pub type Gone = BTreeMap<String, Vec<GoneAgent>>;

/// A list's rotation, frozen at its renewal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    /// The epoch of the renewal: the rotation covers `[base, base + W]`.
    pub base: u64,
    /// Nodes on the ring at renewal.
    pub ring_nodes: u32,
    pub rotation: Vec<RotationEpoch>,
}

/// The epoch at or before `epoch` at which `node`'s list is renewed: the
/// latest `b` with `(b + ring_position(node) % W) % W == 0`. Each node's
/// phase comes from its name, so renewals spread over the W epochs and no
/// join or leave moves them.
pub fn due_base(node: &str, epoch: u64) -> u64 {
    let w = ROTATION_WINDOW_EPOCHS;
    let phase = ring_position(node) % w;
    let back = (epoch % w + phase) % w;
    epoch.saturating_sub(back)
}

impl Window {
    /// The window of `node` renewed in `epoch`, against `ring` as it is now.
    pub fn renew(ring: &Ring<'_>, node: &str, sampling: &PeerSampling, epoch: u64) -> Window {
        let base = due_base(node, epoch);
        Window {
            base,
            ring_nodes: u32::try_from(ring.len()).unwrap_or(u32::MAX),
            rotation: (base..=base + ROTATION_WINDOW_EPOCHS)
                .map(|epoch| RotationEpoch {
                    epoch,
                    nodes: ring
                        .rotating_targets(node, sampling, epoch)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                })
                .collect(),
        }
    }

    /// Every node the rotation names.
    pub fn nodes(&self) -> impl Iterator<Item = &String> {
        self.rotation.iter().flat_map(|r| &r.nodes)
    }
}

/// What one list names, before it is put in words: its nodes, its
/// sampling, whose pod agents are its SRV truth.
struct Selection<'a> {
    /// Sorted, without duplicates; names of the view or of the window
    /// (a frozen rotation may name a node that has left: it has no pods).
    nodes: Vec<&'a str>,
    sampling: Option<SamplingWindow>,
    /// The whole cluster's agents (full mesh), or those of `srv_nodes`.
    complete: bool,
    srv_nodes: Vec<&'a str>,
    gone: Vec<GoneAgent>,
    local_pod_agent: Option<IpAddr>,
}

fn select<'a>(
    view: &'a ClusterView,
    ring: &Ring<'a>,
    key: (&'a str, NetworkMode),
    window: &'a Window,
    gone: &Gone,
    cfg: &PinglistConfig,
) -> Selection<'a> {
    let (me, network) = key;
    let local_pod_agent = match network {
        NetworkMode::Host => view
            .nodes
            .get(me)
            .and_then(|e| e.pod_agents.first())
            .map(|p| p.ip),
        NetworkMode::Pod => None,
    };
    if cfg.full_mesh(ring.len()) {
        let nodes: BTreeSet<&str> = view
            .nodes
            .iter()
            .filter(|(_, e)| !e.targets(network).is_empty())
            .map(|(name, _)| name.as_str())
            .chain(std::iter::once(me))
            .collect();
        return Selection {
            nodes: nodes.into_iter().collect(),
            sampling: None,
            complete: true,
            srv_nodes: view.nodes.keys().map(String::as_str).collect(),
            gone: Vec::new(),
            local_pod_agent,
        };
    }
    let stable = ring.stable_targets(me, &cfg.sampling);
    let scope: BTreeSet<&str> = std::iter::once(me).chain(stable.iter().copied()).collect();
    let nodes: BTreeSet<&str> = scope
        .iter()
        .copied()
        .chain(window.nodes().map(String::as_str))
        .collect();
    let mut departed: Vec<GoneAgent> = scope
        .iter()
        .filter_map(|n| gone.get(*n))
        .flatten()
        .cloned()
        .collect();
    departed.sort();
    Selection {
        nodes: nodes.into_iter().collect(),
        sampling: Some(SamplingWindow {
            ring_nodes: window.ring_nodes,
            epoch_ms: cfg.epoch_ms,
            stable: stable.into_iter().map(str::to_owned).collect(),
            rotation: window.rotation.clone(),
        }),
        complete: false,
        srv_nodes: scope.into_iter().collect(),
        gone: departed,
        local_pod_agent,
    }
}

/// The pinglist of `key`'s agent. `ring` is `view`'s ring of the key's
/// network; `window` is used only when the ring is sampled. The reference
/// for [`encode`], which writes the same bytes from encoded pieces.
pub fn build<'a>(
    view: &'a ClusterView,
    ring: &Ring<'a>,
    key: (&'a str, NetworkMode),
    window: &'a Window,
    gone: &Gone,
    cfg: &PinglistConfig,
) -> Pinglist {
    let (me, network) = key;
    let s = select(view, ring, key, window, gone, cfg);
    Pinglist {
        version: PINGLIST_VERSION,
        node: me.to_owned(),
        network,
        nodes: s
            .nodes
            .iter()
            .map(|n| ((*n).to_owned(), pinglist_node(view.nodes.get(*n), network)))
            .collect(),
        sampling: s.sampling,
        srv: SrvTruth {
            complete: s.complete,
            agents: srv_agents(s.srv_nodes.iter().filter_map(|n| view.nodes.get(*n))),
            gone: s.gone,
        },
        aggregators: cfg.aggregators.clone(),
        local_pod_agent: s.local_pod_agent,
        apiserver_ip: cfg.apiserver_ip,
    }
}

fn pinglist_node(entry: Option<&NodeEntry>, network: NetworkMode) -> PinglistNode {
    PinglistNode {
        skip: entry.and_then(|e| e.skip),
        pods: entry
            .map(|e| e.targets(network).iter().map(pinglist_pod).collect())
            .unwrap_or_default(),
    }
}

/// One node's part of every list that names it, encoded once when the
/// node changes: its [`PinglistNode`] per network and its pod agents as
/// [`SrvAgent`]s. A list is then put together from its nodes' pieces.
#[derive(Debug, Clone)]
pub struct NodePieces {
    nodes: [Box<RawValue>; 2],
    agents: Vec<Box<RawValue>>,
}

/// A node the view does not have: no pods.
fn empty_node() -> Box<RawValue> {
    raw(&PinglistNode {
        skip: None,
        pods: Vec::new(),
    })
}

fn raw<T: serde::Serialize>(value: &T) -> Box<RawValue> {
    // Strings, addresses and integers: always serializable, always JSON.
    serde_json::value::to_raw_value(value)
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).unwrap_or_default())
}

impl NodePieces {
    pub fn of(entry: &NodeEntry) -> Self {
        let agents: Vec<SrvAgent> = srv_agents(std::iter::once(entry));
        NodePieces {
            nodes: NETWORKS.map(|network| raw(&pinglist_node(Some(entry), network))),
            agents: agents.iter().map(raw).collect(),
        }
    }
}

/// The pieces of every node of a view, by name.
pub type Pieces = HashMap<String, NodePieces>;

/// The bytes of the list [`build`] describes, put together from the
/// nodes' `pieces` (which must be those of `view`'s entries).
pub fn encode<'a>(
    view: &'a ClusterView,
    pieces: &Pieces,
    ring: &Ring<'a>,
    key: (&'a str, NetworkMode),
    window: &'a Window,
    gone: &Gone,
    cfg: &PinglistConfig,
) -> (Vec<u8>, Vec<String>) {
    let (me, network) = key;
    let s = select(view, ring, key, window, gone, cfg);
    let empty = empty_node();
    let node_piece = |name: &str| -> &RawValue {
        pieces.get(name).map_or(&*empty, |p| {
            &*p.nodes[usize::from(network == NetworkMode::Host)]
        })
    };
    let encoded = Encoded {
        version: PINGLIST_VERSION,
        node: me,
        network,
        nodes: Pairs(s.nodes.iter().map(|n| (*n, node_piece(n))).collect()),
        sampling: s.sampling.as_ref(),
        srv: EncodedSrv {
            complete: s.complete,
            agents: s
                .srv_nodes
                .iter()
                .filter_map(|n| pieces.get(*n))
                .flat_map(|p| p.agents.iter().map(|a| &**a))
                .collect(),
            gone: &s.gone,
        },
        aggregators: &cfg.aggregators,
        local_pod_agent: s.local_pod_agent,
        apiserver_ip: cfg.apiserver_ip,
    };
    // Borrowed strings, raw JSON and integers: always serializable.
    let body = serde_json::to_vec(&encoded).unwrap_or_default();
    (body, s.nodes.iter().map(|n| (*n).to_owned()).collect())
}

/// [`Pinglist`] as it is written, field for field (same order, same
/// omissions), with its nodes and agents already encoded.
#[derive(serde::Serialize)]
struct Encoded<'a> {
    version: u32,
    node: &'a str,
    network: NetworkMode,
    nodes: Pairs<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampling: Option<&'a SamplingWindow>,
    srv: EncodedSrv<'a>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    aggregators: &'a [SocketAddr],
    #[serde(skip_serializing_if = "Option::is_none")]
    local_pod_agent: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apiserver_ip: Option<IpAddr>,
}

#[derive(serde::Serialize)]
struct EncodedSrv<'a> {
    complete: bool,
    agents: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    gone: &'a [GoneAgent],
}

/// Sorted (name, piece) pairs, written as a JSON object.
struct Pairs<'a>(Vec<(&'a str, &'a RawValue)>);

impl serde::Serialize for Pairs<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// The pod agents of `nodes`, in their order, then by pod.
fn srv_agents<'a>(nodes: impl IntoIterator<Item = &'a NodeEntry>) -> Vec<SrvAgent> {
    nodes
        .into_iter()
        .flat_map(|e| &e.pod_agents)
        .map(|p| SrvAgent {
            node: p.node.clone(),
            pod: p.pod.clone(),
            ip: p.ip,
            ready: p.ready,
            started_unix_ms: p.started_unix_ms,
            ready_since_unix_ms: p.ready_since_unix_ms,
        })
        .collect()
}

fn pinglist_pod(p: &PodInfo) -> PinglistPod {
    PinglistPod {
        pod: p.pod.clone(),
        ip: p.ip,
        role: match p.component.as_deref() {
            Some(labels::COMPONENT_AGENT) => PeerRole::Agent,
            Some(labels::COMPONENT_COMPANION) => PeerRole::Companion,
            Some(labels::COMPONENT_HOST_AGENT) => PeerRole::HostAgent,
            _ => PeerRole::Other,
        },
        // The trimmed reading keeps no container ports: the agents' port
        // flags decide, as today.
        port: None,
    }
}
