//! A stored Pod's container, as `podman run` arguments: what the kubelet
//! and containerd make of the pod spec (command and args, environment with
//! the downward API, Service variables and `$(VAR)` references, volume
//! mounts, security context, sysctls, DNS), translated to the runtime's
//! flags. What the lab cannot honour is listed in
//! [`ContainerRun::not_honoured`], never dropped in silence; what the
//! kubelet itself would refuse (a root user with `runAsNonRoot`, network
//! sysctls on the host network) is a [`Refused`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, Pod, PodSecurityContext, SecurityContext, Service,
};

/// podman's options every container of the lab gets, as these machines
/// need them: `crun` refuses their hybrid cgroup setup, and their hard
/// limits are below podman's default ulimits.
pub const RUNTIME_FLAGS: [&str; 6] = [
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// The label that marks a lab's containers (its value: the lab's prefix),
/// so that `down` finds them after a crash.
pub const LAB_LABEL: &str = "io.netmatrix.lab";

/// Where a pod runs and what its node knows.
#[derive(Clone)]
pub struct PodContext<'a> {
    pub pod: &'a Pod,
    /// The lab's prefix (container names and labels).
    pub lab: &'a str,
    /// The network namespace of the pod's sandbox (the node's own for a
    /// host-network pod).
    pub netns: &'a str,
    pub pod_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub node_name: &'a str,
    /// Services whose variables the kubelet injects: those of the pod's
    /// namespace and `default/kubernetes`.
    pub services: &'a [Service],
    /// The cluster DNS Service's address and domain.
    pub dns: Ipv4Addr,
    pub cluster_domain: &'a str,
    /// Host directory of each volume the kubelet prepared, by volume name.
    pub volumes: &'a BTreeMap<String, PathBuf>,
    /// The image's own user (`Config.User`), for `runAsNonRoot`.
    pub image_user: Option<u32>,
    /// Values of `secretKeyRef` / `configMapKeyRef`: `(kind, name, key)`.
    pub lookup: &'a dyn Fn(&str, &str, &str) -> Option<String>,
}

/// `podman run` for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRun {
    /// Everything after `podman`.
    pub args: Vec<String>,
    /// What the pod asks that the lab does not do, one line each.
    pub not_honoured: Vec<String>,
}

/// What the kubelet refuses to start, with its reason and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Refused {
    pub reason: &'static str,
    pub message: String,
}

/// The podman container name of `container` in pod `namespace/pod` of
/// lab `lab`.
pub fn container_name(lab: &str, namespace: &str, pod: &str, container: &str) -> String {
    format!("{lab}_{namespace}_{pod}_{container}")
}

