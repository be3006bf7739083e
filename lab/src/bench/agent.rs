//! `netmatrix-lab bench agent`: the real `netmatrix-agent` binary probing
//! thousands of answering peers, against the lab's Kubernetes API server
//! emulator and DNS server; its CPU time and memory per round.
//!
//! ```text
//!  PREFIX-agent (the agent pod)            PREFIX-cluster
//!  eth0 10.244.0.2/24  <──── veth ────>  eth0 10.244.0.1/24
//!  default via 10.244.0.1                  lo: the peer pods 10.244.K.P/32
//!  netmatrix-agent :9090                   (node-K, K = 1.., P = 2..), answering ICMP;
//!                                          10.96.0.1:443   API server emulator (TLS)
//!                                          10.96.0.10:53   DNS (cluster.local)
//!                                          10.96.0.20:80   report sink (POST /api/v1/reports,
//!                                                          GET /api/v1/pinglist/node-0)
//! ```
//!
//! The peers are companion pods (probe targets that are not agents, so the
//! SRV record lists only the one agent), `--pods-per-node` per node, so that
//! the agent probes every one of them (full mesh below 200 nodes). The
//! report sink stands in for the aggregator: it serves the agent the
//! pinglist the aggregator's own code computes from the emulator's objects
//! (as the chart runs agents; `--agent-arg=--peer-discovery=api` has the
//! agent watch the emulator instead), and counts the reports and the peers
//! in each, which proves the rounds really covered every peer.
//!
//! After `--warmup-rounds` rounds, `/proc/PID/stat` (utime + stime) and
//! `/proc/PID/status` (VmRSS, VmHWM) are sampled over `--duration`. The
//! agent's metrics are read (from inside the cluster namespace: nothing is
//! sent from the root namespace to a lab address) only at the start and the
//! end of the window, so the measurement costs the agent almost nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::emulator::apiserver::clients::Clients;
use crate::emulator::apiserver::tokens::TokenAuthority;
use crate::emulator::cluster::{self, ClusterState};
use crate::emulator::dns::{self, DnsControl};
use crate::emulator::pki::LabPki;
use crate::net::netns;
use crate::net::topology::{
    AGENT_METRICS_PORT, AGGREGATOR_SVC, CLUSTER_DOMAIN, DNS_SVC, KUBERNETES_SVC, NAMESPACE,
};
use crate::process::{AGENT_BIN, BIN_DIR_ENV, LAB_PATH, ProcessSpec, Processes};
use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use clap::Args;
use netmatrix_aggregator::pinglist::build::{PinglistConfig, ROTATE_EVERY_ROUNDS};
use netmatrix_aggregator::pinglist::{Change, ClusterView, Lists, Published};
use netmatrix_api::protobuf::REPORT_PROTOBUF;
use netmatrix_api::{PINGLIST_PATH, REPORTS_PATH, Report, labels};
use tokio::task::JoinHandle;

use super::{Scratch, link_prober, markdown_table};

/// The agent pod's address, and its gateway (the cluster namespace).
const AGENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The agent's node.
const AGENT_NODE: &str = "node-0";
const AGENT_POD: &str = "netmatrix-agent-node-0";
/// Targets we must meet at 2,500 peers every 10 s.
const TARGET_CPU_PERCENT: f64 = 0.25;
const TARGET_RSS_BYTES: u64 = 25_000_000;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Peer pods, all answering ICMP.
    #[arg(long, default_value_t = 2500)]
    peers: usize,
    /// Peer pods per node (nodes = peers / this, rounded up; at most 200
    /// nodes, so the agent probes every node).
    #[arg(long, default_value_t = 50)]
    pods_per_node: usize,
    /// The agent's --interval.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Rounds before measuring.
    #[arg(long, default_value_t = 2)]
    warmup_rounds: u64,
    /// Directory of netmatrix-agent (default: target/release next to this
    /// binary's target directory if built, else next to this binary).
    #[arg(long, env = BIN_DIR_ENV)]
    bin_dir: Option<PathBuf>,
    /// More arguments for the agent (repeatable), e.g. --agent-arg=--icmp-count=1.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// More environment for the agent (repeatable), e.g. --agent-env MALLOC_ARENA_MAX=2.
    #[arg(long = "agent-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    agent_env: Vec<(String, String)>,
    /// Exit non-zero when a target (CPU, RSS) is missed.
    #[arg(long)]
    enforce: bool,
    /// Namespace prefix (default: random, nm + 6 hex digits).
    #[arg(long)]
    prefix: Option<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

