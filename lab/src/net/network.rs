//! Builds the lab's kernel networking: an underlay switch, one
//! namespace per node with a `cni0` bridge, pod namespaces wired to it by
//! the CNI plugins ([`crate::net::cni`]), the overlay (flannel-style VXLAN,
//! host-gw routes, or BGP routes from BIRD, [`crate::net::bgp`]) and
//! flannel's masquerade. The kube-proxy stand-in is in
//! [`crate::net::services`].
//!
//! Every veth pair is created inside its two namespaces: the nodes' with
//! `ip -n A link add X type veth peer name Y netns B`, the pods' by the
//! bridge plugin run in the node's namespace. No lab interface ever appears
//! in the root namespace, and the lab has no link to the host's interfaces:
//! the underlay is a bridge inside the switch namespace.

use crate::net::cni;
use crate::net::netns::{self, NetnsError, bridge, ip, iptables, sysctl};
use crate::net::topology::{
    NodePlan, Overlay, POD_CIDR, POD_MTU, PodPlan, SERVICE_CIDR, Topology, UNDERLAY_MTU,
    VXLAN_DEVICE, VXLAN_PORT,
};

/// Sysctls of every lab namespace. New namespaces inherit IPv4 settings from
/// the host, which may use strict reverse-path filtering; the lab's routing is
/// asymmetric by design (masquerade, hairpin), so it is turned off.
const COMMON_SYSCTLS: [&str; 2] = [
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
];

/// Creates every namespace, link, address, route and rule of the lab (except
/// the service rules). On error the caller removes the namespaces.
pub fn build(t: &Topology) -> Result<(), NetnsError> {
    netns::add(&t.switch_netns)?;
    sysctl(&t.switch_netns, &COMMON_SYSCTLS)?;
    ip(&t.switch_netns, &["link", "add", "br0", "type", "bridge"])?;
    ip(&t.switch_netns, &["link", "set", "br0", "up"])?;
    for node in &t.nodes {
        build_node(t, node)?;
    }
    for node in &t.nodes {
        wire_overlay(t, node)?;
    }
    Ok(())
}

/// Builds a node joining a running lab (`t` includes it) and programs the
/// overlay both ways between it and every other node, as flanneld does on
/// every node when a Node object appears. On error the caller removes it
/// with [`remove_node`].
pub fn add_node(t: &Topology, node: &NodePlan) -> Result<(), NetnsError> {
    build_node(t, node)?;
    wire_overlay(t, node)?;
    for peer in t.nodes.iter().filter(|p| p.index != node.index) {
        connect_peer(t.overlay, peer, node)?;
    }
    Ok(())
}

/// Takes a node out of a running lab (`t` no longer includes it): the
/// other nodes forget its overlay entries and route, then its pods, its
/// link to the switch and its namespace go. Keeps going after an error and
/// returns them all, so that as much as possible is removed.
pub fn remove_node(t: &Topology, node: &NodePlan) -> Vec<NetnsError> {
    let mut errors = Vec::new();
    for peer in t.nodes.iter().filter(|p| p.index != node.index) {
        if let Err(e) = forget_peer(t.overlay, peer, node) {
            errors.push(e);
        }
    }
    for pod in t.pods_of(node) {
        if let Err(e) = remove_pod(node, pod) {
            errors.push(e);
        }
    }
    // Explicitly, like pods' veths: the switch's end would otherwise go
    // asynchronously with the namespace, and a node re-added at once
    // reuses its name.
    if netns::exists(&node.netns)
        && let Err(e) = ip(&t.switch_netns, &["link", "del", &node.switch_veth])
    {
        errors.push(e);
    }
    if let Err(e) = netns::delete(&node.netns) {
        errors.push(e);
    }
    errors
}

/// Removes everything [`connect_peer`] programmed for `peer` on `node`,
/// route included (a peer gone for good, unlike [`disconnect_peer`]'s fault).
fn forget_peer(overlay: Overlay, node: &NodePlan, peer: &NodePlan) -> Result<(), NetnsError> {
    disconnect_peer(overlay, node, peer)?;
    if overlay == Overlay::Vxlan {
        ip(&node.netns, &["route", "del", &peer.pod_cidr])?;
    }
    Ok(())
}

