//! One aggregator fed a generated cluster: memory, metric series and the
//! time of one round, at a given size. Run each size in its own process so
//! that the peak RSS is that size's:
//!
//! ```text
//! cargo run --release -p netmatrix-aggregator --example scale -- 5000 50
//! ```
//!
//! Arguments: nodes (default 5000), remote peers per agent (default 50; a
//! full mesh when at least nodes - 1), the reports' encoding (`protobuf`,
//! as agents send them, or `json`), and a fault (`healthy`, the default;
//! `isolated`: one node cut off; `partition`: two halves; `one-way`: one
//! node cannot reach one of its stable targets). The run fails unless the
//! last round names exactly that fault (nothing when healthy).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use netmatrix_aggregator::store::ReportEncoding;
use netmatrix_api::FindingKind;

#[path = "../benches/cluster/mod.rs"]
mod cluster;

/// Rounds fed; the first five fill the history.
const ROUNDS: u64 = 10;
/// The round a fault starts (the history full of healthy rounds).
const FAULT_FROM: u64 = 6;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

static NOW: AtomicU64 = AtomicU64::new(1_800_000_000_000);

fn clock() -> u64 {
    NOW.load(Ordering::Relaxed)
}

/// `VmHWM` and `VmRSS` of this process, in MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map_or(Ok(5000), |a| a.parse())?;
    let peers: usize = args.next().map_or(Ok(50), |a| a.parse())?;
    let (_, rss_start) = memory_mib();
    let mut cluster = cluster::Cluster::new(nodes, peers.min(nodes.saturating_sub(1)));
    cluster.encoding = match args.next().as_deref() {
        None | Some("protobuf") => ReportEncoding::Protobuf,
        Some("json") => ReportEncoding::Json,
        Some(other) => anyhow::bail!("encoding {other:?}: protobuf or json"),
    };
    let fault = args.next().unwrap_or_else(|| "healthy".to_owned());
    // The fault, applied from round FAULT_FROM on a cluster healthy until
    // then, and what it must be named as.
    let mut faulty = cluster.clone();
    let expected: Vec<(FindingKind, Vec<String>)> = match fault.as_str() {
        "healthy" => Vec::new(),
        "isolated" => {
            faulty.isolated = vec![cluster::node_name(nodes / 3)];
            vec![(FindingKind::NodeIsolated, faulty.isolated.clone())]
        }
        "partition" => {
            faulty.split_at = Some(nodes / 2);
            vec![(FindingKind::Partition, faulty.nodes.clone())]
        }
        "one-way" => {
            let (a, b) = faulty.stable_pair(nodes / 3);
            faulty.broken = vec![(a.clone(), b.clone())];
            let mut pair = vec![a, b];
            pair.sort();
            vec![(FindingKind::AsymmetricPath, pair)]
        }
        other => anyhow::bail!("fault {other:?}: healthy, isolated, partition or one-way"),
    };
    let mut named_at = None;
    let aggregator = cluster.aggregator(10_000, clock);
    let mut last = Vec::new();
    let (mut ingest_ms, mut evaluate_ms) = (Vec::new(), Vec::new());
    let mut report_bytes = 0;
    // Several rounds, so that the path history fills up (5 rounds); the
    // times are the medians of the rounds after that.
    for round in 1..=ROUNDS {
        NOW.fetch_add(10_000, Ordering::Relaxed);
        if round == FAULT_FROM {
            cluster = faulty.clone();
        }
        // Bodies are made one at a time (as they arrive one request at a
        // time); only the ingest is timed.
        let mut ingest = std::time::Duration::ZERO;
        let mut bytes = 0;
        for (sender, body) in cluster.report_bodies(round, clock()) {
            let started = Instant::now();
            cluster
                .ingest(&aggregator, &sender, &body)
                .map_err(|e| anyhow::anyhow!("report rejected: {e}"))?;
            ingest += started.elapsed();
            bytes += body.len();
        }
        let started = Instant::now();
        let findings = aggregator.evaluate();
        report_bytes = bytes / nodes.max(1);
        if round > 5 {
            ingest_ms.push(ingest.as_secs_f64() * 1000.0);
            evaluate_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        last = cluster::kinds(&findings.findings);
        anyhow::ensure!(
            round >= FAULT_FROM || last.is_empty(),
            "a healthy cluster has no findings: {last:?}"
        );
        if round >= FAULT_FROM && !expected.is_empty() && last == expected {
            named_at.get_or_insert(round + 1 - FAULT_FROM);
        }
    }
    anyhow::ensure!(
        last == expected,
        "`{fault}` should name exactly {:?}, not {:?}",
        expected
            .iter()
            .map(|(k, n)| (k, n.len()))
            .collect::<Vec<_>>(),
        last.iter().map(|(k, n)| (k, n.len())).collect::<Vec<_>>()
    );
    let matrix = aggregator.matrix();
    let cells: usize = matrix.rows.iter().map(|r| r.cells.len()).sum();
    let metrics = aggregator.metrics().encode()?;
    let series = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let (peak, rss) = memory_mib();
    println!(
        "| {nodes} | {} | {report_bytes} | {cells} | {series} | {:.0} | {:.0} | {peak:.0} | {:.0} |",
        if cluster.sampled() {
            format!("{peers} sampled")
        } else {
            "full mesh".to_owned()
        },
        median(&mut ingest_ms),
        median(&mut evaluate_ms),
        rss - rss_start
    );
    if let Some(n) = named_at {
        println!(
            "`{fault}` named at the evaluation {n} after it began (rounds {FAULT_FROM}..={ROUNDS})"
        );
    }
    Ok(())
}
