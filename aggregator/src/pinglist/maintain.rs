//! The task that keeps the [`PinglistBook`] current: it waits for an event
//! of the nodes, reporter or probe-target watches (Events and
//! NetworkPolicies do not wake it), lets a burst settle for
//! [`DEBOUNCE`], then reads the stores, diffs the view and publishes the
//! lists whose bytes changed, off the async threads. At each epoch boundary
//! it renews the rotations due and expires departed agents.

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
        let changed = tokio::select! {
            () = kube.targets_changed() => {
                tokio::time::sleep(DEBOUNCE).await;
                true
            }
            () = tokio::time::sleep(to_boundary) => false,
        };
        let Some(inputs) = kube.pinglist_inputs() else {
            continue;
        };
        let now = now_unix_ms();
        let epoch = cfg.epoch(now);
        let tick = epoch != last_epoch;
        last_epoch = epoch;
        let mut state = lists.take().unwrap_or_else(|| Lists::new(cfg.clone()));
        let started = std::time::Instant::now();
        let work = tokio::task::spawn_blocking(move || {
            let mut changes: Vec<Change> = Vec::new();
            if changed || state.is_empty() {
                let (nodes, reporters, targets) = &inputs;
                let view = ClusterView::from_stores(
                    nodes.iter().map(AsRef::as_ref),
                    reporters.iter().map(AsRef::as_ref),
                    targets.iter().map(AsRef::as_ref),
                );
                changes = state.update(view, now);
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
