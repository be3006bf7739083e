//! The routes, end to end through the router.

use super::*;
use crate::auth::{Authenticator, Caller};
use crate::config::Settings;
use crate::inventory::InventorySource;
use crate::store::tests::{inventory, report};
use axum::body::{Body, Bytes};
use axum::http::{Request, header};
use http_body_util::BodyExt;
use netmatrix_api::fixtures::{echoes, peer};
use netmatrix_api::{Cell, CompactMatrix, Findings, Matrix, ReportAccepted};
use netmatrix_api::{EchoResult, Status};
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
    r.peers.push(peer("n2", "agent-n2", "10.244.2.2", icmp));
    r
}

fn good_report() -> Vec<u8> {
    let r = report_with_peer(echoes(3, 3));
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

/// As an agent sends it: in protobuf, peers by address; anything else
/// than JSON or protobuf is answered 415, which agents read as "send JSON".
#[tokio::test]
async fn reads_protobuf_reports_and_refuses_other_types() {
    let (app, _) = app();
    let typed = |content_type: &str, body: Vec<u8>| {
        Request::builder()
            .method("POST")
            .uri(REPORTS_PATH)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::AUTHORIZATION, "Bearer token-agent-n1")
            .body(Body::from(body))
            .unwrap()
    };
    let r = report_with_peer(echoes(3, 2));
    let body = netmatrix_api::protobuf::encode_report(&r);
    let response = app
        .clone()
        .oneshot(typed(netmatrix_api::protobuf::REPORT_PROTOBUF, body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let cell = matrix(&app).await;
    let cell = cell
        .cell("n1", "n2", netmatrix_api::NetworkMode::Pod)
        .unwrap();
    assert_eq!(cell.loss, Some(0.3333), "one echo of three lost");

    let response = app
        .clone()
        .oneshot(typed("text/plain", b"hello".to_vec()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(reason(&body), "unsupported-media-type");
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
            pinglist_etag: None,
        }
    );
    let m = matrix(&app).await;
    assert_eq!(m.nodes, ["n1", "n2"]);
    assert!(m.rows[0].reporting);
    assert_eq!(m.rows[0].cells[1].status, Status::Ok);
}

/// Every peer source is accepted, `aggregator` (pinglists) among them:
/// agents that fetch pinglists must not be refused by this aggregator.
#[tokio::test]
async fn every_peer_source_is_accepted() {
    let (app, _) = app();
    for (round, source) in ["api", "last-known", "dns", "aggregator"]
        .into_iter()
        .enumerate()
    {
        let mut r = serde_json::to_value(report_with_peer(echoes(3, 3))).unwrap();
        r["round"] = (11 + round).into();
        r["peer_source"] = source.into();
        let body = serde_json::to_vec(&r).unwrap();
        let (status, answer) = send(&app, "POST", REPORTS_PATH, body).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "{source}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
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

mod pinglists {
    use super::*;
    use crate::pinglist::{Change, PinglistBook, Published};
    use axum::http::HeaderMap;
    use netmatrix_api::{NetworkMode, Pinglist};

    fn list(node: &str, network: NetworkMode, aggregators: usize) -> Pinglist {
        let mut list = netmatrix_api::fixtures::pinglist(node, network);
        list.aggregators = (0..aggregators)
            .map(|i| format!("10.244.1.{}:8080", 50 + i).parse().unwrap())
            .collect();
        list
    }

    fn publish(book: &PinglistBook, list: &Pinglist) -> String {
        let published = Arc::new(Published::of(list));
        let etag = published.etag.clone();
        book.apply(vec![Change::Publish(
            (list.node.clone(), list.network),
            published,
        )]);
        etag
    }

    /// [`app`] serving pinglists for n1's two agents.
    fn app_with_lists() -> (Router, Arc<PinglistBook>) {
        let (_, aggregator) = app();
        let book = Arc::new(PinglistBook::default());
        publish(&book, &list("n1", NetworkMode::Pod, 0));
        publish(&book, &list("n1", NetworkMode::Host, 0));
        let aggregator = Arc::try_unwrap(aggregator)
            .unwrap_or_else(|_| panic!("one owner"))
            .with_pinglists(Arc::clone(&book));
        (router(Arc::new(aggregator), MAX_BODY), book)
    }

    async fn get(
        app: &Router,
        token: Option<&str>,
        uri: &str,
        if_none_match: Option<&str>,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut request = Request::builder().uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(etag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, format!("\"{etag}\""));
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, bytes.to_vec())
    }

    fn etag_of(headers: &HeaderMap) -> String {
        headers[header::ETAG]
            .to_str()
            .unwrap()
            .trim_matches('"')
            .to_owned()
    }

    #[tokio::test]
    async fn an_agent_gets_its_own_list_by_etag() {
        let (app, _) = app_with_lists();
        let uri = "/api/v1/pinglist/n1";
        let (status, headers, body) = get(&app, Some("token-agent-n1"), uri, None).await;
        assert_eq!(status, StatusCode::OK);
        let etag = etag_of(&headers);
        assert_eq!(etag, netmatrix_api::etag(&body));
        let got: Pinglist = serde_json::from_slice(&body).unwrap();
        assert_eq!((got.node.as_str(), got.network), ("n1", NetworkMode::Pod));
        // Unchanged, asked not to wait: 304 with the ETag.
        let (status, headers, body) = get(&app, Some("token-agent-n1"), uri, Some(&etag)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert_eq!(etag_of(&headers), etag);
        assert!(body.is_empty());
        // The host agent of the same node gets the host list.
        let (status, _, body) = get(&app, Some("token-host-agent-n1"), uri, None).await;
        assert_eq!(status, StatusCode::OK);
        let got: Pinglist = serde_json::from_slice(&body).unwrap();
        assert_eq!(got.network, NetworkMode::Host);
    }

    #[tokio::test]
    async fn another_nodes_list_or_no_token_is_refused() {
        let (app, _) = app_with_lists();
        let (status, _, body) =
            get(&app, Some("token-agent-n2"), "/api/v1/pinglist/n1", None).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let (status, _, _) = get(&app, None, "/api/v1/pinglist/n1", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // n2's agent is known, but has no list (yet).
        let (status, _, body) =
            get(&app, Some("token-agent-n2"), "/api/v1/pinglist/n2", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&body).contains("no-pinglist"));
        // An aggregator that computes no lists says so.
        let (plain, _) = super::app();
        let (status, _, _) = get(&plain, Some("token-agent-n1"), "/api/v1/pinglist/n1", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_long_poll_returns_as_soon_as_its_list_changes() {
        let (app, book) = app_with_lists();
        let uri = "/api/v1/pinglist/n1?wait=20";
        let (_, headers, _) = get(&app, Some("token-agent-n1"), "/api/v1/pinglist/n1", None).await;
        let old = etag_of(&headers);
        let poll = tokio::spawn({
            let app = app.clone();
            async move { get(&app, Some("token-agent-n1"), uri, Some(&old)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!poll.is_finished(), "an unchanged list is held");
        // Another node's change does not wake it; its own does.
        publish(&book, &list("n2", NetworkMode::Pod, 1));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!poll.is_finished());
        let new = publish(&book, &list("n1", NetworkMode::Pod, 1));
        let (status, headers, body) = tokio::time::timeout(std::time::Duration::from_secs(5), poll)
            .await
            .expect("answered at the change")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(etag_of(&headers), new);
        let got: Pinglist = serde_json::from_slice(&body).unwrap();
        assert_eq!(got.aggregators.len(), 1);
    }

    /// The answer to a report names the sender's current list, so an agent
    /// that holds another fetches it without a poll held open.
    #[tokio::test]
    async fn a_report_answer_names_the_current_pinglist() {
        let (app, book) = app_with_lists();
        let etag = publish(&book, &list("n1", NetworkMode::Pod, 3));
        let (status, body) = send(&app, "POST", REPORTS_PATH, good_report()).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let accepted: ReportAccepted = serde_json::from_slice(&body).unwrap();
        assert_eq!(accepted.pinglist_etag.as_deref(), Some(etag.as_str()));
    }

    #[tokio::test]
    async fn a_poll_that_comes_before_its_list_gets_it_once_built() {
        let (app, book) = app_with_lists();
        let poll = tokio::spawn({
            let app = app.clone();
            async move {
                get(
                    &app,
                    Some("token-agent-n2"),
                    "/api/v1/pinglist/n2?wait=20",
                    None,
                )
                .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!poll.is_finished(), "held until n2's list exists");
        let etag = publish(&book, &list("n2", NetworkMode::Pod, 0));
        let (status, headers, _) = tokio::time::timeout(std::time::Duration::from_secs(5), poll)
            .await
            .expect("answered when the list appears")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(etag_of(&headers), etag);
    }

    /// Many open polls (a hostile client, or a cluster larger than the
    /// bound): past [`MAX_WAITERS`](super::super::pinglist::MAX_WAITERS)
    /// they are answered at once, and the held ones still end at a change.
    #[tokio::test]
    async fn waiting_polls_are_bounded() {
        let (app, book) = app_with_lists();
        let (_, headers, _) = get(&app, Some("token-agent-n1"), "/api/v1/pinglist/n1", None).await;
        let etag = etag_of(&headers);
        let uri = "/api/v1/pinglist/n1?wait=25";
        let held: Vec<_> = (0..super::super::pinglist::MAX_WAITERS)
            .map(|_| {
                let (app, etag) = (app.clone(), etag.clone());
                tokio::spawn(
                    async move { get(&app, Some("token-agent-n1"), uri, Some(&etag)).await },
                )
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            held.iter().all(|p| !p.is_finished()),
            "the first polls are held"
        );
        let started = std::time::Instant::now();
        let (status, _, _) = get(&app, Some("token-agent-n1"), uri, Some(&etag)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "answered at once"
        );
        // A report is still taken meanwhile.
        let (status, body) = send(&app, "POST", REPORTS_PATH, good_report()).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        publish(&book, &list("n1", NetworkMode::Pod, 2));
        for poll in held {
            let (status, _, _) = tokio::time::timeout(std::time::Duration::from_secs(5), poll)
                .await
                .expect("a held poll ends at the change")
                .unwrap();
            assert_eq!(status, StatusCode::OK);
        }
    }
}
