//! `netmatrix-lab bench control-plane`: what netmatrix costs the Kubernetes
//! API server, measured with the API emulator's per-client counters
//! ([`crate::emulator::apiserver::clients`]).
//!
//! ```text
//!  PREFIX-pa0 .. (real pod agents)      PREFIX-cluster
//!  eth0 10.128.J.2/24  <── veth paJ ──>  10.128.J.1/24
//!  PREFIX-ha0 .. (real host agents)
//!  eth0 node IP/31     <── veth haJ ──>  node IP + 1 /31
//!                                        lo: every other pod and node address,
//!                                        10.96.0.1:443  API server emulator (TLS)
//!                                        10.96.0.10:53  DNS (cluster.local)
//!                                        10.96.0.20:80  netmatrix-aggregator (real binary)
//! ```
//!
//! The emulator holds `--nodes` Node objects, each with its agent, companion
//! and host-agent Pod objects. `--real-agents` real agents (half pod, half
//! host network, on nodes 0, 1, ...) and the real aggregator run against it,
//! each with a kubeconfig and token of its own, so the emulator counts them
//! apart. Once every agent reads its peers from the API (`peer_source:
//! api` in its `/status`), the counters are read, the cluster is left idle
//! for `--idle`, read again, then `--updates` Node status updates are made
//! (the Ready condition's `lastHeartbeatTime` moves, as a kubelet's status
//! update does; one Node after the other) `--gap` apart, and after
//! `--settle` the counters are read a last time.
//!
//! Only K agents run: the whole-cluster line multiplies the mean of the
//! measured pod agents and host agents by N, and says so. The bytes are the
//! JSON bodies the API server sends, before TLS and HTTP framing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use netmatrix_api::labels;
use serde_json::{Value, json};

use super::agent::{agent_cluster_args, cluster_pki, http_get, pod_env, start_api_and_dns};
use super::{Scratch, ip_batch, link_pod, markdown_table};
use crate::emulator::apiserver::clients::{ClientId, ClientStats, Clients};
use crate::emulator::apiserver::tokens::{Binding, TokenAuthority};
use crate::emulator::cluster::{self, ClusterState, Kind};
use crate::lab::{AGGREGATOR_POD, AGGREGATOR_SERVICE_ACCOUNT};
use crate::net::netns;
use crate::net::topology::{AGGREGATOR_SVC, DNS_SVC, KUBERNETES_SVC, NAMESPACE};
use crate::process::{BIN_DIR_ENV, Binaries, ProcessSpec, Processes};

/// Where every agent serves `/status`, on its own loopback.
const STATUS_PORT: u16 = 9092;
/// The agents' report and probe ports.
const POD_AGENT_PORT: u16 = 9090;
const HOST_AGENT_PORT: u16 = 9091;
/// At most this many Nodes: the pod networks are 10.128.0.0/24 to
/// 10.255.255.0/24.
const MAX_NODES: usize = 128 * 256;

#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// Node objects in the emulator, each with an agent, a companion and a
    /// host-agent Pod object.
    #[arg(long, default_value_t = 500)]
    nodes: usize,
    /// Real agents, half in the pod network and half in the host network
    /// (the pod agents one more when odd), on the first nodes.
    #[arg(long, default_value_t = 4)]
    real_agents: usize,
    /// Node status updates made during the measurement.
    #[arg(long, default_value_t = 40)]
    updates: u32,
    /// Time between two Node updates.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    gap: Duration,
    /// Wait after the last update before reading the counters.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Idle time measured before the updates (bookmarks only, if anything).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// The agents' and the aggregator's --interval.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long the agents may take to sync with the API.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    sync_timeout: Duration,
    /// Directory of netmatrix-agent and netmatrix-aggregator (default: next
    /// to this binary).
    #[arg(long, env = BIN_DIR_ENV)]
    bin_dir: Option<PathBuf>,
    /// Namespace prefix (default: random, nm + 6 hex digits).
    #[arg(long)]
    prefix: Option<String>,
    /// The agents watch the API themselves (`--peer-discovery api`; the
    /// aggregator `--no-pinglists`): the "before", when every agent watched
    /// every Node. By default they take their peers from the aggregator's
    /// pinglists, as the chart runs them.
    #[arg(long)]
    agent_watches: bool,
}

