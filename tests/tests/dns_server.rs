//! The lab's DNS server over real UDP and TCP sockets on loopback, queried
//! with `dig` (dnsutils), the tool an operator would use.

use std::process::Command;

use netmatrix_lab::cluster::{self, ClusterState};
use netmatrix_lab::dns::{self, DnsControl};

async fn start() -> (ClusterState, DnsControl, u16) {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = udp.local_addr().unwrap().port();
    let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let state = ClusterState::new();
    state.apply_service(cluster::service(
        "default",
        "kubernetes",
        Some("10.96.0.1"),
        &[("https", 443, "TCP")],
        &[],
    ));
    state.apply_service(cluster::service(
        "netmatrix",
        "netmatrix-agents",
        None,
        &[("metrics", 9090, "TCP")],
        &[("app", "agent")],
    ));
    for (name, ip) in [("a1", "10.244.1.2"), ("a2", "10.244.2.2")] {
        state.apply_pod(cluster::pod(
            "netmatrix",
            name,
            "n",
            ip,
            &[("app", "agent")],
            false,
        ));
    }
    let control = DnsControl::default();
    tokio::spawn(dns::serve(
        udp,
        tcp,
        state.clone(),
        "cluster.local",
        control.clone(),
    ));
    (state, control, port)
}

/// `dig` in a blocking thread; returns its full output.
async fn dig(port: u16, args: &[&str]) -> String {
    let mut all = vec!["@127.0.0.1".to_owned(), "-p".to_owned(), port.to_string()];
    all.extend(["+time=2", "+tries=1"].map(str::to_owned));
    all.extend(args.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        let out = Command::new("dig")
            .args(&all)
            .output()
            .expect("dig (dnsutils) is installed by scripts/setup");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_a_srv_and_negative_queries_over_udp_and_tcp() {
    let (state, control, port) = start().await;

    let a = dig(
        port,
        &["+short", "kubernetes.default.svc.cluster.local", "A"],
    )
    .await;
    assert_eq!(a.trim(), "10.96.0.1");
    let tcp = dig(
        port,
        &[
            "+tcp",
            "+short",
            "kubernetes.default.svc.cluster.local",
            "A",
        ],
    )
    .await;
    assert_eq!(tcp.trim(), "10.96.0.1");

    let srv = dig(
        port,
        &[
            "_metrics._tcp.netmatrix-agents.netmatrix.svc.cluster.local",
            "SRV",
        ],
    )
    .await;
    assert!(srv.contains("ANSWER: 2"), "{srv}");
    assert!(
        srv.contains("10-244-2-2.netmatrix-agents.netmatrix.svc.cluster.local."),
        "{srv}"
    );
    assert!(
        srv.contains("ADDITIONAL: 3"),
        "two A records plus OPT: {srv}"
    );

    // A new pod shows up at once (the server reads the cluster state per query).
    state.apply_pod(cluster::pod(
        "netmatrix",
        "a3",
        "n",
        "10.244.3.2",
        &[("app", "agent")],
        false,
    ));
    let srv = dig(
        port,
        &[
            "_metrics._tcp.netmatrix-agents.netmatrix.svc.cluster.local",
            "SRV",
        ],
    )
    .await;
    assert!(srv.contains("ANSWER: 3"), "{srv}");

    let nx = dig(port, &["nothing.default.svc.cluster.local", "A"]).await;
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(
        nx.contains("\t30\tIN\tSOA"),
        "negative TTL 30 s in the SOA: {nx}"
    );

    control.set_servfail(true);
    let fail = dig(port, &["kubernetes.default.svc.cluster.local", "A"]).await;
    assert!(fail.contains("status: SERVFAIL"), "{fail}");
    control.set_servfail(false);
    assert_eq!(control.queries(), 6, "one query per dig call");
}
