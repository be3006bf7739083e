//! `agent-missing`: an expected node (Ready in the API, past its grace
//! period; or seen before under `--no-kubernetes`) without a fresh report
//! from its pod-network agent. A node the underlay or its pod network cuts
//! off is not reported here: its agents cannot reach the aggregator, and
//! that finding says why.
//!
//! The finding says why the agent is silent when the API knows it
//! ([`AgentDown`]): the CNI failing to create the pod's sandbox, the image
//! not pulled, the pod unschedulable, the node NotReady because its
//! network plugin is not. A node NotReady for that reason is judged once
//! past its grace period (a joining node is NotReady until its CNI is up),
//! though other NotReady nodes are not: its NotReady is the pod network.
//!
//! When every expected agent is silent at once and the API knows no reason
//! for any, the cause is common to all: the aggregator or the way to it.
//! That is one finding, not one per node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use netmatrix_api::{FindingKind, MatrixRow, NetworkMode};

use super::{Tally, View, broken_cells, capped, sorted_nodes};
use crate::diagnosis::{AgentDown, Condition, DownCause, Subject, quote};

/// What the rule is told beside the matrix.
pub(super) struct Silence<'a> {
    pub expected: &'a BTreeSet<String>,
    /// Nodes a network finding already explains.
    pub explained: &'a BTreeSet<&'a str>,
    pub down: Option<&'a BTreeMap<String, AgentDown>>,
    pub judge: bool,
}

pub(super) fn agent_missing(view: &View, silence: &Silence) -> Vec<Condition> {
    if !silence.judge {
        return Vec::new();
    }
    let down = |node: &str| silence.down.and_then(|d| d.get(node));
    let judged = |row: &&MatrixRow| {
        let node = row.node.as_str();
        let ready = silence.expected.contains(node) && view.is_ready(node);
        let network_not_ready = down(node).is_some_and(AgentDown::judged_when_not_ready);
        (ready || network_not_ready) && !silence.explained.contains(node)
    };
    let rows: Vec<&MatrixRow> = view
        .matrix
        .rows_of(NetworkMode::Pod)
        .iter()
        .filter(judged)
        .collect();
    let silent: Vec<&MatrixRow> = rows.iter().copied().filter(|r| !r.reporting).collect();
    let none_explained = silent.iter().all(|r| down(&r.node).is_none());
    if silent.len() >= 2 && silent.len() == rows.len() && none_explained {
        return vec![all_silent(&silent)];
    }
    silent
        .into_iter()
        .map(|row| match down(&row.node) {
            Some(why) => told_by_the_api(row, why),
            None => unexplained(view, row),
        })
        .collect()
}

fn silence_line(row: &MatrixRow) -> String {
    let silence = match row.report_age_ms {
        Some(ms) => format!(
            "last report {} ago",
            humantime::format_duration(Duration::from_secs((ms / 1000.0) as u64))
        ),
        None => "no report received since the aggregator started".to_owned(),
    };
    format!("{}: {silence}", row.node)
}

/// Every agent silent, no reason known for any: what they share is the
/// aggregator and the way to it.
fn all_silent(silent: &[&MatrixRow]) -> Condition {
    let nodes = sorted_nodes(silent.iter().map(|r| r.node.as_str()));
    let evidence = silent.iter().map(|r| silence_line(r)).collect();
    Condition::new(
        FindingKind::AgentMissing,
        Subject::Cluster,
        nodes.clone(),
        format!(
            "no agent reports: all {} nodes fell silent together, so the cause is what they share, the aggregator or the way to it, not each node",
            nodes.len()
        ),
        capped(evidence),
        "check the aggregator: its pod running and not throttled or restarting (kubectl -n <namespace> get pods -l app.kubernetes.io/component=aggregator; its logs), its Service and endpoints, a NetworkPolicy in front of it, and the pod network on its node; the agents keep probing and resend what they could not deliver".to_owned(),
    )
}

