//! The kubelet stand-in of the container runtime mode: for every stored pod
//! bound to a lab node it makes the pod's sandbox (a network namespace on
//! the node's `cni0`, or the node's own for `hostNetwork`), prepares its
//! volumes (projected ServiceAccount tokens signed by the API emulator's
//! key and rotated at 80 % of their life, the API access volume, emptyDir,
//! ConfigMaps and Secrets), runs each container from its image under podman
//! and runc ([`super::podman`]), runs readiness probes, restarts what
//! exits (with the kubelet's back-off) and reports it all in the pod's
//! status and Events. A pod deleted from the API is stopped and its sandbox
//! removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Probe, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::podman::{self, ContainerRun, PodContext, Refused};
use crate::emulator::apiserver::tokens::{ISSUER, TokenAuthority};
use crate::emulator::cluster::{self, ClusterState, Kind};
use crate::net::netns;
use crate::net::network;
use crate::net::topology::{CLUSTER_DOMAIN, DNS_SVC, NodePlan, PodPlan, Topology};
use crate::process::{LAB_PATH, ProcessSpec, Processes};
use crate::state::{StateDir, write_for_pods};

/// Where the API access volume is mounted, as the ServiceAccount admission
/// plugin adds it to every pod that does not opt out.
const API_ACCESS_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const API_ACCESS_VOLUME: &str = "kube-api-access";
/// The kubelet's lifetime for the API access token.
const API_TOKEN_TTL: Duration = Duration::from_secs(3607);
/// The kubelet's restart back-off: 10 s, doubled per restart up to 5
/// minutes, back to 10 s after 10 minutes of running.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often a readiness probe runs until the container is first ready.
const FIRST_PROBES_EVERY: Duration = Duration::from_millis(500);

/// What the kubelet needs from the lab.
pub struct NodeAgent {
    pub lab: String,
    pub topology: Topology,
    pub cluster: ClusterState,
    pub state: StateDir,
    pub authority: Arc<TokenAuthority>,
    pub ca_pem: String,
    /// The `podman` binary.
    pub podman: PathBuf,
}

/// One token file the kubelet keeps fresh.
struct TokenFile {
    path: PathBuf,
    audience: String,
    ttl: Duration,
    minted: Instant,
}

impl TokenFile {
    /// Rotated at 80 % of its life, as the kubelet does.
    fn due(&self) -> bool {
        self.minted.elapsed() >= self.ttl.mul_f64(0.8)
    }

    /// Writes a fresh token for pod `(namespace, name)`.
    fn mint(&mut self, agent: &NodeAgent, pod: (&str, &str)) -> std::io::Result<()> {
        agent.authority.mount_pod_token(
            &agent.cluster,
            pod,
            &self.audience,
            self.ttl,
            &self.path,
        )?;
        self.minted = Instant::now();
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Running { started_at: Value },
    Waiting { reason: String, message: String },
    Terminated { exit_code: i32, reason: String },
}

struct ContainerRuntime {
    name: String,
    image: String,
    /// The lab's process (and log) name for it.
    process: String,
    /// Podman's name for it.
    container: String,
    run: ContainerRun,
    state: State,
    last_state: Option<State>,
    restarts: u32,
    restart_at: Option<Instant>,
    /// The current restart delay.
    backoff: Duration,
    running_since: Option<Instant>,
    ready: bool,
    readiness: Option<Probe>,
    probe: ProbeState,
    /// Container ports by name (probes may name theirs).
    ports: BTreeMap<String, u16>,
}

/// A readiness probe's counters.
#[derive(Debug, Default)]
struct ProbeState {
    next: Option<Instant>,
    successes: u32,
    failures: u32,
    ever_ready: bool,
}

/// A pod this kubelet runs.
struct RunningPod {
    uid: String,
    namespace: String,
    name: String,
    node: NodePlan,
    /// The pod's own sandbox (`None` on the host network).
    sandbox: Option<PodPlan>,
    ip: Ipv4Addr,
    dir: PathBuf,
    tokens: Vec<TokenFile>,
    containers: Vec<ContainerRuntime>,
    restart_policy: String,
    started_at: Value,
    /// Every container ended and the sandbox is gone (status kept).
    finished: bool,
}

/// The kubelets of every lab node.
pub struct Kubelet {
    agent: NodeAgent,
    processes: Processes,
    pods: BTreeMap<String, RunningPod>,
    /// Pods the kubelet refused, by UID, with when to try again (`None`:
    /// never, the pod failed). The reason is in their status and Events.
    refused: BTreeMap<String, Option<Instant>>,
    image_users: BTreeMap<String, Option<u32>>,
}

impl Kubelet {
    pub fn new(agent: NodeAgent) -> Self {
        let processes = Processes::new(agent.state.clone());
        Kubelet {
            agent,
            processes,
            pods: BTreeMap::new(),
            refused: BTreeMap::new(),
            image_users: BTreeMap::new(),
        }
    }

