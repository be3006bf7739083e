//! Property tests: random bytes, mutated real reports and random structured
//! reports go through the aggregator's whole path (parse, validate, store,
//! matrix, diagnosis, metrics, both matrix encodings) without a panic, and
//! nothing a client chose leaks out of range into what is served.

use std::sync::atomic::{AtomicU64, Ordering};

use netmatrix_aggregator::auth::{Caller, Sender};
use netmatrix_aggregator::config::Settings;
use netmatrix_aggregator::inventory::{AgentPod, Inventory, InventorySource, NodeInfo};
use netmatrix_aggregator::published::Form;
use netmatrix_aggregator::state::Aggregator;
use netmatrix_api::fixtures::{self, identity};
use netmatrix_api::{
    DnsResult, EchoResult, ErrorKind, NetworkMode, PeerResult, PeerSource, ProbeError, RecordType,
    Report, ServiceKind, ServiceResult,
};
use proptest::prelude::*;

static NOW: AtomicU64 = AtomicU64::new(1_800_000_000_000);

fn clock() -> u64 {
    NOW.load(Ordering::Relaxed)
}

/// Nodes `node-1` to `node-3`, each with its agent `agent-N` (UID
/// `uid-agent-N`, IP `10.244.N.2`), as the watch would list them; an
/// aggregator with a 5 s interval checking senders against them.
fn verified_aggregator() -> Aggregator {
    let mut inventory = Inventory {
        synced: true,
        ..Default::default()
    };
    for n in 1..=3 {
        inventory.nodes.insert(
            format!("node-{n}"),
            NodeInfo {
                pod_cidrs: vec![format!("10.244.{n}.0/24").parse().unwrap()],
                ready: true,
                created_unix_ms: Some(0),
                unschedulable: false,
            },
        );
        inventory.agents.insert(
            format!("node-{n}"),
            vec![AgentPod {
                name: format!("agent-{n}"),
                uid: format!("uid-agent-{n}"),
                ips: vec![format!("10.244.{n}.2").parse().unwrap()],
                network: NetworkMode::Pod,
                started_unix_ms: Some(0),
                labels: Default::default(),
                named_ports: Default::default(),
            }],
        );
    }
    Aggregator::new(
        InventorySource::Fixed(std::sync::Arc::new(inventory)),
        Settings::default(),
    )
    .expect("metrics registry")
    .with_clock(clock)
}

/// `--no-kubernetes`: every well-formed report is stored, so the random
/// ones reach the matrix, the rules and the metrics.
fn aggregator() -> Aggregator {
    Aggregator::new(InventorySource::Unverified, Settings::default())
        .expect("metrics registry")
        .with_clock(clock)
}

fn real_report() -> Report {
    let echo = |received| EchoResult {
        sent: 3,
        received,
        rtt_min_ms: Some(0.2),
        rtt_avg_ms: Some(0.3),
        rtt_max_ms: Some(0.5),
        error: (received < 3).then(|| ProbeError::new(ErrorKind::Timeout, "no echo reply in 1s")),
    };
    Report {
        round: 7,
        started_unix_ms: clock(),
        peers: vec![
            PeerResult {
                mtu: Some(echo(0)),
                ..fixtures::peer("node-2", "netmatrix-agent-fghij", "10.244.2.2", echo(3))
            },
            fixtures::peer("node-1", "netmatrix-companion-x", "10.244.1.3", echo(2)),
        ],
        services: vec![ServiceResult {
            kind: ServiceKind::Apiserver,
            name: "kubernetes".into(),
            target: "10.96.0.1:443".into(),
            ok: false,
            reached: None,
            latency_ms: Some(2.0),
            error: Some(ProbeError::new(
                ErrorKind::Unreachable,
                "dial tcp 10.96.0.1:443: connect: network is unreachable",
            )),
        }],
        dns: vec![DnsResult {
            name: "kubernetes.default.svc.cluster.local.".into(),
            record: RecordType::A,
            ok: true,
            latency_ms: Some(1.0),
            answers: vec!["10.96.0.1".into()],
            expected: vec!["10.96.0.1".into()],
            pending: vec![],
            error: None,
        }],
        peer_source: PeerSource::Api,
        mtu_probe_bytes: Some(1450),
        ..fixtures::report(identity("node-1", "netmatrix-agent-abcde", "10.244.1.2"))
    }
}

