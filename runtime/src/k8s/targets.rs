//! Which pods are probe targets, and which nodes are left alone: pure
//! functions over Pod and Node objects, so the rules are unit-tested without
//! an API server. The agent reads its peers with them, and the aggregator
//! the pinglists it serves, so both read Running, skip and dedup-by-IP the
//! same way.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use netmatrix_api::{AgentIdentity, labels};

use crate::k8s;

pub use netmatrix_api::NodeSkip;

/// What the agent needs to know about a Running pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodInfo {
    /// Node the pod runs on; empty when the pod came from DNS (the
    /// aggregator maps IPs to nodes).
    pub node: String,
    /// Pod name; empty when the pod came from DNS.
    pub pod: String,
    pub ip: IpAddr,
    /// `app.kubernetes.io/component` (`agent`, `companion`...).
    pub component: Option<String>,
    /// `status.startTime`, Unix milliseconds.
    pub started_unix_ms: Option<u64>,
    /// The pod's Ready condition is True, or the API reports no Ready
    /// condition at all. Endpoints (so DNS) list only Ready pods.
    pub ready: bool,
    /// When the Ready condition last changed (Unix milliseconds): when DNS
    /// could start listing the pod.
    pub ready_since_unix_ms: Option<u64>,
}

impl PodInfo {
    pub fn is_agent(&self) -> bool {
        self.component.as_deref() == Some(labels::COMPONENT_AGENT)
    }
}

/// A pod worth probing: Running, has an IP, not terminating, scheduled
/// (the shared reading of [`crate::k8s`]; its address is the
/// first of `status.podIPs`, else `status.podIP`). Anything else is
/// skipped, because pinging a pod that is starting or being deleted reports
/// churn as a network failure.
pub fn running_pod(pod: &Pod) -> Option<PodInfo> {
    if !k8s::pod_is_running(pod) {
        return None;
    }
    let ip = *k8s::pod_ips(pod).first()?;
    let node = k8s::pod_node(pod)?.to_owned();
    let ready_condition = pod
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == k8s::READY);
    Some(PodInfo {
        node,
        pod: pod.metadata.name.clone()?,
        ip,
        component: pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::COMPONENT))
            .cloned(),
        started_unix_ms: k8s::pod_started_unix_ms(pod),
        ready: ready_condition.is_none_or(|c| c.status == "True"),
        ready_since_unix_ms: ready_condition
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(k8s::time_to_unix_ms),
    })
}

/// Drops what [`running_pod`] does not read before a pod enters the watch's
/// cache. A real pod object is several kilobytes (containers, volumes,
/// managed fields), and the agent caches every probe target.
pub fn trim_pod(pod: &mut Pod) {
    trim_metadata(&mut pod.metadata);
    if let Some(spec) = pod.spec.as_mut() {
        *spec = PodSpec {
            node_name: spec.node_name.take(),
            ..Default::default()
        };
    }
    if let Some(status) = pod.status.as_mut() {
        *status = PodStatus {
            phase: status.phase.take(),
            pod_ip: status.pod_ip.take(),
            pod_ips: status.pod_ips.take(),
            start_time: status.start_time.take(),
            conditions: status
                .conditions
                .take()
                .map(|c| c.into_iter().filter(|c| c.type_ == k8s::READY).collect()),
            ..Default::default()
        };
    }
}

/// Drops what [`node_skip`] does not read before a node enters the watch's
/// cache. A real node object is 10 to 50 KB (its image list above all), and
/// every agent caches every node: at 5,000 nodes that would be hundreds of
/// megabytes per agent.
pub fn trim_node(node: &mut Node) {
    trim_metadata(&mut node.metadata);
    node.metadata.labels = None;
    if let Some(spec) = node.spec.as_mut() {
        *spec = NodeSpec {
            unschedulable: spec.unschedulable,
            ..Default::default()
        };
    }
    if let Some(status) = node.status.as_mut() {
        *status = NodeStatus {
            conditions: status
                .conditions
                .take()
                .map(|c| c.into_iter().filter(|c| c.type_ == k8s::READY).collect()),
            ..Default::default()
        };
    }
}

