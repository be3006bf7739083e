//! Wire values for tests, from one place (cargo feature `fixtures`, which
//! the crates' dev-dependencies enable).
//!
//! Each builder fills what identifies the value and leaves every other
//! field empty, absent or zero, so that a test names what it relies on
//! with struct update syntax:
//!
//! ```text
//! let degraded = Cell { loss: Some(0.5), pods: 2, ..cell("node-2", Status::Degraded) };
//! let round = Report { round: 7, ..report(identity("node-1", "agent-a", "10.244.1.2")) };
//! ```

use crate::{
    AgentIdentity, Cell, CheckCell, CheckColumn, EchoResult, Finding, FindingKind, Matrix,
    MatrixRow, NetworkMode, NodeState, PINGLIST_VERSION, PeerResult, Pinglist, Report, SrvTruth,
    Status,
};

/// The pod-network agent `pod` on `node`, at `pod_ip` (panics when it is
/// not an IP address).
pub fn identity(node: &str, pod: &str, pod_ip: &str) -> AgentIdentity {
    AgentIdentity {
        node: node.to_owned(),
        pod: pod.to_owned(),
        pod_ip: pod_ip.parse().expect("an IP address"),
        network: NetworkMode::Pod,
    }
}

/// Round 1 of `agent`, started at 1 ms, every 5 s, with no results.
pub fn report(agent: AgentIdentity) -> Report {
    Report {
        agent,
        round: 1,
        started_unix_ms: 1,
        interval_ms: 5000,
        peers: Vec::new(),
        services: Vec::new(),
        dns: Vec::new(),
        peer_source: Default::default(),
        mtu_probe_bytes: None,
        dns_server: None,
        sampled: None,
        facts_digest: None,
        facts: None,
    }
}

/// `received` echoes of `sent`, with no RTT and no error.
pub fn echoes(sent: u32, received: u32) -> EchoResult {
    EchoResult {
        sent,
        received,
        ..EchoResult::default()
    }
}

/// The peer pod `pod` on `node` at `ip` (panics when it is not an IP
/// address), probed with ICMP only.
pub fn peer(node: &str, pod: &str, ip: &str, icmp: EchoResult) -> PeerResult {
    PeerResult {
        node: node.to_owned(),
        pod: pod.to_owned(),
        ip: ip.parse().expect("an IP address"),
        icmp,
        mtu: None,
        tcp: None,
        udp: None,
        port: None,
    }
}

/// The cell to `to` of `status`, with no measurement.
pub fn cell(to: &str, status: Status) -> Cell {
    Cell {
        to: to.into(),
        status,
        loss: None,
        rtt_avg_ms: None,
        rtt_max_ms: None,
        pods: 0,
        mtu: None,
        icmp: None,
        tcp: None,
        udp: None,
        blocked: None,
        last_error: None,
        age_ms: None,
        unanswered: Vec::new(),
    }
}

/// The check of `column` of `status`, with no measurement.
pub fn check(column: impl Into<CheckColumn>, status: Status) -> CheckCell {
    CheckCell {
        column: column.into(),
        status,
        latency_ms: None,
        last_error: None,
        age_ms: None,
        blocked: None,
    }
}

/// The row of `node`, Ready and reporting, with `cells` and no checks.
pub fn row(node: &str, cells: Vec<Cell>) -> MatrixRow {
    MatrixRow {
        node: node.to_owned(),
        state: NodeState::Ready,
        reporting: true,
        relayed_by: None,
        report_age_ms: None,
        cells,
        services: Vec::new(),
        dns: Vec::new(),
        mtu: None,
        probe_ip: None,
    }
}

/// The pod-network matrix of `rows`, its nodes theirs in order.
pub fn matrix(rows: Vec<MatrixRow>) -> Matrix {
    Matrix {
        generated_unix_ms: 0,
        nodes: rows.iter().map(|r| r.node.clone()).collect(),
        rows,
        host_rows: Vec::new(),
    }
}

/// A raised finding of `kind` naming `nodes`, with no text, since 0.
pub fn finding(kind: FindingKind, nodes: &[&str]) -> Finding {
    Finding {
        kind,
        nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
        groups: Vec::new(),
        paths: Vec::new(),
        summary: String::new(),
        evidence: Vec::new(),
        hint: String::new(),
        since: String::new(),
        since_unix_ms: 0,
        flapping: false,
        cause: Vec::new(),
        facts_missing: Vec::new(),
    }
}

/// The full-mesh pinglist of `node`'s `network` agent, naming no node, no
/// pod and no agent (a complete, empty SRV truth).
pub fn pinglist(node: &str, network: NetworkMode) -> Pinglist {
    Pinglist {
        version: PINGLIST_VERSION,
        node: node.to_owned(),
        network,
        nodes: Default::default(),
        sampling: None,
        srv: SrvTruth {
            complete: true,
            agents: Vec::new(),
            gone: Vec::new(),
        },
        aggregators: Vec::new(),
        local_pod_agent: None,
        apiserver_ip: None,
    }
}
