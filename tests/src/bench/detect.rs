//! `netmatrix-lab bench detect`: how long from a fault injected in the lab
//! to its finding in the aggregator's API, and from healing to a clean
//! bill, over several trials in one lab.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use netmatrix_api::{Finding, FindingKind, NodeState};
use netmatrix_lab::faults::{Fault, FaultKind};
use netmatrix_lab::{Lab, LabConfig};

use super::{markdown_table, median, min_max};

/// Detection latency: inject, wait for the finding, heal, wait for none.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Trials, one after the other in one lab.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// The fault to inject (overlay-down, dns-stop, apiserver-block, one-way,
    /// pair, underlay-cut, service-route, dnat).
    #[arg(long, value_enum, default_value_t = FaultKind::OverlayDown)]
    pub fault: FaultKind,
    /// The fault's arguments (node names), as `netmatrix-lab fault` takes them.
    #[arg(long = "on", default_values_t = ["node-2".to_owned()])]
    pub on: Vec<String>,
    /// Nodes in the lab.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Agent and aggregator interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// A trial fails when its finding is not named (or cleared) within this.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Namespace prefix (`nm` + 4 to 6 hex digits); random by default.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Directory holding the netmatrix binaries.
    #[arg(long)]
    pub bin_dir: Option<std::path::PathBuf>,
}

/// The finding a fault must produce.
pub fn expected_kind(fault: FaultKind) -> anyhow::Result<FindingKind> {
    Ok(match fault {
        FaultKind::OverlayDown | FaultKind::FdbFlush => FindingKind::NodeIsolated,
        FaultKind::DnsStop | FaultKind::DnsServfail => FindingKind::DnsFailure,
        FaultKind::ApiserverBlock => FindingKind::ApiserverUnreachable,
        FaultKind::OneWay => FindingKind::AsymmetricPath,
        FaultKind::Pair => FindingKind::PairBroken,
        FaultKind::UnderlayCut => FindingKind::UnderlayBroken,
        FaultKind::ServiceRoute | FaultKind::Dnat => FindingKind::ClusteripBroken,
        other => bail!("bench detect does not know which finding `{other}` gives"),
    })
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

fn names(finding: &Finding, on: &[String]) -> bool {
    on.iter().any(|n| finding.nodes.contains(n)) || finding.nodes.is_empty()
}

pub async fn run(args: DetectArgs) -> anyhow::Result<()> {
    let kind = expected_kind(args.fault)?;
    let fault = Fault::parse(args.fault, &args.on).context("fault arguments")?;
    let lab = Lab::up(LabConfig {
        nodes: args.nodes,
        interval: args.interval,
        prefix: args.prefix.clone(),
        bin_dir: args.bin_dir.clone(),
        ..LabConfig::default()
    })
    .await
    .context("lab up")?;
    println!(
        "bench detect: lab {} up, fault `{fault}`, expecting `{kind}`",
        lab.prefix()
    );
    let poll = Duration::from_millis(50);
    let wait_until = |done: fn(&[Finding], FindingKind, &[String]) -> bool| {
        let (lab, on, timeout) = (&lab, &args.on, args.timeout);
        async move {
            let start = Instant::now();
            loop {
                if let Ok(f) = lab.findings().await
                    && done(&f.findings, kind, on)
                {
                    return Ok(start.elapsed());
                }
                if start.elapsed() > timeout {
                    bail!("not reached within {timeout:?}");
                }
                tokio::time::sleep(poll).await;
            }
        }
    };
    let named = |f: &[Finding], kind: FindingKind, on: &[String]| {
        f.iter().any(|f| f.kind == kind && names(f, on))
    };
    let clean = |f: &[Finding], _: FindingKind, _: &[String]| f.is_empty();

    // Past the node grace too: a joining node is shown, not judged.
    lab.wait_for(
        "a healthy lab of Ready nodes",
        Duration::from_secs(120),
        |s| {
            s.findings.findings.is_empty()
                && !s.matrix.rows.is_empty()
                && s.matrix
                    .rows
                    .iter()
                    .all(|r| r.reporting && r.state == NodeState::Ready)
        },
    )
    .await
    .context("a healthy lab before the first trial")?;

    let mut rows = Vec::new();
    let (mut detect, mut clear) = (Vec::new(), Vec::new());
    for trial in 1..=args.trials {
        // Out of phase with the rounds, so that trials sample all of it.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..1000))).await;
        lab.fault(fault.clone()).context("inject")?;
        let d = wait_until(named)
            .await
            .with_context(|| format!("trial {trial}: `{kind}` after `{fault}`"))?;
        lab.heal().context("heal")?;
        let c = wait_until(clean)
            .await
            .with_context(|| format!("trial {trial}: no findings after healing"))?;
        tracing::info!(trial, detect = ?d, clear = ?c, "trial done");
        detect.push(d.as_secs_f64());
        clear.push(c.as_secs_f64());
        rows.push(vec![
            trial.to_string(),
            format!("{:.2}", d.as_secs_f64()),
            format!("{:.2}", c.as_secs_f64()),
        ]);
    }
    lab.down().await;

    println!(
        "\n### Fault to finding: `{fault}` -> `{kind}`, {} nodes, interval {}, {} trials\n",
        args.nodes,
        humantime::format_duration(args.interval),
        args.trials
    );
    print!(
        "{}",
        markdown_table(&["trial", "named after s", "cleared after heal s"], &rows)
    );
    let summary = |v: &[f64]| -> Vec<String> {
        let (lo, hi) = min_max(v).unwrap_or((f64::NAN, f64::NAN));
        [median(v), Some(lo), quantile(v, 0.9), Some(hi)]
            .iter()
            .map(|x| x.map_or("-".into(), |x| format!("{x:.2}")))
            .collect()
    };
    let mut d = vec!["named (s)".to_owned()];
    d.extend(summary(&detect));
    let mut c = vec!["cleared (s)".to_owned()];
    c.extend(summary(&clear));
    println!();
    print!(
        "{}",
        markdown_table(&["", "median", "min", "p90", "max"], &[d, c])
    );
    let med = median(&detect).unwrap_or(f64::NAN);
    println!(
        "\ntarget: median under 3 s: {}",
        if med < 3.0 { "met" } else { "MISSED" }
    );
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
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn faults_map_to_their_findings() {
        assert_eq!(
            expected_kind(FaultKind::OverlayDown).unwrap(),
            FindingKind::NodeIsolated
        );
        assert_eq!(
            expected_kind(FaultKind::DnsStop).unwrap(),
            FindingKind::DnsFailure
        );
        assert!(
            expected_kind(FaultKind::Loss).is_err(),
            "loss takes a window, not a bench"
        );
    }
}
