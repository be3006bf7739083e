//! The iptables rules of the packet-filter faults, computed from the plan
//! (pure, unit-tested) and applied with `iptables -I` / removed with
//! `iptables -D` of the very same rule, so healing removes exactly what the
//! fault added and nothing a concurrent fault added.
//!
//! Every rule is a `DROP` in a node's `filter` table with a comment naming
//! the fault (`iptables -S` in a node shows who put it there). Inserted
//! first in the chain: the lab has no other filter rules today, and a fault
//! must win over any `ACCEPT` added later.
//!
//! Where packets are seen, in a node namespace:
//! - VXLAN's outer UDP packets (port 8472) leave through `OUTPUT` (the vxlan
//!   driver sends them with `ip_local_out`) and arrive through `INPUT`
//!   (the tunnel's UDP socket receives them like any local socket);
//! - the inner pod packets are routed between `cni0` and `flannel.1`
//!   (host-gw: `eth0`) and cross `FORWARD`, after `PREROUTING`'s DNAT: a
//!   Service packet is seen there with its backend's address.

use crate::net::netns::{self, NetnsError};
use crate::net::topology::{
    APISERVER_PORT, NodePlan, Overlay, POD_CIDR, Topology, VXLAN_DEVICE, VXLAN_PORT,
};

use super::{Fault, FaultKind};

/// Largest IP packet the `mtu` fault lets through the overlay: below the pod
/// MTU (1450, the size of the agents' large echoes), above small echoes,
/// DNS answers and TCP handshakes.
pub const MTU_FAULT_LIMIT: u32 = 1200;

/// One `DROP` rule in the `filter` table of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub netns: String,
    /// `INPUT`, `OUTPUT` or `FORWARD`.
    pub chain: &'static str,
    /// The match part, e.g. `-p udp --dport 8472`.
    pub matches: Vec<String>,
    /// Names the fault, for `iptables -S`.
    pub comment: String,
}

impl Rule {
    fn new(node: &NodePlan, chain: &'static str, matches: &[&str], fault: FaultKind) -> Self {
        Rule {
            netns: node.netns.clone(),
            chain,
            matches: matches.iter().map(|s| (*s).to_owned()).collect(),
            comment: format!("netmatrix-lab fault {fault}"),
        }
    }

    /// The iptables arguments for `op` (`-I` to insert, `-D` to delete).
    pub fn args(&self, op: &str) -> Vec<String> {
        let mut args = vec![op.to_owned(), self.chain.to_owned()];
        args.extend(self.matches.iter().cloned());
        args.extend(["-m", "comment", "--comment", &self.comment, "-j", "DROP"].map(str::to_owned));
        args
    }

    /// `-A CHAIN MATCHES -j DROP`, for humans and tests (no comment).
    pub fn render(&self) -> String {
        format!("-A {} {} -j DROP", self.chain, self.matches.join(" "))
    }
}

/// Direction of pod traffic relative to a node's overlay.
#[derive(Debug, Clone, Copy)]
enum Way {
    /// From the node's pods to other nodes' pods.
    Out,
    /// From other nodes' pods to the node's pods.
    In,
}

/// `FORWARD` matches of pod traffic crossing `node`'s overlay: through
/// `flannel.1` (vxlan); through `eth0` between pod subnets (host-gw, where
/// `eth0` also carries the masqueraded traffic to node addresses).
fn overlay_path(overlay: Overlay, node: &NodePlan, way: Way) -> Vec<String> {
    let v: Vec<&str> = match (overlay, way) {
        (Overlay::Vxlan, Way::Out) => vec!["-o", VXLAN_DEVICE],
        (Overlay::Vxlan, Way::In) => vec!["-i", VXLAN_DEVICE],
        (Overlay::HostGw | Overlay::Bgp, Way::Out) => {
            vec!["-o", "eth0", "-s", &node.pod_cidr, "-d", POD_CIDR]
        }
        (Overlay::HostGw | Overlay::Bgp, Way::In) => {
            vec!["-i", "eth0", "-s", POD_CIDR, "-d", &node.pod_cidr]
        }
    };
    v.into_iter().map(str::to_owned).collect()
}

