//! The API server emulator against the unmodified kube-rs client: list with
//! selectors, get, and a reflector following adds, updates and deletes.
//! Loopback only.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use netmatrix_lab::cluster::{self, ClusterState};
use netmatrix_lab::{apiserver, pki::LabPki};

async fn start() -> (ClusterState, kube::Client, LabPki, std::net::SocketAddr) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = LabPki::generate(&["127.0.0.1".parse().unwrap()], &["localhost".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ClusterState::new();
    tokio::spawn(apiserver::serve(
        listener,
        state.clone(),
        pki.server_config().unwrap(),
        pki.token.clone(),
    ));
    let kubeconfig = Kubeconfig::from_yaml(&pki.kubeconfig(&format!("https://{addr}"))).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    (state, kube::Client::try_from(config).unwrap(), pki, addr)
}

fn agent(name: &str, node: &str, ip: &str) -> Pod {
    cluster::pod("netmatrix", name, node, ip, &[("app", "agent")], false)
}

#[tokio::test]
async fn kube_rs_lists_gets_and_follows_changes() {
    let (state, client, _pki, _) = start().await;
    state.apply_node(cluster::node("node-1", "198.18.0.1", "10.244.1.0/24"));
    state.apply_pod(agent("a1", "node-1", "10.244.1.2"));
    state.apply_pod(cluster::pod(
        "netmatrix",
        "other",
        "node-1",
        "10.244.1.9",
        &[("app", "x")],
        false,
    ));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "netmatrix");
    let listed = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get("node-1").await.unwrap();
    assert_eq!(
        node.spec.unwrap().pod_cidr.as_deref(),
        Some("10.244.1.0/24")
    );
    assert!(nodes.get("absent").await.is_err());

    let (store, writer) = reflector::store::<Pod>();
    let stream = watcher(pods, watcher::Config::default().labels("app=agent"))
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    let wait = |want: Vec<&'static str>| {
        let store = store.clone();
        async move {
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
                "reflector never reached {want:?}: {:?}",
                store.state().len()
            );
        }
    };
    wait(vec!["10.244.1.2"]).await;
    state.apply_pod(agent("a2", "node-2", "10.244.2.2"));
    wait(vec!["10.244.1.2", "10.244.2.2"]).await;
    state.apply_pod(agent("a1", "node-1", "10.244.1.7"));
    wait(vec!["10.244.1.7", "10.244.2.2"]).await;
    state.delete_pod("netmatrix", "a2");
    wait(vec!["10.244.1.7"]).await;
}

#[tokio::test]
async fn requests_without_the_token_are_refused() {
    let (_state, _client, pki, addr) = start().await;
    let ca = reqwest_free_get(&pki, addr, None).await;
    assert!(ca.starts_with("HTTP/1.1 401"), "{ca}");
    let ok = reqwest_free_get(&pki, addr, Some(&pki.token)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

/// A raw TLS GET of /api/v1/nodes, to see the status line.
async fn reqwest_free_get(pki: &LabPki, addr: std::net::SocketAddr, token: Option<&str>) -> String {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.ok();
    out
}
