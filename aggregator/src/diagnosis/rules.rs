//! The rules: which matrix signatures name which failure.
//!
//! Only cells with a known status count, and only rows of reporting nodes
//! have known cells. Thresholds are deliberately coarse: a cell is already a
//! judgement over several echoes and pods (see `matrix`), and hysteresis
//! filters the rest.
//!
//! Root cause only: when the overlay is broken (cluster-wide, or on one
//! node) the service and DNS checks of the nodes concerned fail as a
//! consequence, since ClusterIP backends and CoreDNS sit behind it, so those
//! nodes get no separate service or DNS findings.

use std::collections::BTreeSet;
use std::time::Duration;

use netmatrix_api::{Cell, CheckCell, ErrorKind, FindingKind, Matrix, MatrixRow, Status};

use super::{Condition, Context, Subject};
use crate::matrix::CheckTargets;

/// "(Nearly) all failed": at least this share of the known cells.
const NEARLY_ALL: f64 = 0.9;
/// "Mostly fine": at least this share of the known cells reachable (ok or degraded).
const MOSTLY: f64 = 0.5;
/// Evidence lines per finding; the rest is summarised in one line.
const MAX_EVIDENCE: usize = 20;
/// node-isolated needs this many reporting nodes: with two, either side
/// could be the broken one.
const MIN_NODES_FOR_ISOLATION: usize = 3;

/// Evaluates every rule on one matrix (pod-network rows).
pub fn evaluate(matrix: &Matrix, context: &Context) -> Vec<Condition> {
    let view = View { matrix };
    let targets = context.check_targets;
    let mut conditions = agent_missing(&view, context.expected);

    let broken_overlay = cross_node_broken(&view);
    let isolated = match broken_overlay {
        Some(_) => Vec::new(),
        None => node_isolated(&view),
    };
    let behind_broken_overlay: BTreeSet<&str> = match broken_overlay {
        Some(_) => view.matrix.nodes.iter().map(String::as_str).collect(),
        None => isolated
            .iter()
            .flat_map(|c| c.nodes.iter().map(String::as_str))
            .collect(),
    };
    let services_and_dns = service_and_dns(&view, targets, &behind_broken_overlay);

    conditions.extend(broken_overlay);
    conditions.extend(isolated);
    conditions.extend(services_and_dns);
    conditions
}

struct View<'a> {
    matrix: &'a Matrix,
}

impl<'a> View<'a> {
    fn reporting(&self) -> impl Iterator<Item = &'a MatrixRow> + use<'a> {
        self.matrix.rows.iter().filter(|r| r.reporting)
    }

    /// Known pod-network cells as `(from, cell)`.
    fn known_cells(&self) -> impl Iterator<Item = (&'a str, &'a Cell)> + use<'a> {
        self.reporting().flat_map(|row| {
            row.cells
                .iter()
                .filter(|c| c.status != Status::Unknown)
                .map(move |c| (row.node.as_str(), c))
        })
    }

    fn cross_node_cells(&self) -> impl Iterator<Item = (&'a str, &'a Cell)> + use<'a> {
        self.known_cells().filter(|(from, c)| *from != c.to)
    }
}

/// Counts of known cells by status.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    reachable: usize,
    failed: usize,
}

impl Tally {
    fn of<'c>(cells: impl IntoIterator<Item = &'c Cell>) -> Tally {
        let mut t = Tally::default();
        for cell in cells {
            match cell.status {
                Status::Ok | Status::Degraded => t.reachable += 1,
                Status::Failed => t.failed += 1,
                Status::Unknown => {}
            }
        }
        t
    }

    fn known(self) -> usize {
        self.reachable + self.failed
    }

    fn nearly_all_failed(self) -> bool {
        self.known() > 0 && self.failed as f64 >= NEARLY_ALL * self.known() as f64
    }

    fn mostly_reachable(self) -> bool {
        self.known() > 0 && self.reachable as f64 >= MOSTLY * self.known() as f64
    }
}

fn describe_cell(from: &str, cell: &Cell) -> String {
    let mut s = format!("{from} -> {}: {}", cell.to, cell.status);
    if let Some(loss) = cell.loss {
        s += &format!(", {:.0}% loss over {} pod(s)", loss * 100.0, cell.pods);
    }
    if let Some(error) = &cell.last_error {
        s += &format!(": {error}");
    }
    s
}

