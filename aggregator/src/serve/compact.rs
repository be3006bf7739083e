//! [`Matrix`] to [`CompactMatrix`]: the same data, a few bytes per cell.

use std::collections::HashMap;

use netmatrix_api::{
    CheckCell, CheckColumn, CompactError, CompactMatrix, CompactRow, Matrix, MatrixRow, ProbeError,
    Status, status_char,
};

/// Builds the compact form of `matrix` (see [`CompactMatrix`] for the layout).
///
/// Linear in the rows times the columns: columns are numbered once, and
/// each row's checks are placed by number.
pub fn compact(matrix: &Matrix) -> CompactMatrix {
    let mut columns: Vec<CheckColumn> = Vec::new();
    let mut numbers: HashMap<&str, usize> = HashMap::new();
    for row in matrix.rows.iter().chain(&matrix.host_rows) {
        for check in row.checks() {
            numbers.entry(&check.column).or_insert_with(|| {
                columns.push(check.column.clone());
                columns.len() - 1
            });
        }
    }
    let rows = |rows: &[MatrixRow]| -> Vec<CompactRow> {
        rows.iter()
            .map(|row| compact_row(row, &matrix.nodes, &numbers, columns.len()))
            .collect()
    };
    CompactMatrix {
        generated_unix_ms: matrix.generated_unix_ms,
        nodes: matrix.nodes.clone(),
        rows: rows(&matrix.rows),
        host_rows: rows(&matrix.host_rows),
        columns,
    }
}

/// One row, a column per node. A sampled row (cells only for the probed
/// nodes) is spread out, the unprobed nodes shown unknown.
fn compact_row(
    row: &MatrixRow,
    nodes: &[String],
    numbers: &HashMap<&str, usize>,
    columns: usize,
) -> CompactRow {
    let mut errors = Vec::new();
    let mut status = String::with_capacity(nodes.len());
    let mut loss_pct = Vec::with_capacity(nodes.len());
    let mut rtt_avg_us = Vec::with_capacity(nodes.len());
    let mut cells = row.cells.iter().peekable();
    for (i, node) in nodes.iter().enumerate() {
        // Cells are in node order, so one merge pass places them.
        match cells.next_if(|c| *c.to == **node) {
            Some(cell) => {
                status.push(status_char(cell.status));
                loss_pct.push(cell.loss.map_or(-1, percent_up));
                rtt_avg_us.push(cell.rtt_avg_ms.map_or(-1, micros));
                push_error(&mut errors, i, cell.last_error.as_deref());
            }
            None => {
                status.push(status_char(Status::Unknown));
                loss_pct.push(-1);
                rtt_avg_us.push(-1);
            }
        }
    }
    let mut placed: Vec<Option<&CheckCell>> = vec![None; columns];
    for check in row.checks() {
        if let Some(slot) = numbers
            .get(check.column.as_str())
            .and_then(|&j| placed.get_mut(j))
        {
            // The first check of a column wins, as a search would find it.
            slot.get_or_insert(check);
        }
    }
    let mut checks = String::with_capacity(columns);
    let mut check_latency_us = Vec::with_capacity(columns);
    let mut check_errors = Vec::new();
    for (j, check) in placed.into_iter().enumerate() {
        match check {
            Some(check) => {
                checks.push(status_char(check.status));
                check_latency_us.push(check.latency_ms.map_or(-1, micros));
                push_error(&mut check_errors, j, check.last_error.as_ref());
            }
            None => {
                checks.push('-');
                check_latency_us.push(-1);
            }
        }
    }
    CompactRow {
        node: row.node.clone(),
        state: row.state,
        reporting: row.reporting,
        relayed_by: row.relayed_by.clone(),
        report_age_ms: row.report_age_ms.map(|ms| ms.max(0.0).round() as u64),
        status,
        loss_pct,
        rtt_avg_us,
        errors,
        checks,
        check_latency_us,
        check_errors,
    }
}

fn push_error(errors: &mut Vec<CompactError>, i: usize, error: Option<&ProbeError>) {
    if let Some(error) = error {
        errors.push(CompactError {
            i: u32::try_from(i).unwrap_or(u32::MAX),
            kind: error.kind,
            message: error.message.clone(),
        });
    }
}

/// Loss fraction to whole percent, rounded up (1 lost echo in 1,000 is 1 %,
/// not 0 %: a loss must not look like none).
fn percent_up(loss: f64) -> i16 {
    let pct = (loss.clamp(0.0, 1.0) * 100.0 - 1e-9).ceil();
    pct.clamp(0.0, 100.0) as i16
}

