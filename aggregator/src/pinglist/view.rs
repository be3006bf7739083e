//! The cluster as the pinglists read it: per node, its skip, its probe
//! targets of each network and its pod agents; one ring per network. Read
//! with the agents' own rules ([`netmatrix_runtime::k8s::targets`]), so a
//! Node heartbeat (same Ready, same cordon) reads the same and diffs empty.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod};
use netmatrix_api::{NetworkMode, NodeSkip, labels};
use netmatrix_runtime::k8s::targets::{self, PodInfo};

/// One pinglist: the node it is for and its agent's network.
pub type Key = (String, NetworkMode);

/// The networks, in the order lists are built and keyed.
pub const NETWORKS: [NetworkMode; 2] = [NetworkMode::Pod, NetworkMode::Host];

/// One node as the pinglists read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeEntry {
    /// Cordoned or NotReady; `None` also when the node watch does not know
    /// the node (yet): a lagging node watch must not cost peers.
    pub skip: Option<NodeSkip>,
    /// Running probe targets of the pod network (`--peer-selector`: agents
    /// and companions), sorted.
    pub pod_targets: Vec<PodInfo>,
    /// Running host agents (the reporters with `component=host-agent`), sorted.
    pub host_targets: Vec<PodInfo>,
    /// Running pod agents (the reporters with `component=agent`), sorted:
    /// what the agents' SRV record should list. A DaemonSet runs one per
    /// node; more than one is kept, as DNS would list them all.
    pub pod_agents: Vec<PodInfo>,
}

impl NodeEntry {
    /// The probe targets of `network`'s agents on this node.
    pub fn targets(&self, network: NetworkMode) -> &[PodInfo] {
        match network {
            NetworkMode::Pod => &self.pod_targets,
            NetworkMode::Host => &self.host_targets,
        }
    }

    /// A list exists for a node's network while an agent of it runs there.
    pub fn has_agent(&self, network: NetworkMode) -> bool {
        match network {
            NetworkMode::Pod => !self.pod_agents.is_empty(),
            NetworkMode::Host => !self.host_targets.is_empty(),
        }
    }

    fn is_empty(&self) -> bool {
        self.pod_targets.is_empty() && self.host_targets.is_empty() && self.pod_agents.is_empty()
    }
}

/// Every node with a target or an agent, and the rings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Nodes with a pod-network target and no skip: today's ring of the
    /// pod agents (skipped nodes leave it).
    pub pod_ring: BTreeSet<String>,
    /// The same for the host agents.
    pub host_ring: BTreeSet<String>,
}

/// What changed between two views.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewDiff {
    /// Nodes whose entry was added, removed or changed.
    pub changed_nodes: BTreeSet<String>,
    pub ring_added: BTreeSet<(NetworkMode, String)>,
    pub ring_removed: BTreeSet<(NetworkMode, String)>,
    /// Pod agent addresses no Running pod agent has any more, with the node
    /// they were on: DNS may still list them for a while.
    pub agents_gone: Vec<(IpAddr, String)>,
}

impl ViewDiff {
    pub fn is_empty(&self) -> bool {
        self.changed_nodes.is_empty() && self.ring_added.is_empty() && self.ring_removed.is_empty()
    }
}

