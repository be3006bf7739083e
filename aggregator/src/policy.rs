//! Kubernetes NetworkPolicy semantics: whether a probe from one pod to
//! another is allowed by the policies that select them.
//!
//! As the API defines it (networking.k8s.io/v1):
//! - a pod is *isolated for ingress* when a policy in its namespace selects
//!   it (`podSelector`) with `Ingress` in its `policyTypes` (the default), and
//!   for egress likewise with `Egress` (the default when it has `egress`
//!   rules); traffic is allowed when it is allowed both at the source's
//!   egress and at the destination's ingress; a non-isolated direction
//!   allows everything;
//! - an isolated pod admits what *any* of its policies' rules allows (rules
//!   add up, nothing denies explicitly); a rule matches when one of its
//!   peers matches (none: every peer) and one of its ports matches (none:
//!   every port and protocol);
//! - a peer is a `podSelector` (pods of the policy's namespace), a
//!   `namespaceSelector` (every pod of the matching namespaces), both (pods
//!   matching the one in namespaces matching the other), or an `ipBlock`
//!   (`cidr` minus `except`);
//! - a port names a protocol (TCP by default) and a number, a range
//!   (`endPort`), a name, or nothing (every port of that protocol). ICMP
//!   has no port: only a rule without `ports` allows it.
//!
//! A named port is resolved against the destination's container ports when
//! given; one that cannot be resolved is taken to match (a probe is never
//! said to be blocked on a guess).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A probe's protocol and destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Probe {
    Icmp,
    Tcp(u16),
    Udp(u16),
}

impl Probe {
    /// The protocol's name as NetworkPolicy spells it (`ICMP` for ours).
    pub fn protocol(self) -> &'static str {
        match self {
            Probe::Icmp => "ICMP",
            Probe::Tcp(_) => "TCP",
            Probe::Udp(_) => "UDP",
        }
    }
}

/// One end of a probe.
#[derive(Debug, Clone)]
pub struct Endpoint<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub ip: IpAddr,
    /// Container port names to numbers (for named ports in policies).
    pub named_ports: &'a BTreeMap<String, u16>,
}

/// What the policies say of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Denied: the policies (`namespace/name`) that isolate the side that
    /// refuses it, none of which allows it.
    Denied(Vec<String>),
}

/// The policies of a cluster (or of the namespaces that matter) and the
/// labels of its namespaces.
#[derive(Debug, Default, Clone)]
pub struct Policies {
    pub policies: Vec<NetworkPolicy>,
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// The namespace of netmatrix's pods.
    pub namespace: String,
}

