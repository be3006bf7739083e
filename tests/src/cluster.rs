//! The emulated cluster's state (what etcd holds for the objects netmatrix
//! reads): Nodes, Pods and Services as k8s-openapi types, a global
//! resourceVersion, and the history of watch events the API emulator streams.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, Pod, PodCondition, PodIP, PodSpec,
    PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use tokio::sync::broadcast;

/// Watch events kept for watchers that resume from an older resourceVersion;
/// older ones get `410 Gone` and relist, as with the real API server.
const HISTORY: usize = 4096;

/// Which collection an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Node,
    Pod,
    Service,
}

/// A stored change, as the watch stream sends it.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: Kind,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub verb: &'static str,
    pub rv: u64,
    /// The object as JSON (with apiVersion and kind), after the change.
    pub object: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    nodes: BTreeMap<String, Node>,
    pods: BTreeMap<(String, String), Pod>,
    services: BTreeMap<(String, String), Service>,
    history: VecDeque<Event>,
}

/// Shared handle on the cluster's state (cheap to clone).
#[derive(Clone)]
pub struct ClusterState {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<Event>,
}

impl Default for ClusterState {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterState {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            events: broadcast::channel(HISTORY).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere mid-update; the maps
        // are still consistent enough for a lab.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live events; subscribe before reading the history to miss nothing.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Events after `rv` of `kind`, or `None` when `rv` is older than the
    /// history kept (the watcher must relist).
    pub fn history_since(&self, kind: Kind, rv: u64) -> Option<Vec<Event>> {
        let inner = self.lock();
        let oldest = inner
            .history
            .front()
            .map_or(inner.rv, |e| e.rv.saturating_sub(1));
        if rv < oldest {
            return None;
        }
        Some(
            inner
                .history
                .iter()
                .filter(|e| e.kind == kind && e.rv > rv)
                .cloned()
                .collect(),
        )
    }

    fn record(&self, inner: &mut Inner, kind: Kind, verb: &'static str, object: Value) {
        let event = Event {
            kind,
            verb,
            rv: inner.rv,
            object,
        };
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(event.clone());
        // No receiver is fine: nobody watches yet.
        let _ = self.events.send(event);
    }

    fn stamp(inner: &mut Inner, meta: &mut ObjectMeta, existing: Option<&ObjectMeta>) {
        inner.rv += 1;
        meta.resource_version = Some(inner.rv.to_string());
        match existing {
            Some(old) => {
                meta.uid = old.uid.clone();
                meta.creation_timestamp = old.creation_timestamp.clone();
            }
            None => {
                meta.uid
                    .get_or_insert_with(|| format!("{:032x}", rand::random::<u128>()));
                meta.creation_timestamp.get_or_insert_with(now);
            }
        }
    }

    pub fn apply_node(&self, mut node: Node) {
        let mut inner = self.lock();
        let name = node.metadata.name.clone().unwrap_or_default();
        let existing = inner.nodes.get(&name).map(|n| n.metadata.clone());
        Self::stamp(&mut inner, &mut node.metadata, existing.as_ref());
        let verb = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let json = serde_json::to_value(&node).unwrap_or(Value::Null);
        inner.nodes.insert(name, node);
        self.record(&mut inner, Kind::Node, verb, json);
    }

    pub fn delete_node(&self, name: &str) {
        let mut inner = self.lock();
        if let Some(mut node) = inner.nodes.remove(name) {
            inner.rv += 1;
            node.metadata.resource_version = Some(inner.rv.to_string());
            let json = serde_json::to_value(&node).unwrap_or(Value::Null);
            self.record(&mut inner, Kind::Node, "DELETED", json);
        }
    }

    pub fn apply_pod(&self, mut pod: Pod) {
        let mut inner = self.lock();
        let key = key_of(&pod.metadata);
        let existing = inner.pods.get(&key).map(|p| p.metadata.clone());
        Self::stamp(&mut inner, &mut pod.metadata, existing.as_ref());
        let verb = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let json = serde_json::to_value(&pod).unwrap_or(Value::Null);
        inner.pods.insert(key, pod);
        self.record(&mut inner, Kind::Pod, verb, json);
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let mut inner = self.lock();
        if let Some(mut pod) = inner.pods.remove(&(namespace.to_owned(), name.to_owned())) {
            inner.rv += 1;
            pod.metadata.resource_version = Some(inner.rv.to_string());
            let json = serde_json::to_value(&pod).unwrap_or(Value::Null);
            self.record(&mut inner, Kind::Pod, "DELETED", json);
        }
    }

