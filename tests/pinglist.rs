//! Agents that take their peers from the aggregator's pinglists
//! (`--peer-discovery aggregator`, the aggregator `--serve-pinglists`): a
//! healthy 3-node lab is all ok, the agents open no watch and list nothing
//! on the API (the aggregator is its only watcher), each keeps its list on
//! disk, and an agent restarted while the aggregator is stopped probes
//! again as soon as the aggregator is back.
//!
//! Needs root, and the binaries: `cargo build --workspace` first.

mod common;

use std::time::Duration;

use common::WAIT;
use netmatrix_lab::lab::AgentNetwork;
use netmatrix_lab::view::{self, all_pod_cells_ok};
use netmatrix_lab::{Lab, LabConfig, Snapshot};

fn healthy(s: &Snapshot) -> bool {
    all_pod_cells_ok(&s.matrix, 3)
        && view::all_host_cells_ok(&s.matrix, 3)
        && s.findings.findings.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_probe_the_aggregators_pinglists_and_watch_nothing() {
    common::require_root();
    common::init_tracing();
    let lab = Lab::up(LabConfig {
        pinglists: true,
        ..LabConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    let snap = lab
        .wait_for("an all-ok matrix from pinglists", WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", view::render(&snap.matrix, &snap.findings));

    // The aggregator is the only watcher: the agents never opened a watch
    // nor listed anything.
    let clients = lab.api_clients();
    let aggregator = &clients["netmatrix/netmatrix-aggregator/netmatrix-aggregator"];
    assert!(aggregator.watches_open > 0, "aggregator: {aggregator:?}");
    for node in lab.topology().nodes {
        for (pod, account) in [
            (&node.agent.name, "netmatrix-agent"),
            (&node.host_agent, "netmatrix-host-agent"),
        ] {
            let client = format!("netmatrix/{account}/{pod}");
            if let Some(stats) = clients.get(&client) {
                assert_eq!(
                    (stats.watches_opened, stats.lists),
                    (0, 0),
                    "{client} used the API: {stats:?}"
                );
            }
        }
    }
    // Each agent keeps its list where a restarted container finds it.
    let stored = std::fs::read_dir(lab.state_dir().path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("pinglist-"))
        .count();
    assert_eq!(stored, 6, "one stored pinglist per agent (3 pod, 3 host)");

    // node-2's agent restarts while the aggregator is stopped: it starts
    // from its stored list, and the matrix is whole again once the
    // aggregator is back.
    lab.pause_aggregator(true).unwrap_or_else(|e| panic!("{e}"));
    lab.restart_agent("node-2", AgentNetwork::Pod)
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    lab.pause_aggregator(false)
        .unwrap_or_else(|e| panic!("{e}"));
    lab.wait_for("all ok again after the aggregator's return", WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    lab.down().await;
}
