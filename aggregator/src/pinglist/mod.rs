//! Pinglists: what each agent probes, computed here from the aggregator's
//! watches so that the agents need none (design 20).
//!
//! - [`view`]: the cluster as the lists read it, and what changed; updated
//!   in place from the entries of the nodes the watch events touched, its
//!   rings kept in ring order;
//! - [`build`]: one list from the view, a pure function, and its bytes put
//!   together from each node's pieces, encoded once when the node changes;
//! - [`Lists`] (here): the incremental state. After a change it rebuilds
//!   only the candidate lists (those naming a changed node, the changed
//!   nodes' own, the ring neighbours of a join or leave) and returns only
//!   those whose bytes changed: the ETag is a hash of the body;
//! - [`PinglistBook`] (here): the published lists, one `watch` channel
//!   each, so a long poll wakes only when its own list changes;
//! - [`maintain`]: the task that feeds the book from the watches.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use netmatrix_api::sampling::{PeerSampling, Ring};
use netmatrix_api::{DNS_MAX_NEGATIVE_TTL_MS, GoneAgent, NetworkMode, Pinglist, etag};
use tokio::sync::{Notify, watch};

pub mod build;
pub mod maintain;
pub mod view;

use build::{Gone, NodePieces, Pieces, PinglistConfig, Window, due_base};
use view::ViewDiff;
pub use view::{ClusterView, Key, NETWORKS};

/// A list as served: its body, encoded once, and the body's ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// `pl1-…`, unquoted.
    pub etag: String,
    pub body: Bytes,
}

impl Published {
    pub fn of(list: &Pinglist) -> Self {
        // A list of strings, addresses and integers always serializes.
        let body = Bytes::from(serde_json::to_vec(list).unwrap_or_default());
        Published {
            etag: etag(&body),
            body,
        }
    }
}

/// What an update did to one list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// New bytes (or a new list).
    Publish(Key, Arc<Published>),
    /// The node's agent of that network is gone: so is its list.
    Remove(Key),
}

impl Change {
    pub fn key(&self) -> &Key {
        match self {
            Change::Publish(key, _) | Change::Remove(key) => key,
        }
    }
}

/// One list's state between updates.
#[derive(Debug, Clone)]
struct ListState {
    etag: String,
    /// The nodes its `nodes` names: a change to any of them may change it.
    refs: Vec<String>,
    window: Window,
}

/// The incremental state of every list: the last view, the departed
/// agents, and per list its ETag, the nodes it names and its rotation.
#[derive(Debug, Clone)]
pub struct Lists {
    cfg: PinglistConfig,
    view: ClusterView,
    gone: Gone,
    lists: HashMap<Key, ListState>,
    /// Node → the lists naming it.
    referenced_by: HashMap<String, HashSet<Key>>,
    /// Each node's encoded part of the lists, redone when it changes.
    pieces: Pieces,
}

