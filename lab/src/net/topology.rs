//! The lab's plan: every name and address, computed from a prefix, a node
//! count and an overlay, with no side effect (unit-tested without root).
//!
//! | what | address / name |
//! |---|---|
//! | underlay switch | namespace `P-sw`, bridge `br0` |
//! | node K | namespace `P-nK`, `eth0` 198.18.0.K/15 (RFC 2544 benchmarking range, never routed) |
//! | node K pod subnet | 10.244.K.0/24 on bridge `cni0` (10.244.K.1) |
//! | agent / companion pod on node K | `P-nK-agent` 10.244.K.2, `P-nK-comp` 10.244.K.3 |
//! | DNS pod | `P-n1-dns` 10.244.1.10 |
//! | API server emulator, aggregator | host network of node 1: 198.18.0.1:6443, 198.18.0.1:8080 |
//! | host-network agent of node K | namespace `P-nK`, pod `netmatrix-host-agent-node-K`, 198.18.0.K, metrics on :9091 |
//! | Services | 10.96.0.1:443 `kubernetes`, 10.96.0.10:53 `kube-dns`, 10.96.0.20:80 `netmatrix-aggregator`, 10.96.0.30:9090 `netmatrix-agent` |

use std::net::Ipv4Addr;

/// Every namespace of a lab starts with this, then random hex: `down --all`
/// only touches prefixes it also finds a state directory for.
pub const PREFIX_START: &str = "nm";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const POD_CIDR: &str = "10.244.0.0/16";
pub const UNDERLAY_CIDR: &str = "198.18.0.0/15";
/// MTU of the nodes' underlay links (`eth0`).
pub const UNDERLAY_MTU: u32 = 1500;
/// What VXLAN adds to every packet: outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;
/// MTU of the pods, `cni0` and `flannel.1`: the underlay's minus VXLAN's
/// overhead, as flannel sets it (1450).
pub const POD_MTU: u32 = UNDERLAY_MTU - VXLAN_OVERHEAD;
pub const VXLAN_DEVICE: &str = "flannel.1";
pub const VXLAN_PORT: u16 = 8472;
pub const APISERVER_PORT: u16 = 6443;
pub const AGGREGATOR_PORT: u16 = 8080;
pub const AGENT_METRICS_PORT: u16 = 9090;
/// Metrics port of the host-network agents: they share the node's namespace
/// with the API server (6443) and the aggregator (8080) on node 1, so not
/// the pod agents' 9090 (which would also work, but reads as a clash).
pub const HOST_AGENT_PORT: u16 = 9091;
/// The companions' port (the chart's companion.port, the agents' default
/// --peer-companion-port): TCP and the UDP echo.
pub const COMPANION_PORT: u16 = 9091;
/// The agents' headless Service (SRV records of the agent pods).
pub const AGENTS_HEADLESS_SVC: &str = "netmatrix-agents";
pub const KUBERNETES_SVC: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 1), 443);
pub const DNS_SVC: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 10), 53);
pub const AGGREGATOR_SVC: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 20), 80);
pub const AGENT_SVC: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 30), AGENT_METRICS_PORT);
/// A Service over every companion pod, which every agent checks: an
/// ordinary multi-backend Service (the `stale-service` fault's).
pub const COMPANION_SVC: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 40), COMPANION_PORT);
/// Where `stale-service` points a node's rule for [`COMPANION_SVC`]: a pod
/// address no pod has (the endpoint was deleted, kube-proxy missed it).
pub const DELETED_POD: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 99), COMPANION_PORT);
pub const DNS_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
/// Kubernetes namespace of the netmatrix pods.
pub const NAMESPACE: &str = "netmatrix";
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Largest supported node count (node K uses 10.244.K.0/24 and 198.18.0.K).
pub const MAX_NODES: usize = 200;