/// `node`'s VTEP (VXLAN), its routes to every other node, and masquerade.
fn wire_overlay(t: &Topology, node: &NodePlan) -> Result<(), NetnsError> {
    if t.overlay == Overlay::Vxlan {
        add_vtep(node)?;
    }
    for peer in t.nodes.iter().filter(|p| p.index != node.index) {
        connect_peer(t.overlay, node, peer)?;
    }
    masquerade(node)
}

/// Deletes every namespace of the plan that exists (pods first). Returns the
/// errors; keeps going after one, so that cleanup removes all it can.
pub fn destroy(t: &Topology) -> Vec<NetnsError> {
    let mut errors = Vec::new();
    for ns in t.namespaces().iter().rev() {
        if let Err(e) = netns::delete(ns) {
            errors.push(e);
        }
    }
    // The namespaces went without CNI DEL: forget host-local's stores.
    cni::forget(&t.prefix);
    errors
}

/// Node K: its namespace, `eth0` on the switch, forwarding on, `cni0` and
/// its pods.
fn build_node(t: &Topology, node: &NodePlan) -> Result<(), NetnsError> {
    let ns = node.netns.as_str();
    netns::add(ns)?;
    sysctl(ns, &COMMON_SYSCTLS)?;
    sysctl(ns, &["net.ipv4.ip_forward=1"])?;
    let sw = t.switch_netns.as_str();
    ip(
        sw,
        &[
            "link",
            "add",
            &node.switch_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ],
    )?;
    ip(
        sw,
        &["link", "set", &node.switch_veth, "master", "br0", "up"],
    )?;
    ip(
        ns,
        &["addr", "add", &format!("{}/15", node.ip), "dev", "eth0"],
    )?;
    ip(
        ns,
        &[
            "link",
            "set",
            "eth0",
            "mtu",
            &UNDERLAY_MTU.to_string(),
            "up",
        ],
    )?;
    // Host-network processes (the host agents) dial ClusterIPs as on a real
    // node, where the default route covers the service network and
    // kube-proxy's nat OUTPUT rules rewrite the destination: without a
    // route, connect() fails before those rules are reached.
    ip(
        ns,
        &[
            "route",
            "add",
            SERVICE_CIDR,
            "dev",
            "eth0",
            "src",
            &node.ip.to_string(),
        ],
    )?;

    ip(ns, &["link", "add", "cni0", "type", "bridge"])?;
    ip(
        ns,
        &[
            "addr",
            "add",
            &format!("{}/24", node.gateway),
            "dev",
            "cni0",
        ],
    )?;
    for pod in t.pods_of(node) {
        add_pod(node, pod)?;
    }
    // A bridge takes the smallest MTU of its ports; set it explicitly anyway
    // so that it holds before the first port, as flannel's bridge CNI does.
    ip(
        ns,
        &["link", "set", "cni0", "mtu", &POD_MTU.to_string(), "up"],
    )?;
    Ok(())
}

/// Creates one pod's namespace and wires it to its node through the CNI
/// plugins (a pod created after the lab, e.g. a re-created companion).
pub fn add_pod(node: &NodePlan, pod: &PodPlan) -> Result<(), NetnsError> {
    add_sandbox(node, pod)?;
    // Unprivileged ICMP echo sockets, as the chart sets for the agent pod
    // (the process mode has no runtime to apply the pod's sysctls).
    sysctl(&pod.netns, &["net.ipv4.ping_group_range=0 2147483647"])
}

/// A pod sandbox: its namespace, then CNI ADD (`lo`, and `eth0` on the
/// node's `cni0` with its address and routes). A container runtime applies
/// the pod's own sysctls afterwards.
pub fn add_sandbox(node: &NodePlan, pod: &PodPlan) -> Result<(), NetnsError> {
    netns::add(&pod.netns)?;
    sysctl(&pod.netns, &COMMON_SYSCTLS)?;
    cni::add(node, pod)
}

