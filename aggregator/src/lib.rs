//! netmatrix aggregator: receives the agents' reports, builds the directed
//! node-to-node connectivity [`Matrix`](netmatrix_api::Matrix), names what is
//! broken ([`Findings`](netmatrix_api::Findings)) and exports metrics.
//!
//! - [`store`]: the latest report per (node, network) and its validation;
//! - [`history`]: the last rounds' echo counts per peer (windowed loss);
//! - [`inventory`]: nodes and agent pods according to the Kubernetes API;
//! - [`matrix`]: reports to matrix;
//! - [`diagnosis`]: matrix to findings, with hysteresis;
//! - [`metrics`]: Prometheus series bounded by the number of nodes;
//! - [`published`]: a round's matrix and its JSON, encoded once;
//! - [`http`]: the `/api/v1` routes, `/metrics`, `/healthz`;
//! - [`state`]: the shared state tying them together.

pub mod config;
pub mod diagnosis;
pub mod history;
pub mod http;
pub mod inventory;
pub mod matrix;
pub mod metrics;
pub mod published;
pub mod state;
pub mod store;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::time::MissedTickBehavior;

pub use config::Args;
use inventory::{InventorySource, KubeInventory};
use state::{Aggregator, Settings};

/// Why the aggregator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}; pick another --listen address")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no Kubernetes client configuration (or use --no-kubernetes for a trial)")]
    KubeConfig(#[from] netmatrix_runtime::KubeConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    KubeClient(#[source] kube::Error),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Runs the aggregator until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    let inventory = if args.no_kubernetes {
        tracing::warn!(
            "--no-kubernetes: sender identities are NOT verified and only nodes that have reported are expected"
        );
        InventorySource::Unverified
    } else {
        let config = netmatrix_runtime::kube_config(args.kubeconfig.as_deref()).await?;
        let client = kube::Client::try_from(config).map_err(Error::KubeClient)?;
        InventorySource::Kubernetes(KubeInventory::spawn(
            client,
            &args.namespace,
            &args.agent_selector,
        ))
    };

    let aggregator = Arc::new(Aggregator::new(inventory, Settings::from_args(&args))?);

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: args.listen,
            source,
        })?;
    let local = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(
        listen = %local,
        interval = %humantime::format_duration(args.interval),
        "aggregator ready"
    );

    let evaluation = tokio::spawn(evaluate_every(Arc::clone(&aggregator), args.interval));
    let app = http::router(aggregator, args.max_body);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(netmatrix_runtime::shutdown_signal())
        .await
        .map_err(Error::Serve);
    evaluation.abort();
    served
}

/// The evaluation loop: one round per interval. A slow round delays the next
/// instead of bursting to catch up, so hysteresis counts real rounds.
async fn evaluate_every(aggregator: Arc<Aggregator>, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // A round of thousands of nodes takes a second of CPU: keep it off
        // the threads that serve reports.
        let round = Arc::clone(&aggregator);
        let evaluated = tokio::task::spawn_blocking(move || {
            let findings = round.evaluate();
            round.encode_ahead();
            findings
        })
        .await;
        match evaluated {
            Ok(findings) => {
                tracing::debug!(findings = findings.findings.len(), "evaluation round");
            }
            Err(error) => tracing::error!(%error, "evaluation round failed"),
        }
    }
}
