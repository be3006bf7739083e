//! How the netmatrix binaries read Kubernetes objects: one reading of a
//! Running pod, its node and addresses, a Ready node and an API timestamp,
//! for the agent (which pods to probe) and the aggregator (which agents may
//! report, which nodes are expected), the probe targets read from them
//! ([`targets`]), and one watch loop ([`watch`]).
//!
//! The rules are pure functions over the API objects, unit-tested without
//! an API server.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub mod targets;
pub mod watch;

pub use watch::{WatchHealth, spawn_reflector};

/// The condition type of a Ready pod and of a Ready node.
pub const READY: &str = "Ready";

/// An API timestamp in Unix milliseconds; `None` before 1970.
pub fn time_to_unix_ms(t: &Time) -> Option<u64> {
    u64::try_from(t.0.as_millisecond()).ok()
}

/// The pod is being deleted (`metadata.deletionTimestamp` is set).
pub fn pod_is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Phase `Running` and not terminating. A pod that is starting or being
/// deleted is churn, not a network path (nor an agent that may report).
pub fn pod_is_running(pod: &Pod) -> bool {
    !pod_is_terminating(pod)
        && pod
            .status
            .as_ref()
            .is_some_and(|s| s.phase.as_deref() == Some("Running"))
}

/// The node the pod is bound to (`spec.nodeName`); an empty name is no node.
pub fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

/// The pod's addresses: `status.podIPs` in order (the first is the primary
/// one; a dual-stack pod has two), then `status.podIP` when the list lacks
/// it (older or hand-written objects). Unparseable entries are skipped.
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

/// `status.startTime`: when the kubelet started the pod (container restarts
/// do not move it), Unix milliseconds.
pub fn pod_started_unix_ms(pod: &Pod) -> Option<u64> {
    pod.status
        .as_ref()?
        .start_time
        .as_ref()
        .and_then(time_to_unix_ms)
}

/// The node's Ready condition (the first, conditions being keyed by type).
pub fn node_ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == READY)
}

/// The kubelet reports the node Ready (`True`); no condition is not Ready.
pub fn node_is_ready(node: &Node) -> bool {
    node_ready_condition(node).is_some_and(|c| c.status == "True")
}

/// `spec.unschedulable`: cordoned or being drained.
pub fn node_is_cordoned(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodIP, PodSpec, PodStatus};
    use k8s_openapi::jiff::Timestamp;

    fn pod(node: Option<&str>, phase: &str, ip: Option<&str>, ips: &[&str]) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: ip.map(Into::into),
                pod_ips: (!ips.is_empty())
                    .then(|| ips.iter().map(|ip| PodIP { ip: (*ip).into() }).collect()),
                start_time: Some(Time(
                    Timestamp::from_millisecond(1_700_000_000_000).unwrap(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(unschedulable: Option<bool>, ready: &[&str]) -> Node {
        Node {
            spec: Some(NodeSpec {
                unschedulable,
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(
                    ready
                        .iter()
                        .map(|status| NodeCondition {
                            type_: READY.into(),
                            status: (*status).into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn running_means_phase_running_and_not_terminating() {
        assert!(pod_is_running(&pod(Some("n1"), "Running", None, &[])));
        assert!(!pod_is_running(&pod(Some("n1"), "Pending", None, &[])));
        let mut terminating = pod(Some("n1"), "Running", None, &[]);
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(pod_is_terminating(&terminating));
        assert!(!pod_is_running(&terminating));
        assert!(!pod_is_running(&Pod::default()));
    }

    #[test]
    fn an_empty_node_name_is_no_node() {
        assert_eq!(pod_node(&pod(Some("n1"), "Running", None, &[])), Some("n1"));
        assert_eq!(pod_node(&pod(Some(""), "Running", None, &[])), None);
        assert_eq!(pod_node(&pod(None, "Running", None, &[])), None);
        assert_eq!(pod_node(&Pod::default()), None);
    }

    #[test]
    fn pod_ips_prefer_the_list_and_fall_back_to_pod_ip() {
        let ips = |p: &Pod| -> Vec<String> { pod_ips(p).iter().map(ToString::to_string).collect() };
        let dual = pod(None, "Running", Some("10.0.0.1"), &["10.0.0.1", "fd00::1"]);
        assert_eq!(ips(&dual), ["10.0.0.1", "fd00::1"]);
        assert_eq!(
            ips(&pod(None, "Running", Some("10.0.0.1"), &[])),
            ["10.0.0.1"]
        );
        assert_eq!(ips(&pod(None, "Running", None, &["fd00::1"])), ["fd00::1"]);
        assert!(ips(&pod(None, "Running", Some("not-an-ip"), &[])).is_empty());
        assert!(ips(&Pod::default()).is_empty());
    }

    #[test]
    fn times_are_unix_milliseconds() {
        let t = Time(Timestamp::from_millisecond(1_700_000_000_123).unwrap());
        assert_eq!(time_to_unix_ms(&t), Some(1_700_000_000_123));
        let before_1970 = Time(Timestamp::from_millisecond(-1).unwrap());
        assert_eq!(time_to_unix_ms(&before_1970), None);
        assert_eq!(
            pod_started_unix_ms(&pod(None, "Running", None, &[])),
            Some(1_700_000_000_000)
        );
        assert_eq!(pod_started_unix_ms(&Pod::default()), None);
    }

    #[test]
    fn a_node_is_ready_only_when_its_ready_condition_is_true() {
        assert!(node_is_ready(&node(None, &["True"])));
        assert!(!node_is_ready(&node(None, &["False"])));
        assert!(!node_is_ready(&node(None, &["Unknown"])));
        assert!(!node_is_ready(&node(None, &[])), "no condition");
        assert!(!node_is_ready(&Node::default()));
        assert!(
            !node_is_ready(&node(None, &["False", "True"])),
            "the first decides"
        );
        assert!(node_is_cordoned(&node(Some(true), &["True"])));
        assert!(!node_is_cordoned(&node(Some(false), &["True"])));
        assert!(!node_is_cordoned(&node(None, &["True"])));
    }
}