/// Aborts the in-process servers when dropped (before the namespaces go).
pub(super) struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// What the report sink saw.
#[derive(Debug, Default, Clone)]
struct SinkStats {
    reports: u64,
    last_round: u64,
    last_peers: usize,
    last_answered: usize,
    /// Small and large echoes sent in the last round.
    last_echoes: u64,
    /// Size of the last report's body.
    last_bytes: usize,
}

/// CPU time and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ProcSample {
    /// utime + stime, clock ticks.
    cpu_ticks: u64,
    /// stime alone (part of `cpu_ticks`): in the lab it includes the peers'
    /// echo replies, which the veth delivers in the sender's context.
    sys_ticks: u64,
    rss_kb: u64,
    hwm_kb: u64,
    /// The parts of `rss_kb`: heap and stacks, and mapped files (the binary).
    anon_kb: u64,
    file_kb: u64,
}

/// `(utime, stime)` (fields 14 and 15) of a `/proc/PID/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces.
fn parse_stat_cpu(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// A `Key:   123 kB` line of `/proc/PID/status`, in kB.
fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let value = l.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (did the agent exit?)"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let (utime, stime) = parse_stat_cpu(&stat).context("parsing /proc/PID/stat")?;
    Ok(ProcSample {
        cpu_ticks: utime + stime,
        sys_ticks: stime,
        rss_kb: parse_status_kb(&status, "VmRSS").context("no VmRSS")?,
        hwm_kb: parse_status_kb(&status, "VmHWM").context("no VmHWM")?,
        anon_kb: parse_status_kb(&status, "RssAnon").unwrap_or(0),
        file_kb: parse_status_kb(&status, "RssFile").unwrap_or(0),
    })
}

/// Sum of every series of metric `name` in Prometheus text (`None` when
/// there is none).
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if rest.starts_with('{') {
            rest.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// The agent's metrics that tell what a round covered.
#[derive(Debug, Clone, Copy, Default)]
struct AgentMetrics {
    rounds: f64,
    peers: f64,
    peers_failing: f64,
    /// Series exposed (sample lines).
    series: usize,
}

impl AgentMetrics {
    fn parse(text: &str) -> Self {
        AgentMetrics {
            series: text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count(),
            rounds: metric_sum(text, "netmatrix_agent_rounds_total").unwrap_or(0.0),
            peers: metric_sum(text, "netmatrix_agent_peers").unwrap_or(0.0),
            peers_failing: metric_sum(text, "netmatrix_agent_peers_failing").unwrap_or(0.0),
        }
    }
}

/// `netmatrix-agent`: `--bin-dir`/`$NETMATRIX_BIN_DIR` if given, else the
/// release build of this target directory, else next to this binary.
fn locate_agent(bin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match bin_dir {
        Some(d) => vec![d.to_path_buf()],
        None => {
            let exe = std::env::current_exe().context("path of this executable")?;
            let here = exe.parent().map(Path::to_path_buf);
            let target = here.as_deref().and_then(Path::parent);
            target
                .map(|t| t.join("release"))
                .into_iter()
                .chain(here.clone())
                .chain(target.map(Path::to_path_buf))
                .collect()
        }
    };
    candidates
        .iter()
        .map(|d| d.join(AGENT_BIN))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{AGENT_BIN} not found in {}; run `cargo build --release -p netmatrix-agent` or pass --bin-dir",
                candidates
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Address of peer `p` (0-based) of node `k` (1-based): 10.244.K.(P+2).
fn peer_ip(k: usize, p: usize) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::new(
        10,
        244,
        u8::try_from(k).ok()?,
        u8::try_from(p + 2).ok()?,
    ))
}

