//! Delivering reports to the aggregator.
//!
//! The report goes to the aggregator Service first. When that cannot be
//! reached (connect failure or timeout) it goes straight to an aggregator pod
//! found by the watch: a node whose ClusterIP path is broken must still be
//! able to report that fact. A 4xx answer is final for that report (the
//! aggregator said why, in an [`ApiError`]); connection failures and 5xx back
//! off exponentially, capped at [`MAX_BACKOFF`] or [`MAX_BACKOFF_ROUNDS`]
//! rounds, by skipping sends — probing goes on every round regardless. The
//! cap is short because a healed node must be heard from again soon: the
//! aggregator excuses its silence only for its node grace (2 min).
//!
//! Delivery runs in its own task and always sends the newest report, so a
//! slow or dead aggregator never delays a probing round.
//!
//! Every report carries the agent's projected ServiceAccount token
//! ([`TokenFile`]), read again before each send because the kubelet rotates
//! it. When the aggregator cannot verify a new token (the API server is
//! down: `503 auth-unavailable`), the report is sent once more with the
//! last token it accepted, which stays valid until it expires: a control
//! plane outage is exactly when the rows must keep coming.
//!
//! A report the aggregator did not take is kept as [`Undelivered`] and
//! served on the pod address. A host-network agent ([`Relay`]) fetches its
//! own node's pod agent's undelivered report after each of its own
//! deliveries and sends it to [`RELAYED_REPORTS_PATH`] under its own token:
//! when a node's pods cannot send anything off the node, its pod agent's
//! row still arrives, and the aggregator names the node's pod network
//! rather than a missing agent.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use netmatrix_runtime::{cause_chain, now_unix_ms};

use netmatrix_api::{
    AGENT_UNDELIVERED_PATH, ApiError, RELAYED_REPORTS_PATH, REPORTS_PATH, Report, protobuf, reasons,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::ReportEncoding;
use crate::metrics::{Metrics, ReportOutcome};

/// Longest pause between delivery attempts.
pub const MAX_BACKOFF: Duration = Duration::from_millis(netmatrix_api::REPORT_BACKOFF_MAX_MS);
/// Longest pause between delivery attempts, in rounds (fast rounds retry
/// sooner than [`MAX_BACKOFF`]).
pub const MAX_BACKOFF_ROUNDS: u32 = netmatrix_api::REPORT_BACKOFF_MAX_ROUNDS;

/// Where aggregator pods are (the discovery's last known view).
pub type AggregatorPods = Arc<dyn Fn() -> Vec<IpAddr> + Send + Sync>;

/// Where this node's pod-network agent is (the discovery's last known view).
pub type LocalAgent = Arc<dyn Fn() -> Option<IpAddr> + Send + Sync>;

/// Largest undelivered report a relay fetches: the aggregator's default
/// `--max-body`.
const MAX_RELAYED_BYTES: usize = 32 << 20;
/// How long a relay may wait for the local pod agent (no network between).
const RELAY_FETCH_TIMEOUT: Duration = Duration::from_secs(1);

/// The newest report the aggregator has not taken (the send failed, or was
/// skipped while backing off); served on [`AGENT_UNDELIVERED_PATH`].
#[derive(Debug, Clone, Default)]
pub struct Undelivered(Arc<RwLock<Option<Arc<Report>>>>);

impl Undelivered {
    pub fn get(&self) -> Option<Arc<Report>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, report: Option<Arc<Report>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = report;
    }
}

/// A host agent's relay of its node's pod agent's undelivered reports.
pub struct Relay {
    local_agent: LocalAgent,
    /// The pod agents' HTTP port.
    port: u16,
    /// The last relayed (pod, round), not sent twice.
    last: Option<(String, u64)>,
    /// Whether the last attempt found something to relay (logs changes).
    relaying: bool,
    unreachable_logged: bool,
}

impl Relay {
    pub fn new(local_agent: LocalAgent, port: u16) -> Self {
        Relay {
            local_agent,
            port,
            last: None,
            relaying: false,
            unreachable_logged: false,
        }
    }
}