/// Removes one pod: CNI DEL first (its veth pair goes, host-local releases
/// its address; deleting a namespace frees its devices asynchronously, and
/// a pod re-created at once must find its address free), then its
/// namespace.
pub fn remove_pod(node: &NodePlan, pod: &PodPlan) -> Result<(), NetnsError> {
    // DEL even without the namespace (host-local still releases the
    // address); the namespace goes whatever DEL says.
    let deleted = cni::del(node, pod);
    netns::delete(&pod.netns)?;
    deleted
}

/// The pod's route to the service network (CNI ADD sets it with the others;
/// this puts it back): the `service-route` fault removes exactly it, which
/// is what makes a pod's `connect()` to 10.96.0.1 fail with "network is
/// unreachable".
pub fn add_service_route(node: &NodePlan, pod: &PodPlan) -> Result<(), NetnsError> {
    ip(
        &pod.netns,
        &[
            "route",
            "replace",
            SERVICE_CIDR,
            "via",
            &node.gateway.to_string(),
        ],
    )
    .map(|_| ())
}

pub fn delete_service_route(pod: &PodPlan) -> Result<(), NetnsError> {
    ip(&pod.netns, &["route", "del", SERVICE_CIDR]).map(|_| ())
}

/// `flannel.1`: VXLAN VNI 1 over `eth0`, no learning (flanneld programs the
/// FDB and neighbour tables itself), a fixed MAC, and the `.0` address of the
/// node's pod subnet.
fn add_vtep(node: &NodePlan) -> Result<(), NetnsError> {
    let ns = node.netns.as_str();
    ip(
        ns,
        &[
            "link",
            "add",
            VXLAN_DEVICE,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &node.ip.to_string(),
            "dev",
            "eth0",
            "dstport",
            &VXLAN_PORT.to_string(),
            "nolearning",
        ],
    )?;
    ip(
        ns,
        &[
            "link",
            "set",
            VXLAN_DEVICE,
            "address",
            &node.vtep_mac,
            "mtu",
            &POD_MTU.to_string(),
            "up",
        ],
    )?;
    ip(
        ns,
        &[
            "addr",
            "add",
            &format!("{}/32", node.vtep_ip),
            "dev",
            VXLAN_DEVICE,
        ],
    )?;
    Ok(())
}

/// What flanneld (vxlan) or host-gw programs on `node` for one `peer`.
/// Idempotent (`replace`), so that healing a fault calls it again.
pub fn connect_peer(overlay: Overlay, node: &NodePlan, peer: &NodePlan) -> Result<(), NetnsError> {
    let ns = node.netns.as_str();
    match overlay {
        Overlay::Vxlan => {
            let vtep = peer.vtep_ip.to_string();
            ip(
                ns,
                &[
                    "neigh",
                    "replace",
                    &vtep,
                    "lladdr",
                    &peer.vtep_mac,
                    "dev",
                    VXLAN_DEVICE,
                    "nud",
                    "permanent",
                ],
            )?;
            point_fdb(ns, peer, &peer.ip.to_string())?;
            ip(
                ns,
                &[
                    "route",
                    "replace",
                    &peer.pod_cidr,
                    "via",
                    &vtep,
                    "dev",
                    VXLAN_DEVICE,
                    "onlink",
                ],
            )?;
        }
        Overlay::HostGw => {
            ip(
                ns,
                &[
                    "route",
                    "replace",
                    &peer.pod_cidr,
                    "via",
                    &peer.ip.to_string(),
                    "dev",
                    "eth0",
                ],
            )?;
        }
        // BIRD learns and installs the route (`net::bgp`).
        Overlay::Bgp => {}
    }
    Ok(())
}