/// One of the bench's nodes: its name and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BenchNode {
    name: String,
    /// The node's address (host-network pods have it too), the even end
    /// of a /31 whose odd end is its gateway in the cluster namespace.
    ip: Ipv4Addr,
    /// The node's pod network, a /24: `.1` gateway, `.2` agent, `.3`
    /// companion.
    pod_net: Ipv4Addr,
}

impl BenchNode {
    fn new(k: usize) -> Option<BenchNode> {
        if k >= MAX_NODES {
            return None;
        }
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
        let ip = Ipv4Addr::from(base + 2 + 2 * u32::try_from(k).ok()?);
        let pod_net = Ipv4Addr::new(10, 128 + u8::try_from(k / 256).ok()?, (k % 256) as u8, 0);
        Some(BenchNode {
            name: format!("node-{k}"),
            ip,
            pod_net,
        })
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ip) + 1)
    }

    fn pod_ip(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.pod_net.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    fn agent_ip(&self) -> Ipv4Addr {
        self.pod_ip(2)
    }

    fn companion_ip(&self) -> Ipv4Addr {
        self.pod_ip(3)
    }

    fn agent_pod(&self) -> String {
        format!("netmatrix-agent-{}", self.name)
    }

    fn host_agent_pod(&self) -> String {
        format!("netmatrix-host-agent-{}", self.name)
    }
}

/// Which kind of netmatrix process a client is, by its ServiceAccount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Aggregator,
    PodAgent,
    HostAgent,
    Other,
}

impl Group {
    fn of(client: &str) -> Group {
        let service_account = client.split('/').nth(1);
        match service_account {
            Some(AGGREGATOR_SERVICE_ACCOUNT) => Group::Aggregator,
            Some(labels::AGENT_SERVICE_ACCOUNT) => Group::PodAgent,
            Some(labels::HOST_AGENT_SERVICE_ACCOUNT) => Group::HostAgent,
            _ => Group::Other,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Group::Aggregator => "aggregator",
            Group::PodAgent => "pod agent, each",
            Group::HostAgent => "host agent, each",
            Group::Other => "other clients",
        }
    }
}

/// The counters at the three readings.
#[derive(Debug, Clone, Default)]
struct Readings {
    synced: BTreeMap<String, ClientStats>,
    idle_end: BTreeMap<String, ClientStats>,
    end: BTreeMap<String, ClientStats>,
    idle: Duration,
    updates: u32,
}

/// What one client cost, from the readings.
#[derive(Debug, Clone, PartialEq)]
struct Cost {
    client: String,
    group: Group,
    /// Watch streams open at the end.
    streams_open: u64,
    /// Watch streams opened after the sync (re-watches).
    streams_opened: u64,
    /// Lists after the sync (relists).
    lists: u64,
    /// Watch events and bytes during the updates.
    update_events: u64,
    update_bytes: u64,
    /// Bytes per Node update (everything sent during the updates, divided
    /// by their number: bookmarks of that window included).
    bytes_per_update: f64,
    idle_bytes_per_s: f64,
    /// Everything sent up to the sync (lists and initial events).
    sync_bytes: u64,
}

impl Readings {
    fn costs(&self) -> Vec<Cost> {
        let zero = ClientStats::default();
        let mut costs: Vec<Cost> = self
            .end
            .iter()
            .map(|(client, end)| {
                let synced = self.synced.get(client).unwrap_or(&zero);
                let idle_end = self.idle_end.get(client).unwrap_or(&zero);
                let idle = idle_end.since(synced);
                let updates = end.since(idle_end);
                let run = end.since(synced);
                Cost {
                    client: client.clone(),
                    group: Group::of(client),
                    streams_open: end.watches_open,
                    streams_opened: run.watches_opened,
                    lists: run.lists,
                    update_events: updates.watch_events,
                    update_bytes: updates.bytes(),
                    bytes_per_update: updates.bytes() as f64 / f64::from(self.updates.max(1)),
                    idle_bytes_per_s: idle.bytes() as f64 / self.idle.as_secs_f64().max(1e-3),
                    sync_bytes: synced.bytes(),
                }
            })
            .collect();
        costs.sort_by(|a, b| (a.group, &a.client).cmp(&(b.group, &b.client)));
        costs
    }
}

/// The whole cluster, extrapolated: 1 aggregator + N pod agents + N host
/// agents, each agent costing the mean of those measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cluster {
    nodes: usize,
    streams: f64,
    bytes_per_update: f64,
}

