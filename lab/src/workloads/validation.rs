//! What the kubelet stand-in checks before it runs a pod. The emulator
//! does not validate pod specs as the API server does, and the lab runs as
//! root: every name or path a client chose that becomes a host path, a
//! mount or a container flag is checked here (the API server's own rules
//! for them), and what would give a container more than the host network
//! agents need is refused.

use std::path::{Component, Path};

use k8s_openapi::api::core::v1::{Pod, Volume};

use super::podman::Refused;
use crate::emulator::cluster::is_dns_label;

/// Capabilities a container may add: the chart's host agent needs
/// `NET_RAW`; `NET_BIND_SERVICE` is in Pod Security's baseline.
const ALLOWED_CAPABILITIES: [&str; 2] = ["NET_RAW", "NET_BIND_SERVICE"];

fn invalid(message: String) -> Refused {
    Refused {
        reason: "CreateContainerConfigError",
        message,
    }
}

/// A relative path without `..` (the API server's rule for `subPath`,
/// item paths and token paths).
fn relative(what: &str, path: &str) -> Result<(), Refused> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {path:?}: must be a relative path without '..'"
        )))
    }
}

/// The sysctls the kubelet allows without `--allowed-unsafe-sysctls`
/// (Kubernetes' "safe" set).
const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// The kubelet's sysctl admission: only the safe set, and no network
/// sysctl on the host network.
fn check_sysctls(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<(), Refused> {
    let host_network = spec.host_network == Some(true);
    let sysctls = spec
        .security_context
        .iter()
        .flat_map(|sc| sc.sysctls.iter().flatten());
    for sysctl in sysctls {
        let message = if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
            format!("unsafe sysctl {:?} is not allowed", sysctl.name)
        } else if host_network && sysctl.name.starts_with("net.") {
            format!(
                "pod with hostNetwork may not set the namespaced sysctl {}",
                sysctl.name
            )
        } else {
            continue;
        };
        return Err(Refused {
            reason: "SysctlForbidden",
            message,
        });
    }
    Ok(())
}

/// Checks `pod` before anything is made for it.
pub fn check(pod: &Pod) -> Result<(), Refused> {
    let Some(spec) = pod.spec.as_ref() else {
        return Err(invalid("the pod has no spec".into()));
    };
    check_sysctls(spec)?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(invalid(
            "initContainers are not supported by the lab".into(),
        ));
    }
    if spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
        return Err(invalid(
            "hostPID and hostIPC are not supported by the lab".into(),
        ));
    }
    for volume in spec.volumes.iter().flatten() {
        check_volume(volume)?;
    }
    for c in &spec.containers {
        // The image is podman's positional argument: never a flag.
        if c.image
            .as_deref()
            .is_none_or(|i| i.is_empty() || i.starts_with('-'))
        {
            return Err(invalid(format!("container {:?}: invalid image", c.name)));
        }
        if !is_dns_label(&c.name) {
            return Err(invalid(format!(
                "container name {:?}: must be a lowercase RFC 1123 label",
                c.name
            )));
        }
        for mount in c.volume_mounts.iter().flatten() {
            let path = &mount.mount_path;
            if !path.starts_with('/') || path.contains([':', ',']) {
                return Err(invalid(format!(
                    "mountPath {path:?}: must be an absolute path without ':' or ','"
                )));
            }
            // A subPath is resolved on the host, where a container may
            // have planted a symlink: not supported rather than risked.
            let sub = mount.sub_path.as_deref().unwrap_or_default();
            let expr = mount.sub_path_expr.as_deref().unwrap_or_default();
            if !sub.is_empty() || !expr.is_empty() {
                return Err(invalid(format!(
                    "volumeMount {}: subPath is not supported by the lab",
                    mount.name
                )));
            }
        }
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            return Err(invalid(
                "privileged containers are not run by the lab (it runs as root)".into(),
            ));
        }
        let added = sc
            .capabilities
            .and_then(|caps| caps.add)
            .unwrap_or_default();
        for cap in added {
            let bare = cap.strip_prefix("CAP_").unwrap_or(&cap);
            if !ALLOWED_CAPABILITIES.contains(&bare) {
                return Err(invalid(format!(
                    "capability {cap} is not granted by the lab (only {})",
                    ALLOWED_CAPABILITIES.join(", ")
                )));
            }
        }
    }
    Ok(())
}

