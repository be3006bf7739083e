//! No false alarms: a healthy lab taken through a normal day's churn (every
//! agent restarted one by one, a node cordoned and uncordoned, every
//! companion pod re-created with a new address, node-4 added and removed)
//! must produce no finding at all, and the new node must be probed both
//! ways within the run, with the VXLAN overlay and with BGP. Needs root and
//! the binaries (`scripts/test` builds them).

mod common;

use std::sync::Arc;
use std::time::Duration;

use netmatrix_lab::lab::NODE_GRACE;
use netmatrix_lab::{Lab, LabConfig, Overlay};

#[tokio::test]
async fn a_healthy_cluster_through_churn_raises_no_finding() {
    churn_raises_nothing(Overlay::Vxlan).await;
}

/// The same with Calico's routing: the joining node's BIRD starts and every
/// other node peers with it; the leaving node's sessions go.
#[tokio::test]
async fn a_healthy_bgp_cluster_through_churn_raises_no_finding() {
    churn_raises_nothing(Overlay::Bgp).await;
}

async fn churn_raises_nothing(overlay: Overlay) {
    common::require_root();
    common::init_tracing();
    let lab = Arc::new(
        Lab::up(LabConfig {
            overlay,
            ..LabConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("lab up: {e}")),
    );
    let report = lab
        .churn(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("churn: {e}"));
    eprintln!("{report}");
    assert!(report.clean(), "{report}");

    let steps: Vec<&str> = report.steps.iter().map(|s| s.step.as_str()).collect();
    for expected in [
        "restart agent node-2",
        "restart host agent node-3",
        "cordon node-3",
        "uncordon node-3",
        "re-create companion node-1",
        "add a node",
        "node-4 probed both ways",
        "remove node-4",
    ] {
        assert!(
            steps.contains(&expected),
            "{expected:?} missing from {steps:?}"
        );
    }
    // The aggregator evaluates once per second (the lab's interval): the
    // watcher must have seen most of those rounds, and the run must have
    // lasted past the node grace after its last step.
    let watched = report.watched.as_secs_f64();
    assert!(
        report.rounds as f64 >= watched * 0.8,
        "{} rounds covered in {watched:.1} s",
        report.rounds
    );
    assert!(report.watched > NODE_GRACE * 2, "{:?}", report.watched);

    // node-4 is gone for good: from the plan, the API and the kernel.
    let t = lab.topology();
    assert_eq!(t.nodes.len(), 3);
    assert!(
        lab.cluster()
            .nodes()
            .iter()
            .all(|n| n.metadata.name.as_deref() != Some("node-4"))
    );
    assert!(!netmatrix_lab::net::netns::exists(&format!(
        "{}-n4",
        lab.prefix()
    )));
    let after = lab.snapshot().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after.matrix.nodes.len(), 3, "{:?}", after.matrix.nodes);

    let lab2 = lab.clone();
    tokio::task::spawn_blocking(move || lab2.shutdown())
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}
