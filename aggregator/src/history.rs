//! The last few rounds of echo counts per (source node, network, peer pod).
//!
//! One round holds about six echoes per cell (two pods, three echoes each):
//! too few to tell a lossy path from bad luck. Loss, MTU and latency are
//! therefore judged over a short window of rounds, kept here.
//!
//! History is kept per peer pod, not per destination node, so that a pod
//! that went away (re-created under a new IP, deleted) leaves the window at
//! the next report that no longer lists it, instead of weighing on its
//! node's loss for several rounds.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::HashMap;

use netmatrix_api::NetworkMode;

use crate::store::held::{held_ms, measured_ms};
use crate::store::{Counts, HeldPeer};

/// Index of `network` in the per-network arrays (pod, host) kept here, by
/// the path windows and by the rules.
pub(crate) fn network_slot(network: NetworkMode) -> usize {
    match network {
        NetworkMode::Pod => 0,
        NetworkMode::Host => 1,
    }
}

/// Rounds kept per peer unless configured (`--history-rounds`).
pub const DEFAULT_ROUNDS: usize = 5;

/// One peer's echo counts in one round.
///
/// Kept for six rounds per probed pod (a million and a half at 5,000
/// nodes), so kept small: 12 bytes. Counts saturate at 65,535 echoes a
/// round, far above what an agent sends one pod (a report lists a pod
/// once: validation refuses an address listed twice).
#[derive(Debug, Clone, Copy)]
pub struct RoundSample {
    pub sent: u16,
    pub received: u16,
    /// Mean RTT in milliseconds; NaN when none was measured.
    rtt_avg_ms: f32,
    /// Large Don't-Fragment echoes (sent, received); (0, 0) when not probed.
    mtu: (u16, u16),
}

/// Equal when the same bits: NaN ("none measured") equals itself.
impl PartialEq for RoundSample {
    fn eq(&self, other: &Self) -> bool {
        (
            self.sent,
            self.received,
            self.rtt_avg_ms.to_bits(),
            self.mtu,
        ) == (
            other.sent,
            other.received,
            other.rtt_avg_ms.to_bits(),
            other.mtu,
        )
    }
}

impl Default for RoundSample {
    fn default() -> Self {
        RoundSample {
            sent: 0,
            received: 0,
            rtt_avg_ms: f32::NAN,
            mtu: (0, 0),
        }
    }
}

impl RoundSample {
    pub fn of(peer: &HeldPeer) -> Self {
        let count = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
        let counts = |e: &Counts| (count(e.sent), count(e.received.min(e.sent)));
        let (sent, received) = counts(&peer.icmp.counts());
        RoundSample {
            sent,
            received,
            rtt_avg_ms: held_ms(peer.icmp.rtt_avg_ms().filter(|v| *v >= 0.0)),
            // A pod that answered no small echo says nothing about the MTU.
            mtu: peer
                .mtu
                .as_ref()
                .filter(|_| received > 0)
                .map_or((0, 0), counts),
        }
    }

    fn rtt_avg_ms(&self) -> Option<f64> {
        measured_ms(self.rtt_avg_ms)
    }

    /// Every echo lost: the pod or the path was down, which is not "loss".
    fn is_outage(&self) -> bool {
        self.sent > 0 && self.received == 0
    }

    /// Some echoes lost, some answered: the signature of a lossy path.
    fn is_partial(&self) -> bool {
        self.received > 0 && self.received < self.sent
    }
}

#[derive(Debug, Clone)]
struct PeerTrack {
    ip: IpAddr,
    node: Arc<str>,
    /// Newest first.
    rounds: VecDeque<RoundSample>,
}

/// What the last rounds say about one directed path (all pods of `to` as
/// probed from one source).
///
/// One per probed path is alive while a round is judged (a quarter of a
/// million at 5,000 nodes): counts in 32 bits (at most 60 rounds of a
/// node's pods with 16-bit counts each, far beyond what agents send; added
/// saturating), rounds in 16 and the RTT in `f32`, as in the samples: 32
/// bytes, not 72.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PathWindow {
    /// Rounds held (the longest peer history).
    pub rounds: u16,
    /// Echoes sent and received over the window, leaving out the rounds in
    /// which a pod answered nothing (outages are judged by the cell rules).
    pub sent: u32,
    pub received: u32,
    /// Rounds in which at least one pod lost some, not all, of its echoes.
    pub partial_rounds: u16,
    /// Rounds with at least one answered echo.
    pub rtt_rounds: u16,
    /// Mean RTT over the window's answered echoes.
    pub rtt_avg_ms: Option<f32>,
    /// Large echoes over the window.
    pub mtu_sent: u32,
    pub mtu_received: u32,
}

