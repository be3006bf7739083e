//! `clusterip-broken`, `apiserver-unreachable` and `service-unreachable`:
//! the service path of a node whose pod-to-pod traffic works.
//!
//! Every Service is judged on its own: one failing where the node's other
//! Services pass is `service-unreachable` for that Service on that node (a
//! stale kube-proxy rule, the commonest kube-proxy fault), or for that
//! Service on every node (its endpoints: no ready backend, a wrong
//! targetPort). All of a node's Services failing stays one
//! `clusterip-broken`: the node's service path, not each Service.

use std::collections::{BTreeMap, BTreeSet};

use netmatrix_api::{CheckCell, CheckColumn, ColumnKind, ErrorKind, FindingKind, Status};

use super::checks::{NodeChecks, everywhere, judged};
use super::{Suppression, View, capped, describe_check};
use crate::diagnosis::CheckTargets;
use crate::diagnosis::{Condition, Subject};

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
    // Per Service column: the nodes where it alone fails.
    let mut single: BTreeMap<&CheckColumn, Vec<(&NodeChecks, &CheckCell)>> = BTreeMap::new();
    for n in &nodes {
        if service_path_broken(n) {
            clusterip.push(clusterip_broken(n, targets));
            continue;
        }
        if !n.pods_fine {
            continue;
        }
        // The DNS Service failing with the node's lookups is the DNS
        // rule's to name (CoreDNS down, or its rule stale): one finding.
        let failing_dns: BTreeSet<&str> = n
            .dns
            .iter()
            .filter(|c| c.status == Status::Failed)
            .filter_map(|c| target_ip(targets, n.node, &c.column))
            .collect();
        for c in n
            .services
            .iter()
            .copied()
            .filter(|c| c.column != ColumnKind::Apiserver && c.status == Status::Failed)
            .filter(|c| {
                target_ip(targets, n.node, &c.column).is_none_or(|ip| !failing_dns.contains(ip))
            })
            .filter(|c| !backend_maybe_cut_off(c, suppress))
            .filter(|c| !(suppress.pods_out_of_reach.contains(n.node) && timed_out(c)))
        {
            single.entry(&c.column).or_default().push((n, c));
        }
        let failed: Vec<&CheckCell> = n
            .services
            .iter()
            .copied()
            .filter(|c| c.column == ColumnKind::Apiserver && c.status == Status::Failed)
            .collect();
        let other_ok = n
            .services
            .iter()
            .any(|c| c.column != ColumnKind::Apiserver && c.status == Status::Ok);
        if !failed.is_empty() && other_ok {
            apiserver.push(apiserver_unreachable(n, &failed, targets));
        }
    }
    let has_services = |n: &&NodeChecks| !n.services.is_empty();
    let has_apiserver =
        |n: &&NodeChecks| n.services.iter().any(|c| c.column == ColumnKind::Apiserver);
    let mut out = everywhere(clusterip, nodes.iter().filter(has_services));
    out.extend(everywhere(apiserver, nodes.iter().filter(has_apiserver)));
    for (column, failing) in single {
        // Judged for this Service: the nodes whose service path works and
        // that check it.
        let checking: BTreeSet<&str> = nodes
            .iter()
            .filter(|n| n.pods_fine && !service_path_broken(n))
            .filter(|n| n.services.iter().any(|c| &c.column == column))
            .map(|n| n.node)
            .collect();
        let failing_nodes: BTreeSet<&str> = failing.iter().map(|(n, _)| n.node).collect();
        if failing_nodes.len() >= 2 && failing_nodes == checking {
            out.push(service_unreachable_everywhere(column, &failing, targets));
        } else {
            out.extend(
                failing
                    .iter()
                    .filter(|(_, c)| !maybe_lost_to_a_lossy_backend(c, suppress))
                    .map(|(n, c)| service_unreachable(n, c, targets)),
            );
        }
    }
    out
}

/// A Service's backends may run on any node: while some node is cut off
/// (or the pod network split), a Service timing out or unreachable from
/// elsewhere may just be picking a backend there, which the network
/// finding already names. A refusal comes from a live host: still judged.
fn backend_maybe_cut_off(c: &CheckCell, suppress: &Suppression) -> bool {
    let cut = !suppress.cut_off.is_empty() || suppress.dns_timeouts_everywhere;
    cut && timed_out(c)
}

