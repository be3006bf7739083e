//! Why a node's agent cannot run, as the API tells it: the Node's Ready
//! condition, the agent pod's status (phase, containers' waiting reason,
//! `PodScheduled`), and the pod's recent Warning Events. The same fields
//! `kubectl describe pod` shows an operator.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use netmatrix_api::labels;
use netmatrix_runtime::k8s;

use crate::diagnosis::{AgentDown, DownCause};

/// Warning Events quoted per pod, newest first.
const EVENTS_QUOTED: usize = 3;

/// The kubelet's waiting reasons that mean the image is not there.
const IMAGE_REASONS: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "RegistryUnavailable",
];

/// Waiting reasons that only say "starting": the Events tell more.
const STARTING: &[&str] = &["ContainerCreating", "PodInitializing"];

/// For every node whose pod-network agent is not running, why; nothing for
/// nodes whose agent runs. `pods` are the agent pods of the watch.
pub(super) fn agents_down<'a>(
    nodes: &[&'a Node],
    pods: &[&'a Pod],
    events: &[&'a Event],
    namespace: &str,
) -> BTreeMap<String, AgentDown> {
    let agent_pods: Vec<(&str, &Pod)> = pods
        .iter()
        .filter(|p| !k8s::pod_is_terminating(p) && !is_host_agent(p))
        .filter_map(|p| node_of(p).map(|n| (n, *p)))
        .collect();
    let any_agent_pod = !agent_pods.is_empty();
    let mut down = BTreeMap::new();
    for node in nodes {
        let name = node.name_any();
        let on_node: Vec<&Pod> = agent_pods
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .collect();
        let cause = if let Some(message) = network_not_ready(node) {
            Some((DownCause::NodeNetworkNotReady { message }, None))
        } else if on_node.iter().any(|p| runs(p)) {
            None
        } else if let Some(pod) = on_node.iter().max_by_key(|p| created(p)) {
            Some((pod_cause(pod, events), Some(*pod)))
        } else if any_agent_pod {
            // No pod at all while other nodes have one: the DaemonSet
            // left this node out. With no agent pod anywhere, nothing
            // tells a node apart: the rule speaks of the cluster.
            Some((DownCause::NoPod, None))
        } else {
            None
        };
        if let Some((cause, pod)) = cause {
            let events = pod.map(|p| warnings(p, events)).unwrap_or_default();
            down.insert(
                name,
                AgentDown {
                    namespace: namespace.to_owned(),
                    cause,
                    events,
                },
            );
        }
    }
    down
}

/// A host-network agent: its component label, or `hostNetwork: true`.
pub(super) fn is_host_agent(pod: &Pod) -> bool {
    let component = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::COMPONENT))
        .is_some_and(|c| c == labels::COMPONENT_HOST_AGENT);
    component || pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// The node a pod runs on or is meant for: `spec.nodeName` once bound; a
/// DaemonSet pod not yet scheduled names its node in its required node
/// affinity (`matchFields` on `metadata.name`).
fn node_of(pod: &Pod) -> Option<&str> {
    if let Some(node) = k8s::pod_node(pod) {
        return Some(node);
    }
    let required = pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    required
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first())
        .map(String::as_str)
}

/// Running and not terminating ([`k8s::pod_is_running`]), and no container
/// waiting (a crash-looping pod is `Running` with its container waiting in
/// `CrashLoopBackOff`): an agent that can report.
pub(super) fn runs(pod: &Pod) -> bool {
    k8s::pod_is_running(pod)
        && pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .all(|c| c.state.as_ref().is_none_or(|s| s.waiting.is_none()))
}

fn created(pod: &Pod) -> Option<Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The Ready condition's text when the node is not ready because its
/// container runtime's network is not: the CRI's `NetworkReady=false`,
/// which the kubelet quotes ("container runtime network not ready:
/// NetworkReady=false reason:NetworkPluginNotReady message:...").
fn network_not_ready(node: &Node) -> Option<String> {
    let ready = k8s::node_ready_condition(node)?;
    if ready.status == "True" {
        return None;
    }
    let message = ready.message.as_deref().unwrap_or_default();
    let network =
        message.contains("NetworkReady=false") || message.contains("NetworkPluginNotReady");
    network.then(|| match ready.reason.as_deref() {
        Some(reason) if !reason.is_empty() => format!("{reason}: {message}"),
        _ => message.to_owned(),
    })
}

