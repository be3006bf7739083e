//! The lab's DNS server over real UDP and TCP sockets on loopback, queried
//! two ways: by hickory-resolver configured as the agents configure it (one
//! server, no cache, one attempt), which is what the agents' DNS probes see,
//! and by `dig` (dnsutils), the tool an operator would use.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use netmatrix_lab::emulator::cluster::{self, ClusterState};
use netmatrix_lab::emulator::dns::{self, DnsControl, NEGATIVE_TTL};

const AGENTS_SRV: &str = "_metrics._tcp.netmatrix-agents.netmatrix.svc.cluster.local.";

async fn start() -> (ClusterState, DnsControl, TokioResolver, SocketAddr) {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
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
    (state, control, resolver(addr), addr)
}

fn resolver(server: SocketAddr) -> TokioResolver {
    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut ns.connections {
        connection.port = server.port();
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_millis(500);
    opts.attempts = 1;
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ndots = 0;
    Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .unwrap()
}

async fn a(resolver: &TokioResolver, name: &str) -> Result<Vec<String>, NetError> {
    let lookup = resolver.ipv4_lookup(name).await?;
    let mut ips: Vec<String> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    ips.sort();
    Ok(ips)
}

#[tokio::test]
async fn clusterip_and_headless_services_resolve() {
    let (state, _control, resolver, _) = start().await;
    assert_eq!(
        a(&resolver, "kubernetes.default.svc.cluster.local.")
            .await
            .unwrap(),
        ["10.96.0.1"]
    );
    assert_eq!(
        a(&resolver, "netmatrix-agents.netmatrix.svc.cluster.local.")
            .await
            .unwrap(),
        ["10.244.1.2", "10.244.2.2"]
    );

    let srv = resolver.srv_lookup(AGENTS_SRV).await.unwrap();
    assert_eq!(srv.answers().len(), 2);
    let glue: Vec<_> = srv
        .additionals()
        .iter()
        .filter(|r| matches!(r.data, RData::A(_)))
        .collect();
    assert_eq!(glue.len(), 2, "the targets' A records come along");

    // The answers follow the cluster: a pod that stops running leaves them.
    state.set_pod_phase("netmatrix", "a2", "Failed");
    let srv = resolver.srv_lookup(AGENTS_SRV).await.unwrap();
    assert_eq!(srv.answers().len(), 1);
}

#[tokio::test]
async fn negative_answers_carry_the_soa_ttl() {
    let (_state, control, resolver, _) = start().await;
    let err = a(&resolver, "nothing.default.svc.cluster.local.")
        .await
        .unwrap_err();
    let NetError::Dns(DnsError::NoRecordsFound(nr)) = &err else {
        panic!("expected NXDOMAIN, got {err:?}");
    };
    assert_eq!(nr.response_code, ResponseCode::NXDomain);
    assert_eq!(nr.negative_ttl, Some(NEGATIVE_TTL));

    // NODATA: the name exists, not with this type.
    let err = resolver
        .srv_lookup("kubernetes.default.svc.cluster.local.")
        .await
        .unwrap_err();
    let NetError::Dns(DnsError::NoRecordsFound(nr)) = &err else {
        panic!("expected NODATA, got {err:?}");
    };
    assert_eq!(nr.response_code, ResponseCode::NoError);

    // A hidden endpoint: the record the API still has is gone from DNS.
    control.hide("10-244-2-2.netmatrix-agents.netmatrix.svc.cluster.local");
    assert_eq!(
        resolver
            .srv_lookup(AGENTS_SRV)
            .await
            .unwrap()
            .answers()
            .len(),
        1
    );
    control.unhide("10-244-2-2.netmatrix-agents.netmatrix.svc.cluster.local");

    let err = a(&resolver, "example.com.").await.unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn fault_switches() {
    let (_state, control, resolver, _) = start().await;
    control.set_servfail(true);
    let err = a(&resolver, "kubernetes.default.svc.cluster.local.")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))
        ),
        "{err:?}"
    );
    control.set_servfail(false);

    control.set_silent(true);
    let err = a(&resolver, "kubernetes.default.svc.cluster.local.")
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Timeout), "{err:?}");
    control.set_silent(false);
    assert!(
        a(&resolver, "kubernetes.default.svc.cluster.local.")
            .await
            .is_ok()
    );
    assert!(control.queries() >= 3);
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
            .expect("dig (dnsutils) is installed by scripts/setup-test");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_a_srv_and_negative_queries_over_udp_and_tcp() {
    let (state, control, _, addr) = start().await;
    let port = addr.port();

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
