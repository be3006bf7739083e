//! Who is posting: agents prove their identity with a Kubernetes-issued
//! token, never with the report body.
//!
//! Each agent mounts a projected ServiceAccount token (audience
//! `--token-audience`, short-lived, rotated by the kubelet) and sends it as
//! `Authorization: Bearer`. The aggregator asks the API server whether the
//! token is valid with a TokenReview (`authentication.k8s.io/v1`, as
//! kube-rbac-proxy and the kubelet's webhook authenticator do) and takes the
//! caller from the review: the ServiceAccount, the pod the token is bound to
//! (name and UID), and its node where the API says it
//! (`authentication.kubernetes.io/node-name`, Kubernetes 1.30 and later).
//! [`crate::store`] then checks that pod against the agent pods the API
//! lists and the body against the pod.
//!
//! Reviews cost the API server a little, and a flood of forged tokens must
//! neither reach it nor use up the reviews real agents need, so they are
//! bounded on our side:
//! - a verdict is cached by the token's SHA-256: an accepted token until it
//!   expires (so an API outage does not stop agents whose token was seen, and
//!   a pod deleted meanwhile is caught by the UID check against the watch), a
//!   refusal for [`NEGATIVE_TTL`]; both caches are bounded;
//! - a token is reviewed only if its claims, read without trusting them,
//!   could be an agent's: a JWT for our audience, not expired, bound to a pod
//!   whose name and UID are those of a running agent pod in the watch (UIDs
//!   are served nowhere, so a forger must first read the pods);
//! - at most [`REVIEWS_PER_POD`] reviews per pod in a burst, refilled one
//!   every [`POD_REVIEW_EVERY`] (an agent needs one per token rotation), and
//!   `--token-review-qps` in all, [`MAX_CONCURRENT_REVIEWS`] at a time, each
//!   bounded by [`REVIEW_TIMEOUT`];
//! - after a review the API could not answer, new tokens are told to retry
//!   for [`API_DOWN_PAUSE`] at once, so that agents fall back to their
//!   previous token quickly instead of waiting on a dead API.
//!
//! Over a bound the caller is told to retry (`503 auth-unavailable`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::Semaphore;

/// Longest an accepted token is trusted without asking the API again, however
/// far its expiry (tokens with a year-long `exp` exist).
pub const MAX_POSITIVE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a refused token stays refused without asking again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Refused tokens remembered (oldest forgotten first).
const NEGATIVE_ENTRIES: usize = 4096;
/// Reviews in flight at once.
pub const MAX_CONCURRENT_REVIEWS: usize = 16;
/// Longest wait for one review: shorter than an agent's wait for its report
/// to be answered, so that it hears `auth-unavailable` and falls back.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(2);
/// After the API failed a review, how long new tokens are refused at once.
pub const API_DOWN_PAUSE: Duration = Duration::from_secs(10);
/// Reviews one pod may cause in a burst...
pub const REVIEWS_PER_POD: f64 = 3.0;
/// ...refilled one per this long.
pub const POD_REVIEW_EVERY: Duration = Duration::from_secs(20);

const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// An agent as the API server vouched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub service_account: String,
    pub pod: String,
    pub pod_uid: String,
    /// Present on Kubernetes 1.30 and later; otherwise the pod's `nodeName`
    /// from the watch is used.
    pub node: Option<String>,
}

/// Who sent a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// A verified agent pod.
    Agent(Caller),
    /// `--no-kubernetes`: nobody can be verified.
    Unverified,
}