impl Policies {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether `probe` from `src` to `dst` is allowed.
    pub fn verdict(&self, src: &Endpoint, dst: &Endpoint, probe: Probe) -> Verdict {
        let mut denied = Vec::new();
        for (direction, selected, other) in [
            (Direction::Egress, src, dst),
            (Direction::Ingress, dst, src),
        ] {
            let isolating: Vec<&NetworkPolicy> = self
                .policies
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(selected.namespace))
                .filter(|p| applies(p, direction))
                .filter(|p| {
                    p.spec
                        .as_ref()
                        // An absent podSelector is the empty one: every pod.
                        .is_some_and(|s| {
                            s.pod_selector
                                .as_ref()
                                .is_none_or(|sel| selector_matches(sel, selected.labels))
                        })
                })
                .collect();
            if isolating.is_empty() {
                continue;
            }
            let allowed = isolating
                .iter()
                .any(|p| self.allows(p, direction, other, dst, probe));
            if !allowed {
                denied.extend(isolating.iter().map(|p| name_of(p)));
            }
        }
        if denied.is_empty() {
            Verdict::Allowed
        } else {
            denied.sort();
            denied.dedup();
            Verdict::Denied(denied)
        }
    }

    /// Whether one of `policy`'s rules in `direction` allows the probe with
    /// `peer` at the other end (`dst` holds the named ports).
    fn allows(
        &self,
        policy: &NetworkPolicy,
        direction: Direction,
        peer: &Endpoint,
        dst: &Endpoint,
        probe: Probe,
    ) -> bool {
        let Some(spec) = &policy.spec else {
            return false;
        };
        let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
        let rules: Vec<Rule> = match direction {
            Direction::Ingress => spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                .collect(),
            Direction::Egress => spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                .collect(),
        };
        rules.into_iter().any(|(peers, ports)| {
            let peer_ok = match peers {
                None => true,
                Some(peers) if peers.is_empty() => true,
                Some(peers) => peers.iter().any(|p| self.peer_matches(p, namespace, peer)),
            };
            let port_ok = match ports {
                None => true,
                Some(ports) if ports.is_empty() => true,
                Some(ports) => ports.iter().any(|p| port_matches(p, probe, dst)),
            };
            peer_ok && port_ok
        })
    }

    fn peer_matches(&self, peer: &NetworkPolicyPeer, policy_ns: &str, pod: &Endpoint) -> bool {
        if let Some(block) = &peer.ip_block {
            let inside = cidr_contains(&block.cidr, pod.ip).unwrap_or(false);
            let excepted = block
                .except
                .iter()
                .flatten()
                .any(|e| cidr_contains(e, pod.ip).unwrap_or(false));
            return inside && !excepted;
        }
        let namespace_ok = match &peer.namespace_selector {
            // Without a namespaceSelector, the policy's own namespace.
            None => pod.namespace == policy_ns,
            Some(selector) => {
                let empty = BTreeMap::new();
                let labels = self.namespace_labels.get(pod.namespace).unwrap_or(&empty);
                selector_matches(selector, &with_name_label(labels, pod.namespace))
            }
        };
        let pod_ok = peer
            .pod_selector
            .as_ref()
            .is_none_or(|s| selector_matches(s, pod.labels));
        namespace_ok && pod_ok
    }
}

/// The pods of one probe path as the policies see them: each node's agent
/// (the source of every probe) and the probe targets (agents, and the
/// companions, which carry their release's labels with
/// `app.kubernetes.io/component: companion`).
#[derive(Debug, Clone)]
pub struct Screen {
    policies: Arc<Policies>,
    namespace: String,
    /// Each node's pod agent: labels, named container ports.
    agents: BTreeMap<String, PodSide>,
    /// Agent pod name -> node, to tell an agent target from a companion.
    agent_pods: BTreeMap<String, String>,
}

/// What the screen says of a failing probe.
pub type Denial = Vec<String>;

impl Screen {
    /// The screen of `policies` over the pod-network agents, each given as
    /// (node, pod name, labels, named container ports); `None` when no
    /// policy exists: nothing to screen.
    pub fn new<'a>(
        policies: &PolicySet,
        agents: impl IntoIterator<Item = (&'a str, &'a str, &'a Labels, &'a NamedPorts)>,
    ) -> Option<Screen> {
        let policies = policies.0.clone();
        if policies.is_empty() {
            return None;
        }
        let mut agent_sides = BTreeMap::new();
        let mut agent_pods = BTreeMap::new();
        for (node, pod, labels, ports) in agents {
            agent_sides.insert(node.to_owned(), (labels.clone(), ports.clone()));
            agent_pods.insert(pod.to_owned(), node.to_owned());
        }
        let agents = agent_sides;
        Some(Screen {
            namespace: policies.namespace.clone(),
            policies,
            agents,
            agent_pods,
        })
    }

    /// The policies that deny `probe` from `from`'s agent (at `src_ip`) to
    /// the pod `pod` at `ip` (an agent by name, else a companion); `None`
    /// when allowed or when the pods are not known.
    pub fn denied(
        &self,
        from: &str,
        src_ip: IpAddr,
        pod: &str,
        ip: IpAddr,
        probe: Probe,
    ) -> Option<Denial> {
        let (src_labels, src_ports) = self.agents.get(from)?;
        let src = Endpoint {
            namespace: &self.namespace,
            labels: src_labels,
            ip: src_ip,
            named_ports: src_ports,
        };
        let companion;
        let (dst_labels, dst_ports) = match self.agent_pods.get(pod) {
            Some(node) => {
                let (labels, ports) = self.agents.get(node)?;
                (labels, ports)
            }
            None => {
                let mut labels = src_labels.clone();
                labels.insert(
                    netmatrix_api::labels::COMPONENT.to_owned(),
                    netmatrix_api::labels::COMPONENT_COMPANION.to_owned(),
                );
                companion = labels;
                (&companion, src_ports)
            }
        };
        let dst = Endpoint {
            namespace: &self.namespace,
            labels: dst_labels,
            ip,
            named_ports: dst_ports,
        };
        match self.policies.verdict(&src, &dst, probe) {
            Verdict::Allowed => None,
            Verdict::Denied(names) => Some(names),
        }
    }
}

