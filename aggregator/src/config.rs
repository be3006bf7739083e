//! Command-line flags and their environment equivalents ([`Args`]), and
//! the tunables taken from them ([`Settings`]).
//!
//! Every flag can also be set through an environment variable so that the
//! chart can configure the aggregator without templating its command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use netmatrix_api::labels;

use crate::diagnosis::{DiagnosisPolicy, hysteresis};
use crate::history;
use crate::matrix::MatrixPolicy;
use crate::pinglist::build::{PinglistConfig, ROTATE_EVERY_ROUNDS};

/// Builds the node-to-node connectivity matrix from agent reports and names
/// what is broken.
#[derive(Debug, Clone, Parser)]
#[command(name = "netmatrix-aggregator", version, about, long_about = None)]
pub struct Args {
    /// Addresses the HTTP API, `/metrics` and the web page listen on,
    /// comma-separated (`IP:PORT`; IPv6 with or without brackets). On the
    /// host network the chart gives the node's own address and 127.0.0.1
    /// (for `kubectl port-forward`), not 0.0.0.0.
    #[arg(
        long,
        env = "NETMATRIX_LISTEN",
        default_value = "0.0.0.0:8080",
        value_delimiter = ',',
        value_parser = netmatrix_runtime::serve::parse_listen
    )]
    pub listen: Vec<SocketAddr>,

    /// Most client connections served at once; more wait in the kernel's
    /// backlog. Agents open one short connection per report.
    #[arg(long, env = "NETMATRIX_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// The audience of the agents' projected ServiceAccount tokens; tokens
    /// for any other audience (the API server's, say) are refused.
    #[arg(long, env = "NETMATRIX_TOKEN_AUDIENCE", default_value = "netmatrix")]
    pub token_audience: String,

    /// ServiceAccounts (in --namespace) whose tokens may report, comma-separated.
    #[arg(
        long,
        env = "NETMATRIX_AGENT_SERVICE_ACCOUNTS",
        default_value = "netmatrix-agent,netmatrix-host-agent",
        value_delimiter = ','
    )]
    pub agent_service_accounts: Vec<String>,

    /// TokenReviews sent to the API server per second at most (twice that in
    /// a burst). Each agent token is reviewed once and cached until it
    /// expires; after an aggregator restart every agent needs one review, so
    /// on thousands of nodes the first reports trickle in at this rate.
    #[arg(long, env = "NETMATRIX_TOKEN_REVIEW_QPS", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub token_review_qps: u32,

    /// Evaluation period (matrix, diagnosis, metrics); should match the agents' probe interval.
    #[arg(
        long,
        env = "NETMATRIX_INTERVAL",
        default_value = "5s",
        value_parser = parse_interval
    )]
    pub interval: Duration,

    /// A node whose last report is older than this many intervals (of the
    /// aggregator's --interval; the agents' own is not trusted) is `unknown`.
    #[arg(long, env = "NETMATRIX_STALE_AFTER", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub stale_after: u32,

    /// A finding is raised after its condition held for this many consecutive evaluation rounds.
    #[arg(long, env = "NETMATRIX_RAISE_AFTER", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub raise_after: u32,

    /// Rounds an outage must hold before it is raised: node-isolated,
    /// partition, cross-node-broken and underlay-broken, where every echo of
    /// many paths, seen from several nodes, was lost. Capped at --raise-after.
    #[arg(long, env = "NETMATRIX_RAISE_AFTER_OUTAGE", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub raise_after_outage: u32,

    /// A raised finding is cleared after its condition was absent for this many consecutive rounds.
    #[arg(long, env = "NETMATRIX_CLEAR_AFTER", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub clear_after: u32,

    /// A finding raised again within this many rounds after it cleared is
    /// flapping: held raised through its gaps (so alerts fire on it) until
    /// it stays away for this many rounds. At least --clear-after.
    #[arg(long, env = "NETMATRIX_FLAP_WINDOW", default_value_t = crate::diagnosis::hysteresis::FLAP_WINDOW_ROUNDS, value_parser = clap::value_parser!(u32).range(1..))]
    pub flap_window: u32,

    /// A node is expected to report once it is Ready and at least this old, so
    /// nodes that just joined do not raise agent-missing while their agent starts.
    #[arg(long, env = "NETMATRIX_NODE_GRACE", default_value = "2m", value_parser = humantime::parse_duration)]
    pub node_grace: Duration,

    /// Largest accepted report body, in bytes; larger reports get 413 `too-large`.
    #[arg(long, env = "NETMATRIX_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,

    /// A cell is `failed` when more than this fraction of its echoes was lost
    /// (any lower, non-zero loss is `degraded`).
    #[arg(long, env = "NETMATRIX_FAILED_LOSS", default_value_t = 0.5, value_parser = parse_fraction)]
    pub failed_loss: f64,

    /// A path is `packet-loss` when, over the last --history-rounds rounds,
    /// more than this fraction of its echoes was lost (rounds in which a pod
    /// answered nothing at all are outages, judged by the other rules).
    #[arg(long, env = "NETMATRIX_LOSS_THRESHOLD", default_value_t = 0.1, value_parser = parse_fraction)]
    pub loss_threshold: f64,

    /// Rounds of echo counts kept per peer pod to judge loss, MTU and
    /// latency over a window instead of one noisy round.
    #[arg(long, env = "NETMATRIX_HISTORY_ROUNDS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(3..=60))]
    pub history_rounds: u32,

    /// A path is `high-latency` when its mean RTT over the window is above
    /// this and many times the cluster's median.
    #[arg(long, env = "NETMATRIX_LATENCY_FLOOR", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub latency_floor: Duration,

    /// Namespace of the agent pods.
    #[arg(long, env = "POD_NAMESPACE", default_value = "netmatrix")]
    pub namespace: String,

    /// Label selector of the agent pods whose reports are accepted: pod-network
    /// and host-network agents (`component=host-agent` or `hostNetwork: true`
    /// pods may only send `network: host` reports, the others `network: pod`).
    #[arg(long, env = "NETMATRIX_AGENT_SELECTOR", default_value = labels::REPORTER_SELECTOR)]
    pub agent_selector: String,

    /// Label selector of the pods the pod-network agents probe (agents and
    /// companions): what their pinglists name. Host agents probe the host
    /// agents among the --agent-selector pods.
    #[arg(long, env = "NETMATRIX_PEER_SELECTOR", default_value = labels::PEER_SELECTOR)]
    pub peer_selector: String,

    /// Kubeconfig file; without it the in-cluster config or ~/.kube/config is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Also show findings on the Nodes: a `NetmatrixPodNetwork` condition
    /// (True while a finding names the node, reason the finding's kind) and
    /// an Event at raise and clear, as node-problem-detector does. Needs
    /// `patch` on nodes/status and `create` on events (the chart's
    /// aggregator.nodeConditions grants them).
    #[arg(long, env = "NETMATRIX_NODE_CONDITIONS")]
    pub node_conditions: bool,

    /// Serve no pinglists. By default the aggregator computes each agent's
    /// pinglist from its own watches and serves it at
    /// `GET /api/v1/pinglist/NODE`, so that it is the only watcher of Nodes
    /// and probe targets. With this flag agents must be run with
    /// `--peer-discovery api` and the RBAC to watch pods and Nodes.
    #[arg(long, env = "NETMATRIX_NO_PINGLISTS")]
    pub no_pinglists: bool,

    /// Pinglists: the sampling of remote nodes on a large cluster (the
    /// agents' flags of the same names, which decide only with
    /// --peer-discovery api).
    #[command(flatten)]
    pub sampling: netmatrix_runtime::flags::SamplingFlags,

    /// Pinglists: where agents reach this aggregator directly when its
    /// Service does not answer, comma-separated `IP:PORT` (the chart:
    /// `$(POD_IP):8080`). Empty: the Service only.
    #[arg(
        long,
        env = "NETMATRIX_ADVERTISE",
        value_delimiter = ',',
        value_name = "IP:PORT"
    )]
    pub advertise: Vec<SocketAddr>,

    /// Run without the Kubernetes API, for tests and trials only: expected nodes
    /// are the nodes that have reported, and reports are NOT authenticated:
    /// anyone who reaches the aggregator can write any node's row.
    #[arg(long, env = "NETMATRIX_NO_KUBERNETES")]
    pub no_kubernetes: bool,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s} is too short: use at least 100ms"));
    }
    Ok(d)
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if !(0.0..1.0).contains(&v) {
        return Err(format!("{s} is not a fraction in [0, 1)"));
    }
    Ok(v)
}

