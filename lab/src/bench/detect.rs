//! `netmatrix-lab bench detect`: how long from a fault injected in the lab
//! to its finding in the aggregator's API, and from healing to a clean
//! bill, over several trials in one lab.
//!
//! Besides the two end-to-end figures, every trial splits the detection
//! along the pipeline, from the timestamps the aggregator publishes (agents,
//! aggregator and bench share the host's clock):
//!
//! - **evidence:** the first and the last pod row whose report shows a
//!   failed cell or check (receive time: the matrix's `generated_unix_ms`
//!   minus the row's `report_age_ms`), i.e. the agents' next round, the
//!   probe jitter, the echo timeout and the report POST;
//! - **condition:** the finding's `since_unix_ms`, the first evaluation
//!   round whose rules saw the condition (waiting for the aggregator's tick);
//! - **raised:** the `generated_unix_ms` of the first findings naming it
//!   (the hysteresis);
//! - **named:** when this bench's 50 ms poll saw it.
//!
//! The clearing likewise: the first matrix with every pod cell `ok` again,
//! then the first evaluation with no finding left.

use std::time::{Duration, Instant};

use crate::net::faults::{Arity, Fault, FaultKind};
use crate::view::all_pod_cells_ok;
use crate::{Lab, LabConfig};
use anyhow::{Context, bail};
use clap::Args;
use netmatrix_api::{Finding, FindingKind, Matrix, NodeState, Status};

use super::{markdown_table, median, min_max};

/// Detection latency: inject, wait for the finding, heal, wait for none.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Trials, one after the other in one lab.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// The fault to inject (`netmatrix-lab fault --help` says what each
    /// does); a fault on another overlay's machinery needs that `--overlay`.
    #[arg(long, value_enum, default_value_t = FaultKind::OverlayDown)]
    pub fault: FaultKind,
    /// The nodes the fault is about, as `netmatrix-lab fault` takes them
    /// (repeatable). Default: node-2 for one-node faults, node-2 and node-3
    /// for pairs, node-1 and node-2 for `partition`, none for cluster-wide
    /// faults.
    #[arg(long = "node", visible_alias = "on")]
    pub nodes_of_fault: Vec<String>,
    /// Nodes in the lab (`partition` needs 4).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// How nodes reach each other's pods (`bgp`: BIRD; its faults need it).
    #[arg(long, value_enum, default_value_t = crate::net::topology::Overlay::Vxlan)]
    pub overlay: crate::net::topology::Overlay,
    /// Agent and aggregator interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// A trial fails when its finding is not named (or cleared) within this.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Namespace prefix (`nm` + 4 to 6 hex digits); random by default.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Directory holding netmatrix-agent, netmatrix-aggregator and netmatrix
    /// (default: next to this binary).
    #[arg(long, env = "NETMATRIX_BIN_DIR")]
    pub bin_dir: Option<std::path::PathBuf>,
}

