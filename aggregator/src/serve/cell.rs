//! `GET /api/v1/matrix/cell`: one full cell of the matrix.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use netmatrix_api::{Cell, NetworkMode};

use super::{AppState, api_error};

#[derive(serde::Deserialize)]
pub(super) struct CellQuery {
    from: String,
    to: String,
    #[serde(default)]
    network: NetworkMode,
}

pub(super) async fn get_matrix_cell(
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
