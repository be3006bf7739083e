//! `netmatrix validate`: does the pod network work? One verdict, with an
//! exit code for scripts, CI and `helm test`.
//!
//! It polls the aggregator until every expected node has reported, then
//! needs `--rounds` consecutive aggregator rounds that agree: all healthy
//! (exit 0) or all failing (exit 1). A failing network is worth more with
//! its diagnosis: while the aggregator says a finding is pending (seen, not
//! yet held long enough to raise), validate waits for it, up to
//! `--timeout`; once nothing is pending for a few rounds, it answers with
//! the failing cells alone. Without a verdict before `--timeout` it exits
//! 2, unless the last rounds were failing (a network that fails until the
//! deadline is broken, not undecided).

use std::io::Write;
use std::time::{Duration, Instant};

use netmatrix_api::{Findings, Matrix};
use serde::Serialize;

use crate::client::{AggregatorArgs, AggregatorClient, ClientError};
use crate::render::{self, Style};
use crate::verdict::{Round, judge};

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub aggregator: AggregatorArgs,

    /// Give up after this long without a verdict (exit 2); covers agents
    /// still starting (image pulls) after an install
    #[arg(long, env = "NETMATRIX_VALIDATE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Consecutive aggregator rounds that must agree (all healthy, or all
    /// failing) before the verdict
    #[arg(long, env = "NETMATRIX_VALIDATE_ROUNDS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Print the verdict as one JSON document on stdout
    #[arg(long)]
    pub json: bool,
}

/// How often the aggregator is asked; its rounds are seconds apart.
const POLL: Duration = Duration::from_secs(1);

/// Failing rounds with no finding and none pending after which validate
/// stops waiting for a name (the aggregator raises a finding after 3 rounds
/// by default, and says so while it waits).
const UNNAMED_EXTRA_ROUNDS: u32 = 5;
/// Failing cells and checks listed when no finding names them yet; the
/// rest is counted ("+N more").
const FAILING_SHOWN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Healthy,
    Failing,
    Undecided,
}

impl Outcome {
    /// 0 healthy, 1 failing, 2 undecided.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Healthy => 0,
            Outcome::Failing => 1,
            Outcome::Undecided => 2,
        }
    }
}

/// The verdict, as printed (`--json`) or rendered as text.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub outcome: Outcome,
    /// Why, in one sentence.
    pub reason: String,
    pub elapsed_seconds: f64,
    /// Aggregator rounds looked at.
    pub rounds_seen: u32,
    pub last_round: Option<Round>,
    #[serde(skip)]
    pub matrix: Option<Matrix>,
}

/// Polls until a verdict; never fails: an unreachable aggregator is an
/// `undecided` verdict with the reason.
pub async fn run(args: &ValidateArgs) -> Verdict {
    let mut progress = Progress::new(!args.json);
    let verdict = poll(args, &mut progress).await;
    progress.finish();
    verdict
}