impl PathWindow {
    /// Loss over the window's rounds that were not outages.
    pub fn loss(&self) -> Option<f64> {
        (self.sent > 0).then(|| 1.0 - f64::from(self.received) / f64::from(self.sent))
    }

    pub fn mtu_loss(&self) -> Option<f64> {
        (self.mtu_sent > 0).then(|| 1.0 - f64::from(self.mtu_received) / f64::from(self.mtu_sent))
    }
}

/// Per source (node, network): the peers of its latest report and their
/// last rounds.
///
/// A source's tracks are a vector sorted by (node, peer address): a path's
/// window is one run of it, and at 5,000 nodes the matrix build reads a
/// quarter of a million of them a round in order, with no look-up.
#[derive(Debug, Clone)]
pub struct History {
    rounds: usize,
    /// By network (pod, host), then source node.
    sources: [HashMap<String, Vec<PeerTrack>>; 2],
}

impl Default for History {
    fn default() -> Self {
        History::new(DEFAULT_ROUNDS)
    }
}

impl History {
    pub fn new(rounds: usize) -> Self {
        History {
            rounds: rounds.max(1),
            sources: Default::default(),
        }
    }

    /// Records one report's round. Peers the report no longer lists are
    /// dropped with their history; a peer IP now on another node starts over.
    pub fn record(
        &mut self,
        source: &str,
        network: NetworkMode,
        samples: impl IntoIterator<Item = (IpAddr, Arc<str>, RoundSample)>,
    ) {
        let sources = &mut self.sources[network_slot(network)];
        let previous = sources.remove(source).unwrap_or_default();
        let mut incoming: Vec<(IpAddr, Arc<str>, RoundSample)> = samples.into_iter().collect();
        // Stable: of a pod listed twice, the first listing comes first.
        incoming.sort_by(|(a_ip, a_node, _), (b_ip, b_node, _)| {
            by_node(a_node, b_node).then(a_ip.cmp(b_ip))
        });
        let mut current: Vec<PeerTrack> = Vec::with_capacity(incoming.len());
        let mut previous = previous.into_iter().peekable();
        for (ip, node, sample) in incoming {
            if let Some(track) = current
                .last_mut()
                .filter(|t| t.ip == ip && by_node(&t.node, &node).is_eq())
            {
                // The same pod listed twice in one round: one sample.
                if let Some(front) = track.rounds.front_mut() {
                    merge(front, &sample);
                }
                continue;
            }
            // Both sorted by (node, address): one merge pass. A pod now on
            // another node is another track.
            let order = |t: &PeerTrack| by_node(&t.node, &node).then(t.ip.cmp(&ip));
            while previous.next_if(|t| order(t).is_lt()).is_some() {}
            let mut track = previous
                .next_if(|t| order(t).is_eq())
                .unwrap_or_else(|| PeerTrack {
                    ip,
                    node,
                    // Full size at once: growing by doubling ends at 8.
                    rounds: VecDeque::with_capacity(self.rounds + 1),
                });
            // One round more than the window: it tells whether a run of
            // lost echoes at the window's oldest end began before it. The
            // oldest goes before the newest comes: pushed onto a full deque,
            // it would double its buffer (12 samples held for 6).
            track.rounds.truncate(self.rounds);
            track.rounds.push_front(sample);
            current.push(track);
        }
        sources.insert(source.to_owned(), current);
    }

    /// Forgets a source (its node left the cluster).
    pub fn forget(&mut self, source: &str, network: NetworkMode) {
        self.sources[network_slot(network)].remove(source);
    }

    /// Number of sources held (tests, and a bound on memory).
    pub fn sources(&self) -> usize {
        self.sources.iter().map(HashMap::len).sum()
    }

    /// The window of `source`'s path to the pods on `to`.
    pub fn window(&self, source: &str, network: NetworkMode, to: &str) -> Option<PathWindow> {
        self.tracks(source, network)?
            .by_node()
            .find_map(|(node, w)| (node == to).then_some(w))
    }