    /// One pass: start new pods, stop deleted ones, follow the containers.
    pub fn sync(&mut self) {
        let stored = self.agent.cluster.pods();
        let live: BTreeMap<String, &Pod> = stored
            .iter()
            .filter_map(|p| Some((p.metadata.uid.clone()?, p)))
            .collect();
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !live.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(pod) = self.pods.remove(&uid) {
                self.kill(pod);
            }
        }
        self.refused.retain(|uid, _| live.contains_key(uid));
        for (uid, pod) in &live {
            let waiting = self
                .refused
                .get(uid)
                .is_some_and(|retry| retry.is_none_or(|at| Instant::now() < at));
            if self.pods.contains_key(uid) || waiting {
                continue;
            }
            let terminal = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed");
            let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let Some(plan) = node.and_then(|n| self.agent.topology.node(n)).cloned() else {
                continue;
            };
            // The lab's own in-process pods (the DNS server) are not run.
            let lab_pod = pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .any(|c| c.image.as_deref() == Some(cluster::LAB_IMAGE));
            if terminal || lab_pod {
                continue;
            }
            self.start(pod, plan);
        }
        self.follow();
        self.refresh_tokens();
    }

    fn event(&self, namespace: &str, pod: &str, type_: &str, reason: &str, message: &str) {
        self.agent
            .cluster
            .record_pod_event(namespace, pod, type_, reason, message);
    }