fn describe_check(node: &str, check: &CheckCell, targets: &CheckTargets) -> String {
    let mut s = format!("{node} -> {}", check.column);
    if let Some(target) = targets.get(&(node.to_owned(), check.column.clone())) {
        s += &format!(" {target}");
    }
    match &check.last_error {
        Some(error) => s + &format!(": {error}"),
        None => s + &format!(": {} (no error reported)", check.status),
    }
}

/// Caps evidence so a 500-node cluster does not produce a 250 000-line finding.
fn capped(mut lines: Vec<String>) -> Vec<String> {
    if lines.len() > MAX_EVIDENCE {
        let more = lines.len() - MAX_EVIDENCE;
        lines.truncate(MAX_EVIDENCE);
        lines.push(format!("... and {more} more"));
    }
    lines
}

fn failed_cells<'c>(cells: impl IntoIterator<Item = (&'c str, &'c Cell)>) -> Vec<String> {
    cells
        .into_iter()
        .filter(|(_, c)| c.status == Status::Failed)
        .map(|(from, c)| describe_cell(from, c))
        .collect()
}

/// `agent-missing`: an expected node (Ready in the inventory for a grace
/// period, or seen before under `--no-kubernetes`) without a fresh report.
fn agent_missing(view: &View, expected: &BTreeSet<String>) -> Vec<Condition> {
    view.matrix
        .rows
        .iter()
        .filter(|row| !row.reporting && expected.contains(&row.node))
        .map(|row| {
            let node = row.node.as_str();
            let inbound: Vec<_> = view
                .cross_node_cells()
                .filter(|(_, c)| c.to == node)
                .collect();
            let unreachable = Tally::of(inbound.iter().map(|(_, c)| *c)).nearly_all_failed();
            let silence = match row.report_age_ms {
                Some(ms) => format!(
                    "last report {} ago",
                    humantime::format_duration(Duration::from_secs((ms / 1000.0) as u64))
                ),
                None => "no report received since the aggregator started".to_owned(),
            };
            let mut evidence = vec![format!("{node}: {silence}")];
            evidence.extend(failed_cells(inbound));
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
            Condition {
                kind: FindingKind::AgentMissing,
                subject: Subject::Node(node.to_owned()),
                nodes: vec![node.to_owned()],
                summary,
                evidence: capped(evidence),
                hint,
            }
        })
        .collect()
}

/// `cross-node-broken`: (nearly) all known cross-node cells failed, seen from
/// at least two reporting nodes, while same-node cells are mostly fine (or
/// unmeasured: without companion pods there are none).
fn cross_node_broken(view: &View) -> Option<Condition> {
    let cross: Vec<_> = view.cross_node_cells().collect();
    let sources: BTreeSet<&str> = cross.iter().map(|(from, _)| *from).collect();
    let tally = Tally::of(cross.iter().map(|(_, c)| *c));
    let same = Tally::of(
        view.known_cells()
            .filter(|(from, c)| *from == c.to)
            .map(|(_, c)| c),
    );
    if sources.len() < 2 || !tally.nearly_all_failed() {
        return None;
    }
    if same.known() > 0 && !same.mostly_reachable() {
        return None;
    }
    let mut evidence = failed_cells(cross);
    evidence.push(if same.known() > 0 {
        format!(
            "same-node cells: {} of {} reachable",
            same.reachable,
            same.known()
        )
    } else {
        "no same-node data (no companion pods probed)".to_owned()
    });
    Some(Condition {
        kind: FindingKind::CrossNodeBroken,
        subject: Subject::Cluster,
        nodes: view.matrix.nodes.clone(),
        summary: format!(
            "pod traffic between nodes fails everywhere ({} of {} cross-node cells failed) while pods on the same node reach each other",
            tally.failed,
            tally.known()
        ),
        evidence: capped(evidence),
        hint: "the overlay transport between nodes is blocked or misconfigured: check that VXLAN (UDP 8472 for flannel, 4789 for calico and cilium) or IP-in-IP (IP protocol 4) passes between the nodes' addresses (host firewalls, security groups), and that the CNI uses the right interface (flannel --iface, calico IP_AUTODETECTION_METHOD)".to_owned(),
    })
}

