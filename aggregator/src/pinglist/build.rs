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

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use netmatrix_api::sampling::{PeerSampling, Ring, ring_position};
use netmatrix_api::{
    GoneAgent, NetworkMode, PINGLIST_VERSION, PeerRole, Pinglist, PinglistNode, PinglistPod,
    RotationEpoch, SamplingWindow, SrvAgent, SrvTruth, labels,
};
use netmatrix_runtime::k8s::targets::PodInfo;

use super::view::{ClusterView, NodeEntry};

/// Epochs a rotation window covers beyond its base: `[b, b + W]`, W + 1
/// entries, so the list due at `b + W` still covers that epoch while it is
/// being renewed.
pub const ROTATION_WINDOW_EPOCHS: u64 = 8;
/// An epoch is this many probe intervals (the agents' former
/// `ROTATE_EVERY_ROUNDS`).
pub const ROTATE_EVERY_ROUNDS: u64 = 6;

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

/// The pinglist of `key`'s agent. `ring` is `view`'s ring of the key's
/// network (built once per update: at 100,000 nodes a ring is a sort);
/// `window` is used only when the ring is sampled.
pub fn build(
    view: &ClusterView,
    ring: &Ring<'_>,
    key: (&str, NetworkMode),
    window: &Window,
    gone: &Gone,
    cfg: &PinglistConfig,
) -> Pinglist {
    let (me, network) = key;
    let entry_of = |name: &str| -> PinglistNode {
        let entry = view.nodes.get(name);
        PinglistNode {
            skip: entry.and_then(|e| e.skip),
            pods: entry
                .map(|e| e.targets(network).iter().map(pinglist_pod).collect())
                .unwrap_or_default(),
        }
    };
    let (nodes, sampling, srv) = if cfg.full_mesh(ring.len()) {
        let mut nodes: BTreeMap<String, PinglistNode> = view
            .nodes
            .iter()
            .filter(|(_, e)| !e.targets(network).is_empty())
            .map(|(name, _)| (name.clone(), entry_of(name)))
            .collect();
        nodes.entry(me.to_owned()).or_insert_with(|| entry_of(me));
        let srv = SrvTruth {
            complete: true,
            agents: srv_agents(view.nodes.iter()),
            gone: Vec::new(),
        };
        (nodes, None, srv)
    } else {
        let stable: Vec<String> = ring
            .stable_targets(me, &cfg.sampling)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let scope: BTreeSet<&str> = std::iter::once(me)
            .chain(stable.iter().map(String::as_str))
            .collect();
        let nodes = scope
            .iter()
            .copied()
            .chain(window.nodes().map(String::as_str))
            .map(|name| (name.to_owned(), entry_of(name)))
            .collect();
        let mut gone: Vec<GoneAgent> = scope
            .iter()
            .filter_map(|n| gone.get(*n))
            .flatten()
            .cloned()
            .collect();
        gone.sort();
        let srv = SrvTruth {
            complete: false,
            agents: srv_agents(scope.iter().filter_map(|n| view.nodes.get_key_value(*n))),
            gone,
        };
        let sampling = SamplingWindow {
            ring_nodes: window.ring_nodes,
            epoch_ms: cfg.epoch_ms,
            stable,
            rotation: window.rotation.clone(),
        };
        (nodes, Some(sampling), srv)
    };
    let local_pod_agent = match network {
        NetworkMode::Host => view
            .nodes
            .get(me)
            .and_then(|e| e.pod_agents.first())
            .map(|p| p.ip),
        NetworkMode::Pod => None,
    };
    Pinglist {
        version: PINGLIST_VERSION,
        node: me.to_owned(),
        network,
        nodes,
        sampling,
        srv,
        aggregators: cfg.aggregators.clone(),
        local_pod_agent,
        apiserver_ip: cfg.apiserver_ip,
    }
}

/// The pod agents of `nodes`, sorted by node then pod (the map's order).
fn srv_agents<'a>(nodes: impl Iterator<Item = (&'a String, &'a NodeEntry)>) -> Vec<SrvAgent> {
    nodes
        .flat_map(|(_, e)| &e.pod_agents)
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
