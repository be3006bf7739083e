//! `netmatrix-lab bench`: measurements in throw-away network namespaces.
//!
//! - [`sweep`]: one echo to each of 1,000 addresses (some silently
//!   dropped) with netmatrix's own ICMP prober and with `fping`: wall time
//!   and per-address verdicts, which must agree;
//! - [`agent`]: the real `netmatrix-agent` against the lab's Kubernetes API
//!   emulator with thousands of answering peers: CPU and memory per round;
//! - [`control_plane`]: what netmatrix's watches cost the API server, per
//!   client and per Node update, extrapolated to a whole cluster.
//!
//! Every bench builds its namespaces under a fresh lab prefix (`nm` + hex
//! digits) with a state directory, exactly as a lab does, so `netmatrix-lab
//! down --all` removes whatever a killed bench left behind. [`Scratch`]
//! removes them on every other exit path: success, error, panic, and
//! Ctrl-C/SIGTERM ([`interruptible`] drops the bench, and with it the
//! scratch, when a signal arrives).

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::lab::is_root;
use crate::net::netns;
use crate::net::topology::{is_prefix, prefix_of, random_prefix};
use crate::state::StateDir;
use anyhow::{Context, bail};
use clap::Subcommand;

mod agent;
mod control_plane;
mod detect;
mod sweep;

/// `netmatrix-lab bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// One ICMP echo to each of N addresses (some silently dropped), with
    /// netmatrix's prober and with fping, several times each; prints wall
    /// times and fails when the two disagree on any address.
    Sweep(sweep::SweepArgs),
    /// The real netmatrix-agent probing N answering peers against the API
    /// server emulator; prints its CPU and memory per round.
    Agent(agent::AgentArgs),
    /// What netmatrix costs the API server: N Nodes with their netmatrix
    /// pods in the emulator, K real agents and the real aggregator; watch
    /// streams and bytes per client, per Node update, extrapolated to N.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Fault injected to finding named, and heal to findings cleared, over
    /// several trials in one lab; prints every trial and the median.
    Detect(detect::DetectArgs),
    /// Internal: the netmatrix side of `bench sweep`, run inside the prober
    /// namespace by `ip netns exec`.
    #[command(hide = true)]
    IcmpSweep(sweep::IcmpSweepArgs),
}

/// Runs a bench command.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Sweep(args) => interruptible(sweep::run(args)).await,
        BenchCommand::Agent(args) => interruptible(agent::run(args)).await,
        BenchCommand::ControlPlane(args) => interruptible(control_plane::run(args)).await,
        BenchCommand::Detect(args) => interruptible(detect::run(args)).await,
        BenchCommand::IcmpSweep(args) => sweep::icmp_sweep(args).await,
    }
}

/// Runs `bench` until it ends or SIGINT/SIGTERM arrives; on a signal the
/// bench future is dropped, which drops its [`Scratch`] and processes, so
/// the namespaces are removed before this returns.
async fn interruptible(bench: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        r = bench => r,
        _ = int.recv() => bail!("interrupted (SIGINT); the bench's namespaces were removed"),
        _ = term.recv() => bail!("terminated (SIGTERM); the bench's namespaces were removed"),
    }
}

/// The namespaces of one bench run, under one lab prefix with a state
/// directory; removed when dropped.
pub struct Scratch {
    state: StateDir,
    namespaces: Vec<String>,
}

impl Scratch {
    /// Claims `prefix` (or a random one): root only, the prefix must be
    /// unused (no namespace, no state directory).
    pub fn create(prefix: Option<String>) -> anyhow::Result<Self> {
        if !is_root() {
            bail!("the bench creates network namespaces: run as root (sudo)");
        }
        let prefix = prefix.unwrap_or_else(random_prefix);
        if !is_prefix(&prefix) {
            bail!("--prefix {prefix}: a lab prefix is `nm` and 4 to 6 lowercase hex digits");
        }
        if StateDir::of(&prefix).path().exists()
            || netns::list()
                .iter()
                .any(|ns| prefix_of(ns) == Some(prefix.as_str()))
        {
            bail!("prefix {prefix} is in use (netmatrix-lab down --prefix {prefix} removes it)");
        }
        let state = StateDir::create(&prefix)?;
        tracing::info!(%prefix, dir = %state.path().display(), "bench scratch");
        Ok(Scratch {
            state,
            namespaces: Vec::new(),
        })
    }

