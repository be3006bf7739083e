//! [`Lab`]: brings a whole virtual cluster up (network, API server emulator,
//! DNS, forwarder, aggregator, agents), reads the aggregator, injects faults,
//! and removes everything when dropped, also on panic.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use netmatrix_api::{FINDINGS_PATH, Findings, MATRIX_PATH, Matrix, labels};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::emulator::apiserver::clients::{ClientId, ClientStats, Clients};
use crate::emulator::apiserver::tokens::{KeyError, TokenAuthority};
use crate::emulator::cluster::ClusterState;
use crate::emulator::dns::{self, DnsControl};
use crate::emulator::pki::{LabPki, PkiError};
use crate::net::faults::{self, Fault, FaultError, FaultKind, Hooks};
use crate::net::netns::{self, NetnsError};
use crate::net::network;
use crate::net::topology::{
    AGENT_SVC, AGGREGATOR_PORT, AGGREGATOR_SVC, APISERVER_PORT, CLUSTER_DOMAIN, COMPANION_PORT,
    COMPANION_SVC, DNS_SVC, HOST_AGENT_PORT, KUBERNETES_SVC, NAMESPACE, NodePlan, Overlay,
    PlanError, PodPlan, RemoveError, Topology, random_prefix,
};
use crate::net::{policy, services};
use crate::process::{Binaries, LAB_PATH, ProcessError, ProcessSpec, Processes};
use crate::state::{StateDir, StateError};
use crate::view;

mod churn;
mod churn_run;
mod kubelet;
pub mod objects;
mod prometheus;

pub use prometheus::{Alert, LabPrometheus, Target, prometheus_binary};

pub use churn_run::{ChurnReport, FalseAlarm, StepReport};
use kubelet::TokenMounts;

/// The aggregator's Pod (on the control-plane node) and ServiceAccount
/// (the chart's names for a release called `netmatrix`).
pub const AGGREGATOR_POD: &str = "netmatrix-aggregator";
pub const AGGREGATOR_SERVICE_ACCOUNT: &str = "netmatrix-aggregator";

/// The aggregator's `--node-grace` in the lab: its nodes are brand new, so
/// their agents are expected right away, not after the default 2 minutes.
pub const NODE_GRACE: Duration = Duration::from_secs(15);

/// The agents' token lifetime in the lab (the shortest a real cluster allows).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(600);

/// What to build.
#[derive(Debug, Clone)]
pub struct LabConfig {
    pub nodes: usize,
    pub overlay: Overlay,
    /// Probe interval of the agents and evaluation interval of the aggregator.
    pub interval: Duration,
    /// Port of the forwarder on 127.0.0.1; `0` picks a free one (tests).
    pub forward_port: u16,
    /// Port on 127.0.0.1 forwarded to the API emulator (the `kubeconfig`
    /// of the state directory points there); `0` picks a free one.
    pub api_port: u16,
    /// Namespace prefix; `None`: a random one.
    pub prefix: Option<String>,
    /// Start the aggregator and the agents (off: network and servers only,
    /// in either runtime).
    pub components: bool,
    /// Also run a host-network agent in every node namespace (and register
    /// its pod), as the chart's host-agent DaemonSet does.
    pub host_agents: bool,
    /// The aggregator's `--node-conditions`: findings shown on the Nodes.
    pub node_conditions: bool,
    /// Where the netmatrix binaries are (default: see [`Binaries::locate`]).
    pub bin_dir: Option<PathBuf>,
    /// Lifetime of the agents' ServiceAccount tokens; the lab rotates them
    /// at 80 % of it, as the kubelet does (the chart asks for an hour; the
    /// real minimum is 10 minutes, the emulator allows less for tests).
    pub token_ttl: Duration,
    /// Agents take their peers from the aggregator's pinglists, as the chart
    /// runs them (the default). `false`: the agents watch the API themselves
    /// (`--peer-discovery api`, the aggregator `--no-pinglists`).
    pub pinglists: bool,
    /// How netmatrix runs: processes the lab starts itself, or the real
    /// chart installed with `helm install` and run from the image.
    pub runtime: Runtime,
}

/// How the lab runs netmatrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// The workspace's binaries as processes in the pods' namespaces, with
    /// arguments the lab writes (fast; every fault of the catalog).
    Process,
    /// `helm install` of the chart into the API emulator; the lab's
    /// kubelet, controllers and kube-proxy run what it stores, from the
    /// image, under podman + runc ([`crate::workloads`]).
    Container(ContainerConfig),
}

/// The container runtime mode's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The image, in podman's local storage (`docker/build-image`).
    pub image: String,
    /// The chart's directory.
    pub chart: PathBuf,
    /// Extra `--set` values for `helm install`.
    pub set: Vec<String>,
}

impl ContainerConfig {
    /// The image `docker/build-image` builds, and this repository's chart.
    pub fn from_repository() -> Self {
        ContainerConfig {
            image: DEFAULT_IMAGE.to_owned(),
            chart: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/netmatrix")),
            set: Vec::new(),
        }
    }
}