/// `node-isolated`: with at least three reporting nodes, a node X whose known
/// cross-node cells are (nearly) all failed both in its row (from X) and in
/// its column (to X), while the cross-node cells not touching X are mostly
/// fine. A silent X is left to `agent-missing`.
fn node_isolated(view: &View) -> Vec<Condition> {
    let reporting: Vec<&str> = view.reporting().map(|r| r.node.as_str()).collect();
    if reporting.len() < MIN_NODES_FOR_ISOLATION {
        return Vec::new();
    }
    let cross: Vec<_> = view.cross_node_cells().collect();
    reporting
        .iter()
        .filter_map(|&x| {
            let outbound: Vec<_> = cross.iter().filter(|(from, _)| *from == x).collect();
            let inbound: Vec<_> = cross.iter().filter(|(_, c)| c.to == x).collect();
            let others = Tally::of(
                cross
                    .iter()
                    .filter(|(from, c)| *from != x && c.to != x)
                    .map(|(_, c)| *c),
            );
            let out = Tally::of(outbound.iter().map(|(_, c)| *c));
            let inn = Tally::of(inbound.iter().map(|(_, c)| *c));
            if !(out.nearly_all_failed() && inn.nearly_all_failed() && others.mostly_reachable())
            {
                return None;
            }
            let evidence =
                failed_cells(outbound.iter().chain(&inbound).map(|(from, c)| (*from, *c)));
            Some(Condition {
                kind: FindingKind::NodeIsolated,
                subject: Subject::Node(x.to_owned()),
                nodes: vec![x.to_owned()],
                summary: format!(
                    "{x} is cut off from the other nodes' pods: {} of {} probes from {x} and {} of {} probes to {x} failed, while the other nodes reach each other",
                    out.failed,
                    out.known(),
                    inn.failed,
                    inn.known()
                ),
                evidence: capped(evidence),
                hint: format!(
                    "check the CNI on {x}: tunnel device (ip -d link show flannel.1), routes (ip route), FDB (bridge fdb show dev flannel.1), the CNI agent's logs (flanneld, calico-node, cilium-agent)"
                ),
            })
        })
        .collect()
}

/// Per-node facts the service and DNS rules share.
struct NodeChecks<'a> {
    node: &'a str,
    /// Known service checks.
    services: Vec<&'a CheckCell>,
    /// Known DNS checks.
    dns: Vec<&'a CheckCell>,
    /// The node's pod cells (row and column) are mostly reachable, or unmeasured.
    pods_fine: bool,
}

fn service_and_dns(
    view: &View,
    targets: &CheckTargets,
    behind_broken_overlay: &BTreeSet<&str>,
) -> Vec<Condition> {
    let nodes: Vec<NodeChecks> = view
        .reporting()
        .filter(|row| !behind_broken_overlay.contains(row.node.as_str()))
        .map(|row| {
            let node = row.node.as_str();
            let pods = Tally::of(
                view.known_cells()
                    .filter(|(from, c)| *from == node || c.to == node)
                    .map(|(_, c)| c),
            );
            let known = |c: &&CheckCell| c.status != Status::Unknown;
            NodeChecks {
                node,
                services: row.services.iter().filter(known).collect(),
                dns: row.dns.iter().filter(known).collect(),
                pods_fine: pods.known() == 0 || pods.mostly_reachable(),
            }
        })
        .collect();

    let mut clusterip = Vec::new();
    let mut apiserver = Vec::new();
    let mut dns = Vec::new();
    for n in &nodes {
        let failed: Vec<&CheckCell> = n
            .services
            .iter()
            .copied()
            .filter(|c| c.status == Status::Failed)
            .collect();
        let all_services_failed = !n.services.is_empty() && failed.len() == n.services.len();
        let service_path_broken = all_services_failed && n.pods_fine;
        if service_path_broken {
            clusterip.push(clusterip_broken(n, &failed, targets));
        } else if n.pods_fine {
            let apiserver_failed: Vec<&CheckCell> = failed
                .iter()
                .copied()
                .filter(|c| c.column == "apiserver")
                .collect();
            let other_ok = n
                .services
                .iter()
                .any(|c| c.column != "apiserver" && c.status == Status::Ok);
            if !apiserver_failed.is_empty() && other_ok {
                apiserver.push(apiserver_unreachable(n, &apiserver_failed, targets));
            }
        }
        // DNS goes through a ClusterIP: a broken service path explains it.
        if !service_path_broken && let Some(c) = dns_failure(n) {
            dns.push(c);
        }
    }

    let has_services = |n: &&NodeChecks| !n.services.is_empty();
    let has_apiserver = |n: &&NodeChecks| n.services.iter().any(|c| c.column == "apiserver");
    let has_dns = |n: &&NodeChecks| !n.dns.is_empty();
    let mut out = everywhere(clusterip, nodes.iter().filter(has_services));
    out.extend(everywhere(apiserver, nodes.iter().filter(has_apiserver)));
    out.extend(everywhere(dns, nodes.iter().filter(has_dns)));
    out
}