/// The finding a fault must produce (the failure catalog's pairs,
/// `tests/catalog.rs`).
pub fn expected_kind(fault: FaultKind) -> anyhow::Result<FindingKind> {
    Ok(match fault {
        FaultKind::OverlayDown
        | FaultKind::FdbFlush
        | FaultKind::ForwardingOff
        | FaultKind::ForwardPolicyDrop
        | FaultKind::BridgeDown
        | FaultKind::VtepDown
        | FaultKind::BirdStop
        | FaultKind::BgpWrongAddress => FindingKind::NodeIsolated,
        FaultKind::VxlanDrop => FindingKind::CrossNodeBroken,
        FaultKind::Partition => FindingKind::Partition,
        FaultKind::OneWay => FindingKind::AsymmetricPath,
        FaultKind::Pair
        | FaultKind::FdbStale
        | FaultKind::RouteDel
        | FaultKind::RouteStale
        | FaultKind::BgpBlock => FindingKind::PairBroken,
        FaultKind::PodBlackhole => FindingKind::PodUnreachable,
        FaultKind::Mtu | FaultKind::MtuLower | FaultKind::UnderlayMtu => FindingKind::MtuMismatch,
        FaultKind::ServiceRoute | FaultKind::Dnat => FindingKind::ClusteripBroken,
        FaultKind::ApiserverBlock => FindingKind::ApiserverUnreachable,
        FaultKind::StaleService => FindingKind::ServiceUnreachable,
        FaultKind::IcmpDrop => FindingKind::IcmpFiltered,
        FaultKind::TcpDrop => FindingKind::TcpFiltered,
        FaultKind::DnsStop | FaultKind::DnsServfail => FindingKind::DnsFailure,
        FaultKind::DnsHide => FindingKind::DnsStale,
        FaultKind::UnderlayCut => FindingKind::UnderlayBroken,
        FaultKind::KillAgent
        | FaultKind::AgentSandboxFails
        | FaultKind::AgentImagePull
        | FaultKind::CniNotReady => FindingKind::AgentMissing,
        // Raised from a loss window, not from the next rounds: its latency
        // is the window's, not the pipeline's.
        FaultKind::Loss | FaultKind::UnderlayLoss => {
            bail!("bench detect does not time `{fault}` (a windowed finding)")
        }
    })
}

/// The nodes a fault is applied to when `--node` is not given.
pub fn default_nodes(fault: FaultKind) -> Vec<String> {
    let nodes: &[&str] = match fault.arity() {
        Arity::None => &[],
        Arity::One => &["node-2"],
        Arity::Two => &["node-2", "node-3"],
        Arity::Group => &["node-1", "node-2"],
    };
    nodes.iter().map(|n| (*n).to_owned()).collect()
}

/// `q`-quantile (0..=1) by nearest rank.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank - 1).copied()
}

/// Whether `finding` is about the fault's nodes (cluster-wide faults, and
/// findings naming no node, match any).
fn names(finding: &Finding, on: &[String]) -> bool {
    on.is_empty() || finding.nodes.is_empty() || on.iter().any(|n| finding.nodes.contains(n))
}

/// Seconds from `t0` to `t` (both unix ms; negative when `t` is earlier).
fn secs_after(t0: u64, t: u64) -> f64 {
    (t as f64 - t0 as f64) / 1000.0
}

/// Pod rows showing a failed cell or check, with their report's receive
/// time (unix ms).
fn failing_rows(m: &Matrix) -> Vec<(String, u64)> {
    m.rows
        .iter()
        .filter(|r| {
            let failed = |s: Status| s == Status::Failed;
            r.cells.iter().any(|c| failed(c.status))
                || r.services.iter().chain(&r.dns).any(|c| failed(c.status))
        })
        .filter_map(|r| {
            let age = r.report_age_ms?;
            let received = m.generated_unix_ms as f64 - age;
            Some((r.node.clone(), received.max(0.0) as u64))
        })
        .collect()
}

/// One detection, seconds after the injection.
#[derive(Debug, Clone, Copy)]
struct Detection {
    /// First and last pod row whose report showed a failure.
    evidence: Option<(f64, f64)>,
    /// The first evaluation round that saw the condition (`since`).
    condition: f64,
    /// The evaluation round that raised it.
    raised: f64,
    /// When the poll saw it.
    named: f64,
}

/// One clearing, seconds after healing.
#[derive(Debug, Clone, Copy)]
struct Clearing {
    /// First evaluation round whose matrix had every pod cell ok.
    cells_ok: Option<f64>,
    /// First evaluation round with no finding.
    cleared_round: f64,
    /// When the poll saw no finding.
    cleared: f64,
}

struct Poller<'a> {
    lab: &'a Lab,
    nodes: usize,
    timeout: Duration,
}

const POLL: Duration = Duration::from_millis(50);

