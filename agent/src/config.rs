//! Command line, environment, and their validation.
//!
//! [`Args`] is what clap parses (every flag has an environment equivalent so a
//! DaemonSet can set it from the downward API). [`Settings`] is the validated
//! form the rest of the agent uses: addresses are parsed, defaults that depend
//! on the host (`KUBERNETES_SERVICE_HOST`, `/etc/resolv.conf`) are filled in,
//! and every mistake is reported at start-up with what to fix, instead of
//! surfacing later as a confusing probe failure.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use netmatrix_api::sampling::PeerSampling;
use netmatrix_api::{AgentIdentity, NetworkMode, labels};
use netmatrix_runtime::serve::parse_ip_port;

use crate::netif::{self, LocalInterface};
use crate::probes::dns::DnsName;
use crate::probes::icmp::MtuProbe;
use crate::probes::tcp::ClusterIpTarget;
use crate::probes::udp::PeerPorts;

/// Default API server address when neither `--apiserver` nor
/// `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT` say otherwise: the first
/// address of the default service CIDR.
pub const DEFAULT_APISERVER: &str = "10.96.0.1:443";
/// Default DNS name checked with an A lookup; expected to resolve to the API
/// server's ClusterIP.
pub const DEFAULT_DNS_NAME: &str = "kubernetes.default.svc.cluster.local.";
/// Default SRV name of the agents' headless Service.
pub const DEFAULT_SRV_NAME: &str = "_metrics._tcp.netmatrix-agents.netmatrix.svc.cluster.local.";
/// MTU probe size when the interface holding the agent's address is not
/// found: flannel's VXLAN pod MTU (1500 minus 50 bytes of encapsulation),
/// the most common pod MTU.
pub const FALLBACK_MTU_PROBE_BYTES: u32 = 1450;
/// Smallest MTU probe: the minimum MTU every IPv4 link must carry (RFC 791).
pub const MIN_MTU_PROBE_BYTES: u32 = 68;
/// Largest MTU probe: the largest IP packet (the total length is 16 bits).
pub const MAX_MTU_PROBE_BYTES: u32 = 65535;

/// Which network the agent probes from (mirrors [`NetworkMode`] for clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Network {
    /// The agent runs in the pod network (the CNI path).
    Pod,
    /// The agent runs with `hostNetwork: true` (the node's own path).
    Host,
}

impl From<Network> for NetworkMode {
    fn from(n: Network) -> Self {
        match n {
            Network::Pod => NetworkMode::Pod,
            Network::Host => NetworkMode::Host,
        }
    }
}

/// Where the agent's peers come from (`--peer-discovery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerDiscovery {
    /// The agent's own watches of the Kubernetes API.
    Api,
    /// The aggregator's pinglist for this node.
    Aggregator,
}

/// How reports are encoded (`--report-encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReportEncoding {
    /// Protocol Buffers ([`netmatrix_api::protobuf`]).
    #[default]
    Protobuf,
    /// JSON, as people read it.
    Json,
}

/// netmatrix agent: probes peer pods, the API server, ClusterIP services and
/// DNS from one node, every interval, and reports to the aggregator.
#[derive(Debug, Clone, Parser)]
#[command(name = "netmatrix-agent", version, about, long_about = None)]
pub struct Args {
    /// Node this agent runs on (`spec.nodeName`, from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Name of this agent pod (`metadata.name`, from the downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,

    /// IP of this agent pod (`status.podIP`, from the downward API).
    #[arg(long, env = "POD_IP")]
    pub pod_ip: IpAddr,

    /// Namespace of the agent, peer and aggregator pods.
    #[arg(long, env = "POD_NAMESPACE", default_value = "netmatrix")]
    pub namespace: String,

    /// Network this agent runs in, reported so the aggregator keeps pod and
    /// host results apart. `pod`: the agent is an ordinary pod and pings the
    /// agent and companion pods on every node (the CNI's path). `host`: the
    /// agent runs with `hostNetwork: true`, --pod-ip is then the node's IP,
    /// and by default it pings the other host agents, i.e. node IP to node IP
    /// (the underlay), so "pod path broken, node path fine" (the CNI) can be
    /// told from "both broken" (the node network). The API server, ClusterIP
    /// and DNS checks are the same in both modes.
    #[arg(long, env = "NETMATRIX_NETWORK", value_enum, default_value_t = Network::Pod)]
    pub network: Network,

    /// Label selector of the pods to ping [default with --network pod: the
    /// agents and companions,
    /// `app.kubernetes.io/name=netmatrix,netmatrix.io/probe-target=true`;
    /// with --network host: the host agents,
    /// `app.kubernetes.io/name=netmatrix,app.kubernetes.io/component=host-agent`].
    #[arg(long, env = "NETMATRIX_PEER_SELECTOR", value_name = "SELECTOR")]
    pub peer_selector: Option<String>,

    /// Aggregator Service URL, e.g. `http://10.96.0.20:80`. Without it the
    /// agent only probes and serves metrics.
    #[arg(long, env = "NETMATRIX_AGGREGATOR_URL")]
    pub aggregator_url: Option<String>,

