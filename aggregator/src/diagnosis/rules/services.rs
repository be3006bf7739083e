//! `clusterip-broken` and `apiserver-unreachable`: the service path of a
//! node whose pod-to-pod traffic works.

use netmatrix_api::{CheckCell, ErrorKind, FindingKind, Status};

use super::checks::{NodeChecks, everywhere, judged};
use super::{Suppression, View, capped, describe_check};
use crate::diagnosis::{Condition, Subject};
use crate::matrix::CheckTargets;

/// Column of the API server check.
const APISERVER: &str = "apiserver";

/// Whether every known service check of the node failed while its pod
/// cells work: the service path (kube-proxy rules, route to the service
/// CIDR) is broken. DNS goes through a ClusterIP too, so this also explains
/// the node's DNS failures.
pub(super) fn service_path_broken(n: &NodeChecks) -> bool {
    n.pods_fine && !n.services.is_empty() && n.services.iter().all(|c| c.status == Status::Failed)
}

pub(super) fn diagnose(
    view: &View,
    targets: &CheckTargets,
    suppress: &Suppression,
) -> Vec<Condition> {
    let nodes = judged(view, suppress);
    let mut clusterip = Vec::new();
    let mut apiserver = Vec::new();
    for n in &nodes {
        if service_path_broken(n) {
            clusterip.push(clusterip_broken(n, targets));
            continue;
        }
        if !n.pods_fine {
            continue;
        }
        let failed: Vec<&CheckCell> = n
            .services
            .iter()
            .copied()
            .filter(|c| c.column == APISERVER && c.status == Status::Failed)
            .collect();
        let other_ok = n
            .services
            .iter()
            .any(|c| c.column != APISERVER && c.status == Status::Ok);
        if !failed.is_empty() && other_ok {
            apiserver.push(apiserver_unreachable(n, &failed, targets));
        }
    }
    let has_services = |n: &&NodeChecks| !n.services.is_empty();
    let has_apiserver = |n: &&NodeChecks| n.services.iter().any(|c| c.column == APISERVER);
    let mut out = everywhere(clusterip, nodes.iter().filter(has_services));
    out.extend(everywhere(apiserver, nodes.iter().filter(has_apiserver)));
    out
}

fn clusterip_broken(n: &NodeChecks, targets: &CheckTargets) -> Condition {
    let node = n.node;
    let mut evidence: Vec<String> = n
        .services
        .iter()
        .map(|c| describe_check(node, c, targets))
        .collect();
    let host_failed: Vec<&&CheckCell> = n
        .host_services
        .iter()
        .filter(|c| c.status == Status::Failed)
        .collect();
    let host_all_failed = !n.host_services.is_empty() && host_failed.len() == n.host_services.len();
    evidence.extend(
        host_failed
            .iter()
            .map(|c| format!("host network: {}", describe_check(node, c, targets))),
    );
    if !n.host_services.is_empty() && host_failed.is_empty() {
        evidence.push(format!(
            "host network: {node}'s ClusterIP checks from the node itself pass"
        ));
    }
    let unreachable = n
        .services
        .iter()
        .all(|c| c.last_error.as_ref().map(|e| e.kind) == Some(ErrorKind::Unreachable));
    let hint = if host_all_failed {
        format!(
            "the node itself cannot reach ClusterIPs either: check kube-proxy on {node}, its rules (iptables -t nat -S KUBE-SERVICES, or ipvsadm -Ln; cilium: cilium service list) and its logs (kubectl -n kube-system logs <kube-proxy pod on {node}>)"
        )
    } else if unreachable {
        format!(
            "{node}'s pods have no route to the service network: check the route in a pod's network namespace (ip route show 10.96.0.0/12, or the default route; nsenter -t <pod pid> -n ip route) and how the CNI sets it up on {node}"
        )
    } else {
        format!(
            "check kube-proxy on {node}: its rules (iptables -t nat -S KUBE-SERVICES, or ipvsadm -Ln; cilium: cilium service list) and its logs, and the route to the service network from {node}'s pods (ip route get <ClusterIP> in a pod's namespace)"
        )
    };
    Condition::new(
        FindingKind::ClusteripBroken,
        Subject::Node(node.to_owned()),
        vec![node.to_owned()],
        format!(
            "every ClusterIP service check from {node} fails, API server included, while its pod-to-pod traffic works"
        ),
        capped(evidence),
        hint,
    )
}

fn apiserver_unreachable(
    n: &NodeChecks,
    failed: &[&CheckCell],
    targets: &CheckTargets,
) -> Condition {
    let node = n.node;
    let mut evidence: Vec<String> = failed
        .iter()
        .map(|c| describe_check(node, c, targets))
        .collect();
    evidence.extend(
        n.services
            .iter()
            .filter(|c| c.status == Status::Ok)
            .map(|c| format!("{node} -> {}: ok", c.column)),
    );
    Condition::new(
        FindingKind::ApiserverUnreachable,
        Subject::Node(node.to_owned()),
        vec![node.to_owned()],
        format!(
            "{node} cannot reach the API server through its ClusterIP, while its other ClusterIP services and pod-to-pod traffic work"
        ),
        capped(evidence),
        "check the path to the API server's endpoints (kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes): the control-plane hosts' firewall and host network, and the API server itself".to_owned(),
    )
}