/// Why this pod does not run, most specific first.
fn pod_cause(pod: &Pod, events: &[&Event]) -> DownCause {
    let name = pod.name_any();
    let status = pod.status.clone().unwrap_or_default();
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unschedulable {
        return DownCause::Unschedulable {
            pod: name,
            message: c.message.clone().unwrap_or_default(),
        };
    }
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find(|w| w.reason.is_some());
    let reason = waiting.and_then(|w| w.reason.clone()).unwrap_or_default();
    let message = waiting.and_then(|w| w.message.clone()).unwrap_or_default();
    if IMAGE_REASONS.contains(&reason.as_str()) {
        return DownCause::ImageNotPulled {
            pod: name,
            reason,
            message,
        };
    }
    if let Some(sandbox) = pod_events(pod, events)
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox"))
    {
        return DownCause::SandboxFails {
            pod: name,
            message: sandbox.message.clone().unwrap_or_default(),
        };
    }
    if !reason.is_empty() && !STARTING.contains(&reason.as_str()) {
        return DownCause::NotRunning {
            pod: name,
            state: reason,
            message,
        };
    }
    let phase = status.phase.unwrap_or_else(|| "Pending".to_owned());
    let state = if reason.is_empty() {
        phase
    } else {
        format!("{phase}, {reason}")
    };
    DownCause::NotRunning {
        pod: name,
        state,
        message: status.message.unwrap_or_default(),
    }
}

/// The pod's Events (by UID when both have one, else by name), newest first.
fn pod_events<'e>(pod: &Pod, events: &[&'e Event]) -> Vec<&'e Event> {
    let name = pod.name_any();
    let uid = pod.metadata.uid.as_deref();
    let mut mine: Vec<&Event> = events
        .iter()
        .copied()
        .filter(|e| {
            let o = &e.involved_object;
            o.kind.as_deref().is_none_or(|k| k == "Pod")
                && match (o.uid.as_deref(), uid) {
                    (Some(a), Some(b)) => a == b,
                    _ => o.name.as_deref() == Some(name.as_str()),
                }
        })
        .collect();
    // Newest first; Events of the same instant (a kubelet records a
    // failed pull's three at once) in a stable order.
    mine.sort_by(|a, b| {
        last_seen(b)
            .cmp(&last_seen(a))
            .then_with(|| a.reason.cmp(&b.reason))
            .then_with(|| a.message.cmp(&b.message))
    });
    mine
}