/// The API says why the agent cannot run.
fn told_by_the_api(row: &MatrixRow, why: &AgentDown) -> Condition {
    let node = row.node.as_str();
    let ns = why.namespace.as_str();
    let describe = |pod: &str| format!("kubectl -n {ns} describe pod {pod}");
    let (summary, cause, hint) = match &why.cause {
        DownCause::NodeNetworkNotReady { message } => (
            format!(
                "{node} is NotReady because its container runtime's network is not ready: no pod can start there, the agent included"
            ),
            format!("Node {node} Ready=False: {}", quote(message)),
            format!(
                "the CNI is not set up on {node}: its network config (/etc/cni/net.d) or plugin binaries (/opt/cni/bin) missing, or the CNI's own pod (flannel, calico-node, cilium...) not running there (kubectl -n kube-system get pods -o wide --field-selector spec.nodeName={node}); the kubelet's log on {node} says which"
            ),
        ),
        DownCause::SandboxFails { pod, message } => (
            format!(
                "the agent pod on {node} cannot start: the CNI fails to set up its network ({})",
                quote(message)
            ),
            format!("{ns}/{pod}: FailedCreatePodSandBox: {}", quote(message)),
            format!(
                "any new pod on {node} fails the same way: check the CNI on {node}, its daemon running and healthy there, its IP address management (free addresses in the node's pod CIDR), and the error quoted ({})",
                describe(pod)
            ),
        ),
        DownCause::ImageNotPulled {
            pod,
            reason,
            message,
        } => (
            format!("the agent pod on {node} cannot start: its image is not pulled ({reason})"),
            format!("{ns}/{pod}: {reason}: {}", quote(message)),
            format!(
                "check the image reference in the chart's values (image.repository, image.tag), the registry's reachability from {node}, and the pull secrets ({})",
                describe(pod)
            ),
        ),
        DownCause::Unschedulable { pod, message } => (
            format!("the agent pod for {node} cannot be scheduled"),
            format!("{ns}/{pod}: Unschedulable: {}", quote(message)),
            format!(
                "the agent's requests, tolerations or node selector do not fit {node} ({})",
                describe(pod)
            ),
        ),
        DownCause::NotRunning {
            pod,
            state,
            message,
        } => (
            format!("the agent pod on {node} is not running ({state})"),
            if message.is_empty() {
                format!("{ns}/{pod}: {state}")
            } else {
                format!("{ns}/{pod}: {state}: {}", quote(message))
            },
            format!(
                "read the agent's log (kubectl -n {ns} logs {pod} --previous) and its events ({})",
                describe(pod)
            ),
        ),
        DownCause::NoPod => (
            format!("no agent pod runs on {node}"),
            format!("the API lists no agent pod on {node}"),
            format!(
                "the DaemonSet has not placed a pod on {node}: compare its desired and current counts (kubectl -n {ns} get daemonsets), its node selector and tolerations with {node}'s labels and taints"
            ),
        ),
    };
    let mut evidence = vec![silence_line(row), cause];
    evidence.extend(why.events.iter().map(|e| format!("event {}", quote(e))));
    missing(node, summary, evidence, hint)
}

fn missing(node: &str, summary: String, evidence: Vec<String>, hint: String) -> Condition {
    Condition::new(
        FindingKind::AgentMissing,
        Subject::Node(node.to_owned()),
        vec![node.to_owned()],
        summary,
        capped(evidence),
        hint,
    )
}

/// Silent with no reason from the API (or no API).
fn unexplained(view: &View, row: &MatrixRow) -> Condition {
    let node = row.node.as_str();
    let inbound: Vec<_> = view
        .cross_cells(NetworkMode::Pod)
        .filter(|(_, c)| *c.to == *node)
        .collect();
    let unreachable = Tally::of(inbound.iter().map(|(_, c)| *c)).nearly_all_broken();
    let mut evidence = vec![silence_line(row)];
    evidence.extend(broken_cells(inbound));
    let (summary, hint) = if unreachable {
        (
            format!(
                "the agent on {node} does not report, and no other node reaches the pods on {node}"
            ),
            format!(
                "{node}'s pod network is probably down, which also keeps its agent from reaching the aggregator: check the CNI on {node} (tunnel device, routes, FDB, the CNI agent's logs), then the agent pod"
            ),
        )
    } else {
        (
            format!("the agent on {node} does not report"),
            format!(
                "check the agent pod on {node} (kubectl get pods -A -l app.kubernetes.io/component=agent -o wide --field-selector spec.nodeName={node}): not scheduled, not running, crash-looping, or unable to reach the aggregator's Service"
            ),
        )
    };
    missing(node, summary, evidence, hint)
}
