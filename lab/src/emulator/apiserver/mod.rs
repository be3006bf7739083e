//! An EMULATOR of the Kubernetes API server, limited to the small subset
//! netmatrix uses; not an API server.
//!
//! It exists because a real API server (and etcd) cannot run in the lab. It
//! keeps to the real wire format so that the unmodified kube-rs client,
//! reflectors and watchers included, and the real `kubectl` and `helm`
//! work against it:
//! - `GET /version`, `/livez`, `/readyz`, `/healthz`, open to anyone as in
//!   real clusters (`system:public-info-viewer`);
//! - discovery, `GET /api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`,
//!   listing only what is served here ([`discovery`]);
//! - `GET /api/v1/{nodes,pods,services,events,namespaces}`, namespaced under
//!   `/api/v1/namespaces/{ns}/...` for all but nodes, and single objects
//!   by name, with the bearer token required (`401` and a `Status` body
//!   otherwise);
//! - lists as `{"kind": "PodList", "apiVersion": "v1", "metadata":
//!   {"resourceVersion": "N"}, "items": [...]}`, always complete (`limit` is
//!   ignored and no `continue` token is sent, which clients accept), objects
//!   with `apiVersion` and `kind` as k8s-openapi serializes them;
//! - `labelSelector` and `fieldSelector` ([`selector`]); a malformed one gets
//!   `400 BadRequest`;
//! - watches (`watch=true` on a list URL): see [`watch`] for where they start,
//!   `410 Expired` ERROR events, selector transitions and BOOKMARKs;
//! - lists, objects and watch events as `meta.k8s.io/v1` Tables when the
//!   `Accept` header asks (`kubectl get`; [`table`]);
//! - `GET .../pods/{name}/log` from the file the lab's process for the pod
//!   writes (`tailLines`, `limitBytes`, `follow`);
//! - errors as `Status` objects (`NotFound`, `BadRequest`, `Invalid`, ...);
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`, with the bearer
//!   token required, checking the bound ServiceAccount tokens the lab mounts
//!   for its agents ([`tokens`]).
//!
//! - `PATCH /api/v1/nodes/{name}/status`, as netmatrix's aggregator makes
//!   it with `--node-conditions` (strategic merge patch: `status.conditions`
//!   merges by `type`, as the real strategy does; or a JSON merge patch);
//! - clients' writes, as `kubectl` and `helm` make them: `POST` to
//!   collections, `PUT`, `PATCH` (JSON merge and strategic merge) and
//!   `DELETE` of objects of every stored kind but Nodes, with the server's
//!   part of each ([`crate::emulator::cluster::WriteError`] and the
//!   module it comes from say what is done and what is left out); bodies
//!   in JSON, or for Secrets, ConfigMaps and Namespaces in Kubernetes'
//!   protobuf ([`protobuf`]), as client-go's typed clients send them;
//! - `GET /openapi/v2`, with no definitions: clients skip their own
//!   schema validation.
//!
//! The lab changes [`ClusterState`] directly too (its pods, faults).
//!
//! Each lab process has a token of its own; the emulator counts what it
//! sends each one ([`clients`]: its own counters, not a real API server's).

pub mod clients;
mod discovery;
mod protobuf;
mod selector;
mod table;
pub mod tokens;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::emulator::cluster::{ClusterState, Kind, PatchKind, WriteError};
use clients::{ClientId, Clients};
use selector::{Filter, SelectorError};
use tokens::TokenAuthority;

use watch::{Start, WatchRequest};

/// The version the emulator reports (`GET /version`).
pub const GIT_VERSION: &str = "v1.33.0-netmatrix-lab";

/// How often an idle watch sends a BOOKMARK when the client allows them (the
/// real API server sends them about once a minute; more often keeps resumes
/// cheap in a lab whose objects change rarely).
const BOOKMARK_EVERY: Duration = Duration::from_secs(15);

/// Watch length when the client gives no `timeoutSeconds`: 5 minutes plus up
/// to 5 minutes of jitter, so that watchers started together do not all
/// reconnect together (the real server spreads them over 30-60 minutes).
const DEFAULT_WATCH_SECONDS: u64 = 300;

/// Upper bound of `timeoutSeconds`.
const MAX_WATCH_SECONDS: u64 = 3600;

/// Serves the emulator on `listener`, TLS with `tls`, requiring a token of
/// `clients` on `/api` and `/apis`. Runs until the task is dropped or aborted, which also closes
/// every open connection (and watch) at once: stopping this task is a real
/// API server outage, not a half-alive one. Accept errors (out of file
/// descriptors, ...) are logged and retried after a pause, as `axum::serve`
/// does, so it does not return.
pub async fn serve(
    listener: TcpListener,
    state: ClusterState,
    tls: Arc<rustls::ServerConfig>,
    clients: Arc<Clients>,
    authority: Arc<TokenAuthority>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let app = router(state, clients, authority);
    // Connections live in this set: dropping `serve` aborts them all.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "API emulator cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake with the API emulator failed");
                    return;
                }
            };
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, %error, "API emulator connection ended with an error");
            }
        });
    }
}

#[derive(Clone)]
struct Api {
    state: ClusterState,
    /// The tokens accepted, and what each client was sent.
    clients: Arc<Clients>,
    authority: Arc<TokenAuthority>,
}

/// The emulator's routes, without TLS (for tests and plain-HTTP use).
pub fn router(
    state: ClusterState,
    clients: Arc<Clients>,
    authority: Arc<TokenAuthority>,
) -> Router {
    let api = Api {
        state,
        clients,
        authority,
    };
    let resources = Router::new()
        .route(
            "/api",
            get(|| async { axum::Json(discovery::core_versions()) }),
        )
        .route(
            "/apis",
            get(|| async { axum::Json(discovery::group_list()) }),
        )
        .route("/api/v1", get(|| async { resource_list("v1") }))
        .route(
            "/apis/{group}",
            get(|Path(group): Path<String>| async move {
                discovery::api_group(&group)
                    .map(axum::Json)
                    .ok_or(ApiError::NoSuchPath)
            }),
        )
        .route(
            "/apis/{group}/{version}",
            get(
                |Path((group, version)): Path<(String, String)>| async move {
                    resource_list(&format!("{group}/{version}"))
                },
            ),
        )
        .route("/openapi/v2", get(discovery::openapi_v2))
        .route("/api/v1/nodes/{name}/status", patch(patch_node_status))
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
        // Every stored kind, core and named groups, cluster-wide or in a
        // namespace: collections (list, watch, create) and objects (get,
        // replace, patch, delete).
        .route("/api/v1/{resource}", get(list).post(create))
        .route(
            "/api/v1/{resource}/{name}",
            get(get_one)
                .put(replace)
                .patch(patch_one)
                .delete(delete_one),
        )
        .route("/api/v1/namespaces/{ns}/{resource}", get(list).post(create))
        .route(
            "/api/v1/namespaces/{ns}/{resource}/{name}",
            get(get_one)
                .put(replace)
                .patch(patch_one)
                .delete(delete_one),
        )
        .route("/apis/{group}/{version}/{resource}", get(list).post(create))
        .route(
            "/apis/{group}/{version}/{resource}/{name}",
            get(get_one)
                .put(replace)
                .patch(patch_one)
                .delete(delete_one),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{resource}",
            get(list).post(create),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}",
            get(get_one)
                .put(replace)
                .patch(patch_one)
                .delete(delete_one),
        )
        .route(TOKEN_REVIEWS_PATH, post(create_token_review))
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate));
    Router::new()
        .route("/version", get(version))
        .route("/livez", get(ok))
        .route("/readyz", get(ok))
        .route("/healthz", get(ok))
        .merge(resources)
        .fallback(|| async { not_found_path() })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed.into_response() })
        .with_state(api)
}

/// A group version's `APIResourceList`, `404` when not served.
fn resource_list(group_version: &str) -> Result<axum::Json<Value>, ApiError> {
    discovery::resource_list(group_version)
        .map(axum::Json)
        .ok_or(ApiError::NoSuchPath)
}

/// Whether the client asked for a `Table` (`kubectl get`): see [`table`].
struct Printing {
    table: bool,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Printing {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let accept = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        Ok(Printing {
            table: table::wanted(accept),
        })
    }
}

async fn ok() -> &'static str {
    "ok"
}

const TOKEN_REVIEWS_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// `POST .../tokenreviews`: `201 Created` with the review's status, `400`
/// for a body that is not a TokenReview, `422` without `spec.token`.
async fn create_token_review(
    State(api): State<Api>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a TokenReview: {e}")))?;
    if request.get("kind").is_some_and(|k| k != "TokenReview") {
        return Err(ApiError::BadRequest(format!(
            "the body is a {}, not a TokenReview",
            request["kind"]
        )));
    }
    let token = request["spec"]["token"].as_str().unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::Invalid(
            "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value".into(),
        ));
    }
    let audiences: Vec<String> = request["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let now = netmatrix_runtime::now_unix_secs();
    let status = api.authority.review(&api.state, token, &audiences, now);
    Ok((
        StatusCode::CREATED,
        axum::Json(tokens::review_response(&request, status)),
    )
        .into_response())
}

async fn version() -> Response {
    axum::Json(json!({
        "major": "1",
        "minor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }))
    .into_response()
}

/// Requires `Authorization: Bearer <token>` with a known token on `/api`
/// and `/apis`, and tells the handlers who it is (a [`ClientId`]
/// extension). A missing or unknown token is a `401` with a `Status`, as
/// from a real API server when no authenticator accepts the request.
async fn authenticate(State(api): State<Api>, mut request: Request, next: Next) -> Response {
    let client = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| {
            api.clients.identify(token).or_else(|| {
                // A pod's own ServiceAccount token (in-cluster config), as
                // the API server's service-account authenticator takes it.
                api.authority
                    .authenticate(&api.state, token, netmatrix_runtime::now_unix_secs())
            })
        });
    match client {
        Some(client) => {
            request.extensions_mut().insert(client);
            next.run(request).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

/// Errors, answered as the API server's `Status` objects.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but not acceptable (HTTP 422).
    #[error("{0}")]
    Invalid(String),
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: &'static str, name: String },
    #[error("the server could not find the requested resource")]
    NoSuchPath,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// Never allowed (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// An update from a stale resourceVersion (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    #[error(
        "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json"
    )]
    UnsupportedMediaType,
    /// A body in a media type the emulator does not read (HTTP 415).
    #[error(
        "the body is {0}: the lab's API emulator reads application/json, and Secrets, ConfigMaps and Namespaces in protobuf"
    )]
    BodyNotJson(String),
}

impl From<SelectorError> for ApiError {
    fn from(error: SelectorError) -> Self {
        ApiError::BadRequest(error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, reason) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            ApiError::NotFound { .. } | ApiError::NoSuchPath => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            ApiError::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::UnsupportedMediaType | ApiError::BodyNotJson(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
        };
        let mut body = status_body(code.as_u16(), reason, &self.to_string());
        if let ApiError::NotFound { kind, name } = &self {
            body["details"] = json!({ "name": name, "kind": kind });
        }
        (code, axum::Json(body)).into_response()
    }
}

/// A `Status` object of a failure.
fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn not_found_path() -> Response {
    ApiError::NoSuchPath.into_response()
}

/// The query parameters of list and watch requests the emulator honours
/// (others, such as `limit`, `resourceVersionMatch` on lists or `pretty`,
/// are ignored).
#[derive(Debug, Default)]
struct ListQuery {
    label_selector: Option<String>,
    field_selector: Option<String>,
    watch: bool,
    resource_version: Option<String>,
    resource_version_match: Option<String>,
    timeout_seconds: Option<u64>,
    allow_watch_bookmarks: bool,
    send_initial_events: bool,
}

impl ListQuery {
    fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    ) -> Result<Self, ApiError> {
        let Query(pairs) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let mut q = ListQuery::default();
        for (key, value) in pairs {
            match key.as_str() {
                "labelSelector" => q.label_selector = Some(value),
                "fieldSelector" => q.field_selector = Some(value),
                "watch" => q.watch = parse_bool(&key, &value)?,
                "resourceVersion" => q.resource_version = Some(value),
                "resourceVersionMatch" => q.resource_version_match = Some(value),
                "timeoutSeconds" => {
                    q.timeout_seconds = Some(value.parse().map_err(|_| {
                        ApiError::BadRequest(format!("timeoutSeconds: invalid value {value:?}"))
                    })?);
                }
                "allowWatchBookmarks" => q.allow_watch_bookmarks = parse_bool(&key, &value)?,
                "sendInitialEvents" => q.send_initial_events = parse_bool(&key, &value)?,
                _ => {}
            }
        }
        Ok(q)
    }

    fn start(&self) -> Result<Start, ApiError> {
        if self.send_initial_events {
            if self.resource_version_match.as_deref() != Some("NotOlderThan") {
                return Err(ApiError::Invalid(
                    "resourceVersionMatch: Forbidden: sendInitialEvents requires setting \
                     resourceVersionMatch to NotOlderThan"
                        .into(),
                ));
            }
            return Ok(Start::CurrentState { end_bookmark: true });
        }
        match self.resource_version.as_deref() {
            None | Some("" | "0") => Ok(Start::CurrentState {
                end_bookmark: false,
            }),
            Some(rv) => rv.parse().map(Start::After).map_err(|_| {
                ApiError::BadRequest(format!("resourceVersion: invalid value {rv:?}"))
            }),
        }
    }

    fn timeout(&self) -> Duration {
        let seconds = self.timeout_seconds.unwrap_or_else(|| {
            DEFAULT_WATCH_SECONDS + rand::random_range(0..=DEFAULT_WATCH_SECONDS)
        });
        Duration::from_secs(seconds.clamp(1, MAX_WATCH_SECONDS))
    }
}

/// Go's `strconv.ParseBool`, which the API server uses for query flags.
fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "{key}: invalid value {value:?}"
        ))),
    }
}

impl Api {
    fn collection(
        &self,
        client: &ClientId,
        kind: Kind,
        namespace: Option<String>,
        query: &ListQuery,
        printing: Printing,
    ) -> Result<Response, ApiError> {
        let filter = Filter::new(
            kind,
            namespace,
            query.label_selector.as_deref(),
            query.field_selector.as_deref(),
        )?;
        if query.watch {
            let request = WatchRequest {
                kind,
                filter,
                start: query.start()?,
                timeout: query.timeout(),
                bookmarks: query.allow_watch_bookmarks.then_some(BOOKMARK_EVERY),
                table: printing.table,
            };
            let meter = self.clients.open_watch(client);
            let events = watch::stream(self.state.clone(), request, Some(meter));
            let body = Body::from_stream(futures::StreamExt::map(
                events,
                Ok::<_, std::convert::Infallible>,
            ));
            return Ok((
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-cache, private"),
                ],
                body,
            )
                .into_response());
        }
        let (rv, items) = self.state.list(kind);
        let items: Vec<Value> = items.into_iter().filter(|o| filter.matches(o)).collect();
        let count = items.len();
        let response = if printing.table {
            table_response(&table::table(kind, Some(rv), &items, now()))
        } else {
            json_response(&json!({
                "kind": format!("{}List", kind.name()),
                "apiVersion": kind.api_version(),
                "metadata": { "resourceVersion": rv.to_string() },
                "items": items,
            }))
        };
        self.clients.list(client, count, response.1.len());
        Ok(response.into_response())
    }

    fn object(
        &self,
        client: &ClientId,
        kind: Kind,
        namespace: &str,
        name: &str,
        printing: Printing,
    ) -> Result<Response, ApiError> {
        let object = self
            .state
            .get(kind, namespace, name)
            .ok_or_else(|| ApiError::NotFound {
                kind: kind.plural(),
                name: name.to_owned(),
            })?;
        let response = if printing.table {
            table_response(&table::table(kind, None, &[object], now()))
        } else {
            json_response(&object)
        };
        self.clients.get(client, response.1.len());
        Ok(response.into_response())
    }
}

/// `value` as a JSON body, serialized here so that its size is known (as
/// `axum::Json` would send it).
fn json_response(value: &Value) -> ([(header::HeaderName, &'static str); 1], Vec<u8>) {
    // Serializing a `Value` cannot fail (its keys are strings).
    let body = serde_json::to_vec(value).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// A Table as a JSON body, with the Table's media type.
fn table_response(value: &Value) -> ([(header::HeaderName, &'static str); 1], Vec<u8>) {
    let ([_], body) = json_response(value);
    ([(header::CONTENT_TYPE, table::CONTENT_TYPE)], body)
}

/// The wall clock, for the ages a Table shows.
fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// Where a request points: the collection's group version and resource,
/// its namespace (`None` on a cluster-wide URL) and the object's name.
#[derive(Debug, serde::Deserialize)]
struct Target {
    group: Option<String>,
    version: Option<String>,
    ns: Option<String>,
    resource: String,
    name: Option<String>,
}

impl Target {
    /// The kind served there: `404` for a resource not served, or a
    /// cluster-scoped one under a namespace, or a namespaced object by
    /// name without its namespace (`/api/v1/pods/{name}` does not exist).
    fn kind(&self) -> Result<Kind, ApiError> {
        let group_version = match (&self.group, &self.version) {
            (Some(group), Some(version)) => format!("{group}/{version}"),
            _ => "v1".to_owned(),
        };
        let kind = Kind::from_path(&group_version, &self.resource).ok_or(ApiError::NoSuchPath)?;
        let namespaced_url = self.ns.is_some();
        if (namespaced_url && !kind.namespaced())
            || (!namespaced_url && kind.namespaced() && self.name.is_some())
        {
            return Err(ApiError::NoSuchPath);
        }
        Ok(kind)
    }

    /// [`Self::kind`], which clients may write (`405` otherwise).
    fn writable_kind(&self) -> Result<Kind, ApiError> {
        let kind = self.kind()?;
        if kind.writable() {
            Ok(kind)
        } else {
            Err(ApiError::MethodNotAllowed)
        }
    }

    fn namespace(&self) -> &str {
        self.ns.as_deref().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

/// List or watch a collection.
async fn list(
    State(api): State<Api>,
    Extension(client): Extension<ClientId>,
    Path(target): Path<Target>,
    printing: Printing,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    api.collection(
        &client,
        target.kind()?,
        target.ns.clone(),
        &ListQuery::parse(query)?,
        printing,
    )
}

async fn get_one(
    State(api): State<Api>,
    Extension(client): Extension<ClientId>,
    Path(target): Path<Target>,
    printing: Printing,
) -> Result<Response, ApiError> {
    api.object(
        &client,
        target.kind()?,
        target.namespace(),
        target.name(),
        printing,
    )
}

/// Writes are not dry runs here: a `dryRun` would be stored for real, so
/// it is refused instead.
fn no_dry_run(query: QueryPairs) -> Result<(), ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if pairs.iter().any(|(k, _)| k == "dryRun") {
        return Err(ApiError::BadRequest(
            "dryRun is not supported by the lab's API emulator".into(),
        ));
    }
    Ok(())
}

/// The request's `Content-Type` without its parameters.
fn media_type(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim())
}

/// A request body as JSON: JSON as sent, a protobuf Secret, ConfigMap or
/// Namespace decoded
/// ([`protobuf`]); `415` for other media types and kinds (no YAML, CBOR or
/// protobuf of other kinds), `400` for a body that does not parse.
fn json_body(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    match media_type(headers) {
        None | Some("application/json") => {}
        Some("application/vnd.kubernetes.protobuf") => {
            return protobuf::to_json(body).map_err(|e| match e {
                protobuf::ProtobufError::Malformed(_) => ApiError::BadRequest(e.to_string()),
                protobuf::ProtobufError::Unsupported(_) => ApiError::BodyNotJson(e.to_string()),
            });
        }
        Some(other) => return Err(ApiError::BodyNotJson(other.to_owned())),
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))
}

/// `POST` to a collection: `201 Created` with the object as stored.
async fn create(
    State(api): State<Api>,
    Path(target): Path<Target>,
    headers: axum::http::HeaderMap,
    query: QueryPairs,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    no_dry_run(query)?;
    let kind = target.writable_kind()?;
    let object = api
        .state
        .create(kind, target.namespace(), json_body(&headers, &body)?)?;
    Ok((StatusCode::CREATED, axum::Json(object)).into_response())
}

/// `PUT` of an object.
async fn replace(
    State(api): State<Api>,
    Path(target): Path<Target>,
    headers: axum::http::HeaderMap,
    query: QueryPairs,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    no_dry_run(query)?;
    let kind = target.writable_kind()?;
    let object = api.state.replace(
        kind,
        target.namespace(),
        target.name(),
        json_body(&headers, &body)?,
    )?;
    Ok(axum::Json(object).into_response())
}

/// `PATCH` of an object: JSON merge or strategic merge patches.
async fn patch_one(
    State(api): State<Api>,
    Path(target): Path<Target>,
    headers: axum::http::HeaderMap,
    query: QueryPairs,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    no_dry_run(query)?;
    let kind = target.writable_kind()?;
    let how = patch_kind(&headers)?;
    let patch: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
    let object = api
        .state
        .patch(kind, target.namespace(), target.name(), &patch, how)?;
    Ok(axum::Json(object).into_response())
}

/// `DELETE` of an object: `200` with the object as it was.
async fn delete_one(
    State(api): State<Api>,
    Path(target): Path<Target>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    no_dry_run(query)?;
    let object = api
        .state
        .remove(target.writable_kind()?, target.namespace(), target.name())?;
    Ok(axum::Json(object).into_response())
}

/// The patch type from `Content-Type`; `415` for JSON patches and
/// server-side apply, which the emulator does not implement.
fn patch_kind(headers: &axum::http::HeaderMap) -> Result<PatchKind, ApiError> {
    match media_type(headers).unwrap_or_default() {
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::NotFound { kind, name } => ApiError::NotFound { kind, name },
            WriteError::AlreadyExists { kind, name } => ApiError::AlreadyExists { kind, name },
            WriteError::Conflict { .. } => ApiError::Conflict(error.to_string()),
            WriteError::BadRequest(message) => ApiError::BadRequest(message),
            WriteError::Invalid(message) => ApiError::Invalid(message),
            WriteError::Forbidden(message) => ApiError::Forbidden(message),
            WriteError::NotWritable(_) => ApiError::MethodNotAllowed,
        }
    }
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/log`: the pod's log as plain
/// text, read from the file the lab's process for it writes (the real API
/// server asks the node's kubelet). `tailLines`, `limitBytes` and `follow`
/// (new lines streamed as the process writes them, until the pod is
/// deleted or the client leaves) are honoured.
async fn pod_log(
    State(api): State<Api>,
    Path((ns, name)): Path<(String, String)>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let number = |key: &str| -> Result<Option<usize>, ApiError> {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| {
                v.parse()
                    .map_err(|_| ApiError::BadRequest(format!("{key}: invalid value {v:?}")))
            })
            .transpose()
    };
    let (tail_lines, limit_bytes) = (number("tailLines")?, number("limitBytes")?);
    let follow = match pairs.iter().find(|(k, _)| k == "follow") {
        Some((key, value)) => parse_bool(key, value)?,
        None => false,
    };
    if !api.state.contains(Kind::Pod, &ns, &name) {
        return Err(ApiError::NotFound { kind: "pods", name });
    }
    let path = api.state.pod_log(&ns, &name).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "pod {name:?} has no log: the lab serves it from inside its own process"
        ))
    })?;
    let log = tokio::fs::read(&path).await.map_err(|e| {
        ApiError::BadRequest(format!("the log of pod {name:?} cannot be read: {e}"))
    })?;
    let full_len = log.len();
    let mut log = &log[..];
    if let Some(n) = tail_lines {
        log = &log[tail_start(log, n)..];
    }
    if let Some(limit) = limit_bytes {
        log = &log[..log.len().min(limit)];
    }
    let first = Bytes::copy_from_slice(log);
    if !follow || limit_bytes.is_some_and(|limit| first.len() >= limit) {
        return Ok(([(header::CONTENT_TYPE, "text/plain")], Body::from(first)).into_response());
    }
    // `follow`: what is there, then what the process appends, until the
    // pod is gone or the client hangs up (the stream is then dropped).
    let follower = LogFollower {
        state: api.state.clone(),
        namespace: ns,
        name,
        path,
        offset: u64::try_from(full_len).unwrap_or(u64::MAX),
        left: limit_bytes.map(|limit| limit - first.len()),
    };
    let rest = futures::stream::unfold(follower, |mut f| async move {
        let chunk = f.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), f))
    });
    let body = futures::StreamExt::chain(futures::stream::once(async move { Ok(first) }), rest);
    Ok((
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(body),
    )
        .into_response())
}

