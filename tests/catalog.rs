//! The failure catalog, end to end: each fault is
//! injected in a lab with the kernel's tools, and the aggregator must name it
//! with the right kind, nodes, groups or paths, report nothing else from the
//! injection until the cluster is healthy again, and clear it after healing.
//!
//! One test per family of faults and overlay mode (`FAMILY::vxlan`,
//! `FAMILY::host_gw`, `FAMILY::bgp`), each in its own lab (unique prefix),
//! the cases of a family one after the other. A family runs in every mode
//! where its faults exist: a case whose fault breaks another mode's machinery
//! (flannel's VXLAN device, static routes that BIRD would put back) is left
//! out of that mode. The BGP faults have their own test (`tests/bgp.rs`).
//! Every case prints how long the finding took to be named and to clear.
//! Needs root, the binaries (`scripts/test` builds them) and `bird2`.

mod common;

use std::time::{Duration, Instant};

use common::WAIT;
use netmatrix_api::{ErrorKind, Finding, FindingKind, NodeState, Status};
use netmatrix_lab::view::{self, all_pod_cells_ok, cell, row};
use netmatrix_lab::{Fault, Lab, LabConfig, Overlay, Snapshot};

/// A family of the catalog as one test per overlay mode, in a module named
/// after it: `cargo test --test catalog host_gw` runs one mode.
macro_rules! in_overlays {
    ($family:ident: $($mode:ident => $overlay:ident),+) => {
        mod $family {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $mode() {
                    super::$family(netmatrix_lab::Overlay::$overlay).await;
                }
            )+
        }
    };
    ($family:ident) => {
        in_overlays!($family: vxlan => Vxlan, host_gw => HostGw, bgp => Bgp);
    };
}

