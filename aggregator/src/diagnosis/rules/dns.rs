//! `dns-failure` (lookups fail with an error, its kind kept) and
//! `dns-stale` (answers disagree with the API beyond the negative-cache TTL).

use std::collections::BTreeSet;

use netmatrix_api::{CheckCell, ErrorKind, FindingKind, Status};

use super::checks::{NodeChecks, everywhere, judged};
use super::services::service_path_broken;
use super::{Suppression, View, capped, describe_check};
use crate::diagnosis::CheckTargets;
use crate::diagnosis::{Condition, Subject};

const DNS_HINT: &str = "check CoreDNS: its pods and logs (kubectl -n kube-system logs -l k8s-app=kube-dns), the kube-dns Service and its endpoints (kubectl -n kube-system get endpointslices -l kubernetes.io/service-name=kube-dns); timeout points at the path to CoreDNS, servfail at CoreDNS or its upstream, nxdomain at a missing Service or negative caching";

const STALE_HINT: &str = "DNS serves an outdated view: check CoreDNS's logs and its connection to the API server (kubernetes plugin errors), its cache settings (the Corefile's cache TTL), and the Service's endpoints (kubectl get endpointslices -n <namespace> -l kubernetes.io/service-name=<service>)";

pub(super) fn diagnose(
    view: &View,
    targets: &CheckTargets,
    suppress: &Suppression,
) -> Vec<Condition> {
    let nodes = judged(view, suppress);
    let mut failures = Vec::new();
    let mut stale = Vec::new();
    let mut kinds: BTreeSet<&'static str> = BTreeSet::new();
    // Nodes whose DNS can be judged: not explained by a broken service path,
    // and not only timeouts on a node whose packets are being lost.
    let mut judged_failure: Vec<&NodeChecks> = Vec::new();
    for n in nodes.iter().filter(|n| !service_path_broken(n)) {
        let failing: Vec<&CheckCell> = n
            .dns
            .iter()
            .copied()
            .filter(|c| c.status == Status::Failed)
            .filter(|c| kind_of(c) != Some(ErrorKind::WrongAnswer))
            .collect();
        let only_timeouts = !failing.is_empty()
            && failing.iter().all(|c| {
                matches!(
                    kind_of(c),
                    Some(ErrorKind::Timeout | ErrorKind::Unreachable)
                )
            });
        let timeouts_suspect = suppress.dns_timeouts_everywhere || suppress.lossy.contains(n.node);
        if only_timeouts && timeouts_suspect {
            continue;
        }
        if !n.dns.is_empty() {
            judged_failure.push(n);
        }
        if !failing.is_empty() {
            kinds.extend(
                failing
                    .iter()
                    .map(|c| kind_of(c).map_or("failed", ErrorKind::as_str)),
            );
            let mut failure = dns_failure(n.node, &failing, targets);
            if only_timeouts && !suppress.cut_off.is_empty() {
                failure.evidence.push(cut_off_note(&suppress.cut_off));
            }
            failures.push(failure);
        }
        let wrong: Vec<&CheckCell> = n
            .dns
            .iter()
            .copied()
            .filter(|c| c.status == Status::Failed && kind_of(c) == Some(ErrorKind::WrongAnswer))
            .collect();
        if !wrong.is_empty() {
            stale.push(dns_stale(n.node, &wrong, targets));
        }
    }
    let mut out = everywhere(failures, judged_failure.iter().copied());
    for c in out.iter_mut().filter(|c| c.subject == Subject::Cluster) {
        let kinds: Vec<&str> = kinds.iter().copied().collect();
        c.summary = format!("DNS lookups fail on every node ({})", kinds.join(", "));
    }
    let has_dns = |n: &&NodeChecks| !n.dns.is_empty() && !service_path_broken(n);
    out.extend(everywhere(stale, nodes.iter().filter(has_dns)));
    out
}

/// Timeouts while nodes are cut off: said, not hidden. Where CoreDNS runs
/// is not known here; the operator can look.
fn cut_off_note(cut: &[&str]) -> String {
    format!(
        "{} cut off from the other nodes: if every CoreDNS pod runs there, that alone explains these timeouts (kubectl -n kube-system get pods -l k8s-app=kube-dns -o wide)",
        cut.join(", ")
    )
}

fn kind_of(check: &CheckCell) -> Option<ErrorKind> {
    check.last_error.as_ref().map(|e| e.kind)
}

fn dns_failure(node: &str, failing: &[&CheckCell], targets: &CheckTargets) -> Condition {
    let kinds: BTreeSet<&str> = failing
        .iter()
        .map(|c| kind_of(c).map_or("failed", ErrorKind::as_str))
        .collect();
    let kinds: Vec<&str> = kinds.into_iter().collect();
    Condition::new(
        FindingKind::DnsFailure,
        Subject::Node(node.to_owned()),
        vec![node.to_owned()],
        format!("DNS lookups from {node} fail ({})", kinds.join(", ")),
        capped(
            failing
                .iter()
                .map(|c| describe_check(node, c, targets))
                .collect(),
        ),
        DNS_HINT.to_owned(),
    )
}

fn dns_stale(node: &str, wrong: &[&CheckCell], targets: &CheckTargets) -> Condition {
    Condition::new(
        FindingKind::DnsStale,
        Subject::Node(node.to_owned()),
        vec![node.to_owned()],
        format!(
            "DNS answers on {node} disagree with the Kubernetes API for longer than the negative-cache TTL"
        ),
        capped(
            wrong
                .iter()
                .map(|c| describe_check(node, c, targets))
                .collect(),
        ),
        STALE_HINT.to_owned(),
    )
}
