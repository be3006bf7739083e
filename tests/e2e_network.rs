//! The lab's kernel networking and in-process servers, without the netmatrix
//! binaries: pods reach each other across nodes over the overlay, Services
//! are DNATed to the API server emulator and the DNS pod, and the overlay
//! fault breaks exactly one node. Needs root (network namespaces).

mod common;

use std::sync::Arc;

use common::ping;
use netmatrix_lab::net::netns;
use netmatrix_lab::net::network;
use netmatrix_lab::net::services;
use netmatrix_lab::net::topology::{KUBERNETES_SVC, Overlay, Topology, random_prefix};
use netmatrix_lab::{Fault, Lab};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Removes the plan's namespaces when dropped, also on panic.
struct Built(Topology);

impl Drop for Built {
    fn drop(&mut self) {
        for e in network::destroy(&self.0) {
            eprintln!("cleanup: {e}");
        }
    }
}

fn build(overlay: Overlay) -> Built {
    common::require_root();
    let t = Topology::plan(&random_prefix(), 3, overlay).expect("plan");
    let built = Built(t);
    network::build(&built.0).expect("build the network");
    for node in &built.0.nodes {
        services::install(&built.0, node).expect("service rules");
    }
    built
}

fn check_pod_mesh(t: &Topology) {
    common::assert_pod_mesh(t);
    for from in &t.nodes {
        // Pods reach node addresses over the underlay (masqueraded).
        assert!(ping(&from.agent.netns, "198.18.0.1"));
    }
}

#[test]
fn vxlan_pods_reach_each_other_and_overlay_down_isolates_one_node() {
    let built = build(Overlay::Vxlan);
    let t = &built.0;
    check_pod_mesh(t);
    let range = netns::sysctl_get(&t.nodes[1].agent.netns, "net.ipv4.ping_group_range").unwrap();
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["0", "2147483647"]
    );

    let n2 = &t.nodes[1];
    for peer in t.nodes.iter().filter(|p| p.index != 2) {
        network::disconnect_peer(t.overlay, n2, peer).unwrap();
    }
    assert!(
        !ping(&n2.agent.netns, "10.244.1.2"),
        "node-2 -> others broken"
    );
    assert!(
        !ping(&t.nodes[0].agent.netns, "10.244.2.3"),
        "others -> node-2 broken"
    );
    assert!(ping(&n2.agent.netns, "10.244.2.3"), "same node still fine");
    assert!(
        ping(&t.nodes[0].agent.netns, "10.244.3.2"),
        "others still fine"
    );
    assert!(ping(&n2.agent.netns, "198.18.0.1"), "underlay still fine");
    for peer in t.nodes.iter().filter(|p| p.index != 2) {
        network::connect_peer(t.overlay, n2, peer).unwrap();
    }
    check_pod_mesh(t);
}

#[test]
fn host_gw_pods_reach_each_other() {
    let built = build(Overlay::HostGw);
    check_pod_mesh(&built.0);
}

/// `GET /version` over TLS to 10.96.0.1:443 from inside a pod namespace.
async fn apiserver_version(lab: &Lab, pod_netns: &str) -> std::io::Result<String> {
    let target = std::net::SocketAddr::from(KUBERNETES_SVC);
    let ns = pod_netns.to_string();
    let tcp = tokio::task::spawn_blocking(move || {
        netns::in_netns(&ns, move || {
            let s =
                std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(3))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)?;
    let tcp = tokio::net::TcpStream::from_std(tcp)?;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(lab.pki().ca_cert_pem.as_bytes()) {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("kubernetes.default.svc")
        .map_err(std::io::Error::other)?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let request = format!(
        "GET /version HTTP/1.1\r\nHost: kubernetes.default.svc\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        lab.pki().token
    );
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn dig(ns: &str, name: &str, kind: &str) -> String {
    netns::run(
        Some(ns),
        "dig",
        &["@10.96.0.10", name, kind, "+short", "+time=1", "+tries=1"],
    )
    .unwrap_or_else(|e| format!("dig failed: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_the_apiserver_emulator_and_dns() {
    let lab = common::lab(false).await;
    let t = lab.topology().clone();
    for node in &t.nodes {
        let answer = apiserver_version(&lab, &node.agent.netns)
            .await
            .unwrap_or_else(|e| panic!("{}: GET /version via 10.96.0.1:443: {e}", node.name));
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{}: {answer}",
            node.name
        );
        assert!(answer.contains("gitVersion"), "{}: {answer}", node.name);

        let a = dig(
            &node.agent.netns,
            "kubernetes.default.svc.cluster.local.",
            "A",
        );
        assert_eq!(a.trim(), "10.96.0.1", "{}", node.name);
        let srv = dig(
            &node.companion.netns,
            "_metrics._tcp.netmatrix-agents.netmatrix.svc.cluster.local.",
            "SRV",
        );
        assert_eq!(srv.lines().count(), t.nodes.len(), "{}: {srv}", node.name);
    }

    // service-route: connect() fails at once with "network is unreachable".
    lab.fault(Fault::service_route("node-3")).unwrap();
    let err = apiserver_version(&lab, &t.nodes[2].agent.netns)
        .await
        .expect_err("no route to the service network");
    assert!(err.to_string().contains("unreachable"), "{err}");
    // dns-stop, heal.
    lab.fault(Fault::dns_stop()).unwrap();
    assert!(
        dig(
            &t.nodes[0].agent.netns,
            "kubernetes.default.svc.cluster.local.",
            "A"
        )
        .contains("failed")
            || dig(
                &t.nodes[0].agent.netns,
                "kubernetes.default.svc.cluster.local.",
                "A"
            )
            .trim()
            .is_empty()
    );
    let healed = lab.heal().unwrap();
    assert_eq!(healed.len(), 2);
    assert!(
        apiserver_version(&lab, &t.nodes[2].agent.netns)
            .await
            .is_ok()
    );
    let a = dig(
        &t.nodes[1].agent.netns,
        "kubernetes.default.svc.cluster.local.",
        "A",
    );
    assert_eq!(a.trim(), "10.96.0.1");

    let prefix = lab.prefix().to_string();
    lab.down().await;
    assert!(
        netns::list().iter().all(|n| !n.starts_with(&prefix)),
        "namespaces left: {:?}",
        netns::list()
    );
}

/// A test that panics with a lab in hand leaves nothing behind: `Drop` runs
/// during unwinding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_leaves_no_namespace_behind() {
    common::require_root();
    let prefix = random_prefix();
    let p = prefix.clone();
    let outcome = tokio::spawn(async move {
        let _lab = Lab::up(netmatrix_lab::LabConfig {
            components: false,
            prefix: Some(p),
            ..Default::default()
        })
        .await
        .expect("lab up");
        assert!(netmatrix_lab::net::netns::exists(&format!(
            "{}-sw",
            _lab.prefix()
        )));
        panic!("on purpose");
    })
    .await;
    assert!(outcome.is_err_and(|e| e.is_panic()));
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!netmatrix_lab::state::StateDir::of(&prefix).path().exists());
}
