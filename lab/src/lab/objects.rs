//! The lab's Kubernetes objects (Nodes, pods, Services), as a real cluster
//! running the netmatrix chart has them: what the API server emulator and
//! the DNS server serve.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateWaiting, ContainerStatus, Node, Pod, PodCondition,
};
use netmatrix_api::labels;

use crate::emulator::cluster::{self, ClusterState};
use crate::net::topology::{
    AGENT_SVC, AGGREGATOR_SVC, DNS_SVC, KUBERNETES_SVC, NAMESPACE, NodePlan, PodPlan, Topology,
};

/// Everything at lab start: every node with its pods, the control plane's
/// pods, the Services.
pub(super) fn register_cluster(t: &Topology, state: &ClusterState, host_agents: bool) {
    for n in &t.nodes {
        state.apply_node(node(n));
        for pod in node_pods(n, host_agents) {
            state.apply_pod(pod);
        }
    }
    register_control_plane(t, state);
    register_services(state);
    register_namespaces(state);
}

/// What a cluster has before anything is installed into it (the container
/// runtime mode, where `helm install` brings netmatrix): Nodes, the DNS
/// pod, the `kubernetes` and `kube-dns` Services, `default` and
/// `kube-system`.
pub(super) fn register_platform(t: &Topology, state: &ClusterState) {
    for n in &t.nodes {
        state.apply_node(node(n));
    }
    state.apply_pod(dns_pod(t));
    for svc in platform_services() {
        state.apply_service(svc);
    }
    for name in ["default", "kube-system"] {
        state.apply_namespace(namespace(name));
    }
}

fn namespace(name: &str) -> k8s_openapi::api::core::v1::Namespace {
    k8s_openapi::api::core::v1::Namespace {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        status: Some(k8s_openapi::api::core::v1::NamespaceStatus {
            phase: Some("Active".to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The cluster DNS pod (CoreDNS's stand-in), on node 1.
fn dns_pod(t: &Topology) -> k8s_openapi::api::core::v1::Pod {
    cluster::pod(
        "kube-system",
        &t.dns.name,
        &t.control_plane().name,
        &t.dns.ip.to_string(),
        &[("k8s-app", "kube-dns")],
        false,
    )
}

/// `kubernetes` and `kube-dns`.
fn platform_services() -> Vec<k8s_openapi::api::core::v1::Service> {
    let ip = |a: Ipv4Addr| a.to_string();
    vec![
        cluster::service(
            "default",
            "kubernetes",
            Some(&ip(KUBERNETES_SVC.0)),
            &[("https", i32::from(KUBERNETES_SVC.1), "TCP")],
            &[],
        ),
        cluster::service(
            "kube-system",
            "kube-dns",
            Some(&ip(DNS_SVC.0)),
            &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
            &[("k8s-app", "kube-dns")],
        ),
    ]
}

/// The namespaces every cluster has (`default`, `kube-system`), and the
/// chart's.
pub(crate) fn register_namespaces(state: &ClusterState) {
    for name in ["default", "kube-system", crate::net::topology::NAMESPACE] {
        state.apply_namespace(namespace(name));
    }
}

/// A Ready, schedulable Node object.
pub(super) fn node(n: &NodePlan) -> Node {
    cluster::node(&n.name, &n.ip.to_string(), &n.pod_cidr)
}

/// The Node object of a machine whose kubelet has registered but whose
/// network plugin is not ready yet: `Ready` is `False`, with the reason the
/// kubelet gives until the CNI configuration exists.
pub(super) fn joining_node(n: &NodePlan) -> Node {
    let mut joining = node(n);
    let conditions = joining.status.as_mut().and_then(|s| s.conditions.as_mut());
    for c in conditions.into_iter().flatten() {
        if c.type_ == "Ready" {
            c.status = "False".to_owned();
            c.reason = Some("KubeletNotReady".to_owned());
            c.message = Some(
                "container runtime network not ready: NetworkReady=false \
                 reason:NetworkPluginNotReady message:Network plugin returns error: \
                 cni plugin not initialized"
                    .to_owned(),
            );
        }
    }
    joining
}

/// The DaemonSet pods of node `n`, Running: agent, companion and (when
/// the lab runs them) host-network agent.
pub(super) fn node_pods(n: &NodePlan, host_agents: bool) -> Vec<Pod> {
    let mut pods = vec![agent_pod(n), companion_pod(n, &n.companion)];
    if host_agents {
        // Host agents report but are not probe targets of the pod agents:
        // they have no probe-target label, and probe each other by their
        // component.
        let host_agent = cluster::pod(
            NAMESPACE,
            &n.host_agent,
            &n.name,
            &n.ip.to_string(),
            &[
                (labels::NAME, labels::APP),
                (labels::COMPONENT, labels::COMPONENT_HOST_AGENT),
            ],
            true,
        );
        pods.push(with_service_account(
            host_agent,
            labels::HOST_AGENT_SERVICE_ACCOUNT,
        ));
    }
    pods
}

/// The Running Pod object of node `n`'s pod-network agent.
pub(super) fn agent_pod(n: &NodePlan) -> Pod {
    let agent = cluster::pod(
        NAMESPACE,
        &n.agent.name,
        &n.name,
        &n.agent.ip.to_string(),
        &[
            (labels::NAME, labels::APP),
            (labels::COMPONENT, labels::COMPONENT_AGENT),
            (labels::PROBE_TARGET, "true"),
        ],
        false,
    );
    with_service_account(agent, labels::AGENT_SERVICE_ACCOUNT)
}

/// Agents run under their own ServiceAccount, as the chart's do: their
/// tokens say so, and the aggregator accepts only those.
fn with_service_account(mut pod: Pod, name: &str) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        spec.service_account_name = Some(name.to_owned());
    }
    pod
}

/// The Running Pod object of a companion.
pub(super) fn companion_pod(node: &NodePlan, pod: &PodPlan) -> Pod {
    cluster::pod(
        NAMESPACE,
        &pod.name,
        &node.name,
        &pod.ip.to_string(),
        &[
            (labels::NAME, labels::APP),
            (labels::COMPONENT, labels::COMPONENT_COMPANION),
            (labels::PROBE_TARGET, "true"),
        ],
        false,
    )
}

/// `running` as it is before its sandbox exists: `Pending`, no address,
/// not Ready, its containers waiting to be created.
pub(super) fn pending(running: &Pod) -> Pod {
    let mut pod = running.clone();
    if let Some(status) = pod.status.as_mut() {
        status.phase = Some("Pending".to_owned());
        status.pod_ip = None;
        status.pod_ips = None;
        status.conditions = Some(vec![PodCondition {
            type_: "Ready".to_owned(),
            status: "False".to_owned(),
            ..Default::default()
        }]);
        // Its containers are not created yet.
        for container in status.container_statuses.iter_mut().flatten() {
            container.ready = false;
            container.started = Some(false);
            container.state = Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ContainerCreating".to_owned()),
                    message: None,
                }),
                ..Default::default()
            });
        }
    }
    pod
}