/// Removes every FDB and neighbour entry of `flannel.1` on `node` at once
/// (`bridge fdb flush`, `ip neigh flush`), as when flanneld's state is wiped;
/// [`connect_peer`] for every peer puts them back.
pub fn flush_vtep(node: &NodePlan) -> Result<(), NetnsError> {
    let ns = node.netns.as_str();
    bridge(
        ns,
        &["fdb", "flush", "dev", VXLAN_DEVICE, "self", "permanent"],
    )?;
    ip(
        ns,
        &["neigh", "flush", "dev", VXLAN_DEVICE, "nud", "permanent"],
    )?;
    Ok(())
}

/// An address in the underlay's subnet that no node has: where a stale
/// FDB entry points (a node re-addressed, its peers not told).
pub const STALE_VTEP_IP: &str = "198.18.1.99";

/// Points `node`'s FDB entry for `peer`'s VTEP at [`STALE_VTEP_IP`]
/// (vxlan); [`connect_peer`] puts it back.
pub fn misdirect_peer(node: &NodePlan, peer: &NodePlan) -> Result<(), NetnsError> {
    point_fdb(&node.netns, peer, STALE_VTEP_IP)
}

/// Points `node`'s host-gw route to `peer`'s pod subnet at
/// [`STALE_VTEP_IP`]; [`connect_peer`] puts it back.
pub fn misroute_peer(node: &NodePlan, peer: &NodePlan) -> Result<(), NetnsError> {
    ip(
        &node.netns,
        &[
            "route",
            "replace",
            &peer.pod_cidr,
            "via",
            STALE_VTEP_IP,
            "dev",
            "eth0",
        ],
    )
    .map(|_| ())
}

/// In `ns`, sends frames for `peer`'s VTEP MAC to the underlay address `dst`.
fn point_fdb(ns: &str, peer: &NodePlan, dst: &str) -> Result<(), NetnsError> {
    bridge(
        ns,
        &[
            "fdb",
            "replace",
            &peer.vtep_mac,
            "dev",
            VXLAN_DEVICE,
            "dst",
            dst,
            "self",
            "permanent",
        ],
    )
    .map(|_| ())
}

/// Sets `flannel.1`'s MTU on `node`.
pub fn set_vtep_mtu(node: &NodePlan, mtu: u32) -> Result<(), NetnsError> {
    ip(
        &node.netns,
        &["link", "set", VXLAN_DEVICE, "mtu", &mtu.to_string()],
    )
    .map(|_| ())
}

/// Sets the MTU of `node`'s link to the other nodes (`eth0`; the switch's
/// end keeps the network's).
pub fn set_underlay_mtu(node: &NodePlan, mtu: u32) -> Result<(), NetnsError> {
    ip(
        &node.netns,
        &["link", "set", "eth0", "mtu", &mtu.to_string()],
    )
    .map(|_| ())
}

/// Forgets the path MTUs learnt from "fragmentation needed" errors in `ns`
/// (they would outlive a healed MTU fault by 10 minutes,
/// `net.ipv4.route.mtu_expires`).
pub fn flush_route_cache(ns: &str) -> Result<(), NetnsError> {
    ip(ns, &["route", "flush", "cache"]).map(|_| ())
}

/// Sets the switch's end of `node`'s underlay link down (or up): the node's
/// `eth0` loses its carrier, as when its cable is pulled, and keeps its
/// configuration.
pub fn set_underlay_link(t: &Topology, node: &NodePlan, up: bool) -> Result<(), NetnsError> {
    ip(
        &t.switch_netns,
        &[
            "link",
            "set",
            &node.switch_veth,
            if up { "up" } else { "down" },
        ],
    )
    .map(|_| ())
}

/// IPv4 forwarding in the node (the `forwarding-off` fault and its heal).
pub fn set_forwarding(node: &NodePlan, on: bool) -> Result<(), NetnsError> {
    let setting = if on {
        "net.ipv4.ip_forward=1"
    } else {
        "net.ipv4.ip_forward=0"
    };
    sysctl(&node.netns, &[setting])
}