/// The rules of `fault` on `nodes` (its resolved targets, in its order);
/// empty for faults that are not packet filters.
pub fn for_fault(t: &Topology, fault: &Fault, nodes: &[&NodePlan]) -> Vec<Rule> {
    let kind = fault.kind;
    let port = VXLAN_PORT.to_string();
    let vxlan = ["-p", "udp", "--dport", port.as_str()];
    let mut rules = Vec::new();
    match kind {
        FaultKind::VxlanDrop => {
            for n in &t.nodes {
                rules.push(Rule::new(n, "OUTPUT", &vxlan, kind));
                rules.push(Rule::new(n, "INPUT", &vxlan, kind));
            }
        }
        FaultKind::BgpBlock => {
            if let [a, b] = nodes {
                // A firewall on A between A and B's BGP speakers, both
                // directions of port 179 (either side may have opened the
                // session): A's hold timer expires, A closes the session,
                // and both withdraw the other's routes.
                let peer = format!("{}/32", b.ip);
                for port in ["--dport", "--sport"] {
                    let m = ["-s", peer.as_str(), "-p", "tcp", port, "179"];
                    rules.push(Rule::new(a, "INPUT", &m, kind));
                }
            }
        }
        FaultKind::Partition => {
            // Both ends drop, as a firewall between two subnets would: each
            // node stops sending pod traffic to, and accepting it from, every
            // node of the other group. Underlay traffic (host network, and
            // BGP with --overlay bgp) passes.
            let in_group = |n: &NodePlan| nodes.iter().any(|g| g.index == n.index);
            for n in &t.nodes {
                for other in t.nodes.iter().filter(|o| in_group(o) != in_group(n)) {
                    match t.overlay {
                        Overlay::Vxlan => {
                            let ip = format!("{}/32", other.ip);
                            let mut to = vec!["-d", ip.as_str()];
                            to.extend(vxlan);
                            let mut from = vec!["-s", ip.as_str()];
                            from.extend(vxlan);
                            rules.push(Rule::new(n, "OUTPUT", &to, kind));
                            rules.push(Rule::new(n, "INPUT", &from, kind));
                        }
                        Overlay::HostGw | Overlay::Bgp => {
                            let (mine, theirs) = (n.pod_cidr.as_str(), other.pod_cidr.as_str());
                            let to = ["-o", "eth0", "-s", mine, "-d", theirs];
                            let from = ["-i", "eth0", "-s", theirs, "-d", mine];
                            rules.push(Rule::new(n, "FORWARD", &to, kind));
                            rules.push(Rule::new(n, "FORWARD", &from, kind));
                        }
                    }
                }
            }
        }
        FaultKind::OneWay => {
            if let [a, b] = nodes {
                // ICMP echo is a round trip: dropping every packet from A's
                // pods to B's pods would also drop A's replies to B's echoes,
                // and B -> A would fail too. So only what A *initiates* is
                // dropped, in A's FORWARD chain: echo requests (matched by
                // type, because conntrack keeps an ICMP flow alive as long as
                // the pinger reuses its identifier, so `NEW` alone would miss
                // a ping that started before the fault), and the first packet
                // of any other flow (`--ctstate NEW`). B's echoes reach A and
                // A's replies (`ESTABLISHED`) go back.
                let (src, dst) = (a.pod_cidr.as_str(), b.pod_cidr.as_str());
                rules.push(Rule::new(
                    a,
                    "FORWARD",
                    &[
                        "-s",
                        src,
                        "-d",
                        dst,
                        "-p",
                        "icmp",
                        "--icmp-type",
                        "echo-request",
                    ],
                    kind,
                ));
                rules.push(Rule::new(
                    a,
                    "FORWARD",
                    &["-s", src, "-d", dst, "-m", "conntrack", "--ctstate", "NEW"],
                    kind,
                ));
            }
        }
        FaultKind::IcmpDrop | FaultKind::TcpDrop => {
            if let [a, b] = nodes {
                let proto = if fault.kind == FaultKind::IcmpDrop {
                    "icmp"
                } else {
                    "tcp"
                };
                // Each node drops that protocol from its pods to the other's
                // and back, as a filter between the two subnets would.
                for (from, to) in [(a, b), (b, a)] {
                    rules.push(Rule::new(
                        from,
                        "FORWARD",
                        &["-s", &from.pod_cidr, "-d", &to.pod_cidr, "-p", proto],
                        kind,
                    ));
                    rules.push(Rule::new(
                        from,
                        "FORWARD",
                        &["-s", &to.pod_cidr, "-d", &from.pod_cidr, "-p", proto],
                        kind,
                    ));
                }
            }
        }
        FaultKind::Pair => {
            if let [a, b] = nodes {
                // Each node drops what its pods send to the other's pods.
                for (from, to) in [(a, b), (b, a)] {
                    rules.push(Rule::new(
                        from,
                        "FORWARD",
                        &["-s", &from.pod_cidr, "-d", &to.pod_cidr],
                        kind,
                    ));
                }
            }
        }
        FaultKind::Loss => {
            if let [n] = nodes {
                // Only what arrives at the node: of an echo's two packets
                // exactly one arrives there (the request when others ping
                // its pods, the reply when its pods ping others), so echo
                // loss is the given rate both ways, not 1 - 0.7^2 = 51 %.
                let (chain, mut matches) = match t.overlay {
                    Overlay::Vxlan => ("INPUT", vxlan.map(str::to_owned).to_vec()),
                    Overlay::HostGw | Overlay::Bgp => {
                        ("FORWARD", overlay_path(t.overlay, n, Way::In))
                    }
                };
                matches.extend(random_share(fault.value_or_default()));
                let m: Vec<&str> = matches.iter().map(String::as_str).collect();
                rules.push(Rule::new(n, chain, &m, kind));
            }
        }
        FaultKind::UnderlayLoss => {
            if let [n] = nodes {
                // Everything that arrives through the node's link, whatever
                // rides on it: the tunnel's outer packets and the node's own
                // traffic (INPUT), routed pod traffic on host-gw (FORWARD).
                // As with `loss`, only arrivals, so an echo loses at the
                // given rate whichever end sends the request.
                let mut matches = vec!["-i".to_owned(), "eth0".to_owned()];
                matches.extend(random_share(fault.value_or_default()));
                let m: Vec<&str> = matches.iter().map(String::as_str).collect();
                rules.push(Rule::new(n, "INPUT", &m, kind));
                rules.push(Rule::new(n, "FORWARD", &m, kind));
            }
        }
        FaultKind::Mtu => {
            if let [n] = nodes {
                // A path-MTU black hole: big packets vanish both ways
                // without "fragmentation needed", small ones pass.
                let length = format!("{}:65535", MTU_FAULT_LIMIT + 1);
                for way in [Way::Out, Way::In] {
                    let mut matches = overlay_path(t.overlay, n, way);
                    matches.extend(["-m", "length", "--length", &length].map(str::to_owned));
                    let m: Vec<&str> = matches.iter().map(String::as_str).collect();
                    rules.push(Rule::new(n, "FORWARD", &m, kind));
                }
            }
        }
        FaultKind::ApiserverBlock => {
            if let [n] = nodes {
                // FORWARD sees the packet after PREROUTING's DNAT, so this
                // matches 10.96.0.1:443 on its way to the control plane's
                // :6443 only: other ClusterIPs (the aggregator's, also on
                // the control-plane node) and DNS pass. The node's own
                // processes (OUTPUT) are not pods and pass too.
                let cp = format!("{}/32", t.control_plane().ip);
                let port = APISERVER_PORT.to_string();
                rules.push(Rule::new(
                    n,
                    "FORWARD",
                    &["-s", &n.pod_cidr, "-d", &cp, "-p", "tcp", "--dport", &port],
                    kind,
                ));
            }
        }
        _ => {}
    }
    rules
}