    /// Where the peers come from: `aggregator`, the pinglist the aggregator
    /// computes for this node (one watcher of the API for the whole cluster;
    /// the agent needs no RBAC); or `api`, the agent's own watches of pods
    /// and Nodes (needs get/list/watch on pods and nodes; for aggregators
    /// run with --no-pinglists). [default: `aggregator` with
    /// --aggregator-url, `api` without]
    #[arg(long, env = "NETMATRIX_PEER_DISCOVERY", value_enum)]
    pub peer_discovery: Option<PeerDiscovery>,

    /// How reports are encoded: `protobuf` (about a kilobyte for 50 peers,
    /// cheap for the aggregator to read) or `json` (eleven). An aggregator
    /// that does not read protobuf answers 415, and the agent switches to
    /// JSON by itself.
    #[arg(
        long,
        env = "NETMATRIX_REPORT_ENCODING",
        value_enum,
        default_value = "protobuf"
    )]
    pub report_encoding: ReportEncoding,

    /// With --peer-discovery aggregator: a file keeping the last pinglist
    /// (an emptyDir in the chart), so that a restarted agent probes it
    /// before the aggregator answers. Unset: memory only.
    #[arg(long, env = "NETMATRIX_PINGLIST_FILE", value_name = "PATH")]
    pub pinglist_file: Option<PathBuf>,

    /// Label selector of the aggregator pods, reported to directly when the
    /// aggregator Service cannot be reached.
    #[arg(long, env = "NETMATRIX_AGGREGATOR_SELECTOR", default_value = labels::AGGREGATOR_SELECTOR)]
    pub aggregator_selector: String,

    /// Port of the aggregator pods, for direct reporting.
    #[arg(long, env = "NETMATRIX_AGGREGATOR_PORT", default_value_t = 8080)]
    pub aggregator_port: u16,

    /// Host-network agents: port of the pod-network agents' /metrics
    /// listener, where this node's pod agent serves the report it could not
    /// deliver; the host agent relays it (over the node-local path) so a
    /// node whose pods cannot reach the aggregator is still heard.
    #[arg(long, env = "NETMATRIX_POD_AGENT_PORT", default_value_t = 9090)]
    pub pod_agent_port: u16,

    /// Time between probing rounds.
    #[arg(long, env = "NETMATRIX_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// ICMP echoes sent to each peer per round.
    #[arg(long, env = "NETMATRIX_ICMP_COUNT", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub icmp_count: u16,

    /// How long to wait for each ICMP echo reply. Default: 1s, or 80% of --interval when that is shorter.
    #[arg(long, env = "NETMATRIX_ICMP_TIMEOUT", value_parser = humantime::parse_duration)]
    pub icmp_timeout: Option<Duration>,

    /// Timeout of each TCP connect, TLS handshake and HTTP exchange. Default: 2s, or 80% of --interval when that is shorter.
    #[arg(long, env = "NETMATRIX_TCP_TIMEOUT", value_parser = humantime::parse_duration)]
    pub tcp_timeout: Option<Duration>,

    /// Timeout of each DNS lookup. Default: 2s, or 80% of --interval when that is shorter.
    #[arg(long, env = "NETMATRIX_DNS_TIMEOUT", value_parser = humantime::parse_duration)]
    pub dns_timeout: Option<Duration>,

    /// Size in bytes of the whole IP packet (headers included) of the large
    /// ICMP echoes sent to every peer with Don't Fragment set: small echoes
    /// answered and large ones lost is an MTU mismatch (e.g. an overlay
    /// whose encapsulation overhead was not subtracted). 0 turns the probe
    /// off [default: the MTU of the interface holding --pod-ip, or 1450 when
    /// that interface is not found].
    #[arg(long, env = "NETMATRIX_MTU_PROBE_BYTES", value_name = "BYTES")]
    pub mtu_probe_bytes: Option<u32>,

    /// Large Don't-Fragment echoes sent to each peer per round (see
    /// --mtu-probe-bytes); kept low, as they cost a full-size packet each.
    #[arg(long, env = "NETMATRIX_MTU_PROBE_COUNT", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub mtu_probe_count: u16,

    /// How long DNS may rightly not list a record the API already has (a
    /// cached NXDOMAIN/NODATA from before the pod existed) or still list one
    /// the API no longer has (a cached positive answer). Such answers are
    /// `pending`, not failures, for this long; a negative answer whose SOA
    /// promises a longer negative TTL extends it (up to 30 minutes).
    #[arg(long, env = "NETMATRIX_DNS_NEGATIVE_TTL", default_value = "30s",
          value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub dns_negative_ttl: Duration,

    /// Pod-network agents: beside ICMP, probe one pod per node each round
    /// over TCP (a connect to its port) and UDP (echoes to the same port
    /// number), so that a path that filters one protocol is told from a
    /// broken one.
    #[arg(long, env = "NETMATRIX_TRANSPORT_PROBES", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub transport_probes: bool,

    /// Port of the peer agents (their --listen port), probed over TCP and
    /// UDP. Use the chart's agent.port.
    #[arg(long, env = "NETMATRIX_PEER_AGENT_PORT", default_value_t = 9090)]
    pub peer_agent_port: u16,

    /// Port of the peer companions (their --listen port), probed over TCP
    /// and UDP. Use the chart's companion.port.
    #[arg(long, env = "NETMATRIX_PEER_COMPANION_PORT", default_value_t = 9091)]
    pub peer_companion_port: u16,

    /// Sampling of the remote nodes on a large cluster (with
    /// --peer-discovery api; on pinglists the aggregator's flags decide).
    #[command(flatten)]
    pub sampling: netmatrix_runtime::flags::SamplingFlags,

    /// Address serving /metrics and /healthz (Prometheus, the kubelet's
    /// probes). IPv6 with or without brackets (the chart's `$(HOST_IP):9095`).
    #[arg(long, env = "NETMATRIX_LISTEN", default_value = "0.0.0.0:9090",
          value_parser = netmatrix_runtime::serve::parse_listen)]
    pub listen: SocketAddr,

    /// Address serving /status (the last round's full report and the
    /// delivery state) besides /metrics and /healthz: loopback by default,
    /// for `kubectl port-forward pod/<agent> 9092` only.
    #[arg(long, env = "NETMATRIX_STATUS_LISTEN", default_value = "127.0.0.1:9092",
          value_parser = netmatrix_runtime::serve::parse_listen)]
    pub status_listen: SocketAddr,

    /// The agent's projected ServiceAccount token (audience `netmatrix`),
    /// sent to the aggregator as `Authorization: Bearer` and read again
    /// before every report, since the kubelet rotates it. Without the file,
    /// reports go without a token (only an aggregator run with
    /// --no-kubernetes accepts them).
    #[arg(
        long,
        env = "NETMATRIX_TOKEN_FILE",
        value_name = "PATH",
        default_value = "/var/run/secrets/netmatrix.io/token"
    )]
    pub token_file: PathBuf,

    /// Threads running the agent's tasks. One (a single-threaded runtime)
    /// is plenty: probing thousands of peers is mostly waiting, and every
    /// extra thread costs CPU and memory on every node. Echo replies are
    /// timed when the agent gets to them, so while it parses a large API
    /// list (the node watch re-listing thousands of nodes) RTTs measured in
    /// that moment read a few tens of milliseconds longer; give it 2 on very
    /// large clusters if that matters.
    #[arg(long, env = "NETMATRIX_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,

    /// API server address to probe, IP:PORT [default: KUBERNETES_SERVICE_HOST:
    /// KUBERNETES_SERVICE_PORT, else 10.96.0.1:443].
    #[arg(long, env = "NETMATRIX_APISERVER", value_name = "HOST:PORT")]
    pub apiserver: Option<String>,

    /// PEM file with the CA that signed the API server certificate [default:
    /// the CA of the Kubernetes client configuration].
    #[arg(long, env = "NETMATRIX_APISERVER_CA", value_name = "PATH")]
    pub apiserver_ca: Option<PathBuf>,

    /// ClusterIP service to check with a TCP connect, NAME=IP:PORT; repeatable
    /// (environment: comma-separated).
    #[arg(
        long = "clusterip",
        env = "NETMATRIX_CLUSTERIPS",
        value_name = "NAME=IP:PORT",
        value_delimiter = ','
    )]
    pub clusterips: Vec<String>,

    /// DNS server to query, IP[:PORT] [default: first nameserver in
    /// /etc/resolv.conf].
    #[arg(long, env = "NETMATRIX_DNS_SERVER", value_name = "IP[:PORT]")]
    pub dns_server: Option<String>,

    /// Name to resolve (A), optionally with the address it must resolve to;
    /// repeatable [default: kubernetes.default.svc.cluster.local.=<API server
    /// IP>].
    #[arg(
        long = "dns-name",
        env = "NETMATRIX_DNS_NAMES",
        value_name = "NAME[=EXPECTED_IP]",
        value_delimiter = ','
    )]
    pub dns_names: Vec<String>,

    /// SRV name of the agents' headless Service, compared with the Ready
    /// agent pods and used as a start-up fallback for peers; empty disables.
    #[arg(long, env = "NETMATRIX_SRV_NAME", default_value = DEFAULT_SRV_NAME)]
    pub srv_name: String,

    /// Kubeconfig file [default: in-cluster configuration, or kube's usual
    /// inference].
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

