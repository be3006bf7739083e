//! The task that keeps the [`PinglistBook`] current: it waits for an event
//! of the nodes, reporter or probe-target watches (Events and
//! NetworkPolicies do not wake it), lets a burst settle for
//! [`DEBOUNCE`], then reads the entries of the nodes the events touched
//! (the whole view at start and after a relist), and publishes the lists
//! whose bytes changed, off the async threads. At each epoch boundary it
//! renews the rotations due and expires departed agents.

use std::sync::Arc;
use std::time::Duration;

use netmatrix_runtime::now_unix_ms;

use super::build::PinglistConfig;
use super::view::ClusterView;
use super::{Change, Lists, PinglistBook};
use crate::inventory::KubeInventory;
use crate::metrics::PinglistMetrics;

/// How long a burst of watch events may settle before the lists are
/// recomputed: well below the probe interval, so a cordon reaches the
/// agents before their next round.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

impl PinglistBook {
    /// Starts maintaining a book from `kube`'s watches; it fills once the
    /// nodes, reporters and probe targets have been listed.
    pub fn spawn(
        kube: KubeInventory,
        cfg: PinglistConfig,
        metrics: PinglistMetrics,
    ) -> Arc<PinglistBook> {
        let book = Arc::new(PinglistBook::default());
        tokio::spawn(maintain(kube, cfg, Arc::clone(&book), metrics));
        book
    }
}

async fn maintain(
    kube: KubeInventory,
    cfg: PinglistConfig,
    book: Arc<PinglistBook>,
    metrics: PinglistMetrics,
) {
    let epoch_ms = cfg.epoch_ms.max(1);
    let mut lists = Some(Lists::new(cfg.clone()));
    let mut last_epoch = cfg.epoch(now_unix_ms());
    loop {
        let now = now_unix_ms();
        let to_boundary = Duration::from_millis((now / epoch_ms + 1) * epoch_ms - now);
        tokio::select! {
            () = kube.targets_changed() => tokio::time::sleep(DEBOUNCE).await,
            () = tokio::time::sleep(to_boundary) => {}
        }
        // The touched nodes are taken before the stores are read: a store
        // applies an event before noting its node, so every node noted
        // until now is current in what is read next, and a later event is
        // noted for the next pass.
        if !kube.pinglist_synced() {
            continue;
        }
        let touched = kube.take_touched();
        let mut state = lists.take().unwrap_or_else(|| Lists::new(cfg.clone()));
        // The whole view at start and after a relist (deletions during a
        // watch outage were never events); else the touched nodes' objects.
        let whole = state.is_empty() || touched.relisted;
        let inputs = if whole {
            kube.pinglist_inputs()
        } else {
            Some(kube.pinglist_inputs_on(&touched.nodes))
        };
        let Some(inputs) = inputs else {
            lists = Some(state);
            continue;
        };
        let now = now_unix_ms();
        let epoch = cfg.epoch(now);
        let tick = epoch != last_epoch;
        last_epoch = epoch;
        let started = std::time::Instant::now();
        let work = tokio::task::spawn_blocking(move || {
            let mut changes: Vec<Change> = Vec::new();
            let (nodes, reporters, targets) = &inputs;
            let (nodes, reporters, targets) = (
                nodes.iter().map(AsRef::as_ref),
                reporters.iter().map(AsRef::as_ref),
                targets.iter().map(AsRef::as_ref),
            );
            if whole {
                changes = state.update(ClusterView::from_stores(nodes, reporters, targets), now);
            } else if !touched.nodes.is_empty() {
                let entries = ClusterView::entries_of(&touched.nodes, nodes, reporters, targets);
                changes = state.update_nodes(entries, now);
            }
            if tick {
                changes.extend(state.tick(now));
            }
            (state, changes)
        });
        match work.await {
            Ok((state, changes)) => {
                let count = book.apply(changes);
                metrics
                    .recompute_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics
                    .changes_total
                    .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
                metrics
                    .lists
                    .set(i64::try_from(book.len()).unwrap_or(i64::MAX));
                if count > 0 {
                    tracing::debug!(lists = state.len(), changed = count, "pinglists updated");
                }
                lists = Some(state);
            }
            // The state went with the panic: the next round starts from an
            // empty one, and republishes only what differs (content ETags).
            Err(error) => tracing::error!(%error, "pinglist recomputation failed"),
        }
    }
}
