//! `netmatrix-agent`: see the library crate for the architecture.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = netmatrix_agent::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    // One process-wide crypto provider (ring), before any TLS client exists:
    // with none installed, kube's client cannot pick one.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    match netmatrix_agent::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The operator-facing cause chain, without a backtrace.
            tracing::error!("{:#}", anyhow::Error::new(error));
            ExitCode::FAILURE
        }
    }
}
