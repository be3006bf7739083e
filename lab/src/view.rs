//! Reading the aggregator's answers: small queries the end-to-end tests use,
//! and the text tables `netmatrix-lab up` prints every round.

use netmatrix_api::{Cell, Finding, FindingKind, Findings, Matrix, MatrixRow, NetworkMode, Status};

/// The directed pod-network cell `from -> to`.
pub fn cell<'a>(m: &'a Matrix, from: &str, to: &str) -> Option<&'a Cell> {
    m.cell(from, to, NetworkMode::Pod)
}

/// The pod-network row of `node`.
pub fn row<'a>(m: &'a Matrix, node: &str) -> Option<&'a MatrixRow> {
    m.row(node, NetworkMode::Pod)
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
            let cross: Vec<&Cell> = r.cells.iter().filter(|c| *c.to != *r.node).collect();
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

/// What `netmatrix-lab up` prints each round.
///
/// On a terminal the frame is redrawn in place (cursor home, every line
/// overwritten, the rest cleared), so the matrix does not scroll by every
/// second and the findings stay where the eye left them; the header line
/// carries the round and the time, so one sees it is live. Anywhere else (a
/// pipe, a log file) a frame is printed only when what it shows changed.
#[derive(Debug)]
pub struct LiveView {
    terminal: bool,
    round: u64,
    last_body: Option<String>,
}

impl LiveView {
    pub fn new(terminal: bool) -> Self {
        LiveView {
            terminal,
            round: 0,
            last_body: None,
        }
    }

    /// The text to write for this round (`None`: nothing to write).
    /// `header` names the lab; `time` is the wall-clock time to show.
    pub fn frame(&mut self, header: &str, time: &str, body: &str) -> Option<String> {
        self.round += 1;
        let changed = self.last_body.as_deref() != Some(body);
        let first = self.last_body.is_none();
        if changed {
            self.last_body = Some(body.to_string());
        }
        let top = format!("{header}  round {}  {time}", self.round);
        if !self.terminal {
            return changed.then(|| format!("{top}\n{body}"));
        }
        // Clear the screen once; after that only overwrite, so nothing
        // piles up in the terminal's scrollback.
        let mut out = String::from(if first { "\x1b[2J\x1b[H" } else { "\x1b[H" });
        for line in std::iter::once(top.as_str()).chain(body.lines()) {
            out.push_str(line);
            out.push_str("\x1b[K\n");
        }
        out.push_str("\x1b[J");
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_frame_is_redrawn_in_place_with_the_round_and_time() {
        let mut view = LiveView::new(true);
        let first = view.frame("lab nm1", "10:00:01", "a\nb\n").unwrap();
        assert!(first.starts_with("\x1b[2J\x1b[H"));
        assert!(first.contains("lab nm1  round 1  10:00:01\x1b[K\na\x1b[K\nb\x1b[K\n"));
        let second = view.frame("lab nm1", "10:00:02", "a\nb\n").unwrap();
        assert!(second.starts_with("\x1b[H") && !second.contains("\x1b[2J"));
        assert!(second.contains("round 2  10:00:02"));
        assert!(second.ends_with("\x1b[J"));
    }

    #[test]
    fn elsewhere_a_frame_is_written_only_when_it_changed() {
        let mut view = LiveView::new(false);
        assert_eq!(
            view.frame("lab nm1", "10:00:01", "a\n").as_deref(),
            Some("lab nm1  round 1  10:00:01\na\n")
        );
        assert_eq!(view.frame("lab nm1", "10:00:02", "a\n"), None);
        assert_eq!(
            view.frame("lab nm1", "10:00:03", "b\n").as_deref(),
            Some("lab nm1  round 3  10:00:03\nb\n")
        );
    }
}
