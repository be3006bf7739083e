//! The emulated cluster's state: what etcd holds for the objects netmatrix
//! reads (Nodes, Pods, Services, Events...) and those the chart installs
//! (workloads, RBAC, helm's release Secrets), as k8s-openapi types, one
//! global resourceVersion, and a bounded history of changes for watchers.
//! Clients' writes go through [`writes`].
//!
//! Every change bumps the resourceVersion and stamps it into the object, as
//! the real API server does; create also fills `uid` and `creationTimestamp`.
//! Each change is kept as an [`Event`] holding the object before and after,
//! so that a watch with a selector can tell "started matching" (ADDED) and
//! "stopped matching" (DELETED) from a plain MODIFIED, like the API server's
//! watch cache. Watchers are woken through [`ClusterState::subscribe`] and
//! read what they missed with [`ClusterState::events_since`]; one source of
//! truth means a slow watcher can never see events out of order, only fall
//! so far behind that it is told to relist ([`Expired`], HTTP 410).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, Event as KubeEvent,
    EventSource, Namespace, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
    ObjectReference, Pod, PodCondition, PodIP, PodSpec, PodStatus, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

/// Changes kept for watchers that resume from an older resourceVersion.
/// A watcher further behind gets `410 Expired` and relists, as with the real
/// API server (whose watch cache holds a similar number of events).
const HISTORY: usize = 4096;

/// The collections the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Node,
    Pod,
    Service,
    /// `core/v1` Events (what `kubectl describe` shows under "Events").
    Event,
    Namespace,
    /// `networking.k8s.io/v1`, served under `/apis/networking.k8s.io/v1`.
    NetworkPolicy,
    // What the chart installs and helm stores, written by clients (`helm
    // install`, `kubectl apply`): stored as sent, with no controller
    // acting on them unless the lab runs one.
    ServiceAccount,
    /// helm keeps its releases in Secrets.
    Secret,
    ConfigMap,
    DaemonSet,
    Deployment,
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
}

impl Kind {
    /// Every kind stored.
    pub const ALL: [Kind; 15] = [
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::Event,
        Kind::Namespace,
        Kind::NetworkPolicy,
        Kind::ServiceAccount,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::DaemonSet,
        Kind::Deployment,
        Kind::ClusterRole,
        Kind::ClusterRoleBinding,
        Kind::Role,
        Kind::RoleBinding,
    ];

    /// The kind as in `"kind": "Pod"`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Event => "Event",
            Kind::Namespace => "Namespace",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::DaemonSet => "DaemonSet",
            Kind::Deployment => "Deployment",
            Kind::ClusterRole => "ClusterRole",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
            Kind::Role => "Role",
            Kind::RoleBinding => "RoleBinding",
        }
    }

    /// `apiVersion` of its objects and lists.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::DaemonSet | Kind::Deployment => "apps/v1",
            Kind::ClusterRole | Kind::ClusterRoleBinding | Kind::Role | Kind::RoleBinding => {
                "rbac.authorization.k8s.io/v1"
            }
            _ => "v1",
        }
    }

    /// The resource name in URLs (`/api/v1/pods`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::Event => "events",
            Kind::Namespace => "namespaces",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::ServiceAccount => "serviceaccounts",
            Kind::Secret => "secrets",
            Kind::ConfigMap => "configmaps",
            Kind::DaemonSet => "daemonsets",
            Kind::Deployment => "deployments",
            Kind::ClusterRole => "clusterroles",
            Kind::ClusterRoleBinding => "clusterrolebindings",
            Kind::Role => "roles",
            Kind::RoleBinding => "rolebindings",
        }
    }

    /// The kind from a URL's group version (`v1`, `apps/v1`) and resource
    /// name.
    pub fn from_path(group_version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.plural() == plural && k.api_version() == group_version)
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Node | Kind::Namespace | Kind::ClusterRole | Kind::ClusterRoleBinding
        )
    }

    /// Whether clients create, update, patch and delete these through the
    /// API. Nodes are the lab's (their status is patched through
    /// `nodes/{name}/status`).
    pub fn writable(self) -> bool {
        self != Kind::Node
    }
}

