//! The companion pod's target-only mode.
//!
//! A second pod on every node gives each agent a same-node peer (pod to pod
//! through the node's bridge, without leaving the node): the kernel answers
//! the ICMP echoes, so this process only has to exist, stay healthy and stop
//! cleanly. It serves `/healthz` for the kubelet's probes (and the agents'
//! TCP connects) and the UDP echo on the same port number.

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

/// Serves `/healthz` and the UDP echo on `listen` until SIGTERM or SIGINT.
pub async fn run(listen: SocketAddr) -> Result<(), CompanionError> {
    let bind_error = |source| CompanionError::Listen {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(bind_error)?;
    let udp = netmatrix_runtime::udp_echo::bind(listen)
        .await
        .map_err(bind_error)?;
    tokio::spawn(netmatrix_runtime::udp_echo::serve(udp));
    tracing::info!(%listen, "companion ready: answering echoes (ICMP by the kernel, UDP) and /healthz");
    axum::serve(listener, router())
        .with_graceful_shutdown(netmatrix_runtime::shutdown_signal())
        .await
        .map_err(CompanionError::Serve)
}

fn router() -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" }))
}
