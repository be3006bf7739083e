//! `netmatrix-lab bench sweep`: one ICMP echo to each of N addresses, with
//! netmatrix's own prober ([`netmatrix_agent::probes::icmp::IcmpProber`], the
//! agent's code) and with `fping`, from the same namespace with the same
//! per-echo timeout.
//!
//! ```text
//!  PREFIX-prober                         PREFIX-targets
//!  eth0 10.249.0.1/30  <── veth ──>  eth0 10.249.0.2/30
//!  10.250.0.0/16 via 10.249.0.2          lo: N addresses 10.250.x.y/32
//!                                        iptables: ICMP to M of them -j DROP
//! ```
//!
//! The dropped addresses are spread evenly over the list, so each tool's
//! verdicts (answered or not, per address) can be checked against the truth
//! and against each other. Our prober runs in a child process (`bench
//! icmp-sweep`, hidden) started with `ip netns exec`, like fping, so both
//! wall times are measured the same way: from spawn to exit.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::net::netns;
use anyhow::{Context, bail};
use clap::Args;
use futures::future::join_all;
use netmatrix_agent::probes::icmp::IcmpProber;
use serde::{Deserialize, Serialize};

use super::{Scratch, link_prober, markdown_table, median, min_max, ms};

/// Address of the prober's end of the veth.
const PROBER_IP: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 1);
/// Address of the targets' end, the prober's gateway to the targets.
const TARGETS_GW: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 2);
/// Where the targets live (only inside the bench's namespaces).
const TARGETS_CIDR: &str = "10.250.0.0/16";
/// Addresses per third octet (10.250.K.1 to 10.250.K.250).
const PER_OCTET: usize = 250;
/// At most this many targets (10.250.1.1 to 10.250.254.250).
const MAX_TARGETS: usize = 254 * PER_OCTET;

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Addresses to sweep.
    #[arg(long, default_value_t = 1000)]
    targets: usize,
    /// How many of them silently drop ICMP (iptables DROP in their namespace).
    #[arg(long, default_value_t = 50)]
    unreachable: usize,
    /// Per-echo timeout, the same for every tool.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Runs per tool (the tools alternate: the order rotates every run).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Namespace prefix (default: random, nm + 6 hex digits).
    #[arg(long)]
    prefix: Option<String>,
}

/// The hidden child: sweeps the addresses in `--file` with the agent's prober.
#[derive(Debug, Args)]
pub struct IcmpSweepArgs {
    /// One IPv4 address per line.
    #[arg(long)]
    file: std::path::PathBuf,
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// What the child prints on stdout (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct IcmpSweepOutput {
    /// Opening the sockets (`IcmpProber::new`).
    setup_ms: f64,
    /// From the first echo sent to the last one settled.
    sweep_ms: f64,
    /// Per address: answered or not.
    verdicts: Vec<(Ipv4Addr, bool)>,
}

/// The tools compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    Netmatrix,
    /// fping with `-i 1`: 1 ms between two packets, its fastest.
    FpingFast,
    /// fping with its default 10 ms between two packets.
    FpingDefault,
}

impl Tool {
    const ALL: [Tool; 3] = [Tool::Netmatrix, Tool::FpingFast, Tool::FpingDefault];

    fn label(self) -> &'static str {
        match self {
            Tool::Netmatrix => "netmatrix IcmpProber (surge-ping)",
            Tool::FpingFast => "fping -c1 -q -i1",
            Tool::FpingDefault => "fping -c1 -q (default -i10)",
        }
    }
}

/// One run of one tool.
#[derive(Debug)]
struct Run {
    wall: Duration,
    /// Our prober only: the sweep itself, without process start and sockets.
    inner: Option<Duration>,
    verdicts: Vec<(Ipv4Addr, bool)>,
}

/// `i`-th target address (0-based): 10.250.1.1, ..., 10.250.1.250, 10.250.2.1, ...
pub fn target(i: usize) -> Ipv4Addr {
    let hi = u8::try_from(1 + i / PER_OCTET).unwrap_or(u8::MAX);
    let lo = u8::try_from(1 + i % PER_OCTET).unwrap_or(u8::MAX);
    Ipv4Addr::new(10, 250, hi, lo)
}

/// Indices of the `unreachable` dropped addresses among `targets`, spread
/// evenly (0, targets/unreachable, ...).
pub fn dropped_indices(targets: usize, unreachable: usize) -> Vec<usize> {
    let unreachable = unreachable.min(targets);
    (0..unreachable)
        .map(|k| k * targets / unreachable)
        .collect()
}