/// Runs `$body` with `$t` the k8s-openapi type stored for `$kind`.
macro_rules! for_kind {
    ($kind:expr, $t:ident => $body:expr) => {
        match $kind {
            Kind::Node => {
                type $t = Node;
                $body
            }
            Kind::Pod => {
                type $t = Pod;
                $body
            }
            Kind::Service => {
                type $t = Service;
                $body
            }
            Kind::Event => {
                type $t = KubeEvent;
                $body
            }
            Kind::Namespace => {
                type $t = Namespace;
                $body
            }
            Kind::NetworkPolicy => {
                type $t = NetworkPolicy;
                $body
            }
            Kind::ServiceAccount => {
                type $t = ServiceAccount;
                $body
            }
            Kind::Secret => {
                type $t = Secret;
                $body
            }
            Kind::ConfigMap => {
                type $t = ConfigMap;
                $body
            }
            Kind::DaemonSet => {
                type $t = DaemonSet;
                $body
            }
            Kind::Deployment => {
                type $t = Deployment;
                $body
            }
            Kind::ClusterRole => {
                type $t = ClusterRole;
                $body
            }
            Kind::ClusterRoleBinding => {
                type $t = ClusterRoleBinding;
                $body
            }
            Kind::Role => {
                type $t = Role;
                $body
            }
            Kind::RoleBinding => {
                type $t = RoleBinding;
                $body
            }
        }
    };
}

mod merge;
mod writes;
use merge::merge;
pub use writes::{PatchKind, WriteError};
pub use writes::{is_dns_label, is_dns_subdomain};

/// What happened to an object, in the words of the watch API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One stored change.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: Kind,
    pub event_type: EventType,
    /// The resourceVersion of the change (also stamped into `object`).
    pub rv: u64,
    /// The object as JSON (with `apiVersion` and `kind`) after the change; for
    /// a deletion, its last state stamped with the deletion's resourceVersion.
    pub object: Value,
    /// The object before the change (`None` when it was created).
    pub previous: Option<Value>,
}

/// A watch asked to resume from a resourceVersion the history no longer
/// covers (or that this cluster never had): the client must relist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Expired {
    pub requested: u64,
    /// The oldest resourceVersion a watch may still resume from.
    pub oldest: u64,
}

/// `(namespace, name)`; the namespace is empty for Nodes.
type Key = (String, String);

#[derive(Default)]
struct Inner {
    rv: u64,
    nodes: BTreeMap<Key, Node>,
    pods: BTreeMap<Key, Pod>,
    services: BTreeMap<Key, Service>,
    events: BTreeMap<Key, KubeEvent>,
    namespaces: BTreeMap<Key, Namespace>,
    network_policies: BTreeMap<Key, NetworkPolicy>,
    service_accounts: BTreeMap<Key, ServiceAccount>,
    secrets: BTreeMap<Key, Secret>,
    config_maps: BTreeMap<Key, ConfigMap>,
    daemon_sets: BTreeMap<Key, DaemonSet>,
    deployments: BTreeMap<Key, Deployment>,
    cluster_roles: BTreeMap<Key, ClusterRole>,
    cluster_role_bindings: BTreeMap<Key, ClusterRoleBinding>,
    roles: BTreeMap<Key, Role>,
    role_bindings: BTreeMap<Key, RoleBinding>,
    history: VecDeque<Arc<Event>>,
    /// resourceVersion of the newest event dropped from `history`.
    evicted: u64,
}

/// The k8s-openapi types the state stores, and where.
trait Stored: Clone + Serialize + k8s_openapi::Metadata<Ty = ObjectMeta> {
    const STORED: Kind;
    fn table(inner: &mut Inner) -> &mut BTreeMap<Key, Self>;
}

/// Each stored type, its kind and its table in [`Inner`].
macro_rules! stored {
    ($($ty:ty => $kind:ident, $table:ident;)*) => {$(
        impl Stored for $ty {
            const STORED: Kind = Kind::$kind;
            fn table(inner: &mut Inner) -> &mut BTreeMap<Key, Self> {
                &mut inner.$table
            }
        }
    )*};
}

