//! Who to probe: peer pods from a Kubernetes watch, with fallbacks.
//!
//! kube-rs reflectors run in the background: one over the probe targets
//! (agents and companions, `--peer-selector`), one over the aggregator pods
//! (`--aggregator-selector`, for direct reporting), one over the Nodes (the
//! pods of cordoned or NotReady nodes are not probed), and, when the peers
//! are not the pod-network agents themselves (host mode), one over the agent
//! pods, the truth the agents' SRV record is compared with. A reflector store
//! keeps its contents while its watcher retries with backoff, so when the API
//! server becomes unreachable — exactly when the operator needs the tool — the
//! agent keeps probing the last known peers, with the last known node states,
//! and says so ([`PeerSource::LastKnown`]). Peers are never cleared because
//! the API is down.
//!
//! RBAC: get, list and watch `pods` in the agents' namespace, and get, list
//! and watch `nodes` (cluster-scoped: a ClusterRole). Without the nodes
//! permission the node watch fails and logs it, every node counts as
//! schedulable and Ready, and probing goes on.
//!
//! At start-up, before the first list has completed, the SRV record of the
//! agents' headless Service stands in ([`PeerSource::Dns`]); see
//! [`Discovery::view_or_srv`] and [`fallback_from_srv`].
//!
//! Results of peers that left during a round are dropped here too
//! ([`drop_departed_peers`]): only the peer set can say who left.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use netmatrix_api::{AgentIdentity, NetworkMode, PeerSource, Report, Sampled};
use netmatrix_runtime::k8s::{self, WatchHealth};
use serde::de::DeserializeOwned;

pub mod pinglist;
pub mod sample;

pub use filter::{NodeSkip, PodInfo};
/// Which pods are peers: the shared reading of the probe targets (the
/// aggregator reads its pinglists with the same rules).
pub use netmatrix_runtime::k8s::targets as filter;

/// The agents the SRV record should list, per the API or the pinglist.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentTruth {
    /// Running agent pods (this one included).
    pub agents: Vec<PodInfo>,
    /// The truth covers part of the cluster only (a sampled pinglist: this
    /// node and its stable neighbours), so answers naming other agents are
    /// not judged.
    pub partial: bool,
    /// Agents that left that part, and when (Unix ms), as the aggregator saw
    /// them go: DNS may answer them for a TTL more.
    pub gone: Vec<(IpAddr, u64)>,
}

impl AgentTruth {
    /// The whole truth: every Running agent.
    pub fn complete(agents: Vec<PodInfo>) -> Self {
        AgentTruth {
            agents,
            partial: false,
            gone: Vec::new(),
        }
    }
}

/// The peer set for one round.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    pub peers: Vec<PodInfo>,
    /// What the SRV record should list; `None` when the peers did not come
    /// from the API or a pinglist, so DNS is not compared with guesses.
    pub agents: Option<AgentTruth>,
    pub source: PeerSource,
    /// Nodes whose pods are left out of `peers`, and why.
    pub skipped_nodes: BTreeMap<String, NodeSkip>,
    /// Set when the cluster is large and `peers` is a sample ([`sample`]).
    pub sampled: Option<Sampled>,
    /// The aggregator chose these peers (a pinglist): not sampled again here.
    pub decided_upstream: bool,
}

/// Live discovery; cheap to share.
pub struct Discovery {
    me: AgentIdentity,
    source: Source,
}

/// Where the peers come from.
enum Source {
    /// The agent's own watches of the Kubernetes API.
    Api(Watches),
    /// The aggregator's pinglist ([`pinglist`]).
    Pinglist(Arc<pinglist::PinglistSource>),
}

/// The agent's own watches.
struct Watches {
    peers: Store<Pod>,
    peer_watch: Arc<WatchHealth>,
    /// The agent pods, when the peer watch does not cover them.
    agents: Option<(Store<Pod>, Arc<WatchHealth>)>,
    nodes: Store<Node>,
    aggregators: Store<Pod>,
}

/// What to watch.
#[derive(Debug, Clone)]
pub struct Selectors<'a> {
    pub peers: &'a str,
    pub aggregators: &'a str,
    /// Selector of the agent pods the SRV record should list, when the peer
    /// selector does not cover them (host mode); `None`: they are among the
    /// peers.
    pub agents: Option<&'a str>,
}

