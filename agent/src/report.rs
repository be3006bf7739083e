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

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netmatrix_runtime::cause_chain;

use netmatrix_api::{ApiError, REPORTS_PATH, Report, reasons};
use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::{Metrics, ReportOutcome};

/// Longest pause between delivery attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Longest pause between delivery attempts, in rounds (fast rounds retry
/// sooner than [`MAX_BACKOFF`]).
pub const MAX_BACKOFF_ROUNDS: u32 = 10;

/// Where aggregator pods are (the discovery's last known view).
pub type AggregatorPods = Arc<dyn Fn() -> Vec<IpAddr> + Send + Sync>;

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
    service: reqwest::Url,
    pod_port: u16,
    aggregator_pods: AggregatorPods,
    interval: Duration,
    metrics: Arc<Metrics>,
    state: Arc<Mutex<ReportingState>>,
    backoff: Backoff,
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
        let service = service_base
            .join(REPORTS_PATH)
            .unwrap_or_else(|_| service_base.clone());
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
            backoff: Backoff::default(),
        })
    }

    /// Sends the newest report each time one is published, until the
    /// sender is dropped.
    pub async fn run(mut self, mut reports: watch::Receiver<Option<Arc<Report>>>) {
        while reports.changed().await.is_ok() {
            let report = reports.borrow_and_update().clone();
            if let Some(report) = report {
                self.deliver(&report).await;
            }
        }
    }

    /// One delivery attempt (or a skip, while backing off).
    pub async fn deliver(&mut self, report: &Report) {
        let now = Instant::now();
        if !self.backoff.ready(now) {
            tracing::debug!(
                round = report.round,
                "not reporting this round: backing off"
            );
            self.metrics.record_report(ReportOutcome::Skipped);
            return;
        }
        let mut token = self.token.read();
        let mut delivery = self.send(report, token.as_deref()).await;
        if let Delivery::Failed {
            auth_unavailable: true,
            ..
        } = delivery
            && let Some(previous) = self.token.fallback(token.as_deref()).map(str::to_owned)
        {
            tracing::info!(
                "the aggregator cannot verify the new token now; sending the previous one"
            );
            delivery = self.send(report, Some(&previous)).await;
            token = Some(previous);
        }
        if delivery.passed_authentication() {
            self.token.accepted = token;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match delivery {
            Delivery::Accepted { endpoint } => {
                if self.backoff.failures > 0 {
                    tracing::info!(%endpoint, failures = self.backoff.failures, "reporting works again");
                }
                self.backoff.succeeded();
                self.metrics.record_report(ReportOutcome::Ok);
                state.last_success_unix_ms = Some(unix_ms_now());
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
                    Some(unix_ms_now() + u64::try_from(delay.as_millis()).unwrap_or(0));
                if self.backoff.failures == 1 {
                    tracing::warn!(error = %message, "cannot deliver the report; will retry");
                } else {
                    tracing::warn!(error = %message, failures = self.backoff.failures, next_in = ?delay, "cannot deliver the report; backing off");
                }
                state.last_error = Some(message);
            }
        }
    }

    /// Service first; aggregator pods when the Service cannot be reached.
    async fn send(&self, report: &Report, token: Option<&str>) -> Delivery {
        let service_error = match self.post(self.service.clone(), report, token).await {
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
                "http://{}{REPORTS_PATH}",
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
        let mut request = self.client.post(url).json(report);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = match request.send().await {
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
            return Ok(Delivery::Accepted { endpoint });
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

pub(crate) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use netmatrix_api::{AgentIdentity, NetworkMode, PeerSource};

    fn report() -> Report {
        Report {
            agent: AgentIdentity {
                node: "n1".into(),
                pod: "agent-1".into(),
                pod_ip: "10.244.1.2".parse().unwrap(),
                network: NetworkMode::Pod,
            },
            round: 7,
            started_unix_ms: 1,
            interval_ms: 1000,
            peers: vec![],
            services: vec![],
            dns: vec![],
            peer_source: PeerSource::Api,
            mtu_probe_bytes: None,
            sampled: None,
        }
    }

    async fn aggregator(status: StatusCode, body: &'static str) -> SocketAddr {
        let app = Router::new().route(
            REPORTS_PATH,
            post(move |axum::Json(r): axum::Json<Report>| async move {
                assert_eq!(r.round, 7);
                (status, body)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
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
