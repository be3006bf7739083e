//! Who to probe: peer pods from a Kubernetes watch, with fallbacks.
//!
//! Two kube-rs reflectors run in the background: one over the probe targets
//! (agents and companions, `--peer-selector`) and one over the aggregator
//! pods (`--aggregator-selector`, for direct reporting). A reflector store
//! keeps its contents while its watcher retries with backoff, so when the API
//! server becomes unreachable — exactly when the operator needs the tool — the
//! agent keeps probing the last known peers and says so
//! ([`PeerSource::LastKnown`]). Peers are never cleared because the API is
//! down.
//!
//! At start-up, before the first list has completed, the SRV record of the
//! agents' headless Service stands in ([`PeerSource::Dns`]); see
//! [`Discovery::view`] and [`fallback_from_srv`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use netmatrix_api::{AgentIdentity, PeerSource};

pub mod filter;

pub use filter::PodInfo;

/// Health of one watch, written by its background task.
#[derive(Debug, Default)]
struct WatchHealth {
    /// The first complete list has been applied to the store.
    synced: AtomicBool,
    /// The last thing the watch stream produced was an event, not an error.
    healthy: AtomicBool,
}

/// The peer set for one round.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    pub peers: Vec<PodInfo>,
    /// Running agent pods (this one included) per the API; `None` when the
    /// peers did not come from the API, so DNS is not compared with guesses.
    pub agents: Option<Vec<PodInfo>>,
    pub source: PeerSource,
}

/// Live discovery; cheap to share.
pub struct Discovery {
    me: AgentIdentity,
    peers: Store<Pod>,
    peer_watch: Arc<WatchHealth>,
    aggregators: Store<Pod>,
}

impl Discovery {
    /// Starts both watches on the current tokio runtime.
    pub fn start(
        client: kube::Client,
        namespace: &str,
        peer_selector: &str,
        aggregator_selector: &str,
        me: AgentIdentity,
    ) -> Self {
        let (peers, peer_watch) = spawn_reflector(
            Api::namespaced(client.clone(), namespace),
            peer_selector,
            "peers",
        );
        let (aggregators, _) = spawn_reflector(
            Api::namespaced(client, namespace),
            aggregator_selector,
            "aggregators",
        );
        Self {
            me,
            peers,
            peer_watch,
            aggregators,
        }
    }

    /// Waits until the peer list has been synced once, up to `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.peers.wait_until_ready())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Peers from the API (`Api` while the watch is healthy, `LastKnown`
    /// while it retries); `None` until the first list has completed.
    pub fn view(&self) -> Option<PeerView> {
        if !self.peer_watch.synced.load(Ordering::Acquire) {
            return None;
        }
        let source = if self.peer_watch.healthy.load(Ordering::Acquire) {
            PeerSource::Api
        } else {
            PeerSource::LastKnown
        };
        let state = self.peers.state();
        let running = filter::running_pods(state.iter().map(|p| p.as_ref()));
        Some(PeerView {
            peers: filter::peers(&running, &self.me),
            agents: Some(filter::agents(&running)),
            source,
        })
    }

    /// Whether the peer watch currently reaches the API server.
    pub fn watch_healthy(&self) -> bool {
        self.peer_watch.healthy.load(Ordering::Acquire)
    }

    /// IPs of the Running aggregator pods (last known, like peers).
    pub fn aggregator_ips(&self) -> Vec<IpAddr> {
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
            })
            .collect(),
        agents: None,
        source: PeerSource::Dns,
    }
}