/// A followed pod log: the bytes appended to the file after `offset`.
struct LogFollower {
    state: ClusterState,
    namespace: String,
    name: String,
    path: std::path::PathBuf,
    offset: u64,
    /// Bytes still allowed by `limitBytes`.
    left: Option<usize>,
}

impl LogFollower {
    /// How often the file is checked for new lines.
    const POLL: Duration = Duration::from_millis(250);

    /// The next bytes appended, waiting for them; `None` when the log ends
    /// (pod deleted, file gone, limit reached).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        loop {
            if self.left == Some(0) || !self.state.contains(Kind::Pod, &self.namespace, &self.name)
            {
                return None;
            }
            let mut file = tokio::fs::File::open(&self.path).await.ok()?;
            let len = file.metadata().await.ok()?.len();
            if len < self.offset {
                // Truncated or replaced: start over, as a rotated log.
                self.offset = 0;
            }
            if len > self.offset {
                file.seek(std::io::SeekFrom::Start(self.offset))
                    .await
                    .ok()?;
                let mut chunk = Vec::new();
                let want = (len - self.offset).min(self.left.map_or(u64::MAX, |l| l as u64));
                file.take(want).read_to_end(&mut chunk).await.ok()?;
                self.offset += chunk.len() as u64;
                if let Some(left) = self.left.as_mut() {
                    *left -= chunk.len().min(*left);
                }
                return Some(Bytes::from(chunk));
            }
            tokio::time::sleep(Self::POLL).await;
        }
    }
}

