//! netmatrix's acceptance test of a healthy cluster: a 3-node virtual
//! cluster (network namespaces, VXLAN overlay, kube-proxy-like DNAT, API
//! server emulator, cluster DNS) running the real agent and aggregator
//! binaries shows an all-ok matrix and no finding. The failure catalog is in
//! `catalog.rs`, churn in `churn.rs`. Every wait is bounded and prints the
//! last matrix and findings when it fails; the lab is removed when the test
//! ends, also on panic.
//!
//! Needs root, and the binaries: `cargo build --workspace` first.

mod common;

use std::time::{Duration, Instant};

use common::WAIT;
use netmatrix_lab::net::topology::{Overlay, Topology, random_prefix};
use netmatrix_lab::view::{self, all_pod_cells_ok};
use netmatrix_lab::{Lab, Snapshot};

/// Healthy: every pod cell ok, every node reporting, no findings.
fn healthy(s: &Snapshot) -> bool {
    all_pod_cells_ok(&s.matrix, 3) && s.findings.findings.is_empty()
}

async fn wait_healthy(lab: &Lab, what: &str) -> Snapshot {
    lab.wait_for(what, WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_cluster_is_all_ok_without_findings() {
    let lab = common::lab(true).await;
    let start = Instant::now();
    let snap = wait_healthy(&lab, "an all-ok matrix without findings").await;
    eprintln!(
        "first all-ok matrix {:.1?} after up:\n{}",
        start.elapsed(),
        view::render(&snap.matrix, &snap.findings)
    );
    // The host-network rows, the service and DNS columns (pod and host
    // agents) are healthy too, and all of it stays so for longer than a
    // finding takes to be raised.
    lab.wait_for(
        "every host-network cell, service and DNS column ok",
        WAIT,
        |s| view::all_host_cells_ok(&s.matrix, 3) && view::all_checks_ok(&s.matrix),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    lab.hold_for("a healthy cluster", Duration::from_secs(8), |s| {
        healthy(s) && view::all_host_cells_ok(&s.matrix, 3) && view::all_checks_ok(&s.matrix)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Every process has an API token of its own, so the emulator counts the
    // aggregator and each agent apart. The aggregator is the only watcher:
    // the agents take their peers from its pinglists and never open a
    // watch nor list anything.
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
    lab.down().await;
}

/// Runs without root: the plan gives unique, prefixed names and addresses.
#[test]
fn plans_are_unique_per_lab() {
    let a = Topology::plan(&random_prefix(), 3, Overlay::Vxlan).unwrap();
    let b = Topology::plan(&random_prefix(), 3, Overlay::Vxlan).unwrap();
    assert_ne!(a.prefix, b.prefix);
    for ns in a.namespaces() {
        assert!(ns.starts_with(&format!("{}-", a.prefix)));
        assert!(!b.namespaces().contains(&ns));
    }
    let ips: std::collections::BTreeSet<_> = a
        .nodes
        .iter()
        .flat_map(|n| [n.ip, n.agent.ip, n.companion.ip, n.gateway])
        .collect();
    assert_eq!(ips.len(), 12);
}
