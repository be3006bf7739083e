//! The node's own network, read by the host-network agent each round: the
//! links, the main routing table, the VXLAN devices' FDB, the overlay
//! devices' neighbours (netlink dumps, as `ip link`, `ip route`, `bridge
//! fdb` and `ip neigh` make them), and the forwarding settings from
//! `/proc/sys`. Reading needs no capability in the node's network
//! namespace. What goes on the wire is [`NodeFacts`].

use std::collections::HashMap;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use netmatrix_api::facts::{
    FdbFact, LinkFact, MAX_FACT_ENTRIES, NeighbourFact, NodeFacts, RejectRoute, RouteFact,
    VxlanFact, format_mac,
};

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("netlink dump: {0}")]
    Dump(String),
}

/// Kinds of link that carry pod traffic between nodes.
const OVERLAY_KINDS: &[&str] = &["vxlan", "ipip", "geneve", "wireguard", "gre", "sit"];

/// Reads the node's facts now (blocking: a few netlink dumps).
pub fn read() -> Result<NodeFacts, FactsError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(FactsError::Socket)?;
    socket.bind_auto().map_err(FactsError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(FactsError::Socket)?;

    let mut names = HashMap::new();
    let mut links = Vec::new();
    for message in dump(
        &mut socket,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )? {
        if let RouteNetlinkMessage::NewLink(link) = message {
            let index = link.header.index;
            let fact = link_fact(&link);
            names.insert(index, fact.name.clone());
            links.push(fact);
        }
    }
    let overlay: Vec<String> = links
        .iter()
        .filter(|l| OVERLAY_KINDS.contains(&l.kind.as_str()))
        .map(|l| l.name.clone())
        .collect();

    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        for message in dump(&mut socket, RouteNetlinkMessage::GetRoute(request))? {
            if let RouteNetlinkMessage::NewRoute(route) = message
                && let Some(fact) = route_fact(&route, &names)
            {
                routes.push(fact);
            }
        }
    }
    let pod_ends = pod_ends(&links, &routes);
    routes.retain(|r| !r.dev.as_ref().is_some_and(|d| pod_ends.contains(d)));

    let mut fdb = Vec::new();
    let mut neighbours = Vec::new();
    for family in [
        AddressFamily::Bridge,
        AddressFamily::Inet,
        AddressFamily::Inet6,
    ] {
        let mut request = NeighbourMessage::default();
        request.header.family = family;
        for message in dump(&mut socket, RouteNetlinkMessage::GetNeighbour(request))? {
            let RouteNetlinkMessage::NewNeighbour(n) = message else {
                continue;
            };
            let Some(dev) = names.get(&n.header.ifindex) else {
                continue;
            };
            if !overlay.contains(dev) {
                continue;
            }
            if n.header.family == AddressFamily::Bridge {
                if let Some(f) = fdb_fact(&n, dev) {
                    fdb.push(f);
                }
            } else if let Some(f) = neighbour_fact(&n, dev) {
                neighbours.push(f);
            }
        }
    }

    links.retain(|l| !pod_ends.contains(&l.name) && l.name != "lo");
    links.truncate(MAX_FACT_ENTRIES);
    routes.truncate(MAX_FACT_ENTRIES);
    fdb.truncate(MAX_FACT_ENTRIES);
    neighbours.truncate(MAX_FACT_ENTRIES);
    Ok(NodeFacts {
        links,
        routes,
        fdb,
        neighbours,
        ip_forward: sysctl("net/ipv4/ip_forward").map(|v| v != 0),
        rp_filter: sysctl("net/ipv4/conf/all/rp_filter"),
    })
}

/// One dump request and every message of its answer.
fn dump(
    socket: &mut Socket,
    request: RouteNetlinkMessage,
) -> Result<Vec<RouteNetlinkMessage>, FactsError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
    packet.finalize();
    let mut buf = vec![0; packet.header.length as usize];
    packet.serialize(&mut buf[..]);
    socket.send(&buf[..], 0).map_err(FactsError::Socket)?;

    let mut out = Vec::new();
    let mut receive = vec![0; 64 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut receive[..], 0)
            .map_err(FactsError::Socket)?;
        let mut offset = 0;
        while offset < size {
            let message: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&receive[offset..size])
                    .map_err(|e| FactsError::Dump(e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(FactsError::Dump(e.to_string())),
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            if length == 0 {
                return Ok(out);
            }
            offset += length;
        }
    }
}