/// A mistake in the command line or environment, with what to do about it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--peer-discovery aggregator needs --aggregator-url: the pinglist comes from the aggregator"
    )]
    PinglistWithoutAggregator,
    #[error(
        "--clusterip {value:?}: expected NAME=IP:PORT, e.g. --clusterip aggregator=10.96.0.20:80"
    )]
    ClusterIpWithoutName { value: String },
    #[error(
        "--clusterip {value:?}: {addr:?} is not IP:PORT (a ClusterIP is dialled by address, e.g. 10.96.0.20:80)"
    )]
    ClusterIpAddress { value: String, addr: String },
    #[error(
        "--clusterip {value:?}: $({var}) was not expanded: Kubernetes sets a Service's environment variables only in pods created after the Service; restart the pod (kubectl -n <namespace> rollout restart daemonset/<agent>)"
    )]
    ClusterIpUnexpanded { value: String, var: String },
    #[error(
        "--clusterip: the name {name:?} is used twice; give every ClusterIP target its own name"
    )]
    ClusterIpDuplicate { name: String },
    #[error(
        "--apiserver {value:?}: expected IP:PORT, e.g. 10.96.0.1:443 (the probe dials an address, not a name)"
    )]
    Apiserver { value: String },
    #[error(
        "KUBERNETES_SERVICE_HOST={host:?} KUBERNETES_SERVICE_PORT={port:?} do not form IP:PORT; pass --apiserver IP:PORT"
    )]
    ApiserverFromEnv { host: String, port: String },
    #[error("--dns-server {value:?}: expected IP or IP:PORT, e.g. 10.96.0.10 or 10.96.0.10:53")]
    DnsServer { value: String },
    #[error(
        "no --dns-server given and /etc/resolv.conf lists no nameserver; pass --dns-server IP[:PORT]"
    )]
    NoDnsServer,
    #[error(
        "--dns-name {value:?}: expected NAME or NAME=EXPECTED_IP, e.g. kubernetes.default.svc.cluster.local.=10.96.0.1"
    )]
    DnsName { value: String },
    #[error("--aggregator-url {value:?}: {reason}; expected e.g. http://10.96.0.20:80")]
    AggregatorUrl { value: String, reason: String },
    #[error(
        "--mtu-probe-bytes {got}: the IP packet must be 0 (probe off) or {MIN_MTU_PROBE_BYTES} to {MAX_MTU_PROBE_BYTES} bytes"
    )]
    MtuProbeBytes { got: u32 },
    #[error("--{flag} must not be empty")]
    Empty { flag: &'static str },
    #[error(
        "--{flag} {value:?}: not a Kubernetes object name (lowercase letters, digits, '-' and '.'); set it from the downward API"
    )]
    ObjectName { flag: &'static str, value: String },
    #[error(
        "--clusterip: the name {name:?} must be letters, digits, '-', '_' or '.', at most 63 characters"
    )]
    ClusterIpName { name: String },
    #[error("--interval must be at most 1h (got {got:?})")]
    IntervalTooLong { got: Duration },
    #[error("--interval must be at least 100ms (got {got:?})")]
    IntervalTooShort { got: Duration },
    #[error(
        "--{flag} ({got:?}) must be shorter than --interval ({interval:?}), or rounds would overlap"
    )]
    TimeoutTooLong {
        flag: &'static str,
        got: Duration,
        interval: Duration,
    },
}