/// The match of a random `percent` % of packets.
fn random_share(percent: u32) -> Vec<String> {
    let probability = format!("{:.5}", f64::from(percent) / 100.0);
    [
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        &probability,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Inserts `rules`; on failure removes those already inserted.
pub fn install(rules: &[Rule]) -> Result<(), NetnsError> {
    for (i, rule) in rules.iter().enumerate() {
        if let Err(e) = iptables(rule, "-I") {
            if let Err(undo) = remove(&rules[..i]) {
                tracing::warn!(error = %undo, "rolling back a partly applied fault");
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Deletes `rules`, all of them even after a failure; returns the first
/// failure.
pub fn remove(rules: &[Rule]) -> Result<(), NetnsError> {
    let mut first = None;
    for rule in rules.iter().rev() {
        if let Err(e) = iptables(rule, "-D") {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

fn iptables(rule: &Rule, op: &str) -> Result<(), NetnsError> {
    let args = rule.args(op);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    netns::iptables(&rule.netns, &args).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(nodes: usize, overlay: Overlay) -> Topology {
        Topology::plan("nmabcd", nodes, overlay).unwrap()
    }

    /// `NETNS: -A CHAIN ... -j DROP` per rule.
    fn rendered(t: &Topology, fault: &Fault) -> Vec<String> {
        let nodes = super::super::targets(t, fault).unwrap();
        for_fault(t, fault, &nodes)
            .iter()
            .map(|r| format!("{}: {}", r.netns, r.render()))
            .collect()
    }

    #[test]
    fn vxlan_drop_blocks_udp_8472_both_ways_on_every_node() {
        let t = plan(3, Overlay::Vxlan);
        let r = rendered(&t, &Fault::vxlan_drop());
        assert_eq!(r.len(), 6);
        assert_eq!(r[0], "nmabcd-n1: -A OUTPUT -p udp --dport 8472 -j DROP");
        assert_eq!(r[1], "nmabcd-n1: -A INPUT -p udp --dport 8472 -j DROP");
        assert_eq!(r[5], "nmabcd-n3: -A INPUT -p udp --dport 8472 -j DROP");
    }

    #[test]
    fn partition_drops_vxlan_between_groups_only() {
        let t = plan(4, Overlay::Vxlan);
        let r = rendered(&t, &Fault::partition(&["node-1", "node-2"]));
        // Each node drops to and from the 2 nodes of the other group.
        assert_eq!(r.len(), 4 * 2 * 2);
        assert!(
            r.contains(&"nmabcd-n1: -A OUTPUT -d 198.18.0.3/32 -p udp --dport 8472 -j DROP".into())
        );
        assert!(
            r.contains(&"nmabcd-n1: -A INPUT -s 198.18.0.4/32 -p udp --dport 8472 -j DROP".into())
        );
        assert!(
            r.contains(&"nmabcd-n4: -A INPUT -s 198.18.0.2/32 -p udp --dport 8472 -j DROP".into())
        );
        assert!(
            !r.iter()
                .any(|l| l.starts_with("nmabcd-n1") && l.contains("198.18.0.2/32"))
        );
        assert!(
            !r.iter()
                .any(|l| l.starts_with("nmabcd-n3") && l.contains("198.18.0.4/32"))
        );
    }

    #[test]
    fn routed_partition_drops_pod_traffic_between_groups_not_bgp() {
        for overlay in [Overlay::HostGw, Overlay::Bgp] {
            let t = plan(3, overlay);
            let r = rendered(&t, &Fault::partition(&["node-1"]));
            assert_eq!(
                r,
                [
                    "nmabcd-n1: -A FORWARD -o eth0 -s 10.244.1.0/24 -d 10.244.2.0/24 -j DROP",
                    "nmabcd-n1: -A FORWARD -i eth0 -s 10.244.2.0/24 -d 10.244.1.0/24 -j DROP",
                    "nmabcd-n1: -A FORWARD -o eth0 -s 10.244.1.0/24 -d 10.244.3.0/24 -j DROP",
                    "nmabcd-n1: -A FORWARD -i eth0 -s 10.244.3.0/24 -d 10.244.1.0/24 -j DROP",
                    "nmabcd-n2: -A FORWARD -o eth0 -s 10.244.2.0/24 -d 10.244.1.0/24 -j DROP",
                    "nmabcd-n2: -A FORWARD -i eth0 -s 10.244.1.0/24 -d 10.244.2.0/24 -j DROP",
                    "nmabcd-n3: -A FORWARD -o eth0 -s 10.244.3.0/24 -d 10.244.1.0/24 -j DROP",
                    "nmabcd-n3: -A FORWARD -i eth0 -s 10.244.1.0/24 -d 10.244.3.0/24 -j DROP",
                ],
                "{overlay}"
            );
        }
    }

    #[test]
    fn one_way_drops_only_what_a_initiates_towards_b() {
        let t = plan(3, Overlay::Vxlan);
        let r = rendered(&t, &Fault::one_way("node-2", "node-3"));
        assert_eq!(
            r,
            [
                "nmabcd-n2: -A FORWARD -s 10.244.2.0/24 -d 10.244.3.0/24 -p icmp --icmp-type echo-request -j DROP",
                "nmabcd-n2: -A FORWARD -s 10.244.2.0/24 -d 10.244.3.0/24 -m conntrack --ctstate NEW -j DROP",
            ]
        );
    }

    #[test]
    fn pair_drops_both_ways_at_each_sender() {
        let t = plan(3, Overlay::HostGw);
        let r = rendered(&t, &Fault::pair("node-2", "node-3"));
        assert_eq!(
            r,
            [
                "nmabcd-n2: -A FORWARD -s 10.244.2.0/24 -d 10.244.3.0/24 -j DROP",
                "nmabcd-n3: -A FORWARD -s 10.244.3.0/24 -d 10.244.2.0/24 -j DROP",
            ]
        );
    }

    #[test]
    fn loss_drops_a_share_of_what_arrives() {
        let t = plan(3, Overlay::Vxlan);
        let r = rendered(&t, &Fault::loss("node-2", 30));
        assert_eq!(
            r,
            [
                "nmabcd-n2: -A INPUT -p udp --dport 8472 -m statistic --mode random --probability 0.30000 -j DROP"
            ]
        );
        let t = plan(3, Overlay::HostGw);
        let r = rendered(&t, &Fault::loss("node-3", 5));
        assert_eq!(
            r,
            [
                "nmabcd-n3: -A FORWARD -i eth0 -s 10.244.0.0/16 -d 10.244.3.0/24 -m statistic --mode random --probability 0.05000 -j DROP"
            ]
        );
    }

    #[test]
    fn underlay_loss_drops_a_share_of_everything_arriving_on_the_link() {
        let t = plan(3, Overlay::Vxlan);
        let r = rendered(&t, &Fault::underlay_loss("node-2", 20));
        assert_eq!(
            r,
            [
                "nmabcd-n2: -A INPUT -i eth0 -m statistic --mode random --probability 0.20000 -j DROP",
                "nmabcd-n2: -A FORWARD -i eth0 -m statistic --mode random --probability 0.20000 -j DROP",
            ]
        );
    }

    #[test]
    fn mtu_drops_big_packets_through_the_tunnel_both_ways() {
        let t = plan(3, Overlay::Vxlan);
        let r = rendered(&t, &Fault::mtu("node-2"));
        assert_eq!(
            r,
            [
                "nmabcd-n2: -A FORWARD -o flannel.1 -m length --length 1201:65535 -j DROP",
                "nmabcd-n2: -A FORWARD -i flannel.1 -m length --length 1201:65535 -j DROP",
            ]
        );
        const { assert!(MTU_FAULT_LIMIT < crate::net::topology::POD_MTU) };
    }

    #[test]
    fn apiserver_block_matches_the_endpoint_after_dnat() {
        let t = plan(3, Overlay::Vxlan);
        let r = rendered(&t, &Fault::apiserver_block("node-3"));
        assert_eq!(
            r,
            ["nmabcd-n3: -A FORWARD -s 10.244.3.0/24 -d 198.18.0.1/32 -p tcp --dport 6443 -j DROP"]
        );
    }

    #[test]
    fn rules_insert_and_delete_the_same_spec_with_a_comment() {
        let t = plan(3, Overlay::Vxlan);
        let f = Fault::pair("node-1", "node-2");
        let nodes = super::super::targets(&t, &f).unwrap();
        let rule = &for_fault(&t, &f, &nodes)[0];
        let insert = rule.args("-I");
        let delete = rule.args("-D");
        assert_eq!(insert[0], "-I");
        assert_eq!(delete[0], "-D");
        assert_eq!(insert[1..], delete[1..]);
        assert!(
            insert
                .join(" ")
                .ends_with("-m comment --comment netmatrix-lab fault pair -j DROP")
        );
    }

    #[test]
    fn other_faults_have_no_rules() {
        let t = plan(3, Overlay::Vxlan);
        for f in [
            Fault::overlay_down("node-2"),
            Fault::dns_stop(),
            Fault::underlay_cut("node-2"),
        ] {
            assert!(rendered(&t, &f).is_empty(), "{f}");
        }
    }
}