/// The arguments of `podman run` for `container` of `ctx.pod`.
pub fn run_args(ctx: &PodContext<'_>, container: &Container) -> Result<ContainerRun, Refused> {
    let pod = ctx.pod;
    let spec = pod.spec.clone().unwrap_or_default();
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let sc = container.security_context.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let mut not_honoured = Vec::new();
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    args.extend(RUNTIME_FLAGS.map(String::from));
    let name = container_name(
        ctx.lab,
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
        &container.name,
    );
    args.extend(["--name".into(), name]);
    args.extend(["--label".into(), format!("{LAB_LABEL}={}", ctx.lab)]);
    // The image is in local storage or nowhere: the lab pulls nothing.
    args.extend(["--pull".into(), "never".into()]);
    args.extend(["--network".into(), format!("ns:/run/netns/{}", ctx.netns)]);
    let hostname = if host_network {
        ctx.node_name.to_owned()
    } else {
        pod.metadata.name.clone().unwrap_or_default()
    };
    args.extend(["--hostname".into(), hostname]);

    user_args(&pod_sc, &sc, ctx.image_user, &mut args)?;
    security_args(&pod_sc, &sc, &mut args, &mut not_honoured);
    // Which sysctls are allowed is the kubelet's admission
    // (`validation::check`), done before.
    for sysctl in pod_sc.sysctls.iter().flatten() {
        args.extend([
            "--sysctl".into(),
            format!("{}={}", sysctl.name, sysctl.value),
        ]);
    }
    dns_args(ctx, &spec, host_network, &mut args, &mut not_honoured);

    let env = environment(ctx, container, &mut not_honoured)?;
    for (k, v) in &env {
        args.extend(["--env".into(), format!("{k}={v}")]);
    }
    for mount in container.volume_mounts.iter().flatten() {
        let Some(dir) = ctx.volumes.get(&mount.name) else {
            return Err(Refused {
                reason: "CreateContainerConfigError",
                message: format!("volume {} is not prepared on this node", mount.name),
            });
        };
        // No subPath: `validation::check` refuses it.
        let host = dir.clone();
        let ro = if mount.read_only == Some(true) {
            ":ro"
        } else {
            ""
        };
        args.extend([
            "--volume".into(),
            format!("{}:{}{ro}", host.display(), mount.mount_path),
        ]);
    }
    if let Some(dir) = container.working_dir.as_deref() {
        args.extend(["--workdir".into(), dir.to_owned()]);
    }
    if container.resources.as_ref().is_some_and(|r| {
        r.limits.as_ref().is_some_and(|l| !l.is_empty())
            || r.requests.as_ref().is_some_and(|l| !l.is_empty())
    }) {
        not_honoured.push("resources: requests and limits are not enforced".into());
    }
    for (asked, what) in [
        (spec.host_aliases.is_some(), "hostAliases"),
        (
            spec.hostname.is_some() || spec.subdomain.is_some(),
            "hostname and subdomain",
        ),
        (container.lifecycle.is_some(), "lifecycle hooks"),
        (
            container
                .ports
                .iter()
                .flatten()
                .any(|p| p.host_port.is_some()),
            "hostPort",
        ),
    ] {
        if asked {
            not_honoured.push(format!("{what}: not applied"));
        }
    }
    if let Some(probe) = &container.readiness_probe {
        if probe.exec.is_some() || probe.grpc.is_some() {
            not_honoured.push("readinessProbe exec or gRPC: not run, ready once started".into());
        }
        if probe
            .http_get
            .as_ref()
            .is_some_and(|g| g.scheme.as_deref() == Some("HTTPS"))
        {
            not_honoured.push("readinessProbe over HTTPS: checked as a TCP connect".into());
        }
    }
    if container.liveness_probe.is_some() {
        not_honoured.push("livenessProbe: not run (readinessProbe is)".into());
    }
    if container.startup_probe.is_some() {
        not_honoured.push("startupProbe: not run".into());
    }
    if container.image_pull_policy.as_deref() == Some("Always") {
        not_honoured.push("imagePullPolicy Always: the image is taken from local storage".into());
    }

    let expand = |s: &String| expand_refs(s, &env);
    if let Some(command) = container.command.as_ref().filter(|c| !c.is_empty()) {
        let command: Vec<String> = command.iter().map(expand).collect();
        args.extend([
            "--entrypoint".into(),
            serde_json::to_string(&command).unwrap_or_default(),
        ]);
    }
    args.push(container.image.clone().unwrap_or_default());
    args.extend(container.args.iter().flatten().map(expand));
    Ok(ContainerRun { args, not_honoured })
}