/// Host-dependent defaults, gathered once so that validation is a pure
/// function of its inputs (and testable).
#[derive(Debug, Clone, Default)]
pub struct HostDefaults {
    pub kubernetes_service_host: Option<String>,
    pub kubernetes_service_port: Option<String>,
    /// Contents of `/etc/resolv.conf`, if readable.
    pub resolv_conf: Option<String>,
    /// Interfaces of this network namespace (for the MTU probe's default).
    pub interfaces: Vec<LocalInterface>,
}

impl HostDefaults {
    /// Reads the environment and `/etc/resolv.conf` of this process.
    pub fn from_host() -> Self {
        Self {
            kubernetes_service_host: std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            kubernetes_service_port: std::env::var("KUBERNETES_SERVICE_PORT").ok(),
            resolv_conf: std::fs::read_to_string("/etc/resolv.conf").ok(),
            interfaces: netif::local_interfaces(),
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub identity: AgentIdentity,
    pub namespace: String,
    pub peer_selector: String,
    pub aggregator_selector: String,
    /// Aggregator Service base URL (no trailing slash), if reporting is on.
    pub aggregator_url: Option<reqwest::Url>,
    pub report_encoding: ReportEncoding,
    pub aggregator_port: u16,
    /// Host agents: where the local pod agent serves its undelivered report.
    pub pod_agent_port: u16,
    pub interval: Duration,
    /// Which remote nodes to probe in a large cluster.
    pub sampling: PeerSampling,
    pub icmp_count: u16,
    pub icmp_timeout: Duration,
    /// Large Don't-Fragment echoes; `None` when off.
    pub mtu_probe: Option<MtuProbe>,
    /// The peers' ports probed over TCP and UDP; `None`: ICMP only (host
    /// agents, or turned off).
    pub transport: Option<PeerPorts>,
    pub tcp_timeout: Duration,
    pub dns_timeout: Duration,
    pub listen: SocketAddr,
    pub status_listen: SocketAddr,
    pub token_file: PathBuf,
    pub peer_discovery: PeerDiscovery,
    pub pinglist_file: Option<PathBuf>,
    pub apiserver: SocketAddr,
    pub apiserver_ca: Option<PathBuf>,
    pub clusterips: Vec<ClusterIpTarget>,
    pub dns_server: SocketAddr,
    pub dns_names: Vec<DnsName>,
    /// Fully qualified SRV name; `None` when disabled.
    pub srv_name: Option<String>,
    /// Least time DNS may lag the API (see `--dns-negative-ttl`).
    pub dns_negative_ttl: Duration,
    pub kubeconfig: Option<PathBuf>,
}

impl Settings {
    /// Validates `args`, filling host-dependent defaults from `host`.
    pub fn from_args(args: Args, host: &HostDefaults) -> Result<Self, ConfigError> {
        // Host agents probe each other (node to node) unless told otherwise.
        let peer_selector = args
            .peer_selector
            .clone()
            .unwrap_or_else(|| match args.network {
                Network::Pod => labels::PEER_SELECTOR.to_owned(),
                Network::Host => labels::HOST_AGENT_SELECTOR.to_owned(),
            });
        for (flag, value) in [
            ("node-name", &args.node_name),
            ("pod-name", &args.pod_name),
            ("namespace", &args.namespace),
            ("peer-selector", &peer_selector),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Empty { flag });
            }
        }
        // The aggregator refuses reports whose names break Kubernetes' rules.
        for (flag, value) in [("node-name", &args.node_name), ("pod-name", &args.pod_name)] {
            if !netmatrix_api::validate::is_object_name(value) {
                return Err(ConfigError::ObjectName {
                    flag,
                    value: value.clone(),
                });
            }
        }
        if args.interval > Duration::from_millis(netmatrix_api::validate::MAX_INTERVAL_MS) {
            return Err(ConfigError::IntervalTooLong { got: args.interval });
        }
        let mtu_probe = mtu_probe(&args, host)?;
        if args.interval < Duration::from_millis(100) {
            return Err(ConfigError::IntervalTooShort { got: args.interval });
        }
        // Unset timeouts shrink with a short interval so that `--interval 1s`
        // alone works; explicit ones that would overlap rounds are an error.
        let fitted =
            |flag: &'static str, explicit: Option<Duration>, default: Duration| match explicit {
                Some(got) if got >= args.interval => Err(ConfigError::TimeoutTooLong {
                    flag,
                    got,
                    interval: args.interval,
                }),
                Some(got) => Ok(got),
                None => Ok(default.min(args.interval.mul_f64(0.8))),
            };
        let icmp_timeout = fitted("icmp-timeout", args.icmp_timeout, Duration::from_secs(1))?;
        let tcp_timeout = fitted("tcp-timeout", args.tcp_timeout, Duration::from_secs(2))?;
        let dns_timeout = fitted("dns-timeout", args.dns_timeout, Duration::from_secs(2))?;