stored! {
    Node => Node, nodes;
    Pod => Pod, pods;
    Service => Service, services;
    KubeEvent => Event, events;
    Namespace => Namespace, namespaces;
    NetworkPolicy => NetworkPolicy, network_policies;
    ServiceAccount => ServiceAccount, service_accounts;
    Secret => Secret, secrets;
    ConfigMap => ConfigMap, config_maps;
    DaemonSet => DaemonSet, daemon_sets;
    Deployment => Deployment, deployments;
    ClusterRole => ClusterRole, cluster_roles;
    ClusterRoleBinding => ClusterRoleBinding, cluster_role_bindings;
    Role => Role, roles;
    RoleBinding => RoleBinding, role_bindings;
}

/// Shared handle on the cluster's state (cheap to clone).
#[derive(Clone)]
pub struct ClusterState {
    inner: Arc<Mutex<Inner>>,
    /// Where each pod's container log is, as the kubelet keeps it: the API
    /// server proxies `pods/{name}/log` to the kubelet, the emulator reads
    /// the file itself. Not an object: no resourceVersion, no watch.
    logs: Arc<Mutex<BTreeMap<Key, PathBuf>>>,
    /// The latest resourceVersion: a wake-up call for watchers.
    latest: Arc<watch::Sender<u64>>,
}

