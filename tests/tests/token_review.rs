//! The aggregator's TokenReview path ([`netmatrix_aggregator::auth`])
//! against the lab's API emulator, over TLS on loopback, with the real
//! kube-rs client: bound tokens accepted as their pod, other audiences and
//! ServiceAccounts refused, rotation, expiry, a re-created pod, an API
//! outage, and the review rate limit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use netmatrix_aggregator::auth::{AuthError, Authenticator, Sender, TokenPolicy};
use netmatrix_api::labels;
use netmatrix_lab::apiserver::tokens::{Binding, TokenAuthority};
use netmatrix_lab::cluster::{self, ClusterState};
use netmatrix_lab::{apiserver, pki::LabPki};

const NS: &str = "netmatrix";

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
        pki.token.clone(),
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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Emulator {
    fn token(&self, pod: &str, audience: &str, ttl: Duration) -> String {
        let binding = Binding::of_pod(&self.state, NS, pod).unwrap();
        self.authority.issue(&binding, &[audience], ttl, now_secs())
    }
}

async fn authenticate(auth: &Authenticator, token: &str) -> Result<Sender, AuthError> {
    let header = format!("Bearer {token}");
    let now_ms = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    auth.authenticate(Some(header.as_bytes()), now_ms, 100)
        .await
}

#[tokio::test]
async fn bound_tokens_are_their_pods_and_nothing_else_passes() {
    let api = start().await;
    let auth = Authenticator::with_reviews(api.client.clone(), policy(50));
    let uid = Binding::of_pod(&api.state, NS, "agent-1").unwrap().pod_uid;

    let token = api.token("agent-1", labels::TOKEN_AUDIENCE, Duration::from_secs(600));
    let Ok(Sender::Agent(caller)) = authenticate(&auth, &token).await else {
        panic!("the agent's token was refused");
    };
    assert_eq!(caller.pod, "agent-1");
    assert_eq!(caller.pod_uid, uid);
    assert_eq!(caller.node.as_deref(), Some("node-1"));
    assert_eq!(caller.service_account, labels::AGENT_SERVICE_ACCOUNT);

    // A token for the API server (the pod's ordinary one): not for us.
    let api_token = api.token(
        "agent-1",
        "https://kubernetes.default.svc.cluster.local",
        Duration::from_secs(600),
    );
    assert!(matches!(
        authenticate(&auth, &api_token).await,
        Err(AuthError::Rejected(_))
    ));
    // A real token of a pod that is not an agent.
    let intruder = api.token("intruder", labels::TOKEN_AUDIENCE, Duration::from_secs(600));
    assert!(matches!(
        authenticate(&auth, &intruder).await,
        Err(AuthError::NotAnAgent(_))
    ));
    // Signed by another cluster.
    let foreign = TokenAuthority::new().unwrap().issue(
        &Binding::of_pod(&api.state, NS, "agent-1").unwrap(),
        &[labels::TOKEN_AUDIENCE],
        Duration::from_secs(600),
        now_secs(),
    );
    let refused = authenticate(&auth, &foreign).await;
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
    assert!(authenticate(&auth, &first).await.is_ok());
    // The kubelet rotates: the new token is reviewed, the old one still works.
    let second = api.token("agent-1", labels::TOKEN_AUDIENCE, Duration::from_secs(600));
    assert!(authenticate(&auth, &second).await.is_ok());
    assert!(authenticate(&auth, &first).await.is_ok());
    // Past its expiry the old one is refused, even though it was cached.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert!(matches!(
        authenticate(&auth, &first).await,
        Err(AuthError::Rejected(_))
    ));
    assert!(authenticate(&auth, &second).await.is_ok());

    // A token minted for the pod, which is then deleted and re-created
    // under the same name: the API refuses it (a new UID).
    let orphan = api.token("agent-1", labels::TOKEN_AUDIENCE, Duration::from_secs(600));
    api.state.delete_pod(NS, "agent-1");
    api.state.apply_pod(agent_pod(
        "agent-1",
        "node-1",
        "10.244.1.2",
        labels::AGENT_SERVICE_ACCOUNT,
    ));
    let refused = authenticate(&auth, &orphan).await;
    assert!(
        matches!(&refused, Err(AuthError::Rejected(why)) if why.contains("does not match")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn an_api_outage_and_a_flood_of_new_tokens_are_told_to_retry() {
    let api = start().await;
    let auth = Authenticator::with_reviews(api.client.clone(), policy(1));
    let known = api.token("agent-1", labels::TOKEN_AUDIENCE, Duration::from_secs(600));
    assert!(authenticate(&auth, &known).await.is_ok());
    // Distinct valid tokens, more than the burst (10 at 1 a second).
    let mut busy = 0;
    for _ in 0..15 {
        let token = api.token("agent-1", labels::TOKEN_AUDIENCE, Duration::from_secs(600));
        if let Err(AuthError::Unavailable(why)) = authenticate(&auth, &token).await {
            assert!(why.contains("rate limited"), "{why}");
            busy += 1;
        }
    }
    assert!(busy >= 5, "only {busy} of 15 were held back");

    // The API server goes away: a cached token still passes, a new one
    // cannot be verified.
    let new = api.token("agent-1", labels::TOKEN_AUDIENCE, Duration::from_secs(600));
    api.server.abort();
    let _ = api.server.await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(authenticate(&auth, &known).await.is_ok());
    assert!(matches!(
        authenticate(&auth, &new).await,
        Err(AuthError::Unavailable(_))
    ));
}