/// What the expected finding must name.
#[derive(Debug, Clone, Copy)]
enum Names {
    /// Exactly these nodes.
    Nodes(&'static [&'static str]),
    /// These groups (in any order), for `partition`.
    Groups(&'static [&'static [&'static str]]),
    /// Exactly these directed paths.
    Paths(&'static [(&'static str, &'static str)]),
    /// Nodes including this one (cluster-wide findings name every node).
    Including(&'static str),
}

/// What the finding's `cause` (from the nodes' own network facts) must say.
#[derive(Debug, Clone, Copy)]
enum Cause {
    /// A line containing this text.
    Says(&'static str),
    /// Nothing: the facts cannot tell (a packet filter, a policy), and the
    /// finding must not guess.
    Unknown,
}

/// One row of the catalog.
struct Case {
    fault: Fault,
    kind: FindingKind,
    names: Names,
    /// Text the evidence must contain (the error the operator reads).
    evidence: Option<&'static str>,
    /// More assertions on the snapshot where the finding was named.
    check: Option<fn(&Snapshot)>,
    cause: Option<Cause>,
    /// Findings (kind and nodes) the network really passes through on its
    /// way back after `heal`, besides the case's own.
    recovery: &'static [(FindingKind, &'static [&'static str])],
}

impl Case {
    fn new(fault: Fault, kind: FindingKind, names: Names) -> Self {
        Case {
            fault,
            kind,
            names,
            evidence: None,
            check: None,
            cause: None,
            recovery: &[],
        }
    }

    fn recovers_through(
        mut self,
        findings: &'static [(FindingKind, &'static [&'static str])],
    ) -> Self {
        self.recovery = findings;
        self
    }

    fn cause(mut self, cause: Cause) -> Self {
        self.cause = Some(cause);
        self
    }

    fn evidence(mut self, text: &'static str) -> Self {
        self.evidence = Some(text);
        self
    }

    fn check(mut self, check: fn(&Snapshot)) -> Self {
        self.check = Some(check);
        self
    }

    /// Whether `f` is the finding this case expects (kind and names).
    fn matches(&self, f: &Finding) -> bool {
        if f.kind != self.kind {
            return false;
        }
        let names_ok = match self.names {
            Names::Nodes(nodes) => f.nodes == nodes,
            Names::Including(node) => f.nodes.iter().any(|n| n == node),
            Names::Groups(groups) => {
                let mut want: Vec<Vec<&str>> = groups.iter().map(|g| g.to_vec()).collect();
                let mut got: Vec<Vec<&str>> = f
                    .groups
                    .iter()
                    .map(|g| g.iter().map(String::as_str).collect())
                    .collect();
                want.sort();
                got.sort();
                want == got
            }
            Names::Paths(paths) => {
                let mut want: Vec<(&str, &str)> = paths.to_vec();
                let mut got: Vec<(&str, &str)> = f
                    .paths
                    .iter()
                    .map(|p| (p.from.as_str(), p.to.as_str()))
                    .collect();
                want.sort();
                got.sort();
                want == got
            }
        };
        let evidence_ok = self
            .evidence
            .is_none_or(|text| f.evidence.iter().any(|e| e.contains(text)));
        let cause_ok = match self.cause {
            None => true,
            Some(Cause::Says(text)) => f.cause.iter().any(|c| c.contains(text)),
            Some(Cause::Unknown) => f.cause.is_empty(),
        };
        names_ok && evidence_ok && cause_ok && !f.hint.is_empty()
    }
}

/// A lab of `nodes` nodes with every component, healthy.
async fn healthy_lab(overlay: Overlay, nodes: usize) -> Lab {
    healthy_lab_with(config(overlay, nodes)).await
}

fn config(overlay: Overlay, nodes: usize) -> LabConfig {
    LabConfig {
        nodes,
        overlay,
        ..LabConfig::default()
    }
}

async fn healthy_lab_with(config: LabConfig) -> Lab {
    common::require_root();
    common::init_tracing();
    let nodes = config.nodes;
    let config_overlay = config.overlay;
    let lab = Lab::up(config)
        .await
        .unwrap_or_else(|e| panic!("lab up: {e}"));
    eprintln!(
        "lab {} ({}) up in {:.2?}",
        lab.prefix(),
        config_overlay,
        lab.up_took()
    );
    // Past the node grace too: a joining node is shown, not judged.
    lab.wait_for(
        "a healthy cluster of Ready nodes before the faults",
        WAIT,
        |s| healthy(s, nodes) && s.matrix.rows.iter().all(|r| r.state == NodeState::Ready),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    lab
}

fn healthy(s: &Snapshot, nodes: usize) -> bool {
    all_pod_cells_ok(&s.matrix, nodes) && s.findings.findings.is_empty()
}

/// Polls until `done` holds, failing at the first snapshot that reports a
/// finding `allowed` rejects, or after [`WAIT`].
async fn watch(
    lab: &Lab,
    what: &str,
    allowed: impl Fn(&Finding) -> bool,
    done: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let start = Instant::now();
    let mut last: String;
    loop {
        match lab.snapshot().await {
            Ok(snap) => {
                let wrong: Vec<&Finding> = snap
                    .findings
                    .findings
                    .iter()
                    .filter(|f| !allowed(f))
                    .collect();
                assert!(
                    wrong.is_empty(),
                    "{what}: unexpected finding after {:.1?}: {}\n{}",
                    start.elapsed(),
                    wrong
                        .iter()
                        .map(|f| format!("{} {:?}: {}", f.kind, f.nodes, f.summary))
                        .collect::<Vec<_>>()
                        .join("; "),
                    view::render(&snap.matrix, &snap.findings)
                );
                if done(&snap) {
                    return snap;
                }
                last = view::render(&snap.matrix, &snap.findings);
            }
            Err(e) => last = e.to_string(),
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: not reached in {WAIT:?}; last:\n{last}\nlogs: {}",
            lab.state_dir().path().display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Injects the case's fault, waits for its finding (nothing else may be
/// reported meanwhile), checks it stays the only one for a few rounds,
/// heals, and waits until the cluster is healthy again. Returns how long
/// naming and clearing took.
async fn run_case(lab: &Lab, nodes: usize, case: &Case) -> (Duration, Duration) {
    let what = format!("{} after `{}`", case.kind, case.fault);
    lab.fault(case.fault.clone()).expect("inject the fault");
    let start = Instant::now();
    let expected_kind = |f: &Finding| f.kind == case.kind;
    let snap = watch(lab, &what, expected_kind, |s| {
        s.findings.findings.iter().any(|f| case.matches(f))
    })
    .await;
    let named = start.elapsed();
    eprintln!(
        "{what}: named in {named:.1?}\n{}",
        view::render(&snap.matrix, &snap.findings)
    );
    if let Some(check) = case.check {
        check(&snap);
    }
    // Stable, not a flicker: for longer than a finding takes to be raised,
    // only findings of the expected kind, the expected one among them.
    let hold = Instant::now();
    watch(lab, &format!("{what} to hold"), expected_kind, |s| {
        assert!(
            s.findings.findings.iter().any(|f| case.matches(f)),
            "{what}: the finding went away while the fault was in place\n{}",
            view::render(&s.matrix, &s.findings)
        );
        hold.elapsed() >= Duration::from_secs(4)
    })
    .await;

    let healed = lab.heal().expect("heal");
    let start = Instant::now();
    watch(
        lab,
        &format!("no findings after healing {healed:?}"),
        |f| {
            expected_kind(f)
                || case
                    .recovery
                    .iter()
                    .any(|(kind, nodes)| f.kind == *kind && f.nodes == *nodes)
        },
        |s| healthy(s, nodes),
    )
    .await;
    let cleared = start.elapsed();
    eprintln!("{what}: cleared {cleared:.1?} after heal");
    (named, cleared)
}

/// Runs the cases whose faults exist with `overlay` one after the other in
/// one lab and prints their timings.
async fn run_catalog(overlay: Overlay, nodes: usize, cases: Vec<Case>) {
    run_catalog_in(config(overlay, nodes), cases).await;
}

async fn run_catalog_in(config: LabConfig, cases: Vec<Case>) {
    let nodes = config.nodes;
    let lab = healthy_lab_with(config).await;
    run_cases(&lab, nodes, &cases).await;
    lab.down().await;
}

/// Runs the cases whose faults exist in `lab`'s overlay one after the other
/// and prints their timings.
async fn run_cases(lab: &Lab, nodes: usize, cases: &[Case]) {
    let overlay = lab.topology().overlay;
    let (cases, left_out): (Vec<&Case>, Vec<&Case>) =
        cases.iter().partition(|c| c.fault.kind.applies_to(overlay));
    assert!(
        !cases.is_empty(),
        "no case of this family exists with {overlay}"
    );
    // Said, so that a fault wrongly refused in a mode shows.
    let mut timings: Vec<String> = left_out
        .iter()
        .map(|c| format!("| `{}` | left out: not a fault of {overlay} | | |", c.fault))
        .collect();
    for case in cases {
        let (named, cleared) = run_case(lab, nodes, case).await;
        timings.push(format!(
            "| `{}` | `{}` | {named:.1?} | {cleared:.1?} |",
            case.fault, case.kind
        ));
    }
    eprintln!(
        "{overlay}:\n| fault | finding | named after | cleared after heal |\n|---|---|---|---|\n{}",
        timings.join("\n")
    );
}

/// The overlay's own machinery: flannel's VXLAN device and its tables, or
/// host-gw's routes.
async fn overlay_faults_are_named(overlay: Overlay) {
    // Without its routes to its peers (host-gw), or the neighbour entries of
    // their VTEPs (vxlan), node-2 sends nothing across.
    let overlay_down_cause = match overlay {
        Overlay::Vxlan => {
            "node-2 has no neighbour entry for 10.244.3.0 (node-3's VTEP) on flannel.1"
        }
        Overlay::HostGw | Overlay::Bgp => {
            "node-2 has no route to 10.244.3.0/24 (node-3's pod CIDR)"
        }
    };
    run_catalog(
        overlay,
        3,
        vec![
            Case::new(
                Fault::fdb_flush("node-2"),
                FindingKind::NodeIsolated,
                Names::Nodes(&["node-2"]),
            )
            .evidence("node-1 -> node-2")
            .cause(Cause::Says(
                "node-2's flannel.1 has no FDB entry for node-1's VTEP",
            )),
            Case::new(
                Fault::overlay_down("node-2"),
                FindingKind::NodeIsolated,
                Names::Nodes(&["node-2"]),
            )
            .check(node_2_row_and_column_fail)
            .cause(Cause::Says(overlay_down_cause)),
            Case::new(
                Fault::vtep_down("node-3"),
                FindingKind::NodeIsolated,
                Names::Nodes(&["node-3"]),
            )
            .cause(Cause::Says("node-3: flannel.1 (vxlan) is down")),
            Case::new(
                Fault::vxlan_drop(),
                FindingKind::CrossNodeBroken,
                Names::Including("node-1"),
            )
            .cause(Cause::Unknown),
        ],
    )
    .await;
}
in_overlays!(overlay_faults_are_named: vxlan => Vxlan, host_gw => HostGw);

/// node-isolated's matrix: node-2's row and column fail cross-node, its
/// diagonal and every other cell stay ok.
fn node_2_row_and_column_fail(snap: &Snapshot) {
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
}

async fn path_faults_are_named(overlay: Overlay) {
    run_catalog(
        overlay,
        3,
        vec![
            Case::new(
                Fault::one_way("node-2", "node-3"),
                FindingKind::AsymmetricPath,
                Names::Paths(&[("node-2", "node-3")]),
            )
            .cause(Cause::Unknown),
            Case::new(
                Fault::pair("node-2", "node-3"),
                FindingKind::PairBroken,
                Names::Paths(&[("node-2", "node-3"), ("node-3", "node-2")]),
            )
            .cause(Cause::Unknown),
            Case::new(
                Fault::fdb_stale("node-2", "node-3"),
                FindingKind::PairBroken,
                Names::Paths(&[("node-2", "node-3"), ("node-3", "node-2")]),
            )
            .cause(Cause::Says(
                "on flannel.1 points to 198.18.1.99, node-3's InternalIP is 198.18.0.3",
            )),
            Case::new(
                Fault::route_del("node-3", "node-1"),
                FindingKind::PairBroken,
                Names::Paths(&[("node-1", "node-3"), ("node-3", "node-1")]),
            )
            .cause(Cause::Says(
                "node-3 has no route to 10.244.1.0/24 (node-1's pod CIDR)",
            )),
            // host-gw's counterpart of fdb-stale: node-2's route to node-3's
            // pods points at an address no node has.
            Case::new(
                Fault::route_stale("node-2", "node-3"),
                FindingKind::PairBroken,
                Names::Paths(&[("node-2", "node-3"), ("node-3", "node-2")]),
            )
            .cause(Cause::Says(
                "node-2's route to 10.244.3.0/24 (node-3's pod CIDR) goes via 198.18.1.99, node-3's InternalIP is 198.18.0.3",
            )),
            // One pod, not a node: node-1 reaches node-3's agent, not its
            // companion; node-2 reaches both.
            Case::new(
                Fault::pod_blackhole("node-1", "node-3"),
                FindingKind::PodUnreachable,
                Names::Paths(&[("node-1", "node-3")]),
            )
            .evidence("pod netmatrix-companion-node-3 (10.244.3.3): no echo answered")
            .cause(Cause::Says("node-1 has a blackhole route to 10.244.3.3/32")),
        ],
    )
    .await;
}
in_overlays!(path_faults_are_named);

/// Two groups need four nodes to be told from an isolated node.
async fn partition_names_both_groups(overlay: Overlay) {
    run_catalog(
        overlay,
        4,
        vec![Case::new(
            Fault::partition(&["node-1", "node-2"]),
            FindingKind::Partition,
            Names::Groups(&[&["node-1", "node-2"], &["node-3", "node-4"]]),
        )],
    )
    .await;
}
in_overlays!(partition_names_both_groups);

/// Loss, MTU, and where they are: one lossy node is named once (not its
/// peers, which share its lossy paths), two lossy nodes are both named,
/// and loss on the node's own link is said to be the node network.
async fn quality_faults_are_named(overlay: Overlay) {
    let nodes = 4;
    let lab = healthy_lab(overlay, nodes).await;
    let cases = vec![
        Case::new(
            Fault::loss("node-2", 30),
            FindingKind::PacketLoss,
            Names::Nodes(&["node-2"]),
        )
        .check(|s| {
            said(
                s,
                FindingKind::PacketLoss,
                "pod traffic to and from node-2 loses packets",
            )
        })
        .cause(Cause::Unknown),
        Case::new(
            Fault::underlay_loss("node-3", 20),
            FindingKind::PacketLoss,
            Names::Nodes(&["node-3"]),
        )
        .check(|s| said(s, FindingKind::PacketLoss, "on the node network itself")),
        Case::new(
            Fault::mtu("node-2"),
            FindingKind::MtuMismatch,
            Names::Nodes(&["node-2"]),
        )
        .cause(Cause::Unknown),
        Case::new(
            Fault::mtu_lower("node-3", 1200),
            FindingKind::MtuMismatch,
            Names::Nodes(&["node-3"]),
        )
        .cause(Cause::Says(
            "node-3: flannel.1 MTU is 1200, 1450 on the other nodes",
        )),
        // One node's link set apart from the network's MTU: its host paths
        // lose full-size packets too, so the node network is named, and the
        // link (found by the route to the other nodes) is the cause.
        Case::new(
            Fault::underlay_mtu("node-3", 1300),
            FindingKind::MtuMismatch,
            Names::Nodes(&["node-3"]),
        )
        .check(|s| said(s, FindingKind::MtuMismatch, "on the node network itself"))
        .cause(Cause::Says(
            "node-3: eth0 (its link to the other nodes) MTU is 1300, 1500 on the other nodes",
        )),
    ];
    run_cases(&lab, nodes, &cases).await;

    // Two lossy nodes: each named, nobody else, the path between them
    // (lossy at both ends) not made a third finding.
    lab.fault(Fault::loss("node-2", 30))
        .expect("loss on node-2");
    lab.fault(Fault::loss("node-4", 30))
        .expect("loss on node-4");
    let start = Instant::now();
    let lossy = |f: &Finding| {
        f.kind == FindingKind::PacketLoss && (f.nodes == ["node-2"] || f.nodes == ["node-4"])
    };
    let named = |s: &Snapshot, node: &str| {
        s.findings
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::PacketLoss && f.nodes == [node])
    };
    let snap = watch(&lab, "packet-loss on node-2 and node-4", lossy, |s| {
        named(s, "node-2") && named(s, "node-4")
    })
    .await;
    eprintln!(
        "two lossy nodes named in {:.1?}\n{}",
        start.elapsed(),
        view::render(&snap.matrix, &snap.findings)
    );
    let hold = Instant::now();
    watch(&lab, "both lossy nodes to hold", lossy, |s| {
        assert!(
            named(s, "node-2") && named(s, "node-4"),
            "a lossy node's finding went away"
        );
        hold.elapsed() >= Duration::from_secs(4)
    })
    .await;
    lab.heal().expect("heal");
    watch(&lab, "no findings after healing both", lossy, |s| {
        healthy(s, nodes)
    })
    .await;
    lab.down().await;
}
in_overlays!(quality_faults_are_named);

/// Asserts the finding of `kind` says `text` in its summary.
fn said(s: &Snapshot, kind: FindingKind, text: &str) {
    let f = s
        .findings
        .findings
        .iter()
        .find(|f| f.kind == kind)
        .expect("the finding");
    assert!(
        f.summary.contains(text),
        "{kind} should say {text:?}, says {:?}",
        f.summary
    );
}

async fn service_faults_are_named(overlay: Overlay) {
    run_catalog(
        overlay,
        3,
        vec![
            Case::new(
                Fault::dnat("node-2"),
                FindingKind::ClusteripBroken,
                Names::Nodes(&["node-2"]),
            ),
            Case::new(
                Fault::service_route("node-3"),
                FindingKind::ClusteripBroken,
                Names::Nodes(&["node-3"]),
            )
            .evidence("network is unreachable")
            .check(service_route_evidence),
            Case::new(
                Fault::apiserver_block("node-2"),
                FindingKind::ApiserverUnreachable,
                Names::Nodes(&["node-2"]),
            ),
            // One Service's rule stale on one node: that Service there,
            // nothing else (its other Services pass).
            Case::new(
                Fault::stale_service("node-3"),
                FindingKind::ServiceUnreachable,
                Names::Nodes(&["node-3"]),
            )
            .evidence("node-3 -> clusterip/companions 10.96.0.40:9091"),
        ],
    )
    .await;
}
in_overlays!(service_faults_are_named);

/// One protocol dropped between two nodes' pods, the others passing: the
/// protocol is named as filtered (information), never a broken path.
async fn protocol_filters_are_named(overlay: Overlay) {
    run_catalog(
        overlay,
        3,
        vec![
            Case::new(
                Fault::icmp_drop("node-1", "node-3"),
                FindingKind::IcmpFiltered,
                // One finding per source node; node-3's names node-1 too.
                Names::Paths(&[("node-1", "node-3")]),
            )
            .evidence("node-1 -> node-3: ICMP failed, TCP ok, UDP ok"),
            Case::new(
                Fault::tcp_drop("node-2", "node-3"),
                FindingKind::TcpFiltered,
                Names::Paths(&[("node-3", "node-2")]),
            )
            .evidence("node-3 -> node-2: ICMP ok, TCP failed, UDP ok"),
        ],
    )
    .await;
}
in_overlays!(protocol_filters_are_named);

/// The field's error verbatim in node-3's API server column, its pod
/// traffic untouched.
fn service_route_evidence(snap: &Snapshot) {
    let r = row(&snap.matrix, "node-3").expect("node-3 row");
    let api = r.check("apiserver").expect("apiserver column");
    assert_eq!(api.status, Status::Failed);
    let err = api.last_error.as_ref().expect("apiserver error");
    assert_eq!(err.kind, ErrorKind::Unreachable, "{err}");
    assert!(
        err.message
            .to_lowercase()
            .contains("network is unreachable"),
        "{err}"
    );
    assert!(
        r.cells.iter().all(|c| c.status == Status::Ok),
        "node-3's pod cells should stay ok:\n{}",
        view::render_matrix(&snap.matrix)
    );
}

async fn dns_faults_are_named(overlay: Overlay) {
    run_catalog(
        overlay,
        3,
        vec![
            Case::new(
                Fault::dns_stop(),
                FindingKind::DnsFailure,
                Names::Including("node-2"),
            ),
            Case::new(
                Fault::dns_servfail(),
                FindingKind::DnsFailure,
                Names::Including("node-2"),
            )
            .evidence("servfail"),
            // The agent pod is older than the negative TTL (30 s), so its
            // missing record is stale at once, not pending.
            Case::new(
                Fault::dns_hide("node-3"),
                FindingKind::DnsStale,
                Names::Including("node-3"),
            )
            .evidence("10.244.3.2"),
        ],
    )
    .await;
}
in_overlays!(dns_faults_are_named);

async fn node_and_agent_faults_are_named(overlay: Overlay) {
    run_catalog(
        overlay,
        3,
        vec![
            Case::new(
                Fault::underlay_cut("node-3"),
                FindingKind::UnderlayBroken,
                Names::Nodes(&["node-3"]),
            )
            .recovers_through(match overlay {
                // When the cut outlasts the BGP hold time (9 s), the
                // sessions with node-3 end and its routes are withdrawn.
                // When the link is back, node-3's pods stay cut off until
                // BIRD has re-established them (1 to 5 s later):
                // node-isolated, as it is.
                Overlay::Bgp => &[(FindingKind::NodeIsolated, &["node-3"])],
                Overlay::Vxlan | Overlay::HostGw => &[],
            }),
            Case::new(
                Fault::kill_agent("node-3"),
                FindingKind::AgentMissing,
                Names::Nodes(&["node-3"]),
            ),
        ],
    )
    .await;
}
in_overlays!(node_and_agent_faults_are_named);

/// Three ways a node's pods lose all traffic off the node (a kernel
/// setting, a firewall policy, a device). Its pod agent cannot report
/// either; the host agent relays its report when it can reach it, and
/// says the node itself is up when it cannot (bridge down).
async fn pods_cut_off_their_node_are_named_with_host_agents(overlay: Overlay) {
    run_catalog(
        overlay,
        3,
        vec![
            Case::new(
                Fault::forwarding_off("node-2"),
                FindingKind::NodeIsolated,
                Names::Nodes(&["node-2"]),
            )
            .evidence("relayed by node-2's host agent")
            .cause(Cause::Says("node-2: net.ipv4.ip_forward = 0")),
            Case::new(
                Fault::forward_policy_drop("node-2"),
                FindingKind::NodeIsolated,
                Names::Nodes(&["node-2"]),
            )
            .evidence("relayed by node-2's host agent")
            .cause(Cause::Unknown),
            Case::new(
                Fault::bridge_down("node-2"),
                FindingKind::NodeIsolated,
                Names::Nodes(&["node-2"]),
            )
            .evidence("node-2's host-network agent reports")
            .cause(Cause::Says("node-2: bridge cni0 is down")),
        ],
    )
    .await;
}
in_overlays!(pods_cut_off_their_node_are_named_with_host_agents);

/// The same without host agents: the API says the node is Ready and its
/// agent pod Running, so the silence is the node's pod network.
async fn pods_cut_off_their_node_are_named_without_host_agents(overlay: Overlay) {
    let api = "the API says node-2 is Ready (its kubelet reaches the control plane) and its agent pod is Running";
    run_catalog_in(
        LabConfig {
            host_agents: false,
            ..config(overlay, 3)
        },
        vec![
            Case::new(
                Fault::forwarding_off("node-2"),
                FindingKind::NodeIsolated,
                Names::Nodes(&["node-2"]),
            )
            .evidence(api)
            .cause(Cause::Unknown),
            Case::new(
                Fault::forward_policy_drop("node-2"),
                FindingKind::NodeIsolated,
                Names::Nodes(&["node-2"]),
            )
            .evidence(api)
            .cause(Cause::Unknown),
            Case::new(
                Fault::bridge_down("node-2"),
                FindingKind::NodeIsolated,
                Names::Nodes(&["node-2"]),
            )
            .evidence(api)
            .cause(Cause::Unknown),
        ],
    )
    .await;
}
in_overlays!(pods_cut_off_their_node_are_named_without_host_agents);

/// Two unrelated faults at once: node-2's pods cut off and the cluster DNS
/// stopped. Both are named, and nothing else.
async fn a_second_fault_is_named_while_a_node_is_cut_off(overlay: Overlay) {
    let lab = healthy_lab(overlay, 3).await;
    lab.fault(Fault::forward_policy_drop("node-2"))
        .expect("inject the first fault");
    lab.fault(Fault::dns_stop())
        .expect("inject the second fault");
    let start = Instant::now();
    let isolated = |f: &Finding| f.kind == FindingKind::NodeIsolated && f.nodes == ["node-2"];
    let dns = |f: &Finding| {
        f.kind == FindingKind::DnsFailure
            && f.nodes.iter().any(|n| n == "node-1")
            && f.nodes.iter().any(|n| n == "node-3")
    };
    let allowed =
        |f: &Finding| matches!(f.kind, FindingKind::NodeIsolated | FindingKind::DnsFailure);
    let snap = watch(&lab, "node-isolated and dns-failure", allowed, |s| {
        s.findings.findings.iter().any(isolated) && s.findings.findings.iter().any(dns)
    })
    .await;
    eprintln!(
        "both named in {:.1?}\n{}",
        start.elapsed(),
        view::render(&snap.matrix, &snap.findings)
    );
    lab.heal().expect("heal");
    watch(&lab, "no findings after healing both", allowed, |s| {
        healthy(s, 3)
    })
    .await;
    lab.down().await;
}
in_overlays!(a_second_fault_is_named_while_a_node_is_cut_off);

/// An agent pod that cannot run: the API says why (its status, its
/// Events, its Node's Ready condition), and the finding says it. One node
/// each: a re-created agent pod keeps its node joining for the grace.
async fn agent_pods_that_cannot_run_are_named_with_their_reason(overlay: Overlay) {
    run_catalog(
        overlay,
        4,
        vec![
            Case::new(
                Fault::agent_sandbox_fails("node-2"),
                FindingKind::AgentMissing,
                Names::Nodes(&["node-2"]),
            )
            .evidence("FailedCreatePodSandBox")
            .check(|s| {
                said(
                    s,
                    FindingKind::AgentMissing,
                    "the CNI fails to set up its network",
                )
            }),
            Case::new(
                Fault::agent_image_pull("node-3"),
                FindingKind::AgentMissing,
                Names::Nodes(&["node-3"]),
            )
            .evidence("Failed to pull image")
            .check(|s| {
                said(
                    s,
                    FindingKind::AgentMissing,
                    "its image is not pulled (ImagePullBackOff)",
                )
            }),
            Case::new(
                Fault::cni_not_ready("node-4"),
                FindingKind::AgentMissing,
                Names::Nodes(&["node-4"]),
            )
            .evidence("cni plugin not initialized")
            .check(|s| {
                said(
                    s,
                    FindingKind::AgentMissing,
                    "node-4 is NotReady because its container runtime's network is not ready",
                )
            }),
        ],
    )
    .await;
}
in_overlays!(agent_pods_that_cannot_run_are_named_with_their_reason);

/// The aggregator frozen for 30 s, every report queued or backed off
/// meanwhile: when it resumes, no agent is blamed, and the cluster reads
/// healthy again once the agents have caught up.
async fn a_stalled_aggregator_blames_no_agent(overlay: Overlay) {
    let lab = healthy_lab(overlay, 3).await;
    lab.pause_aggregator(true).expect("freeze the aggregator");
    tokio::time::sleep(Duration::from_secs(30)).await;
    lab.pause_aggregator(false).expect("resume the aggregator");
    let resumed = Instant::now();
    let nothing = |_: &Finding| false;
    // Through the agents' longest backoff and then some.
    watch(
        &lab,
        "no finding after the aggregator's stall",
        nothing,
        |s| resumed.elapsed() >= Duration::from_secs(25) && healthy(s, 3),
    )
    .await;
    eprintln!(
        "healthy again without a finding, {:.1?} after resuming",
        resumed.elapsed()
    );
    lab.down().await;
}
in_overlays!(a_stalled_aggregator_blames_no_agent);

/// With `--node-conditions`, a finding shows on the Node where operators
/// look: the `NetmatrixPodNetwork` condition (reason, message with the
/// cause) while the fault lasts, an Event at raise and at clear, and the
/// condition back to False after the heal. Written by the aggregator
/// through the API (kube-rs PATCH and POST), read here from the state the
/// emulator serves.
async fn findings_show_on_the_node_with_node_conditions(overlay: Overlay) {
    let lab = healthy_lab_with(LabConfig {
        node_conditions: true,
        ..config(overlay, 3)
    })
    .await;
    let condition = |lab: &Lab, node: &str| {
        lab.cluster()
            .nodes()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(node))
            .and_then(|n| n.status?.conditions)
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "NetmatrixPodNetwork")
    };
    let events = |lab: &Lab, reason: &str| {
        lab.cluster()
            .events("default")
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.involved_object.name.as_deref() == Some("node-2")
                    && e.involved_object.kind.as_deref() == Some("Node")
            })
            .count()
    };
    assert!(
        condition(&lab, "node-2").is_none(),
        "a healthy node has no condition yet"
    );

    lab.fault(Fault::forwarding_off("node-2")).expect("fault");
    let start = Instant::now();
    let isolated = |f: &Finding| f.kind == FindingKind::NodeIsolated;
    watch(&lab, "the condition on node-2", isolated, |_| {
        condition(&lab, "node-2").is_some_and(|c| {
            c.status == "True"
                && c.reason.as_deref() == Some("NodeIsolated")
                && c.message
                    .as_deref()
                    .is_some_and(|m| m.contains("net.ipv4.ip_forward = 0"))
        }) && events(&lab, "NetmatrixPodNetworkProblem") == 1
    })
    .await;
    eprintln!(
        "condition and Event on node-2 after {:.1?}",
        start.elapsed()
    );
    assert!(condition(&lab, "node-1").is_none(), "node-1 is not named");

    lab.heal().expect("heal");
    watch(&lab, "the condition cleared", isolated, |s| {
        healthy(s, 3)
            && condition(&lab, "node-2").is_some_and(|c| c.status == "False")
            && events(&lab, "NetmatrixPodNetworkRecovered") == 1
    })
    .await;
    // The kubelet's own Ready condition is untouched by the merge.
    let node = lab
        .cluster()
        .nodes()
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some("node-2"))
        .expect("node-2");
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "True");
    lab.down().await;
}
in_overlays!(findings_show_on_the_node_with_node_conditions);

/// NetworkPolicy, applied through the API and enforced in the pods as a
/// CNI would: probes a policy denies are named as that policy, never as a
/// broken network; a policy that allows the probes leaves all ok.
async fn network_policies_are_understood(overlay: Overlay) {
    let nodes = 3;
    let lab = healthy_lab(overlay, nodes).await;
    let policy = |json: serde_json::Value| {
        serde_json::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(json)
            .expect("a NetworkPolicy")
    };
    let blocked_by = |name: &'static str, protocols: &'static str| {
        move |s: &Snapshot| {
            s.findings.findings.iter().any(|f| {
                f.kind == FindingKind::BlockedByPolicy
                    && f.summary.contains(name)
                    && f.summary.contains(protocols)
            })
        }
    };
    let only_policy = |f: &Finding| f.kind == FindingKind::BlockedByPolicy;

    // Default deny: every probe to the agents and companions is refused.
    lab.apply_network_policy(policy(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": "netmatrix"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    })))
    .expect("apply default-deny");
    let snap = watch(
        &lab,
        "blocked-by-policy naming default-deny",
        only_policy,
        blocked_by("netmatrix/default-deny", "ICMP, TCP, UDP"),
    )
    .await;
    eprintln!("{}", view::render(&snap.matrix, &snap.findings));
    let hold = Instant::now();
    watch(&lab, "default-deny to hold", only_policy, |_| {
        hold.elapsed() >= Duration::from_secs(4)
    })
    .await;
    // `validate` cannot vouch for paths it may not probe, and says why.
    let cli = netmatrix_lab::process::Binaries::locate(None)
        .expect("cargo build --workspace --bins")
        .cli;
    let url = lab.aggregator_url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(cli)
            .args(["validate", "--aggregator-url", &url, "--timeout", "4s"])
            .output()
    })
    .await
    .expect("join")
    .expect("run netmatrix validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("NetworkPolicy netmatrix/default-deny denies netmatrix's probes"),
        "{stdout}"
    );

    // A policy letting TCP to the agents' and companions' ports in: TCP
    // passes, ICMP and UDP stay denied and are said to be.
    lab.apply_network_policy(policy(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "tcp-in", "namespace": "netmatrix"},
        "spec": {"podSelector": {}, "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "netmatrix"}}}],
            "ports": [{"port": 9090}, {"port": 9091, "protocol": "TCP"}]
        }]}
    })))
    .expect("apply tcp-in");
    watch(
        &lab,
        "TCP through, ICMP and UDP blocked",
        only_policy,
        |s| {
            all_pod_cells_ok(&s.matrix, nodes)
                && blocked_by("netmatrix/default-deny", "ICMP, UDP")(s)
        },
    )
    .await;

    // The chart's policy: every protocol from the release's pods.
    lab.apply_network_policy(policy(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "netmatrix-agent", "namespace": "netmatrix"},
        "spec": {"podSelector": {}, "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "netmatrix"}}}]
        }]}
    })))
    .expect("apply the allowing policy");
    watch(&lab, "all ok under the allowing policy", only_policy, |s| {
        healthy(s, nodes)
    })
    .await;
    for name in ["netmatrix-agent", "tcp-in", "default-deny"] {
        lab.delete_network_policy(name).expect("delete");
    }
    tokio::task::spawn_blocking(move || lab.shutdown())
        .await
        .expect("shutdown");
}
in_overlays!(network_policies_are_understood);
