//! The HTTP API (axum 0.8): reports in, matrix, findings and metrics out.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use netmatrix_api::{
    ApiError, Cell, FINDINGS_PATH, Findings, MATRIX_CELL_PATH, MATRIX_COMPACT_PATH, MATRIX_PATH,
    NODE_FACTS_PATH, NetworkMode, RELAYED_REPORTS_PATH, REPORTS_PATH, ReportAccepted, reasons,
};
use tokio::sync::Semaphore;
use tower_http::limit::RequestBodyLimitLayer;

use crate::web;

use crate::auth::AuthError;
use crate::published::Form;
use crate::state::Aggregator;
use crate::store::{FactsLookup, Rejection};

#[derive(Clone)]
struct AppState {
    aggregator: Arc<Aggregator>,
    max_body: usize,
    /// KiB of report bodies being read at once, at most: a client may hold
    /// a body for the body timeout, and many clients many bodies.
    body_budget: Arc<Semaphore>,
}

/// Report bodies buffered at once, at most (in KiB): 64 MiB, or eight
/// bodies of `--max-body` when that is larger.
fn body_budget_kib(max_body: usize) -> usize {
    (64 * 1024).max(8 * max_body.div_ceil(1024))
}

/// Every route. `max_body` bounds report bodies (`--max-body`): a larger
/// `Content-Length` is refused before the body is read (tower-http's
/// `RequestBodyLimitLayer`), a longer chunked body when it passes the limit.
pub fn router(aggregator: Arc<Aggregator>, max_body: usize) -> Router {
    let state = AppState {
        aggregator,
        max_body,
        body_budget: Arc::new(Semaphore::new(body_budget_kib(max_body))),
    };
    // Layers wrap what is above them: the limit sees the request first,
    // and its plain 413 is rewritten on the way out.
    let bounded = |route: axum::routing::MethodRouter<AppState>| {
        route
            .route_layer(DefaultBodyLimit::disable())
            .route_layer(RequestBodyLimitLayer::new(max_body))
            .route_layer(axum::middleware::map_response_with_state(
                state.clone(),
                explain_too_large,
            ))
    };
    Router::new()
        .route(REPORTS_PATH, bounded(post(post_report)))
        .route(RELAYED_REPORTS_PATH, bounded(post(post_relayed_report)))
        .route(MATRIX_PATH, get(get_matrix))
        .route(MATRIX_COMPACT_PATH, get(get_matrix_compact))
        .route(MATRIX_CELL_PATH, get(get_matrix_cell))
        .route(FINDINGS_PATH, get(get_findings))
        .route(NODE_FACTS_PATH, get(get_node_facts))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(web::index))
        .route(web::ASSETS_PATH, get(web::asset))
        .route("/api", get(web::api_index))
        .fallback(not_found)
        .with_state(state)
}

/// The body limit layer answers a plain-text 413 before any handler runs:
/// count it, and answer in the API's words.
async fn explain_too_large(State(state): State<AppState>, response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE || is_json {
        return response;
    }
    let rejection = Rejection::TooLarge {
        limit: state.max_body,
    };
    state.aggregator.rejected(&rejection);
    rejection_response(&rejection)
}

/// `POST /api/v1/reports`: the token first, then the body (bounded in size
/// and time by the layers, and in all by the body budget), then the report.
/// A refused caller's body is read and thrown away, not kept: closing a
/// connection with unread data resets it, and the client would never see
/// why it was refused.
async fn post_report(State(state): State<AppState>, request: Request) -> Response {
    intake(&state, request, false).await
}

/// `POST /api/v1/relayed-reports`: as [`post_report`], for a pod agent's
/// report carried by its node's host agent (whose token this is).
async fn post_relayed_report(State(state): State<AppState>, request: Request) -> Response {
    intake(&state, request, true).await
}

