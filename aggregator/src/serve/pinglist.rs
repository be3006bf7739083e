//! `GET /api/v1/pinglist/{node}[?wait=SECONDS]`: an agent's pinglist, for
//! the agent itself only, by ETag with a long poll.
//!
//! The caller is authenticated as for reports (its token, reviewed once and
//! cached), and gets the list of its own node and network: a pod agent the
//! pod list, a host agent the host list; another node's is refused. With
//! `If-None-Match` naming the current list and `wait` above zero, the
//! answer waits until the list changes (`200`) or the wait ends (`304`),
//! at most [`MAX_PINGLIST_WAIT_SECS`], below the server's request timeout.
//! Waiting polls are bounded ([`MAX_WAITERS`]): past the bound a poll is
//! answered at once, and its agent asks again a round later.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use netmatrix_api::MAX_PINGLIST_WAIT_SECS;
use serde::Deserialize;

use super::reports::rejection_response;
use super::{AppState, api_error};
use crate::pinglist::Published;

/// Polls held open at once, at most: a fraction of the connections, so
/// that reports always find one.
pub(super) const MAX_WAITERS: usize = 1024;

/// The `reason` of a `404` when there is no list for the caller.
const NO_PINGLIST: &str = "no-pinglist";

#[derive(Debug, Deserialize)]
pub(super) struct Wait {
    /// Seconds to hold an unchanged list (0: answer at once).
    #[serde(default)]
    wait: u64,
}

pub(super) async fn get_pinglist(
    State(state): State<AppState>,
    Path(node): Path<String>,
    Query(Wait { wait }): Query<Wait>,
    headers: HeaderMap,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let sender = match state.aggregator.authenticate(authorization).await {
        Ok(sender) => sender,
        Err(rejection) => return rejection_response(&rejection),
    };
    let Some(book) = state.aggregator.pinglists() else {
        return no_pinglist(
            "this aggregator runs without Kubernetes and computes no pinglists; agents probe their SRV record",
        );
    };
    let network = match state.aggregator.fetcher_network(&sender, &node) {
        Ok(network) => network,
        Err(rejection) => return rejection_response(&rejection),
    };
    let wait = Duration::from_secs(wait.min(MAX_PINGLIST_WAIT_SECS));
    let started = tokio::time::Instant::now();
    // Past the bound, answer now: the agent asks again a round later.
    let waiting = state.long_polls.clone().try_acquire_owned().ok();
    let list = match &waiting {
        Some(_) => book.subscribe_within(&node, network, wait).await,
        None => book.subscribe(&node, network),
    };
    let Some(mut list) = list else {
        return no_pinglist(
            "no list for this agent yet: the aggregator has not seen its pod Running in the API; retry",
        );
    };
    let current = list.borrow_and_update().clone();
    if !held_by_client(&headers, &current.etag) {
        return ok(&current);
    }
    let wait = wait.saturating_sub(started.elapsed());
    if waiting.is_none() || wait.is_zero() {
        return not_modified(&current.etag);
    }
    match tokio::time::timeout(wait, list.changed()).await {
        Ok(Ok(())) => {
            let changed: Arc<Published> = list.borrow_and_update().clone();
            ok(&changed)
        }
        // The list went with its agent.
        Ok(Err(_)) => no_pinglist("this agent's list was removed: its pod is gone from the API"),
        Err(_) => not_modified(&current.etag),
    }
}

/// Whether `If-None-Match` names `etag` (quoted, weak or not, or `*`).
fn held_by_client(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
        .any(|t| t == etag || t == "*")
}

fn etag_header(etag: &str) -> HeaderValue {
    // ETags are `pl1-` and hex digits: always a valid header value.
    HeaderValue::from_str(&format!("\"{etag}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

fn ok(list: &Published) -> Response {
    (
        [
            (header::ETAG, etag_header(&list.etag)),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        list.body.clone(),
    )
        .into_response()
}

fn not_modified(etag: &str) -> Response {
    (
        StatusCode::NOT_MODIFIED,
        [(header::ETAG, etag_header(etag))],
    )
        .into_response()
}

fn no_pinglist(message: &str) -> Response {
    api_error(StatusCode::NOT_FOUND, NO_PINGLIST, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_is_read_as_clients_send_it() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(held_by_client(&with("\"pl1-ab\""), "pl1-ab"));
        assert!(held_by_client(&with("W/\"x\", \"pl1-ab\""), "pl1-ab"));
        assert!(held_by_client(&with("*"), "pl1-ab"));
        assert!(!held_by_client(&with("\"pl1-cd\""), "pl1-ab"));
        assert!(!held_by_client(&HeaderMap::new(), "pl1-ab"));
    }
}
