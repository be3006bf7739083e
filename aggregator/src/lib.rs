//! netmatrix aggregator: receives the agents' reports, builds the directed
//! node-to-node connectivity [`Matrix`](netmatrix_api::Matrix), names what is
//! broken ([`Findings`](netmatrix_api::Findings)) and exports metrics.
//!
//! - [`auth`]: who is posting (agents' tokens, verified by TokenReview);
//! - [`store`]: the latest report per (node, network) and its validation;
//! - [`history`]: the last rounds' echo counts per peer (windowed loss);
//! - [`inventory`]: nodes and agent pods according to the Kubernetes API;
//! - [`pinglist`]: what each agent probes, computed from the inventory's
//!   watches;
//! - [`matrix`]: reports to matrix;
//! - [`diagnosis`]: matrix to findings, with hysteresis;
//! - [`metrics`]: Prometheus series bounded by the number of nodes;
//! - [`published`]: a round's matrix and its JSON, encoded once;
//! - [`serve`]: the HTTP surface: the `/api/v1` routes, `/metrics`,
//!   `/healthz`, and the web page (its assets are in `web/`);
//! - [`state`]: the shared state tying them together;
//! - [`config`]: the command line and the tunables taken from it;
//! - [`policy`]: the NetworkPolicies that deny probes;
//! - [`node_status`]: findings written back as Node conditions.

pub mod auth;
pub mod config;
pub mod diagnosis;
pub mod history;
pub mod inventory;
pub mod matrix;
pub mod metrics;
pub mod node_status;
pub mod pinglist;
pub mod policy;
pub mod published;
pub mod serve;
pub mod state;
pub mod store;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use netmatrix_runtime::serve::ServerLimits;
use tokio::time::MissedTickBehavior;

use auth::{Authenticator, TokenPolicy};
pub use config::Args;
use config::Settings;
use inventory::{InventorySource, KubeInventory};
use node_status::NodeStatusWriter;
use pinglist::PinglistBook;
use state::Aggregator;

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
}

/// Runs the aggregator until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    let mut node_status = None;
    let mut pinglists = None;
    let (inventory, authenticator) = if args.no_kubernetes {
        tracing::warn!(
            "--no-kubernetes: reports are NOT authenticated (anyone who reaches this aggregator can write any node's row) and only nodes that have reported are expected; for trials only"
        );
        (InventorySource::Unverified, Authenticator::unverified())
    } else {
        let config = netmatrix_runtime::kube_config(args.kubeconfig.as_deref()).await?;
        let client = kube::Client::try_from(config).map_err(Error::KubeClient)?;
        let policy = TokenPolicy {
            audience: args.token_audience.clone(),
            namespace: args.namespace.clone(),
            service_accounts: args.agent_service_accounts.iter().cloned().collect(),
            reviews_per_second: args.token_review_qps,
        };
        if args.node_conditions {
            node_status = Some(NodeStatusWriter::new(client.clone()));
        }
        let kube = KubeInventory::spawn(
            client.clone(),
            &args.namespace,
            &args.agent_selector,
            &args.peer_selector,
        );
        if !args.no_pinglists {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").ok();
            pinglists = Some((kube.clone(), args.pinglist_config(host.as_deref())));
        }
        (
            InventorySource::Kubernetes(kube),
            Authenticator::with_reviews(client, policy),
        )
    };

    let mut aggregator =
        Aggregator::new(inventory, Settings::from_args(&args))?.with_authenticator(authenticator);
    if let Some((kube, config)) = pinglists {
        let book = PinglistBook::spawn(kube, config, aggregator.metrics().pinglists().clone());
        aggregator = aggregator.with_pinglists(book);
    }
    let aggregator = Arc::new(aggregator);

    let listeners = netmatrix_runtime::serve::bind_all(&args.listen)
        .await
        .map_err(|(addr, source)| Error::Listen { addr, source })?;
    let local: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    tracing::info!(
        listen = %local.join(","),
        interval = %humantime::format_duration(args.interval),
        "aggregator ready"
    );

    let evaluation = tokio::spawn(evaluate_every(
        Arc::clone(&aggregator),
        args.interval,
        node_status,
    ));
    let app = serve::router(aggregator, args.max_body);
    let limits = ServerLimits {
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        ..ServerLimits::default()
    };
    netmatrix_runtime::serve::serve(listeners, app, limits, netmatrix_runtime::shutdown_signal())
        .await;
    evaluation.abort();
    Ok(())
}

/// The evaluation loop: one round per interval. A slow round delays the next
/// instead of bursting to catch up, so hysteresis counts real rounds.
async fn evaluate_every(
    aggregator: Arc<Aggregator>,
    interval: std::time::Duration,
    mut node_status: Option<NodeStatusWriter>,
) {
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
                if let Some(writer) = node_status.as_mut() {
                    writer.sync(&findings.findings).await;
                }
            }
            Err(error) => tracing::error!(%error, "evaluation round failed"),
        }
    }
}
