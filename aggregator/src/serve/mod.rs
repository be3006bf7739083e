//! The aggregator's HTTP surface (axum 0.8): reports in; the matrix, the
//! findings, the nodes' facts and the metrics out; the web page (its assets
//! in `web/`) at `/`.
//!
//! - [`router`]: every route, and the endpoint list ([`ENDPOINTS`]);
//! - `reports`: `POST` of reports, direct and relayed, bounded in size and
//!   time, and the refusals;
//! - `reads`: the matrix (full and compact), the findings, a node's facts,
//!   the metrics;
//! - `cell`: one full cell of the matrix;
//! - `pinglist`: an agent's pinglist, by ETag with a long poll;
//! - [`compact`]: the matrix encoded a few bytes per cell.

mod cell;
mod compact;
mod pinglist;
mod reads;
mod reports;
#[cfg(test)]
mod tests;

pub use compact::compact;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use netmatrix_api::{
    ApiError, FINDINGS_PATH, MATRIX_CELL_PATH, MATRIX_COMPACT_PATH, MATRIX_PATH, NODE_FACTS_PATH,
    PINGLIST_PATH, RELAYED_REPORTS_PATH, REPORTS_PATH,
};
use tokio::sync::Semaphore;
use tower_http::limit::RequestBodyLimitLayer;

use crate::state::Aggregator;
use crate::web;

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) aggregator: Arc<Aggregator>,
    pub(super) max_body: usize,
    /// KiB of report bodies being read at once, at most: a client may hold
    /// a body for the body timeout, and many clients many bodies.
    pub(super) body_budget: Arc<Semaphore>,
    /// Pinglist polls held open at once ([`pinglist::MAX_WAITERS`]).
    pub(super) long_polls: Arc<Semaphore>,
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
        long_polls: Arc::new(Semaphore::new(pinglist::MAX_WAITERS)),
    };
    // Layers wrap what is above them: the limit sees the request first,
    // and its plain 413 is rewritten on the way out.
    let bounded = |route: axum::routing::MethodRouter<AppState>| {
        route
            .route_layer(DefaultBodyLimit::disable())
            .route_layer(RequestBodyLimitLayer::new(max_body))
            .route_layer(axum::middleware::map_response_with_state(
                state.clone(),
                reports::explain_too_large,
            ))
    };
    Router::new()
        .route(REPORTS_PATH, bounded(post(reports::post_report)))
        .route(
            RELAYED_REPORTS_PATH,
            bounded(post(reports::post_relayed_report)),
        )
        .route(
            &format!("{PINGLIST_PATH}/{{node}}"),
            get(pinglist::get_pinglist).route_layer(DefaultBodyLimit::max(0)),
        )
        .route(MATRIX_PATH, get(reads::get_matrix))
        .route(MATRIX_COMPACT_PATH, get(reads::get_matrix_compact))
        .route(MATRIX_CELL_PATH, get(cell::get_matrix_cell))
        .route(FINDINGS_PATH, get(reads::get_findings))
        .route(NODE_FACTS_PATH, get(reads::get_node_facts))
        .route("/metrics", get(reads::get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(web::index))
        .route(web::ASSETS_PATH, get(web::asset))
        .route("/api", get(api_index))
        .fallback(not_found)
        .with_state(state)
}

/// An error answer: `status` and an [`ApiError`] body.
pub(super) fn api_error(status: StatusCode, reason: &str, message: String) -> Response {
    let body = ApiError {
        reason: reason.to_owned(),
        message,
    };
    (status, Json(body)).into_response()
}

async fn not_found() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such endpoint; GET /api lists them".to_owned(),
    )
}

/// The endpoint list (`GET /api`, and the page's footer).
pub const ENDPOINTS: &str = concat!(
    "netmatrix aggregator\n\n",
    "GET  /                        web page: live matrix and findings\n",
    "GET  /api/v1/matrix           node-to-node connectivity matrix (JSON)\n",
    "GET  /api/v1/matrix/compact   the same, a few bytes per cell (JSON)\n",
    "GET  /api/v1/matrix/cell      one cell: ?from=NODE&to=NODE[&network=pod|host]\n",
    "GET  /api/v1/findings         what is broken and where (JSON)\n",
    "GET  /api/v1/facts            one node's own network, from its host agent: ?node=NODE\n",
    "POST /api/v1/reports          agent reports\n",
    "GET  /api/v1/pinglist/NODE    an agent's pinglist (its own token; ETag, ?wait=SECONDS)\n",
    "GET  /metrics                 Prometheus metrics\n",
    "GET  /healthz                 liveness\n",
);

/// `GET /api`: the endpoint list as text.
async fn api_index() -> &'static str {
    ENDPOINTS
}

// The list above must name the real paths.
const _: () = {
    assert!(const_contains(ENDPOINTS, MATRIX_PATH));
    assert!(const_contains(ENDPOINTS, MATRIX_COMPACT_PATH));
    assert!(const_contains(ENDPOINTS, MATRIX_CELL_PATH));
    assert!(const_contains(ENDPOINTS, FINDINGS_PATH));
    assert!(const_contains(ENDPOINTS, NODE_FACTS_PATH));
    assert!(const_contains(ENDPOINTS, REPORTS_PATH));
    assert!(const_contains(ENDPOINTS, PINGLIST_PATH));
};

const fn const_contains(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    let mut i = 0;
    while i + n.len() <= h.len() {
        let mut j = 0;
        while j < n.len() && h[i + j] == n[j] {
            j += 1;
        }
        if j == n.len() {
            return true;
        }
        i += 1;
    }
    false
}