fn extrapolate(costs: &[Cost], nodes: usize) -> Cluster {
    let mean = |group: Group, of: fn(&Cost) -> f64| {
        let values: Vec<f64> = costs.iter().filter(|c| c.group == group).map(of).collect();
        if values.is_empty() {
            0.0
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        }
    };
    let total = |of: fn(&Cost) -> f64| {
        let aggregator: f64 = costs
            .iter()
            .filter(|c| c.group == Group::Aggregator)
            .map(of)
            .sum();
        aggregator + nodes as f64 * (mean(Group::PodAgent, of) + mean(Group::HostAgent, of))
    };
    Cluster {
        nodes,
        streams: total(|c| c.streams_open as f64),
        bytes_per_update: total(|c| c.bytes_per_update),
    }
}

/// One markdown table per group of netmatrix clients.
fn tables(costs: &[Cost]) -> String {
    let header = [
        "client",
        "watch streams open",
        "streams opened since sync",
        "lists since sync",
        "watch events (updates)",
        "bytes (updates)",
        "bytes per Node update",
        "idle bytes/s",
        "bytes to sync",
    ];
    let mut out = String::new();
    for group in [
        Group::Aggregator,
        Group::PodAgent,
        Group::HostAgent,
        Group::Other,
    ] {
        let rows: Vec<Vec<String>> = costs
            .iter()
            .filter(|c| c.group == group)
            .map(|c| {
                vec![
                    format!("`{}`", c.client),
                    c.streams_open.to_string(),
                    c.streams_opened.to_string(),
                    c.lists.to_string(),
                    c.update_events.to_string(),
                    c.update_bytes.to_string(),
                    format!("{:.0}", c.bytes_per_update),
                    format!("{:.1}", c.idle_bytes_per_s),
                    c.sync_bytes.to_string(),
                ]
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        out.push_str(&format!("\n{}:\n\n", group.title()));
        out.push_str(&markdown_table(&header, &rows));
    }
    out
}

/// The agents that run, from `real`: pod agents on nodes 0.., host agents
/// on nodes 0.. (the pod agents get the odd one).
fn real_agents(real: usize) -> (usize, usize) {
    (real.div_ceil(2), real / 2)
}

pub async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > MAX_NODES {
        bail!("--nodes must be 1 to {MAX_NODES}");
    }
    let (pod_agents, host_agents) = real_agents(args.real_agents);
    if pod_agents == 0 || pod_agents > args.nodes {
        bail!("--real-agents must be 1 to twice --nodes");
    }
    let bins = Binaries::locate(args.bin_dir.as_deref())?;
    let nodes: Vec<BenchNode> = (0..args.nodes).filter_map(BenchNode::new).collect();
    let mut scratch = Scratch::create(args.prefix.clone())?;
    let cluster_ns = scratch.netns("cluster")?;
    let mut agents = Vec::new();
    for (j, node) in nodes.iter().enumerate().take(pod_agents) {
        agents.push(RealAgent::new(&mut scratch, node, false, j)?);
    }
    for (j, node) in nodes.iter().enumerate().take(host_agents) {
        agents.push(RealAgent::new(&mut scratch, node, true, j)?);
    }
    let state = ClusterState::new();
    register(&state, &nodes);
    // `ip` runs on the blocking pool: the namespaces' links and addresses.
    let network = (cluster_ns.clone(), nodes.clone(), agents.clone());
    tokio::task::spawn_blocking(move || build(&network.0, &network.1, &network.2))
        .await
        .context("building the bench's network")??;
    let pki = cluster_pki()?;
    let clients = Arc::new(Clients::new(&pki.token));
    let authority = Arc::new(TokenAuthority::new()?);
    let _tasks = start_api_and_dns(
        &cluster_ns,
        &state,
        &pki,
        Arc::clone(&clients),
        Arc::clone(&authority),
    )?;
    let procs = Processes::new(scratch.state().clone());
    let api_url = format!("https://{}:{}", KUBERNETES_SVC.0, KUBERNETES_SVC.1);
    // Each process with a token of its own: the emulator counts by token.
    let kubeconfig = |process: &str, client: ClientId| -> anyhow::Result<PathBuf> {
        let token = pki.client_token(client.as_str());
        clients.register(&token, client);
        Ok(scratch.state().write(
            &format!("kubeconfig-{process}"),
            &pki.kubeconfig_with(&api_url, &token),
        )?)
    };
    let interval = humantime::format_duration(args.interval).to_string();
    let aggregator_config = kubeconfig(
        "aggregator",
        ClientId::pod(NAMESPACE, AGGREGATOR_SERVICE_ACCOUNT, AGGREGATOR_POD),
    )?;
    procs.start(ProcessSpec {
        name: "aggregator".into(),
        netns: cluster_ns.clone(),
        program: bins.aggregator.clone(),
        args: [
            "--listen",
            &SocketAddr::from(AGGREGATOR_SVC).to_string(),
            "--interval",
            &interval,
            "--namespace",
            NAMESPACE,
            "--agent-selector",
            labels::REPORTER_SELECTOR,
        ]
        .map(String::from)
        .into_iter()
        .chain(args.agent_watches.then(|| "--no-pinglists".to_owned()))
        .collect(),
        env: pod_env(&aggregator_config),
    })?;
    for agent in &agents {
        let service_account = if agent.host {
            labels::HOST_AGENT_SERVICE_ACCOUNT
        } else {
            labels::AGENT_SERVICE_ACCOUNT
        };
        let config = kubeconfig(
            &agent.process,
            ClientId::pod(NAMESPACE, service_account, &agent.pod),
        )?;
        let binding = Binding::of_pod(&state, NAMESPACE, &agent.pod)
            .with_context(|| format!("no Pod object {}", agent.pod))?;
        let token = authority.issue(
            &binding,
            &[labels::TOKEN_AUDIENCE],
            Duration::from_secs(3600),
            netmatrix_runtime::now_unix_secs(),
        );
        let token_file = scratch
            .state()
            .write(&format!("token-{}", agent.pod), &token)?;
        let mut spec = agent.spec(&bins, &interval, &config, &token_file);
        if args.agent_watches {
            spec.args
                .extend(["--peer-discovery", "api"].map(String::from));
        }
        procs.start(spec)?;
    }
    println!(
        "bench control-plane: lab {}, {} nodes ({} Pod objects), {pod_agents} pod agent(s) and {host_agents} host agent(s) running, the aggregator; logs in {}",
        scratch.prefix(),
        nodes.len(),
        3 * nodes.len() + 1,
        scratch.state().path().display()
    );

    let source = if args.agent_watches {
        "api"
    } else {
        "aggregator"
    };
    wait_for_sync(&agents, &procs, &clients, source, args.sync_timeout).await?;
    let synced = clients.snapshot();
    tracing::info!(idle = ?args.idle, "synced; measuring idle");
    tokio::time::sleep(args.idle).await;
    let idle_end = clients.snapshot();
    let started = Instant::now();
    for i in 0..args.updates {
        let node = &nodes[i as usize % nodes.len()];
        heartbeat(&state, &node.name)?;
        tokio::time::sleep(args.gap).await;
    }
    tokio::time::sleep(args.settle).await;
    let end = clients.snapshot();
    let updating = started.elapsed();
    if let Some((name, status)) = procs.exited().into_iter().next() {
        bail!("{name} exited during the measurement ({status})");
    }

    let readings = Readings {
        synced,
        idle_end,
        end,
        idle: args.idle,
        updates: args.updates,
    };
    let costs = readings.costs();
    let node_bytes = state
        .get(Kind::Node, "", &nodes[0].name)
        .and_then(|n| serde_json::to_vec(&n).ok())
        .map_or(0, |b| b.len());
    let cluster = extrapolate(&costs, nodes.len());
    print!("{}", tables(&costs));
    println!(
        "\n{} Node updates over {:.1} s (gap {}, settle {}); idle window {}. One Node object: {node_bytes} bytes of JSON.",
        args.updates,
        updating.as_secs_f64(),
        humantime::format_duration(args.gap),
        humantime::format_duration(args.settle),
        humantime::format_duration(args.idle),
    );
    println!("\n{}", cluster_line(&cluster, pod_agents, host_agents));
    Ok(())
}

/// The extrapolated line, saying what it is extrapolated from.
fn cluster_line(cluster: &Cluster, pod_agents: usize, host_agents: usize) -> String {
    format!(
        "Whole cluster of {n} nodes (1 aggregator + {n} pod agents + {n} host agents), \
         extrapolated from the {pod_agents} pod agent(s) and {host_agents} host agent(s) measured \
         (their mean times {n}): **{streams:.0} API watch streams** held by netmatrix, \
         **{bytes:.0} bytes ({mb:.2} MB) sent by the API server per Node update**.",
        n = cluster.nodes,
        streams = cluster.streams,
        bytes = cluster.bytes_per_update,
        mb = cluster.bytes_per_update / 1e6,
    )
}

/// A kubelet's Node status update: the Ready condition's heartbeat moves.
fn heartbeat(state: &ClusterState, node: &str) -> anyhow::Result<()> {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let patch = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "lastHeartbeatTime": now,
    }]}});
    state
        .patch_node_status(node, &patch, true)
        .map_err(anyhow::Error::msg)?
        .with_context(|| format!("no Node {node}"))?;
    Ok(())
}