/// `--user` and `--group-add`, and the kubelet's `runAsNonRoot` check.
fn user_args(
    pod: &PodSecurityContext,
    c: &SecurityContext,
    image_user: Option<u32>,
    args: &mut Vec<String>,
) -> Result<(), Refused> {
    let uid = c.run_as_user.or(pod.run_as_user);
    let gid = c.run_as_group.or(pod.run_as_group);
    let non_root = c.run_as_non_root.or(pod.run_as_non_root) == Some(true);
    let effective = uid.map(|u| u as u32).or(image_user);
    if non_root {
        match effective {
            Some(0) => {
                return Err(Refused {
                    reason: "CreateContainerConfigError",
                    message: "container has runAsNonRoot and image will run as root".into(),
                });
            }
            None => {
                return Err(Refused {
                    reason: "CreateContainerConfigError",
                    message: "container has runAsNonRoot and image has non-numeric user, cannot verify user is non-root".into(),
                });
            }
            Some(_) => {}
        }
    }
    match (uid, gid) {
        (Some(u), Some(g)) => args.extend(["--user".into(), format!("{u}:{g}")]),
        (Some(u), None) => args.extend(["--user".into(), format!("{u}")]),
        (None, Some(g)) => {
            args.extend(["--user".into(), format!("{}:{g}", image_user.unwrap_or(0))])
        }
        (None, None) => {}
    }
    let groups = pod
        .supplemental_groups
        .iter()
        .flatten()
        .copied()
        .chain(pod.fs_group);
    for g in groups {
        args.extend(["--group-add".into(), g.to_string()]);
    }
    Ok(())
}

/// Capabilities, privilege escalation, read-only root, seccomp.
fn security_args(
    pod: &PodSecurityContext,
    c: &SecurityContext,
    args: &mut Vec<String>,
    not_honoured: &mut Vec<String>,
) {
    if c.privileged == Some(true) {
        args.push("--privileged".into());
    }
    let Capabilities { add, drop } = c.capabilities.clone().unwrap_or_default();
    for cap in drop.iter().flatten() {
        args.extend(["--cap-drop".into(), capability(cap)]);
    }
    for cap in add.iter().flatten() {
        args.extend(["--cap-add".into(), capability(cap)]);
    }
    if c.allow_privilege_escalation == Some(false) {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    if c.read_only_root_filesystem == Some(true) {
        // Kubernetes mounts nothing writable over a read-only root; podman
        // would add tmpfs on /tmp, /run and /var/tmp without the second flag.
        args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    let seccomp = c
        .seccomp_profile
        .as_ref()
        .or(pod.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    match seccomp {
        Some("RuntimeDefault") => {}
        Some("Localhost") => {
            not_honoured.push("seccompProfile Localhost: the runtime's default is used".into())
        }
        // Unset is Unconfined for the kubelet (without --seccomp-default).
        _ => args.extend(["--security-opt".into(), "seccomp=unconfined".into()]),
    }
    if c.se_linux_options.is_some() || pod.se_linux_options.is_some() {
        not_honoured.push("seLinuxOptions: not applied".into());
    }
}

/// `ALL` stays `ALL`; `NET_RAW` becomes `CAP_NET_RAW`.
fn capability(cap: &str) -> String {
    if cap == "ALL" || cap.starts_with("CAP_") {
        cap.to_owned()
    } else {
        format!("CAP_{cap}")
    }
}

/// The pod's `/etc/resolv.conf`, per its `dnsPolicy`.
fn dns_args(
    ctx: &PodContext<'_>,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    host_network: bool,
    args: &mut Vec<String>,
    not_honoured: &mut Vec<String>,
) {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" if !host_network => true,
        "None" => false,
        // `Default`, and ClusterFirst on the host network: the node's
        // resolver. Lab nodes have none (no link to the host's network).
        _ => {
            args.push("--dns=none".into());
            return;
        }
    };
    if cluster_first {
        let ns = ctx.pod.metadata.namespace.as_deref().unwrap_or("default");
        let d = ctx.cluster_domain;
        args.extend(["--dns".into(), ctx.dns.to_string()]);
        for search in [format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_owned()] {
            args.extend(["--dns-search".into(), search]);
        }
        args.extend(["--dns-option".into(), "ndots:5".into()]);
    }
    match spec.dns_config.as_ref() {
        Some(config) => {
            for ns in config.nameservers.iter().flatten() {
                args.extend(["--dns".into(), ns.clone()]);
            }
            for s in config.searches.iter().flatten() {
                args.extend(["--dns-search".into(), s.clone()]);
            }
            for o in config.options.iter().flatten() {
                let option = match &o.value {
                    Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                    None => o.name.clone().unwrap_or_default(),
                };
                args.extend(["--dns-option".into(), option]);
            }
        }
        None if policy == "None" => {
            not_honoured.push("dnsPolicy None without dnsConfig: no resolv.conf".into());
            args.push("--dns=none".into());
        }
        None => {}
    }
}

/// The container's environment as the kubelet builds it: the Service
/// variables first, then `env` in order, each value with `$(VAR)`
/// references to what came before expanded.
pub fn environment(
    ctx: &PodContext<'_>,
    container: &Container,
    not_honoured: &mut Vec<String>,
) -> Result<Vec<(String, String)>, Refused> {
    let mut env: Vec<(String, String)> = Vec::new();
    let enable_links = ctx
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let pod_ns = ctx.pod.metadata.namespace.as_deref().unwrap_or("default");
    for svc in ctx.services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let is_api = ns == "default" && name == "kubernetes";
        if !(is_api || (enable_links && ns == pod_ns)) {
            continue;
        }
        env.extend(service_env(svc));
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_value(ctx, var, &env, not_honoured)? {
            set(&mut env, &var.name, value);
        }
    }
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        not_honoured.push("envFrom: not injected".into());
    }
    Ok(env)
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(entry) => entry.1 = value,
        None => env.push((name.to_owned(), value)),
    }
}

