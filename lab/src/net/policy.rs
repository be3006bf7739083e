//! NetworkPolicy in the lab, enforced the way an iptables-based CNI plugin
//! enforces it: the emulator stores the policy (the aggregator reads it
//! there), and each selected pod's namespace gets a filter chain admitting
//! what the policy allows and dropping the rest.
//!
//! This is the lab's own, deliberately independent translation (the
//! aggregator's evaluation is not reused: a test must not check a thing
//! against itself). It covers what the lab's tests apply: ingress rules
//! whose peers are `podSelector`s with `matchLabels` (or absent), and ports
//! by number and protocol. Like real CNIs it admits replies to the pod's own
//! connections (only replies: a flow another pod opened before the policy,
//! such as a pinger reusing its ICMP identifier, is cut at once, so the
//! lab's results do not depend on conntrack's memory) and traffic from its
//! own node (the kubelet's probes, the
//! host agent's relay). Egress policies are not enforced; anything else is
//! refused with an error rather than enforced wrongly.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::net::netns::{self, NetnsError};
use crate::net::topology::{NAMESPACE, Topology};

/// The chain in each pod's namespace, jumped to from `INPUT`.
pub const POLICY_CHAIN: &str = "NETMATRIX-POLICY";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "the lab does not enforce {what} (policy {policy}); use podSelector matchLabels peers, numeric ports and Ingress"
    )]
    Unsupported { policy: String, what: &'static str },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// The chain's rules (iptables-save format) for a pod with `labels`, its
/// node's gateway `gateway`, among `pods`; `None` when no policy isolates it.
pub fn chain_rules(
    policies: &[NetworkPolicy],
    labels: &BTreeMap<String, String>,
    gateway: &str,
    pods: &[Pod],
) -> Result<Option<String>, PolicyError> {
    let mut isolating = false;
    let mut rules = format!(
        "*filter\n:{POLICY_CHAIN} - [0:0]\n-A {POLICY_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED --ctdir REPLY -j ACCEPT\n-A {POLICY_CHAIN} -i lo -j ACCEPT\n-A {POLICY_CHAIN} -s {gateway}/32 -j ACCEPT\n"
    );
    for policy in policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(NAMESPACE))
    {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let unsupported = |what| PolicyError::Unsupported {
            policy: name.clone(),
            what,
        };
        let Some(spec) = &policy.spec else { continue };
        if spec.egress.is_some() || spec.policy_types.iter().flatten().any(|t| t == "Egress") {
            return Err(unsupported("egress"));
        }
        if !spec
            .pod_selector
            .as_ref()
            .is_none_or(|s| matches(s, labels))
        {
            continue;
        }
        isolating = true;
        for rule in spec.ingress.iter().flatten() {
            let sources: Vec<String> = match rule.from.as_deref() {
                None | Some([]) => vec![String::new()],
                Some(peers) => {
                    let mut ips = Vec::new();
                    for peer in peers {
                        if peer.ip_block.is_some() || peer.namespace_selector.is_some() {
                            return Err(unsupported("ipBlock or namespaceSelector peers"));
                        }
                        let selector = peer.pod_selector.clone().unwrap_or_default();
                        if selector.match_expressions.is_some() {
                            return Err(unsupported("matchExpressions"));
                        }
                        ips.extend(
                            pods.iter()
                                .filter(|p| p.metadata.namespace.as_deref() == Some(NAMESPACE))
                                .filter(|p| {
                                    matches(
                                        &selector,
                                        &p.metadata.labels.clone().unwrap_or_default(),
                                    )
                                })
                                .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                                .map(|ip| format!(" -s {ip}/32")),
                        );
                    }
                    ips
                }
            };
            let ports: Vec<String> = match rule.ports.as_deref() {
                None | Some([]) => vec![String::new()],
                Some(ports) => {
                    let mut out = Vec::new();
                    for p in ports {
                        let proto = p.protocol.as_deref().unwrap_or("TCP").to_lowercase();
                        match &p.port {
                            None => out.push(format!(" -p {proto}")),
                            Some(IntOrString::Int(n)) => {
                                out.push(format!(" -p {proto} -m {proto} --dport {n}"));
                            }
                            Some(IntOrString::String(_)) => {
                                return Err(unsupported("named ports"));
                            }
                        }
                    }
                    out
                }
            };
            for source in &sources {
                for port in &ports {
                    rules.push_str(&format!("-A {POLICY_CHAIN}{source}{port} -j ACCEPT\n"));
                }
            }
        }
    }
    if !isolating {
        return Ok(None);
    }
    rules.push_str(&format!("-A {POLICY_CHAIN} -j DROP\nCOMMIT\n"));
    Ok(Some(rules))
}

/// Enforces `policies` in every agent and companion pod of `t`: writes each
/// pod's chain (empty when no policy selects it) and the jump to it.
pub fn enforce(t: &Topology, policies: &[NetworkPolicy], pods: &[Pod]) -> Result<(), PolicyError> {
    for node in &t.nodes {
        for plan in [&node.agent, &node.companion] {
            let labels = pods
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(plan.name.as_str()))
                .and_then(|p| p.metadata.labels.clone())
                .unwrap_or_default();
            let gateway = node.gateway.to_string();
            let rules = chain_rules(policies, &labels, &gateway, pods)?
                .unwrap_or_else(|| format!("*filter\n:{POLICY_CHAIN} - [0:0]\nCOMMIT\n"));
            netns::iptables_restore(&plan.netns, &rules)?;
            let jump = ["-C", "INPUT", "-j", POLICY_CHAIN];
            if netns::iptables(&plan.netns, &jump).is_err() {
                netns::iptables(&plan.netns, &["-A", "INPUT", "-j", POLICY_CHAIN])?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn default_deny_drops_all_but_replies_and_the_node() {
        let deny = policy(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": "netmatrix"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        }));
        let rules = chain_rules(&[deny], &BTreeMap::new(), "10.244.2.1", &[])
            .unwrap()
            .unwrap();
        assert!(rules.contains("--ctstate ESTABLISHED,RELATED --ctdir REPLY -j ACCEPT"));
        assert!(rules.contains("-s 10.244.2.1/32 -j ACCEPT"));
        assert!(
            rules.ends_with("-A NETMATRIX-POLICY -j DROP\nCOMMIT\n"),
            "{rules}"
        );
        // Not selected: no chain.
        let other = policy(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "web", "namespace": "netmatrix"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}}
        }));
        assert!(
            chain_rules(&[other], &BTreeMap::new(), "10.244.2.1", &[])
                .unwrap()
                .is_none()
        );
    }
}