async fn intake(state: &AppState, request: Request, relayed: bool) -> Response {
    let (parts, body) = request.into_parts();
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let sender = match state.aggregator.authenticate(authorization).await {
        Ok(sender) => sender,
        Err(rejection) => {
            let mut discarded = body.into_data_stream();
            while let Some(Ok(_)) = discarded.next().await {}
            return rejection_response(&rejection);
        }
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(state.max_body)
        .min(state.max_body);
    let kib = u32::try_from(declared.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    // The budget is never closed; a failure here would be a shutdown.
    let Ok(_budget) = state.body_budget.acquire_many(kib).await else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            reasons::NOT_READY,
            "not-ready: the aggregator is shutting down".to_owned(),
        );
    };
    let request = Request::from_parts(parts, body);
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) => {
            let rejection = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Rejection::TooLarge {
                    limit: state.max_body,
                }
            } else {
                Rejection::Malformed("body: not received in time, or unreadable".into())
            };
            state.aggregator.rejected(&rejection);
            return rejection_response(&rejection);
        }
    };
    let outcome = if relayed {
        state.aggregator.ingest_relayed(&body, &sender)
    } else {
        state.aggregator.ingest(&body, &sender)
    };
    match outcome {
        Ok(accepted) => (
            StatusCode::ACCEPTED,
            Json(ReportAccepted {
                node: accepted.node,
                round: accepted.round,
                want_facts: accepted.want_facts,
            }),
        )
            .into_response(),
        Err(rejection) => rejection_response(&rejection),
    }
}

fn rejection_response(rejection: &Rejection) -> Response {
    let status = match rejection {
        Rejection::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Rejection::Malformed(_) | Rejection::Invalid(_) => StatusCode::BAD_REQUEST,
        Rejection::Auth(AuthError::Missing | AuthError::Rejected(_)) => StatusCode::UNAUTHORIZED,
        Rejection::Auth(AuthError::NotAnAgent(_)) | Rejection::Forbidden(_) => {
            StatusCode::FORBIDDEN
        }
        Rejection::Auth(AuthError::Unavailable(_)) | Rejection::NotReady => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Rejection::Stale { .. } => StatusCode::CONFLICT,
    };
    let mut response = api_error(status, rejection.reason(), rejection.client_message());
    let headers = response.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn api_error(status: StatusCode, reason: &str, message: String) -> Response {
    let body = ApiError {
        reason: reason.to_owned(),
        message,
    };
    (status, Json(body)).into_response()
}

/// The latest round's matrix, encoded once per round and off the async
/// threads (at 1,000 nodes this is a million cells).
async fn get_matrix(State(state): State<AppState>) -> Response {
    encoded_matrix(&state, Form::Full).await
}

async fn get_matrix_compact(State(state): State<AppState>) -> Response {
    encoded_matrix(&state, Form::Compact).await
}

async fn encoded_matrix(state: &AppState, form: Form) -> Response {
    let published = state.aggregator.published();
    let encoded = match published.request(form) {
        Some(cached) => Ok(cached),
        None => tokio::task::spawn_blocking(move || published.encoded(form)).await,
    };
    match encoded {
        Ok(Ok(encoded)) => (
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (header::CONTENT_LENGTH, encoded.len().to_string()),
            ],
            encoded.body(),
        )
            .into_response(),
        Ok(Err(error)) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "matrix-failed",
            error.to_string(),
        ),
        Err(error) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "matrix-failed",
            error.to_string(),
        ),
    }
}

#[derive(serde::Deserialize)]
struct CellQuery {
    from: String,
    to: String,
    #[serde(default)]
    network: NetworkMode,
}

#[derive(serde::Deserialize)]
struct FactsQuery {
    node: String,
}

