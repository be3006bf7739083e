//! Peers from the aggregator's pinglist (`--peer-discovery aggregator`):
//! the aggregator reads the Kubernetes API once for the whole cluster and
//! serves each agent its list ([`netmatrix_api::Pinglist`]); the agent
//! watches nothing.
//!
//! The list is fetched by ETag with a long poll ([`poll`]), kept in memory
//! and, with `--pinglist-file`, on disk (an emptyDir in the chart), so that
//! a restarted container probes its last list before the aggregator
//! answers. Probing never waits on the aggregator: while it is away the
//! agent probes the list it holds ([`PeerSource::LastKnown`]); with no list
//! at all, the SRV record stands in, as with the API watches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use netmatrix_api::labels;
use netmatrix_api::{
    AgentIdentity, MAX_PINGLIST_BYTES, PINGLIST_PATH, PeerRole, PeerSource, Pinglist, Sampled,
};

use super::filter::{self, PodInfo};
use super::{AgentTruth, PeerView};

/// Seconds a poll asks the aggregator to hold an unchanged list.
pub const POLL_WAIT_SECS: u64 = 20;
/// Between polls the aggregator answered at once without holding them.
pub const UNHELD_POLL_EVERY: Duration = Duration::from_secs(60);
/// The shortest pause between failed polls, whatever the interval.
const MIN_RETRY: Duration = Duration::from_millis(500);

/// Why a fetched or stored list was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PinglistError {
    #[error("the body's ETag is {computed}, the header said {header}")]
    EtagMismatch { header: String, computed: String },
    #[error("not a pinglist: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(#[from] netmatrix_api::validate::Invalid),
    #[error("larger than {MAX_PINGLIST_BYTES} bytes")]
    TooLarge,
    #[error("no ETag line")]
    NoEtag,
}

/// The list this agent holds, and where it stands with the aggregator.
pub struct PinglistSource {
    me: AgentIdentity,
    held: RwLock<Option<Held>>,
    /// The last poll was answered (200 or 304).
    healthy: AtomicBool,
    file: Option<PathBuf>,
    /// Woken when the aggregator says (in a report's answer) that the
    /// current list is not the one held: the poll then fetches at once.
    stale: Notify,
    /// Woken when a list is taken, for [`PinglistSource::wait_synced`].
    taken: Notify,
}

struct Held {
    list: Arc<Pinglist>,
    etag: String,
}

impl PinglistSource {
    /// A source for `me`, with the list stored in `file` when it holds a
    /// valid one for this agent. A file that does not is renamed to
    /// `FILE.corrupt` (kept for a person to read) and ignored.
    pub fn new(me: AgentIdentity, file: Option<PathBuf>) -> Self {
        let held = file.as_deref().and_then(|path| load(path, &me));
        PinglistSource {
            me,
            held: RwLock::new(held),
            healthy: AtomicBool::new(false),
            file,
            stale: Notify::new(),
            taken: Notify::new(),
        }
    }

