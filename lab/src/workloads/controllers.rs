//! The workload controllers and the scheduler, reduced to what a chart's
//! DaemonSets, Deployments and bare pods need: one pod per eligible node
//! for a DaemonSet, `replicas` pods for a Deployment, a node for every
//! unscheduled pod, pods of a changed template replaced, pods whose owner is
//! gone collected, and the owners' status. Pure functions over the stored
//! objects; [`super::Workloads`] applies what they decide.
//!
//! Simplifications, said here because a user reads the stored objects:
//! - a Deployment owns its pods directly (no ReplicaSet in between), with
//!   the `pod-template-hash` label a ReplicaSet would give them;
//! - a template change replaces every old pod at once (`maxUnavailable`
//!   and `maxSurge` are not honoured);
//! - the scheduler binds pods with `nodeName` and weighs nothing but node
//!   selectors, taints and cordons (affinity is not read).

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod, PodTemplateSpec, Taint, Toleration};
use serde_json::{Value, json};

/// What the controllers want done.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create this pod (a JSON body, with `generateName`).
    Create { namespace: String, pod: Value },
    /// Delete pod `namespace/name`.
    Delete { namespace: String, name: String },
    /// Bind pod `namespace/name` to `node`.
    Bind {
        namespace: String,
        name: String,
        node: String,
    },
}

/// Label of a DaemonSet's pods carrying their template's hash.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// Label of a Deployment's pods carrying their template's hash.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// One round of every controller over the stored objects.
pub fn reconcile(
    daemonsets: &[DaemonSet],
    deployments: &[Deployment],
    pods: &[Pod],
    nodes: &[Node],
) -> Vec<Action> {
    let mut actions = Vec::new();
    let owners: Vec<&str> = daemonsets
        .iter()
        .map(|d| &d.metadata)
        .chain(deployments.iter().map(|d| &d.metadata))
        .filter_map(|meta| meta.uid.as_deref())
        .collect();
    // Garbage collection: a pod whose controller is gone goes too.
    for pod in pods {
        if let Some(owner) = controller_of(pod)
            && matches!(owner.kind.as_str(), "DaemonSet" | "Deployment")
            && !owners.contains(&owner.uid.as_str())
        {
            actions.push(delete(pod));
        }
    }
    for ds in daemonsets {
        actions.extend(daemonset(ds, pods, nodes));
    }
    for dep in deployments {
        actions.extend(deployment(dep, pods));
    }
    for pod in pods.iter().filter(|p| node_of(p).is_none()) {
        if let Some(node) = schedule(pod, nodes) {
            actions.push(Action::Bind {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                node,
            });
        }
    }
    actions
}

fn controller_of(
    pod: &Pod,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

fn owned_by<'a>(pods: &'a [Pod], uid: Option<&'a str>) -> impl Iterator<Item = &'a Pod> + 'a {
    pods.iter()
        .filter(move |p| controller_of(p).is_some_and(|o| Some(o.uid.as_str()) == uid))
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn delete(pod: &Pod) -> Action {
    Action::Delete {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
    }
}

fn label(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.labels.as_ref()?.get(key).cloned()
}

/// A short, stable hash of a pod template (FNV-1a of its JSON).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// A new pod of `template` owned by `kind/name` (`uid`), named
/// `{prefix}-xxxxx`.
fn pod_body(
    template: &PodTemplateSpec,
    namespace: &str,
    owner: (&str, &str, &str),
    prefix: &str,
    hash_label: (&str, &str),
    node: Option<&str>,
) -> Value {
    let (kind, name, uid) = owner;
    let mut metadata = serde_json::to_value(template.metadata.clone().unwrap_or_default())
        .unwrap_or_else(|_| json!({}));
    metadata["generateName"] = json!(format!("{prefix}-"));
    metadata["namespace"] = json!(namespace);
    metadata["labels"][hash_label.0] = json!(hash_label.1);
    metadata["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid,
        "controller": true, "blockOwnerDeletion": true,
    }]);
    let mut spec = serde_json::to_value(template.spec.clone().unwrap_or_default())
        .unwrap_or_else(|_| json!({}));
    if let Some(node) = node {
        spec["nodeName"] = json!(node);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

fn daemonset(ds: &DaemonSet, pods: &[Pod], nodes: &[Node]) -> Vec<Action> {
    let mut actions = Vec::new();
    let (Some(spec), Some(name)) = (ds.spec.as_ref(), ds.metadata.name.as_deref()) else {
        return actions;
    };
    let namespace = ds.metadata.namespace.as_deref().unwrap_or("default");
    let uid = ds.metadata.uid.as_deref().unwrap_or_default();
    let hash = template_hash(&spec.template);
    let tpl_spec = spec.template.spec.clone().unwrap_or_default();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for pod in owned_by(pods, Some(uid)) {
        let node = node_of(pod).unwrap_or_default().to_owned();
        let current = label(pod, REVISION_LABEL).as_deref() == Some(hash.as_str());
        // One pod per node, of the current template.
        if !current
            || seen.contains(&node)
            || !nodes
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(node.as_str()))
        {
            actions.push(delete(pod));
        } else {
            seen.insert(node);
        }
    }
    for node in nodes {
        let Some(node_name) = node.metadata.name.as_deref() else {
            continue;
        };
        if seen.contains(node_name) {
            continue;
        }
        // DaemonSets ignore cordons, as their controller does.
        if !eligible(&tpl_spec, node, false) {
            continue;
        }
        actions.push(Action::Create {
            namespace: namespace.to_owned(),
            pod: pod_body(
                &spec.template,
                namespace,
                ("DaemonSet", name, uid),
                name,
                (REVISION_LABEL, &hash),
                Some(node_name),
            ),
        });
    }
    actions
}

