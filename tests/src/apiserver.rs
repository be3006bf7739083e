//! An EMULATOR of the Kubernetes API server, limited to the subset netmatrix
//! uses: `/version`, `/livez`, `/readyz`, `/healthz`, and get, list and watch
//! of Nodes, Pods and Services with label and field selectors.
//!
//! It exists because a real API server cannot run in the lab. It keeps to the
//! real wire format so that the unmodified kube-rs client (reflectors and
//! watchers included) works against it: lists are `{kind: PodList, metadata:
//! {resourceVersion}, items}`, watches stream newline-delimited
//! `{"type": "ADDED", "object": {...}}` events with BOOKMARKs, a watch from a
//! resourceVersion older than the history kept gets a `410 Expired` ERROR
//! event, errors are `Status` objects, and `/api` requires the bearer token.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_rustls::TlsAcceptor;

use crate::cluster::{ClusterState, Event, Kind};

/// How often a watch sends a BOOKMARK when allowed.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Api {
    state: ClusterState,
    token: Arc<str>,
}

/// Serves the emulator on `listener` (TLS with `tls`) until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    state: ClusterState,
    tls: Arc<rustls::ServerConfig>,
    token: String,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let app = router(state, token);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake with the API emulator failed");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, %error, "API emulator connection ended");
            }
        });
    }
}

/// The emulator's routes (public for tests without TLS).
pub fn router(state: ClusterState, token: String) -> Router {
    let api = Api {
        state,
        token: token.into(),
    };
    Router::new()
        .route("/version", get(version))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{name}", get(get_node))
        .route("/api/v1/pods", get(list_all_pods))
        .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
        .route("/api/v1/services", get(list_all_services))
        .route("/api/v1/namespaces/{ns}/services", get(list_services))
        .fallback(|| async {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .with_state(api)
}

async fn version() -> Response {
    axum::Json(json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-netmatrix-lab",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
        "platform": "linux/amd64"
    }))
    .into_response()
}

/// Query parameters of list and watch calls.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    label_selector: Option<String>,
    field_selector: Option<String>,
    watch: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
    allow_watch_bookmarks: Option<bool>,
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()
    });
    (code, axum::Json(body)).into_response()
}

