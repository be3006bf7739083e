//! Which remote nodes an agent probes in a large cluster.
//!
//! Up to [`PeerSampling::full_mesh_max_nodes`] nodes every agent probes every
//! node (a full mesh). Above that, probing N² paths costs too much, so each
//! agent probes the pods on its own node plus a subset of remote nodes picked
//! on a hash ring (consistent hashing over node names):
//!
//! - every node has a place on the ring from a stable hash of its name, so
//!   all agents and versions agree on the order without talking to each
//!   other, and neighbours on the ring are unrelated in name or rack;
//! - a node probes the [`stable`](PeerSampling::stable) nodes nearest to it
//!   on the ring, half ahead and half behind. Every node is therefore probed
//!   by exactly `stable` others (a circulant graph), every stable pair is
//!   probed both ways (one-way failures are seen), and a node joining or
//!   leaving changes one target of `stable` nodes and nothing else;
//! - it also probes [`rotating`](PeerSampling::rotating) nodes further along
//!   the ring, at offsets that advance every epoch (a few rounds, the same
//!   for every agent as it comes from the wall clock), so that over time the
//!   union of probed paths covers every pair, and in-degree stays
//!   `stable + rotating` at every moment.
//!
//! Agents whose view of the node list differs (a node just joined, one agent
//! has not seen it yet) disagree for one watch event: in-degrees are then off
//! by one for that moment, never more per disagreeing node.

/// Peer selection settings; the same on every agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSampling {
    /// Clusters of at most this many nodes are probed as a full mesh.
    pub full_mesh_max_nodes: usize,
    /// Remote nodes probed by each agent, always the same ones.
    pub stable: usize,
    /// Remote nodes probed in addition, changing every epoch.
    pub rotating: usize,
}

impl Default for PeerSampling {
    fn default() -> Self {
        PeerSampling {
            full_mesh_max_nodes: 200,
            stable: 40,
            rotating: 2,
        }
    }
}

impl PeerSampling {
    /// Probed remote nodes per agent once the cluster is sampled.
    pub fn per_agent(&self) -> usize {
        self.stable + self.rotating
    }
}

/// A node's place on the ring: FNV-1a of its name, then a 64-bit finaliser
/// (splitmix64) so that names differing in one character land far apart.
/// Both are fixed algorithms, so every agent version agrees.
pub fn ring_position(node: &str) -> u64 {
    let mut h = crate::fnv1a_64(node.as_bytes());
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Nodes in ring order.
#[derive(Debug, Clone)]
pub struct Ring<'a> {
    nodes: RingNodes<'a>,
}

