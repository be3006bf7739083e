//! `netmatrix-aggregator`: see the library crate for what it does.

use std::process::ExitCode;

use clap::Parser;
use netmatrix_aggregator::Args;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    // kube uses ring; make it the process-wide provider before any client
    // exists (STACK.md: two providers make rustls panic).
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    match netmatrix_aggregator::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The operator-facing chain, without a backtrace.
            let error = anyhow::Error::new(error);
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