    fn start(&mut self, pod: &Pod, node: NodePlan) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        match self.prepare(pod, node) {
            Ok(running) => {
                self.pods.insert(uid.clone(), running);
                self.run_containers(&uid);
            }
            Err(refused) => {
                tracing::warn!(pod = %name, %refused, "the lab's kubelet refuses the pod");
                self.event(
                    &namespace,
                    &name,
                    "Warning",
                    refused.reason,
                    &refused.message,
                );
                // Admission refusals fail the pod for good; the rest are
                // retried, as the kubelet retries a pod's set-up.
                let admission = refused.reason == "SysctlForbidden";
                let status = json!({
                    "phase": if admission { "Failed" } else { "Pending" },
                    "reason": if admission { Some(refused.reason) } else { None },
                    "conditions": [{"type": "PodScheduled", "status": "True"}],
                    "containerStatuses": pod.spec.iter().flat_map(|s| &s.containers).map(|c| json!({
                        "name": c.name, "image": c.image, "imageID": "", "ready": false,
                        "restartCount": 0, "started": false,
                        "state": {"waiting": {"reason": refused.reason, "message": refused.message}},
                    })).collect::<Vec<_>>(),
                });
                let _ = self
                    .agent
                    .cluster
                    .write_status(Kind::Pod, &namespace, &name, status);
                let retry = (!admission).then(|| Instant::now() + FIRST_BACKOFF);
                self.refused.insert(uid, retry);
            }
        }
    }

    /// The sandbox and volumes of `pod` on `node`.
    fn prepare(&mut self, pod: &Pod, node: NodePlan) -> Result<RunningPod, Refused> {
        super::validation::check(pod)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let failed = |reason: &'static str| {
            move |e: std::io::Error| Refused {
                reason,
                message: e.to_string(),
            }
        };
        let dir = self.agent.state.file(&format!("pods/{uid}"));
        std::fs::create_dir_all(&dir).map_err(failed("FailedMount"))?;
        let mut running = RunningPod {
            uid,
            namespace: namespace.clone(),
            name: name.clone(),
            node: node.clone(),
            sandbox: None,
            ip: node.ip,
            dir,
            tokens: Vec::new(),
            containers: Vec::new(),
            restart_policy: spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".into()),
            started_at: json!(cluster::now()),
            finished: false,
        };
        if spec.host_network != Some(true) {
            // Planned here (the containers' environment has the address),
            // made last, when nothing else can fail.
            let sandbox = self.sandbox_for(&node).ok_or_else(|| Refused {
                reason: "FailedCreatePodSandBox",
                message: format!("no free pod address on {}", node.name),
            })?;
            running.ip = sandbox.ip;
            running.sandbox = Some(sandbox);
        }
        match self.prepare_containers(pod, &spec, &mut running) {
            Ok(()) => Ok(running),
            Err(refused) => {
                if let Some(sandbox) = &running.sandbox
                    && netns::exists(&sandbox.netns)
                    && let Err(error) = network::remove_pod(&running.node, sandbox)
                {
                    tracing::warn!(%error, pod = %running.name, "cannot remove the pod's sandbox");
                }
                let _ = std::fs::remove_dir_all(&running.dir);
                Err(refused)
            }
        }
    }

    /// Volumes, each container's `podman run`, then the sandbox.
    fn prepare_containers(
        &mut self,
        pod: &Pod,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        running: &mut RunningPod,
    ) -> Result<(), Refused> {
        let node = running.node.clone();
        let (namespace, name) = (running.namespace.clone(), running.name.clone());
        self.event(
            &namespace,
            &name,
            "Normal",
            "Scheduled",
            &format!("Successfully assigned {namespace}/{name} to {}", node.name),
        );
        let mut volumes = spec.volumes.clone().unwrap_or_default();
        let automount = spec.automount_service_account_token != Some(false);
        let mounts_api = spec.containers.iter().any(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == API_ACCESS_PATH)
        });
        if automount && !mounts_api {
            volumes.push(api_access_volume());
        }
        let mut dirs = BTreeMap::new();
        for volume in &volumes {
            let path = self.volume(running, volume)?;
            dirs.insert(volume.name.clone(), path);
        }
        let mut containers = spec.containers.clone();
        // What the kubelet writes (ConfigMaps, Secrets, tokens) is always
        // mounted read-only: a container cannot plant anything there that
        // the next rotation would follow.
        let kubelet_written: BTreeSet<&str> = volumes
            .iter()
            .filter(|v| {
                v.config_map.is_some()
                    || v.secret.is_some()
                    || v.projected.is_some()
                    || v.downward_api.is_some()
            })
            .map(|v| v.name.as_str())
            .collect();
        for c in &mut containers {
            let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
            for m in mounts.iter_mut() {
                if kubelet_written.contains(m.name.as_str()) {
                    m.read_only = Some(true);
                }
            }
            if automount && !mounts_api {
                mounts.push(k8s_openapi::api::core::v1::VolumeMount {
                    name: API_ACCESS_VOLUME.into(),
                    mount_path: API_ACCESS_PATH.into(),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
        }
        let services: Vec<_> = self.agent.cluster.services();
        let mut not_honoured = Vec::new();
        for c in &containers {
            let image = c.image.clone().unwrap_or_default();
            let image_user = self.image_user(&image)?;
            let cluster = self.agent.cluster.clone();
            let in_namespace = namespace.clone();
            let lookup = move |kind: &str, name: &str, key: &str| -> Option<String> {
                let kind = if kind == "Secret" {
                    Kind::Secret
                } else {
                    Kind::ConfigMap
                };
                let object = cluster.get(kind, &in_namespace, name)?;
                if kind == Kind::Secret {
                    let b64 = object["data"][key].as_str()?;
                    decode_b64(b64)
                } else {
                    object["data"][key].as_str().map(String::from)
                }
            };
            let ctx = PodContext {
                pod,
                lab: &self.agent.lab,
                netns: running
                    .sandbox
                    .as_ref()
                    .map_or(node.netns.as_str(), |s| s.netns.as_str()),
                pod_ip: running.ip,
                host_ip: node.ip,
                node_name: &node.name,
                services: &services,
                dns: DNS_SVC.0,
                cluster_domain: CLUSTER_DOMAIN,
                volumes: &dirs,
                image_user,
                lookup: &lookup,
            };
            let run = podman::run_args(&ctx, c)?;
            not_honoured.extend(
                run.not_honoured
                    .iter()
                    .map(|n| format!("container {}: {n}", c.name)),
            );
            running.containers.push(ContainerRuntime {
                name: c.name.clone(),
                image,
                process: format!("pod-{namespace}-{name}-{}", c.name),
                container: podman::container_name(&self.agent.lab, &namespace, &name, &c.name),
                run,
                state: State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
                last_state: None,
                restarts: 0,
                restart_at: None,
                backoff: Duration::ZERO,
                running_since: None,
                ready: false,
                readiness: c.readiness_probe.clone(),
                probe: ProbeState::default(),
                ports: c
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
                    .collect(),
            });
        }
        if !not_honoured.is_empty() {
            let message = format!("the lab does not honour: {}", not_honoured.join("; "));
            tracing::info!(pod = %running.name, "{message}");
            self.event(
                &running.namespace,
                &running.name,
                "Warning",
                "LabNotHonoured",
                &message,
            );
        }
        if let Some(sandbox) = &running.sandbox {
            network::add_sandbox(&node, sandbox).map_err(|e| Refused {
                reason: "FailedCreatePodSandBox",
                message: format!("setting up the pod network: {e}"),
            })?;
        }
        Ok(())
    }

    /// A free address on `node` for a new sandbox: `.20` to `.250` of its
    /// pod subnet (below are the process mode's pods and the DNS pod).
    fn sandbox_for(&self, node: &NodePlan) -> Option<PodPlan> {
        let taken: Vec<Ipv4Addr> = self
            .pods
            .values()
            .filter_map(|p| p.sandbox.as_ref().map(|s| s.ip))
            .collect();
        (20..=250u8).find_map(|host| {
            let ip = Ipv4Addr::new(10, 244, node.index, host);
            (!taken.contains(&ip)).then(|| PodPlan {
                name: String::new(),
                netns: format!("{}-p{host}", node.netns),
                ip,
            })
        })
    }

    /// Prepares one volume under the pod's directory; returns its path.
    fn volume(&self, running: &mut RunningPod, volume: &Volume) -> Result<PathBuf, Refused> {
        let dir = running.dir.join("volumes").join(&volume.name);
        let io = |e: std::io::Error| Refused {
            reason: "FailedMount",
            message: format!("volume {}: {e}", volume.name),
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let namespace = running.namespace.clone();
        if volume.empty_dir.is_some() {
            // World-writable, as the kubelet makes an emptyDir.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
            return Ok(dir);
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        if let Some(projected) = &volume.projected {
            for source in projected.sources.iter().flatten() {
                if let Some(sat) = &source.service_account_token {
                    let audience = sat.audience.clone().unwrap_or_else(|| ISSUER.to_owned());
                    let ttl = sat
                        .expiration_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .map_or(API_TOKEN_TTL, Duration::from_secs);
                    let mut token = TokenFile {
                        path: dir.join(&sat.path),
                        audience,
                        ttl,
                        minted: Instant::now(),
                    };
                    token
                        .mint(&self.agent, (&running.namespace, &running.name))
                        .map_err(io)?;
                    running.tokens.push(token);
                }
                if let Some(cm) = &source.config_map {
                    let items = self.config_map_items(&namespace, &cm.name, cm.optional)?;
                    write_items(&dir, &items, cm.items.as_deref()).map_err(io)?;
                }
                if let Some(secret) = &source.secret {
                    let items = self.secret_items(&namespace, &secret.name, secret.optional)?;
                    write_items(&dir, &items, secret.items.as_deref()).map_err(io)?;
                }
                if let Some(downward) = &source.downward_api {
                    for item in downward.items.iter().flatten() {
                        let value = match item.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                            Some("metadata.namespace") => namespace.clone(),
                            Some("metadata.name") => running.name.clone(),
                            Some("metadata.uid") => running.uid.clone(),
                            other => {
                                return Err(Refused {
                                    reason: "FailedMount",
                                    message: format!(
                                        "downwardAPI {other:?} is not supported by the lab"
                                    ),
                                });
                            }
                        };
                        write_for_pods(&dir.join(&item.path), value.as_bytes()).map_err(io)?;
                    }
                }
            }
            return Ok(dir);
        }
        if let Some(cm) = &volume.config_map {
            let items = self.config_map_items(&namespace, cm.name.as_str(), cm.optional)?;
            write_items(&dir, &items, cm.items.as_deref()).map_err(io)?;
            return Ok(dir);
        }
        if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            let items = self.secret_items(&namespace, &name, secret.optional)?;
            write_items(&dir, &items, secret.items.as_deref()).map_err(io)?;
            return Ok(dir);
        }
        Err(Refused {
            reason: "FailedMount",
            message: format!(
                "volume {}: only emptyDir, projected, configMap and secret volumes are supported by the lab",
                volume.name
            ),
        })
    }

    /// A ConfigMap's data; a missing one fails the mount unless optional.
    fn config_map_items(
        &self,
        namespace: &str,
        name: &str,
        optional: Option<bool>,
    ) -> Result<BTreeMap<String, Vec<u8>>, Refused> {
        if name == "kube-root-ca.crt" {
            // Published in every namespace by the root CA publisher.
            return Ok(BTreeMap::from([(
                "ca.crt".to_owned(),
                self.agent.ca_pem.clone().into_bytes(),
            )]));
        }
        let object = self.source(Kind::ConfigMap, namespace, name, optional)?;
        Ok(object["data"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.as_bytes().to_vec())))
            .collect())
    }

    /// A Secret's data, decoded; a missing one fails the mount unless
    /// optional.
    fn secret_items(
        &self,
        namespace: &str,
        name: &str,
        optional: Option<bool>,
    ) -> Result<BTreeMap<String, Vec<u8>>, Refused> {
        let object = self.source(Kind::Secret, namespace, name, optional)?;
        Ok(object["data"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), decode_b64(v.as_str()?)?.into_bytes())))
            .collect())
    }

    fn source(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        optional: Option<bool>,
    ) -> Result<Value, Refused> {
        match self.agent.cluster.get(kind, namespace, name) {
            Some(object) => Ok(object),
            None if optional == Some(true) => Ok(Value::Null),
            None => Err(Refused {
                reason: "FailedMount",
                message: format!("{} \"{name}\" not found", kind.plural()),
            }),
        }
    }

    /// Writes a fresh token bound to the pod, atomically.
    fn refresh_tokens(&mut self) {
        let Kubelet { pods, agent, .. } = self;
        for pod in pods.values_mut() {
            for token in pod.tokens.iter_mut().filter(|t| t.due()) {
                if let Err(error) = token.mint(agent, (&pod.namespace, &pod.name)) {
                    tracing::warn!(%error, pod = %pod.name, "cannot rotate a token");
                }
            }
        }
    }

    /// The user an image runs as (`podman image inspect`; `None`: a user
    /// name), cached. An image not in local storage cannot be pulled.
    fn image_user(&mut self, image: &str) -> Result<Option<u32>, Refused> {
        if let Some(user) = self.image_users.get(image) {
            return Ok(*user);
        }
        let out = std::process::Command::new(&self.agent.podman)
            .args(["image", "inspect", "--format", "{{.Config.User}}", image])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .ok_or_else(|| Refused {
                reason: "ErrImageNeverPull",
                message: format!(
                    "container image \"{image}\" is not present with pull policy of Never"
                ),
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let user = text.trim().split(':').next().and_then(|u| u.parse().ok());
        let user = if text.trim().is_empty() {
            Some(0)
        } else {
            user
        };
        self.image_users.insert(image.to_owned(), user);
        Ok(user)
    }

    /// Starts every container of pod `uid` that is due.
    fn run_containers(&mut self, uid: &str) {
        if let Some(pod) = self.pods.get_mut(uid) {
            start_due(pod, &self.processes, &self.agent);
        }
    }

    /// Exits, restarts, readiness, and the pods' status; a pod whose
    /// containers all ended gives its sandbox back.
    fn follow(&mut self) {
        let exits: BTreeMap<String, Option<i32>> =
            self.processes.exit_codes().into_iter().collect();
        let Kubelet {
            pods,
            processes,
            agent,
            ..
        } = self;
        for pod in pods.values_mut() {
            for c in &mut pod.containers {
                let Some(code) = exits.get(&c.process).filter(|_| c.is_running()) else {
                    continue;
                };
                let code = code.unwrap_or(137);
                let _ = processes.stop(&c.process);
                if let Some(why) = c.exited(code, &pod.restart_policy) {
                    let why = format!("{why} container={} pod={}", c.name, pod.name);
                    agent.cluster.record_pod_event(
                        &pod.namespace,
                        &pod.name,
                        "Warning",
                        "BackOff",
                        &why,
                    );
                }
            }
            start_due(pod, processes, agent);
            probe_readiness(pod);
            let status = pod_status(pod);
            let finished = matches!(status["phase"].as_str(), Some("Succeeded" | "Failed"));
            let _ = agent
                .cluster
                .write_status(Kind::Pod, &pod.namespace, &pod.name, status);
            if finished && !pod.finished {
                // As the kubelet tears down a finished pod's sandbox: its
                // status stays until the pod is deleted.
                pod.finished = true;
                pod.tokens.clear();
                if let Some(sandbox) = &pod.sandbox
                    && let Err(error) = network::remove_pod(&pod.node, sandbox)
                {
                    tracing::warn!(%error, pod = %pod.name, "cannot remove the pod's sandbox");
                }
            }
        }
    }

    /// Stops a pod's containers and removes its sandbox and files.
    fn kill(&mut self, pod: RunningPod) {
        for c in &pod.containers {
            let _ = self.processes.stop(&c.process);
        }
        let names: Vec<String> = pod
            .containers
            .iter()
            .map(|c| podman::container_name(&self.agent.lab, &pod.namespace, &pod.name, &c.name))
            .collect();
        force_remove(&self.agent.podman, &names);
        if let Some(sandbox) = pod.sandbox.as_ref().filter(|s| netns::exists(&s.netns))
            && let Err(error) = network::remove_pod(&pod.node, sandbox)
        {
            tracing::warn!(%error, pod = %pod.name, "cannot remove the pod's sandbox");
        }
        let _ = std::fs::remove_dir_all(&pod.dir);
        tracing::info!(pod = %pod.name, "pod stopped and removed");
    }

    /// Stops every pod (the lab goes down).
    pub fn shutdown(&mut self) {
        let pods = std::mem::take(&mut self.pods);
        for pod in pods.into_values() {
            self.kill(pod);
        }
        self.processes.stop_everything();
        remove_containers(&self.agent.podman, &self.agent.lab);
    }
}

/// Starts the containers of `pod` that wait and whose back-off is over.
fn start_due(pod: &mut RunningPod, processes: &Processes, agent: &NodeAgent) {
    for c in &mut pod.containers {
        let due = matches!(c.state, State::Waiting { .. })
            && c.restart_at.is_none_or(|at| Instant::now() >= at);
        if !due {
            continue;
        }
        let spec = ProcessSpec {
            name: c.process.clone(),
            // podman runs in the host's namespaces (`ip netns exec` would
            // hide the cgroup mounts runc needs); the container joins the
            // pod's network namespace (`--network ns:...`).
            netns: String::new(),
            program: agent.podman.clone(),
            args: c.run.args.clone(),
            env: vec![
                ("PATH".into(), LAB_PATH.into()),
                ("HOME".into(), "/root".into()),
            ],
        };
        // A container left by a killed podman would block the name.
        force_remove(&agent.podman, std::slice::from_ref(&c.container));
        match processes.start(spec) {
            Ok(_) => {
                c.state = State::Running {
                    started_at: json!(cluster::now()),
                };
                c.running_since = Some(Instant::now());
                c.ready = c.readiness.is_none();
                c.probe = ProbeState::default();
                agent.cluster.set_pod_log(
                    &pod.namespace,
                    &pod.name,
                    processes.log_path(&c.process),
                );
                agent.cluster.record_pod_event(
                    &pod.namespace,
                    &pod.name,
                    "Normal",
                    "Started",
                    &format!("Started container {}", c.name),
                );
            }
            Err(e) => {
                c.state = State::Waiting {
                    reason: "RunContainerError".into(),
                    message: e.to_string(),
                };
                c.restart_at = Some(Instant::now() + MAX_BACKOFF);
            }
        }
    }
}

impl ContainerRuntime {
    fn is_running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    /// The container exited with `code`: restarted after the kubelet's
    /// back-off (10 s doubling to 5 min, reset by 10 minutes of running)
    /// or ended, per `policy`. Returns the back-off message when it waits.
    fn exited(&mut self, code: i32, policy: &str) -> Option<String> {
        let terminated = State::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
        };
        self.ready = false;
        let restart = match policy {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        if !restart {
            self.state = terminated;
            return None;
        }
        if self
            .running_since
            .is_some_and(|since| since.elapsed() >= BACKOFF_RESET)
        {
            self.backoff = Duration::ZERO;
        }
        self.backoff = if self.backoff.is_zero() {
            FIRST_BACKOFF
        } else {
            (self.backoff * 2).min(MAX_BACKOFF)
        };
        self.restarts += 1;
        self.last_state = Some(terminated);
        self.restart_at = Some(Instant::now() + self.backoff);
        let why = format!("back-off {:?} restarting failed", self.backoff);
        self.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: why.clone(),
        };
        Some(why)
    }
}

