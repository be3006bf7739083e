//! `--overlay bgp`: Calico's routing with Calico's own daemon. Every node
//! runs BIRD in an iBGP full mesh (AS 64512) and learns the other nodes'
//! pod CIDRs from it. A healthy lab is all ok with every session
//! Established; BGP broken between two nodes (TCP 179 dropped), BIRD
//! stopped on one node (calico-node crashed) and one node peering from a
//! wrong address (IP autodetection picked the wrong interface) are each
//! named, with the missing routes as the cause, and clear when healed. Needs root and
//! `bird2` (`scripts/setup`).

mod common;

use netmatrix_api::FindingKind;
use netmatrix_lab::net::topology::Overlay;
use netmatrix_lab::view::{all_host_cells_ok, all_pod_cells_ok, finding_naming};
use netmatrix_lab::{Fault, Lab, LabConfig, Snapshot};

fn healthy(s: &Snapshot) -> bool {
    all_pod_cells_ok(&s.matrix, 3)
        && all_host_cells_ok(&s.matrix, 3)
        && s.findings.findings.is_empty()
}

/// `birdc show protocols` of `node`'s BIRD.
fn protocols(lab: &Lab, node: &str) -> String {
    let ctl = lab.state_dir().file(&format!("bird-{node}.ctl"));
    let out = std::process::Command::new("birdc")
        .arg("-s")
        .arg(&ctl)
        .args(["show", "protocols"])
        .output()
        .expect("birdc (apt-get install bird2)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The finding `kind` naming `node`, with a cause mentioning `cause`.
async fn named(lab: &Lab, what: &str, kind: FindingKind, node: &str, cause: &str) {
    let snap = lab
        .wait_for(what, common::WAIT, |s| {
            finding_naming(&s.findings, kind, node)
                .is_some_and(|f| f.cause.iter().any(|c| c.contains(cause)))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Nothing else is named.
    assert_eq!(
        snap.findings.findings.len(),
        1,
        "{:?}",
        snap.findings.findings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_mesh_faults_are_named_and_healed() {
    common::require_root();
    common::init_tracing();
    let lab = Lab::up(LabConfig {
        overlay: Overlay::Bgp,
        ..LabConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    lab.wait_for("healthy bgp lab", common::WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for node in ["node-1", "node-2", "node-3"] {
        let sessions = protocols(&lab, node);
        assert_eq!(
            sessions.matches("Established").count(),
            2,
            "{node}:\n{sessions}"
        );
    }

    // BGP between node-2 and node-3 blocked: after the hold time both
    // withdraw the other's pod CIDR; each still reaches node-1.
    let block = Fault::bgp_block("node-2", "node-3");
    lab.fault(block).expect("bgp-block");
    named(
        &lab,
        "pair-broken node-2 node-3",
        FindingKind::PairBroken,
        "node-2",
        "node-2 has no route to 10.244.3.0/24",
    )
    .await;
    lab.heal().expect("heal");
    lab.wait_for("healthy after bgp-block", common::WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // node-2's BIRD stopped: node-2 isolated in the pod network, its host
    // network fine.
    let stop = Fault::bird_stop("node-2");
    lab.fault(stop).expect("bird-stop");
    named(
        &lab,
        "node-isolated node-2",
        FindingKind::NodeIsolated,
        "node-2",
        "has no route to 10.244.2.0/24",
    )
    .await;
    lab.heal().expect("heal");
    lab.wait_for("healthy after bird-stop", common::WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // node-3's BGP address autodetected from the wrong interface (its
    // cni0): it peers from it, the others dial it, no session comes up.
    let wrong = Fault::bgp_wrong_address("node-3");
    lab.fault(wrong).expect("bgp-wrong-address");
    named(
        &lab,
        "node-isolated node-3",
        FindingKind::NodeIsolated,
        "node-3",
        "has no route to 10.244.3.0/24",
    )
    .await;
    assert_eq!(protocols(&lab, "node-3").matches("Established").count(), 0);
    lab.heal().expect("heal");
    lab.wait_for("healthy after bgp-wrong-address", common::WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // The static-route faults do not apply: BIRD would put the routes back.
    assert!(lab.fault(Fault::route_del("node-2", "node-3")).is_err());
}
