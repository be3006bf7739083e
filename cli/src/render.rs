//! Terminal views of the aggregator's answers: the matrix, the findings and
//! everything known about one node. Colour only when asked (stdout is a
//! terminal); the plain text is the same characters without escape codes,
//! so scripts and tests read the same table.

use crate::client::FactsAnswer;
use netmatrix_api::{
    Cell, CheckCell, CheckGroup, Finding, Findings, Matrix, MatrixRow, NetworkMode, NodeState,
    Status,
};

/// How to render: with ANSI colours or plain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub const PLAIN: Style = Style { color: false };

    /// Colour when stdout is a terminal and `NO_COLOR` is not set.
    pub fn for_stdout() -> Style {
        use std::io::IsTerminal;
        Style {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    /// `text` padded to `width`, coloured by `status`. Padding is outside
    /// the escape codes so columns stay aligned.
    fn status(self, status: Status, text: &str, width: usize) -> String {
        let pad = " ".repeat(width.saturating_sub(text.chars().count()));
        if !self.color {
            return format!("{text}{pad}");
        }
        let code = match status {
            Status::Ok => "32",
            Status::Degraded => "33",
            Status::Failed => "1;31",
            Status::Unknown => "90",
        };
        format!("\x1b[{code}m{text}\x1b[0m{pad}")
    }

    fn bold(self, text: &str) -> String {
        if self.color {
            format!("\x1b[1m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn alarm(self, text: &str) -> String {
        if self.color {
            format!("\x1b[1;31m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

fn short(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Degraded => "DEGR",
        Status::Failed => "FAIL",
        Status::Unknown => "?",
    }
}

fn severity(s: Status) -> u8 {
    match s {
        Status::Ok => 0,
        Status::Unknown => 1,
        Status::Degraded => 2,
        Status::Failed => 3,
    }
}

/// Worst status of the checks of `group` (`None`: no such check).
fn worst<'a>(checks: impl Iterator<Item = &'a CheckCell>, group: CheckGroup) -> Option<Status> {
    checks
        .filter(|c| c.column.kind().group() == Some(group))
        .map(|c| c.status)
        .max_by_key(|s| severity(*s))
}

/// The matrix as a table: rows are sources, columns destinations, then the
/// API server, ClusterIP, DNS and MTU columns (the worst of each group).
/// Host-network rows follow in their own block.
pub fn matrix(m: &Matrix, style: Style) -> String {
    let mut out = rows(m, &m.rows, "pod network", style);
    if !m.host_rows.is_empty() {
        out.push_str(&rows(m, &m.host_rows, "host network", style));
    }
    out
}

/// One block of rows: a cell shows `MTU` when small echoes pass and large
/// ones do not; rows of nodes that are not judged say why.
fn rows(m: &Matrix, rows: &[MatrixRow], title: &str, style: Style) -> String {
    let width = m.nodes.iter().map(String::len).max().unwrap_or(4).max(9) + 2;
    let mut out = format!("{}\n{:width$}", style.bold(title), "from \\ to");
    for n in &m.nodes {
        out.push_str(&format!("{n:width$}"));
    }
    out.push_str("apiserver  clusterip  dns        mtu\n");
    for r in rows {
        out.push_str(&format!("{:width$}", r.node));
        for n in &m.nodes {
            let cell = r.cell(n);
            let unprobed = *n == r.node && cell.is_none_or(|c| c.status == Status::Unknown);
            let (status, text) = match cell {
                _ if unprobed => (Status::Unknown, "-"),
                None => (Status::Unknown, "?"),
                Some(c) if c.status == Status::Ok && c.mtu == Some(Status::Failed) => {
                    (Status::Failed, "MTU")
                }
                Some(c) => (c.status, short(c.status)),
            };
            out.push_str(&style.status(status, text, width));
        }
        let col = |checks: &[CheckCell], group: CheckGroup, width: usize| match worst(
            checks.iter(),
            group,
        ) {
            Some(s) => style.status(s, short(s), width),
            None => format!("{:width$}", "-"),
        };
        out.push_str(&col(&r.services, CheckGroup::Apiserver, 11));
        out.push_str(&col(&r.services, CheckGroup::Clusterip, 11));
        out.push_str(&col(&r.dns, CheckGroup::Dns, 11));
        out.push_str(&match &r.mtu {
            Some(c) => style.status(c.status, short(c.status), 0),
            None => "-".to_owned(),
        });
        out.push_str(&state_note(r));
        out.push('\n');
    }
    out
}

fn state_note(r: &MatrixRow) -> String {
    let state = match r.state {
        NodeState::Ready => "",
        NodeState::Joining => "   (joining)",
        NodeState::Cordoned => "   (cordoned)",
        NodeState::NotReady => "   (NotReady)",
        NodeState::Unknown => "   (not in the API)",
    };
    let reporting = match (&r.relayed_by, r.reporting) {
        (Some(relay), true) => format!("   (relayed by {relay})"),
        (None, true) => String::new(),
        (_, false) => "   (not reporting)".to_owned(),
    };
    format!("{state}{reporting}")
}

/// Evidence lines shown per finding; the rest is counted ("+N more").
const EVIDENCE_SHOWN: usize = 3;

/// `n` and its noun, singular or plural: "1 finding", "2 findings".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The evidence items not shown: the lines past [`EVIDENCE_SHOWN`], where
/// the aggregator's own cap marker ("... and K more", always last) stands
/// for K items.
fn hidden_evidence(evidence: &[String]) -> usize {
    let capped = evidence.last().and_then(|l| {
        l.strip_prefix("... and ")?
            .strip_suffix(" more")?
            .parse::<usize>()
            .ok()
    });
    let lines = evidence.len() - usize::from(capped.is_some());
    lines.saturating_sub(EVIDENCE_SHOWN) + capped.unwrap_or(0)
}

/// The findings, one line each, with their first evidence and the hint.
pub fn findings(f: &Findings, style: Style) -> String {
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
        let kind = format!("{:24}", x.kind.as_str());
        out.push_str(&format!(
            "{}{:nodes_width$}{}\n",
            style.alarm(&kind),
            x.nodes.join(","),
            x.summary
        ));
        for e in x.evidence.iter().take(EVIDENCE_SHOWN) {
            out.push_str(&format!("{:indent$}- {e}\n", ""));
        }
        let hidden = hidden_evidence(&x.evidence);
        if hidden > 0 {
            out.push_str(&format!(
                "{:indent$}  +{hidden} more (--json lists the evidence)\n",
                ""
            ));
        }
        if x.cause.is_empty() && !x.facts_missing.is_empty() {
            out.push_str(&format!(
                "{:indent$}cause: unknown so far: no network facts from {} yet (its host agent sends them with its next report when asked; none without hostAgent.enabled)\n",
                "",
                x.facts_missing.join(", ")
            ));
        } else if x.cause.is_empty() {
            out.push_str(&format!(
                "{:indent$}cause: unknown (nothing in the nodes' network facts explains it)\n",
                ""
            ));
        }
        for c in &x.cause {
            out.push_str(&format!("{:indent$}cause: {c}\n", ""));
        }
        out.push_str(&format!("{:indent$}hint: {}\n", "", x.hint));
    }
    out
}

/// Everything known about `node`: its state and report age, what it sees
/// (its row), what others see of it (its column), its service, DNS and MTU
/// checks, and the findings naming it. `None` when the matrix has no such
/// node.
pub fn explain(m: &Matrix, f: &Findings, node: &str, style: Style) -> Option<String> {
    let row = m.row(node, NetworkMode::Pod)?;
    let mut out = format!(
        "{} ({:?}, {})\n",
        style.bold(node),
        row.state,
        match row.report_age_ms {
            Some(ms) if row.reporting => format!("last report {:.1}s ago", ms / 1000.0),
            Some(ms) => format!("NOT reporting: last report {:.1}s ago", ms / 1000.0),
            None => "NOT reporting: no report yet".to_owned(),
        }
    );
    out.push_str(&format!("\n{}\n", style.bold("what it reaches (its row)")));
    for c in &row.cells {
        out.push_str(&cell_line(&c.to, c, style));
    }
    out.push_str(&format!(
        "\n{}\n",
        style.bold("who reaches it (its column)")
    ));
    for r in m.rows.iter().filter(|r| r.node != node) {
        if let Some(c) = r.cell(node) {
            out.push_str(&cell_line(&r.node, c, style));
        }
    }
    out.push_str(&format!(
        "\n{}\n",
        style.bold("checks (API server, ClusterIPs, DNS, MTU)")
    ));
    let host = m.row(node, NetworkMode::Host);
    let width = row
        .services
        .iter()
        .chain(&row.dns)
        .chain(host.iter().flat_map(|h| h.services.iter().chain(&h.dns)))
        .map(|c| c.column.len())
        .max()
        .unwrap_or(0)
        + 2;
    for c in row.checks() {
        out.push_str(&check_line(c, width, style));
    }
    if let Some(host) = host {
        out.push_str(&format!(
            "\n{}\n",
            style.bold("host network (node IP to node IP)")
        ));
        // A host agent does not ping its own node.
        for c in host.cells.iter().filter(|c| *c.to != *node) {
            out.push_str(&cell_line(&c.to, c, style));
        }
        for c in host.services.iter().chain(&host.dns) {
            out.push_str(&check_line(c, width, style));
        }
    }
    let naming: Vec<&Finding> = f
        .findings
        .iter()
        .filter(|x| x.nodes.iter().any(|n| n == node))
        .collect();
    out.push('\n');
    if naming.is_empty() {
        out.push_str("findings naming it: none\n");
    } else {
        out.push_str(&findings(
            &Findings {
                generated_unix_ms: f.generated_unix_ms,
                findings: naming.into_iter().cloned().collect(),
                pending: Vec::new(),
            },
            style,
        ));
    }
    Some(out)
}

/// A node's own network as its host agent read it: devices, forwarding,
/// and the size of its routing, FDB and neighbour tables, with the routes
/// through overlay devices and bridges listed.
pub fn node_facts(node: &str, facts: &FactsAnswer, style: Style) -> String {
    let mut out = format!("\n{}\n", style.bold("its network (read by its host agent)"));
    let f = match facts {
        FactsAnswer::Held(f) => f,
        FactsAnswer::Asked => {
            out.push_str(&format!(
                "  not received yet: asked of {node}'s host agent, they come with its next report; run explain again\n"
            ));
            return out;
        }
        FactsAnswer::NoHostAgent => {
            out.push_str(&format!(
                "  none: no host-network agent reports for {node} (hostAgent.enabled)\n"
            ));
            return out;
        }
    };
    let setting = |v: Option<String>| v.unwrap_or_else(|| "unreadable".to_owned());
    out.push_str(&format!(
        "  net.ipv4.ip_forward = {}, net.ipv4.conf.all.rp_filter = {}\n",
        setting(f.ip_forward.map(|v| u8::from(v).to_string())),
        setting(f.rp_filter.map(|v| v.to_string()))
    ));
    for l in &f.links {
        let kind = if l.kind.is_empty() { "device" } else { &l.kind };
        out.push_str(&format!(
            "  {:16}{:10}{:5} mtu {}{}\n",
            l.name,
            kind,
            if l.up { "up" } else { "DOWN" },
            l.mtu,
            l.mac
                .as_deref()
                .map(|m| format!("  {m}"))
                .unwrap_or_default()
        ));
    }
    let overlay: Vec<&str> = f
        .links
        .iter()
        .filter(|l| !l.kind.is_empty())
        .map(|l| l.name.as_str())
        .collect();
    for r in f
        .routes
        .iter()
        .filter(|r| r.dev.as_deref().is_some_and(|d| overlay.contains(&d)))
    {
        out.push_str(&format!(
            "  route {}/{}{} dev {}\n",
            r.dst,
            r.prefix,
            r.via.map(|v| format!(" via {v}")).unwrap_or_default(),
            r.dev.as_deref().unwrap_or("?")
        ));
    }
    out.push_str(&format!(
        "  {} routes, {} FDB entries, {} neighbour entries on overlay devices\n",
        f.routes.len(),
        f.fdb.len(),
        f.neighbours.len()
    ));
    out
}

fn cell_line(peer: &str, c: &Cell, style: Style) -> String {
    let mut line = format!("  {peer:16}{}", style.status(c.status, short(c.status), 6));
    if let Some(loss) = c.loss {
        line.push_str(&format!("loss {:>3.0}%  ", loss * 100.0));
    }
    if let Some(rtt) = c.rtt_avg_ms {
        line.push_str(&format!("rtt {rtt:.2} ms  "));
    }
    if c.mtu == Some(Status::Failed) {
        line.push_str("large DF echoes lost  ");
    }
    if let Some(e) = c.last_error.as_ref().filter(|_| c.status != Status::Ok) {
        line.push_str(&format!("{}: {}", e.kind, e.message));
    }
    format!("{}\n", line.trim_end())
}

fn check_line(c: &CheckCell, width: usize, style: Style) -> String {
    let mut line = format!(
        "  {:width$}{}",
        c.column,
        style.status(c.status, short(c.status), 6)
    );
    if let Some(ms) = c.latency_ms {
        line.push_str(&format!("{ms:.1} ms  "));
    }
    if let Some(e) = c.last_error.as_ref().filter(|_| c.status != Status::Ok) {
        line.push_str(&format!("{}: {}", e.kind, e.message));
    }
    format!("{}\n", line.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::fixtures;
    use netmatrix_api::{ErrorKind, FindingKind, ProbeError};

    fn cell(to: &str, status: Status) -> Cell {
        Cell {
            loss: Some(if status == Status::Failed { 1.0 } else { 0.0 }),
            rtt_avg_ms: (status == Status::Ok).then_some(0.25),
            pods: 2,
            last_error: (status == Status::Failed).then(|| {
                Box::new(ProbeError::new(
                    ErrorKind::Timeout,
                    "no echo reply from 10.244.2.2",
                ))
            }),
            ..fixtures::cell(to, status)
        }
    }

    fn sample() -> (Matrix, Findings) {
        let nodes = ["node-1", "node-2"];
        let rows = nodes
            .iter()
            .map(|from| {
                let cells = nodes
                    .iter()
                    .map(|to| {
                        let failed = from != to;
                        cell(to, if failed { Status::Failed } else { Status::Ok })
                    })
                    .collect();
                let apiserver = CheckCell {
                    latency_ms: Some(1.5),
                    ..fixtures::check("apiserver", Status::Ok)
                };
                MatrixRow {
                    report_age_ms: Some(800.0),
                    services: vec![apiserver],
                    ..fixtures::row(from, cells)
                }
            })
            .collect();
        let matrix = Matrix {
            generated_unix_ms: 1,
            ..fixtures::matrix(rows)
        };
        let findings = Findings {
            generated_unix_ms: 1,
            findings: vec![Finding {
                summary: "node-1 and node-2 cannot reach each other".into(),
                evidence: vec!["node-1 -> node-2: failed".into()],
                hint: "bridge fdb show dev flannel.1".into(),
                ..fixtures::finding(FindingKind::PairBroken, &["node-1", "node-2"])
            }],
            pending: Vec::new(),
        };
        (matrix, findings)
    }

    #[test]
    fn plain_matrix_has_no_escape_codes_and_colour_keeps_alignment() {
        let (m, _) = sample();
        let plain = matrix(&m, Style::PLAIN);
        assert!(!plain.contains('\x1b'), "{plain}");
        assert!(plain.contains("node-1     ok         FAIL"), "{plain}");
        let coloured = matrix(&m, Style { color: true });
        assert!(coloured.contains("\x1b[1;31mFAIL\x1b[0m"), "{coloured}");
        // Stripping the escape codes gives back the plain table.
        let stripped = coloured
            .split('\x1b')
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part
                } else {
                    part.split_once('m').map_or(part, |(_, rest)| rest)
                }
            })
            .collect::<String>();
        assert_eq!(stripped, plain);
    }

    #[test]
    fn explain_shows_row_column_checks_and_findings() {
        let (m, f) = sample();
        let text = explain(&m, &f, "node-2", Style::PLAIN).expect("node-2 exists");
        assert!(
            text.starts_with("node-2 (Ready, last report 0.8s ago)"),
            "{text}"
        );
        assert!(
            text.contains("what it reaches (its row)\n  node-1          FAIL  loss 100%  timeout: no echo reply from 10.244.2.2"),
            "{text}"
        );
        assert!(
            text.contains("who reaches it (its column)\n  node-1          FAIL"),
            "{text}"
        );
        assert!(text.contains("apiserver"), "{text}");
        assert!(text.contains("pair-broken"), "{text}");
        assert!(explain(&m, &f, "node-9", Style::PLAIN).is_none());
    }

    #[test]
    fn evidence_past_the_shown_lines_is_counted() {
        let (_, mut f) = sample();
        let lines = |n: usize| (0..n).map(|i| format!("line {i}")).collect::<Vec<_>>();
        f.findings[0].evidence = lines(3);
        let text = findings(&f, Style::PLAIN);
        assert!(text.contains("- line 2\n"), "{text}");
        assert!(!text.contains("more"), "{text}");
        f.findings[0].evidence = lines(5);
        let text = findings(&f, Style::PLAIN);
        assert!(!text.contains("line 3"), "{text}");
        assert!(
            text.contains("  +2 more (--json lists the evidence)\n"),
            "{text}"
        );
        // The aggregator's own cap marker stands for the items it left out.
        let mut capped = lines(20);
        capped.push("... and 40 more".into());
        assert_eq!(hidden_evidence(&capped), 17 + 40);
    }

    #[test]
    fn counts_are_singular_or_plural() {
        assert_eq!(count(1, "finding", "findings"), "1 finding");
        assert_eq!(count(0, "finding", "findings"), "0 findings");
        assert_eq!(count(2, "finding", "findings"), "2 findings");
    }

    #[test]
    fn no_findings_says_so() {
        let f = Findings {
            generated_unix_ms: 0,
            findings: vec![],
            pending: Vec::new(),
        };
        assert_eq!(findings(&f, Style { color: true }), "findings: none\n");
    }
}
