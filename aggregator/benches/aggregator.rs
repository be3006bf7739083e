//! The aggregator's cost per round at scale, on generated reports.
//!
//! `cargo bench -p netmatrix-aggregator --bench aggregator` (one core: the
//! aggregator's evaluation is single-threaded). Figures and targets are in
//! BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use tower::ServiceExt;

mod cluster;
use cluster::Cluster;
use netmatrix_aggregator::auth::Sender;

const INTERVAL_MS: u64 = 10_000;
static NOW: AtomicU64 = AtomicU64::new(1_800_000_000_000);

fn clock() -> u64 {
    NOW.load(Ordering::Relaxed)
}

/// One round of 5,000 nodes × 50 sampled peers: parse, verify, store, then
/// build the matrix, diagnose and update metrics.
fn round_5000(c: &mut Criterion) {
    let mut cluster = Cluster::new(5000, 50);
    // One node cut off, so the rules have something to find.
    cluster.isolated = vec![cluster::node_name(1234)];
    let aggregator = cluster.aggregator(INTERVAL_MS, clock);
    // A pod's reports are ordered by round: each ingest is of a new round,
    // made (untimed) before it, at the next interval.
    let round = AtomicU64::new(0);
    let next_round = || {
        let round = round.fetch_add(1, Ordering::Relaxed) + 1;
        let now = NOW.fetch_add(INTERVAL_MS, Ordering::Relaxed) + INTERVAL_MS;
        cluster.report_bodies(round, now).collect::<Vec<_>>()
    };
    let ingest_all = |a: &netmatrix_aggregator::state::Aggregator,
                      bodies: Vec<(Sender, Vec<u8>)>| {
        for (sender, body) in &bodies {
            cluster
                .ingest(a, sender, body)
                .expect("a generated report is accepted");
        }
    };
    // Warm up the history so that windows hold several rounds.
    for _ in 0..3 {
        ingest_all(&aggregator, next_round());
        aggregator.evaluate();
    }
    let mut group = c.benchmark_group("round_5000_nodes_x_50_peers");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("ingest_5000_reports", |b| {
        b.iter_batched(
            next_round,
            |bodies| ingest_all(&aggregator, bodies),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("evaluate", |b| b.iter(|| black_box(aggregator.evaluate())));
    group.bench_function("ingest_and_evaluate", |b| {
        b.iter_batched(
            next_round,
            |bodies| {
                ingest_all(&aggregator, bodies);
                black_box(aggregator.evaluate())
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    let findings = aggregator.evaluate();
    assert!(
        findings
            .findings
            .iter()
            .any(|f| f.nodes == [cluster::node_name(1234)]),
        "the isolated node is found on the sampled matrix: {:?}",
        findings.findings
    );
}

/// A full mesh of 1,000 nodes (a million cells) served as JSON.
fn matrix_json_1000(c: &mut Criterion) {
    let cluster = Cluster::new(1000, 999);
    let bodies: Vec<_> = cluster.report_bodies(1, clock()).collect();
    let aggregator = Arc::new(cluster.aggregator(INTERVAL_MS, clock));
    for (sender, body) in &bodies {
        cluster
            .ingest(&aggregator, sender, body)
            .expect("a generated report is accepted");
    }
    drop(bodies);
    aggregator.evaluate();
    let app = netmatrix_aggregator::serve::router(Arc::clone(&aggregator), 1 << 20);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let get = |path: &'static str| {
        let app = app.clone();
        async move {
            let response = app
                .oneshot(Request::get(path).body(Body::empty()).expect("a request"))
                .await
                .expect("infallible");
            assert!(response.status().is_success());
            // Read as a server writes it to the socket: piece by piece,
            // without joining the pieces into one buffer.
            let mut body = response.into_body();
            let mut len = 0;
            while let Some(frame) = body.frame().await {
                len += frame.expect("a body").data_ref().map_or(0, |d| d.len());
            }
            len
        }
    };
    let mut group = c.benchmark_group("matrix_1000_nodes_full_mesh");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("encode_json", |b| {
        b.iter(|| black_box(serde_json::to_vec(&*aggregator.matrix()).expect("encodes")))
    });
    group.bench_function("get_api_v1_matrix_first_request_of_a_round", |b| {
        b.iter_batched(
            || aggregator.evaluate(),
            |_| runtime.block_on(get("/api/v1/matrix")),
            criterion::BatchSize::PerIteration,
        )
    });
    group.bench_function("get_api_v1_matrix_cached", |b| {
        b.iter(|| black_box(runtime.block_on(get("/api/v1/matrix"))))
    });
    group.bench_function("evaluate", |b| b.iter(|| black_box(aggregator.evaluate())));
    group.finish();
}

criterion_group!(benches, round_5000, matrix_json_1000);
criterion_main!(benches);