        let apiserver = apiserver_address(args.apiserver.as_deref(), host)?;
        let clusterips = parse_clusterips(&args.clusterips)?;
        let dns_server = match args.dns_server.as_deref() {
            Some(value) => parse_dns_server(value)?,
            None => host
                .resolv_conf
                .as_deref()
                .and_then(first_nameserver)
                .map(|ip| SocketAddr::new(ip, 53))
                .ok_or(ConfigError::NoDnsServer)?,
        };
        let dns_names = if args.dns_names.is_empty() {
            vec![DnsName {
                name: DEFAULT_DNS_NAME.to_owned(),
                expected: Some(apiserver.ip()),
            }]
        } else {
            args.dns_names
                .iter()
                .map(|v| parse_dns_name(v))
                .collect::<Result<_, _>>()?
        };
        let srv_name = Some(args.srv_name.trim())
            .filter(|s| !s.is_empty())
            .map(fully_qualified);
        let aggregator_url = args
            .aggregator_url
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(parse_aggregator_url)
            .transpose()?;
        let peer_discovery = match (args.peer_discovery, &aggregator_url) {
            (Some(PeerDiscovery::Aggregator), None) => {
                return Err(ConfigError::PinglistWithoutAggregator);
            }
            (Some(chosen), _) => chosen,
            (None, Some(_)) => PeerDiscovery::Aggregator,
            (None, None) => PeerDiscovery::Api,
        };

        Ok(Settings {
            identity: AgentIdentity {
                node: args.node_name,
                pod: args.pod_name,
                pod_ip: args.pod_ip,
                network: args.network.into(),
            },
            namespace: args.namespace,
            peer_selector,
            aggregator_selector: args.aggregator_selector,
            aggregator_url,
            report_encoding: args.report_encoding,
            aggregator_port: args.aggregator_port,
            pod_agent_port: args.pod_agent_port,
            interval: args.interval,
            sampling: args.sampling.sampling(),
            icmp_count: args.icmp_count,
            icmp_timeout,
            mtu_probe,
            transport: (args.transport_probes && args.network == Network::Pod).then_some(
                PeerPorts {
                    agent: args.peer_agent_port,
                    companion: args.peer_companion_port,
                },
            ),
            tcp_timeout,
            dns_timeout,
            listen: args.listen,
            status_listen: args.status_listen,
            token_file: args.token_file,
            peer_discovery,
            pinglist_file: args.pinglist_file,
            apiserver,
            apiserver_ca: args.apiserver_ca,
            clusterips,
            dns_server,
            dns_names,
            srv_name,
            dns_negative_ttl: args.dns_negative_ttl,
            kubeconfig: args.kubeconfig,
        })
    }
}