    pub fn prefix(&self) -> &str {
        self.state.prefix()
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Creates namespace `PREFIX-NAME` (with `lo` up) and returns its name.
    pub fn netns(&mut self, name: &str) -> anyhow::Result<String> {
        let full = format!("{}-{name}", self.prefix());
        // Recorded first: a half-made namespace is removed too.
        self.namespaces.push(full.clone());
        netns::add(&full)?;
        Ok(full)
    }

    fn cleanup(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = netns::delete(&ns) {
                tracing::warn!(error = %e, "cleanup");
            }
        }
        self.state.remove();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        tracing::info!(prefix = %self.state.prefix(), "removing the bench's namespaces");
        self.cleanup();
    }
}

/// A "pod" namespace linked to the namespace holding the targets: a veth
/// `eth0` in each, `inner/prefix` and `outer/prefix` on its ends, `route`
/// (e.g. `default`) via the outer end, and unprivileged ICMP echo sockets
/// in the inner namespace, as the chart sets for the agent pod. Then the
/// `targets` on the outer namespace's `lo` (local addresses answer ICMP; no
/// `dummy` driver needed).
pub fn link_prober(
    inner: &str,
    outer: &str,
    addresses: (Ipv4Addr, Ipv4Addr, u8),
    route: &str,
    targets: impl IntoIterator<Item = Ipv4Addr>,
) -> anyhow::Result<()> {
    link_pod(inner, outer, "eth0", addresses, route)?;
    let batch: String = targets
        .into_iter()
        .map(|ip| format!("addr add {ip}/32 dev lo\n"))
        .collect();
    ip_batch(outer, &batch)
}

/// The link of [`link_prober`] without the targets, its outer end named
/// `outer_dev`: several pods can then hang off the same outer namespace.
pub fn link_pod(
    inner: &str,
    outer: &str,
    outer_dev: &str,
    (inner_ip, outer_ip, prefix): (Ipv4Addr, Ipv4Addr, u8),
    route: &str,
) -> anyhow::Result<()> {
    netns::ip(
        inner,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", outer_dev, "netns", outer,
        ],
    )?;
    netns::ip(
        inner,
        &[
            "addr",
            "add",
            &format!("{inner_ip}/{prefix}"),
            "dev",
            "eth0",
        ],
    )?;
    netns::ip(inner, &["link", "set", "eth0", "up"])?;
    netns::ip(
        inner,
        &[
            "route",
            "add",
            route,
            "via",
            &outer_ip.to_string(),
            "dev",
            "eth0",
        ],
    )?;
    netns::sysctl(inner, &["net.ipv4.ping_group_range=0 2147483647"])?;
    netns::ip(
        outer,
        &[
            "addr",
            "add",
            &format!("{outer_ip}/{prefix}"),
            "dev",
            outer_dev,
        ],
    )?;
    netns::ip(outer, &["link", "set", outer_dev, "up"])?;
    Ok(())
}

/// Runs `ip -batch` in `ns`: thousands of address changes in one process.
pub fn ip_batch(ns: &str, commands: &str) -> anyhow::Result<()> {
    netns::run_with_input(None, "ip", &["-n", ns, "-batch", "-"], Some(commands))?;
    Ok(())
}

/// Middle value (mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        f64::midpoint(v[mid - 1], v[mid])
    } else {
        v[mid]
    })
}

/// Smallest and largest value.
pub fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let min = values.iter().copied().reduce(f64::min)?;
    let max = values.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// A markdown table.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    fn row<S: AsRef<str>>(cells: impl IntoIterator<Item = S>) -> String {
        let cells: Vec<String> = cells.into_iter().map(|c| c.as_ref().to_owned()).collect();
        format!("| {} |\n", cells.join(" | "))
    }
    let mut out = row(header);
    out.push_str(&row(header.iter().map(|_| "---")));
    for r in rows {
        out.push_str(&row(r));
    }
    out
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(min_max(&[4.0, 1.0, 3.0]), Some((1.0, 4.0)));
        assert_eq!(min_max(&[]), None);
    }

    #[test]
    fn tables_are_markdown() {
        let t = markdown_table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n| --- | --- |\n| 1 | 2 |\n");
    }
}