fn check_volume(volume: &Volume) -> Result<(), Refused> {
    if !is_dns_label(&volume.name) {
        return Err(invalid(format!(
            "volume name {:?}: must be a lowercase RFC 1123 label",
            volume.name
        )));
    }
    let items = |items: &Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>| {
        items
            .iter()
            .flatten()
            .try_for_each(|i| relative("items path", &i.path))
    };
    if let Some(cm) = &volume.config_map {
        items(&cm.items)?;
    }
    if let Some(secret) = &volume.secret {
        items(&secret.items)?;
    }
    for source in volume
        .projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten())
    {
        if let Some(token) = &source.service_account_token {
            relative("serviceAccountToken path", &token.path)?;
            // The API server's minimum: shorter would re-mint in a loop.
            if token.expiration_seconds.is_some_and(|s| s < 600) {
                return Err(invalid(
                    "serviceAccountToken expirationSeconds: may not be less than 10 minutes".into(),
                ));
            }
        }
        if let Some(cm) = &source.config_map {
            items(&cm.items)?;
        }
        if let Some(secret) = &source.secret {
            items(&secret.items)?;
        }
        for item in source
            .downward_api
            .iter()
            .flat_map(|d| d.items.iter().flatten())
        {
            relative("downwardAPI path", &item.path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(mut container: serde_json::Value, volumes: serde_json::Value) -> Pod {
        if container.get("image").is_none() {
            container["image"] = json!("i");
        }
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"containers": [container], "volumes": volumes},
        }))
        .unwrap()
    }

    #[test]
    fn paths_names_and_privileges_a_client_chose_are_checked() {
        let ok = pod(
            json!({"name": "c", "securityContext": {"capabilities": {"add": ["NET_RAW"]}},
                   "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/data"}]}),
            json!([{"name": "v", "emptyDir": {}}]),
        );
        assert!(check(&ok).is_ok());
        let refused = [
            pod(
                json!({"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/d", "subPath": "../../etc"}]}),
                json!([{"name": "v", "emptyDir": {}}]),
            ),
            pod(
                json!({"name": "c"}),
                json!([{"name": "../x", "emptyDir": {}}]),
            ),
            pod(
                json!({"name": "c"}),
                json!([{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "/etc/passwd"}}]}}]),
            ),
            pod(
                json!({"name": "c"}),
                json!([{"name": "v", "configMap": {"name": "m", "items": [{"key": "k", "path": "a/../../b"}]}}]),
            ),
            pod(
                json!({"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/d:/etc"}]}),
                json!([]),
            ),
            pod(
                json!({"name": "c", "securityContext": {"privileged": true}}),
                json!([]),
            ),
            pod(
                json!({"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}),
                json!([]),
            ),
            pod(json!({"name": "C/../x"}), json!([])),
            pod(json!({"name": "c", "image": "--volume=/:/h"}), json!([])),
            pod(
                json!({"name": "c"}),
                json!([{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 1}}]}}]),
            ),
        ];
        for p in &refused {
            assert!(check(p).is_err(), "{p:?}");
        }
        let sysctl = |name: &str, host: bool| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p"},
                "spec": {"hostNetwork": host, "containers": [{"name": "c", "image": "i"}],
                         "securityContext": {"sysctls": [{"name": name, "value": "1"}]}},
            }))
            .unwrap()
        };
        assert!(check(&sysctl("net.ipv4.ping_group_range", false)).is_ok());
        assert_eq!(
            check(&sysctl("net.ipv4.ping_group_range", true))
                .unwrap_err()
                .reason,
            "SysctlForbidden"
        );
        assert_eq!(
            check(&sysctl("net.core.somaxconn", false))
                .unwrap_err()
                .reason,
            "SysctlForbidden"
        );
    }
}