/// The MTU probe: the size given, or the MTU of the interface holding our
/// address (a packet of exactly that size must pass), or the fallback.
fn mtu_probe(args: &Args, host: &HostDefaults) -> Result<Option<MtuProbe>, ConfigError> {
    let bytes = match args.mtu_probe_bytes {
        Some(0) => return Ok(None),
        Some(got) if !(MIN_MTU_PROBE_BYTES..=MAX_MTU_PROBE_BYTES).contains(&got) => {
            return Err(ConfigError::MtuProbeBytes { got });
        }
        Some(got) => got,
        None => match netif::interface_with(args.pod_ip, &host.interfaces) {
            Some(LocalInterface {
                name,
                mtu: Some(mtu),
                ..
            }) => {
                let bytes = (*mtu).clamp(MIN_MTU_PROBE_BYTES, MAX_MTU_PROBE_BYTES);
                tracing::info!(interface = %name, mtu, bytes, "MTU probe sized to the interface holding the agent's address");
                bytes
            }
            found => {
                tracing::warn!(
                    ip = %args.pod_ip,
                    interface = found.map(|i| i.name.as_str()),
                    bytes = FALLBACK_MTU_PROBE_BYTES,
                    "no interface with a readable MTU holds the agent's address; \
                     the MTU probe uses the fallback size (set --mtu-probe-bytes)"
                );
                FALLBACK_MTU_PROBE_BYTES
            }
        },
    };
    Ok(Some(MtuProbe {
        bytes,
        count: args.mtu_probe_count,
    }))
}

fn apiserver_address(flag: Option<&str>, host: &HostDefaults) -> Result<SocketAddr, ConfigError> {
    if let Some(value) = flag {
        return value.trim().parse().map_err(|_| ConfigError::Apiserver {
            value: value.to_owned(),
        });
    }
    match (&host.kubernetes_service_host, &host.kubernetes_service_port) {
        (Some(h), Some(p)) => {
            let ip: Option<IpAddr> = h.trim().parse().ok();
            let port: Option<u16> = p.trim().parse().ok();
            match (ip, port) {
                (Some(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
                _ => Err(ConfigError::ApiserverFromEnv {
                    host: h.clone(),
                    port: p.clone(),
                }),
            }
        }
        _ => Ok(DEFAULT_APISERVER
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([10, 96, 0, 1], 443)))),
    }
}

fn parse_clusterips(values: &[String]) -> Result<Vec<ClusterIpTarget>, ConfigError> {
    let mut targets: Vec<ClusterIpTarget> = Vec::new();
    for value in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        let (name, addr) = value
            .split_once('=')
            .filter(|(name, _)| !name.trim().is_empty())
            .ok_or_else(|| ConfigError::ClusterIpWithoutName {
                value: value.to_owned(),
            })?;
        let addr = addr.trim();
        // The chart passes `$(SVC_SERVICE_HOST):$(SVC_SERVICE_PORT)`, which
        // the kubelet leaves as is when the variable is not set.
        if let Some(var) = addr
            .split_once("$(")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(var, _)| var)
        {
            return Err(ConfigError::ClusterIpUnexpanded {
                value: value.to_owned(),
                var: var.to_owned(),
            });
        }
        let parsed = parse_ip_port(addr).ok_or_else(|| ConfigError::ClusterIpAddress {
            value: value.to_owned(),
            addr: addr.to_owned(),
        })?;
        let name = name.trim().to_owned();
        if !netmatrix_api::validate::is_check_name(&name) {
            return Err(ConfigError::ClusterIpName { name });
        }
        if targets.iter().any(|t| t.name == name) {
            return Err(ConfigError::ClusterIpDuplicate { name });
        }
        targets.push(ClusterIpTarget { name, addr: parsed });
    }
    Ok(targets)
}

fn parse_dns_server(value: &str) -> Result<SocketAddr, ConfigError> {
    let value = value.trim();
    value
        .parse::<SocketAddr>()
        .or_else(|_| value.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| ConfigError::DnsServer {
            value: value.to_owned(),
        })
}

fn parse_dns_name(value: &str) -> Result<DnsName, ConfigError> {
    let err = || ConfigError::DnsName {
        value: value.to_owned(),
    };
    let (name, expected) = match value.trim().split_once('=') {
        Some((name, ip)) => (name, Some(ip.trim().parse().map_err(|_| err())?)),
        None => (value.trim(), None),
    };
    let name = name.trim();
    if !netmatrix_api::validate::is_dns_name(&fully_qualified(name)) {
        return Err(err());
    }
    Ok(DnsName {
        name: fully_qualified(name),
        expected,
    })
}