fn env_value(
    ctx: &PodContext<'_>,
    var: &EnvVar,
    env: &[(String, String)],
    not_honoured: &mut Vec<String>,
) -> Result<Option<String>, Refused> {
    if let Some(value) = &var.value {
        return Ok(Some(expand_refs(value, env)));
    }
    let Some(from) = var.value_from.as_ref() else {
        // `name` alone: the variable is set, empty.
        return Ok(Some(String::new()));
    };
    if let Some(field) = &from.field_ref {
        let value = field_value(ctx, &field.field_path);
        if value.is_none() {
            not_honoured.push(format!(
                "env {}: fieldRef {} is not known here",
                var.name, field.field_path
            ));
        }
        return Ok(value);
    }
    // A missing key fails the container, as the kubelet does, unless the
    // reference is optional.
    let keyed = [
        from.secret_key_ref
            .as_ref()
            .map(|k| ("Secret", &k.name, &k.key, k.optional)),
        from.config_map_key_ref
            .as_ref()
            .map(|k| ("ConfigMap", &k.name, &k.key, k.optional)),
    ];
    if let Some((kind, name, key, optional)) = keyed.into_iter().flatten().next() {
        return match (ctx.lookup)(kind, name, key) {
            Some(value) => Ok(Some(value)),
            None if optional == Some(true) => Ok(None),
            None => Err(Refused {
                reason: "CreateContainerConfigError",
                message: format!("couldn't find key {key} in {kind} {name}"),
            }),
        };
    }
    not_honoured.push(format!("env {}: resourceFieldRef is not filled", var.name));
    Ok(None)
}

