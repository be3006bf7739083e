//! Per-node service and DNS checks as the service and DNS rules see them,
//! and the merging of per-node conditions into one cluster-wide condition.

use std::collections::BTreeSet;

use netmatrix_api::{CheckCell, FindingKind, NetworkMode, Status};

use super::{Suppression, View, capped};
use crate::diagnosis::{Condition, Subject};

/// Per-node facts the service and DNS rules share.
pub(super) struct NodeChecks<'a> {
    pub node: &'a str,
    /// Known service checks of the pod-network agent.
    pub services: Vec<&'a CheckCell>,
    /// Known DNS checks of the pod-network agent.
    pub dns: Vec<&'a CheckCell>,
    /// Known service checks of the host-network agent (evidence only).
    pub host_services: Vec<&'a CheckCell>,
    /// The node's pod cells (row and column) are mostly reachable, or unmeasured.
    pub pods_fine: bool,
}

/// The judged nodes that no network finding concerns.
pub(super) fn judged<'a>(view: &View<'a>, suppress: &Suppression) -> Vec<NodeChecks<'a>> {
    let known = |c: &&CheckCell| c.status != Status::Unknown;
    let tallies = view.pod_tallies();
    view.judged_rows(NetworkMode::Pod)
        .filter(|row| !suppress.nodes.contains(row.node.as_str()))
        .map(|row| {
            let node = row.node.as_str();
            let pods = tallies.get(node).copied().unwrap_or_default();
            let host_services = view
                .row(NetworkMode::Host, node)
                .filter(|r| r.reporting)
                .map(|r| r.services.iter().filter(known).collect())
                .unwrap_or_default();
            NodeChecks {
                node,
                services: row.services.iter().filter(known).collect(),
                dns: row.dns.iter().filter(known).collect(),
                host_services,
                pods_fine: pods.known() == 0 || pods.mostly_reachable(),
            }
        })
        .collect()
}

/// When a per-node condition holds on every node where it could be judged
/// (and there are at least two), one cluster-wide condition replaces them.
pub(super) fn everywhere<'n>(
    per_node: Vec<Condition>,
    judged: impl Iterator<Item = &'n NodeChecks<'n>>,
) -> Vec<Condition> {
    let judged: BTreeSet<&str> = judged.map(|n| n.node).collect();
    let holding: BTreeSet<&str> = per_node
        .iter()
        .filter_map(|c| match &c.subject {
            Subject::Node(node) => Some(node.as_str()),
            _ => None,
        })
        .collect();
    let Some(first) = per_node.first() else {
        return per_node;
    };
    if holding.len() < 2 || holding != judged {
        return per_node;
    }
    let kind = first.kind;
    let (summary, hint) = match kind {
        FindingKind::ClusteripBroken => (
            "every ClusterIP service check fails on every node, while pod-to-pod traffic works".to_owned(),
            "the service path is broken cluster-wide: check kube-proxy (its DaemonSet, logs and rules: iptables -t nat -S KUBE-SERVICES, or ipvsadm -Ln; cilium: cilium service list) and the service CIDR routing of the CNI".to_owned(),
        ),
        FindingKind::ApiserverUnreachable => (
            "no node reaches the API server through its ClusterIP, while other ClusterIP services work".to_owned(),
            "check the API server itself and its endpoints (kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes), and the control-plane hosts' firewall".to_owned(),
        ),
        FindingKind::DnsFailure => (
            "DNS lookups fail on every node".to_owned(),
            first.hint.clone(),
        ),
        FindingKind::DnsStale => (
            "DNS answers disagree with the Kubernetes API on every node, for longer than the negative-cache TTL".to_owned(),
            first.hint.clone(),
        ),
        _ => (format!("{kind} on every node"), first.hint.clone()),
    };
    let nodes = holding.iter().map(|n| (*n).to_owned()).collect();
    // Per-node conditions may share a line (a note on the whole cluster).
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let evidence: Vec<String> = per_node
        .into_iter()
        .flat_map(|c| c.evidence)
        .filter(|line| seen.insert(line.clone()))
        .collect();
    vec![Condition::new(
        kind,
        Subject::Cluster,
        nodes,
        summary,
        capped(evidence),
        hint,
    )]
}
