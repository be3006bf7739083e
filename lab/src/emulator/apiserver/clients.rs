//! EMULATOR-ONLY: who the emulator's clients are, and what it sent each of
//! them.
//!
//! Every lab process gets a bearer token of its own (its kubeconfig), which
//! the emulator maps to a [`ClientId`]: `namespace/serviceaccount/pod` for
//! the processes standing in for pods, `lab` for the admin token. Requests
//! with a token it does not know are refused with `401`, as a real API
//! server refuses a token no authenticator accepts.
//!
//! The counters are the emulator's own, made to measure what netmatrix
//! costs the control plane (`netmatrix-lab bench control-plane`): a real API
//! server has no such per-client table; it exposes `apiserver_*` Prometheus
//! metrics (`apiserver_longrunning_requests`, `apiserver_watch_events_total`,
//! `apiserver_watch_events_sizes`, `apiserver_request_total`, ...) by
//! resource and verb, not by client. Bytes are the JSON bodies as sent,
//! before TLS and HTTP framing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

/// The name of the admin token's client.
pub const ADMIN: &str = "lab";

/// Who sent a request: `namespace/serviceaccount/pod`, or `lab`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// The client of a pod's process.
    pub fn pod(namespace: &str, service_account: &str, pod: &str) -> Self {
        ClientId(format!("{namespace}/{service_account}/{pod}").into())
    }

    /// The lab itself (the admin token).
    pub fn admin() -> Self {
        ClientId(ADMIN.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ServiceAccount part (`None` for the admin), which tells agents,
    /// host agents and the aggregator apart.
    pub fn service_account(&self) -> Option<&str> {
        self.0.split('/').nth(1)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the emulator sent one client since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStats {
    /// Watch requests answered with a stream.
    pub watches_opened: u64,
    /// Watch streams open now.
    pub watches_open: u64,
    /// Watch lines other than bookmarks (ADDED, MODIFIED, DELETED, ERROR).
    pub watch_events: u64,
    pub watch_bookmarks: u64,
    /// Every watch line, bookmarks included.
    pub watch_bytes: u64,
    /// List requests answered.
    pub lists: u64,
    /// Items in those lists.
    pub list_objects: u64,
    pub list_bytes: u64,
    /// Single objects got (`GET .../{name}`), answered `200`.
    pub gets: u64,
    pub get_bytes: u64,
}

impl ClientStats {
    /// Every body byte sent: watches, lists and gets.
    pub fn bytes(&self) -> u64 {
        self.watch_bytes + self.list_bytes + self.get_bytes
    }

    /// `self - earlier`, counter by counter (`watches_open` is a level: the
    /// later value is kept).
    pub fn since(&self, earlier: &ClientStats) -> ClientStats {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        ClientStats {
            watches_opened: d(self.watches_opened, earlier.watches_opened),
            watches_open: self.watches_open,
            watch_events: d(self.watch_events, earlier.watch_events),
            watch_bookmarks: d(self.watch_bookmarks, earlier.watch_bookmarks),
            watch_bytes: d(self.watch_bytes, earlier.watch_bytes),
            lists: d(self.lists, earlier.lists),
            list_objects: d(self.list_objects, earlier.list_objects),
            list_bytes: d(self.list_bytes, earlier.list_bytes),
            gets: d(self.gets, earlier.gets),
            get_bytes: d(self.get_bytes, earlier.get_bytes),
        }
    }
}

/// The emulator's clients: tokens and counters.
#[derive(Debug, Default)]
pub struct Clients {
    tokens: RwLock<HashMap<String, ClientId>>,
    stats: Mutex<BTreeMap<ClientId, ClientStats>>,
}

impl Clients {
    /// Clients knowing only `admin_token` (the client `lab`).
    pub fn new(admin_token: &str) -> Self {
        let clients = Clients::default();
        clients.register(admin_token, ClientId::admin());
        clients
    }

    /// Accepts `token` as `client` from now on (a new token for the same
    /// client adds to the same counters).
    pub fn register(&self, token: &str, client: ClientId) {
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), client);
    }

    /// Who `token` is, if anyone.
    pub fn identify(&self, token: &str) -> Option<ClientId> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    /// Every client that sent a request, with its counters.
    pub fn snapshot(&self) -> BTreeMap<String, ClientStats> {
        self.stats()
            .iter()
            .map(|(id, stats)| (id.to_string(), *stats))
            .collect()
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, BTreeMap<ClientId, ClientStats>> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, client: &ClientId, change: impl FnOnce(&mut ClientStats)) {
        change(self.stats().entry(client.clone()).or_default());
    }

    /// A list of `objects` items, `bytes` long, sent to `client`.
    pub(super) fn list(&self, client: &ClientId, objects: usize, bytes: usize) {
        self.count(client, |s| {
            s.lists += 1;
            s.list_objects += objects as u64;
            s.list_bytes += bytes as u64;
        });
    }

    /// An object, `bytes` long, sent to `client`.
    pub(super) fn get(&self, client: &ClientId, bytes: usize) {
        self.count(client, |s| {
            s.gets += 1;
            s.get_bytes += bytes as u64;
        });
    }

    /// A watch stream opened for `client`; it counts as open until the
    /// meter is dropped (with the stream, when the response ends or the
    /// client goes away).
    pub(super) fn open_watch(self: &Arc<Self>, client: &ClientId) -> WatchMeter {
        self.count(client, |s| {
            s.watches_opened += 1;
            s.watches_open += 1;
        });
        WatchMeter {
            clients: Arc::clone(self),
            client: client.clone(),
        }
    }
}

/// Counts the lines of one watch stream; dropping it closes the stream's
/// count.
#[derive(Debug)]
pub struct WatchMeter {
    clients: Arc<Clients>,
    client: ClientId,
}

impl WatchMeter {
    /// One line, `bytes` long (newline included), sent.
    pub(super) fn line(&self, bookmark: bool, bytes: usize) {
        self.clients.count(&self.client, |s| {
            if bookmark {
                s.watch_bookmarks += 1;
            } else {
                s.watch_events += 1;
            }
            s.watch_bytes += bytes as u64;
        });
    }
}

impl Drop for WatchMeter {
    fn drop(&mut self) {
        self.clients.count(&self.client, |s| {
            s.watches_open = s.watches_open.saturating_sub(1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_clients_and_meters_close_their_stream() {
        let clients = Arc::new(Clients::new("admin"));
        let agent = ClientId::pod("netmatrix", "netmatrix-agent", "a-1");
        clients.register("t1", agent.clone());
        assert_eq!(clients.identify("admin"), Some(ClientId::admin()));
        assert_eq!(clients.identify("t1"), Some(agent.clone()));
        assert_eq!(clients.identify("t2"), None);
        assert_eq!(agent.service_account(), Some("netmatrix-agent"));
        assert_eq!(ClientId::admin().service_account(), None);

        let meter = clients.open_watch(&agent);
        meter.line(false, 100);
        meter.line(true, 10);
        let open = clients.snapshot()["netmatrix/netmatrix-agent/a-1"];
        assert_eq!(
            (open.watches_open, open.watch_events, open.watch_bookmarks),
            (1, 1, 1)
        );
        drop(meter);
        let closed = clients.snapshot()["netmatrix/netmatrix-agent/a-1"];
        assert_eq!((closed.watches_opened, closed.watches_open), (1, 0));
        assert_eq!(closed.since(&open).watch_bytes, 0);
        assert_eq!(open.since(&ClientStats::default()).bytes(), 110);
    }
}
