//! A churn run: a healthy lab taken through the changes of a normal day
//! (agents restarted one by one, a node cordoned and uncordoned, pods
//! re-created with new addresses, a node joining and leaving) while the
//! aggregator's findings are watched. On a healthy cluster every finding is a
//! false alarm; the run stops at the first one and says what was going on.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netmatrix_api::NodeState;

use super::{AgentNetwork, Lab, LabError, NODE_GRACE, lock};
use crate::view;

/// How long a wait of the run (the healthy start, a node joining) may take.
const WAIT: Duration = Duration::from_secs(60);

/// One step of the run and how long its operation took.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: String,
    pub took: Duration,
}

/// A finding raised during the run: the step in progress, the finding, and
/// the matrix and findings as rendered at that moment.
#[derive(Debug, Clone)]
pub struct FalseAlarm {
    pub step: String,
    pub finding: String,
    pub view: String,
}

/// What a churn run saw.
#[derive(Debug, Clone, Default)]
pub struct ChurnReport {
    pub took: Duration,
    /// Time the findings were watched (from the healthy start to the end).
    pub watched: Duration,
    /// Full passes over the script.
    pub cycles: usize,
    /// Distinct aggregator evaluations observed (rounds covered).
    pub rounds: usize,
    /// Snapshots read, and reads that failed (the aggregator unreachable).
    pub polls: usize,
    pub poll_errors: usize,
    pub steps: Vec<StepReport>,
    pub false_alarms: Vec<FalseAlarm>,
}

impl ChurnReport {
    pub fn clean(&self) -> bool {
        self.false_alarms.is_empty()
    }
}

impl fmt::Display for ChurnReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "churn: {} steps in {} cycle(s), findings watched for {:.1?}, {} aggregator rounds covered ({} polls, {} failed)",
            self.steps.len(),
            self.cycles,
            self.watched,
            self.rounds,
            self.polls,
            self.poll_errors
        )?;
        for s in &self.steps {
            writeln!(f, "  {:<40} {:>8.2?}", s.step, s.took)?;
        }
        match self.false_alarms.first() {
            None => write!(f, "findings: none"),
            Some(first) => write!(
                f,
                "FALSE ALARM during {:?}: {}\n{}",
                first.step, first.finding, first.view
            ),
        }
    }
}

/// What the watcher shares with the run.
#[derive(Default)]
struct Watch {
    step: String,
    rounds: BTreeSet<u64>,
    polls: usize,
    poll_errors: usize,
    false_alarms: Vec<FalseAlarm>,
}

/// One thing the run does to the lab.
#[derive(Debug, Clone)]
enum Op {
    Restart(String, AgentNetwork),
    Cordon(String),
    Uncordon(String),
    RecreateCompanion(String),
    AddNode,
    RemoveNode(String),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Restart(n, AgentNetwork::Pod) => write!(f, "restart agent {n}"),
            Op::Restart(n, AgentNetwork::Host) => write!(f, "restart host agent {n}"),
            Op::Cordon(n) => write!(f, "cordon {n}"),
            Op::Uncordon(n) => write!(f, "uncordon {n}"),
            Op::RecreateCompanion(n) => write!(f, "re-create companion {n}"),
            Op::AddNode => write!(f, "add a node"),
            Op::RemoveNode(n) => write!(f, "remove {n}"),
        }
    }
}

impl Lab {
    /// Takes the lab through churn for about `duration` (at least one full
    /// pass of the script; needs the agents and a lab of 2 nodes or more,
    /// with no fault applied), watching the findings all along. Waits first
    /// for a healthy cluster (every cell and check ok, no finding), and last
    /// for the aggregator's node grace, so that a late finding (an agent
    /// reported missing) is seen too.
    ///
    /// The operations run on the blocking pool: the API server emulator and
    /// the DNS server share this runtime and must keep answering.
    pub async fn churn(self: &Arc<Self>, duration: Duration) -> Result<ChurnReport, LabError> {
        self.process_mode("churn")?;
        let start = Instant::now();
        if self.binaries.is_none() {
            return Err(LabError::Busy(
                "churn needs the agents and the aggregator (a lab with components)".into(),
            ));
        }
        if self.topology().nodes.len() < 2 {
            return Err(LabError::Busy(
                "churn needs at least 2 nodes (node 1 is never cordoned or removed)".into(),
            ));
        }
        self.wait_for("a healthy cluster before the churn", WAIT, |s| {
            healthy(s, s.matrix.nodes.len(), self.config.host_agents)
                && s.matrix.rows.iter().all(|r| r.state == NodeState::Ready)
        })
        .await?;

        let watched = Instant::now();
        let watch = Arc::new(Mutex::new(Watch::default()));
        let watcher = tokio::spawn(watch_findings(self.clone(), watch.clone()));
        let settle = self.config.interval * 3;
        let mut report = ChurnReport::default();
        let result = async {
            loop {
                for op in self.script() {
                    self.run_op(&op, &watch, &mut report).await?;
                    if !lock(&watch).false_alarms.is_empty() {
                        return Ok(());
                    }
                    tokio::time::sleep(settle).await;
                }
                report.cycles += 1;
                if start.elapsed() >= duration || !lock(&watch).false_alarms.is_empty() {
                    break;
                }
            }
            // Long enough for an agent that went quiet to be reported.
            let tail = NODE_GRACE + settle;
            lock(&watch).step = format!("watching for {tail:?} after the last step");
            tokio::time::sleep(tail).await;
            Ok::<(), LabError>(())
        }
        .await;
        watcher.abort();
        let watch = std::mem::take(&mut *lock(&watch));
        report.took = start.elapsed();
        report.watched = watched.elapsed();
        report.rounds = watch.rounds.len();
        report.polls = watch.polls;
        report.poll_errors = watch.poll_errors;
        report.false_alarms = watch.false_alarms;
        result.map(|()| report)
    }