impl Discovery {
    /// Starts the watches on the current tokio runtime.
    pub fn start(
        client: kube::Client,
        namespace: &str,
        selectors: Selectors<'_>,
        me: AgentIdentity,
    ) -> Self {
        let pods = || Api::<Pod>::namespaced(client.clone(), namespace);
        let (peers, peer_watch) =
            spawn_reflector(pods(), Some(selectors.peers), "peers", filter::trim_pod);
        let agents = selectors
            .agents
            .map(|selector| spawn_reflector(pods(), Some(selector), "agents", filter::trim_pod));
        let (aggregators, _) = spawn_reflector(
            pods(),
            Some(selectors.aggregators),
            "aggregators",
            filter::trim_pod,
        );
        let (nodes, _) = spawn_reflector(
            Api::<Node>::all(client.clone()),
            None,
            "nodes",
            filter::trim_node,
        );
        Self {
            me,
            source: Source::Api(Watches {
                peers,
                peer_watch,
                agents,
                nodes,
                aggregators,
            }),
        }
    }

    /// Peers from the aggregator's pinglist (see [`pinglist::poll`], which
    /// keeps `source` up to date).
    pub fn from_pinglist(me: AgentIdentity, source: Arc<pinglist::PinglistSource>) -> Self {
        Self {
            me,
            source: Source::Pinglist(source),
        }
    }

    /// Waits until the peers are known once (the first list from the API,
    /// or a pinglist fetched or stored), up to `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        match &self.source {
            Source::Api(w) => tokio::time::timeout(timeout, w.peers.wait_until_ready())
                .await
                .is_ok_and(|r| r.is_ok()),
            Source::Pinglist(p) => p.wait_synced(timeout).await,
        }
    }

    /// The current peers; `None` until they are first known.
    pub fn view(&self) -> Option<PeerView> {
        match &self.source {
            Source::Api(w) => w.view(&self.me),
            Source::Pinglist(p) => p.view(netmatrix_runtime::now_unix_ms()),
        }
    }

    /// Peers from the watch or the pinglist; before either is known, from
    /// the agents' SRV record (`srv_addresses`, its lookup; `None` when
    /// disabled); with neither, nothing (and say so). A host-network agent
    /// has no SRV fallback: the record lists pod agents, which are not its
    /// peers (pinging them from the node would fail the MTU probe, the node
    /// MTU being larger than the pods').
    pub async fn view_or_srv<E: std::fmt::Display>(
        &self,
        srv_addresses: Option<impl Future<Output = Result<BTreeSet<IpAddr>, E>>>,
    ) -> PeerView {
        if let Some(view) = self.view() {
            return view;
        }
        let srv_fallback = match self.me.network {
            NetworkMode::Pod => srv_addresses,
            NetworkMode::Host => None,
        };
        if let Some(lookup) = srv_fallback {
            match lookup.await {
                Ok(addresses) => return fallback_from_srv(&addresses, &self.me),
                Err(error) => {
                    tracing::warn!(%error, "no peer list yet, and the SRV fallback failed")
                }
            }
        }
        PeerView {
            peers: Vec::new(),
            agents: None,
            source: PeerSource::LastKnown,
            skipped_nodes: BTreeMap::new(),
            sampled: None,
            decided_upstream: false,
        }
    }

    /// The pinglist's ETag while one is held; `None` on the API's watches
    /// (whose changes have no version to compare).
    pub fn list_etag(&self) -> Option<String> {
        match &self.source {
            Source::Api(_) => None,
            Source::Pinglist(p) => p.etag(),
        }
    }

    /// Whether the peers' source (the API watch, or the aggregator) answers.
    pub fn watch_healthy(&self) -> bool {
        match &self.source {
            Source::Api(w) => w.peer_watch.healthy(),
            Source::Pinglist(p) => p.healthy(),
        }
    }

    /// The IP of this node's Running pod-network agent (host agents: whose
    /// reports to relay); last known, like peers.
    pub fn local_agent_ip(&self) -> Option<IpAddr> {
        match &self.source {
            Source::Api(w) => w.local_agent_ip(&self.me),
            Source::Pinglist(p) => p.local_agent_ip(),
        }
    }

    /// IPs of the aggregator's pods (last known, like peers).
    pub fn aggregator_ips(&self) -> Vec<IpAddr> {
        match &self.source {
            Source::Api(w) => w.aggregator_ips(),
            Source::Pinglist(p) => p.aggregator_ips(),
        }
    }
}