/// Annotations, managed fields and owners: read by nobody here, often the
/// largest part of an object's metadata.
fn trim_metadata(meta: &mut ObjectMeta) {
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
}

/// Whether the pods of `node` should be left alone, and why.
pub fn node_skip(node: &Node) -> Option<NodeSkip> {
    if k8s::node_is_cordoned(node) {
        return Some(NodeSkip::Cordoned);
    }
    (!k8s::node_is_ready(node)).then_some(NodeSkip::NotReady)
}

/// The nodes whose pods are not probed, by name. Nodes the watch does not
/// know (yet) are absent, so they count as schedulable and Ready: a lagging
/// node watch must not cost peers.
pub fn skipped_nodes<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> BTreeMap<String, NodeSkip> {
    nodes
        .into_iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, node_skip(n)?)))
        .collect()
}

/// Every Running pod of the watch, sorted (stable reports and metrics).
pub fn running_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<PodInfo> {
    let mut out: Vec<PodInfo> = pods.into_iter().filter_map(running_pod).collect();
    out.sort();
    out
}

/// Peers: the Running pods, without this agent (by name, and by IP: with
/// `hostNetwork` other pods on this node share our IP, and pinging ourselves
/// proves nothing), without the pods of cordoned or NotReady nodes, and each
/// address once (a pod's IP reused by its successor while the watch still
/// lists both): the aggregator counts a report's peers by address.
pub fn peers(
    running: &[PodInfo],
    me: &AgentIdentity,
    skipped_nodes: &BTreeMap<String, NodeSkip>,
) -> Vec<PodInfo> {
    let mut addresses = std::collections::HashSet::new();
    running
        .iter()
        .filter(|p| p.pod != me.pod && p.ip != me.pod_ip)
        .filter(|p| !skipped_nodes.contains_key(&p.node))
        .filter(|p| addresses.insert(p.ip))
        .cloned()
        .collect()
}

/// The agent pods (this one included): what the agents' SRV record should list.
pub fn agents(running: &[PodInfo]) -> Vec<PodInfo> {
    running.iter().filter(|p| p.is_agent()).cloned().collect()
}

