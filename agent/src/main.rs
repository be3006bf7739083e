//! `netmatrix-agent`: see the library crate for the architecture.

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    let args = netmatrix_agent::Args::parse();
    netmatrix_agent::run(args).await?;
    Ok(())
}
