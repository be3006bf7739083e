//! netmatrix agent: probes the pod network from one node and reports to the
//! aggregator.
//!
//! # Architecture
//!
//! ```text
//!             ┌────────────── discovery ───────────────┐
//!  kube API ──▶ reflector: peer pods   (agents, companions; host agents)
//!             │ reflector: nodes (cordoned / NotReady: not probed)
//!             │ reflector: agent pods (host mode: the SRV truth)
//!             │ reflector: aggregator pods (direct reporting)
//!             └──────────────┬─────────────────────────┘
//!                            │ PeerView (Api | LastKnown | Dns fallback)
//!   round loop (every --interval) ──▶ probes, concurrently, each jittered:
//!      icmp (peers; small echoes, large Don't-Fragment echoes)
//!      · apiserver (TCP → TLS → GET /livez) · clusterip (TCP)
//!      · dns (A vs expected, SRV vs Ready agents, allowing the negative TTL)
//!                            │ peers that left during the round dropped
//!                            │ Report (netmatrix-api)
//!         ┌──────────────────┼──────────────────────┐
//!      metrics          /status board          reporter task
//!   (/metrics)          (/status, /healthz)    POST → Service, else pods
//! ```
//!
//! Failures of the things being measured (API server, DNS, aggregator) are
//! data: they end up in the report, the metrics and the logs, and the loop
//! keeps going. Only configuration mistakes stop the agent, at start-up, with
//! a message saying what to fix ([`Error`]).
//!
//! Modules: [`config`] (flags, validation; builds the probes' settings,
//! which live with the probes), [`discovery`] (watches, peer filtering, SRV
//! fallback, departed peers), [`probes`] (icmp, tcp, udp, apiserver, dns;
//! [`probes::dns`] keeps what DNS should answer), [`round`] (one round, the
//! loop), [`report`] (delivery and backoff), [`metrics`], [`http`],
//! [`netif`] (interface MTU), [`facts`] (host agents' node facts).
//!
//! With `--network host` the same binary is the host-network agent: its
//! address is the node's, it probes the other host agents, and its reports
//! say `network: host`, so the aggregator keeps node-to-node results apart
//! from pod-to-pod ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::client::ConfigExt;
use netmatrix_runtime::serve::{self, ServerLimits};
use tokio::sync::watch;

use crate::metrics::Metrics;

pub mod config;
pub mod discovery;
pub mod facts;
pub mod http;
pub mod metrics;
pub mod netif;
pub mod probes;
pub mod report;
pub mod round;

pub use config::{Args, Settings};

/// The agent's servers answer Prometheus, the kubelet and an operator's
/// port-forward: a few connections, each bounded in time.
const SERVER_LIMITS: ServerLimits = ServerLimits {
    max_connections: 32,
    // The kubelet's probes come from the node's address: one neighbour
    // cannot take the slots they need.
    max_connections_per_ip: 8,
    header_timeout: Duration::from_secs(10),
    body_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(30),
    write_timeout: Duration::from_secs(10),
    max_connection_age: Duration::from_secs(60),
};

/// How long the first round waits for the initial pod list before falling
/// back to the SRV record.
const STARTUP_SYNC_GRACE: Duration = Duration::from_secs(3);