    pub fn apply_service(&self, mut svc: Service) {
        let mut inner = self.lock();
        let key = key_of(&svc.metadata);
        let existing = inner.services.get(&key).map(|s| s.metadata.clone());
        Self::stamp(&mut inner, &mut svc.metadata, existing.as_ref());
        let verb = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let json = serde_json::to_value(&svc).unwrap_or(Value::Null);
        inner.services.insert(key, svc);
        self.record(&mut inner, Kind::Service, verb, json);
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.lock().nodes.values().cloned().collect()
    }

    pub fn pods(&self) -> Vec<Pod> {
        self.lock().pods.values().cloned().collect()
    }

    pub fn services(&self) -> Vec<Service> {
        self.lock().services.values().cloned().collect()
    }

    /// Every object of a collection as JSON, with the current resourceVersion.
    pub fn list(&self, kind: Kind) -> (u64, Vec<Value>) {
        let inner = self.lock();
        let items = match kind {
            Kind::Node => inner
                .nodes
                .values()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect(),
            Kind::Pod => inner
                .pods
                .values()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect(),
            Kind::Service => inner
                .services
                .values()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect(),
        };
        (inner.rv, items)
    }
}

fn key_of(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        meta.name.clone().unwrap_or_default(),
    )
}

fn now() -> Time {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Time(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A Ready node with its InternalIP and pod CIDR.
pub fn node(name: &str, internal_ip: &str, pod_cidr: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_owned(),
                name.to_owned(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(pod_cidr.to_owned()),
            pod_cidrs: Some(vec![pod_cidr.to_owned()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_owned(),
                    address: internal_ip.to_owned(),
                },
                NodeAddress {
                    type_: "Hostname".to_owned(),
                    address: name.to_owned(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                reason: Some("KubeletReady".to_owned()),
                last_transition_time: Some(now()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// A Running, Ready pod on `node` with address `ip`.
pub fn pod(
    namespace: &str,
    name: &str,
    node: &str,
    ip: &str,
    labels: &[(&str, &str)],
    host_network: bool,
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            host_network: Some(host_network),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            pod_ip: Some(ip.to_owned()),
            pod_ips: Some(vec![PodIP { ip: ip.to_owned() }]),
            start_time: Some(now()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                last_transition_time: Some(now()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// A Service; `cluster_ip: None` makes it headless (`clusterIP: None`).
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: Option<&str>,
    ports: &[(&str, i32, &str)],
    selector: &[(&str, &str)],
) -> Service {
    let ip = cluster_ip.unwrap_or("None").to_owned();
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| ServicePort {
                        name: Some((*n).to_owned()),
                        port: *p,
                        protocol: Some((*proto).to_owned()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            selector: (!selector.is_empty()).then(|| {
                selector
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_bump_the_resource_version_and_are_kept_for_watchers() {
        let state = ClusterState::new();
        state.apply_node(node("node-1", "198.18.0.1", "10.244.1.0/24"));
        state.apply_pod(pod("ns", "a", "node-1", "10.244.1.2", &[("k", "v")], false));
        state.apply_pod(pod("ns", "a", "node-1", "10.244.1.9", &[("k", "v")], false));
        state.delete_pod("ns", "a");
        assert_eq!(state.resource_version(), 4);
        let events = state.history_since(Kind::Pod, 1).unwrap();
        let verbs: Vec<_> = events.iter().map(|e| e.verb).collect();
        assert_eq!(verbs, ["ADDED", "MODIFIED", "DELETED"]);
        assert_eq!(events[1].object["status"]["podIP"], "10.244.1.9");
        assert_eq!(events[1].object["kind"], "Pod");
        assert!(state.pods().is_empty());
    }

    #[test]
    fn uid_and_creation_time_survive_updates() {
        let state = ClusterState::new();
        state.apply_node(node("n", "198.18.0.1", "10.244.1.0/24"));
        let first = state.nodes()[0].metadata.clone();
        state.apply_node(node("n", "198.18.0.1", "10.244.1.0/24"));
        let second = state.nodes()[0].metadata.clone();
        assert_eq!(first.uid, second.uid);
        assert_eq!(first.creation_timestamp, second.creation_timestamp);
        assert_ne!(first.resource_version, second.resource_version);
    }

    #[test]
    fn headless_services_say_none() {
        let svc = service("ns", "h", None, &[("metrics", 9090, "TCP")], &[("a", "b")]);
        assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    }
}