impl Default for ClusterState {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterState {
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            logs: Arc::default(),
            latest: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Poisoning means a panic elsewhere mid-update; every update leaves
        // the maps consistent before anything can panic, so carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pod `namespace/name` writes its log to `path` (the lab's process for
    /// it started).
    pub fn set_pod_log(&self, namespace: &str, name: &str, path: PathBuf) {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.to_owned(), name.to_owned()), path);
    }

    /// Where pod `namespace/name` writes its log, if the lab runs a process
    /// for it.
    pub fn pod_log(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The current resourceVersion (that of the latest change).
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Notified with the new resourceVersion after every change. Call
    /// `borrow_and_update` before [`Self::events_since`], then wait on
    /// `changed`, and no change can slip between the two.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Changes of `kind` after resourceVersion `rv`, and the resourceVersion
    /// they bring the caller up to (the current one). `Err` when `rv` is
    /// older than the history kept, or newer than this cluster has ever been
    /// (a client from a previous lab: relisting is its only way back).
    pub fn events_since(&self, kind: Kind, rv: u64) -> Result<(Vec<Arc<Event>>, u64), Expired> {
        let inner = self.lock();
        if rv < inner.evicted || rv > inner.rv {
            return Err(Expired {
                requested: rv,
                oldest: inner.evicted,
            });
        }
        let events = inner
            .history
            .iter()
            .filter(|e| e.kind == kind && e.rv > rv)
            .cloned()
            .collect();
        Ok((events, inner.rv))
    }

    /// Every object of a collection as JSON, and the resourceVersion of
    /// this snapshot.
    pub fn list(&self, kind: Kind) -> (u64, Vec<Value>) {
        let mut inner = self.lock();
        let items = for_kind!(kind, T => to_json(T::table(&mut inner).values()));
        (inner.rv, items)
    }

    /// One object as JSON; `namespace` is ignored for Nodes.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let mut inner = self.lock();
        let key = key(kind, namespace, name);
        for_kind!(kind, T => T::table(&mut inner).get(&key).and_then(json))
    }

    /// Whether an object is stored, without serializing it.
    pub fn contains(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut inner = self.lock();
        let key = key(kind, namespace, name);
        for_kind!(kind, T => T::table(&mut inner).contains_key(&key))
    }

    /// Creates or replaces a Namespace.
    pub fn apply_namespace(&self, namespace: Namespace) {
        self.apply(namespace);
    }

    /// Creates or replaces a NetworkPolicy (as `kubectl apply` does).
    pub fn apply_network_policy(&self, policy: NetworkPolicy) {
        self.apply(policy);
    }

    pub fn delete_network_policy(&self, namespace: &str, name: &str) -> bool {
        self.delete::<NetworkPolicy>(namespace, name)
    }

    pub fn network_policies(&self) -> Vec<NetworkPolicy> {
        self.lock().network_policies.values().cloned().collect()
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

    /// Creates or replaces a Node.
    pub fn apply_node(&self, node: Node) {
        self.apply(node);
    }

    pub fn delete_node(&self, name: &str) -> bool {
        self.delete::<Node>("", name)
    }

    /// Creates or replaces a Pod. A pod without `status.hostIP` gets its
    /// node's InternalIP, as the kubelet reports it.
    pub fn apply_pod(&self, mut pod: Pod) {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let status = pod.status.get_or_insert_with(Default::default);
        if status.host_ip.is_none()
            && let Some(ip) = node.and_then(|n| self.node_internal_ip(&n))
        {
            status.host_ips = Some(vec![k8s_openapi::api::core::v1::HostIP { ip: ip.clone() }]);
            status.host_ip = Some(ip);
        }
        self.apply(pod);
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.delete::<Pod>(namespace, name)
    }

    /// Creates or replaces a Service.
    pub fn apply_service(&self, service: Service) {
        self.apply(service);
    }

    pub fn delete_service(&self, namespace: &str, name: &str) -> bool {
        self.delete::<Service>(namespace, name)
    }

    /// Cordons (or uncordons) a node, as `kubectl cordon` does. Returns
    /// whether the node exists.
    pub fn set_node_unschedulable(&self, name: &str, unschedulable: bool) -> bool {
        self.modify::<Node>("", name, |node| {
            node.spec.get_or_insert_with(Default::default).unschedulable =
                unschedulable.then_some(true);
        })
    }

    /// Sets a node's Ready condition (`False` is what a dead kubelet leads to).
    pub fn set_node_ready(&self, name: &str, ready: bool) -> bool {
        self.modify::<Node>("", name, |node| {
            let status = node.status.get_or_insert_with(Default::default);
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            set_condition(conditions, "Ready", ready);
            if let Some(ready) = conditions.iter_mut().find(|c| c.type_ == "Ready") {
                ready.reason = None;
                ready.message = None;
            }
        })
    }

    /// Sets a node's Ready condition to `False` with the kubelet's reason
    /// and message (`kubectl describe node` shows them).
    pub fn set_node_not_ready(&self, name: &str, reason: &str, message: &str) -> bool {
        self.modify::<Node>("", name, |node| {
            let status = node.status.get_or_insert_with(Default::default);
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            set_condition(conditions, "Ready", false);
            if let Some(ready) = conditions.iter_mut().find(|c| c.type_ == "Ready") {
                ready.reason = Some(reason.to_owned());
                ready.message = Some(message.to_owned());
            }
        })
    }

    /// Moves a pod to `phase` (`Pending`, `Running`, `Succeeded`, `Failed`),
    /// with its Ready condition following (only Running pods are Ready).
    pub fn set_pod_phase(&self, namespace: &str, name: &str, phase: &str) -> bool {
        self.modify::<Pod>(namespace, name, |pod| {
            let status = pod.status.get_or_insert_with(Default::default);
            status.phase = Some(phase.to_owned());
            set_condition(
                status.conditions.get_or_insert_with(Vec::new),
                "Ready",
                phase == "Running",
            );
        })
    }

    /// Marks a pod as terminating (`metadata.deletionTimestamp` set), the
    /// state between `kubectl delete` and the pod's disappearance.
    pub fn set_pod_terminating(&self, namespace: &str, name: &str) -> bool {
        self.modify::<Pod>(namespace, name, |pod| {
            pod.metadata.deletion_timestamp.get_or_insert_with(now);
        })
    }

    /// Applies a patch to a Node's `status` (strategic: `conditions` merge
    /// by `type`; otherwise a JSON merge patch, which replaces lists).
    /// `Ok(None)` when there is no such node; `Err` when the result is
    /// not a Node.
    pub fn patch_node_status(
        &self,
        name: &str,
        patch: &Value,
        strategic: bool,
    ) -> Result<Option<Value>, String> {
        let mut inner = self.lock();
        let key = (String::new(), name.to_owned());
        let Some(node) = inner.nodes.get(&key).cloned() else {
            return Ok(None);
        };
        let mut object = json(&node).ok_or("the node cannot be serialized")?;
        merge(&mut object, patch, strategic);
        let patched: Node =
            serde_json::from_value(object).map_err(|e| format!("invalid status: {e}"))?;
        self.apply_locked(&mut inner, patched);
        Ok(inner.nodes.get(&key).and_then(json))
    }

    /// The Events of `namespace`.
    pub fn events(&self, namespace: &str) -> Vec<KubeEvent> {
        self.lock()
            .events
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Records an Event about a pod, as the kubelet's event recorder does:
    /// a repeat of the same reason and message bumps the existing Event's
    /// `count` and `lastTimestamp` (the client-side correlator's
    /// aggregation) instead of creating another. Returns whether the pod
    /// exists.
    pub fn record_pod_event(
        &self,
        namespace: &str,
        pod: &str,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> bool {
        let mut inner = self.lock();
        let key = (namespace.to_owned(), pod.to_owned());
        let Some(pod) = inner.pods.get(&key).cloned() else {
            return false;
        };
        let uid = pod.metadata.uid.clone();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let same = |e: &KubeEvent| {
            e.involved_object.uid == uid
                && e.reason.as_deref() == Some(reason)
                && e.message.as_deref() == Some(message)
        };
        let existing = inner.events.values().find(|e| same(e)).cloned();
        let event = match existing {
            Some(mut event) => {
                event.count = Some(event.count.unwrap_or(1) + 1);
                event.last_timestamp = Some(now());
                event
            }
            None => KubeEvent {
                metadata: ObjectMeta {
                    // The recorder's name: the object's and a unique suffix.
                    name: Some(format!(
                        "{}.{}",
                        pod.metadata.name.as_deref().unwrap_or(""),
                        &new_uid()[..8]
                    )),
                    namespace: Some(namespace.to_owned()),
                    ..Default::default()
                },
                involved_object: ObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: pod.metadata.name.clone(),
                    namespace: Some(namespace.to_owned()),
                    uid,
                    resource_version: pod.metadata.resource_version.clone(),
                    ..Default::default()
                },
                reason: Some(reason.to_owned()),
                message: Some(message.to_owned()),
                type_: Some(type_.to_owned()),
                count: Some(1),
                first_timestamp: Some(now()),
                last_timestamp: Some(now()),
                source: Some(EventSource {
                    component: Some("kubelet".to_owned()),
                    host: node.clone(),
                }),
                reporting_component: Some("kubelet".to_owned()),
                reporting_instance: node,
                ..Default::default()
            },
        };
        self.apply_locked(&mut inner, event);
        true
    }

    fn node_internal_ip(&self, node: &str) -> Option<String> {
        let inner = self.lock();
        let addresses = inner
            .nodes
            .get(&(String::new(), node.to_owned()))?
            .status
            .as_ref()?
            .addresses
            .as_ref()?;
        addresses
            .iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address.clone())
    }

    fn apply<T: Stored>(&self, object: T) {
        let mut inner = self.lock();
        self.apply_locked(&mut inner, object);
    }

    fn apply_locked<T: Stored>(&self, inner: &mut Inner, mut object: T) {
        let meta = object.metadata_mut();
        if T::STORED.namespaced() {
            meta.namespace.get_or_insert_with(|| "default".to_owned());
        } else {
            meta.namespace = None;
        }
        // The API server keeps this label on every Namespace, whoever
        // writes it.
        if T::STORED == Kind::Namespace
            && let Some(name) = meta.name.clone()
        {
            meta.labels
                .get_or_insert_with(Default::default)
                .insert("kubernetes.io/metadata.name".into(), name);
        }
        let key = key_of(meta);
        let previous = T::table(inner).get(&key).cloned();
        meta.resource_version = Some((inner.rv + 1).to_string());
        match &previous {
            Some(old) => {
                meta.uid.clone_from(&old.metadata().uid);
                meta.creation_timestamp
                    .clone_from(&old.metadata().creation_timestamp);
            }
            None => {
                meta.uid.get_or_insert_with(new_uid);
                meta.creation_timestamp.get_or_insert_with(now);
            }
        }
        let event_type = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        // Serialize before storing: the state never holds a change that
        // watchers are not told about.
        let Some(after) = json(&object) else { return };
        let before = previous.as_ref().and_then(json);
        T::table(inner).insert(key, object);
        self.record(inner, T::STORED, event_type, after, before);
    }

    fn delete<T: Stored>(&self, namespace: &str, name: &str) -> bool {
        let key = key(T::STORED, namespace, name);
        let mut inner = self.lock();
        let Some(mut object) = T::table(&mut inner).remove(&key) else {
            return false;
        };
        let before = json(&object);
        object.metadata_mut().resource_version = Some((inner.rv + 1).to_string());
        match json(&object) {
            Some(after) => self.record(&mut inner, T::STORED, EventType::Deleted, after, before),
            // Cannot happen with k8s-openapi types; keep the object rather
            // than lose a deletion the watchers would never hear of.
            None => {
                T::table(&mut inner).insert(key, object);
                return false;
            }
        }
        true
    }

    /// Applies `change` to a stored object (a new resourceVersion, as any
    /// update). Returns whether the object exists.
    fn modify<T: Stored>(&self, namespace: &str, name: &str, change: impl FnOnce(&mut T)) -> bool {
        let key = key(T::STORED, namespace, name);
        let mut inner = self.lock();
        let Some(mut object) = T::table(&mut inner).get(&key).cloned() else {
            return false;
        };
        change(&mut object);
        self.apply_locked(&mut inner, object);
        true
    }

    fn record(
        &self,
        inner: &mut Inner,
        kind: Kind,
        event_type: EventType,
        object: Value,
        previous: Option<Value>,
    ) {
        inner.rv += 1;
        if inner.history.len() == HISTORY
            && let Some(old) = inner.history.pop_front()
        {
            inner.evicted = old.rv;
        }
        inner.history.push_back(Arc::new(Event {
            kind,
            event_type,
            rv: inner.rv,
            object,
            previous,
        }));
        tracing::trace!(
            kind = kind.name(),
            event = event_type.as_str(),
            rv = inner.rv,
            "cluster state changed"
        );
        self.latest.send_replace(inner.rv);
    }
}

