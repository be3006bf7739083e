//! The aggregator's TokenReview path ([`netmatrix_aggregator::auth`])
//! against the lab's API emulator, over TLS on loopback, with the real
//! kube-rs client: bound tokens accepted as their pod, other audiences and
//! ServiceAccounts refused, rotation, expiry, a re-created pod, forgeries
//! that cost no review, a pod's review budget, and an API that is down or
//! hangs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use netmatrix_aggregator::auth::{AuthError, Authenticator, Sender, TokenPolicy};
use netmatrix_aggregator::inventory::Inventory;
use netmatrix_api::labels;
use netmatrix_lab::emulator::apiserver::clients::Clients;
use netmatrix_lab::emulator::apiserver::tokens::{Binding, ISSUER, TokenAuthority};
use netmatrix_lab::emulator::cluster::{self, ClusterState};
use netmatrix_lab::emulator::{apiserver, pki::LabPki};

const NS: &str = "netmatrix";
const HOUR: Duration = Duration::from_secs(3600);

struct Emulator {
    state: ClusterState,
    authority: Arc<TokenAuthority>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    client: kube::Client,
}

fn agent_pod(name: &str, node: &str, ip: &str, service_account: &str) -> Pod {
    let mut pod = cluster::pod(NS, name, node, ip, &[], false);
    if let Some(spec) = pod.spec.as_mut() {
        spec.service_account_name = Some(service_account.to_owned());
    }
    pod
}