/// Runs `watcher(...).default_backoff().reflect(...)` in a task: the store
/// only advances while the stream is polled.
fn spawn_reflector(
    api: Api<Pod>,
    selector: &str,
    what: &'static str,
) -> (Store<Pod>, Arc<WatchHealth>) {
    let (reader, writer) = reflector::store();
    let health = Arc::new(WatchHealth::default());
    let config = watcher::Config::default().labels(selector);
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let task_health = health.clone();
    let selector = selector.to_owned();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut outage_logged = false;
        while let Some(item) = stream.next().await {
            match item {
                // `Init` only announces a (re)list that may still fail; any
                // other event is data from the API server.
                Ok(watcher::Event::Init) => {}
                Ok(event) => {
                    if matches!(event, watcher::Event::InitDone)
                        && !task_health.synced.swap(true, Ordering::AcqRel)
                    {
                        tracing::info!(what, %selector, "initial pod list received");
                    }
                    if !task_health.healthy.swap(true, Ordering::AcqRel) {
                        outage_logged = false;
                        tracing::info!(what, "pod watch is healthy");
                    }
                }
                Err(error) => {
                    // Warn once per outage (including one at start-up), not per retry.
                    let was_healthy = task_health.healthy.swap(false, Ordering::AcqRel);
                    if was_healthy || !outage_logged {
                        outage_logged = true;
                        tracing::warn!(what, %error, "pod watch failed; keeping the last known pods while retrying");
                    } else {
                        tracing::debug!(what, %error, "pod watch still failing");
                    }
                }
            }
        }
        tracing::error!(
            what,
            "pod watch stream ended; peers will no longer be updated"
        );
    });
    (reader, health)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::NetworkMode;

    #[test]
    fn srv_fallback_excludes_this_agent_and_leaves_names_empty() {
        let me = AgentIdentity {
            node: "n1".into(),
            pod: "agent-1".into(),
            pod_ip: "10.244.1.2".parse().unwrap(),
            network: NetworkMode::Pod,
        };
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

    /// Against a loopback API server: list, then a watch that stays open;
    /// when the server goes away the peers stay (last known).
    #[tokio::test]
    async fn peers_come_from_the_watch_and_survive_an_api_outage() {
        use axum::Router;
        use axum::body::{Body, Bytes};
        use axum::extract::Query;
        use axum::routing::get;
        use std::collections::HashMap;

        use super::filter::tests::pod;

        let pods = serde_json::json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
            "items": [
                serde_json::to_value(pod("agent-1", "n1", "10.244.1.2", "Running", "agent")).unwrap(),
                serde_json::to_value(pod("agent-2", "n2", "10.244.2.2", "Running", "agent")).unwrap(),
            ]
        });
        let app = Router::new().route(
            "/api/v1/namespaces/{ns}/pods",
            get(move |Query(q): Query<HashMap<String, String>>| {
                let pods = pods.clone();
                async move {
                    if q.get("watch").map(String::as_str) == Some("true") {
                        // A watch that ends quietly after a moment, so the
                        // watcher reconnects (and fails once we are gone).
                        let ends =
                            futures::stream::once(tokio::time::sleep(Duration::from_millis(200)))
                                .filter_map(|()| async { None::<Result<Bytes, std::io::Error>> });
                        Body::from_stream(ends)
                    } else if q.get("labelSelector").map(String::as_str)
                        == Some(netmatrix_api::labels::PEER_SELECTOR)
                    {
                        Body::from(pods.to_string())
                    } else {
                        Body::from(
                            serde_json::json!({"apiVersion": "v1", "kind": "PodList",
                                "metadata": {"resourceVersion": "1"}, "items": []})
                            .to_string(),
                        )
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let url = format!("http://{addr}").parse().unwrap();
        let client = kube::Client::try_from(kube::Config::new(url)).unwrap();
        let me = AgentIdentity {
            node: "n1".into(),
            pod: "agent-1".into(),
            pod_ip: "10.244.1.2".parse().unwrap(),
            network: NetworkMode::Pod,
        };
        let discovery = Discovery::start(
            client,
            "netmatrix",
            netmatrix_api::labels::PEER_SELECTOR,
            netmatrix_api::labels::AGGREGATOR_SELECTOR,
            me,
        );
        assert!(discovery.wait_synced(Duration::from_secs(10)).await);
        let view = discovery.view().unwrap();
        assert_eq!(view.source, PeerSource::Api);
        assert_eq!(view.peers.len(), 1);
        assert_eq!(view.peers[0].pod, "agent-2");
        assert_eq!(view.agents.as_ref().map(Vec::len), Some(2));
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
    }
}