/// (node index, peer addresses) for `peers` pods, `per_node` per node.
fn plan(peers: usize, per_node: usize) -> anyhow::Result<Vec<(usize, Vec<Ipv4Addr>)>> {
    if per_node == 0 || per_node > 250 {
        bail!("--pods-per-node must be 1 to 250");
    }
    let nodes = peers.div_ceil(per_node);
    if nodes > 200 {
        bail!("{peers} peers at {per_node} per node is {nodes} nodes; at most 200 (full mesh)");
    }
    let mut out = Vec::new();
    for k in 1..=nodes {
        let n = per_node.min(peers - (k - 1) * per_node);
        let ips = (0..n)
            .map(|p| peer_ip(k, p).context("peer address"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        out.push((k, ips));
    }
    Ok(out)
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let nodes = plan(args.peers, args.pods_per_node)?;
    if args.interval < Duration::from_secs(1) {
        bail!("--interval must be at least 1s");
    }
    let agent_bin = locate_agent(args.bin_dir.as_deref())?;
    let release = agent_bin.components().any(|c| c.as_os_str() == "release");
    if !release {
        tracing::warn!(bin = %agent_bin.display(), "not a release build: the numbers will be pessimistic");
    }
    let mut scratch = Scratch::create(args.prefix.clone())?;
    let agent_ns = scratch.netns("agent")?;
    let cluster_ns = scratch.netns("cluster")?;
    {
        let (a, c) = (agent_ns.clone(), cluster_ns.clone());
        let ips: Vec<Ipv4Addr> = nodes.iter().flat_map(|(_, ips)| ips.clone()).collect();
        tokio::task::spawn_blocking(move || build(&a, &c, &ips))
            .await
            .context("network build task")??;
    }

    // The cluster as the API server emulator and DNS serve it.
    let state = ClusterState::new();
    register(&state, &nodes);
    let pki = cluster_pki()?;
    let kubeconfig = scratch.state().write(
        "kubeconfig-pods",
        &pki.kubeconfig(&format!(
            "https://{}:{}",
            KUBERNETES_SVC.0, KUBERNETES_SVC.1
        )),
    )?;
    let sink = Arc::new(Mutex::new(SinkStats::default()));
    let pinglist = agent_pinglist(&state, args.interval)?;
    let _tasks = start_servers(&cluster_ns, &state, &pki, sink.clone(), pinglist)?;

    let procs = Processes::new(scratch.state().clone());
    let spec = agent_spec(&args, &agent_ns, &agent_bin, &kubeconfig);
    let log = procs.log_path(&spec.name);
    let pid = procs.start(spec)?;
    println!(
        "bench agent: lab {}, {} peers on {} nodes, interval {}, agent {} (pid {pid}, log {})",
        scratch.prefix(),
        args.peers,
        nodes.len(),
        humantime::format_duration(args.interval),
        agent_bin.display(),
        log.display()
    );

    // Warm-up: the first rounds (and the initial pod list) are not measured.
    let metrics_addr = SocketAddr::from((AGENT_IP, AGENT_METRICS_PORT));
    let warmup_deadline =
        Instant::now() + args.interval * u32::try_from(args.warmup_rounds + 3).unwrap_or(10);
    let warm = loop {
        if let Some((name, status)) = procs.exited().into_iter().next() {
            bail!("{name} exited ({status}); see {}", log.display());
        }
        if let Ok(text) = http_get(&cluster_ns, metrics_addr, "/metrics").await {
            let m = AgentMetrics::parse(&text);
            if m.rounds >= args.warmup_rounds as f64 {
                break m;
            }
        }
        if Instant::now() > warmup_deadline {
            bail!(
                "the agent did not finish {} rounds in time; see {}",
                args.warmup_rounds,
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tracing::info!(
        rounds = warm.rounds,
        peers = warm.peers,
        "warmed up; measuring"
    );

    let clk_tck = clock_ticks_per_second();
    let start = Instant::now();
    let first = sample(pid)?;
    let mut rss_max_kb = first.rss_kb;
    while start.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(500).min(args.duration)).await;
        let s = sample(pid)?;
        rss_max_kb = rss_max_kb.max(s.rss_kb);
    }
    let last = sample(pid)?;
    let wall = start.elapsed();
    let end_metrics = AgentMetrics::parse(&http_get(&cluster_ns, metrics_addr, "/metrics").await?);
    let sink = sink.lock().map(|s| s.clone()).unwrap_or_default();

    let cpu =
        Duration::from_secs_f64(last.cpu_ticks.saturating_sub(first.cpu_ticks) as f64 / clk_tck);
    let sys =
        Duration::from_secs_f64(last.sys_ticks.saturating_sub(first.sys_ticks) as f64 / clk_tck);
    let cpu_percent = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    let nominal_rounds = wall.as_secs_f64() / args.interval.as_secs_f64();
    let observed_rounds = end_metrics.rounds - warm.rounds;
    let cpu_ms_per_round = cpu.as_secs_f64() * 1000.0 / nominal_rounds;
    let mb = |kb: u64| kb as f64 * 1024.0 / 1e6;
    let rss_ok = rss_max_kb * 1024 < TARGET_RSS_BYTES;
    let cpu_ok = cpu_percent < TARGET_CPU_PERCENT;
    let ok = |b: bool| if b { "met" } else { "MISSED" }.to_string();

    println!(
        "\n### netmatrix-agent at {} peers ({} nodes x {}), interval {}, {} measured after {} warm-up rounds\n",
        args.peers,
        nodes.len(),
        args.pods_per_node,
        humantime::format_duration(args.interval),
        humantime::format_duration(Duration::from_secs(wall.as_secs())),
        args.warmup_rounds
    );
    let rows = vec![
        vec![
            "CPU, % of one core".into(),
            format!("{cpu_percent:.3} %"),
            format!("< {TARGET_CPU_PERCENT} %"),
            ok(cpu_ok),
        ],
        vec![
            "CPU per round".into(),
            format!(
                "{cpu_ms_per_round:.1} ms ({} ms in {nominal_rounds:.1} rounds, {} ms of it system)",
                cpu.as_millis(),
                sys.as_millis()
            ),
            format!(
                "< {:.0} ms",
                TARGET_CPU_PERCENT / 100.0 * args.interval.as_secs_f64() * 1000.0
            ),
            ok(cpu_ok),
        ],
        vec![
            "RSS (end of window / max sampled)".into(),
            format!("{:.1} MB / {:.1} MB", mb(last.rss_kb), mb(rss_max_kb)),
            format!("< {} MB", TARGET_RSS_BYTES / 1_000_000),
            ok(rss_ok),
        ],
        vec![
            "RSS: anonymous (heap, stacks) / mapped files (the binary)".into(),
            format!("{:.1} MB / {:.1} MB", mb(last.anon_kb), mb(last.file_kb)),
            "-".into(),
            "-".into(),
        ],
        vec![
            "peak RSS since start (VmHWM)".into(),
            format!("{:.1} MB", mb(last.hwm_kb)),
            "-".into(),
            "-".into(),
        ],
        vec![
            "rounds in window (agent metrics)".into(),
            format!("{observed_rounds:.0}"),
            "-".into(),
            "-".into(),
        ],
        vec![
            "peers probed per round (metrics: netmatrix_agent_peers)".into(),
            format!(
                "{:.0} ({:.0} failing)",
                end_metrics.peers, end_metrics.peers_failing
            ),
            format!("{}", args.peers),
            ok(end_metrics.peers as usize == args.peers),
        ],
        vec![
            "metric series exposed (healthy peers add none)".into(),
            format!("{}", end_metrics.series),
            "-".into(),
            "-".into(),
        ],
        vec![
            "last report posted (report sink)".into(),
            format!(
                "round {}: {} peers, {} answered, {} bytes; {} reports received",
                sink.last_round, sink.last_peers, sink.last_answered, sink.last_bytes, sink.reports
            ),
            format!("{}", args.peers),
            ok(sink.last_peers == args.peers && sink.last_answered == args.peers),
        ],
    ];
    print!(
        "{}",
        markdown_table(&["measure", "value", "target", "verdict"], &rows)
    );
    println!(
        "\nCPU: utime+stime from /proc/{pid}/stat ({clk_tck} ticks/s) over {:.1} s; agent: {}{}",
        wall.as_secs_f64(),
        agent_bin.display(),
        if release {
            ""
        } else {
            " (NOT a release build)"
        }
    );
    // The reference in the same namespace and run: fping, one echo to each
    // peer. In a lab the target namespace's reply is processed in the
    // sender's context, so kernel time per echo is shared by both tools.
    let ips: Vec<String> = nodes
        .iter()
        .flat_map(|(_, ips)| ips.iter().map(ToString::to_string))
        .collect();
    let fping = fping_cpu(&agent_ns, scratch.state().path(), &ips).await;
    let per_echo = |cpu_ms: f64, echoes: f64| cpu_ms * 1000.0 / echoes.max(1.0);
    println!();
    let mut compare = vec![vec![
        "netmatrix-agent, one round".into(),
        format!("{}", sink.last_echoes),
        format!("{cpu_ms_per_round:.1}"),
        format!("{:.1}", per_echo(cpu_ms_per_round, sink.last_echoes as f64)),
    ]];
    match fping {
        Ok(ms) => compare.push(vec![
            "fping -c1 -q -i1, same peers".into(),
            format!("{}", ips.len()),
            format!("{ms:.1}"),
            format!("{:.1}", per_echo(ms, ips.len() as f64)),
        ]),
        Err(error) => tracing::warn!(%error, "no fping baseline"),
    }
    print!(
        "{}",
        markdown_table(
            &[
                "side by side",
                "echoes",
                "CPU ms (user + system)",
                "CPU µs per echo"
            ],
            &compare
        )
    );
    if args.enforce && !(cpu_ok && rss_ok) {
        bail!("the agent missed its targets (see above)");
    }
    Ok(())
}

/// CPU time (user + system, ms) of `fping -c1` to `ips` from `ns`, read with
/// bash's `times` (its children's times).
async fn fping_cpu(ns: &str, dir: &Path, ips: &[String]) -> anyhow::Result<f64> {
    let list = dir.join("fping-targets");
    std::fs::write(&list, ips.join("\n")).context("writing the fping target list")?;
    let script = format!(
        "fping -c1 -q -i1 -f {} >/dev/null 2>&1; times",
        list.display()
    );
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns, "bash", "-c", &script])
        .output()
        .await
        .context("running fping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `times`: the shell's user/system, then its children's.
    let children = text.lines().nth(1).context("no `times` output")?;
    let total: f64 = children
        .split_whitespace()
        .map(parse_times_duration)
        .collect::<Option<Vec<f64>>>()
        .context("unreadable `times` output")?
        .iter()
        .sum();
    Ok(total * 1000.0)
}

/// `0m0.040s` (bash `times`) in seconds.
fn parse_times_duration(s: &str) -> Option<f64> {
    let (min, sec) = s.strip_suffix('s')?.split_once('m')?;
    Some(min.parse::<f64>().ok()? * 60.0 + sec.parse::<f64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The veth between the agent pod and the cluster namespace, the peers'
/// addresses and the Service addresses on the cluster namespace's `lo` (no
/// `dummy` driver needed; local addresses answer ICMP all the same).
fn build(agent: &str, cluster_ns: &str, peers: &[Ipv4Addr]) -> anyhow::Result<()> {
    // The namespace's only link is the veth: a default route stays inside.
    link_prober(
        agent,
        cluster_ns,
        (AGENT_IP, GATEWAY, 24),
        "default",
        peers
            .iter()
            .copied()
            .chain([KUBERNETES_SVC.0, DNS_SVC.0, AGGREGATOR_SVC.0]),
    )
}

/// Nodes, the agent's pod, the peer pods (companions: probe targets, not
/// agents) and the Services the agent looks up.
fn register(state: &ClusterState, nodes: &[(usize, Vec<Ipv4Addr>)]) {
    state.apply_node(cluster::node(AGENT_NODE, "198.18.0.100", "10.244.0.0/24"));
    state.apply_pod(cluster::pod(
        NAMESPACE,
        AGENT_POD,
        AGENT_NODE,
        &AGENT_IP.to_string(),
        &[
            (labels::NAME, labels::APP),
            (labels::COMPONENT, labels::COMPONENT_AGENT),
            (labels::PROBE_TARGET, "true"),
        ],
        false,
    ));
    for (k, ips) in nodes {
        let node = format!("node-{k}");
        state.apply_node(cluster::node(
            &node,
            &format!("198.18.{}.{}", k / 250, k % 250 + 1),
            &format!("10.244.{k}.0/24"),
        ));
        for (p, ip) in ips.iter().enumerate() {
            state.apply_pod(cluster::pod(
                NAMESPACE,
                &format!("netmatrix-companion-{node}-{p}"),
                &node,
                &ip.to_string(),
                &[
                    (labels::NAME, labels::APP),
                    (labels::COMPONENT, labels::COMPONENT_COMPANION),
                    (labels::PROBE_TARGET, "true"),
                ],
                false,
            ));
        }
    }
    crate::lab::objects::register_services(state);
}

/// The certificates and admin token of a bench's cluster: the API server
/// certificate for the `kubernetes` Service address, where its pods dial.
pub(super) fn cluster_pki() -> anyhow::Result<LabPki> {
    Ok(LabPki::generate(
        &[
            IpAddr::V4(KUBERNETES_SVC.0),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ],
        &["kubernetes.default.svc".to_owned()],
    )?)
}

/// The API server emulator, DNS and the report sink, in the cluster
/// namespace, on this runtime.
fn start_servers(
    ns: &str,
    state: &ClusterState,
    pki: &LabPki,
    sink: Arc<Mutex<SinkStats>>,
    pinglist: Published,
) -> anyhow::Result<Tasks> {
    let clients = Arc::new(Clients::new(&pki.token));
    let authority = Arc::new(TokenAuthority::new()?);
    let mut tasks = start_api_and_dns(ns, state, pki, clients, authority)?;
    let sink_addr = SocketAddr::from(AGGREGATOR_SVC);
    let sink_l = netns::in_netns(ns, move || {
        let sink_l = std::net::TcpListener::bind(sink_addr)?;
        sink_l.set_nonblocking(true)?;
        Ok(sink_l)
    })?;
    let sink_l = tokio::net::TcpListener::from_std(sink_l)?;
    let app = Router::new()
        .route(REPORTS_PATH, post(receive_report))
        .with_state(sink)
        .merge(
            Router::new()
                .route(&format!("{PINGLIST_PATH}/{{node}}"), get(serve_pinglist))
                .with_state(Arc::new(pinglist)),
        );
    tasks.0.push(tokio::spawn(async move {
        if let Err(error) = axum::serve(sink_l, app).await {
            tracing::error!(%error, "report sink stopped");
        }
    }));
    Ok(tasks)
}

/// The API server emulator (on the `kubernetes` Service address, accepting
/// the tokens of `clients`) and DNS (on `kube-dns`'s), in namespace `ns`,
/// on this runtime.
pub(super) fn start_api_and_dns(
    ns: &str,
    state: &ClusterState,
    pki: &LabPki,
    clients: Arc<Clients>,
    authority: Arc<TokenAuthority>,
) -> anyhow::Result<Tasks> {
    let api = SocketAddr::from(KUBERNETES_SVC);
    let dns_addr = SocketAddr::from((DNS_SVC.0, 53));
    let (api_l, dns_udp, dns_tcp) = netns::in_netns(ns, move || {
        let api_l = std::net::TcpListener::bind(api)?;
        let dns_udp = std::net::UdpSocket::bind(dns_addr)?;
        let dns_tcp = std::net::TcpListener::bind(dns_addr)?;
        for l in [&api_l, &dns_tcp] {
            l.set_nonblocking(true)?;
        }
        dns_udp.set_nonblocking(true)?;
        Ok((api_l, dns_udp, dns_tcp))
    })?;
    let api_l = tokio::net::TcpListener::from_std(api_l)?;
    let dns_udp = tokio::net::UdpSocket::from_std(dns_udp)?;
    let dns_tcp = tokio::net::TcpListener::from_std(dns_tcp)?;
    let (s1, s2) = (state.clone(), state.clone());
    let tls = pki.server_config()?;
    let mut tasks = Tasks(Vec::new());
    tasks.0.push(tokio::spawn(async move {
        if let Err(error) =
            crate::emulator::apiserver::serve(api_l, s1, tls, clients, authority).await
        {
            tracing::error!(%error, "API server emulator stopped");
        }
    }));
    tasks.0.push(tokio::spawn(async move {
        if let Err(error) =
            dns::serve(dns_udp, dns_tcp, s2, CLUSTER_DOMAIN, DnsControl::default()).await
        {
            tracing::error!(%error, "DNS server stopped");
        }
    }));
    Ok(tasks)
}

/// The agent's pinglist as the aggregator computes it, from the objects
/// the emulator holds (the agent's node, network pod).
fn agent_pinglist(state: &ClusterState, interval: Duration) -> anyhow::Result<Published> {
    let (nodes, pods) = (state.nodes(), state.pods());
    // Every pod here is a probe target; the agent is the one reporter.
    let view = ClusterView::from_stores(&nodes, &pods, &pods);
    let cfg = PinglistConfig {
        epoch_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX) * ROTATE_EVERY_ROUNDS,
        ..PinglistConfig::default()
    };
    let key = (AGENT_NODE.to_owned(), netmatrix_api::NetworkMode::Pod);
    Lists::new(cfg)
        .update(view, netmatrix_runtime::now_unix_ms())
        .into_iter()
        .find_map(|change| match change {
            Change::Publish(k, published) if k == key => Some(Published::clone(&published)),
            _ => None,
        })
        .context("no pinglist for the bench's agent")
}

/// `GET /api/v1/pinglist/{node}` as the aggregator answers it: the list
/// with its ETag, or, when the agent holds it, a long poll ending in `304`.
async fn serve_pinglist(
    State(list): State<Arc<Published>>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let etag = format!("\"{}\"", list.etag);
    let held = headers
        .get(axum::http::header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    if held {
        let wait: u64 = query.get("wait").and_then(|w| w.parse().ok()).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(
            wait.min(netmatrix_api::MAX_PINGLIST_WAIT_SECS),
        ))
        .await;
        return (StatusCode::NOT_MODIFIED, [(axum::http::header::ETAG, etag)]).into_response();
    }
    (
        [
            (axum::http::header::ETAG, etag),
            (
                axum::http::header::CONTENT_TYPE,
                "application/json".to_owned(),
            ),
        ],
        list.body.clone(),
    )
        .into_response()
}

/// Reads reports as the aggregator does, in either encoding; also records
/// the last body's size.
async fn receive_report(
    State(sink): State<Arc<Mutex<SinkStats>>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> StatusCode {
    let protobuf = headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(REPORT_PROTOBUF.as_bytes()));
    let report = if protobuf {
        netmatrix_api::protobuf::decode_report(&body, usize::MAX).ok()
    } else {
        serde_json::from_slice::<Report>(&body).ok()
    };
    let Some(report) = report else {
        return StatusCode::BAD_REQUEST;
    };
    if let Ok(mut s) = sink.lock() {
        s.reports += 1;
        s.last_round = report.round;
        s.last_bytes = body.len();
        s.last_peers = report.peers.len();
        s.last_answered = report
            .peers
            .iter()
            .filter(|p| p.icmp.received == p.icmp.sent && p.icmp.sent > 0)
            .count();
        s.last_echoes = report
            .peers
            .iter()
            .map(|p| u64::from(p.icmp.sent) + p.mtu.as_ref().map_or(0, |m| u64::from(m.sent)))
            .sum();
    }
    StatusCode::ACCEPTED
}

/// The environment of a process in a pod of the bench's cluster: nothing
/// from the user's shell (a proxy variable would send reports astray), the
/// API server through `kubeconfig` and the `kubernetes` Service variables.
pub(super) fn pod_env(kubeconfig: &Path) -> Vec<(String, String)> {
    let log = std::env::var("NETMATRIX_LAB_LOG").unwrap_or_else(|_| "info".into());
    vec![
        ("PATH".into(), LAB_PATH.into()),
        ("RUST_LOG".into(), log),
        ("KUBECONFIG".into(), kubeconfig.display().to_string()),
        (
            "KUBERNETES_SERVICE_HOST".into(),
            KUBERNETES_SVC.0.to_string(),
        ),
        (
            "KUBERNETES_SERVICE_PORT".into(),
            KUBERNETES_SVC.1.to_string(),
        ),
    ]
}

fn agent_spec(args: &AgentArgs, ns: &str, bin: &Path, kubeconfig: &Path) -> ProcessSpec {
    let interval = humantime::format_duration(args.interval).to_string();
    let mut agent_args = agent_cluster_args(
        AGENT_NODE,
        AGENT_POD,
        AGENT_IP,
        &interval,
        AGENT_METRICS_PORT,
    );
    agent_args.extend(args.agent_args.iter().cloned());
    let mut env = pod_env(kubeconfig);
    env.extend(args.agent_env.iter().cloned());
    ProcessSpec {
        name: "agent".into(),
        netns: ns.to_owned(),
        program: bin.to_path_buf(),
        args: agent_args,
        env,
    }
}

/// The arguments of an agent of `node`, pod `pod` with address `ip`, in a
/// bench's cluster: its Services (aggregator, DNS) and its port.
pub(super) fn agent_cluster_args(
    node: &str,
    pod: &str,
    ip: Ipv4Addr,
    interval: &str,
    port: u16,
) -> Vec<String> {
    [
        "--node-name",
        node,
        "--pod-name",
        pod,
        "--pod-ip",
        &ip.to_string(),
        "--namespace",
        NAMESPACE,
        "--aggregator-url",
        &format!("http://{}:{}", AGGREGATOR_SVC.0, AGGREGATOR_SVC.1),
        "--interval",
        interval,
        "--dns-server",
        &DNS_SVC.0.to_string(),
        "--clusterip",
        &format!("aggregator={}:{}", AGGREGATOR_SVC.0, AGGREGATOR_SVC.1),
        "--clusterip",
        &format!("kube-dns={}:{}", DNS_SVC.0, DNS_SVC.1),
        "--listen",
        &format!("0.0.0.0:{port}"),
    ]
    .map(String::from)
    .to_vec()
}

/// [`netns::http_get`] off the async threads.
pub(super) async fn http_get(ns: &str, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let (ns, path) = (ns.to_owned(), path.to_owned());
    let body = tokio::task::spawn_blocking(move || {
        netns::http_get(&ns, addr, &path, Duration::from_secs(5))
    })
    .await
    .context("HTTP task")??;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_and_status() {
        let stat = "1234 (netmatrix agent) S 1 1234 1234 0 -1 4194560 2000 0 0 0 \
                    150 37 0 0 20 0 9 0 100 200000000 3000 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some((150, 37)));
        assert_eq!(parse_stat_cpu("garbage"), None);
        let status = "Name:\tnetmatrix-agent\nVmHWM:\t   21000 kB\nVmRSS:\t   18500 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(18500));
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(21000));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn metrics_are_summed_over_series() {
        let text = "# HELP netmatrix_agent_peers Peers.\n\
                    netmatrix_agent_peers{scope=\"cross-node\"} 2450\n\
                    netmatrix_agent_peers{scope=\"same-node\"} 50\n\
                    netmatrix_agent_peers_failing{scope=\"cross-node\"} 1\n\
                    netmatrix_agent_rounds_total 7\n";
        let m = AgentMetrics::parse(text);
        assert_eq!(m.peers, 2500.0);
        assert_eq!(m.peers_failing, 1.0);
        assert_eq!(m.rounds, 7.0);
        assert_eq!(metric_sum(text, "netmatrix_agent_missing"), None);
    }

    #[test]
    fn peers_are_spread_over_nodes() {
        let p = plan(2500, 50).unwrap();
        assert_eq!(p.len(), 50);
        assert!(p.iter().all(|(_, ips)| ips.len() == 50));
        assert_eq!(p[0].1[0], Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(p[49].1[49], Ipv4Addr::new(10, 244, 50, 51));
        let p = plan(120, 50).unwrap();
        assert_eq!(
            p.iter().map(|(_, i)| i.len()).collect::<Vec<_>>(),
            [50, 50, 20]
        );
        assert!(plan(20_000, 50).is_err());
        assert!(plan(10, 0).is_err());
    }

    #[test]
    fn bash_times_are_read() {
        assert_eq!(parse_times_duration("0m0.040s"), Some(0.04));
        assert_eq!(parse_times_duration("1m2.500s"), Some(62.5));
        assert_eq!(parse_times_duration("12"), None);
    }

    #[test]
    fn agent_env_pairs() {
        assert_eq!(
            parse_env("MALLOC_ARENA_MAX=2"),
            Ok(("MALLOC_ARENA_MAX".into(), "2".into()))
        );
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("novalue").is_err());
        assert!(parse_env("=x").is_err());
    }
}