impl Api {
    /// `/api` requires the bearer token, as with a real API server.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let expected = format!("Bearer {}", self.token);
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|got| got == expected)
    }

    fn collection(
        &self,
        kind: Kind,
        ns: Option<String>,
        headers: &HeaderMap,
        params: ListParams,
    ) -> Response {
        if !self.authorized(headers) {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
        let filter = match Filter::parse(ns, &params) {
            Ok(f) => f,
            Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", &message),
        };
        if matches!(params.watch.as_deref(), Some("true" | "1")) {
            return self.watch(kind, filter, &params);
        }
        let (rv, items) = self.state.list(kind);
        let items: Vec<Value> = items.into_iter().filter(|o| filter.matches(o)).collect();
        let list_kind = match kind {
            Kind::Node => "NodeList",
            Kind::Pod => "PodList",
            Kind::Service => "ServiceList",
        };
        axum::Json(json!({
            "kind": list_kind, "apiVersion": "v1",
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items
        }))
        .into_response()
    }

    fn watch(&self, kind: Kind, filter: Filter, params: &ListParams) -> Response {
        // Subscribe first, then read the history: nothing falls between.
        let live = self.state.subscribe();
        let from: u64 = params
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
            .unwrap_or_else(|| self.state.resource_version());
        let lines: Vec<Bytes> = match self.state.history_since(kind, from) {
            Some(history) => Vec::from_iter(
                history
                    .into_iter()
                    .filter_map(|e| e.into_line_for(&filter, &mut BTreeSet::new())),
            ),
            None => vec![line(&json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410
            }}))],
        };
        let expired = lines.len() == 1 && lines[0].starts_with(br#"{"type":"ERROR""#);
        // Objects this watcher has been told about and that still match, so
        // that one that stops matching is sent as DELETED, as the real API does.
        let mut matching: BTreeSet<String> = self
            .state
            .list(kind)
            .1
            .iter()
            .filter(|o| filter.matches(o))
            .map(object_key)
            .collect();
        let timeout = Duration::from_secs(params.timeout_seconds.unwrap_or(300).clamp(1, 3600));
        let bookmarks = params.allow_watch_bookmarks.unwrap_or(false);
        let deadline = tokio::time::Instant::now() + timeout;
        let head = futures::stream::iter(lines.into_iter().map(Ok::<_, Infallible>));
        let state = self.state.clone();
        let tail = futures::stream::unfold(
            (live, filter, expired, from),
            move |(mut live, filter, done, mut last_rv)| {
                let state = state.clone();
                let mut matching = std::mem::take(&mut matching);
                async move {
                    if done {
                        return None;
                    }
                    loop {
                        let next = tokio::time::timeout_at(
                            deadline.min(tokio::time::Instant::now() + BOOKMARK_EVERY),
                            live.recv(),
                        )
                        .await;
                        match next {
                            Ok(Ok(event)) if event.kind == kind && event.rv > last_rv => {
                                last_rv = event.rv;
                                if let Some(l) = event.into_line_for(&filter, &mut matching) {
                                    return Some((Ok(l), (live, filter, false, last_rv)));
                                }
                            }
                            Ok(Ok(_)) => {}
                            // Fell behind the broadcast: end the watch; the
                            // client resumes from the last resourceVersion it saw.
                            Ok(Err(broadcast::error::RecvError::Lagged(_)))
                            | Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                            Err(_) if tokio::time::Instant::now() >= deadline => return None,
                            Err(_) if bookmarks => {
                                let rv = state.resource_version().max(last_rv);
                                let bookmark = line(&json!({"type": "BOOKMARK", "object": {
                                    "kind": kind_name(kind), "apiVersion": "v1",
                                    "metadata": {"resourceVersion": rv.to_string()}
                                }}));
                                return Some((Ok(bookmark), (live, filter, false, last_rv)));
                            }
                            Err(_) => {}
                        }
                    }
                }
            },
        );
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(head.chain(tail)))
            .unwrap_or_else(|_| {
                status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "cannot build the watch response",
                )
            })
    }

    fn get_one(&self, kind: Kind, ns: Option<&str>, name: &str, headers: &HeaderMap) -> Response {
        if !self.authorized(headers) {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
        let found = self.state.list(kind).1.into_iter().find(|o| {
            o["metadata"]["name"] == name && ns.is_none_or(|ns| o["metadata"]["namespace"] == ns)
        });
        match found {
            Some(object) => axum::Json(object).into_response(),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} \"{name}\" not found", kind_name(kind).to_lowercase()),
            ),
        }
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Node => "Node",
        Kind::Pod => "Pod",
        Kind::Service => "Service",
    }
}

fn object_key(o: &Value) -> String {
    format!(
        "{}/{}",
        o["metadata"]["namespace"].as_str().unwrap_or(""),
        o["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn line(v: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

impl Event {
    /// The watch line this event becomes for a watcher with `filter`, given
    /// which objects it currently knows as matching.
    fn into_line_for(self, filter: &Filter, matching: &mut BTreeSet<String>) -> Option<Bytes> {
        let key = object_key(&self.object);
        let now = filter.matches(&self.object);
        let was = matching.contains(&key);
        let verb = match (self.verb, now, was) {
            ("DELETED", _, _) => {
                matching.remove(&key);
                if !now && !was {
                    return None;
                }
                "DELETED"
            }
            (_, true, false) => {
                matching.insert(key);
                "ADDED"
            }
            (verb, true, true) => verb,
            (_, false, true) => {
                matching.remove(&key);
                "DELETED"
            }
            (_, false, false) => return None,
        };
        Some(line(&json!({"type": verb, "object": self.object})))
    }
}

/// Namespace, label and field selectors of one request.
#[derive(Debug, Clone, Default)]
struct Filter {
    namespace: Option<String>,
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Filter {
    fn parse(namespace: Option<String>, params: &ListParams) -> Result<Filter, String> {
        let labels = parse_selector(params.label_selector.as_deref().unwrap_or(""))?;
        let fields = parse_selector(params.field_selector.as_deref().unwrap_or(""))?;
        for f in &fields {
            let (Requirement::Equals(k, _) | Requirement::NotEquals(k, _)) = f else {
                return Err(format!("field selector {f:?}: only = and != are supported"));
            };
            if ![
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "status.phase",
            ]
            .contains(&k.as_str())
            {
                return Err(format!("field label not supported: {k}"));
            }
        }
        Ok(Filter {
            namespace,
            labels,
            fields,
        })
    }

    fn matches(&self, o: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && o["metadata"]["namespace"] != ns.as_str()
        {
            return false;
        }
        let label = |k: &str| o["metadata"]["labels"][k].as_str().map(str::to_owned);
        let field = |k: &str| {
            let v = k.split('.').fold(o, |v, part| &v[part]);
            Some(v.as_str().unwrap_or("").to_owned())
        };
        self.labels.iter().all(|r| r.holds(&label)) && self.fields.iter().all(|r| r.holds(&field))
    }
}

impl Requirement {
    fn holds(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            Requirement::Equals(k, v) => get(k).as_deref() == Some(v),
            Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v),
            Requirement::In(k, vs) => get(k).is_some_and(|g| vs.contains(&g)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|g| !vs.contains(&g)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        }
    }
}

/// Parses a Kubernetes selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`,
/// `a in (x,y)`, `a notin (x)`, comma-separated.
fn parse_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    let bad = |p: &str| format!("unable to parse requirement: {p:?}");
    let mut out = Vec::new();
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let req = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(k.trim().into())
        } else if let Some((k, rest)) = part.split_once(" notin ") {
            Requirement::NotIn(k.trim().into(), set(rest).ok_or_else(|| bad(part))?)
        } else if let Some((k, rest)) = part.split_once(" in ") {
            Requirement::In(k.trim().into(), set(rest).ok_or_else(|| bad(part))?)
        } else if part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            Requirement::Exists(part.into())
        } else {
            return Err(bad(part));
        };
        out.push(req);
    }
    Ok(out)
}

