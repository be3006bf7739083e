//! Hostile input against a running lab, as an attacker inside the cluster
//! would try it: forged reports (no token, another agent's token, a stolen
//! `/status` body), replays, times from the future and the past, odd names
//! and values, oversized bodies, and slow and idle connections. Every
//! request goes to the aggregator through the lab's forwarder on
//! 127.0.0.1; the stolen body is read from an agent's loopback inside its
//! pod's namespace.
//!
//! Each attack gets its 4xx; afterwards the matrix is still healthy, no
//! finding was raised, the real agents kept reporting (their tokens rotated
//! twice meanwhile), the rejections are counted exactly, and the
//! aggregator's memory and open files stayed bounded.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use common::WAIT;
use netmatrix_api::{ApiError, PINGLIST_PATH, REPORTS_PATH, Report};
use netmatrix_lab::lab::AgentNetwork;
use netmatrix_lab::view::all_pod_cells_ok;
use netmatrix_lab::{Lab, LabConfig, Snapshot, net::netns};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn healthy(s: &Snapshot) -> bool {
    all_pod_cells_ok(&s.matrix, 3) && s.findings.findings.is_empty()
}

/// One hostile request and what it must get.
struct Case {
    name: &'static str,
    token: Option<String>,
    body: Vec<u8>,
    status: u16,
    reason: &'static str,
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut request = http
        .post(format!("{url}{REPORTS_PATH}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the aggregator answers");
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap_or_default().to_vec())
}

/// The aggregator's resident memory (KiB) and open files.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A report with `mutate` applied to a copy of `base`, encoded.
fn with(base: &Report, mutate: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = serde_json::to_value(base).unwrap();
    mutate(&mut v);
    serde_json::to_vec(&v).unwrap()
}

