//! netmatrix's acceptance tests: a 3-node virtual cluster (network
//! namespaces, VXLAN overlay, kube-proxy-like DNAT, API server emulator,
//! cluster DNS) running the real agent and aggregator binaries. Each test
//! builds its own lab (unique prefix, free forwarder port), so they run in
//! parallel; every wait is bounded and prints the last matrix and findings
//! when it fails; the lab is removed when the test ends, also on panic.
//!
//! Needs root, and the binaries: `cargo build --workspace` first.

mod common;

use std::time::{Duration, Instant};

use common::WAIT;
use netmatrix_api::{ErrorKind, FindingKind, Status};
use netmatrix_lab::topology::{Overlay, Topology, random_prefix};
use netmatrix_lab::view::{self, all_pod_cells_ok, cell, finding_naming, row};
use netmatrix_lab::{Fault, Lab, Snapshot};

/// Healthy: every pod cell ok, every node reporting, no findings.
fn healthy(s: &Snapshot) -> bool {
    all_pod_cells_ok(&s.matrix, 3) && s.findings.findings.is_empty()
}

async fn wait_healthy(lab: &Lab, what: &str) -> Snapshot {
    lab.wait_for(what, WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Injects `fault` and waits until a finding of `kind` names `node` (any
/// node when `None`); prints how long that took and what the lab showed.
async fn inject_and_wait_for(
    lab: &Lab,
    fault: Fault,
    kind: FindingKind,
    node: Option<&str>,
) -> Snapshot {
    let what = format!("{kind} after {fault}");
    lab.fault(fault).expect("fault");
    let start = Instant::now();
    let snap = lab
        .wait_for(&what, WAIT, |s| match node {
            Some(n) => finding_naming(&s.findings, kind, n).is_some(),
            None => !view::of_kind(&s.findings, kind).is_empty(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{what}: named in {:.1?}\n{}",
        start.elapsed(),
        view::render(&snap.matrix, &snap.findings)
    );
    snap
}

/// Undoes every fault and waits until the cluster is healthy again.
async fn heal_and_wait_healthy(lab: &Lab) {
    let healed = lab.heal().expect("heal");
    let start = Instant::now();
    wait_healthy(lab, &format!("no findings after healing {healed:?}")).await;
    eprintln!("healthy again {:.1?} after heal", start.elapsed());
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
    // The service and DNS columns are healthy too, and all of it stays so
    // for longer than a finding takes to be raised.
    lab.wait_for("every service and DNS column ok", WAIT, |s| {
        view::all_checks_ok(&s.matrix)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    lab.hold_for("a healthy cluster", Duration::from_secs(8), |s| {
        healthy(s) && view::all_checks_ok(&s.matrix)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    lab.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_down_on_one_node_is_named_node_isolated() {
    let lab = common::lab(true).await;
    wait_healthy(&lab, "a healthy cluster before the fault").await;

    let snap = inject_and_wait_for(
        &lab,
        Fault::overlay_down("node-2"),
        FindingKind::NodeIsolated,
        Some("node-2"),
    )
    .await;
    // The matrix signature: node-2's row and column fail cross-node, its
    // diagonal and every other cell stay ok.
    let m = &snap.matrix;
    for from in ["node-1", "node-2", "node-3"] {
        for to in ["node-1", "node-2", "node-3"] {
            let c = cell(m, from, to).unwrap_or_else(|| panic!("no cell {from}->{to}"));
            let crosses_node_2 = from != to && (from == "node-2" || to == "node-2");
            let expected = if crosses_node_2 {
                Status::Failed
            } else {
                Status::Ok
            };
            assert_eq!(
                c.status,
                expected,
                "{from} -> {to}:\n{}",
                view::render_matrix(m)
            );
        }
    }

    heal_and_wait_healthy(&lab).await;
    lab.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_service_route_is_named_clusterip_broken() {
    let lab = common::lab(true).await;
    wait_healthy(&lab, "a healthy cluster before the fault").await;

    let snap = inject_and_wait_for(
        &lab,
        Fault::service_route("node-3"),
        FindingKind::ClusteripBroken,
        Some("node-3"),
    )
    .await;
    let finding =
        finding_naming(&snap.findings, FindingKind::ClusteripBroken, "node-3").expect("finding");
    let evidence = finding.evidence.join("\n");
    assert!(
        evidence.contains("unreachable"),
        "the evidence should say the API server is unreachable: {evidence}"
    );
    // The field's error, verbatim: `connect: network is unreachable`.
    let r = row(&snap.matrix, "node-3").expect("node-3 row");
    let api = r
        .services
        .iter()
        .find(|c| c.column.starts_with("apiserver"))
        .expect("apiserver column");
    assert_eq!(api.status, Status::Failed);
    let err = api.last_error.as_ref().expect("apiserver error");
    assert_eq!(err.kind, ErrorKind::Unreachable, "{err}");
    assert!(
        err.message
            .to_lowercase()
            .contains("network is unreachable"),
        "{err}"
    );
    // Pod traffic is untouched, in node-3's row and in its column.
    assert!(
        r.cells.iter().all(|c| c.status == Status::Ok),
        "node-3's pod cells should stay ok:\n{}",
        view::render_matrix(&snap.matrix)
    );
    for from in ["node-1", "node-2"] {
        let c = cell(&snap.matrix, from, "node-3").expect("cell");
        assert_eq!(
            c.status,
            Status::Ok,
            "{from} -> node-3:\n{}",
            view::render_matrix(&snap.matrix)
        );
    }

    heal_and_wait_healthy(&lab).await;
    lab.down().await;
}

/// The other faults, one after the other in one lab: each is named, and
/// healing it brings the cluster back to no findings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnat_dns_and_agent_faults_are_named() {
    let lab = common::lab(true).await;
    wait_healthy(&lab, "a healthy cluster before the faults").await;
    let cases = [
        (
            Fault::dnat("node-2"),
            FindingKind::ClusteripBroken,
            Some("node-2"),
        ),
        (Fault::dns_stop(), FindingKind::DnsFailure, None),
        (
            Fault::kill_agent("node-3"),
            FindingKind::AgentMissing,
            Some("node-3"),
        ),
    ];
    for (fault, kind, node) in cases {
        inject_and_wait_for(&lab, fault, kind, node).await;
        heal_and_wait_healthy(&lab).await;
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
