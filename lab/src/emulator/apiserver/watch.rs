//! The watch stream: newline-delimited `{"type": ..., "object": ...}` events,
//! as `GET ...?watch=true` sends them.
//!
//! Where it starts, as the real API server decides it:
//! - `resourceVersion=N` (what kube-rs's watcher sends after its list): the
//!   changes after N, or a single `ERROR` event with a `410 Expired` Status
//!   when N is older than the history kept, so that the client relists;
//! - no resourceVersion, or `0`: synthetic `ADDED` events for every object
//!   that exists now, then the changes;
//! - `sendInitialEvents=true` (kube-rs's streaming-list mode): the same
//!   synthetic `ADDED` events, then a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end: "true"`, then the changes.
//!
//! Changes pass through the request's selectors with the object's state
//! before and after: an object that starts matching arrives as `ADDED`, one
//! that stops matching as `DELETED` (its previous state), like the API
//! server's watch cache. When idle, `BOOKMARK`s carry the current
//! resourceVersion if the client allows them; the stream ends after
//! `timeoutSeconds`.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::clients::WatchMeter;
use super::selector::Filter;
use crate::emulator::cluster::{ClusterState, Event, EventType, Expired, Kind};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The changes after this resourceVersion.
    After(u64),
    /// Synthetic ADDED events for the current state first; with
    /// `end_bookmark` (`sendInitialEvents=true`), a BOOKMARK marks their end.
    CurrentState { end_bookmark: bool },
}

/// One watch request, parsed.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub kind: Kind,
    pub filter: Filter,
    pub start: Start,
    pub timeout: Duration,
    /// Send BOOKMARK events this often when idle (`None`: not allowed).
    pub bookmarks: Option<Duration>,
    /// Each object as a one-row Table (`kubectl get -w`).
    pub table: bool,
}

/// The event lines of a watch, ending after the request's timeout or after
/// an ERROR event. `meter` counts the lines for the client, and the stream
/// as open until it is dropped.
pub fn stream(
    state: ClusterState,
    request: WatchRequest,
    meter: Option<WatchMeter>,
) -> impl Stream<Item = Bytes> + Send {
    let watch = Watch::new(state, request, meter);
    futures::stream::unfold(watch, |mut watch| async move {
        let line = watch.next_line().await?;
        Some((line, watch))
    })
}

struct Watch {
    state: ClusterState,
    request: WatchRequest,
    wake: watch::Receiver<u64>,
    /// Every change up to this resourceVersion has been handled.
    seen: u64,
    pending: VecDeque<Value>,
    deadline: Instant,
    /// Nothing follows the pending lines (after an ERROR event).
    finished: bool,
    /// Dropped with the stream: the watch then no longer counts as open.
    meter: Option<WatchMeter>,
}

impl Watch {
    fn new(state: ClusterState, request: WatchRequest, meter: Option<WatchMeter>) -> Self {
        // Subscribe before reading anything: a change made after this point
        // wakes the watch even if it lands between the snapshot and the wait.
        let mut wake = state.subscribe();
        wake.borrow_and_update();
        let mut pending = VecDeque::new();
        let seen = match request.start {
            Start::After(rv) => rv,
            Start::CurrentState { end_bookmark } => {
                let (rv, objects) = state.list(request.kind);
                pending.extend(
                    objects
                        .into_iter()
                        .filter(|o| request.filter.matches(o))
                        .map(|o| event_line("ADDED", o)),
                );
                if end_bookmark {
                    pending.push_back(bookmark(request.kind, rv, true));
                }
                rv
            }
        };
        let deadline = Instant::now() + request.timeout;
        Watch {
            state,
            request,
            wake,
            seen,
            pending,
            deadline,
            finished: false,
            meter,
        }
    }

    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(mut event) = self.pending.pop_front() {
                if self.request.table
                    && matches!(
                        event["type"].as_str(),
                        Some("ADDED" | "MODIFIED" | "DELETED")
                    )
                {
                    let object = event["object"].take();
                    event["object"] =
                        super::table::table(self.request.kind, None, &[object], super::now());
                }
                let line = line(&event);
                if let Some(meter) = &self.meter {
                    meter.line(event["type"] == "BOOKMARK", line.len());
                }
                return Some(line);
            }
            if self.finished || Instant::now() >= self.deadline {
                return None;
            }
            self.wake.borrow_and_update();
            match self.state.events_since(self.request.kind, self.seen) {
                Ok((events, now)) => {
                    self.pending.extend(
                        events
                            .iter()
                            .filter_map(|e| translate(&self.request.filter, e)),
                    );
                    self.seen = now;
                }
                Err(expired) => {
                    self.pending.push_back(expired_line(&expired));
                    self.finished = true;
                }
            }
            if !self.pending.is_empty() {
                continue;
            }
            let idle_until = match self.request.bookmarks {
                Some(every) => self.deadline.min(Instant::now() + every),
                None => self.deadline,
            };
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        // The cluster state is gone: nothing more will happen.
                        return None;
                    }
                }
                () = tokio::time::sleep_until(idle_until) => {
                    if self.request.bookmarks.is_some() && Instant::now() < self.deadline {
                        self.pending.push_back(bookmark(self.request.kind, self.seen, false));
                    }
                }
            }
        }
    }
}