/// What `docker/build-image` tags by default.
pub const DEFAULT_IMAGE: &str = "localhost/netmatrix:dev";
/// The release `helm install` creates in the container runtime mode.
pub const RELEASE: &str = "netmatrix";

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            nodes: 3,
            overlay: Overlay::Vxlan,
            interval: Duration::from_secs(1),
            forward_port: 0,
            api_port: 0,
            prefix: None,
            components: true,
            host_agents: true,
            node_conditions: false,
            bin_dir: None,
            token_ttl: DEFAULT_TOKEN_TTL,
            pinglists: true,
            runtime: Runtime::Process,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab creates network namespaces: run as root (sudo)")]
    NotRoot,
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("building the lab's network: {0}")]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tokens(#[from] KeyError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Fault(#[from] FaultError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("no node {0} in this lab")]
    UnknownNode(String),
    #[error(transparent)]
    Remove(#[from] RemoveError),
    #[error("{0}")]
    Busy(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("timed out after {waited:?} waiting for {what}; last seen:\n{last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// The aggregator's view at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub matrix: Matrix,
    pub findings: Findings,
}

/// Tasks the lab runs on the tokio runtime.
#[derive(Default)]
struct Servers {
    apiserver: Option<JoinHandle<()>>,
    dns: Option<JoinHandle<()>>,
    forwarder: Option<JoinHandle<()>>,
    api_forwarder: Option<JoinHandle<()>>,
    token_rotation: Option<JoinHandle<()>>,
}

impl Servers {
    fn abort_all(&mut self) {
        for task in [
            &mut self.apiserver,
            &mut self.dns,
            &mut self.forwarder,
            &mut self.api_forwarder,
            &mut self.token_rotation,
        ] {
            if let Some(t) = task.take() {
                t.abort();
            }
        }
    }
}

/// A running lab. Dropping it removes every namespace and process it made.
pub struct Lab {
    prefix: String,
    /// The plan; changes with churn (a re-created pod), so behind a lock,
    /// read through [`Lab::topology`] (a copy: nothing holds the lock while
    /// running commands).
    topo: RwLock<Topology>,
    /// Pods re-created so far (names and addresses of new pods).
    recreated: AtomicU32,
    /// One churn operation at a time.
    churn: Mutex<()>,
    config: LabConfig,
    state: StateDir,
    cluster: ClusterState,
    pki: LabPki,
    /// The API emulator's clients: a token per process, and what each was
    /// sent.
    clients: Arc<Clients>,
    /// Mounts the agents' tokens, signed by the API emulator's key.
    kubelet: Arc<TokenMounts>,
    dns: DnsControl,
    runtime: Handle,
    binaries: Option<Binaries>,
    servers: Mutex<Servers>,
    procs: Processes,
    faults: Mutex<Vec<Fault>>,
    forward_addr: SocketAddr,
    /// `127.0.0.1:PORT` forwarded to the API emulator.
    api_forward_addr: SocketAddr,
    http: reqwest::Client,
    /// The container runtime mode's kubelet, controllers and kube-proxy.
    workloads: Mutex<Option<crate::workloads::Workloads>>,
    /// `--overlay bgp`: nodes whose BGP address is not their underlay
    /// address (the `bgp-wrong-address` fault).
    bgp_addresses: Mutex<BTreeMap<String, Ipv4Addr>>,
    up_took: Duration,
    torn_down: AtomicBool,
}

/// `GET url` as JSON; any failure (connection, HTTP status, body) is a
/// [`LabError::Http`] naming the URL.
async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: String,
) -> Result<T, LabError> {
    let err = |message: String| LabError::Http {
        url: url.clone(),
        message,
    };
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(err(format!("{status}: {body}")));
    }
    resp.json().await.map_err(|e| err(e.to_string()))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Lab {
    /// Builds and starts the lab. Must run inside a tokio runtime.
    pub async fn up(config: LabConfig) -> Result<Lab, LabError> {
        let started = Instant::now();
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        let prefix = config.prefix.clone().unwrap_or_else(random_prefix);
        let mut topo = Topology::plan(&prefix, config.nodes, config.overlay)?;
        let containers = match &config.runtime {
            Runtime::Container(c) if config.components => Some(c.clone()),
            _ => None,
        };
        topo.netmatrix_pods = containers.is_none();
        // Fail before touching the system when something is missing.
        if let Some(c) = &containers {
            check_container_tools(c)?;
        }
        let binaries = if config.components && containers.is_none() {
            Some(Binaries::locate(config.bin_dir.as_deref())?)
        } else {
            None
        };
        let pki = LabPki::generate(&cert_ips(&topo), &cert_names())?;
        let cluster = ClusterState::new();
        if containers.is_some() {
            objects::register_platform(&topo, &cluster);
        } else {
            objects::register_cluster(&topo, &cluster, config.host_agents);
        }
        let (forwarder, forward_addr) =
            bind_forwarder(config.forward_port, "the forwarder", "--port").await?;
        let (api_forwarder, api_forward_addr) =
            bind_forwarder(config.api_port, "the API forwarder", "--api-port").await?;
        if netns::exists(&topo.switch_netns) {
            return Err(LabError::Io {
                what: format!("prefix {prefix} is in use"),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }

        // A killed lab of the same prefix may have left its address stores.
        crate::net::cni::forget(&prefix);
        // From here on, dropping `lab` (on any error below) cleans up.
        let state = StateDir::create(&prefix)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| LabError::Http {
                url: String::new(),
                message: e.to_string(),
            })?;
        let kubelet = Arc::new(TokenMounts::new(
            cluster.clone(),
            Arc::new(TokenAuthority::new()?),
            state.clone(),
            config.token_ttl,
        ));
        let mut lab = Lab {
            procs: Processes::new(state.clone()),
            prefix: prefix.clone(),
            topo: RwLock::new(topo),
            recreated: AtomicU32::new(0),
            churn: Mutex::new(()),
            config,
            state,
            cluster,
            clients: Arc::new(Clients::new(&pki.token)),
            pki,
            kubelet,
            dns: DnsControl::default(),
            runtime: Handle::current(),
            binaries,
            servers: Mutex::new(Servers::default()),
            faults: Mutex::new(Vec::new()),
            forward_addr,
            api_forward_addr,
            http,
            workloads: Mutex::new(None),
            bgp_addresses: Mutex::new(BTreeMap::new()),
            up_took: Duration::ZERO,
            torn_down: AtomicBool::new(false),
        };
        let topo = lab.topology();
        tracing::info!(prefix = %topo.prefix, nodes = topo.nodes.len(), overlay = %topo.overlay, "building the lab");
        lab.write_credentials()?;
        let built = topo.clone();
        tokio::task::spawn_blocking(move || -> Result<(), NetnsError> {
            network::build(&built)?;
            for node in &built.nodes {
                services::install(&built, node)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| LabError::Io {
            what: "network build task".into(),
            source: std::io::Error::other(e),
        })??;
        if topo.overlay == crate::net::topology::Overlay::Bgp {
            lab.start_bgp().await?;
        }
        tracing::info!(took = ?started.elapsed(), "network ready");

        lab.start_apiserver()?;
        // The container mode's kubelet stand-in rotates its pods' tokens.
        if topo.netmatrix_pods {
            lab.start_token_rotation();
        }
        lab.start_dns()?;
        let cp = topo.control_plane();
        lab.servers().api_forwarder = Some(tokio::spawn(crate::net::forward::serve(
            api_forwarder,
            cp.netns.clone(),
            SocketAddr::from((cp.ip, APISERVER_PORT)),
        )));
        let aggregator = match &containers {
            Some(c) => lab.install_chart(c).await?,
            None => SocketAddr::from((cp.ip, AGGREGATOR_PORT)),
        };
        let forward_task = tokio::spawn(crate::net::forward::serve(
            forwarder,
            cp.netns.clone(),
            aggregator,
        ));
        lab.servers().forwarder = Some(forward_task);
        if lab.binaries.is_some() {
            lab.start_pod(AGGREGATOR_POD, lab.aggregator_spec()?)?;
            for node in &topo.nodes {
                lab.start_pod(
                    &node.companion.name,
                    lab.companion_spec(node, &node.companion)?,
                )?;
                lab.start_agent_pod(node, AgentNetwork::Pod)?;
                if lab.config.host_agents {
                    lab.start_agent_pod(node, AgentNetwork::Host)?;
                }
            }
        }
        lab.up_took = started.elapsed();
        tracing::info!(took = ?lab.up_took, "lab up");
        Ok(lab)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A copy of the current plan.
    pub fn topology(&self) -> Topology {
        self.topo.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    pub fn state_dir(&self) -> &StateDir {
        &self.state
    }

    /// The lab's cluster state (what the API server emulator and DNS serve).
    pub fn cluster(&self) -> &ClusterState {
        &self.cluster
    }

    pub fn pki(&self) -> &LabPki {
        &self.pki
    }

    /// How long [`Lab::up`] took.
    pub fn up_took(&self) -> Duration {
        self.up_took
    }

    /// The forwarder's address on 127.0.0.1.
    pub fn forward_addr(&self) -> SocketAddr {
        self.forward_addr
    }

    /// The kubeconfig for kubectl and helm in the root namespace (the API
    /// emulator through its forwarder, as the lab's admin).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.state.file("kubeconfig")
    }

    /// `http://127.0.0.1:PORT`: the aggregator, through the forwarder.
    pub fn aggregator_url(&self) -> String {
        format!("http://{}", self.forward_addr)
    }

    /// `GET /api/v1/matrix` through the forwarder.
    pub async fn matrix(&self) -> Result<Matrix, LabError> {
        self.get_json(MATRIX_PATH).await
    }

    /// `GET /api/v1/findings` through the forwarder.
    pub async fn findings(&self) -> Result<Findings, LabError> {
        self.get_json(FINDINGS_PATH).await
    }

    /// Both, one after the other.
    pub async fn snapshot(&self) -> Result<Snapshot, LabError> {
        Ok(Snapshot {
            matrix: self.matrix().await?,
            findings: self.findings().await?,
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, LabError> {
        get_json(&self.http, format!("{}{path}", self.aggregator_url())).await
    }

    /// Polls the aggregator about twice per interval until `predicate` holds
    /// or `timeout` passes; the error shows the last matrix and findings (or
    /// the last error) and the processes that exited.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut predicate: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Snapshot, LabError> {
        let start = Instant::now();
        let poll = (self.config.interval / 2).max(Duration::from_millis(200));
        let mut last: String;
        loop {
            match self.snapshot().await {
                Ok(snap) => {
                    if predicate(&snap) {
                        tracing::info!(what, took = ?start.elapsed(), "condition met");
                        return Ok(snap);
                    }
                    last = view::render(&snap.matrix, &snap.findings);
                }
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() >= timeout {
                let exited = self.procs.exited();
                if !exited.is_empty() {
                    last.push_str(&format!("\nexited processes: {exited:?}"));
                }
                last.push_str(&format!("\nlogs: {}", self.state.path().display()));
                return Err(LabError::Timeout {
                    what: what.to_string(),
                    waited: start.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Polls the aggregator for `duration` and fails at the first snapshot
    /// where `predicate` does not hold (a state that must be stable, not
    /// just reached once: findings are raised after a few rounds).
    pub async fn hold_for(
        &self,
        what: &str,
        duration: Duration,
        mut predicate: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Snapshot, LabError> {
        let start = Instant::now();
        let poll = (self.config.interval / 2).max(Duration::from_millis(200));
        loop {
            let snap = self.snapshot().await?;
            if !predicate(&snap) {
                return Err(LabError::Timeout {
                    what: format!("{what} to hold for {duration:?} (it broke)"),
                    waited: start.elapsed(),
                    last: view::render(&snap.matrix, &snap.findings),
                });
            }
            if start.elapsed() >= duration {
                return Ok(snap);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Applies `fault` and records it for [`Lab::heal`]. Blocks for
    /// milliseconds (`kill-agent`: up to the agent's 2 s stop grace).
    pub fn fault(&self, fault: Fault) -> Result<(), LabError> {
        let mut applied = lock(&self.faults);
        if applied.contains(&fault) {
            return Err(FaultError::AlreadyApplied(fault).into());
        }
        let topology = self.topology();
        // The bridge plugin sets `cni0` up again at every pod ADD, and the
        // container runtime's kubelet makes sandboxes at any time.
        let undone_by_cni = fault.kind == FaultKind::BridgeDown;
        if !topology.netmatrix_pods && (fault.kind.needs_planned_pods() || undone_by_cni) {
            return Err(LabError::Busy(format!(
                "fault {} acts on the process mode's own pods: it is not available with --runtime container (the node, overlay, path, loss, MTU, DNS-server and API faults are)",
                fault.kind
            )));
        }
        tracing::info!(%fault, "applying fault");
        faults::apply(&topology, &fault, self)?;
        applied.push(fault);
        Ok(())
    }

    /// Faults currently applied, oldest first.
    pub fn applied_faults(&self) -> Vec<Fault> {
        lock(&self.faults).clone()
    }

    /// The applied faults for a human: `none`, or `overlay-down node-2, dns-stop`.
    pub fn faults_summary(&self) -> String {
        let faults = lock(&self.faults);
        if faults.is_empty() {
            return "none".to_owned();
        }
        let names: Vec<String> = faults.iter().map(ToString::to_string).collect();
        names.join(", ")
    }

    /// Freezes the aggregator process (SIGSTOP) or lets it resume: the
    /// aggregator's own stall, which must not read as every agent silent.
    pub fn pause_aggregator(&self, paused: bool) -> Result<(), LabError> {
        Ok(self.procs.pause(AGGREGATOR_PROCESS, paused)?)
    }

    /// Undoes every applied fault, newest first. Returns what was healed.
    /// Applies a NetworkPolicy as `kubectl apply` would (the emulator serves
    /// it) and enforces it in the pods' namespaces as a CNI would.
    pub fn apply_network_policy(
        &self,
        policy: k8s_openapi::api::networking::v1::NetworkPolicy,
    ) -> Result<(), LabError> {
        let mut policies = self.cluster.network_policies();
        policies.retain(|p| p.metadata.name != policy.metadata.name);
        policies.push(policy.clone());
        policy::enforce(&self.topology(), &policies, &self.cluster.pods())?;
        self.cluster.apply_network_policy(policy);
        Ok(())
    }

    /// Deletes a NetworkPolicy and lifts what it enforced.
    pub fn delete_network_policy(&self, name: &str) -> Result<(), LabError> {
        self.cluster.delete_network_policy(NAMESPACE, name);
        policy::enforce(
            &self.topology(),
            &self.cluster.network_policies(),
            &self.cluster.pods(),
        )?;
        Ok(())
    }

    pub fn heal(&self) -> Result<Vec<Fault>, LabError> {
        let mut applied = lock(&self.faults);
        let mut healed = Vec::new();
        while let Some(fault) = applied.pop() {
            tracing::info!(%fault, "healing");
            if let Err(e) = faults::heal(&self.topology(), &fault, self) {
                applied.push(fault);
                return Err(e.into());
            }
            healed.push(fault);
        }
        Ok(healed)
    }

    /// Processes that exited on their own (name, status).
    pub fn exited_processes(&self) -> Vec<(String, String)> {
        self.procs.exited()
    }

    /// Removes everything (as `Drop` does), off the async threads.
    pub async fn down(self) {
        let _ = tokio::task::spawn_blocking(move || self.shutdown()).await;
    }

    /// Removes everything: idempotent, blocking (stops processes, deletes
    /// namespaces, removes the state directory).
    pub fn shutdown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let start = Instant::now();
        if let Some(mut workloads) = lock(&self.workloads).take() {
            workloads.stop();
        }
        self.servers().abort_all();
        self.procs.stop_everything();
        let topology = self.topology();
        for e in network::destroy(&topology) {
            tracing::warn!(error = %e, "cleanup");
        }
        if !topology.netmatrix_pods {
            // Whatever the container runtime's kubelet could not remove
            // (it stopped early): its containers and pod sandboxes.
            crate::workloads::remove_containers(std::path::Path::new("podman"), &self.prefix);
            let sandboxes = netns::list()
                .into_iter()
                .filter(|ns| crate::net::topology::prefix_of(ns) == Some(self.prefix.as_str()));
            for ns in sandboxes {
                if let Err(e) = netns::delete(&ns) {
                    tracing::warn!(error = %e, "cleanup");
                }
            }
        }
        self.state.remove();
        tracing::info!(prefix = %self.prefix, took = ?start.elapsed(), "lab removed");
    }

    /// The container runtime mode: starts the kubelet, controllers and
    /// kube-proxy stand-ins, installs the chart with the real `helm
    /// install` through the API forwarder, and returns the aggregator
    /// Service's address (what the forwarder reaches from node 1).
    async fn install_chart(&self, c: &ContainerConfig) -> Result<SocketAddr, LabError> {
        let topo = self.topology();
        let workloads = crate::workloads::Workloads::start(crate::workloads::NodeAgent {
            lab: self.prefix.clone(),
            topology: topo.clone(),
            cluster: self.cluster.clone(),
            state: self.state.clone(),
            authority: Arc::clone(self.kubelet.authority()),
            ca_pem: self.pki.ca_cert_pem.clone(),
            podman: PathBuf::from("podman"),
        })
        .map_err(io("starting the lab's kubelet"))?;
        *lock(&self.workloads) = Some(workloads);
        let (repository, tag) = split_image(&c.image);
        let interval = humantime::format_duration(self.config.interval).to_string();
        let grace = humantime::format_duration(NODE_GRACE).to_string();
        let mut args: Vec<String> = [
            "install",
            RELEASE,
            &c.chart.display().to_string(),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--set",
            &format!("image.repository={repository}"),
            "--set",
            &format!("image.tag={tag}"),
            "--set",
            "image.pullPolicy=Never",
            "--set",
            &format!("interval={interval}"),
            "--set",
            &format!("aggregator.nodeGrace={grace}"),
            "--set",
            &format!("hostAgent.enabled={}", self.config.host_agents),
            "--set",
            &format!("aggregator.nodeConditions={}", self.config.node_conditions),
        ]
        .map(String::from)
        .to_vec();
        for value in &c.set {
            args.extend(["--set".to_owned(), value.clone()]);
        }
        self.helm(&args).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let service = format!("{RELEASE}-aggregator");
            let found = self.cluster.services().into_iter().find(|s| {
                s.metadata.namespace.as_deref() == Some(NAMESPACE)
                    && s.metadata.name.as_deref() == Some(service.as_str())
            });
            let addr = found.and_then(|s| {
                let spec = s.spec?;
                let ip: Ipv4Addr = spec.cluster_ip?.parse().ok()?;
                let port = u16::try_from(spec.ports?.first()?.port).ok()?;
                Some(SocketAddr::from((ip, port)))
            });
            match addr {
                Some(addr) => return Ok(addr),
                None if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                None => {
                    return Err(LabError::Busy(format!(
                        "helm install stored no Service {service} in {NAMESPACE}"
                    )));
                }
            }
        }
    }

    /// Runs `helm ARGS` against the lab (its admin kubeconfig, caches in
    /// the state directory); an error carries helm's output.
    pub async fn helm(&self, args: &[String]) -> Result<String, LabError> {
        let cache = self.state.file("client-cache");
        let mut command = tokio::process::Command::new("helm");
        command
            .args(args)
            .env("KUBECONFIG", self.kubeconfig_path())
            .env("HELM_CACHE_HOME", &cache)
            .env("HELM_CONFIG_HOME", &cache)
            .env("HELM_DATA_HOME", &cache)
            .kill_on_drop(true);
        let output = command
            .output()
            .await
            .map_err(io("running helm (install it with scripts/setup-test)"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            return Err(LabError::Busy(format!(
                "helm {} failed ({}):\n{text}",
                args.join(" "),
                output.status
            )));
        }
        Ok(text)
    }

    /// Writes `node`'s BIRD configuration for the current mesh, checked by
    /// BIRD's own parser; returns its control socket.
    fn write_bird_config(&self, node: &NodePlan) -> Result<PathBuf, LabError> {
        let (conf, ctl) = crate::net::bgp::files(self.state.path(), node);
        let wrong = lock(&self.bgp_addresses).clone();
        let address = |n: &NodePlan| wrong.get(&n.name).copied().unwrap_or(n.ip);
        std::fs::write(
            &conf,
            crate::net::bgp::config(&self.topology(), node, &address),
        )
        .map_err(io(format!("writing {}", conf.display())))?;
        crate::net::bgp::check_config(&conf)?;
        Ok(ctl)
    }

    /// Starts `node`'s BIRD (`--overlay bgp`), after any previous one has
    /// exited: two would fight over the control socket and port 179.
    fn start_bird(&self, node: &NodePlan) -> Result<(), LabError> {
        match self.procs.stop(&crate::net::bgp::process(node)) {
            Ok(_) | Err(ProcessError::Unknown(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.write_bird_config(node)?;
        self.procs
            .start(crate::net::bgp::spec(self.state.path(), node))?;
        Ok(())
    }

    /// The mesh changed (a node joined or left, `self.topo` says so): every
    /// node's configuration rewritten, the running BIRDs reconfigured
    /// (`birdc configure`, as calico-node regenerates its config), the
    /// joining node's started; returns when every kernel has the routes
    /// (with `converge`).
    pub(super) fn reconfigure_bgp(
        &self,
        joined: Option<&NodePlan>,
        converge: bool,
    ) -> Result<(), LabError> {
        let topo = self.topology();
        for node in &topo.nodes {
            if joined.is_some_and(|j| j.index == node.index) {
                self.start_bird(node)?;
                continue;
            }
            let ctl = self.write_bird_config(node)?;
            let ctl = ctl.display().to_string();
            // birdc exits 0 whatever BIRD answers: read the answer.
            let answer = netns::run(None, "birdc", &["-s", ctl.as_str(), "configure"])?;
            if !answer.contains("Reconfigured") && !answer.contains("Reconfiguration in progress") {
                return Err(LabError::Io {
                    what: format!("birdc configure on {}", node.name),
                    source: std::io::Error::other(answer.trim().to_owned()),
                });
            }
        }
        if converge {
            crate::net::bgp::wait_converged(&topo, crate::net::bgp::CONVERGENCE)?;
        }
        Ok(())
    }

    /// Every node's BIRD, then the mesh's routes in every kernel.
    async fn start_bgp(&self) -> Result<(), LabError> {
        let topo = self.topology();
        for node in &topo.nodes {
            self.start_bird(node)?;
        }
        tokio::task::spawn_blocking(move || {
            crate::net::bgp::wait_converged(&topo, crate::net::bgp::CONVERGENCE)
        })
        .await
        .map_err(|e| LabError::Io {
            what: "BGP convergence task".into(),
            source: std::io::Error::other(e),
        })??;
        Ok(())
    }

    fn servers(&self) -> std::sync::MutexGuard<'_, Servers> {
        lock(&self.servers)
    }

    fn write_credentials(&self) -> Result<(), LabError> {
        let topo = self.topology();
        self.state.write(
            "kubeconfig-pods",
            &self.pki.kubeconfig(&topo.apiserver_service_url()),
        )?;
        // For people and tools in the root namespace (kubectl, helm):
        // through the API forwarder, as the lab's admin.
        self.state.write(
            "kubeconfig",
            &self
                .pki
                .kubeconfig(&format!("https://{}", self.api_forward_addr)),
        )?;
        self.state.write("ca.crt", &self.pki.ca_cert_pem)?;
        self.state.write(
            "lab.json",
            &serde_json::json!({
                "prefix": topo.prefix,
                "nodes": topo.nodes.len(),
                "overlay": topo.overlay.to_string(),
                "aggregator": self.aggregator_url(),
            })
            .to_string(),
        )?;
        Ok(())
    }

    /// The API server emulator on 198.18.0.1:6443 (host network of node 1).
    fn start_apiserver(&self) -> Result<(), LabError> {
        let topo = self.topology();
        let cp = topo.control_plane();
        let addr = SocketAddr::from((cp.ip, APISERVER_PORT));
        let listener = self.bind_tcp(&cp.netns, addr)?;
        let (state, tls, clients, authority) = (
            self.cluster.clone(),
            self.pki.server_config()?,
            Arc::clone(&self.clients),
            Arc::clone(self.kubelet.authority()),
        );
        let task = self.runtime.spawn(async move {
            if let Err(error) =
                crate::emulator::apiserver::serve(listener, state, tls, clients, authority).await
            {
                tracing::error!(%error, "API server emulator stopped");
            }
        });
        self.servers().apiserver = Some(task);
        Ok(())
    }

    /// What the API emulator sent each client so far, by client
    /// (`namespace/serviceaccount/pod`, or `lab` for the admin token). The
    /// emulator's own counters: see [`crate::emulator::apiserver::clients`].
    pub fn api_clients(&self) -> BTreeMap<String, ClientStats> {
        self.clients.snapshot()
    }

    /// Writes `kubeconfig-<process>` with a token of its own for `client`
    /// (accepted by the API emulator from now on) and `server_url`; returns
    /// the file's name in the state directory.
    fn process_kubeconfig(
        &self,
        process: &str,
        client: &ClientId,
        server_url: &str,
    ) -> Result<String, LabError> {
        let token = self.pki.client_token(client.as_str());
        self.clients.register(&token, client.clone());
        let name = format!("kubeconfig-{process}");
        self.state
            .write(&name, &self.pki.kubeconfig_with(server_url, &token))?;
        Ok(name)
    }

    /// Writes `pod`'s projected ServiceAccount token where its agent reads
    /// it, as the kubelet does when the pod starts. Returns the file.
    pub fn mint_token(&self, pod: &str) -> Result<PathBuf, LabError> {
        self.kubelet
            .mount_token(pod)
            .map_err(io(format!("mounting the token of pod {pod}")))
    }

    /// The token an agent of `node` sends right now.
    pub fn agent_token(&self, node: &str, network: AgentNetwork) -> Result<String, LabError> {
        let plan = self
            .topology()
            .node(node)
            .cloned()
            .ok_or_else(|| LabError::UnknownNode(node.to_owned()))?;
        let path = self.kubelet.token_path(&agent_pod_name(&plan, network));
        std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))
    }

    /// The last round an agent completed, from its own `/status` (read in
    /// its namespace, on its loopback, as `kubectl port-forward` would):
    /// what it probes whether or not the aggregator hears it. `None` before
    /// its first round.
    pub fn agent_last_round(
        &self,
        node: &str,
        network: AgentNetwork,
    ) -> Result<Option<netmatrix_api::Report>, LabError> {
        let plan = self.node_plan(node)?;
        let netns = match network {
            AgentNetwork::Pod => plan.agent.netns.clone(),
            AgentNetwork::Host => plan.netns.clone(),
        };
        let what = format!("GET /status of {}", agent_process(&plan, network));
        let body = netns::http_get(
            &netns,
            agent_status_addr(network),
            "/status",
            Duration::from_secs(2),
        )?;
        #[derive(serde::Deserialize)]
        struct Status {
            last_round: Option<netmatrix_api::Report>,
        }
        let status: Status = serde_json::from_str(&body).map_err(|e| LabError::Http {
            url: what,
            message: e.to_string(),
        })?;
        Ok(status.last_round)
    }

    /// TokenReviews the API emulator has answered so far.
    pub fn token_reviews(&self) -> u64 {
        self.kubelet.authority().reviews()
    }

    /// Re-mints every agent's token at 80 % of its life, as the kubelet
    /// rotates projected tokens.
    fn start_token_rotation(&self) {
        let kubelet = Arc::clone(&self.kubelet);
        let task = self
            .runtime
            .spawn(async move { kubelet.rotate_forever().await });
        self.servers().token_rotation = Some(task);
    }

    /// The DNS server in the DNS pod, on :53 UDP and TCP. Retries binding for
    /// a while: after `dns-stop` the old sockets close asynchronously.
    fn start_dns(&self) -> Result<(), LabError> {
        let ns = self.topology().dns.netns;
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 53));
        let deadline = Instant::now() + Duration::from_secs(3);
        let (udp, tcp) = loop {
            let bound = netns::in_netns(&ns, move || {
                let udp = std::net::UdpSocket::bind(addr)?;
                udp.set_nonblocking(true)?;
                let tcp = std::net::TcpListener::bind(addr)?;
                tcp.set_nonblocking(true)?;
                Ok((udp, tcp))
            });
            match bound {
                Ok(pair) => break pair,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "DNS sockets not free yet");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let _guard = self.runtime.enter();
        let udp = tokio::net::UdpSocket::from_std(udp).map_err(io("DNS UDP socket"))?;
        let tcp = tokio::net::TcpListener::from_std(tcp).map_err(io("DNS TCP socket"))?;
        let (state, control) = (self.cluster.clone(), self.dns.clone());
        let task = self.runtime.spawn(async move {
            if let Err(error) = dns::serve(udp, tcp, state, CLUSTER_DOMAIN, control).await {
                tracing::error!(%error, "DNS server stopped");
            }
        });
        self.servers().dns = Some(task);
        Ok(())
    }

    fn bind_tcp(&self, ns: &str, addr: SocketAddr) -> Result<tokio::net::TcpListener, LabError> {
        let listener = netns::in_netns(ns, move || {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let _guard = self.runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(io(format!("listener on {addr}")))
    }

    fn binaries(&self) -> Result<&Binaries, LabError> {
        self.binaries.as_ref().ok_or_else(|| {
            LabError::Process(ProcessError::Unknown(
                "netmatrix binaries (the lab runs without components)".into(),
            ))
        })
    }

    /// Environment of a lab process: like a pod's, nothing inherited from
    /// the user's shell (a proxy variable would send the agents' reports
    /// astray).
    fn base_env(&self, kubeconfig: &str) -> Vec<(String, String)> {
        let log = std::env::var("NETMATRIX_LAB_LOG").unwrap_or_else(|_| "info".into());
        vec![
            ("PATH".into(), LAB_PATH.into()),
            ("RUST_LOG".into(), log),
            (
                "KUBECONFIG".into(),
                self.state.file(kubeconfig).display().to_string(),
            ),
        ]
    }

    fn aggregator_spec(&self) -> Result<ProcessSpec, LabError> {
        let topo = self.topology();
        let cp = topo.control_plane();
        let interval = humantime::format_duration(self.config.interval).to_string();
        let kubeconfig = self.process_kubeconfig(
            AGGREGATOR_PROCESS,
            &ClientId::pod(NAMESPACE, AGGREGATOR_SERVICE_ACCOUNT, AGGREGATOR_POD),
            &topo.apiserver_node_url(),
        )?;
        Ok(ProcessSpec {
            name: AGGREGATOR_PROCESS.into(),
            netns: cp.netns.clone(),
            program: self.binaries()?.aggregator.clone(),
            args: [
                "--listen",
                &format!("{}:{AGGREGATOR_PORT}", cp.ip),
                "--interval",
                &interval,
                "--namespace",
                NAMESPACE,
                "--node-grace",
                &humantime::format_duration(NODE_GRACE).to_string(),
                // Pod and host-network agents both report (the chart's
                // value; without host agents only pod agents exist anyway).
                "--agent-selector",
                labels::REPORTER_SELECTOR,
            ]
            .map(String::from)
            .into_iter()
            .chain(
                self.config
                    .node_conditions
                    .then(|| "--node-conditions".to_owned()),
            )
            .chain(if self.config.pinglists {
                vec![
                    "--advertise".to_owned(),
                    format!("{}:{AGGREGATOR_PORT}", cp.ip),
                ]
            } else {
                vec!["--no-pinglists".to_owned()]
            })
            .collect(),
            env: self.base_env(&kubeconfig),
        })
    }

    /// `node`'s companion pod `pod`: `netmatrix companion`, answering the
    /// agents' TCP connects and UDP echoes (the kernel answers ICMP).
    fn companion_spec(&self, node: &NodePlan, pod: &PodPlan) -> Result<ProcessSpec, LabError> {
        Ok(ProcessSpec {
            name: companion_process(node),
            netns: pod.netns.clone(),
            program: self.binaries()?.cli.clone(),
            args: vec![
                "companion".into(),
                "--listen".into(),
                format!("0.0.0.0:{COMPANION_PORT}"),
            ],
            env: self.base_env("kubeconfig-pods"),
        })
    }

    /// Starts the process of pod `pod` (in the `netmatrix` namespace): its
    /// log file is what `kubectl logs` shows for the pod.
    fn start_pod(&self, pod: &str, spec: ProcessSpec) -> Result<(), LabError> {
        let log = self.procs.log_path(&spec.name);
        self.procs.start(spec)?;
        self.cluster.set_pod_log(NAMESPACE, pod, log);
        Ok(())
    }

    /// Starts `node`'s agent on `network`, in its pod.
    fn start_agent_pod(&self, node: &NodePlan, network: AgentNetwork) -> Result<(), LabError> {
        self.start_pod(
            &agent_pod_name(node, network),
            self.agent_spec(node, network)?,
        )
    }

    /// The agent of `node`'s pod network (in its agent pod) or host network
    /// (in the node namespace, with the node's address, probing the other
    /// host agents).
    fn agent_spec(&self, node: &NodePlan, network: AgentNetwork) -> Result<ProcessSpec, LabError> {
        let interval = humantime::format_duration(self.config.interval).to_string();
        // Every probe timeout must be shorter than the interval.
        let timeout = humantime::format_duration(
            (self.config.interval / 2).clamp(Duration::from_millis(50), Duration::from_secs(2)),
        )
        .to_string();
        let pod_name = agent_pod_name(node, network);
        let service_account = match network {
            AgentNetwork::Pod => labels::AGENT_SERVICE_ACCOUNT,
            AgentNetwork::Host => labels::HOST_AGENT_SERVICE_ACCOUNT,
        };
        let kubeconfig = self.process_kubeconfig(
            &agent_process(node, network),
            &ClientId::pod(NAMESPACE, service_account, &pod_name),
            &self.topology().apiserver_service_url(),
        )?;
        let mut env = self.base_env(&kubeconfig);
        env.push((
            "KUBERNETES_SERVICE_HOST".into(),
            KUBERNETES_SVC.0.to_string(),
        ));
        env.push((
            "KUBERNETES_SERVICE_PORT".into(),
            KUBERNETES_SVC.1.to_string(),
        ));
        let token_file = self.mint_token(&pod_name)?;
        let (pod_ip, netns, port) = match network {
            AgentNetwork::Pod => (node.agent.ip, node.agent.netns.clone(), AGENT_SVC.1),
            AgentNetwork::Host => (node.ip, node.netns.clone(), HOST_AGENT_PORT),
        };
        let mut args = vec![
            "--node-name".into(),
            node.name.clone(),
            "--pod-name".into(),
            pod_name,
            "--pod-ip".into(),
            pod_ip.to_string(),
            "--namespace".into(),
            NAMESPACE.into(),
            "--aggregator-url".into(),
            format!("http://{}:{}", AGGREGATOR_SVC.0, AGGREGATOR_SVC.1),
            "--interval".into(),
            interval,
            "--dns-server".into(),
            DNS_SVC.0.to_string(),
            "--clusterip".into(),
            format!("aggregator={}:{}", AGGREGATOR_SVC.0, AGGREGATOR_SVC.1),
            "--clusterip".into(),
            format!("kube-dns={}:{}", DNS_SVC.0, DNS_SVC.1),
            "--clusterip".into(),
            format!("companions={}:{}", COMPANION_SVC.0, COMPANION_SVC.1),
            "--listen".into(),
            format!("0.0.0.0:{port}"),
            "--icmp-timeout".into(),
            timeout.clone(),
            "--tcp-timeout".into(),
            timeout.clone(),
            "--dns-timeout".into(),
            timeout,
            "--token-file".into(),
            token_file.display().to_string(),
        ];
        if network == AgentNetwork::Host {
            // Explicit, so that the lab does not depend on the agent's
            // default for host mode: host agents probe each other. Its
            // /status shares the node's loopback, as on a real node.
            args.extend(
                [
                    "--network",
                    "host",
                    "--peer-selector",
                    labels::HOST_AGENT_SELECTOR,
                    "--status-listen",
                    &format!("127.0.0.1:{HOST_AGENT_STATUS_PORT}"),
                ]
                .map(String::from),
            );
        }
        if self.config.pinglists {
            // The peers come from the aggregator (the agent's default with
            // --aggregator-url). The emptyDir of the chart: the state
            // directory, per pod.
            let file = self
                .state_dir()
                .file(&format!("pinglist-{}.json", agent_process(node, network)));
            args.extend(["--pinglist-file".to_owned(), file.display().to_string()]);
        } else {
            args.extend(["--peer-discovery", "api"].map(String::from));
        }
        Ok(ProcessSpec {
            name: agent_process(node, network),
            netns,
            program: self.binaries()?.agent.clone(),
            args,
            env,
        })
    }
}

impl Hooks for Lab {
    fn bird(&self, node: &NodePlan, running: bool) -> Result<(), FaultError> {
        let done = if running {
            self.start_bird(node)
        } else {
            self.procs
                .stop(&crate::net::bgp::process(node))
                .map(|_| ())
                .map_err(LabError::from)
        };
        done.map_err(|e| FaultError::Lab(e.to_string()))
    }

    fn bgp_wrong_address(&self, node: &NodePlan, wrong: bool) -> Result<(), FaultError> {
        {
            let mut addresses = lock(&self.bgp_addresses);
            if wrong {
                addresses.insert(node.name.clone(), node.gateway);
            } else {
                addresses.remove(&node.name);
            }
        }
        // Healed, the mesh converges again; broken, it cannot.
        self.reconfigure_bgp(None, !wrong)
            .map_err(|e| FaultError::Lab(e.to_string()))
    }

    fn stop_dns(&self) -> Result<(), FaultError> {
        match self.servers().dns.take() {
            Some(task) => {
                task.abort();
                Ok(())
            }
            None => Err(FaultError::Lab("the DNS server is not running".into())),
        }
    }

    fn start_dns(&self) -> Result<(), FaultError> {
        Lab::start_dns(self).map_err(|e| FaultError::Lab(e.to_string()))
    }

    fn dns_servfail(&self, on: bool) {
        self.dns.set_servfail(on);
    }

    fn dns_hide(&self, name: &str, hidden: bool) {
        if hidden {
            self.dns.hide(name);
        } else {
            self.dns.unhide(name);
        }
    }

    fn stop_agent(&self, node: &NodePlan) -> Result<(), FaultError> {
        self.procs
            .stop(&agent_process(node, AgentNetwork::Pod))
            .map(|_| ())
            .map_err(|e| FaultError::Lab(e.to_string()))
    }

    fn start_agent(&self, node: &NodePlan) -> Result<(), FaultError> {
        self.start_agent_pod(node, AgentNetwork::Pod)
            .map_err(|e| FaultError::Lab(e.to_string()))
    }

    /// As a DaemonSet re-creates a pod (a rollout, an eviction): the old
    /// pod goes, a new one (new UID) comes, and here it does not start.
    fn agent_pod_trouble(
        &self,
        node: &NodePlan,
        fault: Option<FaultKind>,
    ) -> Result<(), FaultError> {
        let pod = &node.agent.name;
        let Some(kind) = fault else {
            self.cluster.delete_pod(NAMESPACE, pod);
            self.cluster.apply_pod(objects::agent_pod(node));
            self.cluster.set_node_ready(&node.name, true);
            return self.start_agent(node);
        };
        let troubled = match kind {
            FaultKind::AgentSandboxFails => objects::sandbox_fails(node),
            FaultKind::AgentImagePull => objects::image_not_pulled(node),
            FaultKind::CniNotReady => objects::network_not_ready(node),
            other => {
                return Err(FaultError::Lab(format!(
                    "{other} is not an agent pod fault"
                )));
            }
        };
        self.stop_agent(node)?;
        if kind == FaultKind::CniNotReady {
            self.cluster.set_node_not_ready(
                &node.name,
                "KubeletNotReady",
                objects::CNI_NOT_INITIALIZED,
            );
        }
        self.cluster.delete_pod(NAMESPACE, pod);
        self.cluster.apply_pod(troubled.pod);
        for (type_, reason, message) in &troubled.events {
            self.cluster
                .record_pod_event(NAMESPACE, pod, type_, reason, message);
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which network an agent process probes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentNetwork {
    /// In the node's agent pod.
    Pod,
    /// In the node namespace (`hostNetwork: true`).
    Host,
}

/// The Pod name of a node's agent.
pub fn agent_pod_name(node: &NodePlan, network: AgentNetwork) -> String {
    match network {
        AgentNetwork::Pod => node.agent.name.clone(),
        AgentNetwork::Host => node.host_agent.clone(),
    }
}

/// Where an agent serves `/status`: loopback of its pod (pod agents, the
/// agent's default port) or of its node (host agents, the chart's port).
pub fn agent_status_addr(network: AgentNetwork) -> SocketAddr {
    let port = match network {
        AgentNetwork::Pod => AGENT_STATUS_PORT,
        AgentNetwork::Host => HOST_AGENT_STATUS_PORT,
    };
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The aggregator's process name (and log file name).
pub const AGGREGATOR_PROCESS: &str = "aggregator";

/// The pod agent's `/status` port on its loopback (the agent's default).
pub const AGENT_STATUS_PORT: u16 = 9092;
/// The host agent's `/status` port on the node's loopback (the chart's).
pub const HOST_AGENT_STATUS_PORT: u16 = 9093;

/// Process name (and log file name) of a node's agent.
/// The process name of `node`'s companion.
pub fn companion_process(node: &NodePlan) -> String {
    format!("companion-{}", node.name)
}

pub fn agent_process(node: &NodePlan, network: AgentNetwork) -> String {
    match network {
        AgentNetwork::Pod => format!("agent-{}", node.name),
        AgentNetwork::Host => format!("host-agent-{}", node.name),
    }
}

/// The API server certificate's addresses: its ClusterIP (what pods dial),
/// the control-plane node, loopback.
/// A forwarder's listener on `127.0.0.1:port` (`0`: a free port) and the
/// address it got; the error names `flag`, which picks another port.
async fn bind_forwarder(
    port: u16,
    what: &str,
    flag: &str,
) -> Result<(tokio::net::TcpListener, SocketAddr), LabError> {
    let listener = crate::net::forward::bind(port).await.map_err(io(format!(
        "cannot listen on 127.0.0.1:{port} for {what} (in use? pass {flag})"
    )))?;
    let addr = listener
        .local_addr()
        .map_err(io(format!("{what}'s address")))?;
    Ok((listener, addr))
}

/// `localhost/netmatrix:dev` -> (`localhost/netmatrix`, `dev`).
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// The container runtime mode needs podman, runc, helm and the image.
fn check_container_tools(c: &ContainerConfig) -> Result<(), LabError> {
    let missing = |what: &str| {
        LabError::Busy(format!(
            "--runtime container: {what} (scripts/setup-test installs the tools; docker/build-image builds the image)"
        ))
    };
    for (tool, version) in [
        ("podman", "--version"),
        ("runc", "--version"),
        ("helm", "version"),
    ] {
        let found = std::process::Command::new(tool)
            .arg(version)
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(missing(&format!("{tool} not found")));
        }
    }
    let image = std::process::Command::new("podman")
        .args(["image", "exists", &c.image])
        .status()
        .is_ok_and(|s| s.success());
    if !image {
        return Err(missing(&format!(
            "image {} is not in podman's storage",
            c.image
        )));
    }
    if !c.chart.join("Chart.yaml").is_file() {
        return Err(missing(&format!(
            "no chart at {} (pass --chart)",
            c.chart.display()
        )));
    }
    Ok(())
}

fn cert_ips(t: &Topology) -> Vec<IpAddr> {
    vec![
        IpAddr::V4(KUBERNETES_SVC.0),
        IpAddr::V4(t.control_plane().ip),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    ]
}

fn cert_names() -> Vec<String> {
    [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
    ]
    .map(String::from)
    .to_vec()
}
