//! What an operator of an installed cluster relies on, run against the lab:
//!
//! - `netmatrix validate` (the chart's `helm test` pod): exit 0 on a healthy
//!   network, 1 with the finding when a node is cut off, 2 when the
//!   aggregator cannot be reached;
//! - the chart's alert rules (`charts/netmatrix/files/netmatrix-alerts.yaml`)
//!   in a real Prometheus that scrapes the lab: healthy means no alert; a node
//!   cut off fires `NetmatrixNodeIsolated` for that node and nothing else;
//!   healing resolves it; a fault that comes and goes every few seconds is
//!   one held finding, marked flapping, and its alerts fire.
//!
//! Needs root, the binaries (`scripts/test` builds them) and Debian's
//! `prometheus` (`scripts/setup-test` installs it).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use netmatrix_api::{FindingKind, NodeState};
use netmatrix_lab::lab::{Alert, LabPrometheus};
use netmatrix_lab::process::Binaries;
use netmatrix_lab::{Fault, Lab};

/// The `netmatrix` binary, found like the lab's other binaries
/// (`NETMATRIX_BIN_DIR`, or next to the test executable).
fn cli_binary() -> PathBuf {
    Binaries::locate(None)
        .unwrap_or_else(|e| panic!("{e}: cargo build --workspace --bins"))
        .cli
}

/// Runs `netmatrix ARGS` (blocking, so on a blocking thread).
async fn netmatrix(args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(cli_binary());
    cmd.args(args);
    let shown = args.join(" ");
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap_or_else(|e| panic!("join: {e}"))
        .unwrap_or_else(|e| panic!("netmatrix {shown}: {e}"))
}