impl Watches {
    /// Peers from the API (`Api` while the watch is healthy, `LastKnown`
    /// while it retries); `None` until the first list has completed.
    fn view(&self, me: &AgentIdentity) -> Option<PeerView> {
        if !self.peer_watch.synced() {
            return None;
        }
        let source = if self.peer_watch.healthy() {
            PeerSource::Api
        } else {
            PeerSource::LastKnown
        };
        let state = self.peers.state();
        let running = filter::running_pods(state.iter().map(|p| p.as_ref()));
        // Last known node states while the node watch retries; an empty
        // store (not synced, or no RBAC) skips nothing.
        let nodes = self.nodes.state();
        let skipped_nodes = filter::skipped_nodes(nodes.iter().map(|n| n.as_ref()));
        let agents = match &self.agents {
            None => Some(filter::agents(&running)),
            Some((store, health)) => health.synced().then(|| {
                let state = store.state();
                filter::agents(&filter::running_pods(state.iter().map(|p| p.as_ref())))
            }),
        }
        .map(AgentTruth::complete);
        Some(PeerView {
            peers: filter::peers(&running, me, &skipped_nodes),
            agents,
            source,
            skipped_nodes,
            sampled: None,
            decided_upstream: false,
        })
    }

    /// The IP of this node's Running pod-network agent, when the agents are
    /// watched apart from the peers (host agents).
    fn local_agent_ip(&self, me: &AgentIdentity) -> Option<IpAddr> {
        let (agents, _) = self.agents.as_ref()?;
        let state = agents.state();
        filter::running_pods(state.iter().map(|p| p.as_ref()))
            .into_iter()
            .find(|p| p.node == me.node)
            .map(|p| p.ip)
    }

    /// IPs of the Running aggregator pods.
    fn aggregator_ips(&self) -> Vec<IpAddr> {
        let state = self.aggregators.state();
        filter::running_pods(state.iter().map(|p| p.as_ref()))
            .into_iter()
            .map(|p| p.ip)
            .collect()
    }
}

/// Peers from the addresses behind the agents' SRV record: the start-up
/// fallback. Node and pod names are unknown (empty); the aggregator maps IPs
/// to nodes.
pub fn fallback_from_srv(addresses: &BTreeSet<IpAddr>, me: &AgentIdentity) -> PeerView {
    PeerView {
        peers: addresses
            .iter()
            .filter(|ip| **ip != me.pod_ip)
            .map(|ip| PodInfo {
                node: String::new(),
                pod: String::new(),
                ip: *ip,
                component: None,
                started_unix_ms: None,
                ready: true,
                ready_since_unix_ms: None,
            })
            .collect(),
        agents: None,
        source: PeerSource::Dns,
        skipped_nodes: BTreeMap::new(),
        sampled: None,
        decided_upstream: false,
    }
}

/// Drops the results of peers that are no longer in the current peer set
/// (pod gone or terminating, address changed, node cordoned or NotReady): a
/// peer that disappeared mid-round did not fail. Returns how many were dropped.
pub fn drop_departed_peers(report: &mut Report, current: &[PodInfo]) -> usize {
    let keep: HashSet<(&str, IpAddr)> = current.iter().map(|p| (p.pod.as_str(), p.ip)).collect();
    let before = report.peers.len();
    report
        .peers
        .retain(|p| keep.contains(&(p.pod.as_str(), p.ip)));
    before - report.peers.len()
}