/// How nodes reach each other's pod subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Overlay {
    /// flannel-style VXLAN (`flannel.1`, UDP 8472) with static FDB and neighbour entries.
    Vxlan,
    /// Plain routes over the underlay, as flannel host-gw sets them.
    HostGw,
    /// The same routes, learned from BIRD in an iBGP full mesh, as Calico's
    /// default (no encapsulation) has them.
    Bgp,
}

impl std::fmt::Display for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overlay::Vxlan => "vxlan",
            Overlay::HostGw => "host-gw",
            Overlay::Bgp => "bgp",
        })
    }
}

/// A pod with its own network namespace, joined to its node's `cni0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// Kubernetes pod name.
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// One node of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// 1-based index.
    pub index: u8,
    /// Kubernetes node name, `node-K`.
    pub name: String,
    pub netns: String,
    /// Underlay address on `eth0`.
    pub ip: Ipv4Addr,
    /// The switch-side end of the node's veth pair (in the switch namespace).
    pub switch_veth: String,
    /// `10.244.K.0/24`.
    pub pod_cidr: String,
    /// `cni0`'s address, the pods' gateway.
    pub gateway: Ipv4Addr,
    /// `flannel.1`'s address, `10.244.K.0`.
    pub vtep_ip: Ipv4Addr,
    /// `flannel.1`'s fixed MAC (flanneld publishes it in a node annotation).
    pub vtep_mac: String,
    pub agent: PodPlan,
    pub companion: PodPlan,
    /// Pod name of the node's host-network agent (it runs in `netns`, with
    /// the node's address).
    pub host_agent: String,
}

impl NodePlan {
    /// Node `k` (1-based) of the lab `prefix`.
    pub fn new(prefix: &str, k: u8) -> Self {
        let netns = format!("{prefix}-n{k}");
        let name = format!("node-{k}");
        let pod = |kind: &str, pod_name: String, host: u8| PodPlan {
            name: pod_name,
            netns: format!("{netns}-{kind}"),
            ip: Ipv4Addr::new(10, 244, k, host),
        };
        NodePlan {
            index: k,
            agent: pod("agent", format!("netmatrix-agent-{name}"), 2),
            companion: pod("comp", format!("netmatrix-companion-{name}"), 3),
            host_agent: format!("netmatrix-host-agent-{name}"),
            ip: Ipv4Addr::new(198, 18, 0, k),
            switch_veth: format!("vn{k}"),
            pod_cidr: format!("10.244.{k}.0/24"),
            gateway: Ipv4Addr::new(10, 244, k, 1),
            vtep_ip: Ipv4Addr::new(10, 244, k, 0),
            vtep_mac: format!("0e:00:00:00:00:{k:02x}"),
            name,
            netns,
        }
    }

    /// Pods of this node that carry the agent's probe-target label.
    pub fn probe_targets(&self) -> [&PodPlan; 2] {
        [&self.agent, &self.companion]
    }

    /// The agent pod's own name in the agents' headless Service
    /// (`10-244-2-2.netmatrix-agents.netmatrix.svc.cluster.local`), under
    /// which CoreDNS serves its A record and which its SRV records target.
    pub fn agent_dns_name(&self) -> String {
        format!(
            "{}.{AGENTS_HEADLESS_SVC}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}",
            self.agent.ip.to_string().replace('.', "-")
        )
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub prefix: String,
    pub overlay: Overlay,
    pub switch_netns: String,
    pub nodes: Vec<NodePlan>,
    /// The cluster DNS pod, on node 1.
    pub dns: PodPlan,
    /// Whether the nodes' agent and companion pods are part of the plan
    /// (the process mode). Off, a container runtime creates the pods the
    /// cluster's workloads ask for, with sandboxes of its own.
    pub netmatrix_pods: bool,
}

/// A plan that cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--nodes {0}: a lab has 1 to {MAX_NODES} nodes")]
    NodeCount(usize),
    #[error(
        "prefix {0:?}: expected `{PREFIX_START}` followed by 4 to 6 lowercase hex digits, e.g. nm3fa2c"
    )]
    Prefix(String),
}

