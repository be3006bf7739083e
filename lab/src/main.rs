//! `netmatrix-lab`: run the virtual cluster, break it, heal it, remove it.
//! The work is in the library; this file is the command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use netmatrix_lab::control::{self, Request};
use netmatrix_lab::lab::{ContainerConfig, Lab, LabConfig, Runtime, is_root};
use netmatrix_lab::net::topology::Overlay;
use netmatrix_lab::view::{self, LiveView};
use netmatrix_lab::{Fault, FaultKind, bench, state};

/// A virtual Kubernetes cluster of network namespaces, running netmatrix.
#[derive(Debug, Parser)]
#[command(name = "netmatrix-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--runtime`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RuntimeArg {
    Process,
    Container,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the lab, print the matrix and findings every round until Ctrl-C, then remove it.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, value_enum, default_value_t = Overlay::Vxlan)]
        overlay: Overlay,
        /// Probe and evaluation interval.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Port of the aggregator forwarder on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Port on 127.0.0.1 forwarded to the lab's API server (what the
        /// state directory's kubeconfig points kubectl and helm at); 0
        /// picks a free one.
        #[arg(long, default_value_t = 0)]
        api_port: u16,
        /// Namespace prefix (default: random, nm + 6 hex digits).
        #[arg(long)]
        prefix: Option<String>,
        /// Directory of netmatrix-agent and netmatrix-aggregator (default: next to this binary).
        #[arg(long, env = "NETMATRIX_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// Run no host-network agents (by default every node runs one beside its pod agent).
        #[arg(long)]
        no_host_agents: bool,
        /// Have the aggregator set the NetmatrixPodNetwork condition and
        /// Events on the Nodes a finding names (`--node-conditions`).
        #[arg(long)]
        node_conditions: bool,
        /// Lifetime of the agents' ServiceAccount tokens, rotated at 80 %
        /// of it as the kubelet does.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        token_ttl: Duration,
        /// Agents watch the API themselves (`--peer-discovery api`, the
        /// aggregator `--no-pinglists`) instead of taking their peers from
        /// the aggregator's pinglists, as the chart runs them.
        #[arg(long)]
        agent_watches: bool,
        /// How netmatrix runs. `process`: the workspace's binaries, started
        /// by the lab in the pods' namespaces (fast, every fault).
        /// `container`: `helm install` of the chart into the lab, whose
        /// pods run from the image under podman + runc (build it first
        /// with docker/build-image).
        #[arg(long, value_enum, default_value_t = RuntimeArg::Process)]
        runtime: RuntimeArg,
        /// The image (`--runtime container`), in podman's local storage.
        #[arg(long, default_value = netmatrix_lab::lab::DEFAULT_IMAGE)]
        image: String,
        /// The chart's directory (`--runtime container`; default: this
        /// repository's charts/netmatrix).
        #[arg(long)]
        chart: Option<PathBuf>,
        /// A value for `helm install` (`--runtime container`; repeatable),
        /// e.g. `--set companion.enabled=false`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Remove labs left behind by a killed `up` or test.
    Down {
        /// Every lab whose owner process is gone.
        #[arg(long, conflicts_with = "prefix")]
        all: bool,
        /// Also labs whose owner still runs (with --all).
        #[arg(long, requires = "all")]
        force: bool,
        /// This lab, whether or not its owner runs.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Break something in the running lab: `fault KIND [NODES...] [NUMBER]`, e.g.
    /// `fault overlay-down node-2`, `fault one-way node-2 node-3`, `fault loss node-2 20`,
    /// `fault partition node-1 node-2`, `fault vxlan-drop`. `heal` undoes it.
    Fault {
        #[arg(value_enum)]
        kind: FaultKind,
        /// The nodes the fault is about (see KIND), then the number of `loss` and
        /// `underlay-loss` (percent) or `mtu-lower` and `underlay-mtu` (MTU).
        #[arg(value_name = "NODES")]
        args: Vec<String>,
        /// A node the fault is about (same as naming it after KIND; repeatable).
        #[arg(long)]
        node: Vec<String>,
        /// Which lab (needed when several run).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Undo every fault applied to the running lab.
    Heal {
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Add a node to the running lab (node-4 in a 3-node lab): registered NotReady, network
    /// wired both ways, then Ready with its pods and agents.
    AddNode {
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Drain, delete and switch off a node of the running lab (not node-1, the control plane).
    RemoveNode {
        node: String,
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Take the running, healthy lab through churn (agents restarted one by one, a node
    /// cordoned, pods re-created with new addresses, a node added and removed) and fail on any
    /// finding: on a healthy cluster each one is a false alarm. Prints the rounds covered.
    Churn {
        /// Keep repeating the script until this much time has passed (at least one pass).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Print, as JSON, what the running lab's API server emulator sent each client (by
    /// `namespace/serviceaccount/pod`, `lab` for the admin token): watch streams opened and
    /// open, watch events, bookmarks and bytes, lists, gets. The emulator's own counters.
    ApiClients {
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Show the running labs and their faults (every running lab, or the one named).
    Status {
        /// Only this lab.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Benchmarks in throw-away namespaces: `bench sweep` (ICMP sweep, netmatrix vs fping),
    /// `bench agent` (the agent's CPU and memory at thousands of peers), `bench detect` (fault
    /// to finding and heal to clear in a lab, per trial and the median), `bench control-plane`
    /// (watch streams and bytes the API server sends netmatrix, per Node update).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error chain is what the user needs; a backtrace is not.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "netmatrix_lab=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            nodes,
            overlay,
            interval,
            port,
            api_port,
            prefix,
            bin_dir,
            no_host_agents,
            node_conditions,
            token_ttl,
            agent_watches,
            runtime,
            image,
            chart,
            set,
        } => {
            let runtime = match runtime {
                RuntimeArg::Process => Runtime::Process,
                RuntimeArg::Container => {
                    let defaults = ContainerConfig::from_repository();
                    Runtime::Container(ContainerConfig {
                        image,
                        chart: chart.unwrap_or(defaults.chart),
                        set,
                    })
                }
            };
            up(LabConfig {
                nodes,
                overlay,
                interval,
                forward_port: port,
                api_port,
                prefix,
                components: true,
                host_agents: !no_host_agents,
                node_conditions,
                bin_dir,
                token_ttl,
                pinglists: !agent_watches,
                runtime,
            })
            .await
        }
        Command::Down { all, force, prefix } => down(all, force, prefix),
        Command::Fault {
            kind,
            args,
            node,
            prefix,
        } => {
            let args: Vec<String> = node.into_iter().chain(args).collect();
            let fault = Fault::parse(kind, &args)?;
            send(prefix.as_deref(), Request::Fault { fault }).await
        }
        Command::Heal { prefix } => send(prefix.as_deref(), Request::Heal).await,
        Command::Status {
            prefix: Some(prefix),
        } => send(Some(&prefix), Request::Status).await,
        Command::Status { prefix: None } => status_of_all().await,
        Command::AddNode { prefix } => send(prefix.as_deref(), Request::AddNode).await,
        Command::RemoveNode { node, prefix } => {
            send(prefix.as_deref(), Request::RemoveNode { node }).await
        }
        Command::Churn { duration, prefix } => {
            let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            send(prefix.as_deref(), Request::Churn { duration_ms }).await
        }
        Command::ApiClients { prefix } => {
            let dir = control::find_lab(prefix.as_deref())?;
            let response = control::request(&dir.control_socket(), &Request::ApiClients).await?;
            if !response.ok {
                bail!("lab {}: {}", dir.prefix(), response.message);
            }
            // JSON alone on stdout, for jq.
            println!("{}", response.message);
            Ok(())
        }
        Command::Bench(command) => bench::run(command).await,
    }
}

fn require_root() -> anyhow::Result<()> {
    if !is_root() {
        bail!("the lab creates network namespaces: run as root (sudo)");
    }
    Ok(())
}

async fn up(config: LabConfig) -> anyhow::Result<()> {
    require_root()?;
    let interval = config.interval;
    let container = matches!(config.runtime, Runtime::Container(_));
    let lab = Arc::new(Lab::up(config).await?);
    let control = control::bind(lab.state_dir()).context("cannot create the control socket")?;
    let control_task = tokio::spawn(control::serve(control, lab.clone()));
    let url = lab.aggregator_url();
    println!(
        "lab {prefix} is up in {took:.1?}: {nodes} nodes, {overlay} overlay\n\
         aggregator: {url}  (API: {url}/api/v1/matrix, {url}/api/v1/findings)\n\
         state, logs and kubeconfigs: {dir}\n\
         kubectl: export KUBECONFIG={kubeconfig}; kubectl get nodes,pods -o wide\n\n\
         break something from another terminal (netmatrix-lab fault --help lists every fault):\n  \
         netmatrix-lab fault overlay-down node-2\n  \
         netmatrix-lab fault vxlan-drop\n  \
         netmatrix-lab fault one-way node-2 node-3\n  \
         netmatrix-lab fault loss node-3 30\n  \
         {pod_faults}\
         netmatrix-lab fault dns-stop\n  \
         netmatrix-lab heal\n\
         {helm}\
         Ctrl-C removes the lab.\n",
        pod_faults = if container {
            ""
        } else {
            "netmatrix-lab fault service-route node-3\n  netmatrix-lab fault kill-agent node-3\n  "
        },
        helm = if container {
            "the chart's own check: helm test netmatrix -n netmatrix (with the KUBECONFIG above)\n"
        } else {
            ""
        },
        prefix = lab.prefix(),
        took = lab.up_took(),
        nodes = lab.topology().nodes.len(),
        overlay = lab.topology().overlay,
        dir = lab.state_dir().path().display(),
        kubeconfig = lab.kubeconfig_path().display(),
    );
    let result = watch(&lab, interval).await;
    control_task.abort();
    let _ = control_task.await;
    println!("removing lab {}...", lab.prefix());
    let lab2 = lab.clone();
    tokio::task::spawn_blocking(move || lab2.shutdown()).await?;
    result
}

/// Shows the matrix and findings every round until SIGINT/SIGTERM or an
/// error. The signal streams are created once, before the first round, so a
/// Ctrl-C is never lost between two rounds.
async fn watch(lab: &Lab, interval: Duration) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut view = LiveView::new(std::io::stdout().is_terminal());
    let rounds = async {
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(500)));
        loop {
            ticker.tick().await;
            show_round(lab, &mut view).await?;
        }
    };
    tokio::select! {
        _ = int.recv() => Ok(()),
        _ = term.recv() => Ok(()),
        r = rounds => r,
    }
}

async fn show_round(lab: &Lab, view: &mut LiveView) -> anyhow::Result<()> {
    if let Some((name, status)) = lab
        .exited_processes()
        .into_iter()
        .find(|(name, _)| name == netmatrix_lab::lab::AGGREGATOR_PROCESS)
    {
        bail!(
            "the {name} exited ({status}); see {}",
            lab.state_dir().file(&format!("{name}.log")).display()
        );
    }
    let body = match lab.snapshot().await {
        Ok(s) => view::render(&s.matrix, &s.findings),
        Err(e) => format!("waiting for the aggregator: {e}\n"),
    };
    let header = format!(
        "lab {}  {}  faults: {}",
        lab.prefix(),
        lab.aggregator_url(),
        lab.faults_summary()
    );
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    if let Some(frame) = view.frame(&header, &time, &body) {
        let mut out = std::io::stdout().lock();
        out.write_all(frame.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

fn down(all: bool, force: bool, prefix: Option<String>) -> anyhow::Result<()> {
    require_root()?;
    let targets: Vec<String> = match prefix {
        Some(p) => vec![p],
        None if all => state::labs()
            .into_iter()
            .filter(|d| force || !d.owner_alive())
            .map(|d| d.prefix().to_string())
            .collect(),
        None => bail!("say which lab: --prefix P, or --all for every lab whose owner is gone"),
    };
    for prefix in &targets {
        let r = state::down(prefix);
        println!(
            "{prefix}: removed {} namespaces, killed {} processes",
            r.namespaces.len(),
            r.killed.len()
        );
        for e in r.errors {
            eprintln!("{prefix}: {e}");
        }
    }
    if targets.is_empty() {
        println!("nothing to remove");
    }
    for lab in state::labs().iter().filter(|d| d.owner_alive()) {
        println!(
            "still running: {} (stop it with Ctrl-C, or down --all --force)",
            lab.prefix()
        );
    }
    let foreign = state::foreign_namespaces();
    if !foreign.is_empty() {
        println!(
            "left alone (no lab state directory): {}",
            foreign.join(", ")
        );
    }
    Ok(())
}

/// `status` with no lab named: every running lab, or a word that none is.
async fn status_of_all() -> anyhow::Result<()> {
    let labs = control::running_labs();
    if labs.is_empty() {
        println!("no lab is running (start one with scripts/demo or netmatrix-lab up)");
    }
    for dir in labs {
        send(Some(dir.prefix()), Request::Status).await?;
    }
    Ok(())
}

async fn send(prefix: Option<&str>, request: Request) -> anyhow::Result<()> {
    let dir = control::find_lab(prefix)?;
    let response = control::request(&dir.control_socket(), &request).await?;
    if !response.ok {
        bail!("lab {}: {}", dir.prefix(), response.message);
    }
    println!("lab {}: {}", dir.prefix(), response.message);
    Ok(())
}
