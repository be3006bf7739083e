//! Agents take their peers from the aggregator's pinglists (the default):
//! each keeps its list on disk; an agent restarted while the aggregator is
//! down probes its stored list; the agents keep probing while the
//! aggregator is killed, and probe a node that joined meanwhile within two
//! rounds of the aggregator's return. Agents run on their own watches
//! (`--peer-discovery api`, the lab's `--agent-watches`) still work.
//!
//! Needs root, and the binaries: `cargo build --workspace` first.

mod common;

use std::time::{Duration, Instant};

use common::WAIT;
use netmatrix_api::{PeerSource, Report};
use netmatrix_lab::lab::AgentNetwork;
use netmatrix_lab::view::{self, all_pod_cells_ok};
use netmatrix_lab::{Lab, LabConfig, Snapshot};

fn healthy(nodes: usize) -> impl Fn(&Snapshot) -> bool {
    move |s| {
        all_pod_cells_ok(&s.matrix, nodes)
            && view::all_host_cells_ok(&s.matrix, nodes)
            && s.findings.findings.is_empty()
    }
}

fn last_round(lab: &Lab, node: &str) -> Report {
    lab.agent_last_round(node, AgentNetwork::Pod)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("{node}'s agent has completed no round"))
}

/// Whether `report` probed a pod on `node` and heard it.
fn heard_from(report: &Report, node: &str) -> bool {
    report
        .peers
        .iter()
        .any(|p| p.node == node && p.icmp.received > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_keep_probing_without_the_aggregator_and_follow_it_back() {
    common::require_root();
    common::init_tracing();
    let lab = Lab::up(LabConfig::default())
        .await
        .unwrap_or_else(|e| panic!("lab up: {e}"));
    let interval = lab.config().interval;
    let snap = lab
        .wait_for("an all-ok matrix from pinglists", WAIT, healthy(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", view::render(&snap.matrix, &snap.findings));
    assert_eq!(
        last_round(&lab, "node-1").peer_source,
        PeerSource::Aggregator
    );

    // Each agent keeps its list where a restarted container finds it.
    let stored = std::fs::read_dir(lab.state_dir().path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("pinglist-"))
        .count();
    assert_eq!(stored, 6, "one stored pinglist per agent (3 pod, 3 host)");
    let metrics = reqwest::get(format!("{}/metrics", lab.aggregator_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "netmatrix_pinglists 6"),
        "the aggregator holds one list per agent: {}",
        metrics
            .lines()
            .filter(|l| l.contains("pinglist"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // node-2's agent restarts while the aggregator is frozen: it starts
    // from its stored list, and the matrix is whole again once the
    // aggregator resumes.
    lab.pause_aggregator(true).unwrap_or_else(|e| panic!("{e}"));
    lab.restart_agent("node-2", AgentNetwork::Pod)
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(3 * interval).await;
    let restarted = last_round(&lab, "node-2");
    assert_eq!(restarted.peer_source, PeerSource::LastKnown);
    for node in ["node-1", "node-3"] {
        assert!(
            heard_from(&restarted, node),
            "restarted node-2 probes {node} from its stored list: {:?}",
            restarted.peers
        );
    }
    lab.pause_aggregator(false)
        .unwrap_or_else(|e| panic!("{e}"));
    lab.wait_for(
        "all ok again after the aggregator's return",
        WAIT,
        healthy(3),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // The aggregator is killed: the agents go on probing what they hold.
    lab.stop_aggregator().unwrap_or_else(|e| panic!("{e}"));
    let before = last_round(&lab, "node-1");
    tokio::time::sleep(4 * interval).await;
    let during = last_round(&lab, "node-1");
    assert!(
        during.round >= before.round + 2,
        "node-1 keeps its rounds: {} then {}",
        before.round,
        during.round
    );
    assert_eq!(during.peer_source, PeerSource::LastKnown);
    for node in ["node-2", "node-3"] {
        assert!(
            heard_from(&during, node),
            "node-1 still probes {node}: {:?}",
            during.peers
        );
    }

    // A node joins while the aggregator is down. Nobody watches the API
    // but the aggregator, so the running agents cannot know it yet.
    let joined = lab.add_node().unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(2 * interval).await;
    assert!(!heard_from(&last_round(&lab, "node-1"), &joined.name));

    // The aggregator comes back. Within two rounds of its return (the
    // round under way when it answers, then two), node-1 probes the new
    // node.
    lab.start_aggregator().unwrap_or_else(|e| panic!("{e}"));
    let http = reqwest::Client::new();
    let healthz = format!("{}/healthz", lab.aggregator_url());
    let deadline = Instant::now() + WAIT;
    while !http
        .get(&healthz)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "the aggregator did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let returned = Instant::now();
    let round_at_return = last_round(&lab, "node-1").round;
    let picked_up = loop {
        let report = last_round(&lab, "node-1");
        if heard_from(&report, &joined.name) {
            break report;
        }
        assert!(
            report.round <= round_at_return + 4,
            "node-1 has not probed {} {} rounds after the aggregator's return",
            joined.name,
            report.round - round_at_return
        );
        tokio::time::sleep(interval / 4).await;
    };
    eprintln!(
        "{} probed by node-1 in round {} ({} after the aggregator's return in round {round_at_return}), {:.1?} later",
        joined.name,
        picked_up.round,
        picked_up.round - round_at_return,
        returned.elapsed()
    );
    assert!(
        picked_up.round <= round_at_return + 3,
        "node-1 probed {} only in round {} (the aggregator returned in round {round_at_return})",
        joined.name,
        picked_up.round
    );
    assert_eq!(picked_up.peer_source, PeerSource::Aggregator);
    lab.wait_for("all ok with the new node", WAIT, healthy(4))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    lab.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_their_own_watches_still_work() {
    common::require_root();
    common::init_tracing();
    let lab = Lab::up(LabConfig {
        pinglists: false,
        ..LabConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    lab.wait_for(
        "an all-ok matrix from the agents' watches",
        WAIT,
        healthy(3),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(last_round(&lab, "node-1").peer_source, PeerSource::Api);
    let clients = lab.api_clients();
    let agent = &clients[&format!(
        "netmatrix/netmatrix-agent/{}",
        lab.topology().nodes[0].agent.name
    )];
    assert!(agent.watches_open > 0, "the agent watches: {agent:?}");
    lab.down().await;
}
