//! The watch loop: a kube-rs reflector (watcher with the default backoff)
//! polled by a background task, with its health for the caller.
//!
//! A reflector store keeps its contents while its watcher retries, so when
//! the API server becomes unreachable — exactly when the operator needs the
//! tool — the last known objects stay, and the caller can say so.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

/// Health of one watch, written by its background task.
#[derive(Debug, Default)]
pub struct WatchHealth {
    /// The first complete list has been applied to the store.
    synced: AtomicBool,
    /// The last thing the watch stream produced was an event, not an error.
    healthy: AtomicBool,
}

impl WatchHealth {
    /// The first complete list has been applied to the store.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The last thing the watch produced was data, not an error.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

/// Runs `watcher(api, config).default_backoff().modify(trim).reflect(..)` in
/// a task (the store only advances while the stream is polled), calling
/// `on_event` with every event the store has applied. Objects are cached
/// as `trim` leaves them. Failures are logged once per outage and retried
/// with the backoff; the store keeps its last state meanwhile.
pub fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    trim: impl FnMut(&mut K) + Send + 'static,
    on_event: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (Store<K>, Arc<WatchHealth>)
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let health = Arc::new(WatchHealth::default());
    let selector = [&config.label_selector, &config.field_selector]
        .into_iter()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let task_health = health.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut outage_logged = false;
        while let Some(item) = stream.next().await {
            match item {
                // `Init` only announces a (re)list that may still fail; any
                // other event is data from the API server.
                Ok(event @ watcher::Event::Init) => on_event(&event),
                Ok(event) => {
                    if matches!(event, watcher::Event::InitDone)
                        && !task_health.synced.swap(true, Ordering::AcqRel)
                    {
                        tracing::info!(what, %selector, "initial list received");
                    }
                    if !task_health.healthy.swap(true, Ordering::AcqRel) {
                        outage_logged = false;
                        tracing::info!(what, "watch is healthy");
                    }
                    on_event(&event);
                }
                Err(error) => {
                    // Warn once per outage (including one at start-up), not per retry.
                    let was_healthy = task_health.healthy.swap(false, Ordering::AcqRel);
                    if was_healthy || !outage_logged {
                        outage_logged = true;
                        tracing::warn!(what, %error, "watch failed; keeping the last known objects while retrying");
                    } else {
                        tracing::debug!(what, %error, "watch still failing");
                    }
                }
            }
        }
        tracing::error!(what, "watch stream ended; it will no longer be updated");
    });
    (reader, health)
}