/// Removes every container of lab `lab` (after a crash, or at the end).
/// Without podman there is nothing to remove.
pub fn remove_containers(podman: &Path, lab: &str) {
    let out = std::process::Command::new(podman)
        .args(["ps", "--all", "--quiet", "--filter"])
        .arg(format!("label={}={lab}", podman::LAB_LABEL))
        .output();
    let ids: Vec<String> = out
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if !ids.is_empty() {
        force_remove(podman, &ids);
    }
}

/// `podman rm` of `containers`, running or not, without waiting for them to
/// stop and without an error for those already gone: the kubelet stand-in
/// removes what it no longer wants, as a killed pod's containers go. A
/// failure leaves containers that `remove_containers` finds by label.
fn force_remove(podman: &Path, containers: &[String]) {
    if let Err(error) = std::process::Command::new(podman)
        .args(["rm", "--force", "--ignore", "--time", "0"])
        .args(containers)
        .output()
    {
        tracing::warn!(%error, ?containers, "podman rm failed");
    }
}

fn api_access_volume() -> Volume {
    serde_json::from_value(json!({
        "name": API_ACCESS_VOLUME,
        "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": API_TOKEN_TTL.as_secs()}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]},
    }))
    .unwrap_or_default()
}

fn decode_b64(text: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> std::io::Result<()> {
    match items {
        Some(items) => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    return Err(std::io::Error::other(format!("key {} not found", item.key)));
                };
                write_for_pods(&dir.join(&item.path), value)?;
            }
        }
        None => {
            for (key, value) in data {
                write_for_pods(&dir.join(key), value)?;
            }
        }
    }
    Ok(())
}