/// Everything served after a round: nothing panics, and no number a client
/// chose is out of range.
fn serve_everything(aggregator: &Aggregator) {
    aggregator.evaluate();
    let matrix = aggregator.matrix();
    for row in matrix.rows.iter().chain(&matrix.host_rows) {
        for cell in &row.cells {
            assert!(
                cell.loss.is_none_or(|l| (0.0..=1.0).contains(&l)),
                "{cell:?}"
            );
            for rtt in [cell.rtt_avg_ms, cell.rtt_max_ms].into_iter().flatten() {
                assert!(rtt.is_finite() && rtt >= 0.0, "{cell:?}");
            }
        }
    }
    let text = aggregator.metrics().encode().expect("metrics encode");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            !matches!(value, "+Inf" | "-Inf" | "NaN" | "inf" | "nan")
                || line.contains("le=\"+Inf\""),
            "{line}"
        );
    }
    let published = aggregator.published();
    published.encoded(Form::Full).expect("full matrix encodes");
    published
        .encoded(Form::Compact)
        .expect("compact matrix encodes");
}

fn ingest(aggregator: &Aggregator, body: &[u8]) {
    // Either refused or stored; never a panic.
    let _ = aggregator.ingest(body, &Sender::Unverified);
}

/// A Kubernetes name, or now and then anything.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => "[a-z0-9][a-z0-9.-]{0,20}[a-z0-9]",
        1 => ".{0,40}",
        1 => Just(String::new()),
        1 => Just("x".repeat(300)),
    ]
}

/// A plausible latency, or now and then any float.
fn latency() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        5 => Just(None),
        20 => (0.0f64..100.0).prop_map(Some),
        1 => any::<f64>().prop_map(Some),
        1 => Just(Some(1e308)),
        1 => Just(Some(-1.0)),
    ]
}

fn echoes() -> impl Strategy<Value = EchoResult> {
    (
        0u32..2000,
        0u32..2000,
        latency(),
        latency(),
        latency(),
        ".{0,80}",
    )
        .prop_map(
            |(sent, received, rtt_min_ms, rtt_avg_ms, rtt_max_ms, message)| EchoResult {
                sent,
                received,
                rtt_min_ms,
                rtt_avg_ms,
                rtt_max_ms,
                error: (!message.is_empty()).then(|| ProbeError::new(ErrorKind::Other, message)),
            },
        )
}

/// Echo counts and RTTs as a real agent measures them.
fn sane_echoes() -> impl Strategy<Value = EchoResult> {
    (
        1u32..10,
        0u32..10,
        0.0f64..50.0,
        0.0f64..50.0,
        "[ -~]{0,400}",
    )
        .prop_map(|(sent, received, a, b, message)| {
            let received = received.min(sent);
            let (low, high) = (a.min(b), a.max(b));
            EchoResult {
                sent,
                received,
                rtt_min_ms: (received > 0).then_some(low),
                rtt_avg_ms: (received > 0).then_some((low + high) / 2.0),
                rtt_max_ms: (received > 0).then_some(high),
                error: (received < sent).then(|| ProbeError::new(ErrorKind::Timeout, message)),
            }
        })
}

/// A report a real agent could send: random, but well-formed.
fn sane_report() -> impl Strategy<Value = Report> {
    (
        1usize..30,
        1u64..1_000_000,
        proptest::collection::vec(
            (
                0usize..30,
                sane_echoes(),
                proptest::option::of(sane_echoes()),
            ),
            0..40,
        ),
    )
        .prop_map(|(node, round, peers)| {
            let mut r = real_report();
            r.agent.node = format!("node-{node}");
            r.agent.pod = format!("agent-{node}");
            r.round = round;
            r.peers = peers
                .into_iter()
                .enumerate()
                .map(|(i, (to, icmp, mtu))| PeerResult {
                    node: format!("node-{to}"),
                    pod: format!("agent-{to}-{i}"),
                    ip: std::net::Ipv4Addr::new(10, 244, (i / 200) as u8, (i % 200) as u8 + 2)
                        .into(),
                    icmp,
                    mtu,
                    tcp: None,
                    udp: None,
                    port: None,
                })
                .collect();
            r
        })
}

fn peer() -> impl Strategy<Value = PeerResult> {
    (
        name(),
        name(),
        any::<[u8; 4]>(),
        echoes(),
        proptest::option::of(echoes()),
    )
        .prop_map(|(node, pod, ip, icmp, mtu)| PeerResult {
            node,
            pod,
            ip: std::net::Ipv4Addr::from(ip).into(),
            icmp,
            mtu,
            tcp: None,
            udp: None,
            port: None,
        })
}