/// `GET /api/v1/facts?node=NODE`: what NODE's host agent last read of
/// its network.
async fn get_node_facts(
    State(state): State<AppState>,
    query: Result<Query<FactsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<netmatrix_api::facts::NodeFacts>, Response> {
    let Query(q) = query.map_err(|rejection| {
        api_error(
            StatusCode::BAD_REQUEST,
            "bad-query",
            format!("{}; use ?node=NODE", rejection.body_text()),
        )
    })?;
    match state.aggregator.node_facts(&q.node) {
        FactsLookup::Held(facts) => Ok(Json(facts.as_ref().clone())),
        FactsLookup::Asked => Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "facts-pending",
            "asked this node's host agent for its network facts: they come with its next report; ask again in a few seconds".to_owned(),
        )),
        FactsLookup::NoHostAgent => Err(api_error(
            StatusCode::NOT_FOUND,
            "no-facts",
            "no facts for this node: it has no host-network agent reporting (hostAgent.enabled), or the node is unknown".to_owned(),
        )),
    }
}

async fn get_matrix_cell(
    State(state): State<AppState>,
    query: Result<Query<CellQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Cell>, Response> {
    let Query(q) = query.map_err(|rejection| {
        api_error(
            StatusCode::BAD_REQUEST,
            "bad-query",
            format!(
                "{}; use ?from=NODE&to=NODE[&network=pod|host]",
                rejection.body_text()
            ),
        )
    })?;
    let matrix = state.aggregator.matrix();
    matrix
        .cell(&q.from, &q.to, q.network)
        .cloned()
        .map(Json)
        .ok_or_else(|| {
            let known = |n: &str| matrix.has_node(n);
            // A reporting row with fewer cells than nodes: a sampled agent.
            let sampled_row = matrix
                .row(&q.from, NetworkMode::Pod)
                .is_some_and(|r| r.reporting && r.cells.len() < matrix.nodes.len());
            if q.network == NetworkMode::Pod && sampled_row && known(&q.to) {
                api_error(
                    StatusCode::NOT_FOUND,
                    "not-probed",
                    format!(
                        "{} does not probe {} this round: above --full-mesh-max-nodes each agent probes a sample of the nodes (see the row's cells)",
                        q.from, q.to
                    ),
                )
            } else {
                api_error(
                    StatusCode::NOT_FOUND,
                    "no-such-cell",
                    format!("no cell {} -> {} in the matrix", q.from, q.to),
                )
            }
        })
}

async fn get_findings(State(state): State<AppState>) -> Json<Findings> {
    Json(Findings::clone(&state.aggregator.findings()))
}

async fn get_metrics(State(state): State<AppState>) -> Response {
    let metrics = state.aggregator.metrics();
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics.content_type())], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics-encoding",
                error.to_string(),
            )
        }
    }
}