/// Why a caller is not authenticated. The `String`s are for the log only:
/// the client hears [`AuthError::client_message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("token refused: {0}")]
    Rejected(String),
    #[error("valid token, but not an agent's: {0}")]
    NotAnAgent(String),
    #[error("cannot verify the token now: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// What the client is told: short, and nothing the API said.
    pub fn client_message(&self) -> &'static str {
        match self {
            AuthError::Missing => {
                "unauthenticated: send the agent's projected ServiceAccount token as Authorization: Bearer"
            }
            AuthError::Rejected(_) => {
                "unauthenticated: the token is not valid for this aggregator (audience, expiry, or its pod is gone)"
            }
            AuthError::NotAnAgent(_) => "forbidden: the token is not an agent's",
            AuthError::Unavailable(_) => {
                "auth-unavailable: the token cannot be verified right now; retry"
            }
        }
    }
}

/// The agent pods as the Kubernetes watch knows them: who may be worth a
/// TokenReview at all.
pub trait Roster: Sync {
    /// Whether a running agent pod is named `pod` with UID `uid` (on `node`
    /// when the token names one).
    fn is_agent(&self, pod: &str, uid: &str, node: Option<&str>) -> bool;
    /// How many agent pods there are: the caches are sized after it.
    fn agents(&self) -> usize;
}

/// Verifies bearer tokens.
pub struct Authenticator {
    mode: Mode,
}

enum Mode {
    Unverified,
    Reviews(Box<Reviewer>),
    /// Tokens known in advance (the HTTP layer's unit tests; the review
    /// path is tested against the lab's API emulator).
    #[cfg(test)]
    Static(HashMap<String, Caller>),
}

/// What a token must be to belong to an agent.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// The audience agents' tokens are issued for.
    pub audience: String,
    /// Namespace of the agents' ServiceAccounts.
    pub namespace: String,
    /// ServiceAccounts whose tokens may report.
    pub service_accounts: BTreeSet<String>,
    /// TokenReviews per second at most (and twice that in a burst).
    pub reviews_per_second: u32,
}

struct Reviewer {
    client: Client,
    policy: TokenPolicy,
    cache: Mutex<Cache>,
    bucket: Mutex<TokenBucket>,
    /// Reviews left per pod UID.
    per_pod: Mutex<HashMap<String, TokenBucket>>,
    in_flight: Semaphore,
    /// Until when the API is deemed down (after a failed review).
    api_down_until: Mutex<Option<Instant>>,
}

impl Authenticator {
    /// Accepts everyone (`--no-kubernetes`).
    pub fn unverified() -> Self {
        Authenticator {
            mode: Mode::Unverified,
        }
    }

    /// Verifies tokens with TokenReviews through `client`.
    pub fn with_reviews(client: Client, policy: TokenPolicy) -> Self {
        let rate = f64::from(policy.reviews_per_second.max(1));
        Authenticator {
            mode: Mode::Reviews(Box::new(Reviewer {
                client,
                cache: Mutex::new(Cache::default()),
                bucket: Mutex::new(TokenBucket::new(rate, (2.0 * rate).max(10.0))),
                per_pod: Mutex::new(HashMap::new()),
                in_flight: Semaphore::new(MAX_CONCURRENT_REVIEWS),
                api_down_until: Mutex::new(None),
                policy,
            })),
        }
    }

    /// Accepts exactly these tokens (tests).
    #[cfg(test)]
    pub fn with_static_tokens(tokens: HashMap<String, Caller>) -> Self {
        Authenticator {
            mode: Mode::Static(tokens),
        }
    }