fn micros(ms: f64) -> i64 {
    (ms.max(0.0) * 1000.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::fixtures;
    use netmatrix_api::{Cell, ErrorKind, Status, status_from_char};

    fn cell(to: &str, status: Status, loss: Option<f64>, rtt: Option<f64>) -> Cell {
        Cell {
            loss,
            rtt_avg_ms: rtt,
            rtt_max_ms: rtt.map(|r| r * 2.0),
            pods: 2,
            age_ms: Some(812.5),
            ..fixtures::cell(to, status)
        }
    }

    fn check(column: &str, status: Status, latency: Option<f64>) -> CheckCell {
        CheckCell {
            latency_ms: latency,
            ..fixtures::check(column, status)
        }
    }

    fn row(node: &str, cells: Vec<Cell>) -> MatrixRow {
        MatrixRow {
            report_age_ms: Some(420.4),
            services: vec![check("apiserver", Status::Ok, Some(1.25))],
            ..fixtures::row(node, cells)
        }
    }

    /// A matrix of `n` nodes, every cell ok with a realistic loss and RTT.
    fn healthy(n: usize) -> Matrix {
        let nodes: Vec<String> = (0..n).map(|i| format!("node-{i:04}")).collect();
        let rows = nodes
            .iter()
            .enumerate()
            .map(|(r, from)| {
                let cells = nodes
                    .iter()
                    .enumerate()
                    .map(|(c, to)| {
                        let rtt = 0.2 + ((r * 7 + c * 13) % 900) as f64 / 1000.0;
                        cell(to, Status::Ok, Some(0.0), Some(rtt))
                    })
                    .collect();
                let mut row = row(from, cells);
                row.dns = vec![check(
                    "dns-a/kubernetes.default.svc.cluster.local.",
                    Status::Ok,
                    Some(0.8),
                )];
                row.mtu = Some(check("mtu", Status::Ok, None));
                row
            })
            .collect();
        Matrix {
            generated_unix_ms: 1_700_000_000_000,
            ..fixtures::matrix(rows)
        }
    }

    #[test]
    fn compact_matches_the_full_matrix() {
        let mut m = healthy(3);
        m.rows[0].cells[1] = cell("node-0001", Status::Failed, Some(1.0), None);
        m.rows[0].cells[1].last_error =
            Some(Box::new(ProbeError::new(ErrorKind::Timeout, "no reply")));
        m.rows[1].cells[2] = cell("node-0002", Status::Degraded, Some(0.001), Some(12.3456));
        m.rows[2].cells[0] = cell("node-0000", Status::Unknown, None, None);
        m.rows[2].services[0] = check("apiserver", Status::Failed, None);
        m.rows[2].services[0].last_error = Some(ProbeError::new(ErrorKind::Refused, "RST"));
        m.rows[2].mtu = None;
        m.host_rows = vec![row("node-0000", vec![])];

        let c = compact(&m);
        assert_eq!(c.nodes, m.nodes);
        assert_eq!(c.generated_unix_ms, m.generated_unix_ms);
        assert_eq!(
            c.columns,
            [
                "apiserver",
                "dns-a/kubernetes.default.svc.cluster.local.",
                "mtu"
            ]
        );
        for (full, small) in m.rows.iter().zip(&c.rows) {
            assert_eq!(small.node, full.node);
            assert_eq!(small.status.chars().count(), full.cells.len());
            for (i, (cell, ch)) in full.cells.iter().zip(small.status.chars()).enumerate() {
                assert_eq!(
                    status_from_char(ch),
                    Some(cell.status),
                    "{} -> {i}",
                    full.node
                );
            }
            assert_eq!(small.loss_pct.len(), full.cells.len());
            assert_eq!(small.rtt_avg_us.len(), full.cells.len());
        }
        assert_eq!(c.rows[0].status, "ofo");
        assert_eq!(c.rows[0].loss_pct[1], 100);
        assert_eq!(c.rows[0].rtt_avg_us[1], -1);
        assert_eq!(
            c.rows[0].errors,
            [CompactError {
                i: 1,
                kind: ErrorKind::Timeout,
                message: "no reply".into()
            }]
        );
        assert_eq!(c.rows[1].status, "ood");
        assert_eq!(c.rows[1].loss_pct[2], 1, "any loss shows as at least 1 %");
        assert_eq!(c.rows[1].rtt_avg_us[2], 12_346);
        assert_eq!(c.rows[1].loss_pct[0], 0);
        assert_eq!(c.rows[2].status, "uoo");
        assert_eq!(c.rows[2].loss_pct[0], -1);
        assert_eq!(c.rows[2].checks, "fo-", "no mtu column on this row");
        assert_eq!(c.rows[2].check_latency_us, [-1, 800, -1]);
        assert_eq!(c.rows[2].check_errors[0].i, 0);
        assert_eq!(c.rows[2].check_errors[0].kind, ErrorKind::Refused);
        assert_eq!(c.rows[0].checks, "ooo");
        assert_eq!(c.rows[0].check_latency_us[0], 1250);
        assert_eq!(c.rows[0].report_age_ms, Some(420));
        assert_eq!(c.host_rows.len(), 1);
        assert_eq!(c.host_rows[0].checks, "o--");

        let json = serde_json::to_string(&c).unwrap();
        let back: CompactMatrix = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn sampled_rows_are_spread_over_the_node_columns() {
        let mut m = healthy(4);
        m.rows[1].cells = vec![
            cell("node-0000", Status::Ok, Some(0.0), Some(0.5)),
            cell("node-0003", Status::Failed, Some(1.0), None),
        ];
        m.rows[1].cells[1].last_error =
            Some(Box::new(ProbeError::new(ErrorKind::Timeout, "no reply")));
        let c = compact(&m);
        assert_eq!(c.rows[1].status, "ouuf");
        assert_eq!(c.rows[1].loss_pct, [0, -1, -1, 100]);
        assert_eq!(
            c.rows[1].errors[0].i, 3,
            "error placed at the node's column"
        );
        assert_eq!(c.rows[0].status, "oooo");
    }

    #[test]
    fn compact_is_small_at_1000_nodes() {
        let m = healthy(1000);
        let full = serde_json::to_vec(&m).unwrap().len();
        let small = serde_json::to_vec(&compact(&m)).unwrap().len();
        let cells = 1000 * 1000;
        eprintln!(
            "1,000 nodes: full matrix {full} bytes ({} B/cell), compact {small} bytes ({:.2} B/cell)",
            full / cells,
            small as f64 / cells as f64
        );
        assert!(small < 8 * cells, "compact matrix too big: {small} bytes");
        assert!(small * 10 < full, "{small} vs {full}");
    }
}
