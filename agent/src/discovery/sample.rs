//! Peer sampling for large clusters: the pods of this node plus those of the
//! remote nodes the hash ring picks ([`netmatrix_api::sampling`]).

use std::collections::BTreeSet;

use netmatrix_api::Sampled;
use netmatrix_api::sampling::{PeerSampling, Ring};

use super::PeerView;

/// Keeps the peers on `my_node` and on the remote nodes the ring picks for
/// `epoch`; below the full-mesh size, keeps everything. The ring is built
/// from this node and the nodes of the view's peers: agents that see the
/// same pods build the same ring.
pub fn apply(view: &mut PeerView, my_node: &str, sampling: &PeerSampling, epoch: u64) {
    // The aggregator sampled a pinglist already; SRV fallback peers have
    // no node names: nothing to sample by.
    if view.decided_upstream || view.peers.iter().all(|p| p.node.is_empty()) {
        return;
    }
    let mut nodes: BTreeSet<&str> = view.peers.iter().map(|p| p.node.as_str()).collect();
    nodes.insert(my_node);
    if nodes.len() <= sampling.full_mesh_max_nodes {
        return;
    }
    let ring = Ring::new(nodes.iter().copied());
    let targets: BTreeSet<String> = ring
        .targets(my_node, sampling, epoch)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let known = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
    view.peers
        .retain(|p| p.node == my_node || p.node.is_empty() || targets.contains(&p.node));
    view.sampled = Some(Sampled {
        nodes: known,
        probed: u32::try_from(targets.len()).unwrap_or(u32::MAX),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::PodInfo;
    use netmatrix_api::PeerSource;
    use std::collections::BTreeMap;

    fn view(nodes: usize, pods_per_node: usize) -> PeerView {
        let peers = (0..nodes)
            .flat_map(|n| {
                (0..pods_per_node).map(move |p| PodInfo {
                    node: format!("node-{n:04}"),
                    pod: format!("agent-{n}-{p}"),
                    ip: std::net::IpAddr::from([10, (n / 250) as u8, (n % 250) as u8, p as u8 + 1]),
                    component: None,
                    started_unix_ms: None,
                    ready: true,
                    ready_since_unix_ms: None,
                })
            })
            .collect();
        PeerView {
            peers,
            agents: None,
            source: PeerSource::Api,
            skipped_nodes: BTreeMap::new(),
            sampled: None,
            decided_upstream: false,
        }
    }

    fn sampling() -> PeerSampling {
        PeerSampling {
            full_mesh_max_nodes: 100,
            stable: 20,
            rotating: 2,
        }
    }

    #[test]
    fn small_clusters_keep_every_peer() {
        let mut v = view(100, 2);
        apply(&mut v, "node-0007", &sampling(), 0);
        assert_eq!(v.peers.len(), 200);
        assert_eq!(v.sampled, None);
    }

    #[test]
    fn large_clusters_keep_own_node_and_the_ring_sample() {
        let mut v = view(1000, 2);
        apply(&mut v, "node-0007", &sampling(), 0);
        let remote: BTreeSet<&str> = v
            .peers
            .iter()
            .map(|p| p.node.as_str())
            .filter(|n| *n != "node-0007")
            .collect();
        assert_eq!(remote.len(), 22);
        assert_eq!(v.peers.iter().filter(|p| p.node == "node-0007").count(), 2);
        assert_eq!(v.peers.len(), 2 * 23, "every pod of a picked node");
        assert_eq!(
            v.sampled,
            Some(Sampled {
                nodes: 1000,
                probed: 22
            })
        );
    }

    #[test]
    fn srv_fallback_peers_are_not_sampled() {
        let mut v = view(1000, 1);
        v.peers.iter_mut().for_each(|p| p.node.clear());
        apply(&mut v, "node-0007", &sampling(), 0);
        assert_eq!(v.peers.len(), 1000);
    }
}