    /// The sender of a request whose `Authorization` header is `header`,
    /// with `roster` the agent pods the watch knows now.
    pub async fn authenticate(
        &self,
        header: Option<&[u8]>,
        now_unix_ms: u64,
        roster: &dyn Roster,
    ) -> Result<Sender, AuthError> {
        let reviewer = match &self.mode {
            Mode::Unverified => return Ok(Sender::Unverified),
            Mode::Reviews(reviewer) => reviewer,
            #[cfg(test)]
            Mode::Static(tokens) => {
                let token = bearer(header).ok_or(AuthError::Missing)?;
                return match tokens.get(token) {
                    Some(caller) => Ok(Sender::Agent(caller.clone())),
                    None => Err(AuthError::Rejected("unknown test token".into())),
                };
            }
        };
        let token = bearer(header).ok_or(AuthError::Missing)?;
        let key = token_hash(token);
        if let Some(cached) = reviewer.lock_cache().get(&key, now_unix_ms) {
            return cached.map(Sender::Agent);
        }
        // A few KiB per accepted token, a few tokens per pod as they rotate:
        // the bound follows the cluster, not the clients.
        let capacity = roster.agents().saturating_mul(4).saturating_add(1024);
        let claims = match peek_claims(token, &reviewer.policy.audience, now_unix_ms) {
            Ok(claims) => claims,
            Err(why) => {
                let refused = AuthError::Rejected(why.to_owned());
                let until = now_unix_ms + millis(NEGATIVE_TTL);
                reviewer.lock_cache().insert(
                    key,
                    Err(refused.clone()),
                    until,
                    now_unix_ms,
                    capacity,
                );
                return Err(refused);
            }
        };
        // Not cached: a pod the watch has not seen yet may be known next round.
        if !roster.is_agent(&claims.pod, &claims.pod_uid, claims.node.as_deref()) {
            return Err(AuthError::NotAnAgent(format!(
                "the token names pod {} ({}), not a running agent pod",
                truncated(&claims.pod),
                truncated(&claims.pod_uid)
            )));
        }
        let outcome = reviewer.review(token, &claims.pod_uid, capacity).await;
        if let Err(AuthError::Unavailable(_)) = outcome {
            return outcome.map(Sender::Agent);
        }
        let until = match outcome {
            Ok(_) => claims
                .expires_unix_ms
                .min(now_unix_ms + millis(MAX_POSITIVE_TTL)),
            Err(_) => now_unix_ms + millis(NEGATIVE_TTL),
        };
        reviewer
            .lock_cache()
            .insert(key, outcome.clone(), until, now_unix_ms, capacity);
        outcome.map(Sender::Agent)
    }
}

impl Reviewer {
    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the API, within the bounds: the pod's own budget, the API's
    /// health, the global rate, the reviews in flight.
    async fn review(&self, token: &str, pod_uid: &str, pods: usize) -> Result<Caller, AuthError> {
        let busy = |why: &str| AuthError::Unavailable(why.to_owned());
        let now = Instant::now();
        if self
            .api_down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| now < until)
        {
            return Err(busy("the Kubernetes API failed the last token review"));
        }
        {
            let mut per_pod = self.per_pod.lock().unwrap_or_else(PoisonError::into_inner);
            if per_pod.len() >= pods && !per_pod.contains_key(pod_uid) {
                // Pods come and go: forget the budgets rather than grow.
                per_pod.clear();
            }
            let rate = 1.0 / POD_REVIEW_EVERY.as_secs_f64();
            let bucket = per_pod
                .entry(pod_uid.to_owned())
                .or_insert_with(|| TokenBucket::new(rate, REVIEWS_PER_POD));
            if !bucket.take(now) {
                return Err(busy("too many new tokens for this pod"));
            }
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(busy("token reviews are rate limited"));
        };
        if !self
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(now)
        {
            return Err(busy("token reviews are rate limited"));
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.policy.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| "the TokenReview timed out".to_owned())
                .and_then(|created| created.map_err(|e| format!("TokenReview failed: {e}")));
        match answer {
            Ok(answer) => caller_of(&answer, &self.policy),
            Err(why) => {
                *self
                    .api_down_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) =
                    Some(Instant::now() + API_DOWN_PAUSE);
                Err(AuthError::Unavailable(why))
            }
        }
    }
}