/// Delivery state, shown on `/status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReportingState {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_unix_ms: Option<u64>,
    /// Where the last accepted report went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_endpoint: Option<String>,
    pub consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Sends are skipped until this time (backoff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_until_unix_ms: Option<u64>,
}

/// What happened to one report.
#[derive(Debug, Clone, PartialEq)]
enum Delivery {
    Accepted {
        endpoint: String,
        /// The aggregator wants the node facts with the next report.
        want_facts: bool,
        /// The ETag of this agent's current pinglist, when it serves one.
        pinglist_etag: Option<String>,
    },
    Rejected {
        endpoint: String,
        error: ApiError,
    },
    Failed {
        message: String,
        /// The aggregator could not verify the token just now.
        auth_unavailable: bool,
    },
}

impl Delivery {
    fn failed(message: String) -> Self {
        Delivery::Failed {
            message,
            auth_unavailable: false,
        }
    }

    /// Whether the aggregator took the token: the report was accepted, or
    /// refused for what it said (invalid, stale), not for who sent it.
    fn passed_authentication(&self) -> bool {
        match self {
            Delivery::Accepted { .. } => true,
            Delivery::Rejected { error, .. } => {
                error.reason == reasons::INVALID || error.reason == reasons::STALE
            }
            Delivery::Failed { .. } => false,
        }
    }
}

/// Exponential backoff counted in failures.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    next_attempt: Option<Instant>,
}

impl Backoff {
    fn ready(&self, now: Instant) -> bool {
        self.next_attempt.is_none_or(|t| now >= t)
    }

    /// After the n-th consecutive failure, wait about `interval * 2^(n-1)`
    /// (at most [`MAX_BACKOFF`], or [`MAX_BACKOFF_ROUNDS`] intervals) minus half an interval, so that the first
    /// failure is retried at the next round, the second skips one round, and
    /// so on.
    fn failed(&mut self, now: Instant, interval: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let factor = 1u32 << self.failures.saturating_sub(1).min(16);
        let delay = interval
            .saturating_mul(factor)
            .min(MAX_BACKOFF)
            .min(interval.saturating_mul(MAX_BACKOFF_ROUNDS))
            .saturating_sub(interval / 2);
        self.next_attempt = Some(now + delay);
        delay
    }

    fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// The agent's token file, and the last token the aggregator accepted.
#[derive(Debug)]
pub struct TokenFile {
    path: Option<PathBuf>,
    accepted: Option<String>,
    missing_logged: bool,
}

impl TokenFile {
    /// `None`: send no token (an aggregator run with `--no-kubernetes`).
    pub fn new(path: Option<PathBuf>) -> Self {
        TokenFile {
            path,
            accepted: None,
            missing_logged: false,
        }
    }

    /// The token as the kubelet last wrote it (`None`: none to send).
    pub fn current(&mut self) -> Option<String> {
        self.read()
    }

    /// The token as the kubelet last wrote it.
    fn read(&mut self) -> Option<String> {
        let path = self.path.as_ref()?;
        match std::fs::read_to_string(path) {
            Ok(token) if !token.trim().is_empty() => {
                self.missing_logged = false;
                Some(token.trim().to_owned())
            }
            Ok(_) | Err(_) => {
                if !self.missing_logged {
                    tracing::warn!(
                        path = %path.display(),
                        "no token to send: the aggregator will refuse the reports unless it runs with --no-kubernetes; mount the projected ServiceAccount token (the chart does) or set --token-file"
                    );
                    self.missing_logged = true;
                }
                None
            }
        }
    }

