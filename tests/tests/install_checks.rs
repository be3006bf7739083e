//! What an operator of an installed cluster relies on, run against the lab:
//!
//! - `netmatrix validate` (the chart's `helm test` pod): exit 0 on a healthy
//!   network, 1 with the finding when a node is cut off, 2 when the
//!   aggregator cannot be reached;
//! - the chart's alert rules (`charts/netmatrix/files/netmatrix-alerts.yaml`)
//!   in a real Prometheus that scrapes the lab: healthy means no alert; a node
//!   cut off fires `NetmatrixNodeIsolated` for that node and nothing else;
//!   healing resolves it.
//!
//! Needs root, the binaries (`scripts/test` builds them) and Debian's
//! `prometheus` (`scripts/setup` installs it).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use netmatrix_api::{FindingKind, NodeState};
use netmatrix_lab::Fault;
use netmatrix_lab::lab::{Alert, LabPrometheus};
use netmatrix_lab::process::Binaries;

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
        for a in alerts.iter().filter(|a| a.state == "firing") {
            let node = a.labels.get("node").map_or("", String::as_str);
            fired.insert(format!("{}{{node={node}}}", a.name()));
        }
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

fn node_isolated(a: &Alert, node: &str) -> bool {
    a.name() == "NetmatrixNodeIsolated" && a.labels.get("node").map(String::as_str) == Some(node)
}

#[tokio::test]
async fn prometheus_fires_the_charts_alert_for_a_cut_off_node_and_resolves_it() {
    let lab = common::lab(true).await;
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

    wait_nodes_ready(&lab).await;

    // Healthy: a few evaluation rounds, and no alert at all (not even pending).
    let mut fired = BTreeSet::new();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let alerts = prometheus.alerts().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(alerts.is_empty(), "alerts on a healthy lab: {alerts:#?}");

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

    lab.heal().unwrap_or_else(|e| panic!("{e}"));
    let resolved = wait_alerts(
        &prometheus,
        "every alert resolved",
        Duration::from_secs(60),
        &mut fired,
        |alerts| alerts.is_empty(),
    )
    .await;
    eprintln!("healed -> no alert after {resolved:.1?}");
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