/// Addresses on which two verdict lists disagree (an address missing from
/// one side counts as a disagreement).
fn differing(a: &[(Ipv4Addr, bool)], b: &[(Ipv4Addr, bool)]) -> Vec<Ipv4Addr> {
    let a: BTreeMap<Ipv4Addr, bool> = a.iter().copied().collect();
    let b: BTreeMap<Ipv4Addr, bool> = b.iter().copied().collect();
    let mut out: Vec<Ipv4Addr> = a
        .iter()
        .filter(|(ip, v)| b.get(ip) != Some(v))
        .map(|(ip, _)| *ip)
        .chain(b.keys().filter(|ip| !a.contains_key(ip)).copied())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Parses `fping -c1 -q` output (stderr): one line per target,
/// `10.250.1.1 : xmt/rcv/%loss = 1/1/0%, min/avg/max = 0.03/0.03/0.03`.
/// Other lines are skipped.
fn parse_fping(output: &str) -> anyhow::Result<Vec<(Ipv4Addr, bool)>> {
    let mut verdicts = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // Other lines (an ICMP error fping was sent, say) are no verdict; an
        // address without one counts as a disagreement later.
        let Some((host, counts)) = line
            .split_once(" : ")
            .and_then(|(h, rest)| Some((h, rest.strip_prefix("xmt/rcv/%loss = ")?)))
        else {
            tracing::debug!(line, "fping line skipped");
            continue;
        };
        let mut fields = counts.split('/');
        let (Some(_xmt), Some(rcv)) = (fields.next(), fields.next()) else {
            bail!("unexpected fping counts: {line}");
        };
        let ip: Ipv4Addr = host
            .trim()
            .parse()
            .with_context(|| format!("fping host {host:?}"))?;
        let rcv: u32 = rcv
            .parse()
            .with_context(|| format!("fping rcv in {line}"))?;
        verdicts.push((ip, rcv > 0));
    }
    Ok(verdicts)
}