/// The downward API's `fieldRef` values.
fn field_value(ctx: &PodContext<'_>, path: &str) -> Option<String> {
    let meta = &ctx.pod.metadata;
    let spec = ctx.pod.spec.as_ref();
    let in_map = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map.as_ref()?.get(key).cloned()
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => Some(ctx.node_name.to_owned()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => Some(ctx.pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(ctx.host_ip.to_string()),
        _ if path.starts_with("metadata.labels['") => in_map(&meta.labels, "metadata.labels['"),
        _ if path.starts_with("metadata.annotations['") => {
            in_map(&meta.annotations, "metadata.annotations['")
        }
        _ => None,
    }
}

/// The variables the kubelet sets for a Service with a ClusterIP:
/// `{NAME}_SERVICE_HOST`, `_SERVICE_PORT`, `_SERVICE_PORT_{PORT}` and the
/// Docker-link style `{NAME}_PORT...`.
pub fn service_env(svc: &Service) -> Vec<(String, String)> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    else {
        return Vec::new();
    };
    let name = env_name(svc.metadata.name.as_deref().unwrap_or_default());
    let ports = spec.ports.clone().unwrap_or_default();
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let mut env = vec![
        (format!("{name}_SERVICE_HOST"), ip.to_owned()),
        (format!("{name}_SERVICE_PORT"), first.port.to_string()),
    ];
    for p in &ports {
        if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            env.push((
                format!("{name}_SERVICE_PORT_{}", env_name(port_name)),
                p.port.to_string(),
            ));
        }
    }
    let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
        p.protocol.clone().unwrap_or_else(|| "TCP".into())
    };
    env.push((
        format!("{name}_PORT"),
        format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
    ));
    for p in &ports {
        let prefix = format!("{name}_PORT_{}_{}", p.port, proto(p).to_uppercase());
        env.push((
            prefix.clone(),
            format!("{}://{ip}:{}", proto(p).to_lowercase(), p.port),
        ));
        env.push((format!("{prefix}_PROTO"), proto(p).to_lowercase()));
        env.push((format!("{prefix}_PORT"), p.port.to_string()));
        env.push((format!("{prefix}_ADDR"), ip.to_owned()));
    }
    env
}