/// Where an object of `kind` named `name` is stored (`namespace` is
/// ignored for cluster-scoped kinds).
fn key(kind: Kind, namespace: &str, name: &str) -> Key {
    (
        if kind.namespaced() { namespace } else { "" }.to_owned(),
        name.to_owned(),
    )
}

fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn json<T: Serialize>(object: &T) -> Option<Value> {
    serde_json::to_value(object)
        .inspect_err(|error| tracing::error!(%error, "cannot serialize a cluster object"))
        .ok()
}

fn to_json<'a, T: Serialize + 'a>(objects: impl Iterator<Item = &'a T>) -> Vec<Value> {
    objects.filter_map(json).collect()
}

/// A random version 4 UUID, the format Kubernetes gives object UIDs.
pub fn new_uid() -> String {
    uuid_v4(rand::random::<u128>().to_be_bytes())
}

/// `bytes` as a version 4 UUID (random bytes make a random one, a digest a
/// stable one).
pub fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Now, as Kubernetes timestamps it (whole seconds).
pub fn now() -> Time {
    // Kubernetes timestamps have a resolution of one second.
    let secs = i64::try_from(netmatrix_runtime::now_unix_secs()).unwrap_or(0);
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn set_condition<C: Condition>(conditions: &mut Vec<C>, type_: &str, status: bool) {
    let status = if status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_() == type_) {
        Some(c) if c.status() == status => {}
        Some(c) => c.set(status),
        None => conditions.push(C::new(type_, status)),
    }
}