/// Why the agent cannot start. Probe failures are never errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    KubeConfig(#[from] netmatrix_runtime::KubeConfigError),
    #[error("cannot create the Kubernetes client: {0}")]
    KubeClient(#[source] kube::Error),
    #[error(transparent)]
    Icmp(#[from] probes::icmp::IcmpSocketError),
    #[error(transparent)]
    Apiserver(#[from] probes::apiserver::SetupError),
    #[error("cannot set up the DNS resolver for {server}: {message}")]
    Dns { server: SocketAddr, message: String },
    #[error("cannot set up the metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot build the HTTP client for reporting: {0}")]
    ReportClient(#[source] reqwest::Error),
    #[error(
        "cannot listen on {addr}: {source}; choose another --listen or --status-listen address"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Raises the soft limit on open files to the hard one, as Go programs do
/// at start: a round holds a socket per probe in flight (bounded by
/// [`probes::udp::MAX_OPEN_SOCKETS`] for TCP and UDP), and container
/// runtimes often leave the soft limit at 1024. A failure is only logged.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct on this stack
    // frame, of the type they expect.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) == 0
        }
    };
    if raised {
        tracing::debug!(
            open_files = limit.rlim_cur,
            "open files limit raised to the hard limit"
        );
    } else {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open files limit");
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    let settings = Settings::from_args(args, &config::HostDefaults::from_host())?;
    tracing::info!(
        node = %settings.identity.node,
        pod = %settings.identity.pod,
        ip = %settings.identity.pod_ip,
        network = ?settings.identity.network,
        apiserver = %settings.apiserver,
        dns_server = %settings.dns_server,
        interval = ?settings.interval,
        peer_selector = %settings.peer_selector,
        peer_discovery = ?settings.peer_discovery,
        mtu_probe_bytes = settings.mtu_probe.map(|m| m.bytes),
        dns_negative_ttl = ?settings.dns_negative_ttl,
        aggregator = settings.aggregator_url.as_ref().map(|u| u.as_str()),
        "starting netmatrix agent"
    );

    raise_open_files_limit();
    let metrics = Arc::new(Metrics::new()?);
    let kube_config = netmatrix_runtime::kube_config(settings.kubeconfig.as_deref()).await?;

    let ca = match (&settings.apiserver_ca, &kube_config.root_cert) {
        (Some(path), _) => probes::apiserver::CaSource::PemFile(path.clone()),
        (None, Some(der)) if !der.is_empty() => probes::apiserver::CaSource::Der(der.clone()),
        (None, _) => probes::apiserver::CaSource::Unverified,
    };
    let credentials = match kube_config.auth_layer() {
        Ok(Some(layer)) => probes::apiserver::Credentials::Kube(Arc::new(layer)),
        Ok(None) => probes::apiserver::Credentials::None,
        Err(error) => {
            tracing::warn!(%error, "no credentials for the API server check; /livez will be requested without a token");
            probes::apiserver::Credentials::None
        }
    };
    let client = kube::Client::try_from(kube_config).map_err(Error::KubeClient)?;

    let prober = round::Prober {
        identity: settings.identity.clone(),
        interval: settings.interval,
        icmp: probes::icmp::IcmpProber::new(
            settings.icmp_count,
            settings.icmp_timeout,
            settings.interval,
            settings.mtu_probe,
        )?,
        apiserver: probes::apiserver::ApiserverProbe::new(
            settings.apiserver,
            ca,
            credentials,
            settings.tcp_timeout,
        )?,
        transport: settings.transport.map(|ports| {
            let prober = probes::udp::TransportProber::new(
                settings.icmp_timeout,
                probes::icmp::echo_gap(settings.interval, settings.icmp_count),
            );
            (prober, ports)
        }),
        clusterips: settings.clusterips.clone(),
        tcp_timeout: settings.tcp_timeout,
        dns: probes::dns::DnsProber::new(
            settings.dns_server,
            settings.dns_timeout,
            settings.dns_negative_ttl,
        )
        .map_err(|e| Error::Dns {
            server: settings.dns_server,
            message: e.to_string(),
        })?,
        dns_names: settings.dns_names.clone(),
        srv_name: settings.srv_name.clone(),
        metrics: metrics.clone(),
    };

    // The SRV record lists the pod-network agents; when the peers are not
    // them (host agents, or a custom selector), watch them separately.
    let agent_selector = (settings.peer_selector != netmatrix_api::labels::PEER_SELECTOR)
        .then_some(netmatrix_api::labels::AGENT_SELECTOR);
    let mut pinglist = None;
    let discovery = match (settings.peer_discovery, &settings.aggregator_url) {
        (config::PeerDiscovery::Aggregator, Some(url)) => {
            let source = Arc::new(discovery::pinglist::PinglistSource::new(
                settings.identity.clone(),
                settings.pinglist_file.clone(),
            ));
            let client = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(settings.tcp_timeout)
                .build()
                .map_err(Error::ReportClient)?;
            tokio::spawn(discovery::pinglist::poll(
                source.clone(),
                client,
                url.clone(),
                report::TokenFile::new(Some(settings.token_file.clone())),
                settings.interval,
            ));
            pinglist = Some(source.clone());
            Arc::new(discovery::Discovery::from_pinglist(
                settings.identity.clone(),
                source,
            ))
        }
        _ => Arc::new(discovery::Discovery::start(
            client,
            &settings.namespace,
            discovery::Selectors {
                peers: &settings.peer_selector,
                aggregators: &settings.aggregator_selector,
                agents: agent_selector,
            },
            settings.identity.clone(),
        )),
    };

    let status = Arc::new(http::StatusBoard::new(
        settings.identity.clone(),
        settings.interval,
    ));
    let state = http::AppState {
        metrics: metrics.clone(),
        status: status.clone(),
    };
    for (addr, app) in [
        (settings.listen, http::router(state.clone())),
        (settings.status_listen, http::status_router(state)),
    ] {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })?;
        tokio::spawn(serve::serve(
            vec![listener],
            app,
            SERVER_LIMITS,
            std::future::pending(),
        ));
    }
    // Peers probe this pod's UDP path on the same port number.
    if settings.identity.network == netmatrix_api::NetworkMode::Pod {
        let socket = netmatrix_runtime::udp_echo::bind(settings.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: settings.listen,
                source,
            })?;
        tokio::spawn(netmatrix_runtime::udp_echo::serve(socket));
    }
    tracing::info!(
        addr = %settings.listen,
        status = %settings.status_listen,
        "serving /metrics and /healthz, and /status on the second address"
    );

    let (reports_tx, reports_rx) = watch::channel(None);
    match &settings.aggregator_url {
        Some(url) => {
            let pods = discovery.clone();
            let mut reporter = report::Reporter::new(
                url,
                report::TokenFile::new(Some(settings.token_file.clone())),
                settings.aggregator_port,
                Arc::new(move || pods.aggregator_ips()),
                settings.interval,
                metrics.clone(),
                status.reporting.clone(),
            )
            .map_err(Error::ReportClient)?
            .with_undelivered(status.undelivered.clone())
            .with_encoding(settings.report_encoding);
            if let Some(source) = pinglist {
                reporter = reporter.with_pinglist(source);
            }
            if settings.identity.network == netmatrix_api::NetworkMode::Host {
                let local = discovery.clone();
                reporter = reporter.with_relay(report::Relay::new(
                    Arc::new(move || local.local_agent_ip()),
                    settings.pod_agent_port,
                ));
            }
            tokio::spawn(reporter.run(reports_rx));
        }
        None => tracing::info!("no --aggregator-url: probing and serving metrics only"),
    }

    if !discovery.wait_synced(STARTUP_SYNC_GRACE).await {
        tracing::warn!(
            grace = ?STARTUP_SYNC_GRACE,
            srv = settings.srv_name.as_deref().unwrap_or("(disabled)"),
            "no peer list yet (API watch or pinglist); peers come from the SRV record until it arrives"
        );
    }
    let rounds = round::RoundLoop {
        prober,
        discovery,
        status,
        reports: reports_tx,
        sampling: settings.sampling,
    };
    tokio::select! {
        () = rounds.run() => {}
        () = netmatrix_runtime::shutdown_signal() => {}
    }
    Ok(())
}
