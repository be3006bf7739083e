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

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Probe, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::podman::{self, ContainerRun, PodContext, Refused};
use crate::emulator::apiserver::tokens::{Binding, ISSUER, TokenAuthority};
use crate::emulator::cluster::{self, ClusterState, Kind};
use crate::net::netns;
use crate::net::network;
use crate::net::topology::{CLUSTER_DOMAIN, DNS_SVC, NodePlan, PodPlan, Topology};
use crate::process::{ProcessSpec, Processes};
use crate::state::StateDir;

/// Where the API access volume is mounted, as the ServiceAccount admission
/// plugin adds it to every pod that does not opt out.
const API_ACCESS_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const API_ACCESS_VOLUME: &str = "kube-api-access";
/// The kubelet's lifetime for the API access token.
const API_TOKEN_TTL: Duration = Duration::from_secs(3607);
/// First restart delay, doubled per restart up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Readiness probes run at most this often (whatever the pod asks), so
/// that a lab pod is Ready within a second or two of its server.
const PROBE_EVERY: Duration = Duration::from_millis(500);

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

#[derive(Debug, Clone, PartialEq)]
enum State {
    Running { started_at: Value },
    Waiting { reason: String, message: String },
    Terminated { exit_code: i32, reason: String },
}

struct ContainerRuntime {
    name: String,
    image: String,
    /// The process (and log) name.
    process: String,
    run: Option<ContainerRun>,
    state: State,
    last_state: Option<State>,
    restarts: u32,
    restart_at: Option<Instant>,
    ready: bool,
    readiness: Option<Probe>,
    /// Container ports by name (probes may name theirs).
    ports: BTreeMap<String, u16>,
    next_probe: Instant,
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
}

/// The kubelets of every lab node.
pub struct Kubelet {
    agent: NodeAgent,
    processes: Processes,
    pods: BTreeMap<String, RunningPod>,
    /// Pods the kubelet refused, by UID (not retried; the reason is in
    /// their status and Events).
    refused: BTreeMap<String, ()>,
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
            if self.pods.contains_key(uid) || self.refused.contains_key(uid) {
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
                self.pods.insert(uid, running);
                self.run_containers(&namespace, &name);
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
                let status = json!({
                    "phase": "Pending",
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
                self.refused.insert(uid, ());
            }
        }
    }