/// The node's `FORWARD` policy (`forward-policy-drop`): `DROP` as Docker
/// sets it, `ACCEPT` as the lab has it (it adds no FORWARD rule that
/// relies on the policy).
pub fn set_forward_policy(node: &NodePlan, accept: bool) -> Result<(), NetnsError> {
    let policy = if accept { "ACCEPT" } else { "DROP" };
    iptables(&node.netns, &["-P", "FORWARD", policy]).map(|_| ())
}

/// The node's pod bridge (`bridge-down`). The kernel drops the subnet's
/// route with the link and restores it when the link comes up again.
/// Sets `node`'s VXLAN device `flannel.1` up or down. The kernel drops the
/// routes through it when it goes down; setting it up brings back none, so
/// [`connect_peer`] must follow.
pub fn set_vtep_link(node: &NodePlan, up: bool) -> Result<(), NetnsError> {
    ip(
        &node.netns,
        &["link", "set", VXLAN_DEVICE, if up { "up" } else { "down" }],
    )
    .map(|_| ())
}

/// Deletes `node`'s route to `peer`'s pod subnet (both overlays);
/// [`connect_peer`] puts it back.
pub fn delete_peer_route(node: &NodePlan, peer: &NodePlan) -> Result<(), NetnsError> {
    ip(&node.netns, &["route", "del", &peer.pod_cidr]).map(|_| ())
}

/// Adds (or removes) a blackhole route on `node` to `pod`'s address alone:
/// a stale or mistyped /32 in one node's table, which a CNI that routes
/// per pod (calico) can leave behind.
pub fn blackhole_pod(node: &NodePlan, pod: &PodPlan, add: bool) -> Result<(), NetnsError> {
    let dst = format!("{}/32", pod.ip);
    let verb = if add { "add" } else { "del" };
    ip(&node.netns, &["route", verb, "blackhole", &dst]).map(|_| ())
}

pub fn set_pod_bridge(node: &NodePlan, up: bool) -> Result<(), NetnsError> {
    ip(
        &node.netns,
        &["link", "set", "cni0", if up { "up" } else { "down" }],
    )
    .map(|_| ())
}

/// Removes what [`connect_peer`] programmed for `peer` on `node` (the
/// `overlay-down` fault). VXLAN keeps the route, as a node whose flanneld lost
/// its state would: the FDB and neighbour entries are gone, so encapsulation
/// has no destination.
pub fn disconnect_peer(
    overlay: Overlay,
    node: &NodePlan,
    peer: &NodePlan,
) -> Result<(), NetnsError> {
    let ns = node.netns.as_str();
    match overlay {
        Overlay::Vxlan => {
            bridge(
                ns,
                &["fdb", "del", &peer.vtep_mac, "dev", VXLAN_DEVICE, "self"],
            )?;
            ip(
                ns,
                &[
                    "neigh",
                    "del",
                    &peer.vtep_ip.to_string(),
                    "dev",
                    VXLAN_DEVICE,
                ],
            )?;
        }
        Overlay::HostGw => {
            ip(ns, &["route", "del", &peer.pod_cidr])?;
        }
        // BIRD withdraws it when the peer's session ends.
        Overlay::Bgp => {}
    }
    Ok(())
}

/// flannel's ip-masq (pod traffic that leaves the pod network takes the
/// node's address: an agent on a node whose overlay is broken still reaches
/// the aggregator over the underlay), and the hairpin masquerade kube-proxy
/// needs when a pod reaches a service backed by a pod on the same bridge
/// (without br_netfilter the reply would be bridged straight back and skip
/// the reverse DNAT).
fn masquerade(node: &NodePlan) -> Result<(), NetnsError> {
    let rules = format!(
        "*nat\n\
         -A POSTROUTING -s {POD_CIDR} ! -d {POD_CIDR} -j MASQUERADE\n\
         -A POSTROUTING -s {cidr} -d {cidr} -m conntrack --ctstate DNAT -j MASQUERADE\n\
         COMMIT\n",
        cidr = node.pod_cidr,
    );
    netns::iptables_restore(&node.netns, &rules)
}
