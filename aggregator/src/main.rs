//! `netmatrix-aggregator`: see the library crate for what it does.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = netmatrix_aggregator::Args::parse();
    netmatrix_runtime::init();
    netmatrix_runtime::exit_code(netmatrix_aggregator::run(args).await)
}