/// The kubelet's words when the CRI reports the network not ready: the
/// Node's Ready message, and the `NetworkNotReady` Event's.
pub(super) const CNI_NOT_INITIALIZED: &str = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized";

/// An agent pod that does not start, and the Events the kubelet records
/// about it (type, reason, message), in the words of a real kubelet and
/// container runtime for each cause.
pub(super) struct TroubledPod {
    pub pod: Pod,
    pub events: Vec<(&'static str, &'static str, String)>,
}

/// The pod re-created on `n` (new UID) and stuck: its sandbox fails
/// (`sandbox`), its image is not pulled (`image`), or the node's network
/// is not ready (neither).
pub(super) fn sandbox_fails(n: &NodePlan) -> TroubledPod {
    let pod = &n.agent.name;
    let message = format!(
        "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for sandbox \"{}\": plugin type=\"bridge\" failed (add): failed to allocate for range 0: no IP addresses available in range set: {}",
        &cluster::new_uid()[..12],
        n.pod_cidr
    );
    TroubledPod {
        pod: waiting(n, cluster::LAB_IMAGE, "ContainerCreating", ""),
        events: vec![
            (
                "Normal",
                "Scheduled",
                format!("Successfully assigned {NAMESPACE}/{pod} to {}", n.name),
            ),
            ("Warning", "FailedCreatePodSandBox", message),
        ],
    }
}

pub(super) fn image_not_pulled(n: &NodePlan) -> TroubledPod {
    let image = "ghcr.io/netmatrix/netmatrix:0.0.0-missing";
    TroubledPod {
        pod: waiting(
            n,
            image,
            "ImagePullBackOff",
            &format!("Back-off pulling image \"{image}\""),
        ),
        events: vec![
            ("Normal", "Pulling", format!("Pulling image \"{image}\"")),
            (
                "Warning",
                "Failed",
                format!(
                    "Failed to pull image \"{image}\": rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found"
                ),
            ),
            ("Warning", "Failed", "Error: ErrImagePull".to_owned()),
            (
                "Normal",
                "BackOff",
                format!("Back-off pulling image \"{image}\""),
            ),
            ("Warning", "Failed", "Error: ImagePullBackOff".to_owned()),
        ],
    }
}

