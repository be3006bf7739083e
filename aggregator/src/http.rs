//! The HTTP API (axum 0.8): reports in, matrix, findings and metrics out.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use netmatrix_api::{
    ApiError, FINDINGS_PATH, Findings, MATRIX_PATH, Matrix, REPORTS_PATH, ReportAccepted,
};

use crate::state::Aggregator;
use crate::store::Rejection;

#[derive(Clone)]
struct AppState {
    aggregator: Arc<Aggregator>,
    max_body: usize,
}

/// Every route. `max_body` bounds report bodies (`--max-body`).
pub fn router(aggregator: Arc<Aggregator>, max_body: usize) -> Router {
    let state = AppState {
        aggregator,
        max_body,
    };
    Router::new()
        .route(
            REPORTS_PATH,
            post(post_report).layer(DefaultBodyLimit::max(max_body)),
        )
        .route(MATRIX_PATH, get(get_matrix))
        .route(FINDINGS_PATH, get(get_findings))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(index))
        .fallback(not_found)
        .with_state(state)
}

async fn post_report(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let rejection = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Rejection::BodyTooLarge {
                    limit: state.max_body,
                }
            } else {
                Rejection::Malformed(rejection.body_text())
            };
            state.aggregator.rejected(&rejection);
            return rejection_response(&rejection);
        }
    };
    match state.aggregator.ingest(&body) {
        Ok(accepted) => (
            StatusCode::ACCEPTED,
            Json(ReportAccepted {
                node: accepted.node,
                round: accepted.round,
            }),
        )
            .into_response(),
        Err(rejection) => rejection_response(&rejection),
    }
}

fn rejection_response(rejection: &Rejection) -> Response {
    let status = match rejection {
        Rejection::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
        Rejection::UnknownSender { .. } => StatusCode::FORBIDDEN,
        Rejection::InventoryNotSynced => StatusCode::SERVICE_UNAVAILABLE,
        Rejection::Stale { .. } => StatusCode::CONFLICT,
    };
    api_error(status, rejection.reason(), rejection.to_string())
}

fn api_error(status: StatusCode, reason: &str, message: String) -> Response {
    let body = ApiError {
        reason: reason.to_owned(),
        message,
    };
    (status, Json(body)).into_response()
}

async fn get_matrix(State(state): State<AppState>) -> Json<Matrix> {
    Json(state.aggregator.matrix())
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

async fn index() -> &'static str {
    concat!(
        "netmatrix aggregator\n\n",
        "GET  /api/v1/matrix    node-to-node connectivity matrix (JSON)\n",
        "GET  /api/v1/findings  what is broken and where (JSON)\n",
        "POST /api/v1/reports   agent reports\n",
        "GET  /metrics          Prometheus metrics\n",
        "GET  /healthz          liveness\n",
    )
}

async fn not_found() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such endpoint; GET / lists them".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::InventorySource;
    use crate::state::Settings;
    use crate::store::tests::{inventory, report};
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use netmatrix_api::{EchoResult, PeerResult, Status};
    use tower::ServiceExt;

    const MAX_BODY: usize = 4096;

    fn app() -> (Router, Arc<Aggregator>) {
        let inv = InventorySource::Fixed(Arc::new(inventory(&["n1", "n2"])));
        let aggregator = Aggregator::new(inv, Settings::default())
            .unwrap()
            .with_clock(|| 1_000_000);
        let aggregator = Arc::new(aggregator);
        (router(Arc::clone(&aggregator), MAX_BODY), aggregator)
    }

    async fn send(app: &Router, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, bytes.to_vec())
    }

    fn good_report() -> Vec<u8> {
        let mut r = report(0, "n1", 10);
        r.peers.push(PeerResult {
            node: "n2".into(),
            pod: "agent-n2".into(),
            ip: "10.244.2.2".parse().unwrap(),
            icmp: EchoResult {
                sent: 3,
                received: 3,
                ..Default::default()
            },
            mtu: None,
        });
        serde_json::to_vec(&r).unwrap()
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
                round: 10
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
            (StatusCode::BAD_REQUEST, "malformed-report")
        );

        let mut huge = good_report();
        huge.extend(std::iter::repeat_n(b' ', MAX_BODY));
        let (status, body) = send(&app, "POST", REPORTS_PATH, huge).await;
        assert_eq!(
            (status, reason(&body).as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large")
        );

        let mut impostor = report(0, "n2", 20);
        impostor.agent.pod = "agent-n1".into();
        let (status, body) = send(
            &app,
            "POST",
            REPORTS_PATH,
            serde_json::to_vec(&impostor).unwrap(),
        )
        .await;
        assert_eq!(
            (status, reason(&body).as_str()),
            (StatusCode::FORBIDDEN, "unknown-sender")
        );

        let old = serde_json::to_vec(&report(0, "n1", 5)).unwrap();
        let (status, body) = send(&app, "POST", REPORTS_PATH, old).await;
        assert_eq!(
            (status, reason(&body).as_str()),
            (StatusCode::CONFLICT, "stale-report")
        );

        assert_eq!(matrix(&app).await, before);

        let text = aggregator.metrics().encode().unwrap();
        for reason in [
            "malformed-report",
            "body-too-large",
            "unknown-sender",
            "stale-report",
        ] {
            let line = format!("netmatrix_reports_rejected_total{{reason=\"{reason}\"}} 1");
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        assert!(text.contains("netmatrix_reports_total 1"));
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
        let (status, body) = send(&app, "GET", "/", vec![]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(String::from_utf8(body).unwrap().contains(MATRIX_PATH));
        let (status, body) = send(&app, "GET", "/nope", vec![]).await;
        assert_eq!(
            (status, reason(&body).as_str()),
            (StatusCode::NOT_FOUND, "not-found")
        );
    }
}