    /// `source`'s peer tracks, for its paths' windows.
    pub fn tracks(&self, source: &str, network: NetworkMode) -> Option<Tracks<'_>> {
        self.sources[network_slot(network)]
            .get(source)
            .map(|tracks| Tracks {
                tracks,
                rounds: self.rounds,
            })
    }
}

/// Node names in their order as strings; the pods of one node in a report
/// share one name (the inventory's), so equal ones are usually one pointer.
fn by_node(a: &Arc<str>, b: &Arc<str>) -> std::cmp::Ordering {
    if Arc::ptr_eq(a, b) {
        return std::cmp::Ordering::Equal;
    }
    a.cmp(b)
}

/// One source's peer tracks ([`History::tracks`]), sorted by node.
#[derive(Debug, Clone, Copy)]
pub struct Tracks<'a> {
    tracks: &'a [PeerTrack],
    /// The window's length.
    rounds: usize,
}

impl<'a> Tracks<'a> {
    /// The window of each destination node (the pods the latest report
    /// lists on it), in the order of node names: the matrix build walks
    /// them beside its cells.
    pub fn by_node(&self) -> impl Iterator<Item = (&'a str, PathWindow)> + use<'a> {
        let rounds = self.rounds;
        self.tracks
            .chunk_by(|a, b| by_node(&a.node, &b.node).is_eq())
            .map(move |pods| {
                let window = match pods {
                    // One pod (the usual case): nothing to allocate.
                    [one] => window_of(&[judged(one)], rounds),
                    _ => window_of(&pods.iter().map(judged).collect::<Vec<_>>(), rounds),
                };
                (&*pods[0].node, window)
            })
    }
}

/// One path's window over the tracks of its pods.
///
/// A pod probed with several echoes a round is judged on its own: all lost
/// is an outage (left out), some lost is partial loss. A pod probed with a
/// single echo (the agent sends one per pod to nodes with many pods) cannot
/// tell a lost echo from a down pod, so the round's single echoes to the
/// node are pooled and judged together, leaving out the rounds in which a
/// pod was down rather than lossy ([`down_edges`]).
fn window_of(tracks: &[Judged], rounds: usize) -> PathWindow {
    let held = tracks
        .iter()
        .map(|(t, _)| t.rounds.len().min(rounds))
        .max()
        .unwrap_or(0);
    let mut w = PathWindow {
        rounds: saturate(held),
        ..Default::default()
    };
    let (mut rtt_sum, mut rtt_weight) = (0.0, 0u64);
    for round in 0..held {
        let samples = || tracks.iter().filter_map(move |(t, _)| t.rounds.get(round));
        let mut pooled = RoundSample::default();
        let mut partial = false;
        let up = tracks
            .iter()
            .filter(|(t, (newest, oldest))| round >= *newest && round + oldest < t.rounds.len());
        for s in up.filter_map(|(t, _)| t.rounds.get(round)) {
            if s.sent == 1 {
                merge(&mut pooled, s);
            } else {
                partial |= s.is_partial();
                if !s.is_outage() {
                    w.sent = w.sent.saturating_add(u32::from(s.sent));
                    w.received = w.received.saturating_add(u32::from(s.received));
                }
            }
        }
        if !pooled.is_outage() {
            w.sent = w.sent.saturating_add(u32::from(pooled.sent));
            w.received = w.received.saturating_add(u32::from(pooled.received));
        }
        if partial || pooled.is_partial() {
            w.partial_rounds = w.partial_rounds.saturating_add(1);
        }
        if samples().any(|s| s.received > 0) {
            w.rtt_rounds = w.rtt_rounds.saturating_add(1);
        }
        for s in samples() {
            if let Some(rtt) = s.rtt_avg_ms().filter(|_| s.received > 0) {
                rtt_sum += rtt * f64::from(s.received);
                rtt_weight += u64::from(s.received);
            }
            w.mtu_sent = w.mtu_sent.saturating_add(u32::from(s.mtu.0));
            w.mtu_received = w.mtu_received.saturating_add(u32::from(s.mtu.1));
        }
    }
    w.rtt_avg_ms = (rtt_weight > 0).then(|| (rtt_sum / rtt_weight as f64) as f32);
    w
}

/// A count of rounds as held in a [`PathWindow`].
fn saturate(rounds: usize) -> u16 {
    u16::try_from(rounds).unwrap_or(u16::MAX)
}

/// A pod's track with its [`down_edges`].
type Judged<'a> = (&'a PeerTrack, (usize, usize));

fn judged(track: &PeerTrack) -> Judged<'_> {
    (track, down_edges(track))
}

