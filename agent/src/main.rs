//! `netmatrix-agent`: see the library crate for the architecture.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = netmatrix_agent::Args::parse();
    netmatrix_runtime::init();
    netmatrix_runtime::exit_code(netmatrix_agent::run(args).await)
}
