//! `agent-missing`: an expected node (Ready in the API, past its grace
//! period; or seen before under `--no-kubernetes`) without a fresh report
//! from its pod-network agent. A node the underlay cuts off is not
//! reported: its agents cannot reach the aggregator, `underlay-broken`
//! says why.

use std::collections::BTreeSet;
use std::time::Duration;

use netmatrix_api::{FindingKind, NetworkMode};

use super::{Tally, View, broken_cells, capped};
use crate::diagnosis::{Condition, Subject};

pub(super) fn agent_missing(
    view: &View,
    expected: &BTreeSet<String>,
    cut_off: &BTreeSet<&str>,
) -> Vec<Condition> {
    view.rows(NetworkMode::Pod)
        .iter()
        .filter(|row| !row.reporting && expected.contains(&row.node))
        .filter(|row| view.is_ready(&row.node) && !cut_off.contains(row.node.as_str()))
        .map(|row| {
            let node = row.node.as_str();
            let inbound: Vec<_> = view
                .cross_cells(NetworkMode::Pod)
                .filter(|(_, c)| c.to == node)
                .collect();
            let unreachable = Tally::of(inbound.iter().map(|(_, c)| *c)).nearly_all_broken();
            let silence = match row.report_age_ms {
                Some(ms) => format!(
                    "last report {} ago",
                    humantime::format_duration(Duration::from_secs((ms / 1000.0) as u64))
                ),
                None => "no report received since the aggregator started".to_owned(),
            };
            let mut evidence = vec![format!("{node}: {silence}")];
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
            Condition::new(
                FindingKind::AgentMissing,
                Subject::Node(node.to_owned()),
                vec![node.to_owned()],
                summary,
                capped(evidence),
                hint,
            )
        })
        .collect()
}
