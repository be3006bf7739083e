//! Reading the aggregator's answers: small queries the end-to-end tests use,
//! and the text tables `netmatrix-lab up` prints every round.

use netmatrix_api::{
    Cell, CheckCell, Finding, FindingKind, Findings, Matrix, MatrixRow, NodeState, Status,
};

/// The directed cell `from -> to`.
pub fn cell<'a>(m: &'a Matrix, from: &str, to: &str) -> Option<&'a Cell> {
    row(m, from)?.cells.iter().find(|c| c.to == to)
}

pub fn row<'a>(m: &'a Matrix, node: &str) -> Option<&'a MatrixRow> {
    m.rows.iter().find(|r| r.node == node)
}

/// Every pod cell of every expected node is `ok` (and every node reports).
pub fn all_pod_cells_ok(m: &Matrix, nodes: usize) -> bool {
    m.nodes.len() == nodes
        && m.rows.len() == nodes
        && m.rows.iter().all(|r| {
            r.reporting && r.cells.len() == nodes && r.cells.iter().all(|c| c.status == Status::Ok)
        })
}

/// Every host-network cell of every node is `ok` (and every host agent
/// reports).
pub fn all_host_cells_ok(m: &Matrix, nodes: usize) -> bool {
    // A node has one host agent, which does not probe itself: its diagonal
    // cell stays unknown.
    m.host_rows.len() == nodes
        && m.host_rows.iter().all(|r| {
            let cross: Vec<&Cell> = r.cells.iter().filter(|c| c.to != r.node).collect();
            r.reporting && cross.len() + 1 == nodes && cross.iter().all(|c| c.status == Status::Ok)
        })
}

/// Every service and DNS column of every row, pod and host network, is `ok`.
pub fn all_checks_ok(m: &Matrix) -> bool {
    m.rows.iter().chain(&m.host_rows).all(|r| {
        !r.services.is_empty()
            && r.services
                .iter()
                .chain(&r.dns)
                .all(|c| c.status == Status::Ok)
    })
}

/// The findings of `kind`.
pub fn of_kind(f: &Findings, kind: FindingKind) -> Vec<&Finding> {
    f.findings.iter().filter(|x| x.kind == kind).collect()
}

/// A finding of `kind` naming `node`.
pub fn finding_naming<'a>(f: &'a Findings, kind: FindingKind, node: &str) -> Option<&'a Finding> {
    f.findings
        .iter()
        .find(|x| x.kind == kind && x.nodes.iter().any(|n| n == node))
}

fn short(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Degraded => "DEGR",
        Status::Failed => "FAIL",
        Status::Unknown => "?",
    }
}

/// Worst status of the checks whose column starts with `prefix` (`None`:
/// no such check).
fn worst<'a>(checks: impl Iterator<Item = &'a CheckCell>, prefix: &str) -> Option<Status> {
    checks
        .filter(|c| c.column.starts_with(prefix))
        .map(|c| c.status)
        .max_by_key(|s| match s {
            Status::Ok => 0,
            Status::Unknown => 1,
            Status::Degraded => 2,
            Status::Failed => 3,
        })
}

/// The matrix as a table: rows are sources, columns destinations, then the
/// API server, ClusterIP and DNS columns (the worst of each group).
pub fn render_matrix(m: &Matrix) -> String {
    let mut out = render_rows(m, &m.rows, "pod network");
    if !m.host_rows.is_empty() {
        out.push_str(&render_rows(m, &m.host_rows, "host network"));
    }
    out
}

/// One block of rows: a cell shows `MTU` when small echoes pass and large
/// ones do not; rows of nodes that are not judged say why.
fn render_rows(m: &Matrix, rows: &[MatrixRow], title: &str) -> String {
    let width = m.nodes.iter().map(String::len).max().unwrap_or(4).max(9) + 2;
    let mut out = format!("{title}\n{:width$}", "from \\ to");
    for n in &m.nodes {
        out.push_str(&format!("{n:width$}"));
    }
    out.push_str("apiserver  clusterip  dns        mtu\n");
    for r in rows {
        out.push_str(&format!("{:width$}", r.node));
        for n in &m.nodes {
            let cell = r.cells.iter().find(|c| &c.to == n);
            let unprobed = *n == r.node && cell.is_none_or(|c| c.status == Status::Unknown);
            let s = cell
                .filter(|_| !unprobed)
                .map_or(if unprobed { "-" } else { "?" }, |c| {
                    if c.status == Status::Ok && c.mtu == Some(Status::Failed) {
                        "MTU"
                    } else {
                        short(c.status)
                    }
                });
            out.push_str(&format!("{s:width$}"));
        }
        let col = |checks: &[CheckCell], prefix: &str| {
            worst(checks.iter(), prefix).map_or("-", short).to_string()
        };
        out.push_str(&format!(
            "{:11}{:11}{:11}{}",
            col(&r.services, "apiserver"),
            col(&r.services, "clusterip"),
            col(&r.dns, "dns"),
            r.mtu.as_ref().map_or("-", |c| short(c.status)),
        ));
        match r.state {
            NodeState::Ready => {}
            NodeState::Joining => out.push_str("   (joining)"),
            NodeState::Cordoned => out.push_str("   (cordoned)"),
            NodeState::NotReady => out.push_str("   (NotReady)"),
            NodeState::Unknown => out.push_str("   (not in the API)"),
        }
        if !r.reporting {
            out.push_str("   (not reporting)");
        }
        out.push('\n');
    }
    out
}

/// The findings as a table, one line each plus their first evidence.
pub fn render_findings(f: &Findings) -> String {
    if f.findings.is_empty() {
        return "findings: none\n".to_string();
    }
    let nodes_width = f
        .findings
        .iter()
        .map(|x| x.nodes.join(",").len())
        .max()
        .unwrap_or(0)
        .max(5)
        + 2;
    let indent = 24 + nodes_width;
    let mut out = format!("{:24}{:nodes_width$}summary\n", "finding", "nodes");
    for x in &f.findings {
        out.push_str(&format!(
            "{:24}{:nodes_width$}{}\n",
            x.kind.as_str(),
            x.nodes.join(","),
            x.summary
        ));
        for e in x.evidence.iter().take(3) {
            out.push_str(&format!("{:indent$}- {e}\n", ""));
        }
        out.push_str(&format!("{:indent$}hint: {}\n", "", x.hint));
    }
    out
}

pub fn render(m: &Matrix, f: &Findings) -> String {
    format!("{}{}", render_matrix(m), render_findings(f))
}