impl Lists {
    pub fn new(cfg: PinglistConfig) -> Self {
        Lists {
            cfg,
            view: ClusterView::default(),
            gone: Gone::new(),
            lists: HashMap::new(),
            referenced_by: HashMap::new(),
            pieces: Pieces::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.lists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// Every list's ETag, in key order.
    pub fn etags(&self) -> BTreeMap<&Key, &str> {
        self.lists
            .iter()
            .map(|(k, s)| (k, s.etag.as_str()))
            .collect()
    }

    /// The ETag of `key`'s list.
    pub fn etag(&self, key: &Key) -> Option<&str> {
        self.lists.get(key).map(|l| l.etag.as_str())
    }

    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// Takes the new view at `now_ms`; returns the lists that changed. Costs
    /// a comparison of the whole view: at start, and after a relist.
    pub fn update(&mut self, view: ClusterView, now_ms: u64) -> Vec<Change> {
        let diff = view.diff(&self.view);
        let ring_lens = NETWORKS.map(|network| self.view.ring(network).len());
        self.view = view;
        self.apply(&diff, ring_lens, now_ms)
    }

    /// Takes the new entries of the nodes named (`None`: gone), the nodes
    /// the watch events touched, at `now_ms`; returns the lists that
    /// changed. Costs those nodes and the lists they change.
    pub fn update_nodes(
        &mut self,
        entries: impl IntoIterator<Item = (String, Option<view::NodeEntry>)>,
        now_ms: u64,
    ) -> Vec<Change> {
        let ring_lens = NETWORKS.map(|network| self.view.ring(network).len());
        let diff = self.view.set_entries(entries);
        self.apply(&diff, ring_lens, now_ms)
    }

    /// What `diff` (already applied to the view; the rings had `ring_lens`
    /// nodes before it) does to the lists.
    fn apply(&mut self, diff: &ViewDiff, ring_lens: [usize; 2], now_ms: u64) -> Vec<Change> {
        for node in &diff.changed_nodes {
            match self.view.nodes.get(node) {
                Some(entry) => {
                    self.pieces.insert(node.clone(), NodePieces::of(entry));
                }
                None => {
                    self.pieces.remove(node);
                }
            }
        }
        let mut touched: BTreeSet<String> = diff.changed_nodes.clone();
        // Departed agents, for the sampled lists' `srv.gone`; an address
        // that is an agent's again is no longer gone.
        for (ip, node) in &diff.agents_gone {
            let entries = self.gone.entry(node.clone()).or_default();
            if !entries.iter().any(|g| g.ip == *ip) {
                entries.push(GoneAgent {
                    ip: *ip,
                    since_unix_ms: now_ms,
                });
                touched.insert(node.clone());
            }
        }
        if !self.gone.is_empty() && !diff.agents_present.is_empty() {
            for (node, entries) in &mut self.gone {
                let before = entries.len();
                entries.retain(|g| !diff.agents_present.contains(&g.ip));
                if entries.len() != before {
                    touched.insert(node.clone());
                }
            }
            self.gone.retain(|_, e| !e.is_empty());
        }
        let epoch = self.cfg.epoch(now_ms);
        let mut candidates: BTreeSet<Key> = BTreeSet::new();
        let mut renew: HashSet<Key> = HashSet::new();
        for (network, old_len) in NETWORKS.into_iter().zip(ring_lens) {
            let ring = ring_of(&self.view, network);
            let was_full = self.cfg.full_mesh(old_len);
            // A changed node's own list: new, changed, or gone with its agent.
            candidates.extend(touched.iter().map(|node| (node.clone(), network)));
            if self.cfg.full_mesh(ring.len()) {
                // Every list names every node (and the whole SRV truth):
                // any change may change all of them.
                if !touched.is_empty() || !diff.is_empty() || !was_full {
                    candidates.extend(self.keys_of(network));
                }
                continue;
            }
            if was_full {
                // Sampled from now on: every list, with a fresh rotation.
                let all: Vec<Key> = self.keys_of(network).collect();
                renew.extend(all.iter().cloned());
                candidates.extend(all);
                continue;
            }
            for node in &touched {
                let naming = self.referenced_by.get(node).into_iter().flatten();
                candidates.extend(naming.filter(|k| k.1 == network).cloned());
            }
            // A join or a leave changes the stable set of the nodes within
            // half a stable set on either side (the other lists' rotation
            // is frozen until their renewal).
            // A node that left is placed at its hash on the ring without
            // it: its neighbours there are those that had it in reach.
            let reach = neighbourhood(&self.cfg.sampling);
            let moved = diff
                .ring_added
                .iter()
                .chain(&diff.ring_removed)
                .filter(|(n, _)| *n == network);
            for (_, name) in moved {
                candidates.extend(
                    ring.stable_targets(name, &reach)
                        .into_iter()
                        .map(|n| (n.to_owned(), network)),
                );
            }
            if !diff.ring_added.is_empty() || !diff.ring_removed.is_empty() {
                // Lists of nodes off the ring (a cordoned node still runs
                // its agent) sit at their hash: few, so all of them.
                let off_ring = self.view.off_ring(network);
                candidates.extend(off_ring.iter().map(|n| (n.clone(), network)));
            }
        }
        self.rebuild(candidates, &renew, epoch)
    }

    /// At an epoch boundary: renews the rotation of the lists due, and
    /// drops departed agents older than DNS may serve them.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Change> {
        let epoch = self.cfg.epoch(now_ms);
        let mut candidates = BTreeSet::new();
        let mut expired = BTreeSet::new();
        for (node, entries) in &mut self.gone {
            let before = entries.len();
            entries.retain(|g| now_ms.saturating_sub(g.since_unix_ms) < DNS_MAX_NEGATIVE_TTL_MS);
            if entries.len() != before {
                expired.insert(node.clone());
            }
        }
        self.gone.retain(|_, e| !e.is_empty());
        for node in expired {
            for network in NETWORKS {
                candidates.insert((node.clone(), network));
            }
            candidates.extend(self.referenced_by.get(&node).into_iter().flatten().cloned());
        }
        let mut renew = HashSet::new();
        for network in NETWORKS {
            if self.cfg.full_mesh(self.view.ring(network).len()) {
                continue;
            }
            for (key, state) in self.lists.iter().filter(|(k, _)| k.1 == network) {
                if state.window.base != due_base(&key.0, epoch) {
                    renew.insert(key.clone());
                    candidates.insert(key.clone());
                }
            }
        }
        self.rebuild(candidates, &renew, epoch)
    }

    /// The lists of `network` that should exist.
    fn keys_of(&self, network: NetworkMode) -> impl Iterator<Item = Key> + '_ {
        self.view
            .nodes
            .iter()
            .filter(move |(_, e)| e.has_agent(network))
            .map(move |(n, _)| (n.clone(), network))
    }

