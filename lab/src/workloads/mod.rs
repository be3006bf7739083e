//! The container runtime mode (`netmatrix-lab up --runtime container`):
//! what a node's kubelet, the workload controllers, the scheduler and
//! kube-proxy do with the objects a client (`helm install`) stores in the
//! API emulator, so that the real chart runs the real image.
//!
//! - [`controllers`]: DaemonSets and Deployments to pods, pods to nodes;
//! - [`kubelet`]: pods to sandboxes, volumes and containers (podman + runc);
//! - [`podman`]: one container's spec to `podman run` flags;
//! - [`proxy`]: stored Services to every node's DNAT rules;
//! - [`validation`]: what a client chose that the kubelet must not trust.
//!
//! One thread runs them all in a loop, a few times a second: small enough
//! for a lab, and it never holds the cluster's lock while running a command.

pub mod controllers;
pub mod kubelet;
pub mod podman;
pub mod proxy;
pub mod validation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use serde::de::DeserializeOwned;

use crate::emulator::cluster::{ClusterState, Kind};
use crate::net::netns;
use crate::net::topology::{APISERVER_PORT, Topology};
use controllers::Action;
pub use kubelet::{Kubelet, NodeAgent, remove_containers};

/// How often the loop runs.
const PERIOD: Duration = Duration::from_millis(250);

/// The running loop; [`Workloads::stop`] (or drop) stops every pod.
pub struct Workloads {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Workloads {
    pub fn start(agent: NodeAgent) -> std::io::Result<Workloads> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("lab-workloads".into())
            .spawn(move || {
                let cluster = agent.cluster.clone();
                let topology = agent.topology.clone();
                let mut kubelet = Kubelet::new(agent);
                let mut rules = String::new();
                while !stopping.load(Ordering::SeqCst) {
                    // A panic in one round (a bug) must not leave the pods
                    // running unsupervised: log it and go on.
                    let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_controllers(&cluster);
                        kubelet.sync();
                        program_services(&cluster, &topology, &mut rules);
                    }));
                    if round.is_err() {
                        tracing::error!("a round of the lab's kubelet panicked");
                    }
                    std::thread::sleep(PERIOD);
                }
                kubelet.shutdown();
            })?;
        Ok(Workloads {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the loop, every container and sandbox.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Workloads {
    fn drop(&mut self) {
        self.stop();
    }
}

fn typed<T: DeserializeOwned>(cluster: &ClusterState, kind: Kind) -> Vec<T> {
    cluster
        .list(kind)
        .1
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

/// One round of the controllers and the scheduler, then the owners' status.
fn run_controllers(cluster: &ClusterState) {
    let daemonsets: Vec<DaemonSet> = typed(cluster, Kind::DaemonSet);
    let deployments: Vec<Deployment> = typed(cluster, Kind::Deployment);
    let nodes = cluster.nodes();
    let pods = cluster.pods();
    for action in controllers::reconcile(&daemonsets, &deployments, &pods, &nodes) {
        let done = match &action {
            Action::Create { namespace, pod } => cluster
                .create(Kind::Pod, namespace, pod.clone())
                .map(|_| ()),
            Action::Delete { namespace, name } => {
                cluster.remove(Kind::Pod, namespace, name).map(|_| ())
            }
            Action::Bind {
                namespace,
                name,
                node,
            } => {
                // The Binding subresource's effect, as a conditional write:
                // a pod deleted or changed meanwhile is left alone (gone, or
                // bound next round).
                match cluster.get(Kind::Pod, namespace, name) {
                    Some(mut pod) => {
                        pod["spec"]["nodeName"] = serde_json::json!(node);
                        cluster.replace(Kind::Pod, namespace, name, pod).map(|_| ())
                    }
                    None => Ok(()),
                }
            }
        };
        if let Err(error) = done {
            tracing::warn!(%error, ?action, "a controller's write was refused");
        }
    }
    let pods = cluster.pods();
    for ds in &daemonsets {
        let status = controllers::daemonset_status(ds, &pods, &nodes);
        write_status(cluster, Kind::DaemonSet, &ds.metadata, status);
    }
    for dep in &deployments {
        let status = controllers::deployment_status(dep, &pods);
        write_status(cluster, Kind::Deployment, &dep.metadata, status);
    }
}

fn write_status(
    cluster: &ClusterState,
    kind: Kind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    status: serde_json::Value,
) {
    let (ns, name) = (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    );
    match cluster.write_status(kind, ns, name, status) {
        // Gone meanwhile (helm uninstall): nothing to report.
        Ok(()) | Err(crate::emulator::cluster::WriteError::NotFound { .. }) => {}
        Err(error) => tracing::warn!(%error, %name, "cannot write a workload's status"),
    }
}

/// kube-proxy: the Services chain of every node, rewritten when the
/// Services or their endpoints changed (`last` holds what was written).
fn program_services(cluster: &ClusterState, topology: &Topology, last: &mut String) {
    let mut manual = proxy::ManualEndpoints::new();
    manual.insert(
        ("default".into(), "kubernetes".into()),
        vec![SocketAddr::from((
            topology.control_plane().ip,
            APISERVER_PORT,
        ))],
    );
    let rules = proxy::chain_rules(&cluster.services(), &cluster.pods(), &manual);
    if rules == *last {
        return;
    }
    let mut ok = true;
    for node in &topology.nodes {
        if let Err(error) = netns::iptables_restore(&node.netns, &rules) {
            tracing::warn!(%error, node = %node.name, "cannot program the Services");
            ok = false;
        }
    }
    if ok {
        *last = rules;
    }
}
