//! The API server emulator against the unmodified kube-rs client: list with
//! selectors, get, reflectors (list-then-watch and streaming lists) following
//! adds, updates, relabels and deletes, and the token check. Loopback only.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use netmatrix_lab::emulator::apiserver::clients::Clients;
use netmatrix_lab::emulator::apiserver::tokens::TokenAuthority;
use netmatrix_lab::emulator::cluster::{self, ClusterState};
use netmatrix_lab::emulator::{apiserver, pki::LabPki};

struct Lab {
    state: ClusterState,
    client: kube::Client,
    pki: LabPki,
    addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Lab {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = LabPki::generate(&["127.0.0.1".parse().unwrap()], &["localhost".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ClusterState::new();
    let server = tokio::spawn(apiserver::serve(
        listener,
        state.clone(),
        pki.server_config().unwrap(),
        Arc::new(Clients::new(&pki.token)),
        Arc::new(TokenAuthority::new().unwrap()),
    ));
    // The way the lab hands credentials to its processes: a kubeconfig.
    let kubeconfig = Kubeconfig::from_yaml(&pki.kubeconfig(&format!("https://{addr}"))).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    Lab {
        state,
        client,
        pki,
        addr,
        server,
    }
}

fn agent(name: &str, node: &str, ip: &str) -> Pod {
    cluster::pod("netmatrix", name, node, ip, &[("app", "agent")], false)
}

/// Runs a reflector over `config` and returns its store.
fn reflect(pods: Api<Pod>, config: watcher::Config) -> Store<Pod> {
    let (store, writer) = reflector::store::<Pod>();
    let stream = watcher(pods, config)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    store
}

/// Waits until the store holds exactly the pods with these IPs.
async fn wait_for(store: &Store<Pod>, want: &[&str]) {
    for _ in 0..100 {
        let mut ips: Vec<String> = store
            .state()
            .iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        ips.sort();
        if ips == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the reflector never reached {want:?}: {} objects",
        store.state().len()
    );
}

#[tokio::test]
async fn kube_rs_lists_and_gets() {
    let lab = start().await;
    lab.state
        .apply_node(cluster::node("node-1", "198.18.0.1", "10.244.1.0/24"));
    lab.state.apply_pod(agent("a1", "node-1", "10.244.1.2"));
    lab.state.apply_pod(cluster::pod(
        "netmatrix",
        "other",
        "node-1",
        "10.244.1.9",
        &[("app", "x")],
        false,
    ));

    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "netmatrix");
    let listed = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        listed.items[0].status.as_ref().unwrap().host_ip.as_deref(),
        Some("198.18.0.1")
    );
    let set_based = pods
        .list(&ListParams::default().labels("app in (agent,x)"))
        .await
        .unwrap();
    assert_eq!(set_based.items.len(), 2);
    let by_field = pods
        .list(&ListParams::default().fields("metadata.name=other"))
        .await
        .unwrap();
    assert_eq!(by_field.items.len(), 1);
    let bad = pods
        .list(&ListParams::default().labels("app in agent"))
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, kube::Error::Api(s) if s.code == 400),
        "{bad:?}"
    );

    let nodes: Api<Node> = Api::all(lab.client.clone());
    let node = nodes.get("node-1").await.unwrap();
    assert_eq!(
        node.spec.unwrap().pod_cidr.as_deref(),
        Some("10.244.1.0/24")
    );
    let missing = nodes.get("absent").await.unwrap_err();
    assert!(
        matches!(&missing, kube::Error::Api(s) if s.code == 404),
        "{missing:?}"
    );
    let version = lab.client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, apiserver::GIT_VERSION);
}

#[tokio::test]
async fn kube_rs_reflector_follows_changes() {
    let lab = start().await;
    lab.state.apply_pod(agent("a1", "node-1", "10.244.1.2"));
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "netmatrix");
    // The default watcher: list, then watch from the list's resourceVersion.
    let store = reflect(pods, watcher::Config::default().labels("app=agent"));
    wait_for(&store, &["10.244.1.2"]).await;
    lab.state.apply_pod(agent("a2", "node-2", "10.244.2.2"));
    wait_for(&store, &["10.244.1.2", "10.244.2.2"]).await;
    lab.state.apply_pod(agent("a1", "node-1", "10.244.1.7"));
    wait_for(&store, &["10.244.1.7", "10.244.2.2"]).await;
    lab.state.delete_pod("netmatrix", "a2");
    wait_for(&store, &["10.244.1.7"]).await;
    // Relabelled out of the selector: gone from the store, as with a real API.
    lab.state.apply_pod(cluster::pod(
        "netmatrix",
        "a1",
        "node-1",
        "10.244.1.7",
        &[("app", "x")],
        false,
    ));
    wait_for(&store, &[]).await;
}

#[tokio::test]
async fn kube_rs_streaming_list_reflector_follows_changes() {
    let lab = start().await;
    lab.state.apply_pod(agent("a1", "node-1", "10.244.1.2"));
    let pods: Api<Pod> = Api::all(lab.client.clone());
    let store = reflect(
        pods,
        watcher::Config::default()
            .labels("app=agent")
            .streaming_lists(),
    );
    wait_for(&store, &["10.244.1.2"]).await;
    lab.state.apply_pod(agent("a2", "node-2", "10.244.2.2"));
    wait_for(&store, &["10.244.1.2", "10.244.2.2"]).await;
    lab.state.set_pod_phase("netmatrix", "a2", "Failed");
    lab.state.delete_pod("netmatrix", "a1");
    wait_for(&store, &["10.244.2.2"]).await;
    let phase = store.state()[0].status.as_ref().unwrap().phase.clone();
    assert_eq!(phase.as_deref(), Some("Failed"));
}

#[tokio::test]
async fn requests_without_the_token_are_refused() {
    let lab = start().await;
    let anonymous = raw_get(&lab, "/api/v1/nodes", None).await;
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    assert!(anonymous.contains(r#""kind":"Status""#), "{anonymous}");
    let ok = raw_get(&lab, "/api/v1/nodes", Some(&lab.pki.token)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let livez = raw_get(&lab, "/livez", None).await;
    assert!(
        livez.starts_with("HTTP/1.1 200") && livez.ends_with("ok"),
        "{livez}"
    );
}

#[tokio::test]
async fn stopping_the_server_closes_open_watches() {
    let lab = start().await;
    let pods: Api<Pod> = Api::all(lab.client.clone());
    let params = kube::api::WatchParams::default().timeout(60);
    let mut events = pods.watch(&params, "0").await.unwrap().boxed();
    lab.server.abort();
    let end = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    assert!(
        matches!(end, Ok(None | Some(Err(_)))),
        "the watch outlived the server: {end:?}"
    );
}

/// A raw TLS GET, to see the status line.
async fn raw_get(lab: &Lab, path: &str, token: Option<&str>) -> String {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(lab.pki.ca_cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(lab.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.ok();
    out
}
