//! `netmatrix-agent`: see the library crate for the architecture.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = netmatrix_agent::Args::parse();
    netmatrix_runtime::init();
    // One thread by default (`--worker-threads`), as linkerd2-proxy does on
    // one core: the agent mostly waits for replies.
    let mut builder = match args.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(n));
            builder
        }
    };
    match builder.enable_all().build() {
        Ok(runtime) => netmatrix_runtime::exit_code(runtime.block_on(netmatrix_agent::run(args))),
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            ExitCode::FAILURE
        }
    }
}