    /// Waits until a list is held, up to `timeout`; whether one is.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a list taken in between wakes it.
            let taken = self.taken.notified();
            if self.synced() {
                return true;
            }
            if tokio::time::timeout_at(deadline, taken).await.is_err() {
                return self.synced();
            }
        }
    }

    /// The aggregator's current list for this agent has ETag `etag` (from a
    /// report's answer): when it is not the one held, fetch it now.
    pub fn current_is(&self, etag: &str) {
        if self.etag().as_deref() != Some(etag) {
            self.stale.notify_one();
        }
    }

    /// Whether a list is held (fetched, or read from the file).
    pub fn synced(&self) -> bool {
        self.read(|held| held.is_some())
    }

    /// The last poll was answered.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The peers of the held list at `now_unix_ms`; `None` without a list.
    pub fn view(&self, now_unix_ms: u64) -> Option<PeerView> {
        let source = if self.healthy() {
            PeerSource::Aggregator
        } else {
            PeerSource::LastKnown
        };
        let list = self.read(|held| held.as_ref().map(|h| h.list.clone()))?;
        Some(resolve(&list, &self.me, now_unix_ms, source))
    }

    /// This node's pod-network agent (host lists: whose reports to relay).
    pub fn local_agent_ip(&self) -> Option<IpAddr> {
        self.read(|held| held.as_ref().and_then(|h| h.list.local_pod_agent))
    }

    /// Where the aggregator answers directly, when its Service does not.
    pub fn aggregator_ips(&self) -> Vec<IpAddr> {
        self.read(|held| {
            held.as_ref()
                .map(|h| h.list.aggregators.iter().map(|a| a.ip()).collect())
                .unwrap_or_default()
        })
    }

    /// The ETag of the held list.
    pub fn etag(&self) -> Option<String> {
        self.read(|held| held.as_ref().map(|h| h.etag.clone()))
    }

    fn read<T>(&self, f: impl FnOnce(&Option<Held>) -> T) -> T {
        // A poisoned lock still holds a whole list: keep using it.
        f(&self.held.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes a fetched body after checking it, and stores it.
    fn accept(&self, etag: &str, body: &[u8]) -> Result<(), PinglistError> {
        let list = parse(etag, body, &self.me)?;
        *self.held.write().unwrap_or_else(|e| e.into_inner()) = Some(Held {
            list: Arc::new(list),
            etag: etag.to_owned(),
        });
        if let Some(path) = &self.file
            && let Err(error) = store(path, etag, body)
        {
            tracing::warn!(path = %path.display(), %error, "cannot store the pinglist; a restarted agent will wait for the aggregator");
        }
        self.taken.notify_waiters();
        Ok(())
    }
}

/// A body checked against its ETag and validated for `me`.
fn parse(etag: &str, body: &[u8], me: &AgentIdentity) -> Result<Pinglist, PinglistError> {
    if body.len() > MAX_PINGLIST_BYTES {
        return Err(PinglistError::TooLarge);
    }
    let computed = netmatrix_api::etag(body);
    if computed != etag {
        return Err(PinglistError::EtagMismatch {
            header: etag.to_owned(),
            computed,
        });
    }
    let list: Pinglist = serde_json::from_slice(body)?;
    list.validate_for(&me.node, me.network)?;
    Ok(list)
}

/// The file: the ETag on the first line, then the body exactly as served.
/// Written beside and renamed, so a crash leaves the old file or the new.
fn store(path: &Path, etag: &str, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut content = Vec::with_capacity(etag.len() + 1 + body.len());
    content.extend_from_slice(etag.as_bytes());
    content.push(b'\n');
    content.extend_from_slice(body);
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

fn load(path: &Path, me: &AgentIdentity) -> Option<Held> {
    let content = match std::fs::read(path) {
        Ok(content) => content,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the stored pinglist");
            return None;
        }
    };
    let parsed = content
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(PinglistError::NoEtag)
        .and_then(|nl| {
            let etag = String::from_utf8_lossy(&content[..nl]).into_owned();
            parse(&etag, &content[nl + 1..], me).map(|list| Held {
                list: Arc::new(list),
                etag,
            })
        });
    match parsed {
        Ok(held) => {
            tracing::info!(path = %path.display(), etag = %held.etag, "probing the stored pinglist until the aggregator answers");
            Some(held)
        }
        Err(error) => {
            let aside = path.with_extension("corrupt");
            tracing::warn!(path = %path.display(), %error, aside = %aside.display(), "the stored pinglist is unusable; set aside");
            let _ = std::fs::rename(path, aside);
            None
        }
    }
}

/// The peers `list` names at `now_unix_ms`: its nodes (sampled: this node,
/// the stable ones and those of the current epoch's rotation), without the
/// skipped nodes' pods and without this agent.
pub fn resolve(
    list: &Pinglist,
    me: &AgentIdentity,
    now_unix_ms: u64,
    source: PeerSource,
) -> PeerView {
    let included: Option<BTreeSet<&str>> = list.sampling.as_ref().map(|s| {
        let epoch = now_unix_ms / s.epoch_ms.max(1);
        // Past the window (the aggregator away for long): keep the last
        // rotation; before it, the first.
        let rotation =
            s.rotation
                .iter()
                .find(|r| r.epoch == epoch)
                .or_else(|| match s.rotation.first() {
                    Some(first) if epoch < first.epoch => Some(first),
                    _ => s.rotation.last(),
                });
        std::iter::once(list.node.as_str())
            .chain(s.stable.iter().map(String::as_str))
            .chain(
                rotation
                    .into_iter()
                    .flat_map(|r| r.nodes.iter().map(String::as_str)),
            )
            .collect()
    });
    let skipped_nodes: BTreeMap<String, _> = list
        .nodes
        .iter()
        .filter_map(|(name, n)| n.skip.map(|skip| (name.clone(), skip)))
        .collect();
    let mut running: Vec<PodInfo> = list
        .nodes
        .iter()
        .filter(|(name, _)| {
            included
                .as_ref()
                .is_none_or(|set| set.contains(name.as_str()))
        })
        .flat_map(|(name, n)| {
            n.pods.iter().map(move |p| PodInfo {
                node: name.clone(),
                pod: p.pod.clone(),
                ip: p.ip,
                component: Some(component(p.role).to_owned()),
                started_unix_ms: None,
                ready: true,
                ready_since_unix_ms: None,
            })
        })
        .collect();
    running.sort();
    // A partial truth (sampled) says nothing of the agents outside it.
    let agents = AgentTruth {
        agents: list
            .srv
            .agents
            .iter()
            .map(|a| PodInfo {
                node: a.node.clone(),
                pod: a.pod.clone(),
                ip: a.ip,
                component: Some(labels::COMPONENT_AGENT.to_owned()),
                started_unix_ms: a.started_unix_ms,
                ready: a.ready,
                ready_since_unix_ms: a.ready_since_unix_ms,
            })
            .collect(),
        partial: !list.srv.complete,
        gone: list
            .srv
            .gone
            .iter()
            .map(|g| (g.ip, g.since_unix_ms))
            .collect(),
    };
    let sampled = list.sampling.as_ref().map(|s| Sampled {
        nodes: s.ring_nodes,
        probed: included.as_ref().map_or(0, |set| {
            u32::try_from(set.len().saturating_sub(1)).unwrap_or(u32::MAX)
        }),
    });
    PeerView {
        peers: filter::peers(&running, me, &skipped_nodes),
        agents: Some(agents),
        source,
        skipped_nodes,
        sampled,
        decided_upstream: true,
    }
}

fn component(role: PeerRole) -> &'static str {
    match role {
        PeerRole::Agent => labels::COMPONENT_AGENT,
        PeerRole::Companion => labels::COMPONENT_COMPANION,
        PeerRole::HostAgent => labels::COMPONENT_HOST_AGENT,
        PeerRole::Other => "other",
    }
}