async fn not_found() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such endpoint; GET /api lists them".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Authenticator, Caller};
    use crate::inventory::InventorySource;
    use crate::state::Settings;
    use crate::store::tests::{inventory, report};
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use netmatrix_api::{CompactMatrix, Matrix};
    use netmatrix_api::{EchoResult, PeerResult, Status};
    use tower::ServiceExt;

    const MAX_BODY: usize = 4096;

    const NOW: u64 = 1_000_000_000;

    /// An aggregator knowing nodes n1 and n2, whose agents' tokens are
    /// `token-agent-n1` and `token-agent-n2`.
    fn app() -> (Router, Arc<Aggregator>) {
        let inv = InventorySource::Fixed(Arc::new(inventory(&["n1", "n2"])));
        let tokens = ["agent-n1", "agent-n2", "host-agent-n1", "host-agent-n2"]
            .map(|pod| {
                let caller = Caller {
                    service_account: "netmatrix-agent".into(),
                    pod: pod.into(),
                    pod_uid: format!("uid-{pod}"),
                    node: None,
                };
                (format!("token-{pod}"), caller)
            })
            .into();
        let aggregator = Aggregator::new(inv, Settings::default())
            .unwrap()
            .with_authenticator(Authenticator::with_static_tokens(tokens))
            .with_clock(|| NOW);
        let aggregator = Arc::new(aggregator);
        (router(Arc::clone(&aggregator), MAX_BODY), aggregator)
    }

    /// A request as n1's agent (GETs carry the token too: it is ignored).
    async fn send(app: &Router, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        send_as(app, Some("token-agent-n1"), method, uri, body).await
    }

    async fn send_as(
        app: &Router,
        token: Option<&str>,
        method: &str,
        uri: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Body::from(body)).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, bytes.to_vec())
    }

    /// n1's report of round 10 with one peer, n2's agent, echoed as `icmp`.
    fn report_with_peer(icmp: EchoResult) -> netmatrix_api::Report {
        let mut r = report(0, "n1", NOW);
        r.round = 10;
        r.peers.push(PeerResult {
            node: "n2".into(),
            pod: "agent-n2".into(),
            ip: "10.244.2.2".parse().unwrap(),
            icmp,
            mtu: None,
            tcp: None,
            udp: None,
            port: None,
        });
        r
    }

    fn good_report() -> Vec<u8> {
        let r = report_with_peer(EchoResult {
            sent: 3,
            received: 3,
            ..Default::default()
        });
        serde_json::to_vec(&r).unwrap()
    }

    /// n1's host agent relays n1's pod agent's report; nobody else may.
    #[tokio::test]
    async fn relayed_reports_come_only_from_the_nodes_host_agent() {
        let (app, aggregator) = app();
        for (token, expected) in [
            ("token-agent-n1", StatusCode::FORBIDDEN),
            ("token-host-agent-n2", StatusCode::FORBIDDEN),
            ("token-host-agent-n1", StatusCode::ACCEPTED),
        ] {
            let (status, body) = send_as(
                &app,
                Some(token),
                "POST",
                RELAYED_REPORTS_PATH,
                good_report(),
            )
            .await;
            assert_eq!(
                status,
                expected,
                "{token}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let row = matrix(&app).await.rows.remove(0);
        assert_eq!(row.relayed_by.as_deref(), Some("host-agent-n1"));
        let text = aggregator.metrics().encode().unwrap();
        assert!(text.contains("netmatrix_reports_relayed_total 1"), "{text}");
    }

    async fn matrix(app: &Router) -> Matrix {
        let (status, body) = send(app, "GET", MATRIX_PATH, vec![]).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&body).unwrap()
    }

    fn reason(body: &[u8]) -> String {
        serde_json::from_slice::<ApiError>(body).unwrap().reason
    }

    #[tokio::test]
    async fn accepts_a_good_report() {
        let (app, _) = app();
        let (status, body) = send(&app, "POST", REPORTS_PATH, good_report()).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let accepted: ReportAccepted = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            accepted,
            ReportAccepted {
                node: "n1".into(),
                round: 10,
                want_facts: false,
            }
        );
        let m = matrix(&app).await;
        assert_eq!(m.nodes, ["n1", "n2"]);
        assert!(m.rows[0].reporting);
        assert_eq!(m.rows[0].cells[1].status, Status::Ok);
    }

    #[tokio::test]
    async fn bad_reports_get_4xx_and_change_nothing() {
        let (app, aggregator) = app();
        assert_eq!(
            send(&app, "POST", REPORTS_PATH, good_report()).await.0,
            StatusCode::ACCEPTED
        );
        let before = matrix(&app).await;

        let (status, body) = send(&app, "POST", REPORTS_PATH, b"{not json".to_vec()).await;
        assert_eq!(
            (status, reason(&body).as_str()),
            (StatusCode::BAD_REQUEST, "invalid")
        );

        let mut huge = good_report();
        huge.extend(std::iter::repeat_n(b' ', MAX_BODY));
        let (status, body) = send(&app, "POST", REPORTS_PATH, huge).await;
        assert_eq!(
            (status, reason(&body).as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, "too-large")
        );

        // No token, an unknown one, and n2's agent's token with n1's body.
        for (token, expected, why) in [
            (None, StatusCode::UNAUTHORIZED, "unauthenticated"),
            (Some("forged"), StatusCode::UNAUTHORIZED, "unauthenticated"),
            (Some("token-agent-n2"), StatusCode::FORBIDDEN, "forbidden"),
        ] {
            let mut r = report_with_peer(EchoResult::default());
            r.round = 20;
            let body = serde_json::to_vec(&r).unwrap();
            let (status, body) = send_as(&app, token, "POST", REPORTS_PATH, body).await;
            assert_eq!(
                (status, reason(&body).as_str()),
                (expected, why),
                "{token:?}"
            );
        }

        let mut old = report(0, "n1", NOW);
        old.round = 5;
        let (status, body) = send(
            &app,
            "POST",
            REPORTS_PATH,
            serde_json::to_vec(&old).unwrap(),
        )
        .await;
        assert_eq!(
            (status, reason(&body).as_str()),
            (StatusCode::CONFLICT, "stale")
        );

        assert_eq!(matrix(&app).await, before);

        let text = aggregator.metrics().encode().unwrap();
        for (reason, count) in [
            ("invalid", 1),
            ("too-large", 1),
            ("unauthenticated", 2),
            ("forbidden", 1),
            ("stale", 1),
        ] {
            let line = format!("netmatrix_reports_rejected_total{{reason=\"{reason}\"}} {count}");
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        assert!(text.contains("netmatrix_reports_total 1"));
    }

    #[tokio::test]
    async fn refusals_are_short_and_say_what_to_do() {
        let (app, _) = app();
        let request = Request::post(REPORTS_PATH).body(Body::from("{}")).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");

        let (status, body) = send(&app, "POST", REPORTS_PATH, vec![b' '; 10]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.len() < 200, "{}", String::from_utf8_lossy(&body));
        let (_, body) = send(
            &app,
            "POST",
            REPORTS_PATH,
            br#"{"agent":{"node":"n1\nforged log line","pod":"agent-n1","pod_ip":"10.244.1.2"},"round":11,"started_unix_ms":1000000000,"interval_ms":5000}"#.to_vec(),
        )
        .await;
        let error: ApiError = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            error.message,
            "invalid: agent.node: not a Kubernetes name (DNS-1123 subdomain)"
        );
    }

    #[tokio::test]
    async fn an_oversized_content_length_is_refused_before_the_body() {
        let (app, aggregator) = app();
        // The body never arrives: a stream that stays pending.
        let never = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let request = Request::post(REPORTS_PATH)
            .header(header::CONTENT_LENGTH, "1000000000000")
            .header(header::AUTHORIZATION, "Bearer token-agent-n1")
            .body(never)
            .unwrap();
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            app.clone().oneshot(request),
        )
        .await
        .expect("answered without waiting for the body")
        .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(reason(&body), "too-large");
        let text = aggregator.metrics().encode().unwrap();
        assert!(text.contains("netmatrix_reports_rejected_total{reason=\"too-large\"} 1"));
    }

    #[tokio::test]
    async fn findings_metrics_and_pointers_are_served() {
        let (app, aggregator) = app();
        aggregator.evaluate();
        let (status, body) = send(&app, "GET", FINDINGS_PATH, vec![]).await;
        assert_eq!(status, StatusCode::OK);
        let findings: Findings = serde_json::from_slice(&body).unwrap();
        assert!(
            findings.findings.is_empty(),
            "hysteresis holds back round one"
        );

        let (status, body) = send(&app, "GET", "/metrics", vec![]).await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("netmatrix_nodes_expected 2"), "{text}");
        assert!(text.contains("netmatrix_finding_active{kind=\"agent-missing\"} 0"));

        assert_eq!(
            send(&app, "GET", "/healthz", vec![]).await.0,
            StatusCode::OK
        );
        let (status, body) = send(&app, "GET", "/api", vec![]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(String::from_utf8(body).unwrap().contains(MATRIX_PATH));
        let (status, body) = send(&app, "GET", "/nope", vec![]).await;
        assert_eq!(
            (status, reason(&body).as_str()),
            (StatusCode::NOT_FOUND, "not-found")
        );
    }

    async fn get(app: &Router, uri: &str) -> (StatusCode, String, Vec<u8>) {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, bytes.to_vec())
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served() {
        let (app, _) = app();
        let (status, content_type, body) = get(&app, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "text/html; charset=utf-8");
        let html = String::from_utf8(body).unwrap();
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert!(html.contains("<canvas id=\"heatmap\""));
        for (path, expected) in [
            ("/assets/app.js", "text/javascript; charset=utf-8"),
            ("/assets/app.css", "text/css; charset=utf-8"),
            ("/assets/favicon.svg", "image/svg+xml"),
        ] {
            assert!(html.contains(path), "{path} not linked");
            let (status, content_type, body) = get(&app, path).await;
            assert_eq!((status, content_type.as_str()), (StatusCode::OK, expected));
            assert!(!body.is_empty());
        }
        let (_, _, js) = get(&app, "/assets/app.js").await;
        assert!(String::from_utf8(js).unwrap().contains("window.netmatrix"));
        assert_eq!(get(&app, "/assets/nope.js").await.0, StatusCode::NOT_FOUND);
        let (status, content_type, body) = get(&app, "/api").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/plain"));
        let text = String::from_utf8(body).unwrap();
        for path in [
            MATRIX_PATH,
            MATRIX_COMPACT_PATH,
            FINDINGS_PATH,
            REPORTS_PATH,
        ] {
            assert!(text.contains(path), "{path} missing from /api");
        }
    }

    #[tokio::test]
    async fn compact_and_cell_endpoints_match_the_full_matrix() {
        let (app, _) = app();
        let r = report_with_peer(EchoResult {
            sent: 4,
            received: 3,
            rtt_avg_ms: Some(0.4567),
            rtt_max_ms: Some(0.9),
            ..Default::default()
        });
        let (status, _) = send(&app, "POST", REPORTS_PATH, serde_json::to_vec(&r).unwrap()).await;
        assert_eq!(status, StatusCode::ACCEPTED);

        let full = matrix(&app).await;
        let (status, content_type, body) = get(&app, MATRIX_COMPACT_PATH).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        let compact: CompactMatrix = serde_json::from_slice(&body).unwrap();
        assert_eq!(compact.nodes, full.nodes);
        assert_eq!(compact.rows.len(), full.rows.len());
        for (row, small) in full.rows.iter().zip(&compact.rows) {
            assert_eq!(small.node, row.node);
            let statuses: String = row
                .cells
                .iter()
                .map(|c| netmatrix_api::status_char(c.status))
                .collect();
            assert_eq!(small.status, statuses);
        }
        let cell = &full.rows[0].cells[1];
        assert_eq!(compact.rows[0].rtt_avg_us[1], 457);
        assert_eq!(
            compact.rows[0].loss_pct[1],
            (cell.loss.unwrap() * 100.0).ceil() as i16
        );

        let (status, _, body) = get(&app, "/api/v1/matrix/cell?from=n1&to=n2").await;
        assert_eq!(status, StatusCode::OK);
        let got: Cell = serde_json::from_slice(&body).unwrap();
        assert_eq!(&got, cell);
        let (status, _, body) = get(&app, "/api/v1/matrix/cell?from=n1&to=n9&network=pod").await;
        assert_eq!(
            (status, reason(&body).as_str()),
            (StatusCode::NOT_FOUND, "no-such-cell")
        );
        let (status, _, body) = get(&app, "/api/v1/matrix/cell?from=n1").await;
        assert_eq!(
            (status, reason(&body).as_str()),
            (StatusCode::BAD_REQUEST, "bad-query")
        );
    }
}