    /// Builds `candidates` (renewing the rotation of those in `renew` and
    /// of new lists), keeps the changed ones, drops the lists that should
    /// no longer exist.
    fn rebuild(
        &mut self,
        candidates: BTreeSet<Key>,
        renew: &HashSet<Key>,
        epoch: u64,
    ) -> Vec<Change> {
        let rings = NETWORKS.map(|network| ring_of(&self.view, network));
        let ring = |network: NetworkMode| &rings[usize::from(network == NetworkMode::Host)];
        let mut changes = Vec::new();
        for key in candidates {
            let exists = self
                .view
                .nodes
                .get(&key.0)
                .is_some_and(|e| e.has_agent(key.1));
            if !exists {
                if let Some(state) = self.lists.remove(&key) {
                    unreference(&mut self.referenced_by, &key, &state.refs);
                    changes.push(Change::Remove(key));
                }
                continue;
            }
            let ring = ring(key.1);
            let sampled = !self.cfg.full_mesh(ring.len());
            let window = match self.lists.get(&key) {
                Some(state) if !renew.contains(&key) => state.window.clone(),
                // A full mesh has no rotation: none computed.
                _ if !sampled => Window::default(),
                _ => Window::renew(ring, &key.0, &self.cfg.sampling, epoch),
            };
            let (body, refs) = build::encode(
                &self.view,
                &self.pieces,
                ring,
                (&key.0, key.1),
                &window,
                &self.gone,
                &self.cfg,
            );
            let published = Published {
                etag: etag(&body),
                body: Bytes::from(body),
            };
            let unchanged = self
                .lists
                .get(&key)
                .is_some_and(|s| s.etag == published.etag);
            let state = ListState {
                etag: published.etag.clone(),
                refs,
                window,
            };
            if let Some(old) = self.lists.insert(key.clone(), state) {
                unreference(&mut self.referenced_by, &key, &old.refs);
            }
            for node in &self.lists[&key].refs {
                self.referenced_by
                    .entry(node.clone())
                    .or_default()
                    .insert(key.clone());
            }
            if !unchanged {
                changes.push(Change::Publish(key, Arc::new(published)));
            }
        }
        changes
    }
}

fn unreference(referenced_by: &mut HashMap<String, HashSet<Key>>, key: &Key, refs: &[String]) {
    for node in refs {
        if let Some(keys) = referenced_by.get_mut(node) {
            keys.remove(key);
            if keys.is_empty() {
                referenced_by.remove(node);
            }
        }
    }
}

fn ring_of(view: &ClusterView, network: NetworkMode) -> Ring<'_> {
    Ring::from_sorted(view.ring_order(network))
}

/// A sampling whose stable set is the ring neighbours a join or a leave can
/// move into or out of a stable set: half a stable set (rounded up) on
/// each side.
fn neighbourhood(sampling: &PeerSampling) -> PeerSampling {
    PeerSampling {
        full_mesh_max_nodes: 0,
        stable: sampling.stable.div_ceil(2) * 2,
        rotating: 0,
    }
}

/// The published lists, one `watch` channel each: a change wakes the
/// waiters of that list only, and a reader costs a clone of an `Arc`.
#[derive(Debug, Default)]
pub struct PinglistBook {
    entries: RwLock<HashMap<Key, watch::Sender<Arc<Published>>>>,
    /// Woken when lists appear: polls that came before their list wait here.
    created: Notify,
}

impl PinglistBook {
    /// A book of every list of `view`, at `now_ms` (tests, and the
    /// aggregator with a fixed inventory).
    pub fn fixed(view: ClusterView, cfg: PinglistConfig, now_ms: u64) -> Self {
        let book = PinglistBook::default();
        book.apply(Lists::new(cfg).update(view, now_ms));
        book
    }

    /// The current list of `node`'s `network` agent, and its channel.
    pub fn subscribe(
        &self,
        node: &str,
        network: NetworkMode,
    ) -> Option<watch::Receiver<Arc<Published>>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&(node.to_owned(), network))
            .map(watch::Sender::subscribe)
    }

    /// As [`subscribe`](Self::subscribe), waiting up to `wait` for the list
    /// to exist: an agent that polls before the aggregator has seen its pod
    /// (a new node, or the aggregator just started) gets its list as soon
    /// as it is built rather than a retry later.
    pub async fn subscribe_within(
        &self,
        node: &str,
        network: NetworkMode,
        wait: Duration,
    ) -> Option<watch::Receiver<Arc<Published>>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the look-up, so a list created in between
            // is not missed.
            let created = self.created.notified();
            if let Some(list) = self.subscribe(node, network) {
                return Some(list);
            }
            if tokio::time::timeout_at(deadline, created).await.is_err() {
                return None;
            }
        }
    }

    /// The current ETag of `node`'s `network` list.
    pub fn etag(&self, node: &str, network: NetworkMode) -> Option<String> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&(node.to_owned(), network))
            .map(|sender| sender.borrow().etag.clone())
    }

    pub fn len(&self) -> usize {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes `changes`; returns how many lists changed.
    pub fn apply(&self, changes: Vec<Change>) -> usize {
        let count = changes.len();
        let mut created = false;
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        for change in changes {
            match change {
                Change::Publish(key, published) => match entries.get(&key) {
                    Some(sender) => {
                        sender.send_replace(published);
                    }
                    None => {
                        entries.insert(key, watch::Sender::new(published));
                        created = true;
                    }
                },
                // Dropping the sender ends its receivers' waits.
                Change::Remove(key) => {
                    entries.remove(&key);
                }
            }
        }
        drop(entries);
        if created {
            self.created.notify_waiters();
        }
        count
    }
}

#[cfg(test)]
mod tests;
