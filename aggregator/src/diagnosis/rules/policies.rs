//! `blocked-by-policy`: probes that failed and that a NetworkPolicy denies.
//!
//! The matrix leaves such probes out of the cells' statuses (a path is not
//! judged by what a policy keeps out, see [`crate::policy`]), so no network
//! finding names them; this rule says which policy keeps which probes out,
//! as information. A probe that a policy allows and that fails is judged
//! as before: a real failure. A policy the CNI does not enforce (flannel
//! alone enforces none) denies nothing that fails, and is never named.

use std::collections::{BTreeMap, BTreeSet};

use netmatrix_api::{FindingKind, NetworkMode, Path};

use super::{View, capped};
use crate::diagnosis::{Condition, Subject};

/// A path some probes are kept off: from, to, the protocols.
type BlockedPath<'a> = (&'a str, &'a str, &'a [String]);

pub(super) fn diagnose(view: &View) -> Vec<Condition> {
    // Per policy: the paths it keeps probes off, with the protocols.
    let mut by_policy: BTreeMap<&str, Vec<BlockedPath>> = BTreeMap::new();
    // And the checks of netmatrix's own Service it keeps out (node, column).
    let mut checks: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for row in view.judged_rows(NetworkMode::Pod) {
        for check in &row.services {
            for policy in check.blocked.iter().flat_map(|b| &b.policies) {
                checks
                    .entry(policy.as_str())
                    .or_default()
                    .push((row.node.as_str(), check.column.as_str()));
            }
        }
        for cell in &row.cells {
            let Some(blocked) = &cell.blocked else {
                continue;
            };
            for policy in &blocked.policies {
                by_policy.entry(policy.as_str()).or_default().push((
                    row.node.as_str(),
                    &*cell.to,
                    &blocked.protocols,
                ));
            }
        }
    }
    for policy in checks.keys() {
        by_policy.entry(policy).or_default();
    }
    by_policy
        .into_iter()
        .map(|(policy, paths)| {
            let checks = checks.get(policy).map(Vec::as_slice).unwrap_or_default();
            condition(policy, &paths, checks)
        })
        .collect()
}

fn condition(policy: &str, paths: &[BlockedPath], checks: &[(&str, &str)]) -> Condition {
    let nodes: BTreeSet<&str> = paths
        .iter()
        .flat_map(|(f, t, _)| [*f, *t])
        .chain(checks.iter().map(|(n, _)| *n))
        .collect();
    let protocols: BTreeSet<&str> = paths
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(String::as_str))
        .chain(checks.iter().map(|_| "TCP"))
        .collect();
    let protocols: Vec<&str> = protocols.into_iter().collect();
    let evidence = paths
        .iter()
        .map(|(from, to, p)| format!("{from} -> {to}: {} denied by {policy}", p.join(", ")))
        .chain(
            checks
                .iter()
                .map(|(node, column)| format!("{node} -> {column}: TCP denied by {policy}")),
        )
        .collect();
    Condition::new(
        FindingKind::BlockedByPolicy,
        Subject::Policy(policy.to_owned()),
        nodes.iter().map(|n| (*n).to_owned()).collect(),
        format!(
            "NetworkPolicy {policy} keeps netmatrix's probes ({}) off {} path(s) and {} check(s) of its own Service: those are not judged; the network is not said to be broken",
            protocols.join(", "),
            paths.len(),
            checks.len()
        ),
        capped(evidence),
        format!(
            "if {policy} is meant to isolate these pods, let netmatrix's own pods reach each other (the chart's networkPolicy.enabled=true adds such a policy: every protocol from the release's pods); otherwise check {policy}'s selectors (kubectl -n {} describe networkpolicy {})",
            policy.split('/').next().unwrap_or_default(),
            policy.split('/').nth(1).unwrap_or_default()
        ),
    )
    .with_paths(
        paths
            .iter()
            .map(|(from, to, _)| Path {
                from: (*from).to_owned(),
                to: (*to).to_owned(),
            })
            .collect(),
    )
}