/// Runs the readiness probes that are due, from the node's namespace as
/// the kubelet probes: HTTP GET (200-399) and TCP connect, with the
/// probe's thresholds, timeout and initial delay. Until a container is
/// first ready its probe runs every [`FIRST_PROBES_EVERY`] instead of
/// `periodSeconds` (a lab pod is Ready within a second of its server);
/// after that, every `periodSeconds`.
fn probe_readiness(pod: &mut RunningPod) {
    let node_ns = pod.node.netns.clone();
    let ip = pod.ip;
    for c in &mut pod.containers {
        if !c.is_running() {
            c.ready = false;
            continue;
        }
        let Some(probe) = c.readiness.clone() else {
            c.ready = true;
            continue;
        };
        let seconds = |v: Option<i32>, default: u64| {
            Duration::from_secs(v.and_then(|s| u64::try_from(s).ok()).unwrap_or(default))
        };
        let started = c.running_since.unwrap_or_else(Instant::now);
        if started.elapsed() < seconds(probe.initial_delay_seconds, 0)
            || c.probe.next.is_some_and(|next| Instant::now() < next)
        {
            continue;
        }
        let period = if c.probe.ever_ready {
            seconds(probe.period_seconds, 10)
        } else {
            FIRST_PROBES_EVERY
        };
        c.probe.next = Some(Instant::now() + period);
        let timeout = seconds(probe.timeout_seconds, 1);
        let port = |p: &IntOrString| match p {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => c.ports.get(name).copied(),
        };
        let connects = |port: u16| {
            netns::in_netns(&node_ns, move || {
                std::net::TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout)
            })
            .is_ok()
        };
        let ok = if let Some(get) = &probe.http_get {
            let path = get.path.clone().unwrap_or_else(|| "/".into());
            let https = get.scheme.as_deref() == Some("HTTPS");
            port(&get.port).is_some_and(|port| {
                if https {
                    connects(port)
                } else {
                    http_probe(&node_ns, SocketAddr::from((ip, port)), &path, timeout)
                }
            })
        } else if let Some(tcp) = &probe.tcp_socket {
            port(&tcp.port).is_some_and(connects)
        } else {
            // exec and gRPC probes are not run (said in the pod's
            // LabNotHonoured event): ready once running.
            true
        };
        let threshold = |v: Option<i32>, default: u32| {
            v.and_then(|n| u32::try_from(n).ok())
                .unwrap_or(default)
                .max(1)
        };
        if ok {
            c.probe.failures = 0;
            c.probe.successes += 1;
            if c.probe.successes >= threshold(probe.success_threshold, 1) {
                c.ready = true;
                c.probe.ever_ready = true;
            }
        } else {
            c.probe.successes = 0;
            c.probe.failures += 1;
            if c.probe.failures >= threshold(probe.failure_threshold, 3) || !c.probe.ever_ready {
                c.ready = false;
            }
        }
    }
}