/// Where the last `n` lines of `log` start (a last line without its
/// newline counts).
fn tail_start(log: &[u8], n: usize) -> usize {
    if n == 0 {
        return log.len();
    }
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    body.iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1)
}

/// `PATCH /api/v1/nodes/{name}/status`: the node's status, patched.
async fn patch_node_status(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let strategic = patch_kind(&headers)? == PatchKind::Strategic;
    let patch: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid patch: {e}")))?;
    // Only the status subresource: anything else in the patch is ignored,
    // as the real status endpoint ignores spec changes.
    let status_patch = json!({ "status": patch.get("status").cloned().unwrap_or(Value::Null) });
    api.state
        .patch_node_status(&name, &status_patch, strategic)
        .map_err(ApiError::Invalid)?
        .map(|object| axum::Json(object).into_response())
        .ok_or(ApiError::NotFound {
            kind: "nodes",
            name,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::cluster::{node, pod};

    const TOKEN: &str = "t0ken";

    /// The router over plain HTTP on loopback, and a client with the token.
    async fn start() -> (ClusterState, String, reqwest::Client) {
        let (state, base, client, _) = start_counted().await;
        (state, base, client)
    }

    /// [`start`], with the emulator's clients (`TOKEN` is the admin).
    async fn start_counted() -> (ClusterState, String, reqwest::Client, Arc<Clients>) {
        let state = ClusterState::new();
        crate::lab::objects::register_namespaces(&state);
        state.apply_namespace(k8s_openapi::api::core::v1::Namespace {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("ns".to_owned()),
                ..Default::default()
            },
            ..Default::default()
        });
        state.apply_node(node("node-1", "198.18.0.1", "10.244.1.0/24"));
        state.apply_pod(pod(
            "ns",
            "a",
            "node-1",
            "10.244.1.2",
            &[("app", "agent")],
            false,
        ));
        state.apply_pod(pod(
            "ns",
            "b",
            "node-1",
            "10.244.1.3",
            &[("app", "other")],
            false,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let authority = Arc::new(TokenAuthority::new().unwrap());
        let clients = Arc::new(Clients::new(TOKEN));
        let app = router(state.clone(), Arc::clone(&clients), authority);
        tokio::spawn(async move { axum::serve(listener, app).await });
        (state, base, reqwest::Client::new(), clients)
    }

    /// `GET url` with `token`.
    async fn get_as(client: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
        client.get(url).bearer_auth(token).send().await.unwrap()
    }

    async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
        let response = client.get(url).bearer_auth(TOKEN).send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap())
    }

    #[tokio::test]
    async fn lists_and_gets_in_the_real_format() {
        let (state, base, client) = start().await;
        let (code, list) = get(
            &client,
            &format!("{base}/api/v1/namespaces/ns/pods?labelSelector=app%3Dagent&limit=500"),
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(list["kind"], "PodList");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(
            list["metadata"]["resourceVersion"],
            state.resource_version().to_string()
        );
        assert!(list["metadata"].get("continue").is_none());
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(list["items"][0]["kind"], "Pod");

        let (code, list) = get(
            &client,
            &format!("{base}/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1"),
        )
        .await;
        assert_eq!((code, list["items"].as_array().unwrap().len()), (200, 2));
        let (code, node) = get(&client, &format!("{base}/api/v1/nodes/node-1")).await;
        assert_eq!((code, node["kind"].as_str()), (200, Some("Node")));
        let (code, pod) = get(&client, &format!("{base}/api/v1/namespaces/ns/pods/b")).await;
        assert_eq!((code, pod["metadata"]["name"].as_str()), (200, Some("b")));

        let (code, version) = get(&client, &format!("{base}/version")).await;
        assert_eq!(
            (code, version["gitVersion"].as_str()),
            (200, Some(GIT_VERSION))
        );
        let livez = client.get(format!("{base}/livez")).send().await.unwrap();
        assert_eq!(livez.text().await.unwrap(), "ok");
    }

    /// The two writes: a strategic merge patch of a node's status keeps
    /// the other conditions, an Event is created with a generated name.
    #[tokio::test]
    async fn node_status_patches_and_events_in_the_real_shapes() {
        let (state, base, client) = start().await;
        let patch = json!({"status": {"conditions": [{
            "type": "NetmatrixPodNetwork", "status": "True",
            "reason": "NodeIsolated", "message": "cut off"
        }]}});
        let send = |content_type: &'static str| {
            client
                .patch(format!("{base}/api/v1/nodes/node-1/status"))
                .bearer_auth(TOKEN)
                .header("content-type", content_type)
                .body(patch.to_string())
                .send()
        };
        let refused = send("application/json").await.unwrap();
        assert_eq!(refused.status().as_u16(), 415);
        let patched = send("application/strategic-merge-patch+json")
            .await
            .unwrap();
        assert_eq!(patched.status().as_u16(), 200);
        let (_, node) = get(&client, &format!("{base}/api/v1/nodes/node-1")).await;
        let types: Vec<&str> = node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["Ready", "NetmatrixPodNetwork"]);
        let missing = client
            .patch(format!("{base}/api/v1/nodes/node-9/status"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/merge-patch+json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status().as_u16(), 404);

        let event = json!({
            "metadata": {"generateName": "node-1.netmatrix."},
            "involvedObject": {"kind": "Node", "name": "node-1", "uid": "node-1"},
            "reason": "NetmatrixPodNetworkProblem", "message": "NodeIsolated: cut off",
            "type": "Warning"
        });
        let created = client
            .post(format!("{base}/api/v1/namespaces/default/events"))
            .bearer_auth(TOKEN)
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status().as_u16(), 201);
        let created: Value = created.json().await.unwrap();
        let name = created["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("node-1.netmatrix."), "{name}");
        let (_, list) = get(
            &client,
            &format!(
                "{base}/api/v1/namespaces/default/events?fieldSelector=involvedObject.kind%3DNode"
            ),
        )
        .await;
        assert_eq!(list["kind"], "EventList");
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(state.events("default").len(), 1);
        // An object needs a name (or generateName).
        let pod = client
            .post(format!("{base}/api/v1/namespaces/ns/pods"))
            .bearer_auth(TOKEN)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(pod.status().as_u16(), 422);
    }

    #[tokio::test]
    async fn errors_are_status_objects() {
        let (_state, base, client) = start().await;
        let unauthenticated = client
            .get(format!("{base}/api/v1/nodes"))
            .send()
            .await
            .unwrap();
        assert_eq!(unauthenticated.status(), 401);
        let status: Value = unauthenticated.json().await.unwrap();
        assert_eq!(
            (status["kind"].as_str(), status["reason"].as_str()),
            (Some("Status"), Some("Unauthorized"))
        );
        let wrong = get_as(&client, &format!("{base}/api/v1/nodes"), "nope").await;
        assert_eq!(wrong.status(), 401);

        for (url, code, reason) in [
            ("/api/v1/pods?labelSelector=app%20in%20x", 400, "BadRequest"),
            (
                "/api/v1/pods?fieldSelector=spec.bogus%3D1",
                400,
                "BadRequest",
            ),
            ("/api/v1/pods?watch=maybe", 400, "BadRequest"),
            (
                "/api/v1/pods?watch=1&sendInitialEvents=true",
                422,
                "Invalid",
            ),
            ("/api/v1/nodes/absent", 404, "NotFound"),
            ("/api/v1/namespaces/ns/pods/absent", 404, "NotFound"),
            ("/api/v1/pods/a", 404, "NotFound"),
            ("/api/v1/namespaces/ns/nodes", 404, "NotFound"),
            ("/api/v1/persistentvolumes", 404, "NotFound"),
            ("/apis/batch/v1/jobs", 404, "NotFound"),
            (
                "/apis/apps/v1/namespaces/ns/daemonsets/absent",
                404,
                "NotFound",
            ),
        ] {
            let (got, status) = get(&client, &format!("{base}{url}")).await;
            assert_eq!(
                (got, status["reason"].as_str()),
                (code, Some(reason)),
                "{url}: {status}"
            );
            assert_eq!(status["code"], code, "{url}");
        }
        let post = client
            .post(format!("{base}/api/v1/nodes"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 405);
    }

    #[tokio::test]
    async fn watches_stream_newline_delimited_events() {
        let (state, base, client) = start().await;
        let mut response = client
            .get(format!("{base}/api/v1/namespaces/ns/pods?watch=true&resourceVersion=1&timeoutSeconds=2&labelSelector=app%3Dagent"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let mut next = async || {
            let chunk = response.chunk().await.unwrap().unwrap();
            serde_json::from_slice::<Value>(&chunk).unwrap()
        };
        let first = next().await;
        assert_eq!(
            (
                first["type"].as_str(),
                first["object"]["metadata"]["name"].as_str()
            ),
            (Some("ADDED"), Some("a"))
        );
        state.delete_pod("ns", "a");
        assert_eq!(next().await["type"], "DELETED");

        let expired = client
            .get(format!("{base}/api/v1/pods?watch=1&resourceVersion=1000"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let event: Value = serde_json::from_str(expired.trim()).unwrap();
        assert_eq!(
            (event["type"].as_str(), event["object"]["code"].as_u64()),
            (Some("ERROR"), Some(410))
        );
    }

    /// Two tokens, two clients: lists (items and bytes as sent) and gets
    /// are counted for the one that asked; an unknown token is refused
    /// and counts for no one.
    #[tokio::test]
    async fn clients_are_counted_apart_by_token() {
        let (_state, base, client, clients) = start_counted().await;
        let agent = ClientId::pod("ns", "netmatrix-agent", "a");
        clients.register("agent-token", agent);
        let list = get_as(
            &client,
            &format!("{base}/api/v1/namespaces/ns/pods"),
            "agent-token",
        )
        .await;
        assert_eq!(list.status(), 200);
        let list_len = list.bytes().await.unwrap().len() as u64;
        let (code, _) = get(&client, &format!("{base}/api/v1/nodes/node-1")).await;
        assert_eq!(code, 200);
        let refused = get_as(&client, &format!("{base}/api/v1/nodes"), "forged").await;
        assert_eq!(refused.status(), 401);

        let counted = clients.snapshot();
        assert_eq!(
            counted.keys().collect::<Vec<_>>(),
            ["lab", "ns/netmatrix-agent/a"]
        );
        let a = counted["ns/netmatrix-agent/a"];
        assert_eq!((a.lists, a.list_objects, a.list_bytes), (1, 2, list_len));
        assert_eq!((a.gets, a.watches_opened), (0, 0));
        let admin = counted["lab"];
        assert_eq!((admin.lists, admin.gets), (0, 1));
        assert!(admin.get_bytes > 100, "{admin:?}");
    }

    /// A watch counts as open while its response streams, and no longer
    /// once the client drops it; its lines are counted as sent.
    #[tokio::test]
    async fn a_dropped_watch_is_no_longer_open() {
        let (state, base, client, clients) = start_counted().await;
        let url = format!("{base}/api/v1/namespaces/ns/pods?watch=true&timeoutSeconds=60");
        let mut watch = get_as(&client, &url, TOKEN).await;
        assert_eq!(watch.status(), 200);
        let mut received = 0;
        while received < 2 {
            received += watch
                .chunk()
                .await
                .unwrap()
                .unwrap()
                .split(|b| *b == b'\n')
                .count()
                - 1;
        }
        state.delete_pod("ns", "a");
        let deleted = watch.chunk().await.unwrap().unwrap();
        let open = clients.snapshot()["lab"];
        assert_eq!((open.watches_opened, open.watches_open), (1, 1));
        assert_eq!((open.watch_events, open.watch_bookmarks), (3, 0));
        assert!(open.watch_bytes > deleted.len() as u64, "{open:?}");

        drop(watch);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            // The server notices the closed connection on its next write
            // or read; a change makes it write.
            state.apply_pod(pod("ns", "c", "node-1", "10.244.1.4", &[], false));
            if clients.snapshot()["lab"].watches_open == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watch still counts as open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(clients.snapshot()["lab"].watches_opened, 1);
    }

    /// What kubectl asks before anything else, and the forms it prints.
    #[tokio::test]
    async fn discovery_tables_and_logs_as_kubectl_reads_them() {
        let (state, base, client) = start().await;
        let (code, versions) = get(&client, &format!("{base}/api")).await;
        assert_eq!((code, versions["versions"][0].as_str()), (200, Some("v1")));
        let (code, core) = get(&client, &format!("{base}/api/v1")).await;
        assert_eq!(
            (code, core["kind"].as_str()),
            (200, Some("APIResourceList"))
        );
        let (code, _) = get(&client, &format!("{base}/apis/batch/v1")).await;
        assert_eq!(code, 404);

        let table = client
            .get(format!("{base}/api/v1/namespaces/ns/pods"))
            .bearer_auth(TOKEN)
            .header(
                header::ACCEPT,
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(table.headers()[header::CONTENT_TYPE], table::CONTENT_TYPE);
        let table: Value = table.json().await.unwrap();
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["rows"].as_array().map(Vec::len), Some(2));
        assert_eq!(table["rows"][0]["cells"][0], "a");
        assert_eq!(table["rows"][0]["object"]["metadata"]["name"], "a");

        let log_url = format!("{base}/api/v1/namespaces/ns/pods/a/log");
        let response = get_as(&client, &log_url, TOKEN).await;
        assert_eq!(response.status().as_u16(), 400, "no log registered");
        let dir = std::env::temp_dir().join(format!("nm-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.log");
        std::fs::write(&file, "one\ntwo\nthree\n").unwrap();
        state.set_pod_log("ns", "a", file);
        let text = |url: String| {
            let client = client.clone();
            async move { get_as(&client, &url, TOKEN).await.text().await.unwrap() }
        };
        assert_eq!(text(log_url.clone()).await, "one\ntwo\nthree\n");
        assert_eq!(text(format!("{log_url}?tailLines=2")).await, "two\nthree\n");
        assert_eq!(text(format!("{log_url}?limitBytes=3")).await, "one");
        // Following: what is there, what is appended, the end with the pod.
        let mut follow = get_as(
            &client,
            &format!("{log_url}?follow=true&tailLines=1"),
            TOKEN,
        )
        .await;
        assert_eq!(
            follow.chunk().await.unwrap().as_deref(),
            Some(&b"three\n"[..])
        );
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("a.log"))
                .unwrap();
            f.write_all(b"four\n").unwrap();
        }
        let next = tokio::time::timeout(Duration::from_secs(5), follow.chunk()).await;
        assert_eq!(next.unwrap().unwrap().as_deref(), Some(&b"four\n"[..]));
        state.delete_pod("ns", "a");
        let end = tokio::time::timeout(Duration::from_secs(5), follow.chunk()).await;
        assert_eq!(end.unwrap().unwrap(), None, "the log ends with its pod");
        let missing = get_as(
            &client,
            &format!("{base}/api/v1/namespaces/ns/pods/zz/log"),
            TOKEN,
        )
        .await;
        assert_eq!(missing.status().as_u16(), 404);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn log_tails_count_lines_with_or_without_a_last_newline() {
        assert_eq!(tail_start(b"a\nb\nc\n", 1), 4);
        assert_eq!(tail_start(b"a\nb\nc", 2), 2);
        assert_eq!(tail_start(b"a\nb\n", 5), 0);
        assert_eq!(tail_start(b"a\nb\n", 0), 4);
    }
}