async fn poll(args: &ValidateArgs, progress: &mut Progress) -> Verdict {
    let started = Instant::now();
    let client = match AggregatorClient::new(&args.aggregator.aggregator_url, POLL * 5) {
        Ok(c) => c,
        Err(e) => return undecided(started, e.to_string(), 0, None),
    };
    let mut last_generated = None;
    let mut streak: Option<(Outcome, u32)> = None;
    // Failing rounds in a row with nothing named and nothing pending.
    let mut unnamed_quiet: u32 = 0;
    let mut rounds_seen = 0;
    let mut last_error: Option<ClientError>;
    let mut last: Option<(Round, Matrix)> = None;
    loop {
        match fetch(&client).await {
            Ok((matrix, findings)) => {
                last_error = None;
                // Count each aggregator round once, however often we poll.
                // The findings are published once per evaluation round (the
                // matrix is rebuilt at every request, so its timestamp
                // changes at every poll).
                if last_generated != Some(findings.generated_unix_ms) {
                    last_generated = Some(findings.generated_unix_ms);
                    rounds_seen += 1;
                    let round = judge(&matrix, &findings.findings);
                    progress.show(&round, started.elapsed());
                    let outcome = match round {
                        Round::Waiting { .. } => None,
                        Round::Healthy { .. } => Some(Outcome::Healthy),
                        Round::Failing { .. } => Some(Outcome::Failing),
                    };
                    streak = match (outcome, streak) {
                        (None, _) => None,
                        (Some(o), Some((s, n))) if s == o => Some((o, n + 1)),
                        (Some(o), _) => Some((o, 1)),
                    };
                    last = Some((round, matrix));
                    // A failing network gets a few more rounds for the
                    // aggregator to name the cause (findings are raised
                    // after a few rounds of their own): the verdict is
                    // far more useful with the finding and its hint.
                    let named = matches!(&last, Some((Round::Failing { findings, .. }, _)) if !findings.is_empty());
                    let pending = !findings.pending.is_empty();
                    unnamed_quiet = match streak {
                        Some((Outcome::Failing, _)) if !named && !pending => unnamed_quiet + 1,
                        _ => 0,
                    };
                    let decided = match streak {
                        // Being named: wait for it (the deadline still holds).
                        Some((Outcome::Failing, _)) if !named && pending => false,
                        Some((Outcome::Failing, n)) if !named => {
                            n >= args.rounds && unnamed_quiet >= UNNAMED_EXTRA_ROUNDS
                        }
                        Some((_, n)) => n >= args.rounds,
                        None => false,
                    };
                    if let Some((outcome, n)) = streak
                        && decided
                    {
                        let reason = match outcome {
                            Outcome::Healthy => format!(
                                "every node reached every node, and every check passed, for {}",
                                render::count(n as usize, "round", "consecutive rounds")
                            ),
                            _ => format!(
                                "failing for {}",
                                render::count(n as usize, "round", "consecutive rounds")
                            ),
                        };
                        return verdict(outcome, reason, started, rounds_seen, last);
                    }
                }
            }
            Err(e) => {
                progress.unreachable(&e, started.elapsed());
                last_error = Some(e);
            }
        }
        if started.elapsed() + POLL > args.timeout {
            let waited = humantime::format_duration(Duration::from_secs(args.timeout.as_secs()));
            return match (last_error, streak) {
                (Some(e), _) => undecided(
                    started,
                    format!("no verdict after {waited}: {e}"),
                    rounds_seen,
                    last,
                ),
                (None, Some((Outcome::Failing, n))) => verdict(
                    Outcome::Failing,
                    format!(
                        "still failing at the deadline ({waited}, {})",
                        render::count(n as usize, "failing round", "failing rounds")
                    ),
                    started,
                    rounds_seen,
                    last,
                ),
                (None, _) => {
                    let reason = match &last {
                        Some((Round::Waiting { unmeasured, .. }, matrix))
                            if *unmeasured > 0 && !blocking_policies(matrix).is_empty() =>
                        {
                            format!(
                                "no verdict after {waited}: {} between nodes cannot be measured: NetworkPolicy {} denies netmatrix's probes (let its pods reach each other: the chart's networkPolicy.enabled=true; `netmatrix findings` shows blocked-by-policy)",
                                render::count(*unmeasured, "path", "paths"),
                                blocking_policies(matrix).join(", ")
                            )
                        }
                        Some((Round::Waiting { unmeasured, .. }, _)) if *unmeasured > 0 => format!(
                            "no verdict after {waited}: {} between nodes {} never measured (agents that do not see their peers' pods? `netmatrix matrix` shows them as ?)",
                            render::count(*unmeasured, "path", "paths"),
                            if *unmeasured == 1 { "was" } else { "were" }
                        ),
                        Some((
                            Round::Waiting {
                                reporting,
                                expected,
                                ..
                            },
                            _,
                        )) => format!(
                            "no verdict after {waited}: {reporting} of {} reported (are the agent pods running on every node? `kubectl -n netmatrix get pods -o wide`)",
                            render::count(*expected, "expected node", "expected nodes")
                        ),
                        None => {
                            format!("no verdict after {waited}: the aggregator published no round")
                        }
                        Some(_) => format!(
                            "no verdict after {waited}: the network did not stay healthy or failing for {}",
                            render::count(args.rounds as usize, "round", "rounds")
                        ),
                    };
                    undecided(started, reason, rounds_seen, last)
                }
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn fetch(client: &AggregatorClient) -> Result<(Matrix, Findings), ClientError> {
    let matrix = client.matrix().await?;
    let findings = client.findings().await?;
    Ok((matrix, findings))
}

fn verdict(
    outcome: Outcome,
    reason: String,
    started: Instant,
    rounds_seen: u32,
    last: Option<(Round, Matrix)>,
) -> Verdict {
    let (last_round, matrix) = last.map_or((None, None), |(r, m)| (Some(r), Some(m)));
    Verdict {
        outcome,
        reason,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        rounds_seen,
        last_round,
        matrix,
    }
}

fn undecided(
    started: Instant,
    reason: String,
    rounds_seen: u32,
    last: Option<(Round, Matrix)>,
) -> Verdict {
    verdict(Outcome::Undecided, reason, started, rounds_seen, last)
}

/// The NetworkPolicies that keep probes off paths of `matrix`.
fn blocking_policies(matrix: &Matrix) -> Vec<String> {
    let mut names: Vec<String> = matrix
        .rows
        .iter()
        .flat_map(|r| &r.cells)
        .filter_map(|c| c.blocked.as_ref())
        .flat_map(|b| b.policies.iter().cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The verdict as text: the outcome, the matrix and every finding with its
/// hint (or the failing cells and checks no finding names yet).
pub fn render(v: &Verdict, style: Style) -> String {
    let word = match v.outcome {
        Outcome::Healthy => "HEALTHY",
        Outcome::Failing => "FAILING",
        Outcome::Undecided => "UNDECIDED",
    };
    let mut out = format!(
        "{word}: {} ({:.1}s, {})\n",
        v.reason,
        v.elapsed_seconds,
        render::count(
            v.rounds_seen as usize,
            "aggregator round",
            "aggregator rounds"
        )
    );
    if let Some(matrix) = &v.matrix {
        out.push('\n');
        out.push_str(&render::matrix(matrix, style));
    }
    if let Some(Round::Failing { findings, failing }) = &v.last_round {
        out.push('\n');
        if findings.is_empty() {
            out.push_str("failing (no finding raised yet):\n");
            for f in failing.iter().take(FAILING_SHOWN) {
                out.push_str(&format!("  {f}\n"));
            }
            if failing.len() > FAILING_SHOWN {
                out.push_str(&format!(
                    "  +{} more (--json lists them)\n",
                    failing.len() - FAILING_SHOWN
                ));
            }
        } else {
            out.push_str(&render::findings(
                &netmatrix_api::Findings {
                    generated_unix_ms: 0,
                    findings: findings.clone(),
                    pending: Vec::new(),
                },
                style,
            ));
        }
    }
    out
}

/// Progress on stderr while waiting: on a terminal one line rewritten in
/// place (nodes reported / expected, elapsed); otherwise a line per change.
struct Progress {
    enabled: bool,
    tty: bool,
    last: String,
    drawn: bool,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            enabled,
            tty: std::io::stderr().is_terminal(),
            last: String::new(),
            drawn: false,
        }
    }

    fn show(&mut self, round: &Round, elapsed: Duration) {
        let line = match round {
            Round::Waiting {
                reporting,
                expected,
                unmeasured: 0,
            } => format!(
                "waiting: {reporting}/{} reported",
                render::count(*expected, "node", "nodes")
            ),
            Round::Waiting {
                reporting,
                expected,
                unmeasured,
            } => format!(
                "waiting: {reporting}/{} reported, {} not measured yet",
                render::count(*expected, "node", "nodes"),
                render::count(*unmeasured, "path", "paths")
            ),
            Round::Healthy { nodes } => format!(
                "{nodes}/{} reported: healthy round",
                render::count(*nodes, "node", "nodes")
            ),
            Round::Failing { findings, failing } => format!(
                "failing round: {}, {}",
                render::count(findings.len(), "finding", "findings"),
                render::count(
                    failing.len(),
                    "failing cell or check",
                    "failing cells or checks"
                )
            ),
        };
        self.print(line, elapsed);
    }

    fn unreachable(&mut self, error: &ClientError, elapsed: Duration) {
        self.print(format!("retrying: {error}"), elapsed);
    }

    fn print(&mut self, line: String, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr();
        if self.tty {
            // \r and "erase line": the same line, with the elapsed time ticking.
            let _ = write!(err, "\r\x1b[2K[{:>5.1}s] {line}", elapsed.as_secs_f64());
            let _ = err.flush();
            self.drawn = true;
        } else if line != self.last {
            let _ = writeln!(err, "[{:>5.1}s] {line}", elapsed.as_secs_f64());
        }
        self.last = line;
    }

    /// Ends the in-place line before the verdict is printed.
    fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
        }
    }
}