    /// The sandbox and volumes of `pod` on `node`.
    fn prepare(&mut self, pod: &Pod, node: NodePlan) -> Result<RunningPod, Refused> {
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
        };
        if spec.host_network != Some(true) {
            let sandbox = self.sandbox_for(&node).ok_or_else(|| Refused {
                reason: "FailedCreatePodSandBox",
                message: format!("no free pod address on {}", node.name),
            })?;
            network::add_sandbox(&node, &sandbox).map_err(|e| Refused {
                reason: "FailedCreatePodSandBox",
                message: format!("setting up the pod network: {e}"),
            })?;
            running.ip = sandbox.ip;
            running.sandbox = Some(sandbox);
        }
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
            let path = self.volume(&mut running, pod, volume)?;
            dirs.insert(volume.name.clone(), path);
        }
        let mut containers = spec.containers.clone();
        if automount && !mounts_api {
            for c in &mut containers {
                c.volume_mounts.get_or_insert_with(Vec::new).push(
                    k8s_openapi::api::core::v1::VolumeMount {
                        name: API_ACCESS_VOLUME.into(),
                        mount_path: API_ACCESS_PATH.into(),
                        read_only: Some(true),
                        ..Default::default()
                    },
                );
            }
        }
        let services: Vec<_> = self.agent.cluster.services();
        let mut not_honoured = Vec::new();
        for c in &containers {
            let image = c.image.clone().unwrap_or_default();
            let image_user = self.image_user(&image);
            let mut with_status = pod.clone();
            let status = with_status.status.get_or_insert_with(Default::default);
            status.pod_ip = Some(running.ip.to_string());
            let cluster = self.agent.cluster.clone();
            let namespace = namespace.clone();
            let lookup = move |kind: &str, name: &str, key: &str| -> Option<String> {
                let kind = if kind == "Secret" {
                    Kind::Secret
                } else {
                    Kind::ConfigMap
                };
                let object = cluster.get(kind, &namespace, name)?;
                if kind == Kind::Secret {
                    let b64 = object["data"][key].as_str()?;
                    decode_b64(b64)
                } else {
                    object["data"][key].as_str().map(String::from)
                }
            };
            let ctx = PodContext {
                pod: &with_status,
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
                process: format!("pod-{}-{}", running.name, c.name),
                run: Some(run),
                state: State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
                last_state: None,
                restarts: 0,
                restart_at: None,
                ready: false,
                readiness: c.readiness_probe.clone(),
                ports: c
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
                    .collect(),
                next_probe: Instant::now(),
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
        Ok(running)
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
                host_veth: format!("vp{host}"),
            })
        })
    }

    /// Prepares one volume under the pod's directory; returns its path.
    fn volume(
        &self,
        running: &mut RunningPod,
        pod: &Pod,
        volume: &Volume,
    ) -> Result<PathBuf, Refused> {
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
                    let ttl = Duration::from_secs(
                        u64::try_from(sat.expiration_seconds.unwrap_or(3607)).unwrap_or(3607),
                    );
                    let mut token = TokenFile {
                        path: dir.join(&sat.path),
                        audience,
                        ttl,
                        minted: Instant::now(),
                    };
                    self.mint(running, pod, &mut token).map_err(io)?;
                    running.tokens.push(token);
                }
                if let Some(cm) = &source.config_map {
                    let items = self.config_map_items(&namespace, &cm.name);
                    write_items(&dir, &items, cm.items.as_deref()).map_err(io)?;
                }
                if let Some(secret) = &source.secret {
                    let items = self.secret_items(&namespace, &secret.name);
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
                        write_file(&dir.join(&item.path), value.as_bytes()).map_err(io)?;
                    }
                }
            }
            return Ok(dir);
        }
        if let Some(cm) = &volume.config_map {
            let items = self.config_map_items(&namespace, cm.name.as_str());
            write_items(&dir, &items, cm.items.as_deref()).map_err(io)?;
            return Ok(dir);
        }
        if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            let items = self.secret_items(&namespace, &name);
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

    fn config_map_items(&self, namespace: &str, name: &str) -> BTreeMap<String, Vec<u8>> {
        if name == "kube-root-ca.crt" {
            // Published in every namespace by the root CA publisher.
            return BTreeMap::from([("ca.crt".to_owned(), self.agent.ca_pem.clone().into_bytes())]);
        }
        let object = self
            .agent
            .cluster
            .get(Kind::ConfigMap, namespace, name)
            .unwrap_or_default();
        object["data"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.as_bytes().to_vec())))
            .collect()
    }

    fn secret_items(&self, namespace: &str, name: &str) -> BTreeMap<String, Vec<u8>> {
        let object = self
            .agent
            .cluster
            .get(Kind::Secret, namespace, name)
            .unwrap_or_default();
        object["data"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), decode_b64(v.as_str()?)?.into_bytes())))
            .collect()
    }

    /// Writes a fresh token bound to the pod, atomically.
    fn mint(&self, running: &RunningPod, _pod: &Pod, token: &mut TokenFile) -> std::io::Result<()> {
        let binding = Binding::of_pod(&self.agent.cluster, &running.namespace, &running.name)
            .ok_or_else(|| std::io::Error::other("the pod or its node is gone"))?;
        let now = netmatrix_runtime::now_unix_secs();
        let jwt = self
            .agent
            .authority
            .issue(&binding, &[token.audience.as_str()], token.ttl, now);
        write_file(&token.path, jwt.as_bytes())?;
        token.minted = Instant::now();
        Ok(())
    }

    fn refresh_tokens(&mut self) {
        let due: Vec<(String, usize)> = self
            .pods
            .iter()
            .flat_map(|(uid, p)| {
                p.tokens
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.minted.elapsed() >= t.ttl.mul_f64(0.8))
                    .map(move |(i, _)| (uid.clone(), i))
            })
            .collect();
        for (uid, i) in due {
            let Some(mut pod) = self.pods.remove(&uid) else {
                continue;
            };
            let mut token = std::mem::replace(
                &mut pod.tokens[i],
                TokenFile {
                    path: PathBuf::new(),
                    audience: String::new(),
                    ttl: Duration::ZERO,
                    minted: Instant::now(),
                },
            );
            if let Err(error) = self.mint(&pod, &Pod::default(), &mut token) {
                tracing::warn!(%error, pod = %pod.name, "cannot rotate a token");
            }
            pod.tokens[i] = token;
            self.pods.insert(uid, pod);
        }
    }

    /// The user an image runs as (`podman image inspect`), cached.
    fn image_user(&mut self, image: &str) -> Option<u32> {
        if let Some(user) = self.image_users.get(image) {
            return *user;
        }
        let out = std::process::Command::new(&self.agent.podman)
            .args(["image", "inspect", "--format", "{{.Config.User}}", image])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let user = text.trim().split(':').next().and_then(|u| u.parse().ok());
        let user = if text.trim().is_empty() {
            Some(0)
        } else {
            user
        };
        self.image_users.insert(image.to_owned(), user);
        user
    }

    /// Starts every container of pod `namespace/name` that is due.
    fn run_containers(&mut self, namespace: &str, name: &str) {
        let Some(uid) = self
            .pods
            .iter()
            .find(|(_, p)| p.namespace == namespace && p.name == name)
            .map(|(u, _)| u.clone())
        else {
            return;
        };
        let Some(mut pod) = self.pods.remove(&uid) else {
            return;
        };
        for c in &mut pod.containers {
            let due = match &c.state {
                State::Waiting { .. } => c.restart_at.is_none_or(|at| Instant::now() >= at),
                _ => false,
            };
            let Some(run) = c.run.as_ref().filter(|_| due) else {
                continue;
            };
            let spec = ProcessSpec {
                name: c.process.clone(),
                // podman runs in the host's namespaces (`ip netns exec`
                // would hide the cgroup mounts runc needs); the container
                // joins the pod's network namespace (`--network ns:...`).
                netns: String::new(),
                program: self.agent.podman.clone(),
                args: run.args.clone(),
                env: vec![
                    (
                        "PATH".into(),
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                    ),
                    ("HOME".into(), "/root".into()),
                ],
            };
            // A container name left by a killed podman would block the run.
            let _ = std::process::Command::new(&self.agent.podman)
                .args(["rm", "--force", "--ignore", "--time", "0"])
                .arg(podman::container_name(
                    &self.agent.lab,
                    &named(namespace, name),
                    &c.name,
                ))
                .output();
            match self.processes.start(spec) {
                Ok(_) => {
                    c.state = State::Running {
                        started_at: json!(cluster::now()),
                    };
                    c.ready = c.readiness.is_none();
                    c.next_probe = Instant::now();
                    self.agent.cluster.set_pod_log(
                        namespace,
                        name,
                        self.processes.log_path(&c.process),
                    );
                    self.agent.cluster.record_pod_event(
                        namespace,
                        name,
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
        self.pods.insert(uid, pod);
    }

    /// Exits, restarts, readiness, and the pods' status.
    fn follow(&mut self) {
        let exits: BTreeMap<String, Option<i32>> =
            self.processes.exit_codes().into_iter().collect();
        let uids: Vec<String> = self.pods.keys().cloned().collect();
        for uid in uids {
            let Some(mut pod) = self.pods.remove(&uid) else {
                continue;
            };
            let policy = pod.restart_policy.clone();
            for c in &mut pod.containers {
                if !matches!(c.state, State::Running { .. }) {
                    continue;
                }
                let Some(code) = exits.get(&c.process) else {
                    continue;
                };
                let code = code.unwrap_or(137);
                let _ = self.processes.stop(&c.process);
                let log = std::fs::read_to_string(self.processes.log_path(&c.process))
                    .unwrap_or_default();
                let reason = if code == 125 && log.contains("image not known") {
                    "ErrImageNeverPull"
                } else if code == 0 {
                    "Completed"
                } else {
                    "Error"
                };
                let terminated = State::Terminated {
                    exit_code: code,
                    reason: reason.into(),
                };
                c.ready = false;
                let restart = match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                };
                if restart {
                    let backoff = FIRST_BACKOFF
                        .saturating_mul(1 << c.restarts.min(5))
                        .min(MAX_BACKOFF);
                    c.restarts += 1;
                    c.last_state = Some(terminated);
                    c.restart_at = Some(Instant::now() + backoff);
                    let why = if reason == "ErrImageNeverPull" {
                        format!(
                            "container image \"{}\" is not present with pull policy of Never",
                            c.image
                        )
                    } else {
                        format!(
                            "back-off {backoff:?} restarting failed container={} pod={}",
                            c.name, pod.name
                        )
                    };
                    c.state = State::Waiting {
                        reason: if reason == "ErrImageNeverPull" {
                            reason.into()
                        } else {
                            "CrashLoopBackOff".into()
                        },
                        message: why.clone(),
                    };
                    self.agent.cluster.record_pod_event(
                        &pod.namespace,
                        &pod.name,
                        "Warning",
                        "BackOff",
                        &why,
                    );
                } else {
                    c.state = terminated;
                }
            }
            self.pods.insert(uid.clone(), pod);
            let (namespace, name) = {
                let p = &self.pods[&uid];
                (p.namespace.clone(), p.name.clone())
            };
            self.run_containers(&namespace, &name);
            if let Some(mut pod) = self.pods.remove(&uid) {
                probe_readiness(&mut pod);
                let status = pod_status(&pod);
                let _ =
                    self.agent
                        .cluster
                        .write_status(Kind::Pod, &pod.namespace, &pod.name, status);
                self.pods.insert(uid, pod);
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
            .map(|c| {
                podman::container_name(&self.agent.lab, &named(&pod.namespace, &pod.name), &c.name)
            })
            .collect();
        let _ = std::process::Command::new(&self.agent.podman)
            .args(["rm", "--force", "--ignore", "--time", "0"])
            .args(&names)
            .output();
        if let Some(sandbox) = &pod.sandbox
            && let Err(error) = network::remove_pod(sandbox)
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
        let _ = std::process::Command::new(podman)
            .args(["rm", "--force", "--ignore", "--time", "0"])
            .args(&ids)
            .output();
    }
}

/// A Pod with just its namespace and name (for container names).
fn named(namespace: &str, name: &str) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.namespace = Some(namespace.to_owned());
    pod.metadata.name = Some(name.to_owned());
    pod
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

/// Writes `content` to `path` through a rename (a reader sees the old file
/// or the new one), readable by every user (the projected volumes' 0644).
fn write_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let staged = path.with_extension("staged");
    std::fs::write(&staged, content)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&staged, path)
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
                write_file(&dir.join(&item.path), value)?;
            }
        }
        None => {
            for (key, value) in data {
                write_file(&dir.join(key), value)?;
            }
        }
    }
    Ok(())
}

