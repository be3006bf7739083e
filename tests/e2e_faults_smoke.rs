//! The fault catalog's kernel effects, checked with the reference tools
//! (`ping`, `dig`, TCP connects) from inside the lab's namespaces, and with
//! the matrix of the running agents: each fault breaks what it says and
//! nothing else, and `heal` restores all of it. Findings are the
//! aggregator's business and are checked in `e2e.rs`. Needs root.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{WAIT, ping, ping_args};
use netmatrix_api::Status;
use netmatrix_lab::net::netns;
use netmatrix_lab::net::topology::{DNS_SVC, KUBERNETES_SVC, Topology};
use netmatrix_lab::view::{self, cell};
use netmatrix_lab::{Fault, Lab, LabConfig, Snapshot};

/// A 1450-byte IP packet with Don't Fragment (the pod MTU).
fn ping_large(ns: &str, ip: &str) -> bool {
    ping_args(ns, ip, &["-M", "do", "-s", "1422"])
}

/// Share of `count` fast echoes lost, from ping's summary.
fn loss_percent(ns: &str, ip: &str, count: u32) -> f64 {
    let count = count.to_string();
    let out = netns::run(
        Some(ns),
        "ping",
        &["-c", &count, "-i", "0.01", "-W", "1", "-q", ip],
    )
    .unwrap_or_else(|e| e.to_string());
    out.split(',')
        .find_map(|part| part.trim().strip_suffix("% packet loss"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no loss in ping's output: {out}"))
}

fn tcp_connects(ns: &str, target: SocketAddr) -> bool {
    netns::in_netns(ns, move || {
        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)).map(|_| ())
    })
    .is_ok()
}

fn dig(ns: &str, name: &str, kind: &str, short: bool) -> String {
    let mut args = vec!["@10.96.0.10", name, kind, "+time=1", "+tries=1"];
    if short {
        args.push("+short");
    }
    netns::run(Some(ns), "dig", &args).unwrap_or_else(|e| format!("dig failed: {e}"))
}

const API_NAME: &str = "kubernetes.default.svc.cluster.local.";
const SRV_NAME: &str = "_metrics._tcp.netmatrix-agents.netmatrix.svc.cluster.local.";

/// Every agent and companion pod reaches every other one, and no fault
/// rule is left in any node.
fn assert_all_fine(t: &Topology) {
    common::assert_pod_mesh(t);
    for from in &t.nodes {
        let rules = netns::iptables(&from.netns, &["-S"]).expect("iptables -S");
        assert!(!rules.contains("netmatrix-lab fault"), "{rules}");
    }
}