/// The caller a review vouches for, if it is an agent of ours.
pub fn caller_of(review: &TokenReview, policy: &TokenPolicy) -> Result<Caller, AuthError> {
    let status = review
        .status
        .as_ref()
        .ok_or_else(|| AuthError::Unavailable("TokenReview without status".into()))?;
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().unwrap_or("not authenticated");
        return Err(AuthError::Rejected(why.chars().take(200).collect()));
    }
    // The API answers with the audiences the token is valid for among
    // those asked; none means it is not valid for ours.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.contains(&policy.audience) {
        return Err(AuthError::Rejected("token is not for this audience".into()));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    let service_account = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(namespace, _)| *namespace == policy.namespace)
        .map(|(_, name)| name)
        .filter(|name| policy.service_accounts.contains(*name))
        .ok_or_else(|| {
            AuthError::NotAnAgent(format!(
                "user {:?} is not one of the agents' ServiceAccounts",
                truncated(username)
            ))
        })?;
    let extra = |key: &str| {
        user.and_then(|u| u.extra.as_ref())
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let (Some(pod), Some(pod_uid)) = (extra(EXTRA_POD_NAME), extra(EXTRA_POD_UID)) else {
        return Err(AuthError::NotAnAgent(
            "the token is not bound to a pod (mount a projected serviceAccountToken)".into(),
        ));
    };
    Ok(Caller {
        service_account: service_account.to_owned(),
        pod,
        pod_uid,
        node: extra(EXTRA_NODE_NAME),
    })
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(header: Option<&[u8]>) -> Option<&str> {
    let value = std::str::from_utf8(header?).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 16 * 1024)
        .then_some(token)
}

fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// What a token says of itself, unverified.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claims {
    expires_unix_ms: u64,
    pod: String,
    pod_uid: String,
    node: Option<String>,
}