/// `GET path` from `ns`: any answer from 200 to 399 passes, as the
/// kubelet's HTTP probe.
fn http_probe(ns: &str, addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let path = path.to_owned();
    netns::in_netns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\n\r\n"
        )?;
        let mut head = [0u8; 16];
        let n = s.read(&mut head)?;
        let line = String::from_utf8_lossy(&head[..n]).into_owned();
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((200..400).contains(&code))
    })
    .unwrap_or(false)
}

fn state_json(state: &State) -> Value {
    match state {
        State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        State::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        State::Terminated { exit_code, reason } => {
            json!({"terminated": {"exitCode": exit_code, "reason": reason}})
        }
    }
}

/// The pod's status as the kubelet reports it.
fn pod_status(pod: &RunningPod) -> Value {
    let all_ready = pod.containers.iter().all(|c| c.ready);
    let terminated: Vec<i32> = pod
        .containers
        .iter()
        .filter_map(|c| match c.state {
            State::Terminated { exit_code, .. } => Some(exit_code),
            _ => None,
        })
        .collect();
    let phase = if terminated.len() == pod.containers.len() && !terminated.is_empty() {
        if terminated.iter().all(|c| *c == 0) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if pod
        .containers
        .iter()
        .any(|c| matches!(c.state, State::Running { .. }) || c.restarts > 0)
    {
        "Running"
    } else {
        "Pending"
    };
    let flag = |b: bool| if b { "True" } else { "False" };
    let ip = pod.ip.to_string();
    let host_ip = pod.node.ip.to_string();
    json!({
        "phase": phase,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": pod.started_at,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": flag(all_ready)},
            {"type": "Ready", "status": flag(all_ready)},
        ],
        "containerStatuses": pod.containers.iter().map(|c| {
            let mut status = json!({
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "containerID": format!("podman://{}", c.container),
                "ready": c.ready,
                "started": matches!(c.state, State::Running { .. }),
                "restartCount": c.restarts,
                "state": state_json(&c.state),
            });
            if let Some(last) = &c.last_state {
                status["lastState"] = state_json(last);
            }
            status
        }).collect::<Vec<_>>(),
    })
}
