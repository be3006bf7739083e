//! Local network interfaces: which one holds the agent's address, and its
//! MTU, so the MTU probe defaults to the largest packet that interface is
//! configured to carry (1450 on a flannel VXLAN pod, 1500 or 9001 on a node).

use std::collections::BTreeMap;
use std::net::IpAddr;

/// One interface of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInterface {
    pub name: String,
    pub addrs: Vec<IpAddr>,
    /// `/sys/class/net/<name>/mtu`; `None` when unreadable.
    pub mtu: Option<u32>,
}

/// Every interface with an IP address, with its MTU. Empty (and a warning)
/// when `getifaddrs(3)` fails: the caller falls back to a default.
pub fn local_interfaces() -> Vec<LocalInterface> {
    let addrs = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs,
        Err(error) => {
            tracing::warn!(%error, "cannot list the local interfaces (getifaddrs)");
            return Vec::new();
        }
    };
    let mut by_name: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for ifa in addrs {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            // AF_PACKET entries carry no IP address.
            continue;
        };
        by_name.entry(ifa.interface_name).or_default().push(ip);
    }
    by_name
        .into_iter()
        .map(|(name, addrs)| LocalInterface {
            mtu: read_mtu(&name),
            name,
            addrs,
        })
        .collect()
}

fn read_mtu(name: &str) -> Option<u32> {
    // Interface names never contain '/', but a name from the kernel is still
    // not a path to trust blindly.
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The interface that holds `ip`, if any.
pub fn interface_with(ip: IpAddr, interfaces: &[LocalInterface]) -> Option<&LocalInterface> {
    interfaces.iter().find(|i| i.addrs.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_with_its_mtu() {
        let interfaces = local_interfaces();
        let lo = interface_with("127.0.0.1".parse().unwrap(), &interfaces)
            .expect("every network namespace has 127.0.0.1 on lo");
        assert_eq!(lo.name, "lo");
        // 65536 on current kernels, 16436 on old ones: just check it was read.
        assert!(lo.mtu.is_some_and(|m| m >= 1280), "{lo:?}");
    }

    #[test]
    fn the_interface_is_chosen_by_address() {
        let interfaces = vec![
            LocalInterface {
                name: "lo".into(),
                addrs: vec!["127.0.0.1".parse().unwrap()],
                mtu: Some(65536),
            },
            LocalInterface {
                name: "eth0".into(),
                addrs: vec!["10.244.1.2".parse().unwrap(), "fd00::1:2".parse().unwrap()],
                mtu: Some(1450),
            },
        ];
        let eth0 = interface_with("fd00::1:2".parse().unwrap(), &interfaces).unwrap();
        assert_eq!(eth0.name, "eth0");
        assert!(interface_with("10.244.9.9".parse().unwrap(), &interfaces).is_none());
        assert_eq!(read_mtu("../etc"), None);
    }
}