fn report() -> impl Strategy<Value = Report> {
    (
        name(),
        name(),
        any::<u64>(),
        prop_oneof![Just(clock()), any::<u64>()],
        prop_oneof![Just(5000u64), any::<u64>()],
        proptest::collection::vec(peer(), 0..12),
        proptest::collection::vec((name(), ".{0,30}", latency()), 0..8),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(
            |(node, pod, round, started, interval, peers, services, mtu)| {
                let mut r = real_report();
                r.agent.node = node;
                r.agent.pod = pod;
                r.round = round;
                r.started_unix_ms = started;
                r.interval_ms = interval;
                r.peers = peers;
                r.services = services
                    .into_iter()
                    .map(|(name, target, latency_ms)| ServiceResult {
                        kind: ServiceKind::Clusterip,
                        name,
                        target,
                        ok: latency_ms.is_some(),
                        reached: None,
                        latency_ms,
                        error: None,
                    })
                    .collect();
                r.mtu_probe_bytes = mtu;
                r
            },
        )
}

proptest! {
    // 2,500 cases in all, about 20 s in a debug build.
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_bytes_are_refused_quietly(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let aggregator = aggregator();
        ingest(&aggregator, &bytes);
        aggregator.evaluate();
        prop_assert!(aggregator.matrix().nodes.is_empty(), "random bytes made a row");
    }

    #[test]
    fn verified_reports_are_stored_only_for_their_own_pod_and_time(
        cases in proptest::collection::vec((sane_report(), 1usize..=3, 1usize..=3, -1_200_000i64..1_200_000), 1..6)
    ) {
        let aggregator = verified_aggregator();
        for (mut r, claimed, token_of, skew_ms) in cases {
            // The body claims agent `claimed`; the token is agent `token_of`'s.
            r.agent.node = format!("node-{claimed}");
            r.agent.pod = format!("agent-{claimed}");
            r.agent.pod_ip = format!("10.244.{claimed}.2").parse().unwrap();
            r.started_unix_ms = clock().saturating_add_signed(skew_ms);
            let sender = Sender::Agent(Caller {
                service_account: "netmatrix-agent".into(),
                pod: format!("agent-{token_of}"),
                pod_uid: format!("uid-agent-{token_of}"),
                node: None,
            });
            let outcome = aggregator.ingest(&serde_json::to_vec(&r).unwrap(), &sender);
            let in_time = (-600_000..=10_000).contains(&skew_ms);
            if claimed != token_of {
                prop_assert_eq!(outcome.map_err(|e| e.reason()), Err("forbidden"));
            } else if !in_time {
                prop_assert_eq!(outcome.map_err(|e| e.reason()), Err("invalid"));
            } else if let Err(e) = outcome {
                // Only the pod's own earlier-or-equal rounds may be refused.
                prop_assert_eq!(e.reason(), "stale");
            }
        }
        serve_everything(&aggregator);
    }

    #[test]
    fn mutated_real_reports_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..24)
    ) {
        let aggregator = aggregator();
        let mut body = serde_json::to_vec(&real_report()).unwrap();
        for (at, byte, op) in edits {
            let i = at.index(body.len().max(1));
            match op {
                0 if !body.is_empty() => body[i] = byte,
                1 => body.insert(i.min(body.len()), byte),
                _ if !body.is_empty() => { body.remove(i); }
                _ => {}
            }
        }
        ingest(&aggregator, &body);
        serve_everything(&aggregator);
    }

    #[test]
    fn well_formed_reports_are_accepted_and_served_in_range(reports in proptest::collection::vec(sane_report(), 1..4)) {
        let aggregator = aggregator();
        let mut held = std::collections::BTreeMap::new();
        for r in &reports {
            // One report per node and round (a pod's rounds only go up).
            if held.get(&r.agent.node).is_some_and(|&round| round >= r.round) {
                continue;
            }
            held.insert(r.agent.node.clone(), r.round);
            let accepted = aggregator.ingest(&serde_json::to_vec(r).unwrap(), &Sender::Unverified);
            prop_assert!(accepted.is_ok(), "{accepted:?}");
        }
        serve_everything(&aggregator);
    }

    #[test]
    fn random_reports_never_panic_nor_serve_nonsense(reports in proptest::collection::vec(report(), 1..4)) {
        let aggregator = aggregator();
        for r in &reports {
            ingest(&aggregator, &serde_json::to_vec(r).unwrap());
        }
        serve_everything(&aggregator);
    }
}
