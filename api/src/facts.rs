//! What a host-network agent reads of its own node's network, each round
//! and without any capability (netlink dumps and `/proc/sys` are readable
//! in the node's network namespace): the overlay devices and bridges, the
//! routes, the overlay's FDB and neighbour entries, and the kernel
//! settings that decide forwarding. The aggregator compares them with what
//! the API says (each node's pod CIDRs and addresses) to tell *why* a path
//! is broken.
//!
//! Sent only when the aggregator asks: each report carries a digest of them
//! ([`digest`]), and the aggregator asks for the facts (in its answer to a
//! report) when the digest differs from its copy's and a network finding
//! being judged reads them. On a large cluster the route and FDB tables
//! hold an entry per node and change with every join: sent every time,
//! they would cost each node a megabyte per change.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::validate::Invalid;

/// Entries kept per table (links, routes, FDB, neighbours).
pub const MAX_FACT_ENTRIES: usize = 8_192;
/// Longest interface name (the kernel's IFNAMSIZ, less its NUL).
pub const MAX_IFNAME: usize = 15;

/// One node's network, as its host-network agent reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeFacts {
    /// Every link but loopback and the pods' veth ends.
    #[serde(default)]
    pub links: Vec<LinkFact>,
    /// Routes of the main table (IPv4 and IPv6), but those through the
    /// pods' veth ends (one per pod with some CNIs).
    #[serde(default)]
    pub routes: Vec<RouteFact>,
    /// Forwarding entries of the VXLAN devices (`bridge fdb show`).
    #[serde(default)]
    pub fdb: Vec<FdbFact>,
    /// Neighbour entries of the overlay devices (`ip neigh show dev`).
    #[serde(default)]
    pub neighbours: Vec<NeighbourFact>,
    /// `net.ipv4.ip_forward`; `None` when unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_forward: Option<bool>,
    /// `net.ipv4.conf.all.rp_filter` (0 off, 1 strict, 2 loose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rp_filter: Option<u8>,
}

/// A network device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinkFact {
    pub name: String,
    /// The kernel's kind (`vxlan`, `bridge`, `ipip`, `wireguard`,
    /// `geneve`...), empty for a physical device.
    #[serde(default)]
    pub kind: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    pub mtu: u32,
    /// Its hardware address (`aa:bb:cc:dd:ee:ff`): a VTEP's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// VXLAN devices: VNI, local address, UDP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanFact>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VxlanFact {
    pub vni: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A route: `dst/prefix [via gateway] dev device`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteFact {
    pub dst: IpAddr,
    pub prefix: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// A route that drops what it matches (`ip route add blackhole ...`);
    /// absent for a route that forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject: Option<RejectRoute>,
}

/// How a rejecting route drops packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectRoute {
    /// Silently.
    Blackhole,
    /// With ICMP "host unreachable".
    Unreachable,
    /// With ICMP "administratively prohibited".
    Prohibit,
}

impl RejectRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectRoute::Blackhole => "blackhole",
            RejectRoute::Unreachable => "unreachable",
            RejectRoute::Prohibit => "prohibit",
        }
    }
}

impl RouteFact {
    /// The most specific route of `routes` holding `ip` (the kernel's
    /// choice in the main table). Of equally specific ones, the first: the
    /// kernel lists them lowest metric, its choice, first (a node with a
    /// standby link's default route has two).
    pub fn lookup(routes: &[RouteFact], ip: IpAddr) -> Option<&RouteFact> {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        routes
            .iter()
            .rev()
            .filter(|r| r.covers(ip, width))
            .max_by_key(|r| r.prefix)
    }

    /// Whether this route covers the whole of `net/prefix` (a default
    /// route covers everything, and is not counted by callers that want a
    /// specific route).
    pub fn covers(&self, net: IpAddr, prefix: u8) -> bool {
        self.prefix <= prefix && same_prefix(self.dst, net, self.prefix)
    }
}

/// Whether `a` and `b` share their first `bits` bits (same family).
pub fn same_prefix(a: IpAddr, b: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let bits = u32::from(bits).min(width);
    if bits == 0 {
        return true;
    }
    let shift = width - bits;
    (a >> shift) == (b >> shift)
}

/// A forwarding entry: frames for `mac` go to the remote VTEP `dst`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FdbFact {
    pub dev: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
}

/// A neighbour entry: `ip` is at `mac` on `dev`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NeighbourFact {
    pub dev: String,
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// `permanent`, `reachable`, `stale`, `failed`, `incomplete`...
    #[serde(default)]
    pub state: String,
}

impl NodeFacts {
    /// The link named `name`.
    pub fn link(&self, name: &str) -> Option<&LinkFact> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The node's VXLAN devices.
    pub fn vxlan_links(&self) -> impl Iterator<Item = &LinkFact> {
        self.links.iter().filter(|l| l.vxlan.is_some())
    }