fn set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

async fn list_nodes(State(api): State<Api>, h: HeaderMap, Query(p): Query<ListParams>) -> Response {
    api.collection(Kind::Node, None, &h, p)
}
async fn get_node(State(api): State<Api>, h: HeaderMap, Path(name): Path<String>) -> Response {
    api.get_one(Kind::Node, None, &name, &h)
}
async fn list_all_pods(
    State(api): State<Api>,
    h: HeaderMap,
    Query(p): Query<ListParams>,
) -> Response {
    api.collection(Kind::Pod, None, &h, p)
}
async fn list_pods(
    State(api): State<Api>,
    h: HeaderMap,
    Path(ns): Path<String>,
    Query(p): Query<ListParams>,
) -> Response {
    api.collection(Kind::Pod, Some(ns), &h, p)
}
async fn get_pod(
    State(api): State<Api>,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    api.get_one(Kind::Pod, Some(&ns), &name, &h)
}
async fn list_all_services(
    State(api): State<Api>,
    h: HeaderMap,
    Query(p): Query<ListParams>,
) -> Response {
    api.collection(Kind::Service, None, &h, p)
}
async fn list_services(
    State(api): State<Api>,
    h: HeaderMap,
    Path(ns): Path<String>,
    Query(p): Query<ListParams>,
) -> Response {
    api.collection(Kind::Service, Some(ns), &h, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_selector_form() {
        let r = parse_selector("a=b, c==d,e!=f,g,!h,i in (x, y),j notin (z)").unwrap();
        assert_eq!(r.len(), 7);
        assert_eq!(r[0], Requirement::Equals("a".into(), "b".into()));
        assert_eq!(
            r[5],
            Requirement::In("i".into(), vec!["x".into(), "y".into()])
        );
        assert_eq!(r[6], Requirement::NotIn("j".into(), vec!["z".into()]));
        assert!(parse_selector("a in x").is_err());
        assert!(parse_selector("").unwrap().is_empty());
    }

    #[test]
    fn filters_by_namespace_labels_and_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}},
                         "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}});
        let params = |l: &str, f: &str| ListParams {
            label_selector: Some(l.into()),
            field_selector: Some(f.into()),
            ..Default::default()
        };
        let f = Filter::parse(Some("ns".into()), &params("app=x", "spec.nodeName=node-1")).unwrap();
        assert!(f.matches(&pod));
        let f = Filter::parse(Some("other".into()), &params("app=x", "")).unwrap();
        assert!(!f.matches(&pod));
        let f = Filter::parse(None, &params("app!=x", "")).unwrap();
        assert!(!f.matches(&pod));
        assert!(Filter::parse(None, &params("", "spec.unknown=1")).is_err());
    }
}