/// A node that cannot leave the plan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RemoveError {
    #[error("no node {0} in this lab")]
    Unknown(String),
    #[error(
        "{0} is the control plane (API server, aggregator, DNS): it cannot be removed; remove another node"
    )]
    ControlPlane(String),
}

/// A fresh random prefix, `nm` + 6 hex digits: unique enough that parallel
/// labs (tests) never collide.
pub fn random_prefix() -> String {
    format!("{PREFIX_START}{:06x}", rand::random::<u32>() & 0x00ff_ffff)
}

/// Whether `s` looks like a lab prefix (`nm` + 4 to 6 lowercase hex digits).
pub fn is_prefix(s: &str) -> bool {
    s.strip_prefix(PREFIX_START).is_some_and(|hex| {
        (4..=6).contains(&hex.len())
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// The prefix of a lab namespace name (`nm3fa2c-n1-agent` -> `nm3fa2c`).
pub fn prefix_of(netns: &str) -> Option<&str> {
    let (prefix, _) = netns.split_once('-')?;
    is_prefix(prefix).then_some(prefix)
}

impl Topology {
    pub fn plan(prefix: &str, nodes: usize, overlay: Overlay) -> Result<Self, PlanError> {
        if !is_prefix(prefix) {
            return Err(PlanError::Prefix(prefix.to_string()));
        }
        if nodes == 0 || nodes > MAX_NODES {
            return Err(PlanError::NodeCount(nodes));
        }
        let nodes = (1..=nodes as u8)
            .map(|k| NodePlan::new(prefix, k))
            .collect();
        Ok(Topology {
            prefix: prefix.to_string(),
            overlay,
            switch_netns: format!("{prefix}-sw"),
            dns: PodPlan {
                name: "coredns".to_string(),
                netns: format!("{prefix}-n1-dns"),
                ip: DNS_POD_IP,
            },
            netmatrix_pods: true,
            nodes,
        })
    }

    /// The companion pod of node `node` after `generation` re-creations
    /// (1, 2, ...): same namespace name, a new pod name and address
    /// (10.244.K.20 onwards, clear of the agent .2, companion .3, DNS .10).
    pub fn recreated_companion(node: &NodePlan, generation: u32) -> PodPlan {
        let host = 20 + (generation.saturating_sub(1) % 200) as u8;
        PodPlan {
            name: format!("netmatrix-companion-{}-{generation}", node.name),
            netns: node.companion.netns.clone(),
            ip: Ipv4Addr::new(10, 244, node.index, host),
        }
    }

    /// Replaces node `index`'s companion pod in the plan.
    pub fn set_companion(&mut self, index: u8, pod: PodPlan) -> bool {
        match self.nodes.iter_mut().find(|n| n.index == index) {
            Some(n) => {
                n.companion = pod;
                true
            }
            None => false,
        }
    }

    /// Plans a node joining the cluster: the lowest free index, so that a
    /// node removed and added again gets the same name and addresses, as a
    /// re-provisioned machine would. The caller builds it, then commits it
    /// with [`Topology::insert_node`].
    pub fn next_node(&self) -> Result<NodePlan, PlanError> {
        let free = (1..=MAX_NODES as u8).find(|k| self.nodes.iter().all(|n| n.index != *k));
        match free {
            Some(k) => Ok(NodePlan::new(&self.prefix, k)),
            None => Err(PlanError::NodeCount(self.nodes.len() + 1)),
        }
    }

    /// Adds a planned node, keeping the nodes in index order.
    pub fn insert_node(&mut self, node: NodePlan) {
        let at = self.nodes.partition_point(|n| n.index < node.index);
        self.nodes.insert(at, node);
    }

    /// Takes a node out of the plan. Node 1 (the control plane) stays.
    pub fn remove_node(&mut self, name: &str) -> Result<NodePlan, RemoveError> {
        let at = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| RemoveError::Unknown(name.to_owned()))?;
        if self.nodes[at].index == 1 {
            return Err(RemoveError::ControlPlane(name.to_owned()));
        }
        Ok(self.nodes.remove(at))
    }

    /// Node 1: the control plane (API server, aggregator, DNS pod).
    pub fn control_plane(&self) -> &NodePlan {
        &self.nodes[0]
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Pod namespaces of node `n` (the DNS pod lives on node 1).
    pub fn pods_of<'a>(&'a self, n: &'a NodePlan) -> Vec<&'a PodPlan> {
        let mut pods = Vec::new();
        if self.netmatrix_pods {
            pods.extend([&n.agent, &n.companion]);
        }
        if n.index == 1 {
            pods.push(&self.dns);
        }
        pods
    }

    /// Every namespace, in creation order (switch, nodes, pods); delete in
    /// reverse.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.switch_netns.clone()];
        all.extend(self.nodes.iter().map(|n| n.netns.clone()));
        for n in &self.nodes {
            all.extend(self.pods_of(n).iter().map(|p| p.netns.clone()));
        }
        all
    }

    /// `https://198.18.0.1:6443`: the API server as host-network processes see it.
    pub fn apiserver_node_url(&self) -> String {
        format!("https://{}:{APISERVER_PORT}", self.control_plane().ip)
    }

    /// `https://10.96.0.1:443`: the API server as pods see it.
    pub fn apiserver_service_url(&self) -> String {
        format!("https://{}:{}", KUBERNETES_SVC.0, KUBERNETES_SVC.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_and_addresses_follow_the_design() {
        let t = Topology::plan("nm00abcde", 3, Overlay::Vxlan);
        assert!(t.is_err(), "7 hex digits is not a prefix");
        let t = Topology::plan("nmabcdef", 3, Overlay::Vxlan).unwrap();
        assert_eq!(t.switch_netns, "nmabcdef-sw");
        let n2 = t.node("node-2").unwrap();
        assert_eq!(n2.netns, "nmabcdef-n2");
        assert_eq!(n2.ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(n2.agent.ip, Ipv4Addr::new(10, 244, 2, 2));
        assert_eq!(n2.agent.netns, "nmabcdef-n2-agent");
        assert_eq!(n2.agent.name, "netmatrix-agent-node-2");
        assert_eq!(n2.companion.ip, Ipv4Addr::new(10, 244, 2, 3));
        assert_eq!(n2.companion.name, "netmatrix-companion-node-2");
        assert_eq!(n2.vtep_mac, "0e:00:00:00:00:02");
        assert_eq!(n2.pod_cidr, "10.244.2.0/24");
        assert_eq!(t.dns.netns, "nmabcdef-n1-dns");
        assert_eq!(t.apiserver_node_url(), "https://198.18.0.1:6443");
        assert_eq!(n2.host_agent, "netmatrix-host-agent-node-2");
        assert_eq!(
            n2.agent_dns_name(),
            "10-244-2-2.netmatrix-agents.netmatrix.svc.cluster.local"
        );
        assert_eq!(POD_MTU, 1450);
    }

    #[test]
    fn every_namespace_and_address_is_unique_and_prefixed() {
        let t = Topology::plan("nm1234", 5, Overlay::HostGw).unwrap();
        let ns = t.namespaces();
        assert_eq!(ns.len(), 1 + 5 + 5 * 2 + 1);
        assert_eq!(ns.iter().collect::<BTreeSet<_>>().len(), ns.len());
        assert!(ns.iter().all(|n| prefix_of(n) == Some("nm1234")));
        let mut ips: Vec<Ipv4Addr> = t.nodes.iter().map(|n| n.ip).collect();
        for n in &t.nodes {
            ips.extend(t.pods_of(n).iter().map(|p| p.ip));
            ips.extend([n.gateway, n.vtep_ip]);
        }
        assert_eq!(ips.iter().collect::<BTreeSet<_>>().len(), ips.len());
        // Interface names must fit IFNAMSIZ (15 characters).
        for n in &t.nodes {
            assert!(n.switch_veth.len() <= 15);
        }
    }

    #[test]
    fn random_prefixes_are_valid_and_differ() {
        let prefixes: BTreeSet<String> = (0..50).map(|_| random_prefix()).collect();
        assert!(prefixes.len() > 45);
        assert!(prefixes.iter().all(|p| is_prefix(p)));
        assert!(!is_prefix("nmXYZW"));
        assert!(!is_prefix("docker0"));
        assert_eq!(prefix_of("nmab12-n1-agent"), Some("nmab12"));
        assert_eq!(prefix_of("nmab12"), None);
        assert_eq!(prefix_of("cni-1234"), None);
    }

    #[test]
    fn recreated_companions_get_new_names_and_addresses() {
        let mut t = Topology::plan("nmabcd", 3, Overlay::Vxlan).unwrap();
        let n2 = t.node("node-2").unwrap().clone();
        let p1 = Topology::recreated_companion(&n2, 1);
        assert_eq!(p1.name, "netmatrix-companion-node-2-1");
        assert_eq!(p1.ip, Ipv4Addr::new(10, 244, 2, 20));
        assert_eq!(p1.netns, n2.companion.netns);
        assert_eq!(Topology::recreated_companion(&n2, 200).ip.octets()[3], 219);
        assert_eq!(Topology::recreated_companion(&n2, 201).ip.octets()[3], 20);
        assert!(t.set_companion(2, p1.clone()));
        assert_eq!(t.node("node-2").unwrap().companion, p1);
        assert!(!t.set_companion(9, p1));
    }

    #[test]
    fn nodes_join_at_the_lowest_free_index_and_leave() {
        let mut t = Topology::plan("nmabcdef", 3, Overlay::Vxlan).unwrap();
        let first = t.clone();
        let n4 = t.next_node().unwrap();
        assert_eq!(
            (n4.name.as_str(), n4.index, n4.ip),
            ("node-4", 4, Ipv4Addr::new(198, 18, 0, 4))
        );
        assert_eq!(
            n4,
            NodePlan::new("nmabcdef", 4),
            "planned like node 4 of a 4-node lab"
        );
        t.insert_node(n4.clone());
        assert_eq!(t, Topology::plan("nmabcdef", 4, Overlay::Vxlan).unwrap());

        assert_eq!(t.remove_node("node-2").unwrap().index, 2);
        // node-2's index is free again: a node joining now takes it.
        let again = t.next_node().unwrap();
        assert_eq!(again.name, "node-2");
        t.insert_node(again);
        let order: Vec<u8> = t.nodes.iter().map(|n| n.index).collect();
        assert_eq!(order, [1, 2, 3, 4]);
        assert!(t.namespaces().contains(&"nmabcdef-n4-agent".to_string()));

        t.remove_node("node-4").unwrap();
        assert_eq!(t, first);
        assert!(
            !t.namespaces()
                .iter()
                .any(|ns| ns.starts_with("nmabcdef-n4"))
        );
        assert_eq!(
            t.remove_node("node-1"),
            Err(RemoveError::ControlPlane("node-1".into()))
        );
        assert_eq!(
            t.remove_node("node-9"),
            Err(RemoveError::Unknown("node-9".into()))
        );
    }

    #[test]
    fn a_full_lab_has_no_room_for_a_node() {
        let t = Topology::plan("nmabcdef", MAX_NODES, Overlay::HostGw).unwrap();
        assert_eq!(t.next_node(), Err(PlanError::NodeCount(MAX_NODES + 1)));
    }

    #[test]
    fn node_count_is_bounded() {
        assert_eq!(
            Topology::plan("nmabcd", 0, Overlay::Vxlan),
            Err(PlanError::NodeCount(0))
        );
        assert!(Topology::plan("nmabcd", MAX_NODES + 1, Overlay::Vxlan).is_err());
        assert!(Topology::plan("nmabcd", MAX_NODES, Overlay::Vxlan).is_ok());
    }
}