/// The parts NodeCondition and PodCondition share.
trait Condition {
    fn new(type_: &str, status: &str) -> Self;
    fn type_(&self) -> &str;
    fn status(&self) -> &str;
    /// Sets the status, and the transition time with it.
    fn set(&mut self, status: &str);
}

impl Condition for NodeCondition {
    fn new(type_: &str, status: &str) -> Self {
        NodeCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            last_transition_time: Some(now()),
            last_heartbeat_time: Some(now()),
            ..Default::default()
        }
    }
    fn type_(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn set(&mut self, status: &str) {
        self.status = status.to_owned();
        self.last_transition_time = Some(now());
    }
}

impl Condition for PodCondition {
    fn new(type_: &str, status: &str) -> Self {
        PodCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            last_transition_time: Some(now()),
            ..Default::default()
        }
    }
    fn type_(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn set(&mut self, status: &str) {
        self.status = status.to_owned();
        self.last_transition_time = Some(now());
    }
}

fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A Ready node with an InternalIP and Hostname address and a pod CIDR.
pub fn node(name: &str, internal_ip: &str, pod_cidr: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(string_map(&[
                ("kubernetes.io/hostname", name),
                ("kubernetes.io/os", "linux"),
            ])),
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
                reason: Some("KubeletReady".to_owned()),
                message: Some("kubelet is posting ready status".to_owned()),
                ..Condition::new("Ready", "True")
            }]),
            node_info: Some(NodeSystemInfo {
                architecture: std::env::consts::ARCH.to_owned(),
                operating_system: std::env::consts::OS.to_owned(),
                // Every lab node is a namespace of this machine's kernel.
                kernel_version: kernel_release(),
                kubelet_version: crate::emulator::apiserver::GIT_VERSION.to_owned(),
                os_image: "netmatrix lab (network namespace)".to_owned(),
                container_runtime_version: "lab-process://".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// `uname -r`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The name of a lab pod's one container: its component, as the chart
/// names its containers (`agent`, `companion`, ...), or its app.
fn container_name(labels: &[(&str, &str)]) -> String {
    ["app.kubernetes.io/component", "k8s-app"]
        .iter()
        .find_map(|key| labels.iter().find(|(k, _)| k == key).map(|(_, v)| *v))
        .unwrap_or("main")
        .to_owned()
}

/// The image the lab's pods "run": their processes are the binaries built
/// in this workspace.
pub const LAB_IMAGE: &str = "netmatrix:lab";

/// A Running, Ready pod on `node` with address `ip`. `hostIP` is `ip` for a
/// host-network pod; otherwise [`ClusterState::apply_pod`] fills it from the
/// node.
pub fn pod(
    namespace: &str,
    name: &str,
    node: &str,
    ip: &str,
    labels: &[(&str, &str)],
    host_network: bool,
) -> Pod {
    let host_ip = host_network.then(|| ip.to_owned());
    let container = container_name(labels);
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(string_map(labels)),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            host_network: host_network.then_some(true),
            containers: vec![Container {
                name: container.clone(),
                image: Some(LAB_IMAGE.to_owned()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            container_statuses: Some(vec![ContainerStatus {
                name: container,
                image: LAB_IMAGE.to_owned(),
                image_id: String::new(),
                ready: true,
                started: Some(true),
                restart_count: 0,
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(now()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            pod_ip: Some(ip.to_owned()),
            pod_ips: Some(vec![PodIP { ip: ip.to_owned() }]),
            host_ips: host_ip
                .clone()
                .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip }]),
            host_ip,
            start_time: Some(now()),
            conditions: Some(vec![Condition::new("Ready", "True")]),
            ..Default::default()
        }),
    }
}

/// A Service; `cluster_ip: None` makes it headless (`clusterIP: None`).
/// `ports` are `(name, port, protocol)`, the target port being the same.
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
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port, protocol)| ServicePort {
                        name: Some((*name).to_owned()),
                        port: *port,
                        protocol: Some((*protocol).to_owned()),
                        target_port: Some(
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(*port),
                        ),
                        ..Default::default()
                    })
                    .collect(),
            ),
            selector: (!selector.is_empty()).then(|| string_map(selector)),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, ip: &str) -> Pod {
        pod("ns", name, "node-1", ip, &[("app", "agent")], false)
    }

    #[test]
    fn changes_bump_the_resource_version_and_are_kept_for_watchers() {
        let state = ClusterState::new();
        state.apply_node(node("node-1", "198.18.0.1", "10.244.1.0/24"));
        state.apply_pod(agent("a", "10.244.1.2"));
        state.apply_pod(agent("a", "10.244.1.9"));
        assert!(state.delete_pod("ns", "a"));
        assert!(!state.delete_pod("ns", "a"));
        assert_eq!(state.resource_version(), 4);

        let (events, now) = state.events_since(Kind::Pod, 1).unwrap();
        assert_eq!(now, 4);
        let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
        assert_eq!(events[1].object["status"]["podIP"], "10.244.1.9");
        assert_eq!(events[1].object["kind"], "Pod");
        assert_eq!(events[1].object["apiVersion"], "v1");
        assert_eq!(
            events[1].previous.as_ref().unwrap()["status"]["podIP"],
            "10.244.1.2"
        );
        assert_eq!(events[2].object["metadata"]["resourceVersion"], "4");
        assert!(state.pods().is_empty());
        assert!(state.events_since(Kind::Pod, 5).is_err(), "from the future");
    }

    #[test]
    fn watchers_too_far_behind_are_told_to_relist() {
        let state = ClusterState::new();
        for i in 0..HISTORY + 10 {
            state.apply_node(node(&format!("n{i}"), "198.18.0.1", "10.244.1.0/24"));
        }
        let expired = state.events_since(Kind::Node, 5).unwrap_err();
        assert_eq!(expired.oldest, 10);
        assert_eq!(state.events_since(Kind::Node, 10).unwrap().0.len(), HISTORY);
    }

    #[test]
    fn uid_and_creation_time_survive_updates() {
        let state = ClusterState::new();
        state.apply_node(node("n", "198.18.0.1", "10.244.1.0/24"));
        let first = state.nodes()[0].metadata.clone();
        assert_eq!(first.uid.as_ref().unwrap().len(), 36);
        state.apply_node(node("n", "198.18.0.1", "10.244.1.0/24"));
        let second = state.nodes()[0].metadata.clone();
        assert_eq!(first.uid, second.uid);
        assert_eq!(first.creation_timestamp, second.creation_timestamp);
        assert_ne!(first.resource_version, second.resource_version);
    }

    #[test]
    fn pods_get_their_node_address_as_host_ip() {
        let state = ClusterState::new();
        state.apply_node(node("node-1", "198.18.0.1", "10.244.1.0/24"));
        state.apply_pod(agent("a", "10.244.1.2"));
        let pod = state.get(Kind::Pod, "ns", "a").unwrap();
        assert_eq!(pod["status"]["hostIP"], "198.18.0.1");
        assert_eq!(pod["status"]["podIPs"][0]["ip"], "10.244.1.2");
        let host = super::pod("ns", "h", "node-1", "198.18.0.1", &[], true);
        assert_eq!(host.spec.unwrap().host_network, Some(true));
    }

    #[test]
    fn churn_helpers_update_through_the_history() {
        let state = ClusterState::new();
        state.apply_node(node("node-1", "198.18.0.1", "10.244.1.0/24"));
        state.apply_pod(agent("a", "10.244.1.2"));
        assert!(state.set_node_unschedulable("node-1", true));
        assert!(state.set_node_ready("node-1", false));
        assert!(state.set_pod_phase("ns", "a", "Failed"));
        assert!(state.set_pod_terminating("ns", "a"));
        assert!(!state.set_pod_phase("ns", "missing", "Failed"));

        let node = state.get(Kind::Node, "", "node-1").unwrap();
        assert_eq!(node["spec"]["unschedulable"], true);
        assert_eq!(node["status"]["conditions"][0]["status"], "False");
        let pod = state.get(Kind::Pod, "ns", "a").unwrap();
        assert_eq!(pod["status"]["phase"], "Failed");
        assert_eq!(pod["status"]["conditions"][0]["status"], "False");
        assert!(pod["metadata"]["deletionTimestamp"].is_string());
        let (events, _) = state.events_since(Kind::Pod, 0).unwrap();
        assert_eq!(events.len(), 3);
        assert!(
            events[1..]
                .iter()
                .all(|e| e.event_type == EventType::Modified)
        );
    }

    #[test]
    fn services_and_their_deletion() {
        let state = ClusterState::new();
        state.apply_service(service(
            "ns",
            "h",
            None,
            &[("metrics", 9090, "TCP")],
            &[("a", "b")],
        ));
        let svc = state.services().remove(0);
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.ports.unwrap()[0].port, 9090);
        assert!(state.delete_service("ns", "h"));
        assert!(state.services().is_empty());
    }

    #[test]
    fn subscribers_are_woken_by_changes() {
        let state = ClusterState::new();
        let mut rx = state.subscribe();
        assert!(!rx.has_changed().unwrap());
        state.apply_node(node("n", "198.18.0.1", "10.244.1.0/24"));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
    }
}