/// Keeps `source` up to date from the aggregator at `base`: a long poll
/// with `If-None-Match`, answered at once when the list changes. Failures
/// keep the held list and retry every `interval`, without growing backoff,
/// so that the peers that joined during an aggregator outage are probed
/// within two rounds of its return (one refused connection per agent and
/// round while it is down). A quick `304` means the aggregator holds as
/// many polls as it will (a large cluster): the next poll waits
/// [`UNHELD_POLL_EVERY`], or less when a report's answer names another
/// list ([`PinglistSource::current_is`]), so a change still arrives within
/// a round without a poll held open per agent.
pub async fn poll(
    source: Arc<PinglistSource>,
    client: reqwest::Client,
    base: reqwest::Url,
    mut token: crate::report::TokenFile,
    interval: Duration,
) {
    let retry = interval.max(MIN_RETRY);
    let mut failing_logged = false;
    loop {
        let started = Instant::now();
        match fetch(&source, &client, &base, token.current()).await {
            Ok(changed) => {
                source.healthy.store(true, Ordering::Relaxed);
                if failing_logged {
                    tracing::info!("the aggregator serves the pinglist again");
                    failing_logged = false;
                }
                if !changed && started.elapsed() < Duration::from_secs(POLL_WAIT_SECS / 2) {
                    let pause = UNHELD_POLL_EVERY.max(interval);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = source.stale.notified() => {}
                    }
                }
            }
            Err(error) => {
                source.healthy.store(false, Ordering::Relaxed);
                if !failing_logged {
                    tracing::warn!(%error, held = source.synced(), "cannot fetch the pinglist; probing the list held");
                    failing_logged = true;
                } else {
                    tracing::debug!(%error, "pinglist fetch failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = source.stale.notified() => {}
                }
            }
        }
    }
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("the aggregator answered {0}")]
    Status(reqwest::StatusCode),
    #[error("no ETag in the answer")]
    NoEtag,
    #[error("the list was refused: {0}")]
    List(#[from] PinglistError),
}

