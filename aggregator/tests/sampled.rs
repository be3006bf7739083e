//! Diagnosis on a sampled matrix: with each node probed by only K peers
//! (hash-ring sampling above the full-mesh size), an isolated node and a
//! partition are still named, so are one-way and two-way failures of a
//! single pair, and a healthy cluster raises nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use netmatrix_api::{FindingKind, Findings};

#[path = "../benches/cluster/mod.rs"]
mod cluster;
use cluster::{Cluster, node_name};

/// Each test has its own clock (tests run in parallel).
macro_rules! clock {
    ($name:ident) => {
        static $name: AtomicU64 = AtomicU64::new(1_800_000_000_000);
    };
}

/// Feeds `rounds` rounds of the cluster's reports, 10 s apart; the last
/// round's findings.
fn run(cluster: &Cluster, now: &'static AtomicU64, clock: fn() -> u64, rounds: u64) -> Findings {
    let aggregator = cluster.aggregator(10_000, clock);
    let mut findings = None;
    for round in 1..=rounds {
        now.fetch_add(10_000, Ordering::SeqCst);
        for (sender, body) in cluster.report_bodies(round, clock()) {
            cluster
                .ingest(&aggregator, &sender, &body)
                .expect("a generated report is accepted");
        }
        findings = Some(aggregator.evaluate());
    }
    let matrix = aggregator.matrix();
    let cells: usize = matrix.rows.iter().map(|r| r.cells.len()).sum();
    assert_eq!(
        cells,
        cluster.nodes.len() * 20,
        "sparse rows: probed paths only"
    );
    findings.map(|f| (*f).clone()).expect("at least one round")
}

fn sampled() -> Cluster {
    // 1,000 nodes, 20 remote peers each (18 stable, 2 rotating).
    Cluster::new(1000, 20)
}

#[test]
fn a_healthy_sampled_cluster_raises_nothing() {
    clock!(NOW);
    let cluster = sampled();
    assert!(cluster.sampled());
    let findings = run(&cluster, &NOW, || NOW.load(Ordering::SeqCst), 4);
    assert!(findings.findings.is_empty(), "{:?}", findings.findings);
}

#[test]
fn an_isolated_node_is_named_from_its_k_probers() {
    clock!(NOW);
    let mut cluster = sampled();
    cluster.isolated = vec![node_name(417)];
    let findings = run(&cluster, &NOW, || NOW.load(Ordering::SeqCst), 4);
    let kinds: Vec<_> = findings
        .findings
        .iter()
        .map(|f| (f.kind, &f.nodes))
        .collect();
    assert_eq!(
        kinds,
        [(FindingKind::NodeIsolated, &vec![node_name(417)])],
        "exactly the isolated node, nothing else"
    );
}

#[test]
fn a_partition_is_named_with_both_groups() {
    clock!(NOW);
    let mut cluster = sampled();
    cluster.split_at = Some(300);
    let findings = run(&cluster, &NOW, || NOW.load(Ordering::SeqCst), 4);
    assert_eq!(findings.findings.len(), 1, "{:?}", findings.findings);
    let f = &findings.findings[0];
    assert_eq!(f.kind, FindingKind::Partition);
    assert_eq!(f.nodes.len(), 1000, "both groups are named");
}

fn kinds(findings: &Findings) -> Vec<(FindingKind, Vec<String>)> {
    cluster::kinds(&findings.findings)
}

#[test]
fn a_one_way_failure_between_two_sampled_nodes_is_named() {
    clock!(NOW);
    let mut cluster = sampled();
    let (a, b) = cluster.stable_pair(42);
    cluster.broken = vec![(a.clone(), b.clone())];
    let findings = run(&cluster, &NOW, || NOW.load(Ordering::SeqCst), 4);
    let mut pair = vec![a, b];
    pair.sort();
    assert_eq!(kinds(&findings), [(FindingKind::AsymmetricPath, pair)]);
}

#[test]
fn a_pair_broken_both_ways_is_named() {
    clock!(NOW);
    let mut cluster = sampled();
    let (a, b) = cluster.stable_pair(42);
    cluster.broken = vec![(a.clone(), b.clone()), (b.clone(), a.clone())];
    let findings = run(&cluster, &NOW, || NOW.load(Ordering::SeqCst), 4);
    let mut pair = vec![a, b];
    pair.sort();
    assert_eq!(kinds(&findings), [(FindingKind::PairBroken, pair)]);
}
