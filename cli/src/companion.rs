//! The companion pod's target-only mode.
//!
//! A second pod on every node gives each agent a same-node peer (pod to pod
//! through the node's bridge, without leaving the node): the kernel answers
//! the echoes, so this process only has to exist, stay healthy and stop
//! cleanly. It serves `/healthz` for the kubelet's probes.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;

#[derive(Debug, thiserror::Error)]
pub enum CompanionError {
    #[error("cannot listen on {addr}: {source} (pass another --listen)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Serves `/healthz` on `listen` until SIGTERM or SIGINT.
pub async fn run(listen: SocketAddr) -> Result<(), CompanionError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| CompanionError::Listen {
            addr: listen,
            source,
        })?;
    tracing::info!(%listen, "companion ready: answering echoes (kernel) and /healthz");
    axum::serve(listener, router())
        .with_graceful_shutdown(netmatrix_runtime::shutdown_signal())
        .await
        .map_err(CompanionError::Serve)
}

fn router() -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" }))
}