fn deployment(dep: &Deployment, pods: &[Pod]) -> Vec<Action> {
    let mut actions = Vec::new();
    let (Some(spec), Some(name)) = (dep.spec.as_ref(), dep.metadata.name.as_deref()) else {
        return actions;
    };
    let namespace = dep.metadata.namespace.as_deref().unwrap_or("default");
    let uid = dep.metadata.uid.as_deref().unwrap_or_default();
    let hash = template_hash(&spec.template);
    let wanted = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    let mut current = 0;
    for pod in owned_by(pods, Some(uid)) {
        // A finished pod is no replica: its ReplicaSet would replace it.
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if label(pod, TEMPLATE_HASH_LABEL).as_deref() == Some(hash.as_str())
            && current < wanted
            && !finished
        {
            current += 1;
        } else {
            actions.push(delete(pod));
        }
    }
    for _ in current..wanted {
        actions.push(Action::Create {
            namespace: namespace.to_owned(),
            pod: pod_body(
                &spec.template,
                namespace,
                ("Deployment", name, uid),
                &format!("{name}-{hash}"),
                (TEMPLATE_HASH_LABEL, &hash),
                None,
            ),
        });
    }
    actions
}

/// The node for an unscheduled pod: the first (by name) that is Ready,
/// not cordoned, matches its node selector and whose taints it tolerates.
pub fn schedule(pod: &Pod, nodes: &[Node]) -> Option<String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by_key(|n| n.metadata.name.clone());
    nodes
        .into_iter()
        .filter(|n| node_ready(n))
        .find(|n| eligible(&spec, n, true))
        .and_then(|n| n.metadata.name.clone())
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Node selector and taints (and, with `cordons`, `unschedulable`).
fn eligible(spec: &k8s_openapi::api::core::v1::PodSpec, node: &Node, cordons: bool) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let node_spec = node.spec.clone().unwrap_or_default();
    if cordons && node_spec.unschedulable == Some(true) {
        return false;
    }
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    let taints_ok = node_spec
        .taints
        .iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)));
    selector_ok && taints_ok
}

fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if tol
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    match tol.operator.as_deref() {
        Some("Exists") => tol
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            tol.key.as_deref() == Some(taint.key.as_str())
                && tol.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
    }
}

/// A DaemonSet's status from its pods.
pub fn daemonset_status(ds: &DaemonSet, pods: &[Pod], nodes: &[Node]) -> Value {
    let tpl_spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let hash = ds.spec.as_ref().map(|s| template_hash(&s.template));
    let desired = nodes
        .iter()
        .filter(|n| eligible(&tpl_spec, n, false))
        .count();
    let owned: Vec<&Pod> = owned_by(pods, ds.metadata.uid.as_deref()).collect();
    let ready = owned.iter().filter(|p| super::proxy::ready(p)).count();
    let updated = owned
        .iter()
        .filter(|p| label(p, REVISION_LABEL) == hash)
        .count();
    json!({
        "currentNumberScheduled": owned.len(),
        "desiredNumberScheduled": desired,
        "numberMisscheduled": 0,
        "numberReady": ready,
        "numberAvailable": ready,
        "numberUnavailable": desired.saturating_sub(ready),
        "updatedNumberScheduled": updated,
        "observedGeneration": ds.metadata.generation.unwrap_or(1),
    })
}