/// A reflector over `api` (the shared watch loop), objects cached as
/// `trim` leaves them (only the fields discovery reads).
fn spawn_reflector<K>(
    api: Api<K>,
    selector: Option<&str>,
    what: &'static str,
    trim: fn(&mut K),
) -> (Store<K>, Arc<WatchHealth>)
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let config = match selector {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    };
    k8s::spawn_reflector(api, config, what, trim, |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::PeerResult;
    use netmatrix_runtime::k8s::targets::fixtures::info;

    fn result(pod: &str, ip: &str) -> PeerResult {
        PeerResult {
            node: "n2".into(),
            pod: pod.into(),
            ip: ip.parse().unwrap(),
            icmp: netmatrix_api::EchoResult::default(),
            mtu: None,
            tcp: None,
            udp: None,
            port: None,
        }
    }

    #[test]
    fn peers_that_left_during_the_round_are_not_reported() {
        let mut report = Report {
            peers: vec![
                result("stays", "10.244.2.2"),
                result("deleted", "10.244.2.3"),
                result("moved", "10.244.2.4"),
            ],
            peer_source: PeerSource::Api,
            ..netmatrix_api::fixtures::report(netmatrix_api::fixtures::identity(
                "n1",
                "agent-1",
                "10.244.1.2",
            ))
        };
        let mut moved = info("10.244.2.9");
        moved.pod = "moved".into();
        let mut stays = info("10.244.2.2");
        stays.pod = "stays".into();
        assert_eq!(drop_departed_peers(&mut report, &[stays, moved]), 2);
        assert_eq!(report.peers.len(), 1);
        assert_eq!(report.peers[0].pod, "stays");
    }

    #[test]
    fn srv_fallback_excludes_this_agent_and_leaves_names_empty() {
        let me = netmatrix_api::fixtures::identity("n1", "agent-1", "10.244.1.2");
        let addrs: BTreeSet<IpAddr> = ["10.244.1.2", "10.244.2.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let view = fallback_from_srv(&addrs, &me);
        assert_eq!(view.source, PeerSource::Dns);
        assert_eq!(view.peers.len(), 1);
        assert_eq!(view.peers[0].ip, "10.244.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(view.peers[0].node, "");
        assert!(view.agents.is_none());
    }

    type FakeApi = (kube::Client, tokio::task::JoinHandle<std::io::Result<()>>);

    /// A loopback API server: lists pods by label selector and the nodes,
    /// then serves watches that end quietly after a moment, so the watcher
    /// reconnects (and fails once the server is gone).
    async fn fake_api(pods: Vec<(&'static str, Vec<Pod>)>, nodes: Vec<Node>) -> FakeApi {
        use axum::Router;
        use axum::body::{Body, Bytes};
        use axum::extract::Query;
        use axum::routing::get;
        use futures::StreamExt;
        use std::collections::HashMap;

        fn list(kind: &str, items: impl Iterator<Item = serde_json::Value>) -> String {
            serde_json::json!({"apiVersion": "v1", "kind": kind,
                "metadata": {"resourceVersion": "1"}, "items": items.collect::<Vec<_>>()})
            .to_string()
        }
        fn short_watch() -> Body {
            let ends = futures::stream::once(tokio::time::sleep(Duration::from_millis(200)))
                .filter_map(|()| async { None::<Result<Bytes, std::io::Error>> });
            Body::from_stream(ends)
        }
        let nodes = list(
            "NodeList",
            nodes.iter().map(|n| serde_json::to_value(n).unwrap()),
        );
        let pods: HashMap<&str, String> = pods
            .into_iter()
            .map(|(selector, pods)| {
                let items = pods.iter().map(|p| serde_json::to_value(p).unwrap());
                (selector, list("PodList", items))
            })
            .collect();
        let app = Router::new()
            .route(
                "/api/v1/nodes",
                get(move |Query(q): Query<HashMap<String, String>>| {
                    let nodes = nodes.clone();
                    async move {
                        if q.get("watch").map(String::as_str) == Some("true") {
                            short_watch()
                        } else {
                            Body::from(nodes)
                        }
                    }
                }),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods",
                get(move |Query(q): Query<HashMap<String, String>>| {
                    let pods = q
                        .get("labelSelector")
                        .and_then(|s| pods.get(s.as_str()).cloned())
                        .unwrap_or_else(|| list("PodList", std::iter::empty()));
                    async move {
                        if q.get("watch").map(String::as_str) == Some("true") {
                            short_watch()
                        } else {
                            Body::from(pods)
                        }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{addr}").parse().unwrap();
        (
            kube::Client::try_from(kube::Config::new(url)).unwrap(),
            server,
        )
    }

    /// Polls `view()` until `done` holds (the node and agent watches sync
    /// after the peer watch).
    async fn view_when(discovery: &Discovery, done: impl Fn(&PeerView) -> bool) -> PeerView {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut view = discovery.view().unwrap();
        while !done(&view) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            view = discovery.view().unwrap();
        }
        view
    }

    /// List, then a watch; when the API server goes away the peers stay
    /// (last known), and so do the node states (n3 is cordoned: its agent is
    /// not probed).
    #[tokio::test]
    async fn peers_come_from_the_watch_and_survive_an_api_outage() {
        use netmatrix_runtime::k8s::targets::fixtures::node;
        use netmatrix_runtime::k8s::targets::fixtures::pod;

        let (client, server) = fake_api(
            vec![(
                netmatrix_api::labels::PEER_SELECTOR,
                vec![
                    pod("agent-1", "n1", "10.244.1.2", "Running", "agent"),
                    pod("agent-2", "n2", "10.244.2.2", "Running", "agent"),
                    pod("agent-3", "n3", "10.244.3.2", "Running", "agent"),
                ],
            )],
            vec![
                node("n2", false, Some("True")),
                node("n3", true, Some("True")),
            ],
        )
        .await;
        let me = netmatrix_api::fixtures::identity("n1", "agent-1", "10.244.1.2");
        let discovery = Discovery::start(
            client,
            "netmatrix",
            Selectors {
                peers: netmatrix_api::labels::PEER_SELECTOR,
                aggregators: netmatrix_api::labels::AGGREGATOR_SELECTOR,
                agents: None,
            },
            me,
        );
        assert!(discovery.wait_synced(Duration::from_secs(10)).await);
        let view = view_when(&discovery, |v| !v.skipped_nodes.is_empty()).await;
        assert_eq!(view.source, PeerSource::Api);
        assert_eq!(
            view.skipped_nodes,
            BTreeMap::from([("n3".to_owned(), NodeSkip::Cordoned)])
        );
        assert_eq!(view.peers.len(), 1);
        assert_eq!(view.peers[0].pod, "agent-2");
        // The SRV truth still has the cordoned node's agent.
        assert_eq!(view.agents.as_ref().map(|t| t.agents.len()), Some(3));
        assert!(discovery.aggregator_ips().is_empty());

        // The API goes away: the watch fails, the peers stay.
        server.abort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while discovery.watch_healthy() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let view = discovery.view().unwrap();
        assert_eq!(view.source, PeerSource::LastKnown);
        assert_eq!(view.peers.len(), 1);
        assert_eq!(view.skipped_nodes.len(), 1, "last known node states");
    }

    /// A host agent probes the host agents, and compares the SRV record
    /// with the pod-network agents, which its peer watch does not cover.
    #[tokio::test]
    async fn host_agents_watch_the_agents_separately() {
        use netmatrix_api::labels;
        use netmatrix_runtime::k8s::targets::fixtures::pod;

        let (client, _server) = fake_api(
            vec![
                (
                    labels::HOST_AGENT_SELECTOR,
                    vec![
                        pod("host-agent-1", "n1", "198.18.0.1", "Running", "host-agent"),
                        pod("host-agent-2", "n2", "198.18.0.2", "Running", "host-agent"),
                    ],
                ),
                (
                    labels::AGENT_SELECTOR,
                    vec![
                        pod("agent-1", "n1", "10.244.1.2", "Running", "agent"),
                        pod("agent-2", "n2", "10.244.2.2", "Running", "agent"),
                    ],
                ),
            ],
            vec![],
        )
        .await;
        let me = AgentIdentity {
            network: NetworkMode::Host,
            ..netmatrix_api::fixtures::identity("n1", "host-agent-1", "198.18.0.1")
        };
        let discovery = Discovery::start(
            client,
            "netmatrix",
            Selectors {
                peers: labels::HOST_AGENT_SELECTOR,
                aggregators: labels::AGGREGATOR_SELECTOR,
                agents: Some(labels::AGENT_SELECTOR),
            },
            me,
        );
        assert!(discovery.wait_synced(Duration::from_secs(10)).await);
        let view = view_when(&discovery, |v| v.agents.is_some()).await;
        let peers: Vec<_> = view.peers.iter().map(|p| p.pod.as_str()).collect();
        assert_eq!(peers, ["host-agent-2"]);
        let agents: Vec<_> = view
            .agents
            .unwrap()
            .agents
            .into_iter()
            .map(|p| p.pod)
            .collect();
        assert_eq!(agents, ["agent-1", "agent-2"]);
    }
}