fn clusterip_broken(n: &NodeChecks, failed: &[&CheckCell], targets: &CheckTargets) -> Condition {
    let node = n.node;
    Condition {
        kind: FindingKind::ClusteripBroken,
        subject: Subject::Node(node.to_owned()),
        nodes: vec![node.to_owned()],
        summary: format!(
            "every ClusterIP service check from {node} fails, API server included, while its pod-to-pod traffic works"
        ),
        evidence: capped(
            failed
                .iter()
                .map(|c| describe_check(node, c, targets))
                .collect(),
        ),
        hint: format!(
            "check kube-proxy on {node}: its rules (iptables-save -t nat | grep KUBE-SERVICES, or ipvsadm -Ln) and its logs, and the route to the service network from {node}'s pods (ip route get <ClusterIP>)"
        ),
    }
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
    Condition {
        kind: FindingKind::ApiserverUnreachable,
        subject: Subject::Node(node.to_owned()),
        nodes: vec![node.to_owned()],
        summary: format!(
            "{node} cannot reach the API server through its ClusterIP, while its other ClusterIP services and pod-to-pod traffic work"
        ),
        evidence: capped(evidence),
        hint: "check the path to the API server's endpoints (kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes): the control-plane hosts' firewall and host network, and the API server itself".to_owned(),
    }
}

/// `dns-failure`: a lookup failed with an error. A wrong answer is staleness,
/// not failure, and is left to a future `dns-stale` rule.
fn dns_failure(n: &NodeChecks) -> Option<Condition> {
    let failing: Vec<&CheckCell> = n
        .dns
        .iter()
        .copied()
        .filter(|c| c.status == Status::Failed)
        .filter(|c| c.last_error.as_ref().map(|e| e.kind) != Some(ErrorKind::WrongAnswer))
        .collect();
    if failing.is_empty() {
        return None;
    }
    let node = n.node;
    let kinds: BTreeSet<&str> = failing
        .iter()
        .map(|c| c.last_error.as_ref().map_or("failed", |e| e.kind.as_str()))
        .collect();
    let kinds: Vec<&str> = kinds.into_iter().collect();
    Some(Condition {
        kind: FindingKind::DnsFailure,
        subject: Subject::Node(node.to_owned()),
        nodes: vec![node.to_owned()],
        summary: format!("DNS lookups from {node} fail ({})", kinds.join(", ")),
        evidence: capped(
            failing
                .iter()
                .map(|c| describe_check(node, c, &CheckTargets::new()))
                .collect(),
        ),
        hint: "check CoreDNS: its pods and logs (kubectl -n kube-system logs -l k8s-app=kube-dns), the kube-dns Service and its endpoints; timeout points at the path to CoreDNS, servfail at CoreDNS or its upstream, nxdomain at a missing Service or negative caching".to_owned(),
    })
}

/// When a per-node condition holds on every node where it could be judged
/// (and there are at least two), one cluster-wide condition replaces them.
fn everywhere<'n>(
    per_node: Vec<Condition>,
    judged: impl Iterator<Item = &'n NodeChecks<'n>>,
) -> Vec<Condition> {
    let judged: BTreeSet<&str> = judged.map(|n| n.node).collect();
    let holding: BTreeSet<&str> = per_node
        .iter()
        .filter_map(|c| match &c.subject {
            Subject::Node(node) => Some(node.as_str()),
            Subject::Cluster => None,
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
            "the service path is broken cluster-wide: check kube-proxy (its DaemonSet, logs and rules: iptables-save -t nat | grep KUBE-SERVICES) and the service CIDR routing of the CNI".to_owned(),
        ),
        FindingKind::ApiserverUnreachable => (
            "no node reaches the API server through its ClusterIP, while other ClusterIP services work".to_owned(),
            "check the API server itself and its endpoints (kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes), and the control-plane hosts' firewall".to_owned(),
        ),
        FindingKind::DnsFailure => ("DNS lookups fail on every node".to_owned(), first.hint.clone()),
        _ => (format!("{kind} on every node"), first.hint.clone()),
    };
    let nodes = holding.iter().map(|n| (*n).to_owned()).collect();
    let evidence = per_node.into_iter().flat_map(|c| c.evidence).collect();
    vec![Condition {
        kind,
        subject: Subject::Cluster,
        nodes,
        summary,
        evidence: capped(evidence),
        hint,
    }]
}
