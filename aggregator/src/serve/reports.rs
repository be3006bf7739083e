//! `POST /api/v1/reports` and `/api/v1/relayed-reports`: the token first,
//! then the body (bounded in size and time), then the report.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use netmatrix_api::{ReportAccepted, reasons};

use super::{AppState, api_error};
use crate::auth::AuthError;
use crate::store::{Rejection, ReportEncoding};

/// The body limit layer answers a plain-text 413 before any handler runs:
/// count it, and answer in the API's words.
pub(super) async fn explain_too_large(
    State(state): State<AppState>,
    response: Response,
) -> Response {
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
pub(super) async fn post_report(State(state): State<AppState>, request: Request) -> Response {
    intake(&state, request, false).await
}

/// `POST /api/v1/relayed-reports`: as [`post_report`], for a pod agent's
/// report carried by its node's host agent (whose token this is).
pub(super) async fn post_relayed_report(
    State(state): State<AppState>,
    request: Request,
) -> Response {
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
        Err(rejection) => return refuse_unread(body, &rejection).await,
    };
    // Read from the headers, before the body is given any budget.
    let encoding = match ReportEncoding::of_content_type(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
    ) {
        Ok(encoding) => encoding,
        Err(rejection) => {
            state.aggregator.rejected(&rejection);
            return refuse_unread(body, &rejection).await;
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
    let outcome = state
        .aggregator
        .ingest_encoded(&body, encoding, &sender, relayed);
    match outcome {
        Ok(accepted) => {
            // The sender's own list (a relayed report's sender is another
            // agent, the host agent: nothing to tell it here).
            let pinglist_etag = (!relayed)
                .then(|| state.aggregator.pinglists())
                .flatten()
                .and_then(|book| book.etag(&accepted.node, accepted.network));
            (
                StatusCode::ACCEPTED,
                Json(ReportAccepted {
                    node: accepted.node,
                    round: accepted.round,
                    want_facts: accepted.want_facts,
                    pinglist_etag,
                }),
            )
                .into_response()
        }
        Err(rejection) => rejection_response(&rejection),
    }
}

/// Answers `rejection` after reading the body and throwing it away
/// (bounded by the body layers): closing a connection with unread data
/// resets it, and the client would never see why it was refused.
async fn refuse_unread(body: Body, rejection: &Rejection) -> Response {
    let mut discarded = body.into_data_stream();
    while let Some(Ok(_)) = discarded.next().await {}
    rejection_response(rejection)
}

pub(super) fn rejection_response(rejection: &Rejection) -> Response {
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
        Rejection::UnsupportedType(_) | Rejection::NamesNeeded => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
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