/// A Deployment's status from its pods.
pub fn deployment_status(dep: &Deployment, pods: &[Pod]) -> Value {
    let hash = dep.spec.as_ref().map(|s| template_hash(&s.template));
    let owned: Vec<&Pod> = owned_by(pods, dep.metadata.uid.as_deref()).collect();
    let ready = owned.iter().filter(|p| super::proxy::ready(p)).count();
    let updated = owned
        .iter()
        .filter(|p| label(p, TEMPLATE_HASH_LABEL) == hash)
        .count();
    let available = if ready > 0 { "True" } else { "False" };
    json!({
        "replicas": owned.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "updatedReplicas": updated,
        "unavailableReplicas": owned.len().saturating_sub(ready),
        "observedGeneration": dep.metadata.generation.unwrap_or(1),
        "conditions": [{"type": "Available", "status": available,
                        "reason": if ready > 0 { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, taint: Option<&str>) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
            "spec": {"taints": taint.map(|k| vec![json!({"key": k, "effect": "NoSchedule"})])},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    fn ds(tolerations: Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "netmatrix", "uid": "ds-1", "generation": 1},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}], "tolerations": tolerations},
            }},
        }))
        .unwrap()
    }

    fn created(actions: &[Action]) -> Vec<Value> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { pod, .. } => Some(pod.clone()),
                _ => None,
            })
            .collect()
    }

    fn as_pod(body: &Value, name: &str) -> Pod {
        let mut body = body.clone();
        body["metadata"]["name"] = json!(name);
        body["status"] = json!({"phase": "Running", "podIP": "10.244.1.20",
            "conditions": [{"type": "Ready", "status": "True"}]});
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_daemonset_covers_the_nodes_its_tolerations_allow() {
        let nodes = [
            node("node-1", Some("node-role.kubernetes.io/control-plane")),
            node("node-2", None),
        ];
        let strict = created(&reconcile(&[ds(json!([]))], &[], &[], &nodes));
        assert_eq!(strict.len(), 1);
        assert_eq!(strict[0]["spec"]["nodeName"], "node-2");
        let all = created(&reconcile(
            &[ds(json!([{"operator": "Exists"}]))],
            &[],
            &[],
            &nodes,
        ));
        assert_eq!(all.len(), 2);
        let p = &all[0];
        assert_eq!(p["metadata"]["generateName"], "agent-");
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "ds-1");
        assert_eq!(p["metadata"]["labels"]["a"], "b");

        // Running pods on both nodes: nothing to do, and the status says so.
        let set = ds(json!([{"operator": "Exists"}]));
        let pods = [
            as_pod(&all[0], "agent-aaaaa"),
            as_pod(&all[1], "agent-bbbbb"),
        ];
        assert!(reconcile(std::slice::from_ref(&set), &[], &pods, &nodes).is_empty());
        let status = daemonset_status(&set, &pods, &nodes);
        assert_eq!(status["numberReady"], 2);
        assert_eq!(status["desiredNumberScheduled"], 2);

        // A changed template replaces the pods; a deleted DaemonSet takes them.
        let mut changed = set.clone();
        changed
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("j".into());
        let actions = reconcile(&[changed], &[], &pods, &nodes);
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::Delete { .. }))
                .count(),
            2
        );
        assert_eq!(created(&actions).len(), 2);
        let gone = reconcile(&[], &[], &pods, &nodes);
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|a| matches!(a, Action::Delete { .. })));
    }

    #[test]
    fn a_deployment_keeps_its_replicas_and_its_pods_get_scheduled() {
        let dep: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "agg", "namespace": "netmatrix", "uid": "dep-1"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            }},
        }))
        .unwrap();
        let nodes = [
            node("node-1", Some("node-role.kubernetes.io/control-plane")),
            node("node-2", None),
        ];
        let new = created(&reconcile(&[], std::slice::from_ref(&dep), &[], &nodes));
        assert_eq!(new.len(), 1);
        assert!(
            new[0]["metadata"]["generateName"]
                .as_str()
                .unwrap()
                .starts_with("agg-")
        );
        assert!(new[0]["spec"]["nodeName"].is_null());
        let mut pod = as_pod(&new[0], "agg-x");
        pod.spec.as_mut().unwrap().node_name = None;
        let actions = reconcile(
            &[],
            std::slice::from_ref(&dep),
            std::slice::from_ref(&pod),
            &nodes,
        );
        // The taint keeps it off node-1.
        assert_eq!(
            actions,
            [Action::Bind {
                namespace: "netmatrix".into(),
                name: "agg-x".into(),
                node: "node-2".into()
            }]
        );
        assert_eq!(deployment_status(&dep, &[pod])["readyReplicas"], 1);
    }
}
