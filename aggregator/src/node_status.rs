//! Findings where operators look (opt-in, `--node-conditions`): a
//! `NetmatrixPodNetwork` condition on each Node a finding names, as
//! node-problem-detector does (`True` while a finding names the node, its
//! reason the finding's kind, its message the summary and cause; `False`
//! once none does), and an Event on the Node when the problem is raised
//! and when it clears. `kubectl describe node` then shows both.
//!
//! Writes are few and bounded: a node is written only when what it should
//! show changes, at most [`MAX_WRITES_PER_ROUND`] nodes a round (a
//! cluster-wide finding on thousands of nodes is published over several
//! rounds rather than in one burst at the API server). A failed write is
//! retried the next round.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use netmatrix_api::Finding;
use serde_json::json;

/// The condition's type on the Node.
pub const CONDITION_TYPE: &str = "NetmatrixPodNetwork";
/// Event reasons at raise and clear.
pub const EVENT_PROBLEM: &str = "NetmatrixPodNetworkProblem";
pub const EVENT_RECOVERED: &str = "NetmatrixPodNetworkRecovered";
/// Nodes written per evaluation round, at most.
pub const MAX_WRITES_PER_ROUND: usize = 50;
/// Longest condition and Event message (the API server accepts more; a
/// reader of `kubectl describe` does not).
const MAX_MESSAGE: usize = 1024;

/// What one node's condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The finding's kind in CamelCase (`node-isolated`: `NodeIsolated`).
    pub reason: String,
    pub message: String,
}

/// Per node, the problem its condition should show: the first finding
/// naming it.
pub fn desired(findings: &[Finding]) -> BTreeMap<String, Problem> {
    let mut out = BTreeMap::new();
    // Information (a filtered protocol, a policy) is no problem of the Node.
    for f in findings.iter().filter(|f| !f.kind.is_information()) {
        let mut message = f.summary.clone();
        if !f.cause.is_empty() {
            message.push_str(". Cause: ");
            message.push_str(&f.cause.join("; "));
        }
        let message: String = message.chars().take(MAX_MESSAGE).collect();
        for node in &f.nodes {
            out.entry(node.clone()).or_insert_with(|| Problem {
                reason: camel_case(f.kind.as_str()),
                message: message.clone(),
            });
        }
    }
    out
}

fn camel_case(kebab: &str) -> String {
    kebab
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|first| first.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Publishes findings onto Nodes through the API.
pub struct NodeStatusWriter {
    nodes: Api<Node>,
    events: Api<Event>,
    /// What each node shows now, as far as this process wrote it.
    published: BTreeMap<String, Problem>,
}

impl NodeStatusWriter {
    /// Node Events go to the `default` namespace, as the kubelet's do.
    pub fn new(client: Client) -> Self {
        NodeStatusWriter {
            nodes: Api::all(client.clone()),
            events: Api::namespaced(client, "default"),
            published: BTreeMap::new(),
        }
    }

    /// Brings the Nodes in line with `findings`.
    pub async fn sync(&mut self, findings: &[Finding]) {
        let want = desired(findings);
        let mut changes: Vec<(String, Option<Problem>)> = want
            .iter()
            .filter(|(node, p)| self.published.get(*node) != Some(p))
            .map(|(node, p)| (node.clone(), Some(p.clone())))
            .collect();
        changes.extend(
            self.published
                .keys()
                .filter(|node| !want.contains_key(*node))
                .map(|node| (node.clone(), None)),
        );
        for (node, problem) in changes.into_iter().take(MAX_WRITES_PER_ROUND) {
            let raised = !self.published.contains_key(&node)
                || self.published.get(&node).map(|p| &p.reason)
                    != problem.as_ref().map(|p| &p.reason);
            match self.write(&node, problem.as_ref(), raised).await {
                Ok(()) => match problem {
                    Some(p) => {
                        self.published.insert(node, p);
                    }
                    None => {
                        self.published.remove(&node);
                    }
                },
                Err(error) => tracing::warn!(
                    %node,
                    %error,
                    "cannot set the NetmatrixPodNetwork condition (needs patch on nodes/status and create on events); retrying next round"
                ),
            }
        }
    }

    async fn write(
        &self,
        node: &str,
        problem: Option<&Problem>,
        announce: bool,
    ) -> Result<(), kube::Error> {
        let now = Time(Timestamp::now());
        let (status, reason, message) = match problem {
            Some(p) => ("True", p.reason.as_str(), p.message.as_str()),
            None => (
                "False",
                "PodNetworkHealthy",
                "netmatrix names no problem on this node's pod network",
            ),
        };
        // Strategic merge: `conditions` merges by `type`, the kubelet's
        // own conditions stay.
        let patch = json!({
            "status": {
                "conditions": [{
                    "type": CONDITION_TYPE,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }]
            }
        });
        self.nodes
            .patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        if announce || problem.is_none() {
            let (type_, event_reason) = match problem {
                Some(_) => ("Warning", EVENT_PROBLEM),
                None => ("Normal", EVENT_RECOVERED),
            };
            let event = Event {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{node}.netmatrix.")),
                    namespace: Some("default".to_owned()),
                    ..Default::default()
                },
                involved_object: ObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Node".to_owned()),
                    name: Some(node.to_owned()),
                    // The kubelet's node Events carry the node's name here.
                    uid: Some(node.to_owned()),
                    ..Default::default()
                },
                reason: Some(event_reason.to_owned()),
                message: Some(format!("{reason}: {message}")),
                type_: Some(type_.to_owned()),
                count: Some(1),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now),
                source: Some(EventSource {
                    component: Some("netmatrix".to_owned()),
                    host: None,
                }),
                reporting_component: Some("netmatrix".to_owned()),
                reporting_instance: Some("netmatrix-aggregator".to_owned()),
                ..Default::default()
            };
            self.events.create(&PostParams::default(), &event).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::FindingKind;
    use netmatrix_api::fixtures;

    fn finding(kind: FindingKind, nodes: &[&str], cause: &[&str]) -> Finding {
        Finding {
            summary: format!("{kind} here"),
            cause: cause.iter().map(|c| (*c).to_owned()).collect(),
            ..fixtures::finding(kind, nodes)
        }
    }

    /// Information (a filtered protocol, a policy) marks no Node.
    #[test]
    fn information_is_no_node_problem() {
        let findings = [
            finding(FindingKind::IcmpFiltered, &["n1", "n2"], &[]),
            finding(FindingKind::BlockedByPolicy, &["n3"], &[]),
        ];
        assert!(desired(&findings).is_empty());
    }

    #[test]
    fn each_node_shows_the_first_finding_naming_it() {
        let findings = [
            finding(
                FindingKind::NodeIsolated,
                &["node-2"],
                &["node-2: net.ipv4.ip_forward = 0"],
            ),
            finding(FindingKind::DnsFailure, &["node-1", "node-2"], &[]),
        ];
        let d = desired(&findings);
        assert_eq!(d["node-2"].reason, "NodeIsolated");
        assert_eq!(
            d["node-2"].message,
            "node-isolated here. Cause: node-2: net.ipv4.ip_forward = 0"
        );
        assert_eq!(d["node-1"].reason, "DnsFailure");
        assert_eq!(d.len(), 2);
    }
}