fn link_fact(link: &LinkMessage) -> LinkFact {
    let mut fact = LinkFact {
        name: String::new(),
        kind: String::new(),
        up: link.header.flags.contains(LinkFlags::Up),
        mtu: 0,
        mac: None,
        vxlan: None,
    };
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(name) => fact.name = name.clone(),
            LinkAttribute::Mtu(mtu) => fact.mtu = *mtu,
            LinkAttribute::Address(mac) if !mac.is_empty() => fact.mac = Some(format_mac(mac)),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => fact.kind = kind_name(kind),
                        LinkInfo::Data(InfoData::Vxlan(data)) => fact.vxlan = Some(vxlan(data)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    fact
}

fn kind_name(kind: &InfoKind) -> String {
    // The kernel's own names, as `ip -d link` prints them.
    let name = match kind {
        InfoKind::Vxlan => "vxlan",
        InfoKind::Bridge => "bridge",
        InfoKind::Veth => "veth",
        InfoKind::IpIp => "ipip",
        InfoKind::Wireguard => "wireguard",
        InfoKind::Geneve => "geneve",
        InfoKind::Dummy => "dummy",
        InfoKind::Vlan => "vlan",
        InfoKind::Bond => "bond",
        InfoKind::GreTap | InfoKind::GreTun => "gre",
        InfoKind::SitTun => "sit",
        _ => "other",
    };
    name.to_owned()
}

fn vxlan(data: &[InfoVxlan]) -> VxlanFact {
    let mut fact = VxlanFact {
        vni: 0,
        local: None,
        port: None,
    };
    for d in data {
        match d {
            InfoVxlan::Id(vni) => fact.vni = *vni,
            InfoVxlan::Local(ip) => fact.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => fact.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Port(port) => fact.port = Some(*port),
            _ => {}
        }
    }
    fact
}

/// The host ends of pods' veths: one per pod, so left out of the facts
/// (the per-pod /32 routes of calico, the bridge ports of flannel) to keep
/// them small and to the point. A veth that attaches the node to a network
/// is not one: a node that is itself a container (kind, k3d, this
/// project's lab) has a veth as its uplink, with the node subnet's route
/// (or the default route) and the routes through other nodes (host-gw,
/// BGP) on it. So a veth is a pod end unless it has a directly connected
/// subnet (a route wider than one address, without a gateway) or the
/// default route. Link-local routes, which any veth may have, do not
/// count; nor do routes through a gateway on the node itself, as cilium's
/// `cilium_host` (a veth with a /32 address) carries to the pod CIDRs.
fn pod_ends(links: &[LinkFact], routes: &[RouteFact]) -> std::collections::HashSet<String> {
    let attaches_to_a_network = |dev: &str| {
        routes.iter().any(|r| {
            let subnet = r.via.is_none()
                && match r.dst {
                    IpAddr::V4(v4) => r.prefix < 32 && !v4.is_link_local(),
                    IpAddr::V6(v6) => r.prefix < 128 && !v6.is_unicast_link_local(),
                };
            r.dev.as_deref() == Some(dev) && (subnet || r.prefix == 0)
        })
    };
    links
        .iter()
        .filter(|l| l.kind == "veth" && !attaches_to_a_network(&l.name))
        .map(|l| l.name.clone())
        .collect()
}

/// A unicast route of the main table; `None` for the rest (local,
/// broadcast, other tables).
fn route_fact(route: &RouteMessage, names: &HashMap<u32, String>) -> Option<RouteFact> {
    let header = &route.header;
    let mut table = u32::from(header.table);
    let mut dst = None;
    let mut via = None;
    let mut dev = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = address(a),
            RouteAttribute::Gateway(a) => via = address(a),
            RouteAttribute::Oif(index) => dev = names.get(index).cloned(),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = dst.or(match header.address_family {
        AddressFamily::Inet => Some(IpAddr::from([0u8; 4])),
        AddressFamily::Inet6 => Some(IpAddr::from([0u8; 16])),
        _ => None,
    })?;
    Some(RouteFact {
        dst,
        prefix: header.destination_prefix_length,
        via,
        dev,
        reject: match header.kind {
            RouteType::BlackHole => Some(RejectRoute::Blackhole),
            RouteType::Unreachable => Some(RejectRoute::Unreachable),
            RouteType::Prohibit => Some(RejectRoute::Prohibit),
            _ => None,
        },
    })
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn fdb_fact(n: &NeighbourMessage, dev: &str) -> Option<FdbFact> {
    let mut mac = None;
    let mut dst = None;
    for attribute in &n.attributes {
        match attribute {
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = Some(format_mac(bytes)),
            NeighbourAttribute::Destination(a) => dst = neighbour_address(a),
            _ => {}
        }
    }
    Some(FdbFact {
        dev: dev.to_owned(),
        mac: mac?,
        dst,
    })
}

fn neighbour_fact(n: &NeighbourMessage, dev: &str) -> Option<NeighbourFact> {
    let mut ip = None;
    let mut mac = None;
    for attribute in &n.attributes {
        match attribute {
            NeighbourAttribute::Destination(a) => ip = neighbour_address(a),
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = Some(format_mac(bytes)),
            _ => {}
        }
    }
    Some(NeighbourFact {
        dev: dev.to_owned(),
        ip: ip?,
        mac,
        state: state_name(n.header.state).to_owned(),
    })
}

fn neighbour_address(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        // A bridge FDB entry's remote (`dst`) comes raw: the message's
        // family is AF_BRIDGE, not the address's.
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn state_name(state: NeighbourState) -> &'static str {
    match state {
        NeighbourState::Incomplete => "incomplete",
        NeighbourState::Reachable => "reachable",
        NeighbourState::Stale => "stale",
        NeighbourState::Delay => "delay",
        NeighbourState::Probe => "probe",
        NeighbourState::Failed => "failed",
        NeighbourState::Noarp => "noarp",
        NeighbourState::Permanent => "permanent",
        _ => "none",
    }
}

/// A small integer from `/proc/sys/<path>`.
fn sysctl(path: &str) -> Option<u8> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(name: &str) -> LinkFact {
        LinkFact {
            name: name.into(),
            kind: "veth".into(),
            up: true,
            mtu: 1500,
            mac: None,
            vxlan: None,
        }
    }

    fn route(dst: &str, prefix: u8, via: Option<&str>, dev: &str) -> RouteFact {
        RouteFact {
            dst: dst.parse().unwrap(),
            prefix,
            via: via.map(|v| v.parse().unwrap()),
            dev: Some(dev.into()),
            reject: None,
        }
    }

    /// A node that is a container: its uplink eth0 is a veth with the node
    /// subnet and the host-gw routes; calico's pod ends have /32 routes;
    /// cilium's cilium_host a /32 and routes through it; a bridge port none;
    /// any veth fe80::/64, some 169.254.0.0/16.
    #[test]
    fn a_veth_attached_to_the_node_network_is_not_a_pod_end() {
        let links = [
            veth("eth0"),
            veth("cali1234"),
            veth("vethab"),
            veth("lonely"),
            veth("cilium_host"),
        ];
        let routes = [
            route("198.18.0.0", 15, None, "eth0"),
            route("10.244.3.0", 24, Some("198.18.0.3"), "eth0"),
            route("10.244.2.7", 32, None, "cali1234"),
            route("fe80::", 64, None, "cali1234"),
            route("fe80::", 64, None, "vethab"),
            route("169.254.0.0", 16, None, "vethab"),
            route("10.0.0.76", 32, None, "cilium_host"),
            route("10.0.0.0", 24, Some("10.0.0.76"), "cilium_host"),
            route("10.0.1.0", 24, Some("10.0.0.76"), "cilium_host"),
        ];
        let ends = pod_ends(&links, &routes);
        let mut ends: Vec<&str> = ends.iter().map(String::as_str).collect();
        ends.sort_unstable();
        assert_eq!(ends, ["cali1234", "cilium_host", "lonely", "vethab"]);
        // The default route marks an uplink too.
        let ends = pod_ends(
            &[veth("eth0")],
            &[route("0.0.0.0", 0, Some("172.18.0.1"), "eth0")],
        );
        assert!(ends.is_empty());
    }

    /// Reads this machine's (or this test's namespace's) own tables: it
    /// must work unprivileged and find at least the loopback route.
    #[test]
    fn reads_the_local_tables() {
        let facts = read().expect("netlink dumps");
        assert!(facts.links.iter().all(|l| l.name != "lo"));
        assert!(facts.validate().is_ok());
        assert!(facts.ip_forward.is_some());
    }
}
