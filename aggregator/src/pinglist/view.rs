//! The cluster as the pinglists read it: per node, its skip, its probe
//! targets of each network and its pod agents; one ring per network. Read
//! with the agents' own rules ([`netmatrix_runtime::k8s::targets`]), so a
//! Node heartbeat (same Ready, same cordon) reads the same and diffs empty.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod};
use netmatrix_api::sampling::ring_position;
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

    /// On `network`'s ring: a target of it, and not skipped.
    fn on_ring(&self, network: NetworkMode) -> bool {
        self.skip.is_none() && !self.targets(network).is_empty()
    }
}

/// Index of `network` in per-network arrays ([`NETWORKS`]' order).
fn slot(network: NetworkMode) -> usize {
    usize::from(network == NetworkMode::Host)
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
    /// Each ring in ring order (position, name), kept sorted as nodes come
    /// and go so that no update sorts or copies 100,000 names again.
    ordered: [Vec<(u64, String)>; 2],
    /// Per network, the nodes with an agent but off the ring (cordoned,
    /// NotReady, or without targets of it): their lists sit at their hash.
    off_ring: [BTreeSet<String>; 2],
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
    /// Pod agent addresses of the changed nodes (all of them for a whole
    /// view): an address there is no longer gone.
    pub agents_present: HashSet<IpAddr>,
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

    /// The entries of the nodes `names` only, read from the watches'
    /// objects as [`from_stores`](Self::from_stores) reads them (`None`: the
    /// node has nothing the lists read), for [`set_entries`](Self::set_entries).
    pub fn entries_of<'a>(
        names: &HashSet<String>,
        nodes: impl IntoIterator<Item = &'a Node>,
        reporters: impl IntoIterator<Item = &'a Pod>,
        probe_targets: impl IntoIterator<Item = &'a Pod>,
    ) -> Vec<(String, Option<NodeEntry>)> {
        let named = |name: Option<&String>| name.is_some_and(|n| names.contains(n));
        let on_named = |pod: &&Pod| named(pod.spec.as_ref().and_then(|s| s.node_name.as_ref()));
        let mut view = Self::from_stores(
            nodes
                .into_iter()
                .filter(|n| named(n.metadata.name.as_ref())),
            reporters.into_iter().filter(on_named),
            probe_targets.into_iter().filter(on_named),
        );
        names
            .iter()
            .map(|name| (name.clone(), view.nodes.remove(name)))
            .collect()
    }

    /// The view of `nodes` (entries with nothing in them are dropped), its
    /// rings derived.
    pub fn from_entries(mut nodes: BTreeMap<String, NodeEntry>) -> Self {
        nodes.retain(|_, e| !e.is_empty());
        let mut view = ClusterView::default();
        for network in NETWORKS {
            let mut ordered = Vec::new();
            for (name, entry) in &nodes {
                if entry.on_ring(network) {
                    view.ring_mut(network).insert(name.clone());
                    ordered.push((ring_position(name), name.clone()));
                } else if entry.has_agent(network) {
                    view.off_ring[slot(network)].insert(name.clone());
                }
            }
            ordered.sort_unstable();
            view.ordered[slot(network)] = ordered;
        }
        view.nodes = nodes;
        view
    }

    pub fn ring(&self, network: NetworkMode) -> &BTreeSet<String> {
        match network {
            NetworkMode::Pod => &self.pod_ring,
            NetworkMode::Host => &self.host_ring,
        }
    }

    fn ring_mut(&mut self, network: NetworkMode) -> &mut BTreeSet<String> {
        match network {
            NetworkMode::Pod => &mut self.pod_ring,
            NetworkMode::Host => &mut self.host_ring,
        }
    }

    /// `network`'s ring in ring order, for
    /// [`Ring::from_sorted`](netmatrix_api::sampling::Ring::from_sorted).
    pub fn ring_order(&self, network: NetworkMode) -> &[(u64, String)] {
        &self.ordered[slot(network)]
    }

    /// The nodes with a `network` agent that are off its ring.
    pub fn off_ring(&self, network: NetworkMode) -> &BTreeSet<String> {
        &self.off_ring[slot(network)]
    }

    /// Replaces the entries of the nodes named (`None`, or an empty entry:
    /// the node has nothing the lists read any more) and says what changed,
    /// as [`diff`](Self::diff) would against the view before. The watches
    /// name the nodes their events touch, so an update costs the nodes that
    /// changed, not the cluster.
    pub fn set_entries(
        &mut self,
        entries: impl IntoIterator<Item = (String, Option<NodeEntry>)>,
    ) -> ViewDiff {
        let mut diff = ViewDiff::default();
        let mut new_agent_ips = HashSet::new();
        let mut old_agents = Vec::new();
        for (name, entry) in entries {
            let entry = entry.filter(|e| !e.is_empty());
            if self.nodes.get(&name) == entry.as_ref() {
                continue;
            }
            diff.changed_nodes.insert(name.clone());
            if let Some(e) = &entry {
                new_agent_ips.extend(e.pod_agents.iter().map(|p| p.ip));
            }
            let old = match entry {
                Some(e) => self.nodes.insert(name.clone(), e),
                None => self.nodes.remove(&name),
            };
            if let Some(old) = &old {
                old_agents.extend(old.pod_agents.iter().map(|p| (p.ip, name.clone())));
            }
            for network in NETWORKS {
                let (was, is) = (
                    self.ring(network).contains(&name),
                    self.nodes.get(&name).is_some_and(|e| e.on_ring(network)),
                );
                let ordered = &mut self.ordered[slot(network)];
                let position = ring_position(&name);
                let at = ordered
                    .binary_search_by(|(h, n)| (*h, n.as_str()).cmp(&(position, name.as_str())));
                if is && !was {
                    if let Err(i) = at {
                        ordered.insert(i, (position, name.clone()));
                    }
                    self.ring_mut(network).insert(name.clone());
                    diff.ring_added.insert((network, name.clone()));
                } else if was && !is {
                    if let Ok(i) = at {
                        ordered.remove(i);
                    }
                    self.ring_mut(network).remove(&name);
                    diff.ring_removed.insert((network, name.clone()));
                }
                let off = self
                    .nodes
                    .get(&name)
                    .is_some_and(|e| e.has_agent(network) && !e.on_ring(network));
                if off {
                    self.off_ring[slot(network)].insert(name.clone());
                } else {
                    self.off_ring[slot(network)].remove(&name);
                }
            }
        }
        diff.agents_gone = old_agents
            .into_iter()
            .filter(|(ip, _)| !new_agent_ips.contains(ip))
            .collect();
        diff.agents_present = new_agent_ips;
        diff
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
        let agents_gone: Vec<(IpAddr, String)> = old
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
            agents_present: current,
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