    /// The last accepted token, when it differs from `current`.
    fn fallback(&self, current: Option<&str>) -> Option<&str> {
        self.accepted.as_deref().filter(|a| Some(*a) != current)
    }
}

pub struct Reporter {
    client: reqwest::Client,
    token: TokenFile,
    /// The aggregator Service's base URL.
    service: reqwest::Url,
    pod_port: u16,
    aggregator_pods: AggregatorPods,
    interval: Duration,
    metrics: Arc<Metrics>,
    state: Arc<Mutex<ReportingState>>,
    undelivered: Undelivered,
    relay: Option<Relay>,
    backoff: Backoff,
    /// The aggregator asked for the node facts in its last answer.
    facts_wanted: bool,
    /// The pinglist this agent probes, told when a report's answer names
    /// another one.
    pinglist: Option<Arc<crate::discovery::pinglist::PinglistSource>>,
    /// Protobuf until an aggregator answers 415 (an older one): then JSON
    /// for good.
    protobuf: AtomicBool,
}

impl Reporter {
    /// `service_base` is the aggregator Service URL (`http://host:port`).
    pub fn new(
        service_base: &reqwest::Url,
        token: TokenFile,
        pod_port: u16,
        aggregator_pods: AggregatorPods,
        interval: Duration,
        metrics: Arc<Metrics>,
        state: Arc<Mutex<ReportingState>>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // In-cluster traffic: an HTTP_PROXY meant for the outside world
            // must not capture it.
            .no_proxy()
            // One short connection per report: the aggregator serves
            // thousands of agents and closes idle connections anyway.
            .pool_max_idle_per_host(0)
            .connect_timeout(
                (interval / 4).clamp(Duration::from_millis(200), Duration::from_secs(2)),
            )
            .timeout(interval.clamp(Duration::from_millis(500), Duration::from_secs(5)))
            .user_agent(concat!("netmatrix-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let service = service_base.clone();
        if let Ok(mut s) = state.lock() {
            s.enabled = true;
        }
        Ok(Self {
            client,
            token,
            service,
            pod_port,
            aggregator_pods,
            interval,
            metrics,
            state,
            undelivered: Undelivered::default(),
            relay: None,
            backoff: Backoff::default(),
            facts_wanted: false,
            pinglist: None,
            protobuf: AtomicBool::new(true),
        })
    }

    /// Encodes reports as `encoding` (protobuf by default).
    pub fn with_encoding(self, encoding: ReportEncoding) -> Self {
        self.protobuf
            .store(encoding == ReportEncoding::Protobuf, Ordering::Relaxed);
        self
    }

    /// Keeps undelivered reports in `undelivered` (served for the host agent).
    pub fn with_undelivered(mut self, undelivered: Undelivered) -> Self {
        self.undelivered = undelivered;
        self
    }

    /// Relays the local pod agent's undelivered reports (host agents).
    /// Tells `source` the ETag each report's answer names.
    pub fn with_pinglist(
        mut self,
        source: Arc<crate::discovery::pinglist::PinglistSource>,
    ) -> Self {
        self.pinglist = Some(source);
        self
    }

    pub fn with_relay(mut self, relay: Relay) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Sends the newest report each time one is published, until the
    /// sender is dropped.
    pub async fn run(mut self, mut reports: watch::Receiver<Option<Arc<Report>>>) {
        while reports.changed().await.is_ok() {
            let report = reports.borrow_and_update().clone();
            if let Some(report) = report {
                self.deliver(&report).await;
                // Not while the aggregator refuses our own connections.
                if self.backoff.failures == 0 {
                    self.relay().await;
                }
            }
        }
    }

    /// `report` as it goes on the wire: its node facts only when the
    /// aggregator asked for them (their digest always).
    fn facts_if_wanted(&self, report: &Arc<Report>) -> Arc<Report> {
        if report.facts.is_none() || self.facts_wanted {
            return report.clone();
        }
        let mut trimmed = Report::clone(report);
        trimmed.facts = None;
        Arc::new(trimmed)
    }

    /// One delivery attempt (or a skip, while backing off).
    pub async fn deliver(&mut self, report: &Arc<Report>) {
        let now = Instant::now();
        if !self.backoff.ready(now) {
            tracing::debug!(
                round = report.round,
                "not reporting this round: backing off"
            );
            self.metrics.record_report(ReportOutcome::Skipped);
            self.undelivered.set(Some(report.clone()));
            return;
        }
        let sent = self.facts_if_wanted(report);
        let delivery = self.send_with_token(REPORTS_PATH, &sent).await;
        let taken = !matches!(delivery, Delivery::Failed { .. });
        if let Delivery::Accepted {
            want_facts,
            pinglist_etag,
            ..
        } = &delivery
        {
            self.facts_wanted = *want_facts;
            if let (Some(source), Some(etag)) = (&self.pinglist, pinglist_etag) {
                source.current_is(etag);
            }
        }
        self.undelivered.set((!taken).then(|| report.clone()));
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match delivery {
            Delivery::Accepted { endpoint, .. } => {
                if self.backoff.failures > 0 {
                    tracing::info!(%endpoint, failures = self.backoff.failures, "reporting works again");
                }
                self.backoff.succeeded();
                self.metrics.record_report(ReportOutcome::Ok);
                state.last_success_unix_ms = Some(now_unix_ms());
                state.last_endpoint = Some(endpoint);
                state.consecutive_failures = 0;
                state.last_error = None;
                state.backoff_until_unix_ms = None;
            }
            Delivery::Rejected { endpoint, error } => {
                // The aggregator is up and told us why; retrying the same
                // report would get the same answer. No backoff either: the
                // next round's report may well be accepted.
                tracing::warn!(%endpoint, reason = %error.reason, message = %error.message, round = report.round, "aggregator rejected the report");
                self.metrics.record_report(ReportOutcome::Rejected);
                state.last_error = Some(format!("rejected ({}): {}", error.reason, error.message));
            }
            Delivery::Failed { message, .. } => {
                let delay = self.backoff.failed(now, self.interval);
                self.metrics.record_report(ReportOutcome::Error);
                state.consecutive_failures = self.backoff.failures;
                state.backoff_until_unix_ms =
                    Some(now_unix_ms() + u64::try_from(delay.as_millis()).unwrap_or(0));
                if self.backoff.failures == 1 {
                    tracing::warn!(error = %message, "cannot deliver the report; will retry");
                } else {
                    tracing::warn!(error = %message, failures = self.backoff.failures, next_in = ?delay, "cannot deliver the report; backing off");
                }
                state.last_error = Some(message);
            }
        }
    }

    /// Sends with the current token, and once more with the last one that
    /// passed authentication when the aggregator cannot verify the new one.
    async fn send_with_token(&mut self, path: &str, report: &Report) -> Delivery {
        let mut token = self.token.read();
        let mut delivery = self.send(path, report, token.as_deref()).await;
        if let Delivery::Failed {
            auth_unavailable: true,
            ..
        } = delivery
            && let Some(previous) = self.token.fallback(token.as_deref()).map(str::to_owned)
        {
            tracing::info!(
                "the aggregator cannot verify the new token now; sending the previous one"
            );
            delivery = self.send(path, report, Some(&previous)).await;
            token = Some(previous);
        }
        if delivery.passed_authentication() {
            self.token.accepted = token;
        }
        delivery
    }

    /// Host agents: fetches the local pod agent's undelivered report and
    /// relays it, once per round of that agent. Failures are logged once
    /// until the next success; the next round tries again.
    async fn relay(&mut self) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        let Some(ip) = (relay.local_agent)() else {
            return;
        };
        let url = format!(
            "http://{}{AGENT_UNDELIVERED_PATH}",
            SocketAddr::new(ip, relay.port)
        );
        let report = match fetch_undelivered(&self.client, &url).await {
            Ok(Some(report)) => report,
            Ok(None) => {
                if relay.relaying {
                    tracing::info!(%ip, "the node's pod agent reports by itself again; relaying stops");
                }
                relay.relaying = false;
                relay.unreachable_logged = false;
                return;
            }
            Err(error) => {
                self.metrics.record_relay(None);
                if !relay.unreachable_logged {
                    tracing::warn!(%url, %error, "cannot ask the node's pod agent for its undelivered report (is the node's pod bridge down?)");
                    relay.unreachable_logged = true;
                }
                return;
            }
        };
        relay.unreachable_logged = false;
        let key = (report.agent.pod.clone(), report.round);
        if relay.last.as_ref() == Some(&key) {
            return;
        }
        if !relay.relaying {
            tracing::warn!(pod = %report.agent.pod, round = report.round, "the node's pod agent cannot deliver its reports; relaying them");
        }
        relay.relaying = true;
        relay.last = Some(key);
        let delivery = self.send_with_token(RELAYED_REPORTS_PATH, &report).await;
        let outcome = match &delivery {
            Delivery::Accepted { .. } => ReportOutcome::Ok,
            Delivery::Rejected { endpoint, error } => {
                tracing::warn!(%endpoint, reason = %error.reason, message = %error.message, "aggregator refused the relayed report");
                ReportOutcome::Rejected
            }
            Delivery::Failed { message, .. } => {
                tracing::debug!(error = %message, "cannot deliver the relayed report");
                ReportOutcome::Error
            }
        };
        self.metrics.record_relay(Some(outcome));
    }

    /// One POST of `report`, encoded as the aggregator reads it.
    async fn post_once(
        &self,
        url: reqwest::Url,
        report: &Report,
        token: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut request = if self.protobuf.load(Ordering::Relaxed) {
            self.client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, protobuf::REPORT_PROTOBUF)
                .body(protobuf::encode_report(report))
        } else {
            self.client.post(url).json(report)
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await
    }

    /// Service first; aggregator pods when the Service cannot be reached.
    async fn send(&self, path: &str, report: &Report, token: Option<&str>) -> Delivery {
        let service = self
            .service
            .join(path)
            .unwrap_or_else(|_| self.service.clone());
        let service_error = match self.post(service, report, token).await {
            Ok(delivery) => return delivery,
            Err(e) => e,
        };
        let pods = (self.aggregator_pods)();
        if pods.is_empty() {
            return Delivery::failed(format!(
                "{service_error}; no aggregator pod known for direct delivery"
            ));
        }
        let mut errors = vec![service_error];
        // Start at a different pod each time so agents spread their load.
        let start = rand::random_range(0..pods.len());
        for ip in pods.iter().cycle().skip(start).take(pods.len()) {
            let Ok(url) = reqwest::Url::parse(&format!(
                "http://{}{path}",
                SocketAddr::new(*ip, self.pod_port)
            )) else {
                continue;
            };
            match self.post(url, report, token).await {
                Ok(delivery) => {
                    tracing::debug!(aggregator = %ip, "report delivered directly to an aggregator pod");
                    return delivery;
                }
                Err(e) => errors.push(e),
            }
        }
        Delivery::failed(errors.join("; "))
    }

    /// `Err` only when the endpoint could not be reached (try the next one).
    async fn post(
        &self,
        url: reqwest::Url,
        report: &Report,
        token: Option<&str>,
    ) -> Result<Delivery, String> {
        let endpoint = url.to_string();
        let mut response = self.post_once(url.clone(), report, token).await;
        if let Ok(r) = &response
            && r.status() == reqwest::StatusCode::UNSUPPORTED_MEDIA_TYPE
            && self.protobuf.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(%endpoint, "the aggregator does not read protobuf reports (an older version?); sending JSON from now on");
            response = self.post_once(url, report, token).await;
        }
        let response = match response {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_timeout() => {
                // reqwest's top-level message hides the cause ("error sending
                // request"); the operator needs "connection refused".
                return Err(format!("POST {endpoint}: {}", cause_chain(&e)));
            }
            Err(e) => {
                return Ok(Delivery::failed(format!(
                    "POST {endpoint}: {}",
                    cause_chain(&e)
                )));
            }
        };
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            let accepted = serde_json::from_slice::<netmatrix_api::ReportAccepted>(&body).ok();
            return Ok(Delivery::Accepted {
                endpoint,
                want_facts: accepted.as_ref().is_some_and(|a| a.want_facts),
                pinglist_etag: accepted.and_then(|a| a.pinglist_etag),
            });
        }
        let error = serde_json::from_slice::<ApiError>(&body).unwrap_or_else(|_| ApiError {
            reason: format!("http-{}", status.as_u16()),
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
        });
        if status.is_client_error() {
            Ok(Delivery::Rejected { endpoint, error })
        } else {
            Ok(Delivery::Failed {
                auth_unavailable: error.reason == reasons::AUTH_UNAVAILABLE,
                message: format!(
                    "POST {endpoint}: HTTP {status} ({}): {}",
                    error.reason, error.message
                ),
            })
        }
    }
}