/// Runs `netmatrix validate --aggregator-url URL EXTRA`.
async fn validate(url: &str, extra: &[&str]) -> Output {
    let mut args = vec!["validate", "--aggregator-url", url];
    args.extend_from_slice(extra);
    netmatrix(&args).await
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn wait_nodes_ready(lab: &netmatrix_lab::Lab) {
    lab.wait_for("every node past its grace period", common::WAIT, |s| {
        s.matrix.rows.iter().all(|r| r.state == NodeState::Ready)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn validate_exits_0_healthy_1_broken_2_undecided() {
    let lab = common::lab(true).await;
    let url = lab.aggregator_url();

    let started = Instant::now();
    let healthy = validate(&url, &["--timeout", "60s"]).await;
    eprintln!(
        "validate on a fresh lab: {:.1?}\n{}",
        started.elapsed(),
        describe(&healthy)
    );
    assert_eq!(healthy.status.code(), Some(0), "{}", describe(&healthy));
    assert!(
        String::from_utf8_lossy(&healthy.stdout).starts_with("HEALTHY"),
        "{}",
        describe(&healthy)
    );

    // Findings are named once nodes are past their joining grace period.
    wait_nodes_ready(&lab).await;
    lab.fault(Fault::overlay_down("node-2"))
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let broken = validate(&url, &["--timeout", "60s", "--json"]).await;
    eprintln!("validate with node-2 cut off: {:.1?}", started.elapsed());
    assert_eq!(broken.status.code(), Some(1), "{}", describe(&broken));
    let verdict: serde_json::Value = serde_json::from_slice(&broken.stdout)
        .unwrap_or_else(|e| panic!("--json output: {e}\n{}", describe(&broken)));
    assert_eq!(verdict["outcome"], "failing", "{verdict:#}");
    let findings = verdict["last_round"]["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings in {verdict:#}"));
    assert_eq!(findings.len(), 1, "{verdict:#}");
    assert_eq!(
        findings[0]["kind"],
        FindingKind::NodeIsolated.as_str(),
        "{verdict:#}"
    );
    assert_eq!(findings[0]["nodes"], serde_json::json!(["node-2"]));

    // The terminal views, on the same broken lab.
    let findings = netmatrix(&["findings", "--aggregator-url", &url]).await;
    assert_eq!(findings.status.code(), Some(1), "{}", describe(&findings));
    let text = String::from_utf8_lossy(&findings.stdout);
    assert!(
        text.contains("node-isolated") && text.contains("hint: "),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "colour off a terminal: {text}");
    // The facts are asked of node-2's host agent once the condition holds
    // and come with its next report: the cause may follow the finding by a
    // round (said as "unknown so far" meanwhile).
    lab.wait_for("node-2's finding carries its cause", common::WAIT, |s| {
        s.findings
            .findings
            .iter()
            .any(|f| f.nodes == ["node-2"] && !f.cause.is_empty())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let explain = netmatrix(&["explain", "node-2", "--aggregator-url", &url]).await;
    assert_eq!(explain.status.code(), Some(0), "{}", describe(&explain));
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        text.contains("what it reaches (its row)\n  node-1          FAIL"),
        "{text}"
    );
    assert!(
        text.contains("findings naming it") || text.contains("node-isolated"),
        "{text}"
    );
    // Its own network, read by its host agent, and the cause found in it.
    assert!(
        text.contains("its network (read by its host agent)")
            && text.contains("flannel.1       vxlan     up")
            && text.contains("net.ipv4.ip_forward = 1"),
        "{text}"
    );
    assert!(
        text.contains("cause: node-2 has no neighbour entry for"),
        "{text}"
    );
    let unknown = netmatrix(&["explain", "node-9", "--aggregator-url", &url]).await;
    assert_eq!(unknown.status.code(), Some(2), "{}", describe(&unknown));
    let matrix = netmatrix(&["matrix", "--aggregator-url", &url]).await;
    assert_eq!(matrix.status.code(), Some(0), "{}", describe(&matrix));
    assert!(
        String::from_utf8_lossy(&matrix.stdout).contains("node-2     FAIL       ok         FAIL"),
        "{}",
        describe(&matrix)
    );

    // Nothing listens on port 1 of loopback.
    let unreachable = validate("http://127.0.0.1:1", &["--timeout", "3s"]).await;
    assert_eq!(
        unreachable.status.code(),
        Some(2),
        "{}",
        describe(&unreachable)
    );
    assert!(
        String::from_utf8_lossy(&unreachable.stdout).contains("cannot reach the aggregator"),
        "{}",
        describe(&unreachable)
    );

    tokio::task::spawn_blocking(move || lab.shutdown())
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

/// The chart's rules file, which the PrometheusRule embeds.
fn alert_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/netmatrix/files/netmatrix-alerts.yaml")
}

/// Polls Prometheus's alerts until `done` holds; every alert seen firing is
/// added to `fired`.
async fn wait_alerts(
    prometheus: &LabPrometheus,
    what: &str,
    timeout: Duration,
    fired: &mut BTreeSet<String>,
    done: impl Fn(&[Alert]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let alerts = prometheus
            .alerts()
            .await
            .unwrap_or_else(|e| panic!("GET alerts: {e}"));
        record_firing(&alerts, fired);
        if done(&alerts) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; alerts: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Heals the lab and waits until no alert is left.
async fn heal_until_resolved(lab: &Lab, prometheus: &LabPrometheus, fired: &mut BTreeSet<String>) {
    lab.heal().unwrap_or_else(|e| panic!("{e}"));
    let resolved = wait_alerts(
        prometheus,
        "every alert resolved",
        Duration::from_secs(60),
        fired,
        |alerts| alerts.is_empty(),
    )
    .await;
    eprintln!("healed -> no alert after {resolved:.1?}");
}

/// Adds every firing alert, as `NAME{node=NODE}`, to `fired`.
fn record_firing(alerts: &[Alert], fired: &mut BTreeSet<String>) {
    for a in alerts.iter().filter(|a| a.state == "firing") {
        let node = a.labels.get("node").map_or("", String::as_str);
        fired.insert(format!("{}{{node={node}}}", a.name()));
    }
}

fn node_isolated(a: &Alert, node: &str) -> bool {
    a.name() == "NetmatrixNodeIsolated" && a.labels.get("node").map(String::as_str) == Some(node)
}

/// A CNI broken from the first second (node-2's overlay down before any
/// node is past its joining grace): right after an install every node is
/// new, so the aggregator judges them, and validate waits for the finding
/// it is told is pending instead of answering with bare cells.
#[tokio::test]
async fn validate_names_a_failure_present_from_the_first_second() {
    let lab = common::lab(true).await;
    lab.fault(Fault::overlay_down("node-2"))
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let broken = validate(&lab.aggregator_url(), &["--timeout", "60s", "--json"]).await;
    let states: Vec<String> = match lab.snapshot().await {
        Ok(s) => s
            .matrix
            .rows
            .iter()
            .map(|r| format!("{} {:?}", r.node, r.state))
            .collect(),
        Err(e) => vec![e.to_string()],
    };
    eprintln!(
        "validate on a lab broken from its first second: {:.1?}, nodes then: {states:?}",
        started.elapsed()
    );
    assert_eq!(broken.status.code(), Some(1), "{}", describe(&broken));
    let verdict: serde_json::Value = serde_json::from_slice(&broken.stdout)
        .unwrap_or_else(|e| panic!("--json output: {e}\n{}", describe(&broken)));
    let findings = verdict["last_round"]["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings in {verdict:#}"));
    assert_eq!(findings.len(), 1, "{verdict:#}");
    assert_eq!(findings[0]["kind"], "node-isolated", "{verdict:#}");
    assert_eq!(findings[0]["nodes"], serde_json::json!(["node-2"]));
    tokio::task::spawn_blocking(move || lab.shutdown())
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

/// A real Prometheus with the chart's rules, every target up, on a lab
/// that is healthy with Ready nodes and shows no alert at all.
async fn quiet_prometheus(lab: &netmatrix_lab::Lab) -> LabPrometheus {
    let rules = alert_rules();
    let prometheus = lab
        .start_prometheus(&[rules.as_path()])
        .await
        .unwrap_or_else(|e| panic!("prometheus: {e}"));

    // Every target scraped: the aggregator, and the agents (pod and host
    // network) of the three nodes.
    let per_node = if lab.config().host_agents { 2 } else { 1 };
    let expected_targets = 1 + per_node * lab.topology().nodes.len();
    let started = Instant::now();
    loop {
        let targets = prometheus
            .targets()
            .await
            .unwrap_or_else(|e| panic!("GET targets: {e}"));
        if targets.len() == expected_targets && targets.iter().all(|t| t.health == "up") {
            break;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "targets not all up: {targets:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    lab.wait_for("a healthy matrix", common::WAIT, |s| {
        s.findings.findings.is_empty() && netmatrix_lab::view::all_pod_cells_ok(&s.matrix, 3)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    wait_nodes_ready(lab).await;

    // Healthy: a few evaluation rounds, and no alert at all (not even pending).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let alerts = prometheus.alerts().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(alerts.is_empty(), "alerts on a healthy lab: {alerts:#?}");
    prometheus
}

#[tokio::test]
async fn prometheus_fires_the_charts_alert_for_a_cut_off_node_and_resolves_it() {
    let lab = common::lab(true).await;
    let prometheus = quiet_prometheus(&lab).await;
    let mut fired = BTreeSet::new();

    lab.fault(Fault::overlay_down("node-2"))
        .unwrap_or_else(|e| panic!("{e}"));
    let firing = wait_alerts(
        &prometheus,
        "NetmatrixNodeIsolated{node=node-2} firing",
        Duration::from_secs(150),
        &mut fired,
        |alerts| {
            alerts
                .iter()
                .any(|a| node_isolated(a, "node-2") && a.state == "firing")
        },
    )
    .await;
    eprintln!(
        "overlay-down node-2 -> NetmatrixNodeIsolated firing after {firing:.1?} (rule for: 1m)"
    );

    heal_until_resolved(&lab, &prometheus, &mut fired).await;
    assert_eq!(
        fired,
        BTreeSet::from(["NetmatrixNodeIsolated{node=node-2}".to_owned()]),
        "alerts that fired besides node-2's isolation"
    );

    drop(prometheus);
    tokio::task::spawn_blocking(move || lab.shutdown())
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

/// A fault that comes and goes every few seconds for a minute (node-2's
/// pods cut off the node for 6 s, back for 6 s): one finding, held through
/// the gaps and marked flapping, on which the chart's alerts fire (the
/// finding's own and `NetmatrixFindingFlapping`); healing clears both.
#[tokio::test]
async fn a_flapping_fault_is_one_held_finding_and_its_alerts_fire() {
    const HALF_CYCLE: Duration = Duration::from_secs(6);
    let lab = common::lab(true).await;
    let prometheus = quiet_prometheus(&lab).await;
    let mut fired = BTreeSet::new();
    let started = Instant::now();
    let mut broken = false;
    let mut held_since: Option<u64> = None;
    let mut raises = 0;
    let mut was_raised = false;
    loop {
        let elapsed = started.elapsed();
        let break_now = (elapsed.as_millis() / HALF_CYCLE.as_millis()).is_multiple_of(2);
        if break_now != broken {
            if break_now {
                lab.fault(Fault::forward_policy_drop("node-2"))
                    .unwrap_or_else(|e| panic!("{e}"));
            } else {
                lab.heal().unwrap_or_else(|e| panic!("{e}"));
            }
            broken = break_now;
        }
        if let Ok(snap) = lab.snapshot().await {
            let isolated = snap
                .findings
                .findings
                .iter()
                .find(|f| f.kind == FindingKind::NodeIsolated && f.nodes == ["node-2"]);
            let others: Vec<_> = snap
                .findings
                .findings
                .iter()
                .filter(|f| !(f.kind == FindingKind::NodeIsolated && f.nodes == ["node-2"]))
                .map(|f| format!("{} {:?}", f.kind, f.nodes))
                .collect();
            assert!(others.is_empty(), "other findings: {others:?}");
            if isolated.is_some() && !was_raised {
                raises += 1;
            }
            was_raised = isolated.is_some();
            match (isolated, held_since) {
                (Some(f), None) if f.flapping => held_since = Some(f.since_unix_ms),
                (Some(f), Some(since)) => {
                    assert!(f.flapping, "no longer marked flapping: {f:?}");
                    assert_eq!(f.since_unix_ms, since, "the held finding changed");
                }
                (None, Some(_)) => panic!(
                    "the flapping finding cleared during a gap after {:.1?}",
                    started.elapsed()
                ),
                _ => {}
            }
        }
        let alerts = prometheus.alerts().await.unwrap_or_else(|e| panic!("{e}"));
        record_firing(&alerts, &mut fired);
        let firing = |name: &str| {
            alerts.iter().any(|a| {
                a.name() == name
                    && a.state == "firing"
                    && a.labels.get("node").map(String::as_str) == Some("node-2")
            })
        };
        if firing("NetmatrixNodeIsolated") && firing("NetmatrixFindingFlapping") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "alerts did not fire on the flapping fault; raised {raises} time(s), held since {held_since:?}; alerts: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "flapping forward-policy-drop node-2 ({HALF_CYCLE:?} on, {HALF_CYCLE:?} off): raised {raises} time(s), both alerts firing after {:.1?}",
        started.elapsed()
    );
    assert!(held_since.is_some(), "never marked flapping");
    assert!(raises <= 2, "raised {raises} times: not held");

    heal_until_resolved(&lab, &prometheus, &mut fired).await;
    assert_eq!(
        fired,
        BTreeSet::from([
            "NetmatrixFindingFlapping{node=node-2}".to_owned(),
            "NetmatrixNodeIsolated{node=node-2}".to_owned()
        ]),
    );
    drop(prometheus);
    tokio::task::spawn_blocking(move || lab.shutdown())
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}