/// Rounds at the newest and the oldest end of a single-echo pod's history in
/// which it was down rather than behind a lossy path: a run of at least two
/// lost echoes at either end (the pod went down, or came back; the history
/// holds a round more than the window, so that a run is seen as one even
/// when the window cuts it). Random loss
/// of 10 % loses two in a row once in a hundred, and only runs at the ends
/// are left out, so a lossy path keeps nearly all its evidence while a pod
/// going down weighs as loss for one round at most.
fn down_edges(track: &PeerTrack) -> (usize, usize) {
    let lost = |s: &&RoundSample| s.sent == 1 && s.received == 0;
    let run = |n: usize| if n >= 2 { n } else { 0 };
    let newest = run(track.rounds.iter().take_while(lost).count());
    let oldest = run(track.rounds.iter().rev().take_while(lost).count());
    (newest, oldest)
}

fn merge(into: &mut RoundSample, other: &RoundSample) {
    into.sent = into.sent.saturating_add(other.sent);
    into.received = into.received.saturating_add(other.received);
    if into.rtt_avg_ms.is_nan() {
        into.rtt_avg_ms = other.rtt_avg_ms;
    }
    into.mtu = (
        into.mtu.0.saturating_add(other.mtu.0),
        into.mtu.1.saturating_add(other.mtu.1),
    );
}

/// Windows of the fresh rows' paths, by (network, from, to). Node names
/// are numbered once per round and each source's windows kept in a list
/// sorted by destination: at 5,000 nodes the build stores a quarter million
/// windows a round, and the rules walk them alongside the rows' cells
/// ([`RowWindows`]) rather than looking each one up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathWindows {
    // The matrix build fills `ids` and `rows` directly, a row at a time:
    // no per-path lookup at 5,000 nodes.
    pub(crate) ids: HashMap<String, u32>,
    /// By id.
    names: Vec<String>,
    /// By network, then source id: (destination id, window), sorted by id.
    pub(crate) rows: [Vec<Vec<(u32, PathWindow)>>; 2],
}

impl PathWindows {
    pub fn new() -> Self {
        Self::default()
    }

    /// Windows between `nodes`, numbered by their position (so that ids
    /// sort like names).
    pub(crate) fn for_nodes(nodes: &[String]) -> Self {
        PathWindows {
            ids: (0u32..).zip(nodes).map(|(i, n)| (n.clone(), i)).collect(),
            names: nodes.to_vec(),
            rows: Default::default(),
        }
    }

    fn id_or_insert(&mut self, node: String) -> u32 {
        if let Some(id) = self.ids.get(&node) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(node.clone());
        self.ids.insert(node, id);
        id
    }

    fn row_mut(&mut self, network: NetworkMode, from: u32) -> &mut Vec<(u32, PathWindow)> {
        let rows = &mut self.rows[network_slot(network)];
        let i = from as usize;
        if rows.len() <= i {
            rows.resize_with(i + 1, Vec::new);
        }
        &mut rows[i]
    }

    pub fn insert(&mut self, (network, from, to): (NetworkMode, String, String), w: PathWindow) {
        let (from, to) = (self.id_or_insert(from), self.id_or_insert(to));
        let row = self.row_mut(network, from);
        match row.binary_search_by_key(&to, |(id, _)| *id) {
            Ok(i) => row[i].1 = w,
            Err(i) => row.insert(i, (to, w)),
        }
    }

    fn row(&self, network: NetworkMode, from: &str) -> &[(u32, PathWindow)] {
        self.ids
            .get(from)
            .and_then(|id| self.rows[network_slot(network)].get(*id as usize))
            .map_or(&[], Vec::as_slice)
    }

    pub fn get(&self, network: NetworkMode, from: &str, to: &str) -> Option<&PathWindow> {
        let to = *self.ids.get(to)?;
        let row = self.row(network, from);
        let i = row.binary_search_by_key(&to, |(id, _)| *id).ok()?;
        Some(&row[i].1)
    }

    pub fn get_mut(
        &mut self,
        network: NetworkMode,
        from: &str,
        to: &str,
    ) -> Option<&mut PathWindow> {
        let (from, to) = (*self.ids.get(from)?, *self.ids.get(to)?);
        let row = self.rows[network_slot(network)].get_mut(from as usize)?;
        let i = row.binary_search_by_key(&to, |(id, _)| *id).ok()?;
        Some(&mut row[i].1)
    }