fn env_name(name: &str) -> String {
    name.to_uppercase().replace('-', "_")
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an
/// undefined reference is kept as written, `$$` is a literal `$`.
pub fn expand_refs(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn svc(ns: &str, name: &str, ip: &str, port: i32, port_name: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]},
        }))
        .unwrap()
    }

    fn run(
        p: &Pod,
        services: &[Service],
        image_user: Option<u32>,
    ) -> Result<ContainerRun, Refused> {
        let mut volumes = BTreeMap::new();
        volumes.insert("token".to_owned(), PathBuf::from("/run/lab/vol/token"));
        let ctx = PodContext {
            pod: p,
            lab: "nmabcd",
            netns: "nmabcd-n2-p1",
            pod_ip: Ipv4Addr::new(10, 244, 2, 20),
            host_ip: Ipv4Addr::new(198, 18, 0, 2),
            node_name: "node-2",
            services,
            dns: Ipv4Addr::new(10, 96, 0, 10),
            cluster_domain: "cluster.local",
            volumes: &volumes,
            image_user,
            lookup: &|kind, name, key| Some(format!("{kind}/{name}/{key}")),
        };
        let container = p.spec.as_ref().unwrap().containers[0].clone();
        run_args(&ctx, &container)
    }

    fn restricted_agent() -> Pod {
        pod(json!({
            "metadata": {"name": "netmatrix-agent-x1", "namespace": "netmatrix", "labels": {"app": "a"}},
            "spec": {
                "nodeName": "node-2",
                "securityContext": {
                    "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"},
                    "sysctls": [{"name": "net.ipv4.ping_group_range", "value": "65532 65532"}],
                },
                "containers": [{
                    "name": "agent",
                    "image": "localhost/netmatrix:dev",
                    "command": ["/usr/local/bin/netmatrix-agent"],
                    "args": ["--listen=0.0.0.0:9090", "--x=$(NODE_NAME)", "--y=$$(NODE_NAME)"],
                    "env": [
                        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "IPS", "value": "agg=$(NETMATRIX_AGGREGATOR_SERVICE_HOST):$(NETMATRIX_AGGREGATOR_SERVICE_PORT),$(UNDEFINED)"},
                        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    ],
                    "volumeMounts": [{"name": "token", "mountPath": "/var/run/secrets/netmatrix.io", "readOnly": true}],
                    "securityContext": {
                        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "resources": {"limits": {"memory": "128Mi"}},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 9090}},
                }],
            },
        }))
    }

    fn has(args: &[String], pair: &[&str]) -> bool {
        args.windows(pair.len()).any(|w| w == pair)
    }

    #[test]
    fn the_restricted_agent_pod_maps_to_runtime_flags() {
        let services = [
            svc("default", "kubernetes", "10.96.0.1", 443, "https"),
            svc(
                "netmatrix",
                "netmatrix-aggregator",
                "10.96.0.44",
                8080,
                "http",
            ),
            svc("other", "elsewhere", "10.96.0.45", 80, "http"),
        ];
        let run = run(&restricted_agent(), &services, Some(65532)).unwrap();
        let a = &run.args;
        assert!(has(a, &["--network", "ns:/run/netns/nmabcd-n2-p1"]));
        assert!(has(a, &["--user", "65532:65532"]));
        assert!(has(a, &["--cap-drop", "ALL"]));
        assert!(has(a, &["--security-opt", "no-new-privileges"]));
        assert!(has(a, &["--read-only", "--read-only-tmpfs=false"]));
        assert!(!a.iter().any(|x| x == "seccomp=unconfined"));
        assert!(has(
            a,
            &["--sysctl", "net.ipv4.ping_group_range=65532 65532"]
        ));
        assert!(has(a, &["--dns", "10.96.0.10"]));
        assert!(has(a, &["--dns-search", "netmatrix.svc.cluster.local"]));
        assert!(has(a, &["--env", "NODE_NAME=node-2"]));
        assert!(has(a, &["--env", "POD_IP=10.244.2.20"]));
        assert!(has(a, &["--env", "KUBERNETES_SERVICE_HOST=10.96.0.1"]));
        assert!(has(a, &["--env", "KUBERNETES_SERVICE_PORT_HTTPS=443"]));
        assert!(has(a, &["--env", "IPS=agg=10.96.0.44:8080,$(UNDEFINED)"]));
        assert!(has(a, &["--env", "SECRET=Secret/s/k"]));
        assert!(!a.iter().any(|x| x.contains("ELSEWHERE")));
        assert!(has(
            a,
            &[
                "--volume",
                "/run/lab/vol/token:/var/run/secrets/netmatrix.io:ro"
            ]
        ));
        // The command replaces the entrypoint; args follow the image, expanded.
        let image = a
            .iter()
            .position(|x| x == "localhost/netmatrix:dev")
            .unwrap();
        assert_eq!(a[image - 1], r#"["/usr/local/bin/netmatrix-agent"]"#);
        assert_eq!(
            &a[image + 1..],
            ["--listen=0.0.0.0:9090", "--x=node-2", "--y=$(NODE_NAME)"]
        );
        assert_eq!(run.not_honoured.len(), 2, "{:?}", run.not_honoured);
    }

    #[test]
    fn the_kubelets_refusals() {
        let mut root = restricted_agent();
        let sc = root
            .spec
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        sc.run_as_user = Some(0);
        assert_eq!(
            run(&root, &[], Some(65532)).unwrap_err().reason,
            "CreateContainerConfigError"
        );
    }

    #[test]
    fn host_network_pods_get_the_node_and_its_resolver() {
        let p = pod(json!({
            "metadata": {"name": "h", "namespace": "netmatrix"},
            "spec": {"hostNetwork": true, "containers": [{
                "name": "c", "image": "i",
                "securityContext": {"runAsUser": 0, "capabilities": {"drop": ["ALL"], "add": ["NET_RAW"]}},
            }]},
        }));
        let a = run(&p, &[], Some(65532)).unwrap().args;
        assert!(has(a.as_slice(), &["--hostname", "node-2"]));
        assert!(a.iter().any(|x| x == "--dns=none"));
        assert!(has(&a, &["--cap-add", "CAP_NET_RAW"]));
        assert!(has(&a, &["--security-opt", "seccomp=unconfined"]));
        assert!(has(&a, &["--user", "0"]));
        // No command: the image's entrypoint, and no args.
        assert_eq!(a.last().map(String::as_str), Some("i"));
    }

    #[test]
    fn references_expand_like_the_kubelets() {
        let env = [("A".to_owned(), "1".to_owned())];
        assert_eq!(
            expand_refs("$(A)-$(B)-$$(A)-$-$(", &env),
            "1-$(B)-$(A)-$-$("
        );
    }
}