/// Pod and Node objects, and their readings, for tests (cargo feature
/// `fixtures`, which the crates' dev-dependencies enable).
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures {
    use k8s_openapi::api::core::v1::{
        Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;
    use netmatrix_api::labels;

    use super::PodInfo;

    /// A pod of `component` named `name` on `node`, in `phase`, at `ip`
    /// (none when empty), started at 1,700,000,000,000 ms.
    pub fn pod(name: &str, node: &str, ip: &str, phase: &str, component: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("netmatrix".into()),
                labels: Some(
                    [
                        (labels::NAME.to_string(), labels::APP.to_string()),
                        (labels::COMPONENT.to_string(), component.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: (!ip.is_empty()).then(|| ip.into()),
                start_time: Some(Time(
                    Timestamp::from_millisecond(1_700_000_000_000).expect("a valid time"),
                )),
                ..Default::default()
            }),
        }
    }

    /// A Ready agent pod on n1, as discovery reads it.
    pub fn info(ip: &str) -> PodInfo {
        PodInfo {
            node: "n1".into(),
            pod: format!("agent-{ip}"),
            ip: ip.parse().expect("an IP address"),
            component: Some("agent".into()),
            started_unix_ms: None,
            ready: true,
            ready_since_unix_ms: None,
        }
    }

    /// A node, cordoned or not, with a Ready condition of `ready` (none: no
    /// condition at all).
    pub fn node(name: &str, unschedulable: bool, ready: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable: unschedulable.then_some(true),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: ready.map(|status| {
                    vec![NodeCondition {
                        type_: "Ready".into(),
                        status: status.into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{node, pod};
    use super::*;
    use k8s_openapi::api::core::v1::PodCondition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn me() -> AgentIdentity {
        netmatrix_api::fixtures::identity("n1", "agent-1", "10.244.1.2")
    }

    #[test]
    fn only_running_scheduled_pods_with_an_ip_count() {
        let mut terminating = pod("agent-4", "n4", "10.244.4.2", "Running", "agent");
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let mut unscheduled = pod("agent-5", "", "10.244.5.2", "Running", "agent");
        unscheduled.spec = None;
        let pods = [
            pod("agent-2", "n2", "10.244.2.2", "Running", "agent"),
            pod("agent-3", "n3", "10.244.3.2", "Pending", "agent"),
            pod("agent-6", "n6", "", "Running", "agent"),
            pod("agent-7", "n7", "not-an-ip", "Running", "agent"),
            terminating,
            unscheduled,
        ];
        let running = running_pods(&pods);
        assert_eq!(running.len(), 1);
        let p = &running[0];
        assert_eq!((p.node.as_str(), p.pod.as_str()), ("n2", "agent-2"));
        assert_eq!(p.started_unix_ms, Some(1_700_000_000_000));
        assert!(p.is_agent());
    }

    /// The shared reading (netmatrix_runtime::k8s): the first of podIPs,
    /// podIP as the fallback; the cache keeps both.
    #[test]
    fn the_address_is_the_first_pod_ip() {
        let mut p = pod("agent-2", "n2", "", "Running", "agent");
        p.status.as_mut().unwrap().pod_ips = Some(vec![
            k8s_openapi::api::core::v1::PodIP {
                ip: "fd00::2".into(),
            },
            k8s_openapi::api::core::v1::PodIP {
                ip: "10.244.2.2".into(),
            },
        ]);
        let info = running_pod(&p).unwrap();
        assert_eq!(info.ip, "fd00::2".parse::<IpAddr>().unwrap());
        let mut trimmed = p.clone();
        trim_pod(&mut trimmed);
        assert_eq!(running_pod(&trimmed), Some(info));
    }

    #[test]
    fn peers_exclude_this_agent_by_name_and_ip() {
        let pods = [
            pod("agent-1", "n1", "10.244.1.2", "Running", "agent"),
            pod("companion-1", "n1", "10.244.1.3", "Running", "companion"),
            // Same IP as ours (hostNetwork neighbour): not a peer either.
            pod("other", "n1", "10.244.1.2", "Running", "companion"),
            pod("agent-2", "n2", "10.244.2.2", "Running", "agent"),
            // A companion whose address its successor already has.
            pod(
                "companion-2-old",
                "n2",
                "10.244.2.3",
                "Running",
                "companion",
            ),
            pod(
                "companion-2-new",
                "n2",
                "10.244.2.3",
                "Running",
                "companion",
            ),
        ];
        let running = running_pods(&pods);
        let peers: Vec<_> = peers(&running, &me(), &BTreeMap::new())
            .into_iter()
            .map(|p| p.pod)
            .collect();
        assert_eq!(peers.len(), 3, "each address once: {peers:?}");
        assert!(peers.starts_with(&["companion-1".to_owned(), "agent-2".to_owned()]));
        let agents: Vec<_> = agents(&running).into_iter().map(|p| p.pod).collect();
        assert_eq!(agents, ["agent-1", "agent-2"]);
    }

    /// What the cache keeps still gives the same verdicts, and the bulk of
    /// a real object (images, containers, annotations) is gone.
    #[test]
    fn trimmed_objects_read_the_same_and_weigh_little() {
        use k8s_openapi::api::core::v1::{Container, ContainerImage, NodeSystemInfo};
        let bulky_node = |mut n: Node| {
            n.metadata.annotations = Some([("a".to_owned(), "x".repeat(2000))].into());
            let status = n.status.get_or_insert_default();
            status.images = Some(vec![
                ContainerImage {
                    names: Some(vec!["registry.example/image:tag".repeat(4)]),
                    size_bytes: Some(1),
                };
                50
            ]);
            status.node_info = Some(NodeSystemInfo::default());
            n
        };
        for (unschedulable, ready) in [(false, Some("True")), (true, Some("True")), (false, None)] {
            let full = bulky_node(node("n1", unschedulable, ready));
            let mut trimmed = full.clone();
            trim_node(&mut trimmed);
            assert_eq!(node_skip(&trimmed), node_skip(&full));
            let size = |n: &Node| serde_json::to_vec(n).unwrap().len();
            assert!(
                size(&trimmed) * 20 < size(&full),
                "{} of {}",
                size(&trimmed),
                size(&full)
            );
        }

        let mut full = pod("p1", "n1", "10.244.1.5", "Running", "agent");
        full.metadata.annotations = Some([("a".to_owned(), "x".repeat(2000))].into());
        full.spec.get_or_insert_default().containers = vec![Container::default(); 3];
        full.status.get_or_insert_default().conditions = Some(vec![
            PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(Time(Timestamp::from_millisecond(5).unwrap())),
                ..Default::default()
            },
            PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                ..Default::default()
            },
        ]);
        let mut trimmed = full.clone();
        trim_pod(&mut trimmed);
        assert_eq!(running_pod(&trimmed), running_pod(&full));
        assert!(running_pod(&trimmed).is_some_and(|p| p.ready_since_unix_ms == Some(5)));
        assert!(trimmed.metadata.annotations.is_none());
    }

    #[test]
    fn cordoned_and_not_ready_nodes_are_skipped_unknown_ones_are_not() {
        let nodes = [
            node("n1", false, Some("True")),
            node("n2", true, Some("True")),
            node("n3", false, Some("False")),
            node("n4", false, Some("Unknown")),
            node("n5", false, None),
        ];
        let skipped = skipped_nodes(&nodes);
        assert_eq!(
            skipped,
            BTreeMap::from([
                ("n2".to_owned(), NodeSkip::Cordoned),
                ("n3".to_owned(), NodeSkip::NotReady),
                ("n4".to_owned(), NodeSkip::NotReady),
                ("n5".to_owned(), NodeSkip::NotReady),
            ])
        );
        let pods = [
            pod("agent-1", "n1", "10.244.1.2", "Running", "agent"),
            pod("agent-2", "n2", "10.244.2.2", "Running", "agent"),
            pod("agent-3", "n3", "10.244.3.2", "Running", "agent"),
            // n9 is not (yet) in the node watch: probed.
            pod("agent-9", "n9", "10.244.9.2", "Running", "agent"),
            pod("companion-1", "n1", "10.244.1.3", "Running", "companion"),
        ];
        let me = netmatrix_api::fixtures::identity("n1", "agent-1", "10.244.1.2");
        let running = running_pods(&pods);
        let names: Vec<_> = peers(&running, &me, &skipped)
            .into_iter()
            .map(|p| p.pod)
            .collect();
        assert_eq!(names, ["companion-1", "agent-9"]);
        // Agents (the SRV truth) still include pods of skipped nodes.
        assert_eq!(agents(&running).len(), 4);
    }

    #[test]
    fn the_ready_condition_is_read() {
        let mut p = pod("agent-2", "n2", "10.244.2.2", "Running", "agent");
        let info = running_pod(&p).unwrap();
        assert!(info.ready, "no Ready condition: counted as ready");
        assert_eq!(info.ready_since_unix_ms, None);
        if let Some(status) = p.status.as_mut() {
            status.conditions = Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "False".into(),
                last_transition_time: Some(Time(
                    Timestamp::from_millisecond(1_700_000_005_000).unwrap(),
                )),
                ..Default::default()
            }]);
        }
        let info = running_pod(&p).unwrap();
        assert!(!info.ready);
        assert_eq!(info.ready_since_unix_ms, Some(1_700_000_005_000));
    }
}