impl ClusterView {
    /// Reads the three watches: Nodes (skips), the reporters (pod agents
    /// and host agents, `--agent-selector`) and the probe targets
    /// (`--peer-selector`).
    pub fn from_stores<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        reporters: impl IntoIterator<Item = &'a Pod>,
        probe_targets: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let mut entries: BTreeMap<String, NodeEntry> = BTreeMap::new();
        for pod in targets::running_pods(probe_targets) {
            entries
                .entry(pod.node.clone())
                .or_default()
                .pod_targets
                .push(pod);
        }
        for pod in targets::running_pods(reporters) {
            let entry = entries.entry(pod.node.clone()).or_default();
            match pod.component.as_deref() {
                Some(labels::COMPONENT_AGENT) => entry.pod_agents.push(pod),
                Some(labels::COMPONENT_HOST_AGENT) => entry.host_targets.push(pod),
                _ => {}
            }
        }
        let skipped = targets::skipped_nodes(nodes);
        for (name, entry) in &mut entries {
            entry.skip = skipped.get(name).copied();
        }
        Self::from_entries(entries)
    }

    /// The view of `nodes` (entries with nothing in them are dropped), its
    /// rings derived.
    pub fn from_entries(mut nodes: BTreeMap<String, NodeEntry>) -> Self {
        nodes.retain(|_, e| !e.is_empty());
        let ring = |network| -> BTreeSet<String> {
            nodes
                .iter()
                .filter(|(_, e)| e.skip.is_none() && !e.targets(network).is_empty())
                .map(|(n, _)| n.clone())
                .collect()
        };
        ClusterView {
            pod_ring: ring(NetworkMode::Pod),
            host_ring: ring(NetworkMode::Host),
            nodes,
        }
    }

    pub fn ring(&self, network: NetworkMode) -> &BTreeSet<String> {
        match network {
            NetworkMode::Pod => &self.pod_ring,
            NetworkMode::Host => &self.host_ring,
        }
    }

    /// The lists that should exist: one per node and network with an agent.
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.nodes.iter().flat_map(|(name, entry)| {
            NETWORKS
                .into_iter()
                .filter(|net| entry.has_agent(*net))
                .map(|net| (name.clone(), net))
        })
    }

    /// Every Running pod agent's address.
    pub fn pod_agent_ips(&self) -> HashSet<IpAddr> {
        self.nodes
            .values()
            .flat_map(|e| &e.pod_agents)
            .map(|p| p.ip)
            .collect()
    }

    /// What changed since `old`.
    pub fn diff(&self, old: &ClusterView) -> ViewDiff {
        let names: BTreeSet<&String> = self.nodes.keys().chain(old.nodes.keys()).collect();
        let changed_nodes = names
            .into_iter()
            .filter(|n| self.nodes.get(*n) != old.nodes.get(*n))
            .cloned()
            .collect();
        let mut ring_added = BTreeSet::new();
        let mut ring_removed = BTreeSet::new();
        for network in NETWORKS {
            let (new, old) = (self.ring(network), old.ring(network));
            ring_added.extend(new.difference(old).map(|n| (network, n.clone())));
            ring_removed.extend(old.difference(new).map(|n| (network, n.clone())));
        }
        let current = self.pod_agent_ips();
        let agents_gone = old
            .nodes
            .iter()
            .flat_map(|(node, e)| e.pod_agents.iter().map(move |p| (p.ip, node)))
            .filter(|(ip, _)| !current.contains(ip))
            .map(|(ip, node)| (ip, node.clone()))
            .collect();
        ViewDiff {
            changed_nodes,
            ring_added,
            ring_removed,
            agents_gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_runtime::k8s::targets::fixtures::{node, pod};

    fn view(nodes: &[Node]) -> ClusterView {
        let reporters = [
            pod("agent-1", "n1", "10.244.1.2", "Running", "agent"),
            pod("host-agent-1", "n1", "198.18.0.1", "Running", "host-agent"),
            pod("agent-2", "n2", "10.244.2.2", "Running", "agent"),
            pod("host-agent-2", "n2", "198.18.0.2", "Running", "host-agent"),
            pod("agent-3", "n3", "10.244.3.2", "Pending", "agent"),
        ];
        let targets = [
            pod("agent-1", "n1", "10.244.1.2", "Running", "agent"),
            pod("companion-1", "n1", "10.244.1.3", "Running", "companion"),
            pod("agent-2", "n2", "10.244.2.2", "Running", "agent"),
            pod("companion-2", "n2", "10.244.2.3", "Running", "companion"),
            pod("companion-4", "n4", "10.244.4.3", "Running", "companion"),
        ];
        ClusterView::from_stores(nodes, &reporters, &targets)
    }

    #[test]
    fn the_view_reads_targets_agents_and_skips() {
        let v = view(&[
            node("n1", false, Some("True")),
            node("n2", true, Some("True")),
        ]);
        assert_eq!(v.nodes.keys().collect::<Vec<_>>(), ["n1", "n2", "n4"]);
        let n1 = &v.nodes["n1"];
        assert_eq!(n1.pod_targets.len(), 2);
        assert_eq!(n1.host_targets[0].pod, "host-agent-1");
        assert_eq!(n1.pod_agents[0].pod, "agent-1");
        assert_eq!(v.nodes["n2"].skip, Some(NodeSkip::Cordoned));
        // n4 is not in the node watch: not skipped, on the pod ring.
        assert_eq!(v.pod_ring, ["n1".to_owned(), "n4".to_owned()].into());
        assert_eq!(v.host_ring, ["n1".to_owned()].into());
        let keys: Vec<Key> = v.keys().collect();
        assert_eq!(
            keys,
            [
                ("n1".to_owned(), NetworkMode::Pod),
                ("n1".to_owned(), NetworkMode::Host),
                ("n2".to_owned(), NetworkMode::Pod),
                ("n2".to_owned(), NetworkMode::Host),
            ]
        );
    }

    /// A heartbeat moves the Ready condition's times, not its status: the
    /// view reads the same, and the diff is empty.
    #[test]
    fn a_heartbeat_diffs_empty_a_cordon_does_not() {
        let ready = node("n2", false, Some("True"));
        let mut heartbeat = ready.clone();
        heartbeat
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .last_heartbeat_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_millisecond(5).unwrap(),
        ));
        let before = view(std::slice::from_ref(&ready));
        assert!(view(&[heartbeat]).diff(&before).is_empty());
        let cordoned = view(&[node("n2", true, Some("True"))]);
        let d = cordoned.diff(&before);
        assert_eq!(d.changed_nodes, ["n2".to_owned()].into());
        assert_eq!(
            d.ring_removed,
            [
                (NetworkMode::Pod, "n2".to_owned()),
                (NetworkMode::Host, "n2".to_owned())
            ]
            .into()
        );
        assert!(d.agents_gone.is_empty());
    }

    #[test]
    fn departed_agents_are_named_with_their_node() {
        let before = view(&[]);
        let mut after = before.clone();
        after.nodes.get_mut("n2").unwrap().pod_agents.clear();
        let d = after.diff(&before);
        assert_eq!(
            d.agents_gone,
            [("10.244.2.2".parse().unwrap(), "n2".to_owned())]
        );
    }
}
