//! The kube-proxy stand-in: iptables DNAT rules for the lab's Services, in a
//! chain of our own in each node's `nat` table, jumped to from `PREROUTING`
//! (traffic from the node's pods) and `OUTPUT` (the node's own processes,
//! the host-network agent), as kube-proxy does.
//!
//! Rules are written with `iptables-restore --noflush`: declaring the chain
//! flushes it, so installing is idempotent and is also how the `dnat` fault
//! heals.

use std::net::Ipv4Addr;

use crate::net::netns::{self, NetnsError};
use crate::net::topology::{
    AGENT_METRICS_PORT, AGENT_SVC, AGGREGATOR_PORT, AGGREGATOR_SVC, APISERVER_PORT, COMPANION_PORT,
    COMPANION_SVC, DELETED_POD, DNS_SVC, KUBERNETES_SVC, NodePlan, Topology,
};

/// The chain holding the lab's service rules in each node's `nat` table.
pub const SERVICES_CHAIN: &str = "NETMATRIX-SERVICES";

/// The content of [`SERVICES_CHAIN`] (iptables-save format), the same on
/// every node, as kube-proxy programs it.
pub fn chain_rules(t: &Topology) -> String {
    rules_with(t, false)
}

/// The rules with [`COMPANION_SVC`] sent to [`DELETED_POD`] only: a stale
/// rule for one Service, as kube-proxy holds when it missed an update.
fn rules_with(t: &Topology, stale_companions: bool) -> String {
    let cp = t.control_plane().ip;
    let mut rules = format!("*nat\n:{SERVICES_CHAIN} - [0:0]\n");
    let one = |to: String| vec![to];
    rules.push_str(&dnat_rules(
        "tcp",
        KUBERNETES_SVC,
        &one(format!("{cp}:{APISERVER_PORT}")),
    ));
    rules.push_str(&dnat_rules(
        "udp",
        DNS_SVC,
        &one(format!("{}:53", t.dns.ip)),
    ));
    rules.push_str(&dnat_rules(
        "tcp",
        DNS_SVC,
        &one(format!("{}:53", t.dns.ip)),
    ));
    rules.push_str(&dnat_rules(
        "tcp",
        AGGREGATOR_SVC,
        &one(format!("{cp}:{AGGREGATOR_PORT}")),
    ));
    let agents: Vec<String> = t
        .nodes
        .iter()
        .map(|node| format!("{}:{AGENT_METRICS_PORT}", node.agent.ip))
        .collect();
    rules.push_str(&dnat_rules("tcp", AGENT_SVC, &agents));
    let companions: Vec<String> = if stale_companions {
        let (ip, port) = DELETED_POD;
        vec![format!("{ip}:{port}")]
    } else {
        t.nodes
            .iter()
            .map(|node| format!("{}:{COMPANION_PORT}", node.companion.ip))
            .collect()
    };
    rules.push_str(&dnat_rules("tcp", COMPANION_SVC, &companions));
    rules.push_str("COMMIT\n");
    rules
}

/// The DNAT rules of one Service port (`proto`, `ip:port`) to `backends`
/// (`ip:port` each), in [`SERVICES_CHAIN`], balanced as kube-proxy does:
/// backend i of n is taken with probability 1/(n-i), the last one
/// unconditionally. No backend, no rule.
pub fn dnat_rules(proto: &str, (ip, port): (Ipv4Addr, u16), backends: &[String]) -> String {
    let n = backends.len();
    let mut rules = String::new();
    for (i, to) in backends.iter().enumerate() {
        let remaining = n - i;
        let extra = if remaining > 1 {
            format!(
                " -m statistic --mode random --probability {:.5}",
                1.0 / remaining as f64
            )
        } else {
            String::new()
        };
        rules.push_str(&format!(
            "-A {SERVICES_CHAIN} -d {ip}/32 -p {proto} -m {proto} --dport {port}{extra} -j DNAT --to-destination {to}\n"
        ));
    }
    rules
}

/// `node`'s rule for the companions' Service goes stale (the
/// `stale-service` fault); [`restore`] heals it.
pub fn stale(t: &Topology, node: &NodePlan) -> Result<(), NetnsError> {
    netns::iptables_restore(&node.netns, &rules_with(t, true))
}

/// Creates the chain and the jumps from `PREROUTING` and `OUTPUT` on `node`.
pub fn install(t: &Topology, node: &NodePlan) -> Result<(), NetnsError> {
    netns::iptables_restore(&node.netns, &chain_rules(t))?;
    for hook in ["PREROUTING", "OUTPUT"] {
        netns::iptables(
            &node.netns,
            &["-t", "nat", "-A", hook, "-j", SERVICES_CHAIN],
        )?;
    }
    Ok(())
}

/// Rewrites the chain's rules on `node` (heals the `dnat` fault).
pub fn restore(t: &Topology, node: &NodePlan) -> Result<(), NetnsError> {
    netns::iptables_restore(&node.netns, &chain_rules(t))
}

/// Empties the chain on `node`: the node's pods lose every Service, as when
/// kube-proxy is down and its rules were flushed.
pub fn flush(node: &NodePlan) -> Result<(), NetnsError> {
    netns::iptables(&node.netns, &["-t", "nat", "-F", SERVICES_CHAIN]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::topology::Overlay;

    #[test]
    fn rules_cover_every_service_and_balance_agents() {
        let t = Topology::plan("nmabcd", 3, Overlay::Vxlan).unwrap();
        let rules = chain_rules(&t);
        assert!(rules.contains(
            "-d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 198.18.0.1:6443"
        ));
        assert!(rules.contains(
            "-d 10.96.0.10/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.244.1.10:53"
        ));
        assert!(rules.contains("--to-destination 198.18.0.1:8080"));
        assert!(rules.contains("--probability 0.33333 -j DNAT --to-destination 10.244.1.2:9090"));
        assert!(rules.contains("--probability 0.50000 -j DNAT --to-destination 10.244.2.2:9090"));
        assert!(rules.contains("--dport 9090 -j DNAT --to-destination 10.244.3.2:9090"));
        assert!(rules.contains(
            "-d 10.96.0.40/32 -p tcp -m tcp --dport 9091 -j DNAT --to-destination 10.244.3.3:9091"
        ));
        assert!(rules.ends_with("COMMIT\n"));
        let stale = rules_with(&t, true);
        assert!(stale.contains(
            "-d 10.96.0.40/32 -p tcp -m tcp --dport 9091 -j DNAT --to-destination 10.244.1.99:9091"
        ));
        assert!(!stale.contains("10.244.3.3:9091"));
    }
}