pub async fn run(args: SweepArgs) -> anyhow::Result<()> {
    if args.targets == 0 || args.targets > MAX_TARGETS {
        bail!("--targets must be 1 to {MAX_TARGETS}");
    }
    if args.unreachable > args.targets {
        bail!("--unreachable must not exceed --targets");
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let fping = which("fping").context("fping not found (apt-get install fping)")?;
    let mut scratch = Scratch::create(args.prefix.clone())?;
    let prober_ns = scratch.netns("prober")?;
    let targets_ns = scratch.netns("targets")?;
    let targets: Vec<Ipv4Addr> = (0..args.targets).map(target).collect();
    let dropped = dropped_indices(args.targets, args.unreachable);
    let started = Instant::now();
    {
        let (p, t) = (prober_ns.clone(), targets_ns.clone());
        let (targets, dropped) = (targets.clone(), dropped.clone());
        tokio::task::spawn_blocking(move || build(&p, &t, &targets, &dropped))
            .await
            .context("network build task")??;
    }
    tracing::info!(took = ?started.elapsed(), targets = targets.len(), dropped = dropped.len(), "sweep network ready");

    let list = scratch.state().file("targets.txt");
    let text: String = targets.iter().map(|ip| format!("{ip}\n")).collect();
    std::fs::write(&list, text).with_context(|| format!("writing {}", list.display()))?;
    let exe = std::env::current_exe().context("path of this executable")?;
    let expected: Vec<(Ipv4Addr, bool)> = targets
        .iter()
        .enumerate()
        .map(|(i, ip)| (*ip, dropped.binary_search(&i).is_err()))
        .collect();

    let mut runs: BTreeMap<Tool, Vec<Run>> = BTreeMap::new();
    for rep in 0..args.repeat {
        for k in 0..Tool::ALL.len() {
            let tool = Tool::ALL[(rep + k) % Tool::ALL.len()];
            let run = match tool {
                Tool::Netmatrix => run_ours(&exe, &prober_ns, &list, args.timeout).await?,
                Tool::FpingFast => run_fping(&fping, &prober_ns, &list, args.timeout, 1).await?,
                Tool::FpingDefault => {
                    run_fping(&fping, &prober_ns, &list, args.timeout, 10).await?
                }
            };
            tracing::info!(
                rep,
                tool = tool.label(),
                wall = ?run.wall,
                answered = run.verdicts.iter().filter(|(_, ok)| *ok).count(),
                "run done"
            );
            runs.entry(tool).or_default().push(run);
        }
    }

    let reference = runs
        .get(&Tool::Netmatrix)
        .and_then(|r| r.first())
        .map(|r| r.verdicts.clone())
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut disagreements: Vec<(Tool, usize, Vec<Ipv4Addr>)> = Vec::new();
    let mut wrong: Vec<(Tool, usize, Vec<Ipv4Addr>)> = Vec::new();
    for (tool, tool_runs) in &runs {
        let walls: Vec<f64> = tool_runs.iter().map(|r| ms(r.wall)).collect();
        let inner: Vec<f64> = tool_runs.iter().filter_map(|r| r.inner.map(ms)).collect();
        let answered: Vec<f64> = tool_runs
            .iter()
            .map(|r| r.verdicts.iter().filter(|(_, ok)| *ok).count() as f64)
            .collect();
        let mut diff_ref = 0;
        let mut diff_truth = 0;
        for (i, r) in tool_runs.iter().enumerate() {
            let d = differing(&r.verdicts, &reference);
            diff_ref = diff_ref.max(d.len());
            if !d.is_empty() {
                disagreements.push((*tool, i + 1, d));
            }
            let t = differing(&r.verdicts, &expected);
            diff_truth = diff_truth.max(t.len());
            if !t.is_empty() {
                wrong.push((*tool, i + 1, t));
            }
        }
        let (min, max) = min_max(&walls).unwrap_or_default();
        let (amin, amax) = min_max(&answered).unwrap_or_default();
        rows.push(vec![
            tool.label().to_string(),
            tool_runs.len().to_string(),
            format!("{:.0}", median(&walls).unwrap_or_default()),
            format!("{min:.0} / {max:.0}"),
            median(&inner).map_or_else(|| "-".into(), |m| format!("{m:.0}")),
            if amin == amax {
                format!("{amin:.0}/{}", targets.len())
            } else {
                format!("{amin:.0}..{amax:.0}/{}", targets.len())
            },
            format!("{:.0}", targets.len() as f64 - amax),
            format!("{diff_ref}"),
            format!("{diff_truth}"),
        ]);
    }
    println!(
        "\n### ICMP sweep: {} addresses ({} silently dropped), 1 echo each, timeout {:?}, {} runs per tool (lab {})\n",
        targets.len(),
        dropped.len(),
        args.timeout,
        args.repeat,
        scratch.prefix()
    );
    print!(
        "{}",
        markdown_table(
            &[
                "tool",
                "runs",
                "median wall ms",
                "min / max ms",
                "median sweep ms (in-process)",
                "answered",
                "lost",
                "verdicts differing from netmatrix run 1 (max)",
                "verdicts differing from truth (max)",
            ],
            &rows
        )
    );
    println!(
        "\nwall: spawn to exit of `ip netns exec PROBER_NS ...` (process start included for every tool); \
         in-process: netmatrix's echoes only, sockets already open."
    );
    for (tool, run, addrs) in &wrong {
        println!(
            "{} run {run}: {} verdicts differ from the truth, e.g. {}",
            tool.label(),
            addrs.len(),
            sample(addrs)
        );
    }
    if disagreements.is_empty() {
        println!(
            "\nverdicts: IDENTICAL per address across all tools and runs ({} answered, {} lost)",
            reference.iter().filter(|(_, ok)| *ok).count(),
            reference.iter().filter(|(_, ok)| !*ok).count()
        );
        Ok(())
    } else {
        for (tool, run, addrs) in &disagreements {
            println!(
                "{} run {run}: {} verdicts differ from netmatrix run 1, e.g. {}",
                tool.label(),
                addrs.len(),
                sample(addrs)
            );
        }
        bail!("the loss verdicts differ between the tools (see above)")
    }
}

fn sample(addrs: &[Ipv4Addr]) -> String {
    let mut s: Vec<String> = addrs.iter().take(8).map(ToString::to_string).collect();
    if addrs.len() > 8 {
        s.push("...".into());
    }
    s.join(", ")
}

/// The two namespaces, the veth, the targets and the DROP rules.
fn build(
    prober: &str,
    targets_ns: &str,
    targets: &[Ipv4Addr],
    dropped: &[usize],
) -> anyhow::Result<()> {
    link_prober(
        prober,
        targets_ns,
        (PROBER_IP, TARGETS_GW, 30),
        TARGETS_CIDR,
        targets.iter().copied(),
    )?;
    if !dropped.is_empty() {
        let mut rules = String::from("*filter\n");
        for &i in dropped {
            if let Some(ip) = targets.get(i) {
                rules.push_str(&format!("-A INPUT -d {ip}/32 -p icmp -j DROP\n"));
            }
        }
        rules.push_str("COMMIT\n");
        netns::iptables_restore(targets_ns, &rules)?;
    }
    Ok(())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// `ip netns exec NS program args...`, killed if the bench is dropped.
fn in_ns(ns: &str, program: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(program)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run_ours(exe: &Path, ns: &str, list: &Path, timeout: Duration) -> anyhow::Result<Run> {
    let mut cmd = in_ns(ns, exe);
    cmd.args(["bench", "icmp-sweep", "--timeout"])
        .arg(humantime::format_duration(timeout).to_string())
        .arg("--file")
        .arg(list)
        // The child's own logging must not distort its timing.
        .env("RUST_LOG", "warn");
    let start = Instant::now();
    let out = cmd.output().await.context("running bench icmp-sweep")?;
    let wall = start.elapsed();
    if !out.status.success() {
        bail!(
            "bench icmp-sweep failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let parsed: IcmpSweepOutput =
        serde_json::from_slice(&out.stdout).context("bench icmp-sweep output")?;
    tracing::debug!(setup_ms = parsed.setup_ms, "netmatrix sockets");
    Ok(Run {
        wall,
        inner: Some(Duration::from_secs_f64(parsed.sweep_ms / 1000.0)),
        verdicts: parsed.verdicts,
    })
}

async fn run_fping(
    fping: &Path,
    ns: &str,
    list: &Path,
    timeout: Duration,
    interval_ms: u32,
) -> anyhow::Result<Run> {
    let mut cmd = in_ns(ns, fping);
    cmd.args(["-c1", "-q"])
        .arg(format!("-t{}", timeout.as_millis()))
        .arg(format!("-i{interval_ms}"))
        .arg("-f")
        .arg(list);
    let start = Instant::now();
    let out = cmd.output().await.context("running fping")?;
    let wall = start.elapsed();
    // fping exits 1 when some target did not answer; more is an error.
    if !matches!(out.status.code(), Some(0 | 1)) {
        bail!(
            "fping failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let verdicts = parse_fping(&String::from_utf8_lossy(&out.stderr))?;
    Ok(Run {
        wall,
        inner: None,
        verdicts,
    })
}

/// The child: runs inside the prober namespace, sweeps every address of
/// `--file` once, concurrently, with the agent's prober, prints JSON.
pub async fn icmp_sweep(args: IcmpSweepArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let ips: Vec<Ipv4Addr> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().with_context(|| format!("address {l:?}")))
        .collect::<anyhow::Result<_>>()?;
    let setup = Instant::now();
    // One echo per target; the interval only spaces the echoes of a series,
    // and a series of one has none.
    let prober = IcmpProber::new(1, args.timeout, args.timeout * 4, None)?;
    let setup_ms = ms(setup.elapsed());
    let start = Instant::now();
    let results = join_all(ips.iter().map(|ip| prober.echo(IpAddr::V4(*ip)))).await;
    let sweep_ms = ms(start.elapsed());
    let verdicts = ips
        .iter()
        .zip(&results)
        .map(|(ip, r)| (*ip, r.received > 0))
        .collect();
    let out = IcmpSweepOutput {
        setup_ms,
        sweep_ms,
        verdicts,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_dropped_ones() {
        assert_eq!(target(0), Ipv4Addr::new(10, 250, 1, 1));
        assert_eq!(target(249), Ipv4Addr::new(10, 250, 1, 250));
        assert_eq!(target(250), Ipv4Addr::new(10, 250, 2, 1));
        assert_eq!(target(MAX_TARGETS - 1), Ipv4Addr::new(10, 250, 254, 250));
        let d = dropped_indices(1000, 50);
        assert_eq!(d.len(), 50);
        assert_eq!(&d[..3], &[0, 20, 40]);
        assert!(d.windows(2).all(|w| w[0] < w[1]));
        assert!(dropped_indices(10, 0).is_empty());
        assert_eq!(dropped_indices(3, 5), vec![0, 1, 2]);
    }

    #[test]
    fn verdict_differences_by_address() {
        let a = Ipv4Addr::new(10, 250, 1, 1);
        let b = Ipv4Addr::new(10, 250, 1, 2);
        let c = Ipv4Addr::new(10, 250, 1, 3);
        assert!(differing(&[(a, true), (b, false)], &[(b, false), (a, true)]).is_empty());
        assert_eq!(
            differing(&[(a, true), (b, false)], &[(a, true), (b, true)]),
            [b]
        );
        // Missing on either side.
        assert_eq!(differing(&[(a, true)], &[(a, true), (c, false)]), [c]);
        assert_eq!(differing(&[(a, true), (c, false)], &[(a, true)]), [c]);
    }

    #[test]
    fn fping_summary_lines() {
        let out = "10.250.1.1 : xmt/rcv/%loss = 1/0/100%\n\
                   10.250.1.2 : xmt/rcv/%loss = 1/1/0%, min/avg/max = 0.04/0.04/0.04\n";
        assert_eq!(
            parse_fping(out).unwrap(),
            [
                (Ipv4Addr::new(10, 250, 1, 1), false),
                (Ipv4Addr::new(10, 250, 1, 2), true)
            ]
        );
        assert!(
            parse_fping("ICMP Host Unreachable from x")
                .unwrap()
                .is_empty()
        );
        assert!(parse_fping("10.250.1.1 : xmt/rcv/%loss = 1/x/0%").is_err());
        assert!(parse_fping("").unwrap().is_empty());
    }
}