/// When an Event last happened, whichever API generation wrote it.
fn last_seen(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The pod's recent Warning Events as `REASON (×COUNT): MESSAGE`, newest
/// first, each reason and message once (a kubelet's failed pull is three
/// `Failed` Events: the registry's error, `ErrImagePull`, `ImagePullBackOff`).
fn warnings(pod: &Pod, events: &[&Event]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    pod_events(pod, events)
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| seen.insert((e.reason.clone(), e.message.clone())))
        .take(EVENTS_QUOTED)
        .map(|e| {
            let count = e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1);
            format!(
                "{} (×{count}): {}",
                e.reason.as_deref().unwrap_or("Unknown"),
                e.message.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ready: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"conditions": [ready]}
        }))
        .unwrap()
    }

    fn ready_node(name: &str) -> Node {
        node(name, json!({"type": "Ready", "status": "True"}))
    }

    fn agent(name: &str, node: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "netmatrix", "uid": format!("uid-{name}"),
                         "creationTimestamp": "2026-12-06T01:00:00Z",
                         "labels": {"app.kubernetes.io/component": "agent"}},
            "spec": {"nodeName": node, "containers": [{"name": "agent"}]},
            "status": status
        }))
        .unwrap()
    }

    fn event(pod: &str, reason: &str, kind: &str, message: &str, count: i32, at: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{pod}.{reason}"), "namespace": "netmatrix"},
            "involvedObject": {"kind": "Pod", "namespace": "netmatrix", "name": pod,
                               "uid": format!("uid-{pod}")},
            "reason": reason, "type": kind, "message": message, "count": count,
            "lastTimestamp": at
        }))
        .unwrap()
    }

    fn down(nodes: &[Node], pods: &[Pod], events: &[Event]) -> BTreeMap<String, AgentDown> {
        let n: Vec<&Node> = nodes.iter().collect();
        let p: Vec<&Pod> = pods.iter().collect();
        let e: Vec<&Event> = events.iter().collect();
        agents_down(&n, &p, &e, "netmatrix")
    }

    fn running() -> serde_json::Value {
        json!({"phase": "Running", "podIP": "10.244.1.2",
               "containerStatuses": [{"name": "agent", "ready": true, "restartCount": 0,
                  "image": "i", "imageID": "", "state": {"running": {}}}]})
    }

    fn waiting(phase: &str, reason: &str, message: &str) -> serde_json::Value {
        json!({"phase": phase,
               "containerStatuses": [{"name": "agent", "ready": false, "restartCount": 0,
                  "image": "i", "imageID": "",
                  "state": {"waiting": {"reason": reason, "message": message}}}]})
    }

    #[test]
    fn running_agents_need_no_reason() {
        let d = down(&[ready_node("n1")], &[agent("a1", "n1", running())], &[]);
        assert!(d.is_empty());
    }

    #[test]
    fn a_failing_sandbox_is_read_from_the_pods_events() {
        let cni = "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for sandbox \"abc\": plugin type=\"bridge\" failed (add): failed to allocate for range 0: no IP addresses available in range set: 10.244.2.1-10.244.2.254";
        let events = [
            event(
                "a2",
                "Scheduled",
                "Normal",
                "Successfully assigned",
                1,
                "2026-12-06T01:00:00Z",
            ),
            event(
                "a2",
                "FailedCreatePodSandBox",
                "Warning",
                cni,
                7,
                "2026-12-06T01:00:30Z",
            ),
            // Another pod's events are not this one's.
            event(
                "other",
                "BackOff",
                "Warning",
                "x",
                1,
                "2026-12-06T01:00:40Z",
            ),
        ];
        let pods = [
            agent("a1", "n1", running()),
            agent("a2", "n2", waiting("Pending", "ContainerCreating", "")),
        ];
        let d = down(&[ready_node("n1"), ready_node("n2")], &pods, &events);
        assert_eq!(d.len(), 1);
        let why = &d["n2"];
        assert_eq!(
            why.cause,
            DownCause::SandboxFails {
                pod: "a2".into(),
                message: cni.into()
            }
        );
        assert_eq!(why.events, [format!("FailedCreatePodSandBox (×7): {cni}")]);
    }

    #[test]
    fn image_pulls_crash_loops_and_missing_pods_are_told_apart() {
        let pods = [
            agent(
                "a1",
                "n1",
                waiting("Pending", "ImagePullBackOff", "Back-off pulling image"),
            ),
            agent(
                "a2",
                "n2",
                waiting("Running", "CrashLoopBackOff", "back-off 40s"),
            ),
        ];
        let nodes = [ready_node("n1"), ready_node("n2"), ready_node("n3")];
        let at = "2026-12-06T01:00:30Z";
        let pull = [
            event("a1", "Failed", "Warning", "Error: ImagePullBackOff", 1, at),
            event("a1", "BackOff", "Normal", "Back-off pulling image", 1, at),
            event(
                "a1",
                "Failed",
                "Warning",
                "Failed to pull image \"x\": not found",
                1,
                at,
            ),
            event("a1", "Failed", "Warning", "Error: ErrImagePull", 1, at),
        ];
        let d = down(&nodes, &pods, &pull);
        // Every Warning of the same instant, in a stable order.
        assert_eq!(
            d["n1"].events,
            [
                "Failed (×1): Error: ErrImagePull",
                "Failed (×1): Error: ImagePullBackOff",
                "Failed (×1): Failed to pull image \"x\": not found",
            ]
        );
        assert!(
            matches!(&d["n1"].cause, DownCause::ImageNotPulled { reason, .. } if reason == "ImagePullBackOff")
        );
        assert!(
            matches!(&d["n2"].cause, DownCause::NotRunning { state, .. } if state == "CrashLoopBackOff")
        );
        assert_eq!(d["n3"].cause, DownCause::NoPod);
        // No agent pod anywhere: nothing tells one node from another.
        assert!(down(&nodes, &[], &[]).is_empty());
    }

    #[test]
    fn a_node_not_ready_for_its_network_is_named_with_the_kubelets_words() {
        let message = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized";
        let nodes = [
            node(
                "n1",
                json!({"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": message}),
            ),
            node(
                "n2",
                json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status."}),
            ),
        ];
        let pods = [agent("a1", "n1", running()), agent("a2", "n2", running())];
        let d = down(&nodes, &pods, &[]);
        assert_eq!(
            d["n1"].cause,
            DownCause::NodeNetworkNotReady {
                message: format!("KubeletNotReady: {message}")
            }
        );
        // NotReady for another reason: not ours to explain.
        assert!(!d.contains_key("n2"));
    }

    #[test]
    fn an_unscheduled_daemonset_pod_is_placed_by_its_node_affinity() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a3", "namespace": "netmatrix", "uid": "uid-a3"},
            "spec": {"containers": [{"name": "agent"}],
                     "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                        {"nodeSelectorTerms": [{"matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": ["n3"]}]}]}}}},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/3 nodes are available: 1 Insufficient memory."}]}
        }))
        .unwrap();
        let d = down(&[ready_node("n3")], &[pod], &[]);
        assert_eq!(
            d["n3"].cause,
            DownCause::Unschedulable {
                pod: "a3".into(),
                message: "0/3 nodes are available: 1 Insufficient memory.".into()
            }
        );
    }
}