/// While some node loses packets (`packet-loss`), a Service timing out
/// from some nodes only may be picking a backend there: a lost SYN or
/// SYN-ACK fails a check whose timeout is shorter than the kernel's 1 s
/// retransmission, and with a few backends that happens on some node three
/// rounds in a row within the hour at 30 % loss. A stale rule outlives the
/// loss and is named once it clears. Not for a Service failing from every
/// node (its endpoints: loss on one node does not fail every check every
/// round), nor for a refusal, which comes from a live host.
fn maybe_lost_to_a_lossy_backend(c: &CheckCell, suppress: &Suppression) -> bool {
    suppress.loss_somewhere && timed_out(c)
}

/// Timed out or unreachable (or no error said): what a backend the node
/// cannot reach gives.
fn timed_out(c: &CheckCell) -> bool {
    c.last_error
        .as_ref()
        .is_none_or(|e| matches!(e.kind, ErrorKind::Timeout | ErrorKind::Unreachable))
}

/// The address (without port) a check of `node` dialled.
fn target_ip<'t>(targets: &'t CheckTargets, node: &str, column: &CheckColumn) -> Option<&'t str> {
    let target = targets.get(&(node.to_owned(), column.clone()))?;
    let (ip, _port) = target.rsplit_once(':')?;
    Some(ip.trim_start_matches('[').trim_end_matches(']'))
}

/// The Service's name in its column (`clusterip/NAME`).
fn service_name(column: &CheckColumn) -> &str {
    match column.kind() {
        ColumnKind::Clusterip(name) => name,
        _ => column,
    }
}

fn service_unreachable(n: &NodeChecks, failed: &CheckCell, targets: &CheckTargets) -> Condition {
    let node = n.node;
    let service = service_name(&failed.column);
    let mut evidence = vec![describe_check(node, failed, targets)];
    evidence.extend(
        n.services
            .iter()
            .filter(|c| c.status == Status::Ok)
            .map(|c| format!("{node} -> {}: ok", c.column)),
    );
    if let Some(host) = n.host_services.iter().find(|c| c.column == failed.column) {
        evidence.push(format!(
            "host network: {}",
            describe_check(node, host, targets)
        ));
    }
    let target = targets
        .get(&(node.to_owned(), failed.column.clone()))
        .map_or_else(|| service.to_owned(), String::clone);
    Condition::new(
        FindingKind::ServiceUnreachable,
        Subject::Service(Some(node.to_owned()), failed.column.clone()),
        vec![node.to_owned()],
        format!(
            "the {service} Service ({target}) is unreachable from {node}, while {node}'s other Services and pod-to-pod traffic work"
        ),
        capped(evidence),
        format!(
            "only {node} fails on this Service: kube-proxy on {node} may hold a stale rule for it (iptables -t nat -S | grep <ClusterIP>, or ipvsadm -Ln -t <ClusterIP:port>; compare with kubectl get endpointslices -l kubernetes.io/service-name={service}), e.g. after missing an update; restarting kube-proxy on {node} resyncs its rules"
        ),
    )
}

fn service_unreachable_everywhere(
    column: &CheckColumn,
    failing: &[(&NodeChecks, &CheckCell)],
    targets: &CheckTargets,
) -> Condition {
    let service = service_name(column);
    let nodes: Vec<String> = failing.iter().map(|(n, _)| n.node.to_owned()).collect();
    let evidence = failing
        .iter()
        .map(|(n, c)| describe_check(n.node, c, targets))
        .collect();
    Condition::new(
        FindingKind::ServiceUnreachable,
        Subject::Service(None, column.clone()),
        nodes,
        format!(
            "the {service} Service is unreachable from every node, while the other Services work"
        ),
        capped(evidence),
        format!(
            "the Service itself: check that it has ready endpoints on the right port (kubectl get endpointslices -l kubernetes.io/service-name={service} -o wide; its targetPort against the pods' containerPort), and that its backend pods answer"
        ),
    )
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