impl Poller<'_> {
    /// Polls matrix and findings every 50 ms after the fault applied at
    /// `t0` (unix ms) until a `kind` finding naming `on` appears.
    async fn detection(
        &self,
        t0: u64,
        kind: FindingKind,
        on: &[String],
    ) -> anyhow::Result<Detection> {
        let start = Instant::now();
        let mut seen: Vec<(String, u64)> = Vec::new();
        loop {
            if let Ok(snap) = self.lab.snapshot().await {
                for (node, received) in failing_rows(&snap.matrix) {
                    if !seen.iter().any(|(n, _)| *n == node) {
                        seen.push((node, received));
                    }
                }
                if let Some(f) = snap
                    .findings
                    .findings
                    .iter()
                    .find(|f| f.kind == kind && names(f, on))
                {
                    let named = start.elapsed().as_secs_f64();
                    let received: Vec<f64> = seen.iter().map(|(_, t)| secs_after(t0, *t)).collect();
                    return Ok(Detection {
                        evidence: min_max(&received),
                        condition: secs_after(t0, f.since_unix_ms),
                        raised: secs_after(t0, snap.findings.generated_unix_ms),
                        named,
                    });
                }
            }
            if start.elapsed() > self.timeout {
                bail!("not named within {:?}", self.timeout);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls after healing at `t0` (unix ms) until no finding is left.
    async fn clearing(&self, t0: u64) -> anyhow::Result<Clearing> {
        let start = Instant::now();
        let mut cells_ok = None;
        loop {
            if let Ok(snap) = self.lab.snapshot().await {
                if cells_ok.is_none() && all_pod_cells_ok(&snap.matrix, self.nodes) {
                    cells_ok = Some(secs_after(t0, snap.matrix.generated_unix_ms));
                }
                if snap.findings.findings.is_empty() {
                    return Ok(Clearing {
                        cells_ok,
                        cleared_round: secs_after(t0, snap.findings.generated_unix_ms),
                        cleared: start.elapsed().as_secs_f64(),
                    });
                }
            }
            if start.elapsed() > self.timeout {
                bail!("findings not cleared within {:?}", self.timeout);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `{:.2}` or `-`.
fn secs(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
}

/// Median, min, p90, max of `v`, formatted.
fn summary(label: &str, v: &[f64]) -> Vec<String> {
    let (lo, hi) = min_max(v).unzip();
    let mut row = vec![label.to_owned(), v.len().to_string()];
    row.extend([median(v), lo, quantile(v, 0.9), hi].map(secs));
    row
}

pub async fn run(args: DetectArgs) -> anyhow::Result<()> {
    let kind = expected_kind(args.fault)?;
    if let Some(why) = args.fault.not_with(args.overlay) {
        anyhow::bail!(
            "fault {} does not exist with --overlay {}: {why}",
            args.fault,
            args.overlay
        );
    }
    let on = if args.nodes_of_fault.is_empty() {
        default_nodes(args.fault)
    } else {
        args.nodes_of_fault.clone()
    };
    let fault = Fault::parse(args.fault, &on).context("fault arguments")?;
    // The lab's Drop removes it on every exit path (error, panic, signal).
    let lab = Lab::up(LabConfig {
        nodes: args.nodes,
        overlay: args.overlay,
        interval: args.interval,
        prefix: args.prefix.clone(),
        bin_dir: args.bin_dir.clone(),
        ..LabConfig::default()
    })
    .await
    .context("lab up")?;
    println!(
        "bench detect: lab {} up in {:.1?}, fault `{fault}`, expecting `{kind}`",
        lab.prefix(),
        lab.up_took()
    );

    // Past the node grace too: a joining node is shown, not judged.
    let nodes = args.nodes;
    lab.wait_for(
        "a healthy lab of Ready nodes, every pod cell ok",
        Duration::from_secs(120),
        |s| {
            s.findings.findings.is_empty()
                && all_pod_cells_ok(&s.matrix, nodes)
                && s.matrix.rows.iter().all(|r| r.state == NodeState::Ready)
        },
    )
    .await
    .context("a healthy lab before the first trial")?;

    let poller = Poller {
        lab: &lab,
        nodes,
        timeout: args.timeout,
    };
    let mut rows = Vec::new();
    let mut detections: Vec<Detection> = Vec::new();
    let mut clearings: Vec<Clearing> = Vec::new();
    let mut failures = Vec::new();
    for trial in 1..=args.trials {
        // Out of phase with the rounds, so that trials sample all of it.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..1000))).await;
        let t0 = netmatrix_runtime::now_unix_ms();
        lab.fault(fault.clone()).context("inject")?;
        let detection = poller.detection(t0, kind, &on).await;
        let t1 = netmatrix_runtime::now_unix_ms();
        lab.heal().context("heal")?;
        // A lab that does not clear is in no state for the next trial.
        let clearing = poller
            .clearing(t1)
            .await
            .with_context(|| format!("trial {trial}: after healing `{fault}`"))?;
        let mut row = vec![trial.to_string()];
        match detection {
            Ok(d) => {
                tracing::info!(trial, named = d.named, cleared = clearing.cleared, "trial");
                row.extend([
                    secs(d.evidence.map(|e| e.0)),
                    secs(d.evidence.map(|e| e.1)),
                    secs(Some(d.condition)),
                    secs(Some(d.raised)),
                    format!("**{:.2}**", d.named),
                ]);
                detections.push(d);
            }
            Err(e) => {
                tracing::warn!(trial, error = %e, "trial timed out");
                row.extend(["-", "-", "-", "-", "**timeout**"].map(String::from));
                failures.push(format!("trial {trial}: `{kind}` after `{fault}`: {e}"));
            }
        }
        row.extend([
            secs(clearing.cells_ok),
            secs(Some(clearing.cleared_round)),
            format!("**{:.2}**", clearing.cleared),
        ]);
        rows.push(row);
        clearings.push(clearing);
    }
    lab.down().await;

    println!(
        "\n### Fault to finding: `{fault}` -> `{kind}`, {} nodes, interval {}, {} trials\n",
        args.nodes,
        humantime::format_duration(args.interval),
        args.trials
    );
    println!(
        "Seconds after injecting (detection) and after healing (clearing); \
         evidence = receive time of the first and last agent report showing a failure, \
         condition = the finding's `since` (first evaluation that saw it), \
         raised = `generated_unix_ms` of the first findings naming it.\n"
    );
    print!(
        "{}",
        markdown_table(
            &[
                "trial",
                "first evidence",
                "last evidence",
                "condition",
                "raised",
                "named",
                "cells ok",
                "cleared round",
                "cleared",
            ],
            &rows
        )
    );

    let named: Vec<f64> = detections.iter().map(|d| d.named).collect();
    let cleared: Vec<f64> = clearings.iter().map(|c| c.cleared).collect();
    println!();
    print!(
        "{}",
        markdown_table(
            &["seconds", "n", "median", "min", "p90", "max"],
            &[
                summary("fault -> named", &named),
                summary("heal -> cleared", &cleared)
            ]
        )
    );

    // Where the detection time goes, stage by stage (medians of the
    // per-trial differences).
    let stage = |f: &dyn Fn(&Detection) -> Option<f64>| -> Vec<f64> {
        detections.iter().filter_map(f).collect()
    };
    let stages = [
        (
            "fault -> last agent report showing it (round wait, jitter, echo timeout, POST)",
            stage(&|d| d.evidence.map(|e| e.1)),
        ),
        (
            "last report -> first evaluation with the condition (aggregator tick)",
            stage(&|d| d.evidence.map(|e| d.condition - e.1)),
        ),
        (
            "condition -> raised (hysteresis)",
            stage(&|d| Some(d.raised - d.condition)),
        ),
        (
            "raised -> seen by the 50 ms poll",
            stage(&|d| Some(d.named - d.raised)),
        ),
    ];
    let stage_rows: Vec<Vec<String>> = stages.iter().map(|(l, v)| summary(l, v)).collect();
    println!();
    print!(
        "{}",
        markdown_table(
            &["stage (s)", "n", "median", "min", "p90", "max"],
            &stage_rows
        )
    );

    let med = median(&named);
    println!(
        "\ntarget: median fault -> named under 3 s: {} ({} s)",
        if med.is_some_and(|m| m < 3.0) {
            "met"
        } else {
            "MISSED"
        },
        secs(med)
    );
    if !failures.is_empty() {
        bail!(
            "{} of {} trials timed out:\n{}",
            failures.len(),
            args.trials,
            failures.join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v = [3.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(quantile(&v, 0.9), Some(9.0));
        assert_eq!(quantile(&v, 0.5), Some(5.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&v, 1.0), Some(10.0));
        assert_eq!(quantile(&[2.5], 0.9), Some(2.5));
        assert_eq!(quantile(&[1.0, f64::NAN, 2.0], 1.0), Some(2.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(median(&v), Some(5.5));
    }

    #[test]
    fn faults_map_to_their_findings() {
        for (fault, kind) in [
            (FaultKind::OverlayDown, FindingKind::NodeIsolated),
            (FaultKind::DnsStop, FindingKind::DnsFailure),
            (FaultKind::ApiserverBlock, FindingKind::ApiserverUnreachable),
            (FaultKind::OneWay, FindingKind::AsymmetricPath),
            (FaultKind::UnderlayCut, FindingKind::UnderlayBroken),
        ] {
            assert_eq!(expected_kind(fault).unwrap(), kind, "{fault}");
        }
        assert!(
            expected_kind(FaultKind::Loss).is_err(),
            "loss takes a window, not a bench"
        );
    }

    #[test]
    fn default_nodes_fit_every_timed_fault() {
        use clap::ValueEnum;
        for &fault in FaultKind::value_variants() {
            if expected_kind(fault).is_err() {
                continue;
            }
            let nodes = default_nodes(fault);
            assert!(
                Fault::parse(fault, &nodes).is_ok(),
                "{fault} with {nodes:?}"
            );
        }
        assert_eq!(default_nodes(FaultKind::DnsStop), Vec::<String>::new());
        assert_eq!(default_nodes(FaultKind::OverlayDown), ["node-2"]);
    }

    #[test]
    fn findings_name_the_fault_nodes() {
        let finding = |nodes: &[&str]| Finding {
            kind: FindingKind::NodeIsolated,
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            groups: Vec::new(),
            paths: Vec::new(),
            summary: String::new(),
            evidence: Vec::new(),
            hint: String::new(),
            since: String::new(),
            since_unix_ms: 0,
            flapping: false,
            cause: Vec::new(),
            facts_missing: Vec::new(),
        };
        let on = ["node-2".to_owned()];
        assert!(names(&finding(&["node-2"]), &on));
        assert!(!names(&finding(&["node-3"]), &on));
        assert!(names(&finding(&["node-3"]), &[]));
        assert!(names(&finding(&[]), &on));
    }

    #[test]
    fn failing_rows_carry_their_report_time() {
        let m: Matrix = serde_json::from_value(serde_json::json!({
            "generated_unix_ms": 10_000,
            "nodes": ["node-1", "node-2"],
            "rows": [
                {"node": "node-1", "reporting": true, "report_age_ms": 300.0,
                 "cells": [{"to": "node-1", "status": "ok"}, {"to": "node-2", "status": "failed"}]},
                {"node": "node-2", "reporting": true, "report_age_ms": 100.0,
                 "cells": [{"to": "node-1", "status": "ok"}, {"to": "node-2", "status": "ok"}]}
            ]
        }))
        .unwrap();
        assert_eq!(failing_rows(&m), [("node-1".to_owned(), 9_700)]);
        assert!((secs_after(9_000, 9_700) - 0.7).abs() < 1e-9);
        assert!((secs_after(9_700, 9_000) + 0.7).abs() < 1e-9);
    }
}