/// What a watcher with `filter` is told of `event`, if anything.
fn translate(filter: &Filter, event: &Event) -> Option<Value> {
    let now = filter.matches(&event.object);
    let before = event.previous.as_ref().is_some_and(|p| filter.matches(p));
    let (event_type, object) = match (event.event_type, before, now) {
        (EventType::Deleted, _, true) => ("DELETED", event.object.clone()),
        (EventType::Deleted, _, false) => return None,
        (_, false, true) => ("ADDED", event.object.clone()),
        (_, true, true) => (event.event_type.as_str(), event.object.clone()),
        (_, true, false) => {
            // Gone from this watcher's view: its last matching state, at the
            // resourceVersion of the change.
            let mut last = event.previous.clone()?;
            last["metadata"]["resourceVersion"] = Value::String(event.rv.to_string());
            ("DELETED", last)
        }
        (_, false, false) => return None,
    };
    Some(event_line(event_type, object))
}

fn event_line(event_type: &str, object: Value) -> Value {
    json!({ "type": event_type, "object": object })
}

fn bookmark(kind: Kind, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    event_line(
        "BOOKMARK",
        json!({ "kind": kind.name(), "apiVersion": kind.api_version(), "metadata": metadata }),
    )
}

fn expired_line(expired: &Expired) -> Value {
    event_line(
        "ERROR",
        super::status_body(410, "Expired", &expired.to_string()),
    )
}

fn line(value: &Value) -> Bytes {
    let mut bytes = value.to_string().into_bytes();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::cluster::{node, pod};
    use futures::StreamExt;

    fn agent(name: &str, ip: &str, app: &str) -> k8s_openapi::api::core::v1::Pod {
        pod("ns", name, "node-1", ip, &[("app", app)], false)
    }

    fn request(start: Start, selector: &str) -> WatchRequest {
        WatchRequest {
            kind: Kind::Pod,
            filter: Filter::new(Kind::Pod, Some("ns".into()), Some(selector), None).unwrap(),
            start,
            timeout: Duration::from_secs(5),
            bookmarks: None,
            table: false,
        }
    }

    /// The next event as `(type, name)`, or `None` when the stream ended.
    async fn next(s: &mut (impl Stream<Item = Bytes> + Unpin)) -> Option<(String, String)> {
        let line = tokio::time::timeout(Duration::from_secs(2), s.next())
            .await
            .expect("an event within 2 s")?;
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        let name = v["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        Some((v["type"].as_str().unwrap().to_owned(), name))
    }

    fn ev(t: &str, n: &str) -> Option<(String, String)> {
        Some((t.to_owned(), n.to_owned()))
    }

    #[tokio::test]
    async fn replays_history_then_follows_live_changes_through_the_selector() {
        let state = ClusterState::new();
        state.apply_pod(agent("a", "10.244.1.2", "agent"));
        let rv = state.resource_version();
        state.apply_pod(agent("b", "10.244.1.3", "agent"));
        state.apply_pod(agent("c", "10.244.1.4", "other"));
        let mut s = Box::pin(stream(
            state.clone(),
            request(Start::After(rv), "app=agent"),
            None,
        ));
        assert_eq!(next(&mut s).await, ev("ADDED", "b"));

        state.apply_node(node("node-1", "198.18.0.1", "10.244.1.0/24"));
        state.apply_pod(agent("a", "10.244.1.9", "agent"));
        assert_eq!(next(&mut s).await, ev("MODIFIED", "a"));
        // Relabelled out of the selector, then back in.
        state.apply_pod(agent("b", "10.244.1.3", "other"));
        assert_eq!(next(&mut s).await, ev("DELETED", "b"));
        state.apply_pod(agent("c", "10.244.1.4", "agent"));
        assert_eq!(next(&mut s).await, ev("ADDED", "c"));
        state.delete_pod("ns", "b");
        state.delete_pod("ns", "c");
        assert_eq!(next(&mut s).await, ev("DELETED", "c"));
    }

    #[tokio::test]
    async fn an_expired_resource_version_gets_a_410_error_event() {
        let state = ClusterState::new();
        state.apply_pod(agent("a", "10.244.1.2", "agent"));
        let mut s = Box::pin(stream(state, request(Start::After(99), ""), None));
        let line = s.next().await.unwrap();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "ERROR");
        assert_eq!(v["object"]["kind"], "Status");
        assert_eq!(v["object"]["code"], 410);
        assert_eq!(v["object"]["reason"], "Expired");
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn initial_events_end_with_an_annotated_bookmark() {
        let state = ClusterState::new();
        state.apply_pod(agent("a", "10.244.1.2", "agent"));
        state.apply_pod(agent("x", "10.244.1.3", "other"));
        let start = Start::CurrentState { end_bookmark: true };
        let mut req = request(start, "app=agent");
        req.bookmarks = Some(Duration::from_millis(50));
        req.timeout = Duration::from_millis(400);
        let mut s = Box::pin(stream(state.clone(), req, None));
        assert_eq!(next(&mut s).await, ev("ADDED", "a"));
        let line = s.next().await.unwrap();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "BOOKMARK");
        assert_eq!(
            v["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "2");
        // Idle: periodic bookmarks, then the end at the timeout.
        state.apply_node(node("n", "198.18.0.1", "10.244.1.0/24"));
        let line = s.next().await.unwrap();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "BOOKMARK");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "3");
        let rest: Vec<_> = s.collect().await;
        assert!(!rest.is_empty(), "more bookmarks before the timeout");
    }
}