/// The name the chart gives the agents' check of the companions' Service
/// (`--clusterip companions=...`): the one Service whose backends are known
/// to be netmatrix's own pods.
pub const COMPANIONS_CHECK: &str = "companions";

impl Screen {
    /// The policies that deny the failed check of the companions' Service
    /// `check` from `from`'s agent: a TCP connect to a companion pod on the
    /// Service's port. `None` for any other Service (its backends are not
    /// known), or when allowed.
    pub fn denied_service(
        &self,
        from: &str,
        src_ip: IpAddr,
        check: &netmatrix_api::ServiceResult,
    ) -> Option<Denial> {
        if check.kind != netmatrix_api::ServiceKind::Clusterip || check.name != COMPANIONS_CHECK {
            return None;
        }
        let (ip, port) = check.target.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let ip: IpAddr = ip.trim_matches(['[', ']']).parse().ok()?;
        // A companion (no agent's name) as the Service's backend; its
        // address is the ClusterIP here: only ipBlock rules read it.
        self.denied(from, src_ip, "", ip, Probe::Tcp(port))
    }
}

/// The policies an inventory holds, compared by identity (a snapshot is
/// rebuilt only when a watch event arrived).
#[derive(Debug, Clone, Default)]
pub struct PolicySet(pub Arc<Policies>);

impl PartialEq for PolicySet {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PolicySet {}

/// One rule's peers and ports (`None`: every peer, every port).
type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// A pod's labels and named container ports.
/// A pod's labels.
pub type Labels = BTreeMap<String, String>;
/// A pod's named container ports.
pub type NamedPorts = BTreeMap<String, u16>;
type PodSide = (Labels, NamedPorts);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// `namespace/name` of a policy.
pub fn name_of(p: &NetworkPolicy) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether the policy isolates its pods in `direction`: its `policyTypes`,
/// or without them Ingress always and Egress when it has egress rules.
fn applies(p: &NetworkPolicy, direction: Direction) -> bool {
    let Some(spec) = &p.spec else {
        return false;
    };
    match &spec.policy_types {
        Some(types) => types.iter().any(|t| match direction {
            Direction::Ingress => t == "Ingress",
            Direction::Egress => t == "Egress",
        }),
        None => match direction {
            Direction::Ingress => true,
            Direction::Egress => spec.egress.is_some(),
        },
    }
}

/// The namespace's labels with the one the API server sets on every
/// namespace, `kubernetes.io/metadata.name`.
fn with_name_label(labels: &BTreeMap<String, String>, name: &str) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels
        .entry("kubernetes.io/metadata.name".to_owned())
        .or_insert_with(|| name.to_owned());
    labels
}

/// Label selector semantics: every `matchLabels` pair and every
/// `matchExpressions` requirement must hold; an empty selector matches all.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator the API would have refused: matches nothing.
            _ => false,
        }
    });
    pairs_ok && expressions_ok
}