async fn lab(nodes: usize, components: bool) -> Lab {
    common::require_root();
    common::init_tracing();
    Lab::up(LabConfig {
        nodes,
        components,
        ..LabConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("lab up: {e}"))
}

/// Packet counter of the rules of `chain` in `ns` whose comment names a fault.
fn fault_rule_packets(ns: &str, chain: &str) -> u64 {
    let out = netns::iptables(ns, &["-L", chain, "-v", "-n", "-x"]).expect("iptables -L");
    out.lines()
        .filter(|l| l.contains("netmatrix-lab fault"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_faults_break_what_they_say_and_heal() {
    let lab = lab(3, false).await;
    let t = lab.topology().clone();
    let (n1, n2, n3) = (&t.nodes[0], &t.nodes[1], &t.nodes[2]);
    assert_all_fine(&t);
    // Realistic flannel MTUs: pods and flannel.1 at the underlay's minus 50.
    for (ns, dev, mtu) in [
        (&n2.netns, "eth0", "1500"),
        (&n2.netns, "flannel.1", "1450"),
        (&n2.agent.netns, "eth0", "1450"),
    ] {
        let link = netns::ip(ns, &["link", "show", dev]).unwrap();
        assert!(link.contains(&format!("mtu {mtu} ")), "{ns} {dev}: {link}");
    }
    assert!(ping_large(&n1.agent.netns, "10.244.2.2"));

    // vxlan-drop: cross-node pod traffic gone, same-node and underlay fine;
    // the OUTPUT rule counted the encapsulated echoes.
    lab.fault(Fault::vxlan_drop()).unwrap();
    assert!(!ping(&n1.agent.netns, "10.244.2.2"));
    assert!(!ping(&n3.agent.netns, "10.244.1.3"));
    assert!(ping(&n2.agent.netns, "10.244.2.3"));
    assert!(ping(&n1.netns, "198.18.0.2"));
    assert!(fault_rule_packets(&n1.netns, "OUTPUT") > 0);
    lab.heal().unwrap();
    assert_all_fine(&t);

    // loss 100 % on arrival at node-2 (INPUT only): proves that decapsulated
    // VXLAN crosses INPUT; then the default 30 % gives about 30 % echo loss.
    lab.fault(Fault::loss("node-2", 100)).unwrap();
    assert!(!ping(&n1.agent.netns, "10.244.2.2"));
    assert!(fault_rule_packets(&n2.netns, "INPUT") > 0);
    assert!(ping(&n1.agent.netns, "10.244.3.2"));
    lab.heal().unwrap();
    lab.fault(Fault::loss("node-2", 30)).unwrap();
    let to = loss_percent(&n1.agent.netns, "10.244.2.2", 200);
    let from = loss_percent(&n2.agent.netns, "10.244.3.2", 200);
    let other = loss_percent(&n1.agent.netns, "10.244.3.2", 100);
    eprintln!(
        "loss 30%: node-1 -> node-2 {to}%, node-2 -> node-3 {from}%, node-1 -> node-3 {other}%"
    );
    assert!((15.0..=48.0).contains(&to), "{to}");
    assert!((15.0..=48.0).contains(&from), "{from}");
    assert!(other < 5.0, "{other}");
    lab.heal().unwrap();

    // fdb-flush: node-2's tunnel has no destination left.
    lab.fault(Fault::fdb_flush("node-2")).unwrap();
    let fdb = netns::run(
        None,
        "bridge",
        &["-n", &n2.netns, "fdb", "show", "dev", "flannel.1"],
    )
    .unwrap();
    assert!(!fdb.contains("dst"), "{fdb}");
    assert!(!ping(&n2.agent.netns, "10.244.1.2"));
    assert!(!ping(&n3.agent.netns, "10.244.2.3"));
    assert!(ping(&n1.agent.netns, "10.244.3.2"));
    lab.heal().unwrap();
    assert_all_fine(&t);

    // pair: node-2 <-> node-3 only.
    lab.fault(Fault::pair("node-2", "node-3")).unwrap();
    assert!(!ping(&n2.agent.netns, "10.244.3.2"));
    assert!(!ping(&n3.agent.netns, "10.244.2.3"));
    assert!(ping(&n2.agent.netns, "10.244.1.2"));
    assert!(ping(&n3.agent.netns, "10.244.1.2"));
    lab.heal().unwrap();

    // one-way node-2 -> node-3, also for a ping that was running before.
    assert!(ping(&n2.agent.netns, "10.244.3.2"));
    lab.fault(Fault::one_way("node-2", "node-3")).unwrap();
    assert!(
        !ping(&n2.agent.netns, "10.244.3.2"),
        "node-2 -> node-3 fails"
    );
    assert!(
        ping(&n3.agent.netns, "10.244.2.2"),
        "node-3 -> node-2 works"
    );
    assert!(ping(&n2.agent.netns, "10.244.1.2"));
    lab.heal().unwrap();

    // mtu: big packets vanish through node-2's tunnel, small ones pass.
    lab.fault(Fault::mtu("node-2")).unwrap();
    assert!(!ping_large(&n2.agent.netns, "10.244.1.2"));
    assert!(!ping_large(&n1.agent.netns, "10.244.2.2"));
    assert!(ping(&n2.agent.netns, "10.244.1.2"));
    assert!(ping_large(&n1.agent.netns, "10.244.3.2"));
    assert!(dig(&n2.agent.netns, SRV_NAME, "SRV", true).lines().count() == 3);
    lab.heal().unwrap();
    assert!(ping_large(&n2.agent.netns, "10.244.1.2"));

    // mtu-lower: node-2's pods get "fragmentation needed"; heal forgets
    // the learnt path MTU at once.
    lab.fault(Fault::mtu_lower("node-2", 1200)).unwrap();
    assert!(!ping_large(&n2.agent.netns, "10.244.1.2"));
    assert!(!ping_large(&n2.agent.netns, "10.244.1.2"));
    assert!(ping(&n2.agent.netns, "10.244.1.2"));
    lab.heal().unwrap();
    assert!(ping_large(&n2.agent.netns, "10.244.1.2"));
    assert_all_fine(&t);

    // underlay-cut: node-2 is off the switch, the others are fine.
    lab.fault(Fault::underlay_cut("node-2")).unwrap();
    assert!(!ping(&n2.netns, "198.18.0.1"));
    assert!(!ping(&n1.agent.netns, "10.244.2.2"));
    assert!(ping(&n1.agent.netns, "10.244.3.2"));
    assert!(ping(&n3.netns, "198.18.0.1"));
    lab.heal().unwrap();
    assert!(ping(&n2.netns, "198.18.0.1"));
    assert_all_fine(&t);

    // Faults stack and heal newest first.
    lab.fault(Fault::pair("node-1", "node-3")).unwrap();
    lab.fault(Fault::one_way("node-1", "node-3")).unwrap();
    lab.fault(Fault::overlay_down("node-2")).unwrap();
    assert_eq!(lab.heal().unwrap().len(), 3);
    assert_all_fine(&t);
    lab.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_and_dns_faults_break_what_they_say_and_heal() {
    let lab = lab(3, false).await;
    let t = lab.topology().clone();
    let (n1, n2, n3) = (&t.nodes[0], &t.nodes[1], &t.nodes[2]);
    let api = SocketAddr::from(KUBERNETES_SVC);
    let dns = SocketAddr::from(DNS_SVC);

    // Host-network processes reach ClusterIPs (route + nat OUTPUT).
    for n in &t.nodes {
        assert!(tcp_connects(&n.netns, api), "{} host -> {api}", n.name);
        assert_eq!(dig(&n.netns, API_NAME, "A", true).trim(), "10.96.0.1");
    }
    // dnat also breaks the node's host network, as a flushed kube-proxy does.
    lab.fault(Fault::dnat("node-2")).unwrap();
    assert!(!tcp_connects(&n2.netns, api));
    assert!(!tcp_connects(&n2.agent.netns, api));
    assert!(tcp_connects(&n3.netns, api));
    lab.heal().unwrap();
    assert!(tcp_connects(&n2.netns, api));
    assert!(tcp_connects(&n2.agent.netns, api));

    // apiserver-block: node-2's pods lose 10.96.0.1 only.
    lab.fault(Fault::apiserver_block("node-2")).unwrap();
    assert!(!tcp_connects(&n2.agent.netns, api));
    assert!(tcp_connects(&n2.agent.netns, dns), "other ClusterIPs pass");
    assert_eq!(
        dig(&n2.agent.netns, API_NAME, "A", true).trim(),
        "10.96.0.1"
    );
    assert!(tcp_connects(&n2.netns, api), "the host network passes");
    assert!(tcp_connects(&n3.agent.netns, api));
    lab.heal().unwrap();
    assert!(tcp_connects(&n2.agent.netns, api));

    // dns-servfail
    lab.fault(Fault::dns_servfail()).unwrap();
    let answer = dig(&n1.agent.netns, API_NAME, "A", false);
    assert!(answer.contains("status: SERVFAIL"), "{answer}");
    lab.heal().unwrap();
    assert_eq!(
        dig(&n1.agent.netns, API_NAME, "A", true).trim(),
        "10.96.0.1"
    );

    // dns-hide: node-2's agent is gone from the headless Service only.
    lab.fault(Fault::dns_hide("node-2")).unwrap();
    let srv = dig(&n1.agent.netns, SRV_NAME, "SRV", true);
    assert_eq!(srv.lines().count(), 2, "{srv}");
    assert!(!srv.contains("10-244-2-2"), "{srv}");
    let own = format!("{}.", n2.agent_dns_name());
    assert_eq!(dig(&n1.agent.netns, &own, "A", true).trim(), "");
    assert_eq!(
        dig(&n1.agent.netns, API_NAME, "A", true).trim(),
        "10.96.0.1"
    );
    lab.heal().unwrap();
    assert_eq!(
        dig(&n1.agent.netns, SRV_NAME, "SRV", true).lines().count(),
        3
    );
    assert_eq!(dig(&n1.agent.netns, &own, "A", true).trim(), "10.244.2.2");
    lab.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_splits_four_nodes_in_two_groups() {
    let lab = lab(4, false).await;
    let t = lab.topology().clone();
    assert!(
        lab.fault(Fault::partition(&["node-1", "node-2", "node-3", "node-4"]))
            .is_err()
    );
    lab.fault(Fault::partition(&["node-1", "node-2"])).unwrap();
    for from in &t.nodes {
        for to in &t.nodes {
            let same_group = (from.index <= 2) == (to.index <= 2);
            assert_eq!(
                ping(&from.agent.netns, &to.companion.ip.to_string()),
                same_group,
                "{} -> {}",
                from.name,
                to.name
            );
            // The underlay is untouched.
            assert!(ping(&from.netns, &to.ip.to_string()));
        }
    }
    lab.heal().unwrap();
    assert_all_fine(&t);
    lab.down().await;
}

fn pod_status(s: &Snapshot, from: &str, to: &str) -> Option<Status> {
    cell(&s.matrix, from, to).map(|c| c.status)
}

/// With the agents running: host agents report (host rows), and faults turn
/// the expected matrix cells failed while the host rows stay ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_show_in_the_matrix_of_running_agents() {
    let lab = lab(3, true).await;
    let nodes = ["node-1", "node-2", "node-3"];
    let all_ok = |s: &Snapshot| view::all_pod_cells_ok(&s.matrix, 3);
    // Host agents probe the other nodes' host agents: the diagonal has no
    // target.
    let host_ok = |s: &Snapshot| {
        s.matrix.host_rows.len() == 3
            && s.matrix.host_rows.iter().all(|r| {
                r.reporting
                    && r.cells.len() == 3
                    && r.cells
                        .iter()
                        .all(|c| *c.to == *r.node || c.status == Status::Ok)
            })
    };
    lab.wait_for("pod and host rows all ok", WAIT, |s| {
        all_ok(s) && host_ok(s)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    lab.fault(Fault::vxlan_drop()).unwrap();
    let snap = lab
        .wait_for("every cross-node pod cell failed", WAIT, |s| {
            nodes.iter().all(|a| {
                nodes.iter().all(|b| {
                    let want = if a == b { Status::Ok } else { Status::Failed };
                    pod_status(s, a, b) == Some(want)
                })
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        host_ok(&snap),
        "host rows stay ok:\n{:?}",
        snap.matrix.host_rows
    );
    lab.heal().unwrap();
    lab.wait_for("healed", WAIT, all_ok)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    lab.fault(Fault::one_way("node-2", "node-3")).unwrap();
    lab.wait_for("node-2 -> node-3 failed, the rest ok", WAIT, |s| {
        nodes.iter().all(|a| {
            nodes.iter().all(|b| {
                let want = if (*a, *b) == ("node-2", "node-3") {
                    Status::Failed
                } else {
                    Status::Ok
                };
                pod_status(s, a, b) == Some(want)
            })
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    lab.heal().unwrap();
    lab.wait_for("healed", WAIT, all_ok)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    lab.down().await;
}

/// Churn: cordon, an agent restart and a re-created companion leave the
/// matrix healthy, and the new companion is probed at its new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_keeps_the_matrix_healthy() {
    let lab = lab(3, true).await;
    let all_ok = |s: &Snapshot| view::all_pod_cells_ok(&s.matrix, 3);
    lab.wait_for("all ok", WAIT, all_ok)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    lab.cordon("node-3").unwrap();
    let node = lab
        .cluster()
        .get(netmatrix_lab::emulator::cluster::Kind::Node, "", "node-3");
    assert_eq!(node.unwrap()["spec"]["unschedulable"], true);
    lab.uncordon("node-3").unwrap();
    assert!(lab.cordon("node-9").is_err());

    lab.restart_agent("node-2", netmatrix_lab::lab::AgentNetwork::Pod)
        .unwrap();
    lab.restart_agent("node-2", netmatrix_lab::lab::AgentNetwork::Host)
        .unwrap();

    let old = lab.topology().nodes[1].companion.clone();
    let new = lab.recreate_companion("node-2").unwrap();
    assert_ne!(old.ip, new.ip);
    assert_ne!(old.name, new.name);
    let t = lab.topology();
    assert_eq!(t.nodes[1].companion, new);
    assert!(ping(&t.nodes[0].agent.netns, &new.ip.to_string()));
    assert!(!ping_args(
        &t.nodes[0].agent.netns,
        &old.ip.to_string(),
        &[]
    ));
    let pods = lab.cluster().pods();
    let names: Vec<_> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert!(
        names.contains(&new.name) && !names.contains(&old.name),
        "{names:?}"
    );
    let pod = lab
        .cluster()
        .get(
            netmatrix_lab::emulator::cluster::Kind::Pod,
            "netmatrix",
            &new.name,
        )
        .unwrap();
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["status"]["podIP"], new.ip.to_string());

    lab.hold_for("healthy through churn", Duration::from_secs(5), |s| {
        s.matrix.rows.iter().all(|r| r.reporting)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    lab.wait_for("all ok, 2 pods probed on node-2", WAIT, |s| {
        all_ok(s) && cell(&s.matrix, "node-1", "node-2").is_some_and(|c| c.pods == 2)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    lab.down().await;
}
