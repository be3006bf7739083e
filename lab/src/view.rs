//! Reading the aggregator's answers: small queries the end-to-end tests use,
//! and the text tables `netmatrix-lab up` prints every round.

use netmatrix_api::{Cell, Finding, FindingKind, Findings, Matrix, MatrixRow, Status};

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

/// The matrix as a plain text table.
pub fn render_matrix(m: &Matrix) -> String {
    netmatrix_cli::render::matrix(m, netmatrix_cli::render::Style::PLAIN)
}

/// The matrix and findings as plain text tables (`netmatrix matrix` and
/// `netmatrix findings` render the same, coloured on a terminal).
pub fn render(m: &Matrix, f: &Findings) -> String {
    use netmatrix_cli::render::{self, Style};
    format!(
        "{}{}",
        render::matrix(m, Style::PLAIN),
        render::findings(f, Style::PLAIN)
    )
}