    /// Checks sizes and shapes: no value a client chooses goes unbounded
    /// into the aggregator's state or its findings' text.
    pub fn validate(&self) -> Result<(), Invalid> {
        let too_many = |n: usize| n > MAX_FACT_ENTRIES;
        if too_many(self.links.len())
            || too_many(self.routes.len())
            || too_many(self.fdb.len())
            || too_many(self.neighbours.len())
        {
            return Err(bad("facts", "too many entries"));
        }
        for l in &self.links {
            ifname(&l.name, "facts.links.name")?;
            if !(l.kind.len() <= 16
                && l.kind
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            {
                return Err(bad("facts.links.kind", "not a link kind"));
            }
            mac(l.mac.as_deref(), "facts.links.mac")?;
        }
        for r in &self.routes {
            let width = if r.dst.is_ipv4() { 32 } else { 128 };
            if r.prefix > width {
                return Err(bad("facts.routes.prefix", "longer than the address"));
            }
            if let Some(dev) = &r.dev {
                ifname(dev, "facts.routes.dev")?;
            }
        }
        for f in &self.fdb {
            ifname(&f.dev, "facts.fdb.dev")?;
            mac(Some(&f.mac), "facts.fdb.mac")?;
        }
        for n in &self.neighbours {
            ifname(&n.dev, "facts.neighbours.dev")?;
            mac(n.mac.as_deref(), "facts.neighbours.mac")?;
            if !(n.state.len() <= 16
                && n.state.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
            {
                return Err(bad("facts.neighbours.state", "not a neighbour state"));
            }
        }
        Ok(())
    }
}

fn bad(field: &str, problem: &'static str) -> Invalid {
    Invalid {
        field: field.to_owned(),
        problem,
    }
}

/// An interface name as the kernel allows it: 1 to 15 bytes, printable,
/// no `/` or whitespace.
fn ifname(name: &str, field: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(bad(field, "not an interface name"))
    }
}

/// A hardware address as `aa:bb:cc:dd:ee:ff` (any length up to 32 bytes,
/// lowercase hex pairs).
fn mac(mac: Option<&str>, field: &str) -> Result<(), Invalid> {
    let Some(mac) = mac else { return Ok(()) };
    let ok = mac.len() <= 95
        && mac.split(':').all(|pair| {
            pair.len() == 2
                && pair
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(bad(field, "not a hardware address"))
    }
}

/// The digest of `facts` sent in every host report: 16 hex digits of a
/// 64-bit FNV-1a over their JSON (stable across processes and versions of
/// the standard library, unlike `DefaultHasher`).
pub fn digest(facts: &NodeFacts) -> String {
    let json = serde_json::to_vec(facts).unwrap_or_default();
    format!("{:016x}", crate::fnv1a_64(&json))
}

/// Whether `s` has the shape of a [`digest`].
pub fn is_digest(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `bytes` as `aa:bb:...`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_what_they_should() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let route = |dst: &str, prefix| RouteFact {
            dst: ip(dst),
            prefix,
            via: None,
            dev: None,
            reject: None,
        };
        assert!(route("10.244.2.0", 24).covers(ip("10.244.2.0"), 24));
        assert!(route("10.244.0.0", 16).covers(ip("10.244.2.0"), 24));
        assert!(!route("10.244.3.0", 24).covers(ip("10.244.2.0"), 24));
        assert!(!route("10.244.2.0", 25).covers(ip("10.244.2.0"), 24));
        assert!(route("0.0.0.0", 0).covers(ip("10.244.2.0"), 24));
        assert!(!route("::", 0).covers(ip("10.244.2.0"), 24));
    }

    #[test]
    fn hostile_facts_are_refused() {
        let mut f = NodeFacts::default();
        f.links.push(LinkFact {
            name: "flannel.1".into(),
            kind: "vxlan".into(),
            up: true,
            mtu: 1450,
            mac: Some("0a:58:0a:f4:02:00".into()),
            vxlan: None,
        });
        assert!(f.validate().is_ok());
        f.links[0].name = "x".repeat(16);
        assert!(f.validate().is_err());
        f.links[0].name = "flannel.1".into();
        f.links[0].mac = Some("<script>".into());
        assert!(f.validate().is_err());
        f.links[0].mac = None;
        f.routes = vec![
            RouteFact {
                dst: "10.0.0.0".parse().unwrap(),
                prefix: 33,
                via: None,
                dev: None,
                reject: None,
            };
            1
        ];
        assert!(f.validate().is_err());
        f.routes.clear();
        f.fdb = vec![
            FdbFact {
                dev: "flannel.1".into(),
                mac: "00:11:22:33:44:55".into(),
                dst: None
            };
            MAX_FACT_ENTRIES + 1
        ];
        assert_eq!(f.validate().unwrap_err().problem, "too many entries");
        assert_eq!(format_mac(&[0x0a, 0x58, 0, 0xff]), "0a:58:00:ff");
    }
}
