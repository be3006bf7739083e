//! The kube-proxy stand-in for stored Services: the endpoints controller's
//! part (ready pods matching each selector, target ports resolved by name)
//! and kube-proxy's (iptables DNAT with random balancing), as the rules of
//! [`SERVICES_CHAIN`] that every node gets.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::net::services::{SERVICES_CHAIN, dnat_rules};

/// Endpoints of Services without a selector, which their owner keeps (the
/// API server its own `default/kubernetes`), by `(namespace, name)`.
pub type ManualEndpoints = BTreeMap<(String, String), Vec<SocketAddr>>;

/// The chain's content (iptables-restore format) for `services` over `pods`.
pub fn chain_rules(services: &[Service], pods: &[Pod], manual: &ManualEndpoints) -> String {
    let mut rules = format!("*nat\n:{SERVICES_CHAIN} - [0:0]\n");
    let mut services: Vec<&Service> = services.iter().collect();
    services.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let manual = manual.get(&(ns.clone(), name));
        for port in spec.ports.iter().flatten() {
            // A client's string goes into iptables-restore input: only the
            // protocols a Service may have.
            let proto = port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
            if !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
                continue;
            }
            let backends: Vec<SocketAddr> = match (manual, spec.selector.as_ref()) {
                (Some(addrs), _) => addrs.clone(),
                (None, Some(selector)) if !selector.is_empty() => pods
                    .iter()
                    .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
                    .filter(|p| selected(p, selector) && ready(p))
                    .filter_map(|p| backend(p, port))
                    .collect(),
                _ => Vec::new(),
            };
            let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() else {
                continue;
            };
            let Ok(port_number) = u16::try_from(port.port) else {
                continue;
            };
            let backends: Vec<String> = backends.iter().map(ToString::to_string).collect();
            rules.push_str(&dnat_rules(&proto, (ip, port_number), &backends));
            // No endpoint, no rule: the connection times out where
            // kube-proxy's filter rule would refuse it at once.
        }
    }
    rules.push_str("COMMIT\n");
    rules
}

fn selected(pod: &Pod, selector: &BTreeMap<String, String>) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Running, Ready, an address, not being deleted.
pub fn ready(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Running")
        && status.pod_ip.is_some()
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The pod's address and the Service port's target (a number, or a
/// container port's name; the pod has no such port: no endpoint).
fn backend(pod: &Pod, port: &ServicePort) -> Option<SocketAddr> {
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    let target = match &port.target_port {
        None => port.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => {
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP")
                            == port.protocol.as_deref().unwrap_or("TCP")
                })?
                .container_port
        }
    };
    Some(SocketAddr::new(ip, u16::try_from(target).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "netmatrix", "labels": {"app": "agg"}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 9440}]}]},
            "status": {"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    #[test]
    fn ready_pods_behind_named_ports_and_the_api_servers_own() {
        let services: Vec<Service> = serde_json::from_value(json!([
            {"metadata": {"name": "agg", "namespace": "netmatrix"},
             "spec": {"clusterIP": "10.96.0.44", "selector": {"app": "agg"},
                      "ports": [{"port": 8080, "targetPort": "http", "protocol": "TCP"}]}},
            {"metadata": {"name": "kubernetes", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 443}]}},
            {"metadata": {"name": "headless", "namespace": "netmatrix"},
             "spec": {"clusterIP": "None", "selector": {"app": "agg"}, "ports": [{"port": 1}]}},
            {"metadata": {"name": "empty", "namespace": "netmatrix"},
             "spec": {"clusterIP": "10.96.0.50", "selector": {"app": "none"}, "ports": [{"port": 80}]}},
        ]))
        .unwrap();
        let pods = [
            pod("a", "10.244.1.20", true),
            pod("b", "10.244.2.20", true),
            pod("c", "10.244.3.20", false),
        ];
        let mut manual = ManualEndpoints::new();
        manual.insert(
            ("default".into(), "kubernetes".into()),
            vec!["198.18.0.1:6443".parse().unwrap()],
        );
        let rules = chain_rules(&services, &pods, &manual);
        assert!(rules.contains("-d 10.96.0.44/32 -p tcp -m tcp --dport 8080 -m statistic --mode random --probability 0.50000 -j DNAT --to-destination 10.244.1.20:9440"));
        assert!(rules.contains("--dport 8080 -j DNAT --to-destination 10.244.2.20:9440"));
        assert!(!rules.contains("10.244.3.20"));
        assert!(rules.contains(
            "-d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 198.18.0.1:6443"
        ));
        assert!(!rules.contains("10.96.0.50"));
        assert!(!rules.contains("headless"));
        assert!(rules.ends_with("COMMIT\n"));
    }
}