fn parse_aggregator_url(value: &str) -> Result<reqwest::Url, ConfigError> {
    let err = |reason: &str| ConfigError::AggregatorUrl {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(value.trim()).map_err(|e| err(&e.to_string()))?;
    if url.scheme() != "http" {
        return Err(err(
            "only http:// is supported (the aggregator Service is plain HTTP inside the cluster)",
        ));
    }
    if url.host().is_none() {
        return Err(err("the URL has no host"));
    }
    Ok(url)
}

/// Appends the root label so a name is never expanded with the pod's search
/// list (`ndots:5` would otherwise try `name.netmatrix.svc.cluster.local` first).
fn fully_qualified(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// First `nameserver` line of a resolv.conf.
pub fn first_nameserver(resolv_conf: &str) -> Option<IpAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(addr)) => addr.split('%').next()?.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "netmatrix-agent",
            "--node-name",
            "node-1",
            "--pod-name",
            "agent-abc",
            "--pod-ip",
            "10.244.1.5",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    fn host() -> HostDefaults {
        HostDefaults {
            kubernetes_service_host: Some("10.96.0.1".into()),
            kubernetes_service_port: Some("443".into()),
            resolv_conf: Some(
                "search netmatrix.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
                    .into(),
            ),
            interfaces: vec![
                LocalInterface {
                    name: "lo".into(),
                    addrs: vec!["127.0.0.1".parse().unwrap()],
                    mtu: Some(65536),
                },
                LocalInterface {
                    name: "eth0".into(),
                    addrs: vec!["10.244.1.5".parse().unwrap()],
                    mtu: Some(1450),
                },
            ],
        }
    }

    #[test]
    fn defaults_come_from_the_host() {
        let s = Settings::from_args(args(&[]), &host()).unwrap();
        assert_eq!(s.apiserver, "10.96.0.1:443".parse().unwrap());
        assert_eq!(s.dns_server, "10.96.0.10:53".parse().unwrap());
        assert_eq!(
            s.dns_names,
            vec![DnsName {
                name: DEFAULT_DNS_NAME.into(),
                expected: Some("10.96.0.1".parse().unwrap()),
            }]
        );
        assert_eq!(s.srv_name.as_deref(), Some(DEFAULT_SRV_NAME));
        assert_eq!(s.interval, Duration::from_secs(5));
        assert_eq!(s.icmp_count, 3);
        assert_eq!(s.namespace, "netmatrix");
        assert_eq!(s.identity.network, NetworkMode::Pod);
        assert!(s.aggregator_url.is_none());
        assert_eq!(s.peer_selector, labels::PEER_SELECTOR);
        assert_eq!(
            s.mtu_probe,
            Some(MtuProbe {
                bytes: 1450,
                count: 2
            })
        );
        assert_eq!(s.dns_negative_ttl, Duration::from_secs(30));
    }

    #[test]
    fn peers_come_from_the_aggregator_when_there_is_one() {
        let url = ["--aggregator-url", "http://10.96.0.20:80"];
        let discovery =
            |extra: &[&str]| Settings::from_args(args(extra), &host()).map(|s| s.peer_discovery);
        assert_eq!(discovery(&url), Ok(PeerDiscovery::Aggregator));
        assert_eq!(discovery(&[]), Ok(PeerDiscovery::Api));
        let api = [url[0], url[1], "--peer-discovery", "api"];
        assert_eq!(discovery(&api), Ok(PeerDiscovery::Api));
        assert_eq!(
            discovery(&["--peer-discovery", "aggregator"]),
            Err(ConfigError::PinglistWithoutAggregator)
        );
    }

    #[test]
    fn host_agents_probe_the_other_host_agents_unless_told_otherwise() {
        let s = Settings::from_args(args(&["--network", "host"]), &host()).unwrap();
        assert_eq!(s.identity.network, NetworkMode::Host);
        assert_eq!(s.peer_selector, labels::HOST_AGENT_SELECTOR);
        let s = Settings::from_args(
            args(&["--network", "host", "--peer-selector", "app=x"]),
            &host(),
        )
        .unwrap();
        assert_eq!(s.peer_selector, "app=x");
        let err = Settings::from_args(args(&["--peer-selector", " "]), &host()).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Empty {
                flag: "peer-selector"
            }
        );
    }

    #[test]
    fn help_explains_the_network_modes_and_their_selectors() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains(labels::PEER_SELECTOR), "{help}");
        assert!(help.contains(labels::HOST_AGENT_SELECTOR), "{help}");
        assert!(help.contains("hostNetwork: true"), "{help}");
        assert!(help.contains("--mtu-probe-bytes"), "{help}");
        assert!(help.contains("NETMATRIX_DNS_NEGATIVE_TTL"), "{help}");
    }

    #[test]
    fn the_mtu_probe_is_sized_from_the_interface_or_the_flag() {
        let sized = |ip: &str, extra: &[&str], host: &HostDefaults| {
            let mut a = args(extra);
            a.pod_ip = ip.parse().unwrap();
            Settings::from_args(a, host).map(|s| s.mtu_probe.map(|m| (m.bytes, m.count)))
        };
        let bytes = |extra: &[&str], host: &HostDefaults| sized("10.244.1.5", extra, host);
        let mut jumbo = host();
        jumbo.interfaces[1].mtu = Some(9001);
        assert_eq!(bytes(&[], &jumbo), Ok(Some((9001, 2))));
        // The agent's address is on no interface (or the MTU is unreadable).
        assert_eq!(
            sized("10.244.9.9", &[], &host()),
            Ok(Some((FALLBACK_MTU_PROBE_BYTES, 2)))
        );
        let mut unreadable = host();
        unreadable.interfaces[1].mtu = None;
        assert_eq!(bytes(&[], &unreadable), Ok(Some((1450, 2))));
        // Loopback's 65536 is more than an IP packet can hold.
        assert_eq!(
            sized("127.0.0.1", &[], &host()),
            Ok(Some((MAX_MTU_PROBE_BYTES, 2)))
        );
        assert_eq!(
            bytes(
                &["--mtu-probe-bytes", "1400", "--mtu-probe-count", "3"],
                &host()
            ),
            Ok(Some((1400, 3)))
        );
        assert_eq!(bytes(&["--mtu-probe-bytes", "0"], &host()), Ok(None));
        let err = bytes(&["--mtu-probe-bytes", "20"], &host()).unwrap_err();
        assert_eq!(err, ConfigError::MtuProbeBytes { got: 20 });
        assert!(
            err.to_string().contains("0 (probe off) or 68 to 65535"),
            "{err}"
        );
    }

    #[test]
    fn apiserver_falls_back_to_the_default_service_address() {
        let s = Settings::from_args(
            args(&[]),
            &HostDefaults {
                resolv_conf: Some("nameserver 10.96.0.10".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.apiserver.to_string(), DEFAULT_APISERVER);
    }

    #[test]
    fn flags_are_parsed_and_names_made_fully_qualified() {
        let s = Settings::from_args(
            args(&[
                "--clusterip",
                "aggregator=10.96.0.20:80",
                "--clusterip",
                "agents=10.96.0.21:9090",
                "--dns-server",
                "10.96.0.10:5353",
                "--dns-name",
                "kubernetes.default.svc.cluster.local=10.96.0.1",
                "--dns-name",
                "example.org",
                "--srv-name",
                "",
                "--network",
                "host",
                "--aggregator-url",
                "http://10.96.0.20:80",
                "--interval",
                "2s",
                "--icmp-timeout",
                "500ms",
                "--tcp-timeout",
                "1s",
                "--dns-timeout",
                "1s",
            ]),
            &host(),
        )
        .unwrap();
        assert_eq!(s.clusterips.len(), 2);
        assert_eq!(s.clusterips[1].name, "agents");
        assert_eq!(s.dns_server.port(), 5353);
        assert_eq!(s.dns_names[0].name, "kubernetes.default.svc.cluster.local.");
        assert_eq!(s.dns_names[1].expected, None);
        assert_eq!(s.srv_name, None);
        assert_eq!(s.identity.network, NetworkMode::Host);
        assert_eq!(s.interval, Duration::from_secs(2));
    }

    #[test]
    fn mistakes_are_reported_with_what_to_fix() {
        let err =
            Settings::from_args(args(&["--clusterip", "10.96.0.20:80"]), &host()).unwrap_err();
        assert!(matches!(err, ConfigError::ClusterIpWithoutName { .. }));
        assert!(err.to_string().contains("NAME=IP:PORT"), "{err}");

        let err =
            Settings::from_args(args(&["--clusterip", "a=svc.local:80"]), &host()).unwrap_err();
        assert!(matches!(err, ConfigError::ClusterIpAddress { .. }));

        // IPv6 ClusterIPs, bracketed or as the chart's expansion writes them.
        for v in ["a=[fd00::a]:80", "a=fd00::a:80"] {
            let s = Settings::from_args(args(&["--clusterip", v]), &host()).unwrap();
            assert_eq!(
                s.clusterips[0].addr,
                "[fd00::a]:80".parse::<SocketAddr>().unwrap(),
                "{v}"
            );
        }

        // The chart's form, with the Service created after the pod.
        let err = Settings::from_args(
            args(&["--clusterip", "a=$(A_SERVICE_HOST):$(A_SERVICE_PORT)"]),
            &host(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConfigError::ClusterIpUnexpanded { var, .. } if var == "A_SERVICE_HOST"),
            "{err:?}"
        );
        assert!(err.to_string().contains("restart the pod"), "{err}");

        let err = Settings::from_args(args(&["--clusterip", "a=10.0.0.1:1,a=10.0.0.2:2"]), &host())
            .unwrap_err();
        assert_eq!(err, ConfigError::ClusterIpDuplicate { name: "a".into() });

        let err =
            Settings::from_args(args(&["--apiserver", "kubernetes:443"]), &host()).unwrap_err();
        assert!(matches!(err, ConfigError::Apiserver { .. }));

        let err = Settings::from_args(args(&["--dns-name", "x=notanip"]), &host()).unwrap_err();
        assert!(matches!(err, ConfigError::DnsName { .. }));

        let err = Settings::from_args(args(&["--aggregator-url", "https://agg:443"]), &host())
            .unwrap_err();
        assert!(matches!(err, ConfigError::AggregatorUrl { .. }));

        let s = Settings::from_args(args(&["--interval", "1s"]), &host()).unwrap();
        assert_eq!(s.icmp_timeout, Duration::from_millis(800));
        assert_eq!(s.dns_timeout, Duration::from_millis(800));
        let err = Settings::from_args(args(&["--interval", "1s", "--icmp-timeout", "1s"]), &host())
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::TimeoutTooLong {
                    flag: "icmp-timeout",
                    ..
                }
            ),
            "{err}"
        );

        let err = Settings::from_args(args(&[]), &HostDefaults::default()).unwrap_err();
        assert_eq!(err, ConfigError::NoDnsServer);
    }

    #[test]
    fn env_style_comma_separated_clusterips_are_split() {
        let s = Settings::from_args(
            args(&["--clusterip", "a=10.96.0.20:80,b=[fd00::1]:53"]),
            &host(),
        )
        .unwrap();
        assert_eq!(s.clusterips[1].addr, "[fd00::1]:53".parse().unwrap());
    }

    #[test]
    fn resolv_conf_parsing_skips_comments_and_zones() {
        assert_eq!(first_nameserver("# nameserver 1.1.1.1\n"), None);
        assert_eq!(
            first_nameserver("nameserver fe80::1%eth0\nnameserver 10.0.0.1"),
            Some("fe80::1".parse().unwrap())
        );
    }
}
