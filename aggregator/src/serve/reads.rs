//! The reads: the matrix (full and compact), the findings, a node's
//! network facts, the metrics.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use netmatrix_api::Findings;

use super::{AppState, api_error};
use crate::published::Form;
use crate::store::FactsLookup;

/// The latest round's matrix, encoded once per round and off the async
/// threads (at 1,000 nodes this is a million cells).
pub(super) async fn get_matrix(State(state): State<AppState>) -> Response {
    encoded_matrix(&state, Form::Full).await
}

pub(super) async fn get_matrix_compact(State(state): State<AppState>) -> Response {
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
pub(super) struct FactsQuery {
    node: String,
}

/// `GET /api/v1/facts?node=NODE`: what NODE's host agent last read of
/// its network.
pub(super) async fn get_node_facts(
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

pub(super) async fn get_findings(State(state): State<AppState>) -> Json<Findings> {
    Json(Findings::clone(&state.aggregator.findings()))
}

pub(super) async fn get_metrics(State(state): State<AppState>) -> Response {
    let metrics = state.aggregator.metrics();
    let waiting = super::pinglist::MAX_WAITERS.saturating_sub(state.long_polls.available_permits());
    metrics
        .pinglists()
        .polls_waiting
        .set(i64::try_from(waiting).unwrap_or(i64::MAX));
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