use netmatrix_runtime::now_unix_ms as now_ms;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reports_and_connections_change_nothing() {
    common::require_root();
    common::init_tracing();
    let lab = Lab::up(LabConfig {
        // Tokens rotate every 8 s: the agents go through two rotations
        // while the attacks run.
        token_ttl: Duration::from_secs(10),
        ..LabConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    lab.wait_for("a healthy lab", WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = lab.aggregator_url();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let pid = lab
        .state_dir()
        .pid("aggregator")
        .expect("the aggregator's pid");
    let log = lab.state_dir().file("aggregator.log");
    let metrics_before = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reports_before = metric(&metrics_before, "netmatrix_reports_total");
    let first_token = lab.agent_token("node-2", AgentNetwork::Pod).unwrap();
    let log_before = std::fs::metadata(&log).map_or(0, |m| m.len());
    let (rss_before, fds_before) = usage(pid);

    // What an attacker can get: node-2's last report from its agent, and
    // node-3's and node-2's host agent's tokens (a compromised pod each).
    let topo = lab.topology();
    let node2 = topo.node("node-2").unwrap();
    let stolen = lab
        .agent_last_round("node-2", AgentNetwork::Pod)
        .unwrap()
        .expect("node-2's agent has completed a round");
    assert_eq!(stolen.agent.node, "node-2");
    let node2_token = lab.agent_token("node-2", AgentNetwork::Pod).unwrap();
    let node3_token = lab.agent_token("node-3", AgentNetwork::Pod).unwrap();
    let host2_token = lab.agent_token("node-2", AgentNetwork::Host).unwrap();
    let stolen_body = serde_json::to_vec(&stolen).unwrap();
    // "Every peer failed", as node-2.
    let all_failed = with(&stolen, |v| {
        for peer in v["peers"].as_array_mut().unwrap() {
            peer["icmp"]["received"] = 0.into();
        }
        v["round"] = (stolen.round + 1000).into();
        v["started_unix_ms"] = now_ms().into();
    });
    let fresh = |mutate: fn(&mut Value)| {
        with(&stolen, |v| {
            v["round"] = (stolen.round + 2000).into();
            v["started_unix_ms"] = now_ms().into();
            mutate(v);
        })
    };
    let cases = vec![
        Case {
            name: "forged, no token",
            token: None,
            body: all_failed.clone(),
            status: 401,
            reason: "unauthenticated",
        },
        Case {
            name: "forged, made-up token",
            token: Some("eyJhbGciOiJub25lIn0.e30.".into()),
            body: all_failed.clone(),
            status: 401,
            reason: "unauthenticated",
        },
        Case {
            name: "forged, node-3's token",
            token: Some(node3_token.clone()),
            body: all_failed.clone(),
            status: 403,
            reason: "forbidden",
        },
        Case {
            name: "forged, node-2's host agent's token",
            token: Some(host2_token),
            body: all_failed.clone(),
            status: 403,
            reason: "forbidden",
        },
        Case {
            name: "stolen /status body, no token",
            token: None,
            body: stolen_body.clone(),
            status: 401,
            reason: "unauthenticated",
        },
        Case {
            name: "stolen /status body, node-3's token",
            token: Some(node3_token.clone()),
            body: stolen_body.clone(),
            status: 403,
            reason: "forbidden",
        },
        Case {
            name: "replay of node-2's report, node-2's token",
            token: Some(node2_token.clone()),
            body: stolen_body.clone(),
            status: 409,
            reason: "stale",
        },
        Case {
            name: "start time an hour ahead",
            token: Some(node2_token.clone()),
            body: fresh(|v| v["started_unix_ms"] = (now_ms() + 3_600_000).into()),
            status: 400,
            reason: "invalid",
        },
        Case {
            name: "start time u64::MAX, interval u64::MAX",
            token: Some(node2_token.clone()),
            body: fresh(|v| {
                v["started_unix_ms"] = u64::MAX.into();
                v["interval_ms"] = u64::MAX.into();
            }),
            status: 400,
            reason: "invalid",
        },
        Case {
            name: "start time a day ago",
            token: Some(node2_token.clone()),
            body: fresh(|v| v["started_unix_ms"] = (now_ms() - 86_400_000).into()),
            status: 400,
            reason: "invalid",
        },
        Case {
            name: "200,000-character pod name",
            token: Some(node2_token.clone()),
            body: fresh(|v| v["agent"]["pod"] = "x".repeat(200_000).into()),
            status: 400,
            reason: "invalid",
        },
        Case {
            name: "newline in the node name",
            token: Some(node2_token.clone()),
            body: fresh(|v| {
                v["agent"]["node"] = "node-2\n2099-01-01T00:00:00Z ERROR FORGED-LINE".into()
            }),
            status: 400,
            reason: "invalid",
        },
        Case {
            name: "negative RTT",
            token: Some(node2_token.clone()),
            body: fresh(|v| v["peers"][0]["icmp"]["rtt_avg_ms"] = (-5.0).into()),
            status: 400,
            reason: "invalid",
        },
        Case {
            name: "RTT 1e308",
            token: Some(node2_token.clone()),
            body: fresh(|v| v["peers"][0]["icmp"]["rtt_max_ms"] = 1e308.into()),
            status: 400,
            reason: "invalid",
        },
        Case {
            name: "more echoes received than sent",
            token: Some(node2_token.clone()),
            body: fresh(|v| v["peers"][0]["icmp"]["received"] = 1_000_000.into()),
            status: 400,
            reason: "invalid",
        },
        Case {
            name: "one peer listed 800 times",
            token: Some(node2_token.clone()),
            body: fresh(|v| {
                let peer = v["peers"][0].clone();
                v["peers"] = Value::Array(vec![peer; 800]);
            }),
            status: 400,
            reason: "invalid",
        },
        Case {
            name: "10,000 check names",
            token: Some(node2_token.clone()),
            // Short entries: 10,000 fit in the 1 MiB body limit.
            body: fresh(|v| {
                v["services"] = (0..10_000)
                    .map(|i| {
                        serde_json::json!({"kind": "clusterip", "name": format!("c{i}"),
                            "target": "10.96.0.10:53", "ok": true})
                    })
                    .collect();
            }),
            status: 400,
            reason: "invalid",
        },
        Case {
            name: "not JSON",
            token: Some(node2_token.clone()),
            body: b"{\"agent\": [".to_vec(),
            status: 400,
            reason: "invalid",
        },
    ];
    let mut table = Vec::new();
    let mut expected_rejections: std::collections::BTreeMap<&str, u32> = Default::default();
    for case in &cases {
        let (status, body) = post(&http, &url, case.token.as_deref(), case.body.clone()).await;
        let error: ApiError = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{}: not an API error: {body:?}", case.name));
        table.push(format!(
            "| {} | {status} {} | {} bytes: {} |",
            case.name,
            error.reason,
            body.len(),
            error.message
        ));
        assert_eq!(
            (status, error.reason.as_str()),
            (case.status, case.reason),
            "{}: {}",
            case.name,
            error.message
        );
        assert!(
            body.len() < 300,
            "{}: {} bytes answered",
            case.name,
            body.len()
        );
        *expected_rejections.entry(case.reason).or_default() += 1;
    }

    // A Content-Length of 10^12, refused before any body is sent.
    let mut raw = TcpStream::connect(lab.forward_addr()).await.unwrap();
    raw.write_all(
        format!(
            "POST {REPORTS_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {node2_token}\r\ncontent-type: application/json\r\ncontent-length: 1000000000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut head))
        .await
        .expect("answered without the body")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("too-large"), "{head}");
    table.push("| Content-Length: 10^12, no body sent | 413 too-large, at once | |".into());
    *expected_rejections.entry("too-large").or_default() += 1;
    drop(raw);

    // Forged tokens by the hundred, shaped like the agents' (our audience,
    // not expired, bound to node-2's agent pod by name) but with made-up
    // UIDs and no valid signature: refused without one TokenReview each.
    let reviews_before = lab.token_reviews();
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    for i in 0..200 {
        let claims = serde_json::json!({
            "aud": ["netmatrix"],
            "exp": now_ms() / 1000 + 3600,
            "kubernetes.io": {"namespace": "netmatrix",
                "pod": {"name": node2.agent.name, "uid": format!("00000000-0000-4000-8000-{i:012}")}},
        });
        let forged = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"ES256"}"#),
            b64(claims.to_string().as_bytes()),
            b64(b"not a signature")
        );
        let (status, body) = post(&http, &url, Some(&forged), all_failed.clone()).await;
        let error: ApiError = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, error.reason.as_str()), (403, "forbidden"));
    }
    let reviews_spent = lab.token_reviews() - reviews_before;
    // The agents' own rotations may need a few meanwhile, never 200.
    assert!(
        reviews_spent <= 12,
        "{reviews_spent} reviews for 200 forged tokens"
    );
    table.push(format!(
        "| 200 forged JWTs (our audience, node-2's pod name, made-up UIDs) | 403 forbidden each | TokenReviews meanwhile: {reviews_spent} (only the agents' own rotations may cause any) |"
    ));
    *expected_rejections.entry("forbidden").or_default() += 200;

    // Pinglists: an agent's own, with its own token, and nobody else's
    // (the tokens as the agents hold them now: they rotate every 8 s here).
    let node2_token = lab.agent_token("node-2", AgentNetwork::Pod).unwrap();
    let node3_token = lab.agent_token("node-3", AgentNetwork::Pod).unwrap();
    let pinglist = |token: Option<&str>, node: &str, etag: Option<&str>| {
        let mut request = http.get(format!("{url}{PINGLIST_PATH}/{node}?wait=25"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(etag) = etag {
            request = request.header("if-none-match", format!("\"{etag}\""));
        }
        request.send()
    };
    let own = pinglist(Some(&node2_token), "node-2", None).await.unwrap();
    assert_eq!(own.status(), 200);
    let etag = own.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    for (what, token, node, want) in [
        ("no token", None, "node-2", 401),
        ("a token that is no JWT", Some("x.y.z"), "node-2", 401),
        (
            "node-3's token, node-2's list",
            Some(node3_token.as_str()),
            "node-2",
            403,
        ),
        (
            "node-2's token, node-3's list",
            Some(node2_token.as_str()),
            "node-3",
            403,
        ),
    ] {
        let answer = pinglist(token, node, None).await.unwrap();
        assert_eq!(answer.status().as_u16(), want, "{what}");
        table.push(format!("| GET pinglist/{node}, {what} | {want} | |"));
    }
    *expected_rejections.entry("unauthenticated").or_default() += 2;
    // 60 polls held open by one client (the forwarder's address; 64 is the
    // cap per address): the agents keep their polls and their reports.
    let polls: Vec<_> = (0..60)
        .map(|_| tokio::spawn(pinglist(Some(&node2_token), "node-2", Some(&etag))))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    lab.wait_for("healthy while 60 polls are held", WAIT, healthy)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let held = polls.iter().filter(|p| !p.is_finished()).count();
    assert!(held >= 55, "only {held} of 60 polls held");
    table.push(format!(
        "| 60 pinglist long polls held from one address | {held} held (≤ 25 s each); reports and the agents' own polls unaffected | |"
    ));
    for poll in polls {
        poll.abort();
    }

    // Slow and idle connections: 300 idle, 50 sending headers a byte at a
    // time, 20 stalling in a 1 MB body. Through the forwarder they all come
    // from one address: 64 are served, the rest closed at once.
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(TcpStream::connect(lab.forward_addr()).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(lab.forward_addr()).await.unwrap();
        s.write_all(b"POST /api/v1/reports HTTP/1.1\r\nhost: ")
            .await
            .unwrap();
        slow.push(s);
    }
    for _ in 0..20 {
        let mut s = TcpStream::connect(lab.forward_addr()).await.unwrap();
        s.write_all(
            format!(
                "POST {REPORTS_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {node2_token}\r\ncontent-type: application/json\r\ncontent-length: 1048000\r\n\r\n{{\"agent\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        s.write_all(&vec![b' '; 64 * 1024]).await.unwrap();
        held.push(s);
    }
    // Keep the slow ones trickling while waiting for the server to cut them.
    let mut peak = (0u64, 0usize);
    let mut open = held.len() + slow.len();
    while open > 0 && started.elapsed() < Duration::from_secs(40) {
        for s in &mut slow {
            let _ = s.write_all(b"x").await;
        }
        let (rss, fds) = usage(pid);
        peak = (peak.0.max(rss), peak.1.max(fds));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Closed means end of stream (or a reset): an answer alone is not.
        open = 0;
        for s in held.iter_mut().chain(slow.iter_mut()) {
            let mut buf = [0u8; 4096];
            let closed = loop {
                match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
                    Err(_) => break false,
                    Ok(Ok(0) | Err(_)) => break true,
                    Ok(Ok(_)) => continue,
                }
            };
            open += usize::from(!closed);
        }
    }
    let cut_after = started.elapsed();
    assert_eq!(open, 0, "{open} connections still open after {cut_after:?}");
    // The 20 stalled bodies are answered or cut; none counts as a report.
    drop(held);
    drop(slow);
    let (rss_after, fds_after) = usage(pid);
    eprintln!(
        "aggregator under 370 slow/idle connections from one address: RSS {} KiB before, {} KiB peak, {} KiB after; open files {} before, {} peak, {} after; every connection closed by the server within {:.1?}",
        rss_before, peak.0, rss_after, fds_before, peak.1, fds_after, cut_after
    );
    // Bounded: each held connection costs one descriptor (and the forwarder's
    // inner connection), memory stays within a few MiB of the start.
    assert!(
        peak.1 <= fds_before + 400,
        "open files peaked at {}",
        peak.1
    );
    assert!(
        peak.0 <= rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {} KiB",
        peak.0
    );

    // The agents' servers too: a neighbour pod on node-2 opens 40 idle
    // connections to node-2's agent; the kubelet (the node's address) still
    // gets its /healthz answered, and the neighbour's connections are cut.
    let agent_addr = SocketAddr::from((node2.agent.ip, 9090));
    let companion_ns = node2.companion.netns.clone();
    let mut neighbour = Vec::new();
    for _ in 0..40 {
        let ns = companion_ns.clone();
        let stream = tokio::task::spawn_blocking(move || {
            netns::in_netns(&ns, move || {
                let s = std::net::TcpStream::connect(agent_addr)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
        })
        .await
        .unwrap()
        .expect("a connection from the neighbour pod");
        neighbour.push(TcpStream::from_std(stream).unwrap());
    }
    let node_ns = node2.netns.clone();
    let healthz = tokio::task::spawn_blocking(move || {
        let mut stream = netns::in_netns(&node_ns, move || {
            let s = std::net::TcpStream::connect(agent_addr)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok(s)
        })?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(answer)
    })
    .await
    .unwrap()
    .expect("the kubelet's probe is answered");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    let started = Instant::now();
    let mut open = neighbour.len();
    let mut open_at_first_look = None;
    while open > 0 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        open = 0;
        for s in &mut neighbour {
            let mut buf = [0u8; 1024];
            let closed = matches!(
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await,
                Ok(Ok(0) | Err(_))
            );
            open += usize::from(!closed);
        }
        open_at_first_look.get_or_insert(open);
    }
    assert_eq!(open, 0, "{open} idle connections to the agent still open");
    let first = open_at_first_look.unwrap_or(0);
    assert!(
        first <= 8,
        "{first} of 40 kept from one address (at most 8)"
    );
    table.push(format!(
        "| 40 idle connections from a neighbour pod to node-2's agent :9090 | {first} kept, the others closed at once; the kubelet's /healthz answered meanwhile; all closed within {:.1?} | |",
        started.elapsed()
    ));
    drop(neighbour);

    // Nothing changed: the cluster is healthy and stays so, with the real
    // agents reporting through two token rotations.
    lab.hold_for(
        "the matrix to stay healthy",
        Duration::from_secs(6),
        healthy,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let rotated = lab.agent_token("node-2", AgentNetwork::Pod).unwrap();
    assert_ne!(rotated, first_token, "the agents' tokens were rotated");
    let metrics_after = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reports_after = metric(&metrics_after, "netmatrix_reports_total");
    // Six agents, a report a second each, for at least 16 s.
    assert!(
        reports_after >= reports_before + 6.0 * 12.0,
        "the agents kept reporting: {reports_before} -> {reports_after}"
    );
    for (reason, count) in &expected_rejections {
        let series = format!("netmatrix_reports_rejected_total{{reason=\"{reason}\"}}");
        let before = metric(&metrics_before, &series);
        let after = metric(&metrics_after, &series);
        // The stalled bodies may add to `invalid` (cut off mid-body).
        let extra = if *reason == "invalid" { 20.0 } else { 0.0 };
        assert!(
            after - before >= f64::from(*count) && after - before <= f64::from(*count) + extra,
            "{series}: {before} -> {after}, expected +{count}"
        );
    }
    // The log got short, escaped lines: no forged line, no 200k name.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.lines().any(|l| l.starts_with("2099-01-01")),
        "a newline in a name forged a log line"
    );
    let grown = std::fs::metadata(&log).map_or(0, |m| m.len()) - log_before;
    assert!(
        grown < 64 * 1024,
        "the aggregator's log grew by {grown} bytes"
    );

    eprintln!(
        "| attack | answer | body |\n|---|---|---|\n{}",
        table.join("\n")
    );
    lab.down().await;
}