/// One poll; `Ok(true)` when a new list was taken.
async fn fetch(
    source: &PinglistSource,
    client: &reqwest::Client,
    base: &reqwest::Url,
    token: Option<String>,
) -> Result<bool, FetchError> {
    let mut url = base.clone();
    url.set_path(&format!("{PINGLIST_PATH}/{}", source.me.node));
    url.set_query(Some(&format!("wait={POLL_WAIT_SECS}")));
    let mut request = client
        .get(url)
        .timeout(Duration::from_secs(POLL_WAIT_SECS + 5));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(etag) = source.etag() {
        request = request.header(reqwest::header::IF_NONE_MATCH, format!("\"{etag}\""));
    }
    let mut response = request.send().await?;
    match response.status() {
        reqwest::StatusCode::NOT_MODIFIED => return Ok(false),
        reqwest::StatusCode::OK => {}
        status => return Err(FetchError::Status(status)),
    }
    let etag = response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned())
        .ok_or(FetchError::NoEtag)?;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_PINGLIST_BYTES {
            return Err(PinglistError::TooLarge.into());
        }
        body.extend_from_slice(&chunk);
    }
    source.accept(&etag, &body)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::fixtures;
    use netmatrix_api::{
        NetworkMode, NodeSkip, PinglistNode, PinglistPod, RotationEpoch, SamplingWindow, SrvAgent,
    };
    use std::sync::atomic::AtomicUsize;

    fn me() -> AgentIdentity {
        fixtures::identity("n1", "agent-1", "10.244.1.2")
    }

    fn node(pods: &[(&str, &str, PeerRole)], skip: Option<NodeSkip>) -> PinglistNode {
        PinglistNode {
            skip,
            pods: pods
                .iter()
                .map(|(pod, ip, role)| PinglistPod {
                    pod: (*pod).into(),
                    ip: ip.parse().unwrap(),
                    role: *role,
                    port: None,
                })
                .collect(),
        }
    }

    fn mesh() -> Pinglist {
        let mut list = fixtures::pinglist("n1", NetworkMode::Pod);
        list.nodes.insert(
            "n1".into(),
            node(
                &[
                    ("agent-1", "10.244.1.2", PeerRole::Agent),
                    ("comp-1", "10.244.1.3", PeerRole::Companion),
                ],
                None,
            ),
        );
        list.nodes.insert(
            "n2".into(),
            node(&[("agent-2", "10.244.2.2", PeerRole::Agent)], None),
        );
        list.nodes.insert(
            "n3".into(),
            node(
                &[("agent-3", "10.244.3.2", PeerRole::Agent)],
                Some(NodeSkip::Cordoned),
            ),
        );
        list.srv.agents = vec![SrvAgent {
            node: "n2".into(),
            pod: "agent-2".into(),
            ip: "10.244.2.2".parse().unwrap(),
            ready: true,
            started_unix_ms: Some(5),
            ready_since_unix_ms: Some(6),
        }];
        list
    }

    fn names(view: &PeerView) -> Vec<&str> {
        view.peers.iter().map(|p| p.pod.as_str()).collect()
    }

    #[test]
    fn a_full_mesh_list_names_every_pod_but_this_agent_and_the_skipped_nodes() {
        let view = resolve(&mesh(), &me(), 0, PeerSource::Aggregator);
        assert_eq!(names(&view), ["comp-1", "agent-2"]);
        assert_eq!(view.skipped_nodes.get("n3"), Some(&NodeSkip::Cordoned));
        assert_eq!(view.source, PeerSource::Aggregator);
        assert!(view.sampled.is_none() && view.decided_upstream);
        let truth = view.agents.unwrap();
        assert!(!truth.partial);
        assert_eq!(truth.agents[0].ready_since_unix_ms, Some(6));
        assert_eq!(view.peers[0].component.as_deref(), Some("companion"));
        assert_eq!(view.peers[1].component.as_deref(), Some("agent"));
    }

    #[test]
    fn a_sampled_list_follows_the_rotation_of_the_current_epoch() {
        let mut list = mesh();
        list.nodes.insert(
            "n4".into(),
            node(&[("agent-4", "10.244.4.2", PeerRole::Agent)], None),
        );
        list.nodes.get_mut("n3").unwrap().skip = None;
        list.srv.complete = false;
        list.srv.gone = vec![netmatrix_api::GoneAgent {
            ip: "10.244.9.2".parse().unwrap(),
            since_unix_ms: 9_000,
        }];
        list.sampling = Some(SamplingWindow {
            ring_nodes: 40,
            epoch_ms: 1000,
            stable: vec!["n2".into()],
            rotation: vec![
                RotationEpoch {
                    epoch: 10,
                    nodes: vec!["n3".into()],
                },
                RotationEpoch {
                    epoch: 11,
                    nodes: vec!["n4".into()],
                },
            ],
        });
        let at = |ms| names(&resolve(&list, &me(), ms, PeerSource::Aggregator)).join(",");
        assert_eq!(at(10_500), "comp-1,agent-2,agent-3");
        assert_eq!(at(11_500), "comp-1,agent-2,agent-4");
        // Outside the window: the nearest end of it.
        assert_eq!(at(2_000), "comp-1,agent-2,agent-3");
        assert_eq!(at(99_000), "comp-1,agent-2,agent-4");
        let view = resolve(&list, &me(), 10_500, PeerSource::Aggregator);
        assert_eq!(
            view.sampled,
            Some(Sampled {
                nodes: 40,
                probed: 2
            })
        );
        // A partial SRV truth says so, with the agents that left its part.
        let truth = view.agents.unwrap();
        assert!(truth.partial);
        assert_eq!(truth.gone, vec![("10.244.9.2".parse().unwrap(), 9_000)]);
    }

    fn body(list: &Pinglist) -> (String, Vec<u8>) {
        let body = serde_json::to_vec(list).unwrap();
        (netmatrix_api::etag(&body), body)
    }

    #[test]
    fn a_stored_list_is_read_back_and_a_bad_one_set_aside() {
        let dir = std::env::temp_dir().join(format!("nm-pinglist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pinglist.json");
        let (etag, bytes) = body(&mesh());
        let source = PinglistSource::new(me(), Some(path.clone()));
        assert!(!source.synced());
        source.accept(&etag, &bytes).unwrap();

        let restarted = PinglistSource::new(me(), Some(path.clone()));
        assert!(restarted.synced() && !restarted.healthy());
        let view = restarted.view(0).unwrap();
        assert_eq!(view.source, PeerSource::LastKnown);
        assert_eq!(names(&view), ["comp-1", "agent-2"]);

        // Another node's list, or a body that does not match its ETag.
        let other = fixtures::identity("n2", "agent-2", "10.244.2.2");
        assert!(
            PinglistSource::new(other, Some(path.clone()))
                .etag()
                .is_none()
        );
        assert!(dir.join("pinglist.corrupt").exists());
        std::fs::write(&path, format!("{etag}\n{{}}")).unwrap();
        assert!(!PinglistSource::new(me(), Some(path.clone())).synced());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_body_must_match_its_etag_and_be_this_agents_list() {
        let source = PinglistSource::new(me(), None);
        let (etag, bytes) = body(&mesh());
        assert!(matches!(
            source.accept("pl1-0000000000000000", &bytes),
            Err(PinglistError::EtagMismatch { .. })
        ));
        let (other_etag, other) = body(&fixtures::pinglist("n2", NetworkMode::Pod));
        assert!(matches!(
            source.accept(&other_etag, &other),
            Err(PinglistError::Invalid(_))
        ));
        assert!(!source.synced());
        source.accept(&etag, &bytes).unwrap();
        assert_eq!(source.etag().as_deref(), Some(etag.as_str()));
    }

    /// A fake aggregator on loopback serving `list` at once: the list with
    /// its ETag, `304` when the agent already has it. It checks the node
    /// asked for and that no token was sent, and counts the polls. Returns
    /// its URL, the list's ETag and the count.
    async fn fake_aggregator(list: &Pinglist) -> (reqwest::Url, String, Arc<AtomicUsize>) {
        use axum::extract::Path as UrlPath;
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::IntoResponse;
        let (etag, bytes) = body(list);
        let polls = Arc::new(AtomicUsize::new(0));
        let served = (etag.clone(), bytes, Arc::clone(&polls));
        let app = axum::Router::new().route(
            "/api/v1/pinglist/{node}",
            axum::routing::get(move |UrlPath(node): UrlPath<String>, headers: HeaderMap| {
                let (etag, bytes, polls) = served.clone();
                async move {
                    polls.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(node, "n1");
                    assert!(headers.get(header::AUTHORIZATION).is_none());
                    let quoted = format!("\"{etag}\"");
                    if headers
                        .get(header::IF_NONE_MATCH)
                        .and_then(|v| v.to_str().ok())
                        == Some(quoted.as_str())
                    {
                        return StatusCode::NOT_MODIFIED.into_response();
                    }
                    ([(header::ETAG, quoted)], bytes).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}").parse().unwrap(), etag, polls)
    }

    #[tokio::test]
    async fn waiting_for_the_first_list_ends_when_it_is_taken() {
        let source = Arc::new(PinglistSource::new(me(), None));
        assert!(!source.wait_synced(Duration::from_millis(50)).await);
        let (etag, bytes) = body(&mesh());
        let waiter = tokio::spawn({
            let source = Arc::clone(&source);
            async move { source.wait_synced(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        source.accept(&etag, &bytes).unwrap();
        assert!(waiter.await.unwrap());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn the_poll_takes_a_new_list_and_is_told_when_it_is_unchanged() {
        let (base, etag, _) = fake_aggregator(&mesh()).await;
        let client = reqwest::Client::new();
        let source = PinglistSource::new(me(), None);
        assert!(fetch(&source, &client, &base, None).await.unwrap());
        assert_eq!(source.etag(), Some(etag));
        assert!(!fetch(&source, &client, &base, None).await.unwrap());
    }

    /// An aggregator that answers every poll at once (it holds as many as
    /// it will): the agent polls again only after a long pause, or at once
    /// when a report's answer names another list.
    #[tokio::test]
    async fn an_unheld_poll_waits_until_a_report_answer_names_another_list() {
        let (base, etag, polls) = fake_aggregator(&mesh()).await;
        let source = Arc::new(PinglistSource::new(me(), None));
        tokio::spawn(poll(
            Arc::clone(&source),
            reqwest::Client::new(),
            base,
            crate::report::TokenFile::new(None),
            Duration::from_millis(100),
        ));
        tokio::time::sleep(Duration::from_millis(600)).await;
        // The list, then one unheld 304, then a pause far longer than this.
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        source.current_is(&etag);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(polls.load(Ordering::SeqCst), 2, "the list held is current");
        source.current_is("pl1-0000000000000000");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(polls.load(Ordering::SeqCst), 3, "polled when told");
    }
}