/// Until every agent reads its peers from `source` (`peer_source` of its
/// last round: `api`, or `aggregator` with pinglists) and the aggregator
/// watches.
async fn wait_for_sync(
    agents: &[RealAgent],
    procs: &Processes,
    clients: &Clients,
    source: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((name, status)) = procs.exited().into_iter().next() {
            bail!(
                "{name} exited ({status}); see {}",
                procs.log_path(&name).display()
            );
        }
        let mut waiting = Vec::new();
        for agent in agents {
            let status = http_get(
                &agent.netns,
                SocketAddr::from((Ipv4Addr::LOCALHOST, STATUS_PORT)),
                "/status",
            )
            .await
            .ok()
            .and_then(|body| serde_json::from_str::<Value>(&body).ok());
            let got = status
                .as_ref()
                .and_then(|s| s["last_round"]["peer_source"].as_str());
            if got != Some(source) {
                waiting.push(agent.process.clone());
            }
        }
        let aggregator_watches = clients
            .snapshot()
            .iter()
            .filter(|(client, _)| Group::of(client) == Group::Aggregator)
            .map(|(_, s)| s.watches_open)
            .sum::<u64>();
        if aggregator_watches == 0 {
            waiting.push("aggregator".into());
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not synced with the API after {timeout:?}: {waiting:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A real agent process of the bench.
#[derive(Debug, Clone)]
struct RealAgent {
    node: BenchNode,
    host: bool,
    pod: String,
    process: String,
    netns: String,
    /// The veth's name in the cluster namespace.
    outer_dev: String,
}

impl RealAgent {
    fn new(scratch: &mut Scratch, node: &BenchNode, host: bool, j: usize) -> anyhow::Result<Self> {
        let short = format!("{}a{j}", if host { 'h' } else { 'p' });
        Ok(RealAgent {
            node: node.clone(),
            host,
            pod: if host {
                node.host_agent_pod()
            } else {
                node.agent_pod()
            },
            process: format!("{}-agent-{}", if host { "host" } else { "pod" }, node.name),
            netns: scratch.netns(&short)?,
            outer_dev: short,
        })
    }

    /// (its address, its gateway, prefix length).
    fn addresses(&self) -> (Ipv4Addr, Ipv4Addr, u8) {
        if self.host {
            (self.node.ip, self.node.gateway(), 31)
        } else {
            (self.node.agent_ip(), self.node.pod_ip(1), 24)
        }
    }

    fn spec(
        &self,
        bins: &Binaries,
        interval: &str,
        kubeconfig: &std::path::Path,
        token_file: &std::path::Path,
    ) -> ProcessSpec {
        let (ip, _, _) = self.addresses();
        let port = if self.host {
            HOST_AGENT_PORT
        } else {
            POD_AGENT_PORT
        };
        let mut args = agent_cluster_args(&self.node.name, &self.pod, ip, interval, port);
        args.extend([
            "--status-listen".to_owned(),
            format!("127.0.0.1:{STATUS_PORT}"),
            "--token-file".to_owned(),
            token_file.display().to_string(),
        ]);
        if self.host {
            args.extend(
                [
                    "--network",
                    "host",
                    "--peer-selector",
                    labels::HOST_AGENT_SELECTOR,
                ]
                .map(String::from),
            );
        }
        ProcessSpec {
            name: self.process.clone(),
            netns: self.netns.clone(),
            program: bins.agent.clone(),
            args,
            env: pod_env(kubeconfig),
        }
    }
}

/// The agents' links to the cluster namespace, which routes between them;
/// every other pod and node address and the Services on its `lo` (local
/// addresses answer ICMP).
fn build(cluster_ns: &str, nodes: &[BenchNode], agents: &[RealAgent]) -> anyhow::Result<()> {
    for agent in agents {
        link_pod(
            &agent.netns,
            cluster_ns,
            &agent.outer_dev,
            agent.addresses(),
            "default",
        )?;
    }
    netns::sysctl(cluster_ns, &["net.ipv4.ip_forward=1"])?;
    let real: Vec<Ipv4Addr> = agents.iter().map(|a| a.addresses().0).collect();
    let batch: String = nodes
        .iter()
        .flat_map(|n| [n.ip, n.agent_ip(), n.companion_ip()])
        .filter(|ip| !real.contains(ip))
        .chain([KUBERNETES_SVC.0, DNS_SVC.0, AGGREGATOR_SVC.0])
        .map(|ip| format!("addr add {ip}/32 dev lo\n"))
        .collect();
    ip_batch(cluster_ns, &batch)
}

/// The Nodes with their netmatrix pods, the aggregator's pod, the Services
/// and the namespace, as a cluster running the chart has them.
fn register(state: &ClusterState, nodes: &[BenchNode]) {
    for n in nodes {
        let cidr = format!("{}/24", n.pod_net);
        state.apply_node(cluster::node(&n.name, &n.ip.to_string(), &cidr));
        let pods = [
            (
                n.agent_pod(),
                n.agent_ip(),
                labels::COMPONENT_AGENT,
                Some(labels::AGENT_SERVICE_ACCOUNT),
            ),
            (
                format!("netmatrix-companion-{}", n.name),
                n.companion_ip(),
                labels::COMPONENT_COMPANION,
                None,
            ),
            (
                n.host_agent_pod(),
                n.ip,
                labels::COMPONENT_HOST_AGENT,
                Some(labels::HOST_AGENT_SERVICE_ACCOUNT),
            ),
        ];
        for (name, ip, component, account) in pods {
            state.apply_pod(netmatrix_pod(&name, &n.name, ip, component, account));
        }
    }
    if let Some(first) = nodes.first() {
        state.apply_pod(netmatrix_pod(
            AGGREGATOR_POD,
            &first.name,
            AGGREGATOR_SVC.0,
            labels::COMPONENT_AGGREGATOR,
            Some(AGGREGATOR_SERVICE_ACCOUNT),
        ));
    }
    crate::lab::objects::register_services(state);
    crate::lab::objects::register_namespaces(state);
}

/// A Running netmatrix Pod with the chart's labels: agents and companions
/// are probe targets, host agents (with the node's address) probe each
/// other by component.
fn netmatrix_pod(
    name: &str,
    node: &str,
    ip: Ipv4Addr,
    component: &str,
    service_account: Option<&str>,
) -> k8s_openapi::api::core::v1::Pod {
    let probe_target = [labels::COMPONENT_AGENT, labels::COMPONENT_COMPANION].contains(&component);
    let mut pod_labels = vec![(labels::NAME, labels::APP), (labels::COMPONENT, component)];
    if probe_target {
        pod_labels.push((labels::PROBE_TARGET, "true"));
    }
    let host_network = component == labels::COMPONENT_HOST_AGENT;
    let mut pod = cluster::pod(
        NAMESPACE,
        name,
        node,
        &ip.to_string(),
        &pod_labels,
        host_network,
    );
    if let Some(spec) = pod.spec.as_mut() {
        spec.service_account_name = service_account.map(str::to_owned);
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(open: u64, opened: u64, watch_bytes: u64, list_bytes: u64) -> ClientStats {
        ClientStats {
            watches_open: open,
            watches_opened: opened,
            watch_bytes,
            watch_events: watch_bytes / 100,
            lists: 3,
            list_bytes,
            ..ClientStats::default()
        }
    }

    const AGG: &str = "netmatrix/netmatrix-aggregator/netmatrix-aggregator";
    const POD_A: &str = "netmatrix/netmatrix-agent/netmatrix-agent-node-0";
    const POD_B: &str = "netmatrix/netmatrix-agent/netmatrix-agent-node-1";
    const HOST: &str = "netmatrix/netmatrix-host-agent/netmatrix-host-agent-node-0";

    fn readings() -> Readings {
        let at = |entries: &[(&str, ClientStats)]| -> BTreeMap<String, ClientStats> {
            entries.iter().map(|(c, s)| ((*c).to_owned(), *s)).collect()
        };
        Readings {
            synced: at(&[
                (AGG, stats(4, 4, 1_000, 50_000)),
                (POD_A, stats(3, 3, 500, 40_000)),
                (POD_B, stats(3, 3, 500, 40_000)),
                (HOST, stats(4, 4, 500, 40_000)),
            ]),
            idle_end: at(&[
                (AGG, stats(4, 4, 1_100, 50_000)),
                (POD_A, stats(3, 3, 600, 40_000)),
                (POD_B, stats(3, 3, 600, 40_000)),
                (HOST, stats(4, 4, 600, 40_000)),
            ]),
            end: at(&[
                (AGG, stats(4, 4, 11_100, 50_000)),
                (POD_A, stats(3, 3, 10_600, 40_000)),
                (POD_B, stats(3, 4, 12_600, 40_000)),
                (HOST, stats(4, 4, 10_600, 40_000)),
                ("lab", stats(0, 0, 0, 0)),
            ]),
            idle: Duration::from_secs(10),
            updates: 10,
        }
    }

    #[test]
    fn costs_are_per_client_and_per_update() {
        let costs = readings().costs();
        let groups: Vec<Group> = costs.iter().map(|c| c.group).collect();
        assert_eq!(
            groups,
            [
                Group::Aggregator,
                Group::PodAgent,
                Group::PodAgent,
                Group::HostAgent,
                Group::Other
            ]
        );
        let agg = &costs[0];
        assert_eq!((agg.streams_open, agg.streams_opened, agg.lists), (4, 0, 0));
        assert_eq!(agg.update_bytes, 10_000);
        assert_eq!(agg.bytes_per_update, 1_000.0);
        assert_eq!(agg.idle_bytes_per_s, 10.0);
        assert_eq!(agg.sync_bytes, 51_000);
        // A re-watch during the run is counted.
        assert_eq!(costs[2].streams_opened, 1);
        assert_eq!(costs[2].bytes_per_update, 1_200.0);
    }

    #[test]
    fn the_cluster_is_the_aggregator_plus_n_times_the_mean_agents() {
        let cluster = extrapolate(&readings().costs(), 500);
        // 4 + 500 × (3 + 4)
        assert_eq!(cluster.streams, 3_504.0);
        // 1000 + 500 × (mean(1000, 1200) + 1000)
        assert_eq!(cluster.bytes_per_update, 1_000.0 + 500.0 * 2_100.0);
        let line = cluster_line(&cluster, 2, 1);
        assert!(line.contains("**3504 API watch streams**"), "{line}");
        assert!(
            line.contains("2 pod agent(s) and 1 host agent(s) measured"),
            "{line}"
        );
        assert!(line.contains("1051000 bytes (1.05 MB)"), "{line}");
    }

    #[test]
    fn one_table_per_group() {
        let text = tables(&readings().costs());
        for title in [
            "aggregator:",
            "pod agent, each:",
            "host agent, each:",
            "other clients:",
        ] {
            assert!(text.contains(&format!("\n{title}\n")), "{title}: {text}");
        }
        assert!(
            text.contains(&format!(
                "| `{POD_B}` | 3 | 1 | 0 | 120 | 12000 | 1200 | 10.0 | 40500 |"
            )),
            "{text}"
        );
    }

    #[test]
    fn nodes_have_distinct_networks() {
        let first = BenchNode::new(0).unwrap();
        assert_eq!(first.ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(first.gateway(), Ipv4Addr::new(198, 18, 0, 3));
        assert_eq!(first.agent_ip(), Ipv4Addr::new(10, 128, 0, 2));
        let n = BenchNode::new(300).unwrap();
        assert_eq!(n.ip, Ipv4Addr::new(198, 18, 2, 90));
        assert_eq!(n.companion_ip(), Ipv4Addr::new(10, 129, 44, 3));
        let last = BenchNode::new(MAX_NODES - 1).unwrap();
        assert_eq!(last.pod_net, Ipv4Addr::new(10, 255, 255, 0));
        assert!(BenchNode::new(MAX_NODES).is_none());
        assert_eq!(real_agents(4), (2, 2));
        assert_eq!(real_agents(3), (2, 1));
        assert_eq!(real_agents(1), (1, 0));
    }
}