async fn start() -> Emulator {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = LabPki::generate(&["127.0.0.1".parse().unwrap()], &["localhost".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ClusterState::new();
    state.apply_node(cluster::node("node-1", "198.18.0.1", "10.244.1.0/24"));
    state.apply_pod(agent_pod(
        "agent-1",
        "node-1",
        "10.244.1.2",
        labels::AGENT_SERVICE_ACCOUNT,
    ));
    state.apply_pod(agent_pod("intruder", "node-1", "10.244.1.9", "default"));
    let authority = Arc::new(TokenAuthority::new().unwrap());
    let server = tokio::spawn(apiserver::serve(
        listener,
        state.clone(),
        pki.server_config().unwrap(),
        Arc::new(Clients::new(&pki.token)),
        Arc::clone(&authority),
    ));
    let kubeconfig = Kubeconfig::from_yaml(&pki.kubeconfig(&format!("https://{addr}"))).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Emulator {
        state,
        authority,
        server,
        client: kube::Client::try_from(config).unwrap(),
    }
}

fn policy(reviews_per_second: u32) -> TokenPolicy {
    TokenPolicy {
        audience: labels::TOKEN_AUDIENCE.into(),
        namespace: NS.into(),
        service_accounts: BTreeSet::from([labels::AGENT_SERVICE_ACCOUNT.to_owned()]),
        reviews_per_second,
    }
}

use netmatrix_runtime::{now_unix_ms as now_ms, now_unix_secs as now_secs};

impl Emulator {
    fn token(&self, pod: &str, audience: &str, ttl: Duration) -> String {
        let binding = Binding::of_pod(&self.state, NS, pod).unwrap();
        self.authority.issue(&binding, &[audience], ttl, now_secs())
    }

    /// The agent pods as the aggregator's watch would see them now.
    fn roster(&self) -> Inventory {
        Inventory::from_objects(&self.state.nodes(), &self.state.pods(), true)
    }

    async fn authenticate(&self, auth: &Authenticator, token: &str) -> Result<Sender, AuthError> {
        self.authenticate_at(auth, token, now_ms()).await
    }

    async fn authenticate_at(
        &self,
        auth: &Authenticator,
        token: &str,
        now_ms: u64,
    ) -> Result<Sender, AuthError> {
        let header = format!("Bearer {token}");
        auth.authenticate(Some(header.as_bytes()), now_ms, &self.roster())
            .await
    }
}

#[tokio::test]
async fn bound_tokens_are_their_pods_and_nothing_else_passes() {
    let api = start().await;
    let auth = Authenticator::with_reviews(api.client.clone(), policy(50));
    let uid = Binding::of_pod(&api.state, NS, "agent-1").unwrap().pod_uid;

    let token = api.token("agent-1", labels::TOKEN_AUDIENCE, HOUR);
    let Ok(Sender::Agent(caller)) = api.authenticate(&auth, &token).await else {
        panic!("the agent's token was refused");
    };
    assert_eq!(caller.pod, "agent-1");
    assert_eq!(caller.pod_uid, uid);
    assert_eq!(caller.node.as_deref(), Some("node-1"));
    assert_eq!(caller.service_account, labels::AGENT_SERVICE_ACCOUNT);

    // A token for the API server (the pod's ordinary one): not for us.
    let api_token = api.token("agent-1", ISSUER, HOUR);
    assert!(matches!(
        api.authenticate(&auth, &api_token).await,
        Err(AuthError::Rejected(_))
    ));
    // A real token of a pod that runs under another ServiceAccount.
    let intruder = api.token("intruder", labels::TOKEN_AUDIENCE, HOUR);
    assert!(matches!(
        api.authenticate(&auth, &intruder).await,
        Err(AuthError::NotAnAgent(_))
    ));
    // Signed by another cluster's key, for the real pod.
    let foreign = TokenAuthority::new().unwrap().issue(
        &Binding::of_pod(&api.state, NS, "agent-1").unwrap(),
        &[labels::TOKEN_AUDIENCE],
        HOUR,
        now_secs(),
    );
    let refused = api.authenticate(&auth, &foreign).await;
    assert!(
        matches!(&refused, Err(AuthError::Rejected(why)) if why.contains("invalid bearer token")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn rotation_expiry_and_a_recreated_pod() {
    let api = start().await;
    let auth = Authenticator::with_reviews(api.client.clone(), policy(50));
    let first = api.token("agent-1", labels::TOKEN_AUDIENCE, Duration::from_secs(3));
    assert!(api.authenticate(&auth, &first).await.is_ok());
    // The kubelet rotates: the new token is reviewed, the old one still works.
    let second = api.token("agent-1", labels::TOKEN_AUDIENCE, HOUR);
    assert!(api.authenticate(&auth, &second).await.is_ok());
    assert!(api.authenticate(&auth, &first).await.is_ok());
    // Past its expiry the old one is refused, even though it was cached.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert!(matches!(
        api.authenticate(&auth, &first).await,
        Err(AuthError::Rejected(_))
    ));
    assert!(api.authenticate(&auth, &second).await.is_ok());

    // A token minted for the pod, which is then deleted and re-created
    // under the same name: its UID is no agent's any more, so it is refused
    // without asking the API (which would refuse it too: apiserver/tokens.rs).
    let orphan = api.token("agent-1", labels::TOKEN_AUDIENCE, HOUR);
    api.state.delete_pod(NS, "agent-1");
    api.state.apply_pod(agent_pod(
        "agent-1",
        "node-1",
        "10.244.1.2",
        labels::AGENT_SERVICE_ACCOUNT,
    ));
    let reviews = api.authority.reviews();
    let refused = api.authenticate(&auth, &orphan).await;
    assert!(
        matches!(&refused, Err(AuthError::NotAnAgent(_))),
        "{refused:?}"
    );
    assert_eq!(api.authority.reviews(), reviews, "no review spent on it");
}

#[tokio::test]
async fn forgeries_cost_no_review_and_a_pod_gets_few() {
    let api = start().await;
    let auth = Authenticator::with_reviews(api.client.clone(), policy(50));
    let real = Binding::of_pod(&api.state, NS, "agent-1").unwrap();
    // Signed by nobody we trust, for our audience, naming the real pod but
    // a made-up UID (UIDs are served nowhere): refused before any review.
    let mut guessed = real.clone();
    guessed.pod_uid = "00000000-0000-4000-8000-000000000000".into();
    let forger = TokenAuthority::new().unwrap();
    for _ in 0..50 {
        let forged = forger.issue(&guessed, &[labels::TOKEN_AUDIENCE], HOUR, now_secs());
        assert!(matches!(
            api.authenticate(&auth, &forged).await,
            Err(AuthError::NotAnAgent(_))
        ));
    }
    assert_eq!(api.authority.reviews(), 0, "forgeries reached the API");
    // With the right UID (a forger who can read the pods), new tokens of one
    // pod cost three reviews, then one per 20 s.
    let (mut reviewed, mut held_back) = (0, 0);
    for _ in 0..10 {
        let forged = forger.issue(&real, &[labels::TOKEN_AUDIENCE], HOUR, now_secs());
        match api.authenticate(&auth, &forged).await {
            Err(AuthError::Rejected(_)) => reviewed += 1,
            Err(AuthError::Unavailable(why)) => {
                assert!(why.contains("too many new tokens for this pod"), "{why}");
                held_back += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((reviewed, held_back), (3, 7));
    assert_eq!(api.authority.reviews(), 3);
}

#[tokio::test]
async fn an_api_outage_keeps_known_tokens_and_fails_new_ones() {
    let api = start().await;
    let auth = Authenticator::with_reviews(api.client.clone(), policy(50));
    let known = api.token("agent-1", labels::TOKEN_AUDIENCE, HOUR);
    assert!(api.authenticate(&auth, &known).await.is_ok());
    let new = api.token("agent-1", labels::TOKEN_AUDIENCE, HOUR);
    api.server.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Twenty minutes into the outage, the known token still passes.
    let later = now_ms() + 20 * 60 * 1000;
    assert!(api.authenticate_at(&auth, &known, later).await.is_ok());
    assert!(matches!(
        api.authenticate(&auth, &new).await,
        Err(AuthError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_hung_api_is_waited_for_once_then_new_tokens_are_answered_at_once() {
    let api = start().await;
    // An API server that accepts connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", hung.local_addr().unwrap());
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            open.push(socket);
        }
    });
    let mut config = kube::Config::new(url.parse().unwrap());
    config.accept_invalid_certs = true;
    let client = kube::Client::try_from(config).unwrap();
    let auth = Authenticator::with_reviews(client, policy(50));
    let first = api.token("agent-1", labels::TOKEN_AUDIENCE, HOUR);
    let started = Instant::now();
    let answer = api.authenticate(&auth, &first).await;
    assert!(
        matches!(&answer, Err(AuthError::Unavailable(why)) if why.contains("timed out")),
        "{answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let second = api.token("agent-1", labels::TOKEN_AUDIENCE, HOUR);
    let started = Instant::now();
    let answer = api.authenticate(&auth, &second).await;
    assert!(
        matches!(&answer, Err(AuthError::Unavailable(why)) if why.contains("failed the last")),
        "{answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}