/// Runs the readiness probes that are due (HTTP GET and TCP; from the
/// node's namespace, as the kubelet probes).
fn probe_readiness(pod: &mut RunningPod) {
    let node_ns = pod.node.netns.clone();
    let ip = pod.ip;
    for c in &mut pod.containers {
        let running = matches!(c.state, State::Running { .. });
        if !running {
            c.ready = false;
            continue;
        }
        let Some(probe) = c.readiness.as_ref() else {
            c.ready = true;
            continue;
        };
        if Instant::now() < c.next_probe {
            continue;
        }
        c.next_probe = Instant::now() + PROBE_EVERY;
        let port = |p: &IntOrString| match p {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => c.ports.get(name).copied(),
        };
        let timeout = Duration::from_secs(1);
        c.ready = if let Some(get) = &probe.http_get {
            port(&get.port).is_some_and(|port| {
                netns::http_get(
                    &node_ns,
                    SocketAddr::from((ip, port)),
                    get.path.as_deref().unwrap_or("/"),
                    timeout,
                )
                .is_ok()
            })
        } else if let Some(tcp) = &probe.tcp_socket {
            port(&tcp.port).is_some_and(|port| {
                netns::in_netns(&node_ns, move || {
                    std::net::TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout)
                })
                .is_ok()
            })
        } else {
            // exec and gRPC probes are not run: ready once running.
            true
        };
    }
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
                "containerID": format!("podman://{}", c.process),
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