/// `GET` the local pod agent's undelivered report: `None` when it has none
/// (204), an error when it cannot be asked or answers nonsense.
async fn fetch_undelivered(client: &reqwest::Client, url: &str) -> Result<Option<Report>, String> {
    let mut response = client
        .get(url)
        .timeout(RELAY_FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| cause_chain(&e))?;
    if response.status() == reqwest::StatusCode::NO_CONTENT {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| cause_chain(&e))? {
        if body.len() + chunk.len() > MAX_RELAYED_BYTES {
            return Err(format!("report larger than {MAX_RELAYED_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| format!("not a report: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use netmatrix_api::PeerSource;

    fn report() -> Arc<Report> {
        Arc::new(Report {
            round: 7,
            interval_ms: 1000,
            peer_source: PeerSource::Api,
            ..netmatrix_api::fixtures::report(netmatrix_api::fixtures::identity(
                "n1",
                "agent-1",
                "10.244.1.2",
            ))
        })
    }

    async fn aggregator(status: StatusCode, answer: &'static str) -> SocketAddr {
        let app = Router::new().route(
            REPORTS_PATH,
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let r = read_report(&headers, &body);
                    assert_eq!(r.round, 7);
                    (status, answer)
                },
            ),
        );
        serve(app).await
    }

    /// Serves `app` on a loopback port of its own.
    async fn serve(app: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// A report as the aggregator reads it, in either encoding.
    fn read_report(headers: &axum::http::HeaderMap, body: &[u8]) -> Report {
        let content_type = headers.get(reqwest::header::CONTENT_TYPE).unwrap();
        if content_type == protobuf::REPORT_PROTOBUF {
            protobuf::decode_report(body, 100).unwrap()
        } else {
            assert_eq!(content_type, "application/json");
            serde_json::from_slice(body).unwrap()
        }
    }

    /// Agents send protobuf; an aggregator that answers 415 (an older
    /// one) gets the same report again in JSON, and JSON from then on.
    #[tokio::test]
    async fn an_aggregator_without_protobuf_gets_json() {
        let types = Arc::new(Mutex::new(Vec::new()));
        let seen = types.clone();
        let app = Router::new().route(
            REPORTS_PATH,
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let r = read_report(&headers, &body);
                    let json = headers[reqwest::header::CONTENT_TYPE] == "application/json";
                    seen.lock().unwrap().push((json, r.round));
                    if json {
                        (StatusCode::ACCEPTED, "{}")
                    } else {
                        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}")
                    }
                },
            ),
        );
        let (mut r, state, _) = reporter(serve(app).await, vec![], 0);
        r.deliver(&report()).await;
        let mut next = (*report()).clone();
        next.round = 8;
        r.deliver(&Arc::new(next)).await;
        assert_eq!(*types.lock().unwrap(), [(false, 7), (true, 7), (true, 8)]);
        assert!(state.lock().unwrap().last_error.is_none());
    }

    async fn closed_port() -> SocketAddr {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn reporter(
        service: SocketAddr,
        pods: Vec<IpAddr>,
        pod_port: u16,
    ) -> (Reporter, Arc<Mutex<ReportingState>>, Arc<Metrics>) {
        let state = Arc::new(Mutex::new(ReportingState::default()));
        let metrics = Arc::new(Metrics::new().unwrap());
        let url = reqwest::Url::parse(&format!("http://{service}")).unwrap();
        let r = Reporter::new(
            &url,
            TokenFile::new(None),
            pod_port,
            Arc::new(move || pods.clone()),
            Duration::from_secs(1),
            metrics.clone(),
            state.clone(),
        )
        .unwrap();
        (r, state, metrics)
    }

    #[tokio::test]
    async fn accepted_report_updates_the_state() {
        let addr = aggregator(StatusCode::ACCEPTED, r#"{"node":"n1","round":7}"#).await;
        let (mut r, state, metrics) = reporter(addr, vec![], 0);
        r.deliver(&report()).await;
        let s = state.lock().unwrap().clone();
        assert!(s.last_success_unix_ms.is_some(), "{s:?}");
        assert_eq!(s.consecutive_failures, 0);
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains("reports_total{result=\"ok\"} 1")
        );
    }

    #[tokio::test]
    async fn rejection_is_logged_and_not_backed_off() {
        let addr = aggregator(
            StatusCode::FORBIDDEN,
            r#"{"reason":"unknown-sender","message":"no such pod"}"#,
        )
        .await;
        let (mut r, state, _) = reporter(addr, vec![], 0);
        r.deliver(&report()).await;
        let s = state.lock().unwrap().clone();
        assert_eq!(
            s.last_error.as_deref(),
            Some("rejected (unknown-sender): no such pod")
        );
        assert_eq!(s.consecutive_failures, 0);
        assert!(r.backoff.ready(Instant::now()));
    }

    #[tokio::test]
    async fn unreachable_service_falls_back_to_an_aggregator_pod() {
        let pod = aggregator(StatusCode::ACCEPTED, "{}").await;
        let (mut r, state, _) = reporter(closed_port().await, vec![pod.ip()], pod.port());
        r.deliver(&report()).await;
        let s = state.lock().unwrap().clone();
        assert_eq!(
            s.last_endpoint,
            Some(format!("http://{pod}{REPORTS_PATH}")),
            "{s:?}"
        );
    }

    #[tokio::test]
    async fn undelivered_reports_are_kept_for_the_relay_until_one_is_taken() {
        let (mut r, _, _) = reporter(closed_port().await, vec![], 0);
        r.deliver(&report()).await;
        assert_eq!(r.undelivered.get().map(|u| u.round), Some(7));
        // Skipped while backing off: still undelivered.
        r.deliver(&report()).await;
        assert!(r.undelivered.get().is_some());
        r.service = reqwest::Url::parse(&format!(
            "http://{}",
            aggregator(StatusCode::ACCEPTED, "{}").await
        ))
        .unwrap();
        r.backoff.succeeded();
        r.deliver(&report()).await;
        assert_eq!(r.undelivered.get(), None);
    }

    /// A host agent relays its node's pod agent's undelivered report once
    /// per round, to the relay path, and stops when there is none.
    #[tokio::test]
    async fn the_host_agent_relays_the_pod_agents_undelivered_report_once() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let relayed = Arc::new(AtomicU32::new(0));
        let count = relayed.clone();
        let app = Router::new().route(
            RELAYED_REPORTS_PATH,
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let r = read_report(&headers, &body);
                    assert_eq!(r.agent.pod, "agent-1");
                    count.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::ACCEPTED, "{}")
                },
            ),
        );
        let aggregator = serve(app).await;

        let held = Undelivered::default();
        let served = held.clone();
        let pod_agent = Router::new().route(
            AGENT_UNDELIVERED_PATH,
            axum::routing::get(move || {
                let served = served.clone();
                async move {
                    match served.get() {
                        Some(r) => axum::Json(&*r).into_response(),
                        None => StatusCode::NO_CONTENT.into_response(),
                    }
                }
            }),
        );
        let pod = serve(pod_agent).await;

        let (r, _, metrics) = reporter(aggregator, vec![], 0);
        let mut r = r.with_relay(Relay::new(Arc::new(move || Some(pod.ip())), pod.port()));
        r.relay().await;
        assert_eq!(relayed.load(Ordering::SeqCst), 0, "nothing undelivered");
        held.set(Some(report()));
        r.relay().await;
        r.relay().await;
        assert_eq!(relayed.load(Ordering::SeqCst), 1, "one round, relayed once");
        let mut next = (*report()).clone();
        next.round = 8;
        held.set(Some(Arc::new(next)));
        r.relay().await;
        assert_eq!(relayed.load(Ordering::SeqCst), 2);
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains("relays_total{result=\"ok\"} 2")
        );
        // The pod agent cannot be asked: counted, nothing sent.
        let mut r = r.with_relay(Relay::new(Arc::new(|| Some([127, 0, 0, 1].into())), 1));
        r.relay().await;
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains("relays_total{result=\"unreachable\"} 1")
        );
    }

    #[tokio::test]
    async fn repeated_failures_back_off_but_are_counted() {
        let (mut r, state, metrics) = reporter(closed_port().await, vec![], 0);
        r.deliver(&report()).await;
        let s = state.lock().unwrap().clone();
        assert_eq!(s.consecutive_failures, 1);
        let err = s.last_error.unwrap();
        assert!(err.contains("no aggregator pod known"), "{err}");
        // Half an interval later at the earliest: a send right now is skipped.
        r.deliver(&report()).await;
        let text = metrics.encode().unwrap();
        assert!(text.contains("reports_total{result=\"error\"} 1"), "{text}");
        assert!(
            text.contains("reports_total{result=\"skipped\"} 1"),
            "{text}"
        );
    }

    /// An aggregator that accepts the tokens in `accepted` and cannot
    /// verify any other (503 auth-unavailable); it records what it was sent.
    async fn verifying_aggregator(
        accepted: Arc<Mutex<Vec<String>>>,
        seen: Arc<Mutex<Vec<Option<String>>>>,
    ) -> SocketAddr {
        let app = Router::new().route(
            REPORTS_PATH,
            post(move |headers: axum::http::HeaderMap| async move {
                let token = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_owned);
                seen.lock().unwrap().push(token.clone());
                let ok = token.is_some_and(|t| accepted.lock().unwrap().contains(&t));
                if ok {
                    (StatusCode::ACCEPTED, "{}")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        r#"{"reason":"auth-unavailable","message":"retry"}"#,
                    )
                }
            }),
        );
        serve(app).await
    }

    #[tokio::test]
    async fn the_token_is_reread_and_the_last_accepted_one_covers_an_api_outage() {
        let dir = std::env::temp_dir().join(format!("netmatrix-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        let accepted = Arc::new(Mutex::new(vec!["first".to_owned()]));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = verifying_aggregator(accepted.clone(), seen.clone()).await;
        let (mut r, state, _) = reporter(addr, vec![], 0);
        r.token = TokenFile::new(Some(file.clone()));

        // No file yet: sent without a token, which this aggregator refuses.
        r.deliver(&report()).await;
        std::fs::write(&file, "first\n").unwrap();
        r.backoff.succeeded();
        r.deliver(&report()).await;
        assert!(state.lock().unwrap().last_success_unix_ms.is_some());
        // The kubelet rotates the token while the API is down: the new one
        // cannot be verified, the previous one still can.
        std::fs::write(&file, "second").unwrap();
        r.deliver(&report()).await;
        // The API is back: the new token is used on its own.
        accepted.lock().unwrap().push("second".into());
        r.deliver(&report()).await;
        let seen = seen.lock().unwrap().clone();
        let seen: Vec<Option<&str>> = seen.iter().map(Option::as_deref).collect();
        assert_eq!(
            seen,
            [
                None,
                Some("first"),
                Some("second"),
                Some("first"),
                Some("second")
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut b = Backoff::default();
        let now = Instant::now();
        let i = Duration::from_secs(5);
        assert_eq!(b.failed(now, i), Duration::from_millis(2500));
        assert_eq!(b.failed(now, i), Duration::from_millis(7500));
        assert_eq!(b.failed(now, i), Duration::from_millis(17500));
        for _ in 0..20 {
            b.failed(now, i);
        }
        // Ten 5 s rounds come before the minute.
        assert_eq!(b.failed(now, i), Duration::from_millis(47_500));
        assert!(!b.ready(now));
        let slow = Duration::from_secs(10);
        assert_eq!(b.failed(now, slow), MAX_BACKOFF - slow / 2);
        b.succeeded();
        assert!(b.ready(now));
    }

    #[test]
    fn fast_rounds_back_off_for_ten_rounds_at_most() {
        let mut b = Backoff::default();
        let now = Instant::now();
        let i = Duration::from_secs(1);
        for _ in 0..20 {
            b.failed(now, i);
        }
        assert_eq!(b.failed(now, i), Duration::from_millis(9500));
    }
}