fn port_matches(p: &NetworkPolicyPort, probe: Probe, dst: &Endpoint) -> bool {
    let protocol = p.protocol.as_deref().unwrap_or("TCP");
    let port = match probe {
        // A port entry names TCP, UDP or SCTP: never ICMP.
        Probe::Icmp => return false,
        Probe::Tcp(port) | Probe::Udp(port) => port,
    };
    if protocol != probe.protocol() {
        return false;
    }
    match &p.port {
        None => true,
        Some(IntOrString::Int(n)) => {
            let end = p.end_port.unwrap_or(*n);
            (i64::from(*n)..=i64::from(end)).contains(&i64::from(port))
        }
        Some(IntOrString::String(name)) => dst
            .named_ports
            .get(name)
            .is_none_or(|&number| number == port),
    }
}

/// Whether `cidr` (`a.b.c.d/n` or IPv6) holds `ip`; `None` if malformed.
fn cidr_contains(cidr: &str, ip: IpAddr) -> Option<bool> {
    let (net, bits) = cidr.split_once('/')?;
    let net: IpAddr = net.parse().ok()?;
    let bits: u32 = bits.parse().ok()?;
    Some(match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    //! The Kubernetes documentation's policies and the well-known recipes
    //! (ahmetb/kubernetes-network-policy-recipes), written as YAML as an
    //! operator applies them.

    use super::*;

    fn policies(yaml: &str) -> Policies {
        let policies = yaml
            .split("\n---\n")
            .map(|doc| {
                let doc = if doc.starts_with("apiVersion") {
                    doc.to_owned()
                } else {
                    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{doc}")
                };
                serde_saphyr::from_str::<NetworkPolicy>(&doc).unwrap()
            })
            .collect();
        let namespace_labels = [
            ("default", &[][..]),
            ("netmatrix", &[("team", "net")][..]),
            ("monitoring", &[("purpose", "monitoring")][..]),
        ]
        .into_iter()
        .map(|(ns, labels)| {
            (
                ns.to_owned(),
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        })
        .collect();
        Policies {
            policies,
            namespace_labels,
            namespace: "netmatrix".into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    struct Pod {
        namespace: &'static str,
        labels: BTreeMap<String, String>,
        ip: IpAddr,
        ports: BTreeMap<String, u16>,
    }

    impl Pod {
        fn new(namespace: &'static str, pairs: &[(&str, &str)], ip: &str) -> Self {
            Pod {
                namespace,
                labels: labels(pairs),
                ip: ip.parse().unwrap(),
                ports: [("metrics".to_owned(), 9090)].into(),
            }
        }

        fn end(&self) -> Endpoint<'_> {
            Endpoint {
                namespace: self.namespace,
                labels: &self.labels,
                ip: self.ip,
                named_ports: &self.ports,
            }
        }
    }

    fn agent(ip: &str) -> Pod {
        Pod::new(
            "netmatrix",
            &[
                ("app.kubernetes.io/name", "netmatrix"),
                ("app.kubernetes.io/component", "agent"),
            ],
            ip,
        )
    }

    fn check(p: &Policies, src: &Pod, dst: &Pod, probe: Probe) -> Verdict {
        p.verdict(&src.end(), &dst.end(), probe)
    }

    const ALL: [Probe; 3] = [Probe::Icmp, Probe::Tcp(9090), Probe::Udp(9090)];

    #[test]
    fn no_policy_allows_everything() {
        let p = Policies::default();
        for probe in ALL {
            assert_eq!(
                check(&p, &agent("10.244.1.2"), &agent("10.244.2.2"), probe),
                Verdict::Allowed
            );
        }
    }

    /// Recipe 03 / the docs' "Default deny all ingress traffic".
    #[test]
    fn default_deny_ingress_denies_everything_naming_the_policy() {
        let p = policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default-deny-ingress\n  namespace: netmatrix\nspec:\n  podSelector: {}\n  policyTypes:\n  - Ingress\n",
        );
        for probe in ALL {
            assert_eq!(
                check(&p, &agent("10.244.1.2"), &agent("10.244.2.2"), probe),
                Verdict::Denied(vec!["netmatrix/default-deny-ingress".into()])
            );
        }
        // Another namespace's pods are not selected.
        let web = Pod::new("default", &[("app", "web")], "10.244.2.9");
        assert_eq!(
            check(&p, &agent("10.244.1.2"), &web, Probe::Icmp),
            Verdict::Allowed
        );
    }

    /// The docs' "Allow all ingress traffic" beside a default deny: rules add up.
    #[test]
    fn an_allow_all_policy_beside_a_deny_allows() {
        let p = policies(
            "metadata:\n  name: default-deny\n  namespace: netmatrix\nspec:\n  podSelector: {}\n---\nmetadata:\n  name: allow-all-ingress\n  namespace: netmatrix\nspec:\n  podSelector: {}\n  ingress:\n  - {}\n  policyTypes:\n  - Ingress\n",
        );
        for probe in ALL {
            assert_eq!(
                check(&p, &agent("10.244.1.2"), &agent("10.244.2.2"), probe),
                Verdict::Allowed
            );
        }
    }

    /// Recipe 02 "limit traffic to an application": from pods with a label,
    /// on a TCP port only. ICMP and UDP are then denied.
    #[test]
    fn a_tcp_port_rule_allows_tcp_to_that_port_only() {
        let p = policies(
            "metadata:\n  name: agents-tcp\n  namespace: netmatrix\nspec:\n  podSelector:\n    matchLabels:\n      app.kubernetes.io/component: agent\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app.kubernetes.io/name: netmatrix\n    ports:\n    - port: 9090\n",
        );
        let (a, b) = (agent("10.244.1.2"), agent("10.244.2.2"));
        assert_eq!(check(&p, &a, &b, Probe::Tcp(9090)), Verdict::Allowed);
        let denied = Verdict::Denied(vec!["netmatrix/agents-tcp".into()]);
        assert_eq!(check(&p, &a, &b, Probe::Tcp(9091)), denied);
        assert_eq!(
            check(&p, &a, &b, Probe::Udp(9090)),
            denied,
            "protocol defaults to TCP"
        );
        assert_eq!(
            check(&p, &a, &b, Probe::Icmp),
            denied,
            "a port rule never allows ICMP"
        );
        // A pod without the label is not allowed in.
        let stranger = Pod::new("netmatrix", &[("app", "other")], "10.244.3.7");
        assert_eq!(check(&p, &stranger, &b, Probe::Tcp(9090)), denied);
        // A named port resolves to the destination's container port; a
        // range (endPort) covers the ports between.
        let p = policies(
            "metadata:\n  name: named\n  namespace: netmatrix\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: metrics\n    - port: 9100\n      endPort: 9200\n      protocol: UDP\n",
        );
        assert_eq!(check(&p, &a, &b, Probe::Tcp(9090)), Verdict::Allowed);
        assert_eq!(check(&p, &a, &b, Probe::Udp(9150)), Verdict::Allowed);
        assert!(matches!(
            check(&p, &a, &b, Probe::Udp(9090)),
            Verdict::Denied(_)
        ));
    }

    /// Recipe 06/07: namespaceSelector alone (every pod of matching
    /// namespaces), and with a podSelector in the same peer (both must hold).
    #[test]
    fn namespace_selectors_match_namespace_labels() {
        let p = policies(
            "metadata:\n  name: from-monitoring\n  namespace: netmatrix\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          purpose: monitoring\n      podSelector:\n        matchLabels:\n          app: prometheus\n",
        );
        let target = agent("10.244.2.2");
        let prometheus = Pod::new("monitoring", &[("app", "prometheus")], "10.244.3.5");
        let grafana = Pod::new("monitoring", &[("app", "grafana")], "10.244.3.6");
        let elsewhere = Pod::new("default", &[("app", "prometheus")], "10.244.3.7");
        assert_eq!(
            check(&p, &prometheus, &target, Probe::Icmp),
            Verdict::Allowed
        );
        assert!(matches!(
            check(&p, &grafana, &target, Probe::Icmp),
            Verdict::Denied(_)
        ));
        assert!(matches!(
            check(&p, &elsewhere, &target, Probe::Icmp),
            Verdict::Denied(_)
        ));
        // The name label every namespace carries.
        let p = policies(
            "metadata:\n  name: from-own\n  namespace: netmatrix\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions:\n        - key: kubernetes.io/metadata.name\n          operator: In\n          values: [netmatrix]\n",
        );
        assert_eq!(
            check(&p, &agent("10.244.1.2"), &target, Probe::Udp(9090)),
            Verdict::Allowed
        );
        assert!(matches!(
            check(&p, &elsewhere, &target, Probe::Udp(9090)),
            Verdict::Denied(_)
        ));
    }

    /// The docs' ipBlock with except.
    #[test]
    fn ip_blocks_admit_their_cidr_minus_the_exceptions() {
        let p = policies(
            "metadata:\n  name: cidr\n  namespace: netmatrix\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.244.0.0/16\n        except:\n        - 10.244.3.0/24\n",
        );
        let target = agent("10.244.2.2");
        assert_eq!(
            check(&p, &agent("10.244.1.2"), &target, Probe::Icmp),
            Verdict::Allowed
        );
        assert!(matches!(
            check(&p, &agent("10.244.3.2"), &target, Probe::Icmp),
            Verdict::Denied(_)
        ));
        assert!(matches!(
            check(&p, &agent("10.245.0.2"), &target, Probe::Icmp),
            Verdict::Denied(_)
        ));
    }

    /// The docs' "Default deny all egress traffic": the source's side
    /// refuses; an egress rule to the destination's pods allows again.
    #[test]
    fn egress_isolation_is_judged_at_the_source() {
        let p = policies(
            "metadata:\n  name: default-deny-egress\n  namespace: netmatrix\nspec:\n  podSelector: {}\n  policyTypes:\n  - Egress\n",
        );
        let (a, b) = (agent("10.244.1.2"), agent("10.244.2.2"));
        assert_eq!(
            check(&p, &a, &b, Probe::Icmp),
            Verdict::Denied(vec!["netmatrix/default-deny-egress".into()])
        );
        let p = policies(
            "metadata:\n  name: default-deny-egress\n  namespace: netmatrix\nspec:\n  podSelector: {}\n  policyTypes:\n  - Egress\n---\nmetadata:\n  name: to-agents\n  namespace: netmatrix\nspec:\n  podSelector: {}\n  egress:\n  - to:\n    - podSelector:\n        matchExpressions:\n        - key: app.kubernetes.io/component\n          operator: Exists\n",
        );
        // Without policyTypes, a policy isolates for ingress too: with no
        // ingress rule it now refuses at the destination (a classic slip).
        assert_eq!(
            check(&p, &a, &b, Probe::Icmp),
            Verdict::Denied(vec!["netmatrix/to-agents".into()])
        );
        let p = Policies {
            policies: p
                .policies
                .into_iter()
                .map(|mut np| {
                    if let Some(spec) = np.spec.as_mut() {
                        spec.policy_types = Some(vec!["Egress".into()]);
                    }
                    np
                })
                .collect(),
            ..p
        };
        assert_eq!(check(&p, &a, &b, Probe::Icmp), Verdict::Allowed);
    }

    #[test]
    fn match_expressions_follow_the_api() {
        let l = labels(&[("tier", "web"), ("env", "prod")]);
        let sel = |yaml: &str| serde_saphyr::from_str::<LabelSelector>(yaml).unwrap();
        assert!(selector_matches(&sel("{}"), &l));
        assert!(selector_matches(
            &sel("matchExpressions: [{key: tier, operator: In, values: [web, api]}]"),
            &l
        ));
        assert!(!selector_matches(
            &sel("matchExpressions: [{key: tier, operator: NotIn, values: [web]}]"),
            &l
        ));
        assert!(selector_matches(
            &sel("matchExpressions: [{key: zone, operator: NotIn, values: [a]}]"),
            &l
        ));
        assert!(selector_matches(
            &sel("matchExpressions: [{key: zone, operator: DoesNotExist}]"),
            &l
        ));
        assert!(!selector_matches(
            &sel("matchExpressions: [{key: env, operator: DoesNotExist}]"),
            &l
        ));
        assert!(!selector_matches(&sel("matchLabels: {env: dev}"), &l));
    }
}
