//! `netmatrix`: see the library crate for what each subcommand does.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use netmatrix_cli::client::{AggregatorArgs, AggregatorClient};
use netmatrix_cli::render::{self, Style};
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
    /// The live node-to-node matrix (pod network, then host network), with
    /// the API server, ClusterIP, DNS and MTU columns
    Matrix {
        #[command(flatten)]
        aggregator: AggregatorArgs,
        /// The aggregator's JSON instead of the table
        #[arg(long)]
        json: bool,
    },
    /// The current findings with their evidence and what to check. Exit 0
    /// when none is a failure (information such as icmp-filtered or
    /// blocked-by-policy is listed, not counted), 1 otherwise
    Findings {
        #[command(flatten)]
        aggregator: AggregatorArgs,
        /// The aggregator's JSON instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Everything known about one node: what it reaches (its row), who
    /// reaches it (its column), its service, DNS and MTU checks with their
    /// last errors, its report age, and the findings naming it
    Explain {
        /// Node name, as in `kubectl get nodes`
        node: String,
        #[command(flatten)]
        aggregator: AggregatorArgs,
    },
    /// Target-only mode of the companion pods: exist on every node so that
    /// agents have a same-node pod to ping; serves /healthz. Internal (the
    /// chart runs it), so hidden from `--help`
    #[command(hide = true)]
    Companion {
        /// Address of the /healthz server
        #[arg(long, env = "NETMATRIX_LISTEN", default_value = "0.0.0.0:9091")]
        listen: SocketAddr,
    },
}

/// Timeout of one request to the aggregator.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `explain` waits for a node's facts just asked of its host
/// agent: a report or two at the default interval.
const FACTS_PATIENCE: Duration = Duration::from_secs(12);

/// Exit code when the aggregator could not be asked (as `validate`'s
/// "undecided").
const CANNOT_ASK: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(CANNOT_ASK)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<u8> {
    let style = Style::for_stdout();
    match command {
        Command::Validate(args) => {
            let verdict = validate::run(&args).await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&verdict)?);
            } else {
                print!("{}", validate::render(&verdict, style));
            }
            Ok(verdict.outcome.exit_code())
        }
        Command::Matrix { aggregator, json } => {
            let client = AggregatorClient::new(&aggregator.aggregator_url, REQUEST_TIMEOUT)?;
            let matrix = client.matrix().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&matrix)?);
            } else {
                print!("{}", render::matrix(&matrix, style));
            }
            Ok(0)
        }
        Command::Findings { aggregator, json } => {
            let client = AggregatorClient::new(&aggregator.aggregator_url, REQUEST_TIMEOUT)?;
            let findings = client.findings().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&findings)?);
            } else {
                print!("{}", render::findings(&findings, style));
            }
            // 1 when something is broken; information alone is not.
            Ok(u8::from(
                findings.findings.iter().any(|f| !f.kind.is_information()),
            ))
        }
        Command::Explain { node, aggregator } => {
            let client = AggregatorClient::new(&aggregator.aggregator_url, REQUEST_TIMEOUT)?;
            // Facts first: asking for them is what gets them sent, and the
            // findings read next may then carry the cause they tell.
            let facts = client.node_facts_waiting(&node, FACTS_PATIENCE).await?;
            let matrix = client.matrix().await?;
            let findings = client.findings().await?;
            let text = render::explain(&matrix, &findings, &node, style).with_context(|| {
                format!(
                    "no node {node:?} in the matrix; known nodes: {}",
                    matrix.nodes.join(", ")
                )
            })?;
            print!("{text}");
            print!("{}", render::node_facts(&node, &facts, style));
            Ok(0)
        }
        Command::Companion { listen } => {
            // Logs go to stdout; the other subcommands keep stdout for their output.
            netmatrix_runtime::init();
            companion::run(listen).await?;
            Ok(0)
        }
    }
}
