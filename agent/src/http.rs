//! The agent's own HTTP servers: `/metrics`, `/healthz` and `/undelivered`
//! on the pod's address ([`router`]), and `/status` besides them on loopback
//! ([`status_router`]).
//!
//! `/status` is the operator's view when the node is cut off from the
//! aggregator: `kubectl port-forward pod/<agent> 9092` reaches 127.0.0.1 inside
//! the pod, where the last round's report and the delivery state are
//! served.
//!
//! `/undelivered` is for the node's host-network agent: when this agent
//! cannot reach the aggregator (its node's pod network is cut, the commonest
//! CNI failure), the host agent fetches the report the aggregator did not
//! get over the node-local path (node to local pod needs no forwarding) and
//! relays it under its own token. It holds what `/metrics` already shows;
//! nobody but that node's host agent can make the aggregator take it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use netmatrix_api::{AGENT_UNDELIVERED_PATH, AgentIdentity, Report};
use netmatrix_runtime::now_unix_ms;
use serde::Serialize;

use crate::metrics::Metrics;
use crate::report::{ReportingState, Undelivered};

/// What the round loop and the reporter publish for the HTTP server.
pub struct StatusBoard {
    agent: AgentIdentity,
    last_report: RwLock<Option<Arc<Report>>>,
    /// Shared with the [`Reporter`](crate::report::Reporter).
    pub reporting: Arc<Mutex<ReportingState>>,
    /// Shared with the [`Reporter`](crate::report::Reporter).
    pub undelivered: Undelivered,
    heartbeat_unix_ms: AtomicU64,
    /// `/healthz` fails when the loop has not ticked for this long.
    stale_after: Duration,
}

impl StatusBoard {
    pub fn new(agent: AgentIdentity, interval: Duration) -> Self {
        Self {
            agent,
            last_report: RwLock::new(None),
            reporting: Arc::new(Mutex::new(ReportingState::default())),
            undelivered: Undelivered::default(),
            heartbeat_unix_ms: AtomicU64::new(now_unix_ms()),
            // A round can take up to about one interval; allow a few, plus
            // slack for a stalled-but-recovering runtime.
            stale_after: interval * 3 + Duration::from_secs(10),
        }
    }

    /// Called by the round loop at every tick.
    pub fn heartbeat(&self) {
        self.heartbeat_unix_ms
            .store(now_unix_ms(), Ordering::Release);
    }

    pub fn set_report(&self, report: Arc<Report>) {
        if let Ok(mut last) = self.last_report.write() {
            *last = Some(report);
        }
    }

    fn alive(&self) -> bool {
        let age = now_unix_ms().saturating_sub(self.heartbeat_unix_ms.load(Ordering::Acquire));
        u128::from(age) <= self.stale_after.as_millis()
    }
}

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusBoard>,
}

/// `GET /status` body.
#[derive(Serialize)]
struct StatusBody<'a> {
    agent: &'a AgentIdentity,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_round: Option<&'a Report>,
    reporting: ReportingState,
}

/// What the pod's address serves: `/metrics`, `/healthz`, `/undelivered`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route(AGENT_UNDELIVERED_PATH, get(undelivered))
        .with_state(state)
}

/// What loopback serves: `/status` as well.
pub fn status_router(state: AppState) -> Router {
    Router::new()
        .route("/status", get(status))
        .with_state(state.clone())
        .merge(router(state))
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.status.alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the probing loop has stalled\n",
        )
            .into_response()
    }
}

async fn undelivered(State(state): State<AppState>) -> Response {
    match state.status.undelivered.get() {
        Some(report) => axum::Json(&*report).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn status(State(state): State<AppState>) -> Response {
    let board = &state.status;
    let last_round = board.last_report.read().ok().and_then(|r| r.clone());
    let body = StatusBody {
        agent: &board.agent,
        last_round: last_round.as_deref(),
        reporting: board
            .reporting
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default(),
    };
    axum::Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::PeerSource;

    fn identity() -> AgentIdentity {
        netmatrix_api::fixtures::identity("n1", "agent-1", "10.244.1.2")
    }

    #[tokio::test]
    async fn endpoints_answer_over_loopback() {
        let status = Arc::new(StatusBoard::new(identity(), Duration::from_secs(5)));
        status.set_report(Arc::new(Report {
            round: 4,
            peer_source: PeerSource::LastKnown,
            ..netmatrix_api::fixtures::report(identity())
        }));
        let state = AppState {
            metrics: Arc::new(Metrics::new().unwrap()),
            status,
        };
        let serve = |app: Router| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            addr
        };
        let public = serve(router(state.clone())).await;
        let addr = serve(status_router(state)).await;

        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();
        let r = get("/healthz").await.unwrap();
        assert_eq!(r.status(), 200);
        let r = get("/metrics").await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("netmatrix_agent_rounds_total")
        );
        let body: serde_json::Value = get("/status").await.unwrap().json().await.unwrap();
        assert_eq!(body["last_round"]["round"], 4);
        assert_eq!(body["last_round"]["peer_source"], "last-known");
        assert_eq!(body["agent"]["pod"], "agent-1");
        assert_eq!(body["reporting"]["enabled"], false);

        // The pod's address serves metrics and health, not the full report.
        let on_pod_ip = |path: &str| client.get(format!("http://{public}{path}")).send();
        assert_eq!(on_pod_ip("/metrics").await.unwrap().status(), 200);
        assert_eq!(on_pod_ip("/healthz").await.unwrap().status(), 200);
        assert_eq!(on_pod_ip("/status").await.unwrap().status(), 404);
        // What the node's host agent relays: nothing while reports go through.
        assert_eq!(on_pod_ip("/undelivered").await.unwrap().status(), 204);
    }

    #[test]
    fn healthz_fails_when_the_loop_stalls() {
        let board = StatusBoard::new(identity(), Duration::from_secs(1));
        assert!(board.alive());
        board.heartbeat_unix_ms.store(0, Ordering::Release);
        assert!(!board.alive());
    }
}