impl Args {
    /// What the pinglists are built with: the sampling flags, the rotation
    /// epoch (`--interval` × [`ROTATE_EVERY_ROUNDS`]), `--advertise`, and the
    /// API's ClusterIP as this pod sees it (`KUBERNETES_SERVICE_HOST`), the
    /// A expectation of agents that have none of their own.
    pub fn pinglist_config(&self, kubernetes_service_host: Option<&str>) -> PinglistConfig {
        PinglistConfig {
            sampling: self.sampling.sampling(),
            epoch_ms: u64::try_from(self.interval.as_millis())
                .unwrap_or(u64::MAX)
                .saturating_mul(ROTATE_EVERY_ROUNDS),
            aggregators: self.advertise.clone(),
            apiserver_ip: kubernetes_service_host.and_then(|h| h.trim().parse().ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinglists_take_the_sampling_flags_and_where_to_reach_us() {
        let args = Args::try_parse_from([
            "netmatrix-aggregator",
            "--interval",
            "2s",
            "--sampled-nodes",
            "10",
            "--rotating-nodes",
            "0",
            "--advertise",
            "10.244.1.5:8080,[fd00::5]:8080",
        ])
        .unwrap();
        let config = args.pinglist_config(Some("10.96.0.1"));
        assert_eq!(
            (
                config.sampling.full_mesh_max_nodes,
                config.sampling.stable,
                config.sampling.rotating
            ),
            (200, 10, 0)
        );
        assert_eq!(config.epoch_ms, 2_000 * ROTATE_EVERY_ROUNDS);
        assert_eq!(config.aggregators.len(), 2);
        assert_eq!(config.apiserver_ip, Some("10.96.0.1".parse().unwrap()));
        assert_eq!(args.pinglist_config(Some("not-an-ip")).apiserver_ip, None);
    }

    #[test]
    fn defaults_match_the_documentation() {
        let args = Args::try_parse_from(["netmatrix-aggregator"]).unwrap();
        assert_eq!(args.listen, ["0.0.0.0:8080".parse().unwrap()]);
        assert_eq!(args.token_audience, "netmatrix");
        assert_eq!(
            args.agent_service_accounts,
            ["netmatrix-agent", "netmatrix-host-agent"]
        );
        assert_eq!(args.interval, Duration::from_secs(5));
        assert_eq!(
            (args.stale_after, args.raise_after, args.clear_after),
            (3, 3, 3)
        );
        assert_eq!(args.max_body, 1 << 20);
        assert_eq!(args.agent_selector, labels::REPORTER_SELECTOR);
        assert_eq!(args.peer_selector, labels::PEER_SELECTOR);
        assert_eq!(args.loss_threshold, 0.1);
        assert_eq!(args.history_rounds, 5);
        assert_eq!(args.latency_floor, Duration::from_millis(100));
        assert!(!args.no_kubernetes);
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            &["x", "--interval", "0s"][..],
            &["x", "--raise-after", "0"],
            &["x", "--failed-loss", "1.5"],
            &["x", "--loss-threshold", "-0.1"],
            &["x", "--history-rounds", "1"],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?} was accepted");
        }
        let args = Args::try_parse_from(["x", "--listen", "fd00::1:8080,127.0.0.1:8080"]).unwrap();
        assert_eq!(
            args.listen,
            [
                "[fd00::1]:8080".parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap()
            ]
        );
        let args = Args::try_parse_from(["x", "--interval", "2s", "--no-kubernetes"]).unwrap();
        assert_eq!(args.interval, Duration::from_secs(2));
        assert!(args.no_kubernetes);
    }
}

/// Tunables of the aggregator, from the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub policy: MatrixPolicy,
    pub raise_after: u32,
    /// For outages (see [`crate::diagnosis::hysteresis::is_outage`]).
    pub raise_after_outage: u32,
    pub clear_after: u32,
    /// Rounds a cleared finding is remembered; back within them, it flaps.
    pub flap_window: u32,
    /// A node is expected to report once it is Ready and this old.
    pub node_grace_ms: u64,
    pub diagnosis: DiagnosisPolicy,
    /// Rounds of echo counts kept per peer.
    pub history_rounds: usize,
    /// What a report may carry.
    pub limits: netmatrix_api::validate::Limits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: MatrixPolicy::default(),
            raise_after: 3,
            raise_after_outage: 2,
            clear_after: 3,
            flap_window: hysteresis::FLAP_WINDOW_ROUNDS,
            node_grace_ms: 120_000,
            diagnosis: DiagnosisPolicy::default(),
            history_rounds: history::DEFAULT_ROUNDS,
            limits: Default::default(),
        }
    }
}

impl Settings {
    pub fn from_args(args: &Args) -> Self {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Settings {
            policy: MatrixPolicy {
                interval_ms: ms(args.interval),
                stale_after: args.stale_after,
                failed_loss: args.failed_loss,
            },
            raise_after: args.raise_after,
            raise_after_outage: args.raise_after_outage,
            clear_after: args.clear_after,
            flap_window: args.flap_window,
            node_grace_ms: ms(args.node_grace),
            diagnosis: DiagnosisPolicy {
                loss_threshold: args.loss_threshold,
                latency_floor_ms: ms(args.latency_floor) as f64,
                interval_ms: ms(args.interval) as f64,
            },
            history_rounds: usize::try_from(args.history_rounds).unwrap_or(history::DEFAULT_ROUNDS),
            limits: Default::default(),
        }
    }
}