pub(super) fn network_not_ready(n: &NodePlan) -> TroubledPod {
    TroubledPod {
        pod: waiting(n, cluster::LAB_IMAGE, "ContainerCreating", ""),
        events: vec![(
            "Warning",
            "NetworkNotReady",
            format!("network is not ready: {CNI_NOT_INITIALIZED}"),
        )],
    }
}

/// `n`'s agent pod, Pending, its container (of `image`) waiting for
/// `reason`.
fn waiting(n: &NodePlan, image: &str, reason: &str, message: &str) -> Pod {
    let mut pod = pending(&agent_pod(n));
    for container in pod.spec.iter_mut().flat_map(|s| s.containers.iter_mut()) {
        container.image = Some(image.to_owned());
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = Some(vec![ContainerStatus {
            name: "agent".to_owned(),
            image: image.to_owned(),
            ready: false,
            restart_count: 0,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.to_owned()),
                    message: (!message.is_empty()).then(|| message.to_owned()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
    }
    pod
}

/// The aggregator (host network) and CoreDNS pods on node 1.
fn register_control_plane(t: &Topology, state: &ClusterState) {
    let cp = t.control_plane();
    state.apply_pod(cluster::pod(
        NAMESPACE,
        super::AGGREGATOR_POD,
        &cp.name,
        &cp.ip.to_string(),
        &[
            (labels::NAME, labels::APP),
            (labels::COMPONENT, labels::COMPONENT_AGGREGATOR),
        ],
        true,
    ));
    state.apply_pod(dns_pod(t));
}

/// The Services every lab has: kubernetes, kube-dns and netmatrix's own
/// (benches with a cluster of their own register them too).
pub fn register_services(state: &ClusterState) {
    let ip = |a: Ipv4Addr| a.to_string();
    for svc in platform_services() {
        state.apply_service(svc);
    }
    state.apply_service(cluster::service(
        NAMESPACE,
        "netmatrix-aggregator",
        Some(&ip(AGGREGATOR_SVC.0)),
        &[("http", i32::from(AGGREGATOR_SVC.1), "TCP")],
        &[
            (labels::NAME, labels::APP),
            (labels::COMPONENT, labels::COMPONENT_AGGREGATOR),
        ],
    ));
    let agent_selector = [
        (labels::NAME, labels::APP),
        (labels::COMPONENT, labels::COMPONENT_AGENT),
    ];
    state.apply_service(cluster::service(
        NAMESPACE,
        "netmatrix-agent",
        Some(&ip(AGENT_SVC.0)),
        &[("metrics", i32::from(AGENT_SVC.1), "TCP")],
        &agent_selector,
    ));
    state.apply_service(cluster::service(
        NAMESPACE,
        "netmatrix-agents",
        None,
        &[("metrics", i32::from(AGENT_SVC.1), "TCP")],
        &agent_selector,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::topology::Overlay;

    fn ready(node: &Node) -> Option<String> {
        node.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone())
    }

    #[test]
    fn a_joining_node_is_not_ready_until_its_network_is() {
        let t = Topology::plan("nmabcd", 2, Overlay::Vxlan).unwrap();
        let n2 = &t.nodes[1];
        assert_eq!(ready(&node(n2)).as_deref(), Some("True"));
        let joining = joining_node(n2);
        assert_eq!(ready(&joining).as_deref(), Some("False"));
        assert_eq!(joining.metadata, node(n2).metadata);
    }

    #[test]
    fn every_node_runs_the_daemonset_pods() {
        let t = Topology::plan("nmabcd", 2, Overlay::Vxlan).unwrap();
        let names = |pods: Vec<Pod>| -> Vec<String> {
            pods.into_iter().filter_map(|p| p.metadata.name).collect()
        };
        assert_eq!(
            names(node_pods(&t.nodes[1], true)),
            [
                "netmatrix-agent-node-2",
                "netmatrix-companion-node-2",
                "netmatrix-host-agent-node-2"
            ]
        );
        assert_eq!(node_pods(&t.nodes[1], false).len(), 2);
        let state = ClusterState::new();
        register_cluster(&t, &state, true);
        assert_eq!(state.nodes().len(), 2);
        // 3 per node, the aggregator and CoreDNS.
        assert_eq!(state.pods().len(), 8);
        assert_eq!(state.services().len(), 5);

        let pending = pending(&node_pods(&t.nodes[1], false)[0]);
        let status = pending.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.pod_ip, None);
    }
}