    /// `from`'s windows, to walk alongside its row's cells.
    pub fn row_windows<'a>(&'a self, network: NetworkMode, from: &'a str) -> RowWindows<'a> {
        RowWindows {
            windows: self,
            network,
            from,
            entries: self.row(network, from),
            cursor: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.iter().flatten().all(Vec::is_empty)
    }
}

/// One source's windows with a cursor ([`PathWindows::row_windows`]).
pub struct RowWindows<'a> {
    windows: &'a PathWindows,
    network: NetworkMode,
    from: &'a str,
    entries: &'a [(u32, PathWindow)],
    cursor: usize,
}

impl<'a> RowWindows<'a> {
    /// The window of the path to `to`. Asked in the row's (sorted) order,
    /// as the matrix build stores them, this is a step of the cursor; any
    /// other order falls back to a lookup.
    pub fn find(&mut self, to: &str) -> Option<&'a PathWindow> {
        while let Some((id, w)) = self.entries.get(self.cursor) {
            match self.windows.names[*id as usize].as_str().cmp(to) {
                std::cmp::Ordering::Less => self.cursor += 1,
                std::cmp::Ordering::Equal => {
                    self.cursor += 1;
                    return Some(w);
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        self.windows.get(self.network, self.from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent: u16, received: u16) -> RoundSample {
        RoundSample {
            sent,
            received,
            rtt_avg_ms: if received > 0 { 1.0 } else { f32::NAN },
            mtu: (2, if received > 0 { 2 } else { 0 }),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn round(h: &mut History, peers: &[(&str, &str, RoundSample)]) {
        h.record(
            "n1",
            NetworkMode::Pod,
            peers.iter().map(|(a, n, s)| (ip(a), Arc::from(*n), *s)),
        );
    }

    #[test]
    fn keeps_the_last_rounds_and_leaves_outages_out_of_loss() {
        let mut h = History::new(3);
        for s in [sample(3, 0), sample(3, 3), sample(3, 2), sample(3, 1)] {
            round(
                &mut h,
                &[("10.244.2.2", "n2", s), ("10.244.2.3", "n2", sample(3, 3))],
            );
        }
        let w = h.window("n1", NetworkMode::Pod, "n2").unwrap();
        // The outage round fell out of the 3-round window.
        assert_eq!(w.rounds, 3);
        assert_eq!((w.sent, w.received), (18, 15));
        assert_eq!(w.partial_rounds, 2);
        assert_eq!(w.rtt_rounds, 3);
        assert_eq!((w.mtu_sent, w.mtu_received), (12, 12));
        assert!(h.window("n1", NetworkMode::Pod, "n3").is_none());
        assert!(h.window("n1", NetworkMode::Host, "n2").is_none());

        round(&mut h, &[("10.244.2.2", "n2", sample(3, 0))]);
        let w = h.window("n1", NetworkMode::Pod, "n2").unwrap();
        assert_eq!(
            w.loss(),
            Some(1.0 - 3.0 / 6.0),
            "the outage round is left out"
        );
    }

    /// One sample per pod and round, one window per path and round: at
    /// 5,000 nodes a quarter of a million of each are alive.
    #[test]
    fn samples_and_windows_stay_small() {
        assert_eq!(std::mem::size_of::<RoundSample>(), 12);
        assert!(std::mem::size_of::<PathWindow>() <= 32);
    }

    /// A track holds the window and one round more, in a buffer of that
    /// size round after round (a quarter of a million tracks at 5,000 nodes).
    #[test]
    fn a_track_keeps_one_round_more_than_the_window_in_a_buffer_that_size() {
        let mut h = History::new(5);
        for _ in 0..20 {
            round(&mut h, &[("10.244.2.2", "n2", sample(3, 3))]);
        }
        let track = &h.sources[0]["n1"][0];
        assert_eq!(track.rounds.len(), 6);
        assert_eq!(track.rounds.capacity(), 6);
    }

    #[test]
    fn peers_that_went_away_leave_the_window() {
        let mut h = History::default();
        round(&mut h, &[("10.244.2.9", "n2", sample(3, 0))]);
        round(&mut h, &[("10.244.2.7", "n2", sample(3, 3))]);
        let w = h.window("n1", NetworkMode::Pod, "n2").unwrap();
        assert_eq!((w.rounds, w.sent, w.received), (1, 3, 3));
        // An IP reused on another node starts a new history.
        round(&mut h, &[("10.244.2.7", "n3", sample(3, 3))]);
        assert!(h.window("n1", NetworkMode::Pod, "n2").is_none());
        assert_eq!(h.window("n1", NetworkMode::Pod, "n3").unwrap().rounds, 1);
        h.forget("n1", NetworkMode::Pod);
        assert_eq!(h.sources(), 0);
    }

    /// A pod going down, then coming back, among pods probed with single
    /// echoes: it weighs as loss for one round at most.
    #[test]
    fn a_single_echo_pod_going_down_and_back_is_not_loss() {
        let mut h = History::new(5);
        let mut partial = Vec::new();
        for r in 1..=12 {
            // The third pod is down in rounds 4 to 8.
            let third = sample(1, u16::from(!(4..=8).contains(&r)));
            round(
                &mut h,
                &[
                    ("10.244.2.2", "n2", sample(1, 1)),
                    ("10.244.2.3", "n2", sample(1, 1)),
                    ("10.244.2.4", "n2", third),
                ],
            );
            let w = h.window("n1", NetworkMode::Pod, "n2").unwrap();
            partial.push(w.partial_rounds);
            if r == 6 {
                assert_eq!((w.sent, w.received), (12, 12), "down rounds left out");
            }
        }
        // Round 4: one lost echo, counted; from round 5 it is a run: left
        // out. Back in round 9: the lost run is now at the oldest end.
        assert_eq!(partial, [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    /// Nodes with many pods get one echo per pod: a lost echo is loss when
    /// other pods answered, and a pod that never answers is down, not loss.
    #[test]
    fn single_echoes_are_judged_per_node() {
        let pods: Vec<String> = (10..20).map(|i| format!("10.244.2.{i}")).collect();
        let mut h = History::new(5);
        for r in 0..5 {
            // Two of ten echoes lost each round, different pods each time;
            // the pod .19 is down throughout.
            let samples: Vec<(&str, &str, RoundSample)> = pods
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let lost = i == 9 || i == r || i == r + 4;
                    (a.as_str(), "n2", sample(1, u16::from(!lost)))
                })
                .collect();
            round(&mut h, &samples);
        }
        let w = h.window("n1", NetworkMode::Pod, "n2").unwrap();
        assert_eq!(w.partial_rounds, 5, "every round lost some echoes");
        assert_eq!((w.sent, w.received), (45, 35), "the down pod is left out");

        // Every pod of the node lost its echo: an outage round, left out.
        let all_lost: Vec<(&str, &str, RoundSample)> = pods
            .iter()
            .map(|a| (a.as_str(), "n2", sample(1, 0)))
            .collect();
        round(&mut h, &all_lost);
        let w = h.window("n1", NetworkMode::Pod, "n2").unwrap();
        // And the two pods that had lost the round before too (pods 4 and
        // 8) now end on a run of two lost echoes: for all this window
        // knows, they went down, so that round leaves them out.
        assert_eq!((w.sent, w.received, w.partial_rounds), (34, 28, 3));
    }

    #[test]
    fn row_windows_are_found_in_any_order() {
        let window = |rounds| PathWindow {
            rounds,
            ..Default::default()
        };
        let nodes: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let mut built = PathWindows::for_nodes(&nodes);
        *built.row_mut(NetworkMode::Pod, 0) = vec![(1, window(1)), (3, window(3))];
        // Inserted by name, out of order, as the diagnosis tests do.
        let mut inserted = PathWindows::new();
        for (to, rounds) in [("d", 3), ("b", 1)] {
            inserted.insert((NetworkMode::Pod, "a".into(), to.into()), window(rounds));
        }
        for windows in [&built, &inserted] {
            let rounds = |order: &[&str]| -> Vec<Option<u16>> {
                let mut row = windows.row_windows(NetworkMode::Pod, "a");
                order
                    .iter()
                    .map(|to| row.find(to).map(|w| w.rounds))
                    .collect()
            };
            assert_eq!(
                rounds(&["a", "b", "c", "d"]),
                [None, Some(1), None, Some(3)]
            );
            assert_eq!(rounds(&["d", "c", "b"]), [Some(3), None, Some(1)]);
            assert!(
                windows
                    .row_windows(NetworkMode::Host, "a")
                    .find("b")
                    .is_none()
            );
            assert!(
                windows
                    .row_windows(NetworkMode::Pod, "x")
                    .find("b")
                    .is_none()
            );
        }
    }
}
