//! `netmatrix`: see the library crate for what each subcommand does.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use netmatrix_cli::{companion, validate};

#[derive(Debug, Parser)]
#[command(
    name = "netmatrix",
    version,
    about = "netmatrix: is the pod network healthy? Ask the aggregator."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wait until every node reported, then print the verdict on the pod
    /// network. Exit 0 healthy, 1 failing (findings or failing paths),
    /// 2 undecided (aggregator unreachable, nodes that never reported)
    Validate(validate::ValidateArgs),
    /// Target-only mode of the companion pods: exist on every node so that
    /// agents have a same-node pod to ping; serves /healthz
    Companion {
        /// Address of the /healthz server
        #[arg(long, env = "NETMATRIX_LISTEN", default_value = "0.0.0.0:9091")]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => {
            let verdict = validate::run(&args).await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&verdict)?);
            } else {
                print!("{}", validate::render(&verdict));
            }
            Ok(ExitCode::from(verdict.outcome.exit_code()))
        }
        Command::Companion { listen } => {
            // Logs go to stdout; `validate` keeps stdout for its verdict.
            netmatrix_runtime::init();
            companion::run(listen).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