/// Reads a JWT's claims WITHOUT verifying it, to refuse tokens that cannot
/// be an agent's before bothering the API.
fn peek_claims(token: &str, audience: &str, now_unix_ms: u64) -> Result<Claims, &'static str> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        aud: Audience,
        exp: Option<u64>,
        #[serde(rename = "kubernetes.io", default)]
        kubernetes: Option<Bound>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(untagged)]
    enum Audience {
        One(String),
        Many(Vec<String>),
        #[default]
        None,
    }
    #[derive(serde::Deserialize)]
    struct Bound {
        pod: Option<Named>,
        node: Option<Named>,
    }
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
        #[serde(default)]
        uid: String,
    }
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT");
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "not a JWT")?;
    let claims: Raw = serde_json::from_slice(&json).map_err(|_| "not a JWT")?;
    let ours = match &claims.aud {
        Audience::One(a) => a == audience,
        Audience::Many(all) => all.iter().any(|a| a == audience),
        Audience::None => false,
    };
    if !ours {
        return Err("token is not for this audience");
    }
    let exp = claims.exp.ok_or("token without expiry")?;
    let expires_unix_ms = exp.saturating_mul(1000);
    if expires_unix_ms <= now_unix_ms {
        return Err("token expired");
    }
    let bound = claims.kubernetes.ok_or("token not bound to a pod")?;
    let pod = bound.pod.ok_or("token not bound to a pod")?;
    if pod.uid.is_empty() {
        return Err("token not bound to a pod");
    }
    Ok(Claims {
        expires_unix_ms,
        pod: pod.name,
        pod_uid: pod.uid,
        node: bound.node.map(|n| n.name),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// At most 80 characters, escaped, for logs.
pub fn truncated(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().nth(80).is_some() {
        out.push_str("...");
    }
    out
}

type Verdict = Result<Caller, AuthError>;

/// Verdicts by token hash: accepted tokens until they expire (bounded by the
/// caller's capacity), refusals for a short while (bounded, oldest first).
#[derive(Default)]
struct Cache {
    accepted: HashMap<[u8; 32], (Caller, u64)>,
    refused: HashMap<[u8; 32], (AuthError, u64)>,
    refused_order: VecDeque<[u8; 32]>,
}

impl Cache {
    fn get(&self, key: &[u8; 32], now: u64) -> Option<Verdict> {
        if let Some((caller, until)) = self.accepted.get(key)
            && *until > now
        {
            return Some(Ok(caller.clone()));
        }
        match self.refused.get(key) {
            Some((error, until)) if *until > now => Some(Err(error.clone())),
            _ => None,
        }
    }

    fn insert(&mut self, key: [u8; 32], verdict: Verdict, until: u64, now: u64, capacity: usize) {
        match verdict {
            Ok(caller) => {
                if self.accepted.len() >= capacity.max(1) {
                    self.accepted.retain(|_, (_, until)| *until > now);
                }
                if self.accepted.len() >= capacity.max(1) {
                    // Still full of live tokens: forget the one expiring first.
                    if let Some(first) = self
                        .accepted
                        .iter()
                        .min_by_key(|(_, (_, until))| *until)
                        .map(|(k, _)| *k)
                    {
                        self.accepted.remove(&first);
                    }
                }
                self.accepted.insert(key, (caller, until));
            }
            Err(error) => {
                while self.refused.len() >= NEGATIVE_ENTRIES {
                    match self.refused_order.pop_front() {
                        Some(old) => {
                            self.refused.remove(&old);
                        }
                        None => break,
                    }
                }
                if self.refused.insert(key, (error, until)).is_none() {
                    self.refused_order.push_back(key);
                }
            }
        }
    }
}

/// A token bucket: `rate` a second, up to `burst` at once.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn policy() -> TokenPolicy {
        TokenPolicy {
            audience: "netmatrix".into(),
            namespace: "netmatrix".into(),
            service_accounts: ["netmatrix-agent".to_owned()].into(),
            reviews_per_second: 50,
        }
    }

    fn review(username: &str, extra: &[(&str, &str)], audiences: &[&str]) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(true),
                audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
                user: Some(UserInfo {
                    username: Some(username.into()),
                    extra: Some(
                        extra
                            .iter()
                            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                            .collect(),
                    ),
                    ..Default::default()
                }),
                error: None,
            }),
            ..Default::default()
        }
    }

    const AGENT: &str = "system:serviceaccount:netmatrix:netmatrix-agent";

    #[test]
    fn the_caller_comes_from_the_review() {
        let bound = [
            (EXTRA_POD_NAME, "agent-x"),
            (EXTRA_POD_UID, "u-1"),
            (EXTRA_NODE_NAME, "node-2"),
        ];
        let caller = caller_of(&review(AGENT, &bound, &["netmatrix"]), &policy()).unwrap();
        assert_eq!(
            caller,
            Caller {
                service_account: "netmatrix-agent".into(),
                pod: "agent-x".into(),
                pod_uid: "u-1".into(),
                node: Some("node-2".into()),
            }
        );
        // Before Kubernetes 1.30: no node in the review.
        let caller = caller_of(&review(AGENT, &bound[..2], &["netmatrix"]), &policy()).unwrap();
        assert_eq!(caller.node, None);
    }

    #[test]
    fn only_bound_agent_tokens_for_our_audience_pass() {
        let bound = [(EXTRA_POD_NAME, "agent-x"), (EXTRA_POD_UID, "u-1")];
        let other_sa = "system:serviceaccount:netmatrix:default";
        let other_ns = "system:serviceaccount:kube-system:netmatrix-agent";
        for (username, extra, audiences) in [
            (other_sa, &bound[..], &["netmatrix"][..]),
            (other_ns, &bound[..], &["netmatrix"][..]),
            ("kubernetes-admin", &bound[..], &["netmatrix"][..]),
            (AGENT, &[][..], &["netmatrix"][..]),
        ] {
            let got = caller_of(&review(username, extra, audiences), &policy());
            assert!(
                matches!(got, Err(AuthError::NotAnAgent(_))),
                "{username}: {got:?}"
            );
        }
        let wrong_audience = caller_of(&review(AGENT, &bound, &[]), &policy());
        assert!(matches!(wrong_audience, Err(AuthError::Rejected(_))));
        let mut refused = review(AGENT, &bound, &["netmatrix"]);
        let status = refused.status.as_mut().unwrap();
        status.authenticated = Some(false);
        status.error = Some("token has been invalidated".into());
        assert_eq!(
            caller_of(&refused, &policy()),
            Err(AuthError::Rejected("token has been invalidated".into()))
        );
    }

    fn jwt(claims: serde_json::Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256"}"#),
            b64(claims.to_string().as_bytes()),
            b64(b"sig")
        )
    }

    fn bound() -> serde_json::Value {
        serde_json::json!({"pod": {"name": "agent-x", "uid": "u-1"}, "node": {"name": "node-2", "uid": "n"}})
    }

    #[test]
    fn tokens_that_cannot_be_ours_are_refused_without_a_review() {
        let now = 1_000_000_000;
        let good = jwt(
            serde_json::json!({"aud": ["netmatrix"], "exp": 1_000_600, "kubernetes.io": bound()}),
        );
        assert_eq!(
            peek_claims(&good, "netmatrix", now),
            Ok(Claims {
                expires_unix_ms: 1_000_600_000,
                pod: "agent-x".into(),
                pod_uid: "u-1".into(),
                node: Some("node-2".into()),
            })
        );
        let one = jwt(
            serde_json::json!({"aud": "netmatrix", "exp": 1_000_600, "kubernetes.io": bound()}),
        );
        assert!(peek_claims(&one, "netmatrix", now).is_ok());
        for (token, why) in [
            ("garbage".to_owned(), "not a JWT"),
            ("a.b.c".to_owned(), "not a JWT"),
            (
                jwt(
                    serde_json::json!({"aud": ["https://kubernetes.default.svc"], "exp": 1_000_600}),
                ),
                "token is not for this audience",
            ),
            (
                jwt(serde_json::json!({"aud": ["netmatrix"], "exp": 999_999})),
                "token expired",
            ),
            (
                jwt(serde_json::json!({"aud": ["netmatrix"]})),
                "token without expiry",
            ),
            (
                jwt(serde_json::json!({"aud": ["netmatrix"], "exp": 1_000_600})),
                "token not bound to a pod",
            ),
        ] {
            assert_eq!(peek_claims(&token, "netmatrix", now), Err(why), "{token}");
        }
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer(Some(b"Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some(b"bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(bearer(Some(b"Bearer ")), None);
        assert_eq!(bearer(None), None);
        assert_eq!(bearer(Some(&[0xff, 0xfe])), None);
    }

    fn caller(pod: &str) -> Caller {
        Caller {
            service_account: "sa".into(),
            pod: pod.into(),
            pod_uid: "u".into(),
            node: None,
        }
    }

    #[test]
    fn the_cache_is_bounded_and_expires() {
        let mut cache = Cache::default();
        for i in 0..10u8 {
            cache.insert([i; 32], Ok(caller("p")), 100 + u64::from(i), 0, 4);
        }
        assert!(cache.accepted.len() <= 4);
        assert!(cache.get(&[9; 32], 50).is_some(), "the newest is kept");
        assert!(cache.get(&[9; 32], 200).is_none(), "and expires");
        for i in 0..(NEGATIVE_ENTRIES + 10) {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.insert(key, Err(AuthError::Missing), 1000, 0, 4);
        }
        assert_eq!(cache.refused.len(), NEGATIVE_ENTRIES);
        assert_eq!(cache.refused_order.len(), NEGATIVE_ENTRIES);
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let mut bucket = TokenBucket::new(10.0, 20.0);
        let start = Instant::now();
        let taken = (0..100).filter(|_| bucket.take(start)).count();
        assert_eq!(taken, 20, "the burst");
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(150)), "refilled");
    }

    #[test]
    fn refusals_in_logs_are_short_and_escaped() {
        let t = truncated(&format!("a\nb{}", "x".repeat(1000)));
        assert!(t.starts_with("a\\nb"));
        assert!(t.len() < 100);
    }
}