    /// One pass: every agent restarted, a node cordoned and back, every
    /// companion re-created, a node added and removed.
    fn script(&self) -> Vec<Op> {
        let t = self.topology();
        let names: Vec<String> = t.nodes.iter().map(|n| n.name.clone()).collect();
        let mut ops: Vec<Op> = names
            .iter()
            .map(|n| Op::Restart(n.clone(), AgentNetwork::Pod))
            .collect();
        if self.config.host_agents {
            ops.extend(
                names
                    .iter()
                    .map(|n| Op::Restart(n.clone(), AgentNetwork::Host)),
            );
        }
        // The last node: node 1 carries the control plane.
        let worker = names.last().cloned().unwrap_or_default();
        ops.push(Op::Cordon(worker.clone()));
        ops.push(Op::Uncordon(worker));
        ops.extend(names.iter().map(|n| Op::RecreateCompanion(n.clone())));
        ops.push(Op::AddNode);
        ops
    }

    async fn run_op(
        self: &Arc<Self>,
        op: &Op,
        watch: &Mutex<Watch>,
        report: &mut ChurnReport,
    ) -> Result<(), LabError> {
        lock(watch).step = op.to_string();
        tracing::info!(step = %op, "churn");
        let started = Instant::now();
        let lab = self.clone();
        let todo = op.clone();
        let added = tokio::task::spawn_blocking(move || match todo {
            Op::Restart(n, network) => lab.restart_agent(&n, network).map(|()| None),
            Op::Cordon(n) => lab.cordon(&n).map(|()| None),
            Op::Uncordon(n) => lab.uncordon(&n).map(|()| None),
            Op::RecreateCompanion(n) => lab.recreate_companion(&n).map(|_| None),
            Op::AddNode => lab.add_node().map(|n| Some(n.name)),
            Op::RemoveNode(n) => lab.remove_node(&n).map(|_| None),
        })
        .await
        .map_err(|e| LabError::Busy(format!("churn step {op} did not finish: {e}")))??;
        report.steps.push(StepReport {
            step: op.to_string(),
            took: started.elapsed(),
        });
        if let Some(node) = added {
            // Joined: wait until it is probed and probes like the others,
            // then take it out again.
            let nodes = self.topology().nodes.len();
            let joined = Instant::now();
            lock(watch).step = format!("{node} joining");
            self.wait_for(&format!("{node} to join the matrix"), WAIT, |s| {
                healthy(s, nodes, self.config.host_agents)
            })
            .await?;
            report.steps.push(StepReport {
                step: format!("{node} probed both ways"),
                took: joined.elapsed(),
            });
            // A few rounds as a member before it leaves.
            tokio::time::sleep(self.config.interval * 3).await;
            Box::pin(self.run_op(&Op::RemoveNode(node), watch, report)).await?;
        }
        Ok(())
    }
}

/// Every pod cell (and host cell, with host agents) of `nodes` nodes and
/// every check ok, no finding.
fn healthy(s: &super::Snapshot, nodes: usize, host_agents: bool) -> bool {
    view::all_pod_cells_ok(&s.matrix, nodes)
        && (!host_agents || view::all_host_cells_ok(&s.matrix, nodes))
        && view::all_checks_ok(&s.matrix)
        && s.findings.findings.is_empty()
}

/// Polls the aggregator twice per interval until aborted, recording the
/// rounds seen and every finding with the step in progress.
async fn watch_findings(lab: Arc<Lab>, watch: Arc<Mutex<Watch>>) {
    let poll = (lab.config.interval / 2).max(Duration::from_millis(200));
    loop {
        let snap = lab.snapshot().await;
        {
            let mut w = lock(&watch);
            w.polls += 1;
            match snap {
                Ok(s) => {
                    w.rounds.insert(s.findings.generated_unix_ms);
                    for f in &s.findings.findings {
                        let alarm = FalseAlarm {
                            step: w.step.clone(),
                            finding: format!("{}: {}", f.kind.as_str(), f.summary),
                            view: view::render(&s.matrix, &s.findings),
                        };
                        tracing::warn!(step = %alarm.step, finding = %alarm.finding, "false alarm");
                        w.false_alarms.push(alarm);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "churn poll failed");
                    w.poll_errors += 1;
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
}