/// A ring built here, or one its owner keeps in ring order.
#[derive(Debug, Clone)]
enum RingNodes<'a> {
    Built(Vec<(u64, &'a str)>),
    Kept(&'a [(u64, String)]),
}

impl<'a> RingNodes<'a> {
    fn len(&self) -> usize {
        match self {
            RingNodes::Built(nodes) => nodes.len(),
            RingNodes::Kept(nodes) => nodes.len(),
        }
    }

    fn name(&self, i: usize) -> &'a str {
        match self {
            RingNodes::Built(nodes) => nodes[i].1,
            RingNodes::Kept(nodes) => nodes[i].1.as_str(),
        }
    }

    fn search(&self, key: (u64, &str)) -> Result<usize, usize> {
        match self {
            RingNodes::Built(nodes) => nodes.binary_search_by(|(h, n)| (*h, *n).cmp(&key)),
            RingNodes::Kept(nodes) => nodes.binary_search_by(|(h, n)| (*h, n.as_str()).cmp(&key)),
        }
    }
}

impl<'a> Ring<'a> {
    /// Builds the ring from node names (duplicates are dropped).
    pub fn new(nodes: impl IntoIterator<Item = &'a str>) -> Self {
        let mut nodes: Vec<(u64, &str)> =
            nodes.into_iter().map(|n| (ring_position(n), n)).collect();
        nodes.sort_unstable();
        nodes.dedup();
        Ring {
            nodes: RingNodes::Built(nodes),
        }
    }

    /// The ring of nodes its owner keeps in ring order, by
    /// [`ring_position`] then name, without duplicates (so that a ring of
    /// 100,000 nodes is neither sorted nor copied on every change).
    pub fn from_sorted(nodes: &'a [(u64, String)]) -> Self {
        debug_assert!(nodes.windows(2).all(|w| w[0] < w[1]), "not in ring order");
        Ring {
            nodes: RingNodes::Kept(nodes),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 0
    }

    /// Remote nodes `me` probes in `epoch`, `me` excluded: the
    /// [`stable`](Ring::stable_targets) ones, then the
    /// [`rotating`](Ring::rotating_targets) ones. `me` need not be on the
    /// ring (its own node may be cordoned): it is placed where its hash
    /// says. With at most `full_mesh_max_nodes` nodes, every other node.
    pub fn targets(&self, me: &str, sampling: &PeerSampling, epoch: u64) -> Vec<&'a str> {
        let mut targets = self.stable_targets(me, sampling);
        targets.extend(self.rotating_targets(me, sampling, epoch));
        targets
    }

    /// The remote nodes `me` probes in every epoch: in a full mesh, every
    /// other node; sampled, the `stable` nearest on the ring.
    pub fn stable_targets(&self, me: &str, sampling: &PeerSampling) -> Vec<&'a str> {
        let at = self.locate(me);
        if at.full_mesh(sampling) {
            return (0..at.others).map(|o| self.ahead(&at, o)).collect();
        }
        // Half of the stable nodes ahead, half behind: if `me` probes a node
        // at distance d, that node probes `me` back at -d, so both
        // directions of every stable pair are measured (one-way failures
        // need both). An odd count leaves the farthest one ahead one-way.
        let (up, down) = (sampling.stable.div_ceil(2), sampling.stable / 2);
        (0..up)
            .map(|o| self.ahead(&at, o))
            .chain((0..down).map(|o| self.behind(&at, o)))
            .collect()
    }

    /// The remote nodes `me` probes in `epoch` only: none in a full mesh;
    /// sampled, `rotating` nodes beyond the stable ones ahead.
    pub fn rotating_targets(&self, me: &str, sampling: &PeerSampling, epoch: u64) -> Vec<&'a str> {
        let at = self.locate(me);
        if at.full_mesh(sampling) {
            return Vec::new();
        }
        let up = sampling.stable.div_ceil(2);
        // The rotating block walks the rest of the ring ahead. It starts at
        // a multiple of `rotating` modulo a power of two rather than modulo
        // the span, and wraps: views that differ by a node or two then still
        // agree on the offsets (except where the block wraps).
        let span = at.others - sampling.stable;
        let cycle = span.next_power_of_two() as u64;
        let first = (epoch.wrapping_mul(sampling.rotating as u64) % cycle) as usize;
        (first..first + sampling.rotating)
            .map(|c| self.ahead(&at, up + c % span))
            .collect()
    }

    /// Where `me` sits on the ring.
    fn locate(&self, me: &str) -> Place {
        let len = self.nodes.len();
        let key = (ring_position(me), me);
        let (start, on_ring) = match self.nodes.search(key) {
            Ok(i) => (i + 1, true),
            Err(i) => (i, false),
        };
        Place {
            len,
            start,
            on_ring,
            others: len - usize::from(on_ring),
        }
    }

    /// `ahead(0)` is the node following `me`.
    fn ahead(&self, at: &Place, offset: usize) -> &'a str {
        self.nodes.name((at.start + offset) % at.len)
    }

    /// `behind(0)` is the node before `me`.
    fn behind(&self, at: &Place, offset: usize) -> &'a str {
        let back = 1 + usize::from(at.on_ring) + offset;
        self.nodes
            .name((at.start + at.len * 2 - back % at.len) % at.len)
    }
}

/// A node's place on a [`Ring`]: the index of the node following it, and
/// whether it is on the ring itself.
struct Place {
    len: usize,
    start: usize,
    on_ring: bool,
    /// Ring nodes other than `me`.
    others: usize,
}

impl Place {
    /// Too few nodes to sample: everyone probes everyone.
    fn full_mesh(&self, sampling: &PeerSampling) -> bool {
        self.len <= sampling.full_mesh_max_nodes || self.others <= sampling.per_agent()
    }
}

/// Rounds between two moves of the rotating sampled nodes (an epoch, in
/// probe intervals): long enough for the aggregator to confirm a broken
/// path (it raises after 3 rounds). Agents on their own watches and the
/// aggregator's pinglists both count epochs with it.
pub const ROTATE_EVERY_ROUNDS: u64 = 6;

/// The epoch of the rotating targets at `unix_ms`: it advances every
/// `rounds` rounds of `interval_ms`, on the wall clock so that agents agree.
pub fn epoch(unix_ms: u64, interval_ms: u64, rounds: u64) -> u64 {
    unix_ms / interval_ms.saturating_mul(rounds).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:04}")).collect()
    }

    fn sampled() -> PeerSampling {
        PeerSampling {
            full_mesh_max_nodes: 200,
            stable: 50,
            rotating: 2,
        }
    }

    /// A ring its owner keeps sorted answers as the ring built from names,
    /// for nodes on it and off it.
    #[test]
    fn a_kept_ring_is_the_built_ring() {
        let all = names(1000);
        let mut kept: Vec<(u64, String)> =
            all.iter().map(|n| (ring_position(n), n.clone())).collect();
        kept.sort();
        let built = Ring::new(all.iter().map(String::as_str));
        let borrowed = Ring::from_sorted(&kept);
        for me in all
            .iter()
            .map(String::as_str)
            .chain(["elsewhere", "node-x"])
        {
            for epoch in [0, 7] {
                assert_eq!(
                    built.targets(me, &sampled(), epoch),
                    borrowed.targets(me, &sampled(), epoch),
                    "{me}"
                );
            }
        }
    }

    /// Sampled above 100 nodes.
    fn sampling_of(stable: usize, rotating: usize) -> PeerSampling {
        PeerSampling {
            full_mesh_max_nodes: 100,
            stable,
            rotating,
        }
    }

    /// Every node's targets in one epoch, as a set of directed edges.
    fn edges(nodes: &[String], s: &PeerSampling, epoch: u64) -> BTreeSet<(String, String)> {
        let ring = Ring::new(nodes.iter().map(String::as_str));
        nodes
            .iter()
            .flat_map(|me| {
                ring.targets(me, s, epoch)
                    .into_iter()
                    .map(move |t| (me.clone(), t.to_owned()))
            })
            .collect()
    }

    fn in_degrees(edges: &BTreeSet<(String, String)>) -> BTreeMap<&str, usize> {
        let mut d = BTreeMap::new();
        for (_, to) in edges {
            *d.entry(to.as_str()).or_default() += 1;
        }
        d
    }

    #[test]
    fn small_clusters_are_a_full_mesh() {
        let nodes = names(5);
        let ring = Ring::new(nodes.iter().map(String::as_str));
        let t: BTreeSet<&str> = ring
            .targets("node-0002", &sampled(), 7)
            .into_iter()
            .collect();
        assert_eq!(
            t,
            ["node-0000", "node-0001", "node-0003", "node-0004"].into()
        );
        // Not on the ring (its node is cordoned): still probes the others.
        assert_eq!(ring.targets("node-9999", &sampled(), 0).len(), 5);
    }

    #[test]
    fn at_5000_nodes_every_node_is_probed_by_exactly_k_peers() {
        let nodes = names(5000);
        let s = sampled();
        for epoch in [0, 1, 977, 2047, 2048] {
            let e = edges(&nodes, &s, epoch);
            let k = s.per_agent();
            assert_eq!(e.len(), 5000 * k, "distinct targets, none twice");
            assert!(e.iter().all(|(from, to)| from != to));
            let d = in_degrees(&e);
            assert_eq!(d.len(), 5000, "every node probed");
            assert!(d.values().all(|&x| x == k), "{:?}", d.values().min());
        }
    }

    #[test]
    fn an_odd_stable_count_keeps_the_in_degree() {
        let nodes = names(500);
        let s = sampling_of(7, 1);
        let e = edges(&nodes, &s, 3);
        assert_eq!(e.len(), 500 * 8);
        assert!(in_degrees(&e).values().all(|&d| d == 8));
        let one_way = e
            .iter()
            .filter(|(a, b)| !e.contains(&(b.clone(), a.clone())))
            .count();
        // The farthest stable node ahead, and the rotating one.
        assert!(one_way <= 500 * 2, "{one_way}");
    }

    #[test]
    fn stable_pairs_are_probed_both_ways() {
        let nodes = names(1000);
        let s = PeerSampling {
            rotating: 0,
            ..sampled()
        };
        let e = edges(&nodes, &s, 0);
        assert_eq!(e.len(), 1000 * s.stable);
        assert!(e.iter().all(|(a, b)| e.contains(&(b.clone(), a.clone()))));
    }

    #[test]
    fn a_lagging_view_moves_in_degrees_by_little() {
        let before = names(5000);
        let mut nodes = before.clone();
        nodes.push("node-new".to_owned());
        let s = sampled();
        let old = Ring::new(before.iter().map(String::as_str));
        let new = Ring::new(nodes.iter().map(String::as_str));
        // Half of the agents have seen the new node, half have not.
        let mut d: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, me) in nodes.iter().enumerate() {
            let ring = if i % 2 == 0 { &old } else { &new };
            for t in ring.targets(me, &s, 3) {
                *d.entry(t).or_default() += 1;
            }
        }
        // Each contiguous block of offsets (stable, rotating) is off by at
        // most one at a node where the views disagree. The newcomer itself is
        // probed by those that have seen it (the aggregator's node grace).
        assert!(d.remove("node-new").is_some_and(|x| x < s.per_agent()));
        let k = s.per_agent();
        assert!(d.values().all(|&x| x + 2 >= k && x <= k + 2), "{d:?}");
        let off_by_more_than_one = d.values().filter(|&&x| x.abs_diff(k) > 1).count();
        assert!(off_by_more_than_one < 5000 / 100, "{off_by_more_than_one}");
    }

    #[test]
    fn joining_or_leaving_changes_one_target_of_k_nodes() {
        let s = PeerSampling {
            rotating: 0,
            ..sampled()
        };
        let before = names(5000);
        let mut after = before.clone();
        after.push("node-joined".to_owned());
        let (a, b) = (edges(&before, &s, 0), edges(&after, &s, 0));
        let removed: Vec<_> = a.difference(&b).collect();
        let added: Vec<_> = b
            .difference(&a)
            .filter(|(f, _)| f != "node-joined")
            .collect();
        // The K nodes nearest the newcomer (K/2 on each side) each drop their
        // farthest target on its side and probe the newcomer instead; nobody
        // else changes.
        assert_eq!(removed.len(), s.stable);
        assert_eq!(added.len(), s.stable);
        assert!(added.iter().all(|(_, to)| to == "node-joined"));
        let changed: BTreeSet<&String> = removed.iter().map(|(f, _)| f).collect();
        assert_eq!(changed.len(), s.stable);
        // Leaving is the mirror image.
        let mut left = before.clone();
        left.retain(|n| n != "node-1234");
        let c = edges(&left, &s, 0);
        let gone: Vec<_> = a.difference(&c).filter(|(f, _)| f != "node-1234").collect();
        assert_eq!(gone.len(), s.stable);
        assert!(gone.iter().all(|(_, to)| to == "node-1234"));
        assert_eq!(c.difference(&a).count(), s.stable);
    }

    #[test]
    fn rotation_covers_every_pair_over_the_epochs() {
        let nodes = names(300);
        let s = sampling_of(10, 3);
        let span: usize = 299 - 10;
        let mut seen = BTreeSet::new();
        for epoch in 0..span.next_power_of_two().div_ceil(3) as u64 {
            let e = edges(&nodes, &s, epoch);
            assert_eq!(e.len(), 300 * 13, "the rotating block is never skipped");
            seen.extend(e);
        }
        assert_eq!(
            seen.len(),
            300 * 299,
            "every directed pair probed once in a while"
        );
    }

    /// `targets()` before the split into stable and rotating parts, kept
    /// as the reference the split must reproduce.
    fn targets_before_the_split<'a>(
        ring: &Ring<'a>,
        me: &str,
        sampling: &PeerSampling,
        epoch: u64,
    ) -> Vec<&'a str> {
        let nodes = &ring.nodes;
        let len = nodes.len();
        let key = (ring_position(me), me);
        let (start, on_ring) = match nodes.search(key) {
            Ok(i) => (i + 1, true),
            Err(i) => (i, false),
        };
        let others = len - usize::from(on_ring);
        let ahead = |offset: usize| nodes.name((start + offset) % len);
        let behind = |offset: usize| {
            let back = 1 + usize::from(on_ring) + offset;
            nodes.name((start + len * 2 - back % len) % len)
        };
        if len <= sampling.full_mesh_max_nodes || others <= sampling.per_agent() {
            return (0..others).map(ahead).collect();
        }
        let (up, down) = (sampling.stable.div_ceil(2), sampling.stable / 2);
        let mut targets: Vec<&str> = (0..up).map(ahead).chain((0..down).map(behind)).collect();
        let span = others - sampling.stable;
        let cycle = span.next_power_of_two() as u64;
        let first = (epoch.wrapping_mul(sampling.rotating as u64) % cycle) as usize;
        targets.extend((first..first + sampling.rotating).map(|c| ahead(up + c % span)));
        targets
    }

    #[test]
    fn stable_then_rotating_is_the_same_targets_at_5000_nodes() {
        let nodes = names(5000);
        let ring = Ring::new(nodes.iter().map(String::as_str));
        let odd = sampling_of(7, 3);
        for s in [sampled(), odd, PeerSampling::default()] {
            for me in nodes
                .iter()
                .step_by(7)
                .map(String::as_str)
                .chain(["off-ring"])
            {
                let stable = ring.stable_targets(me, &s);
                assert_eq!(stable.len(), s.stable);
                for epoch in [0, 1, 2, 977, 2047, 2048, u64::MAX] {
                    let rotating = ring.rotating_targets(me, &s, epoch);
                    assert_eq!(rotating.len(), s.rotating);
                    let reference = targets_before_the_split(&ring, me, &s, epoch);
                    assert_eq!(ring.targets(me, &s, epoch), reference, "{me} {epoch}");
                    assert_eq!([stable.clone(), rotating].concat(), reference);
                }
            }
        }
        // A full mesh: everything is stable, nothing rotates.
        let small = Ring::new(nodes[..150].iter().map(String::as_str));
        assert_eq!(small.stable_targets("node-0003", &sampled()).len(), 149);
        assert!(
            small
                .rotating_targets("node-0003", &sampled(), 5)
                .is_empty()
        );
    }

    #[test]
    fn positions_are_stable_and_spread() {
        // Fixed algorithm: a changed hash would reshuffle every cluster on upgrade.
        assert_eq!(ring_position("node-0001"), ring_position("node-0001"));
        assert_ne!(ring_position("node-0001"), ring_position("node-0002"));
        let top: usize = names(1000)
            .iter()
            .filter(|n| ring_position(n) >> 63 == 1)
            .count();
        assert!((400..600).contains(&top), "{top}");
    }

    #[test]
    fn epochs_follow_the_wall_clock() {
        assert_eq!(epoch(59_999, 10_000, 6), 0);
        assert_eq!(epoch(60_000, 10_000, 6), 1);
        assert_eq!(epoch(5, 0, 0), 5);
    }
}
