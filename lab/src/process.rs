//! The lab's processes: the agents (one per node, in the agent pod's
//! namespace) and the aggregator (host network of node 1), each run with
//! `ip netns exec NS BIN ...`, output to a log file in the state directory.
//!
//! Processes are spawned from one long-lived thread per lab with
//! `PR_SET_PDEATHSIG`: the kernel kills them when that thread ends, which is
//! when the lab is dropped or the lab process dies, even by SIGKILL (the
//! signal follows the spawning *thread*, so spawning from tokio's short-lived
//! blocking threads would kill children at random). `Drop` also stops them
//! explicitly, and their pids are recorded for `netmatrix-lab down`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::state::StateDir;

pub const AGENT_BIN: &str = "netmatrix-agent";
pub const AGGREGATOR_BIN: &str = "netmatrix-aggregator";
/// The command line (`validate`, `matrix`...), run by tests as an operator would.
pub const CLI_BIN: &str = "netmatrix";
/// Overrides where the binaries are looked for.
pub const BIN_DIR_ENV: &str = "NETMATRIX_BIN_DIR";
/// How long a process gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "{name} not found (looked in {searched}); run `cargo build --workspace` first, or set {BIN_DIR_ENV}"
    )]
    MissingBinary { name: String, searched: String },
    #[error("cannot start {name}: {source} (log: {log})")]
    Spawn {
        name: String,
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("the lab's process spawner thread is gone")]
    SpawnerGone,
    #[error("no process named {0} in this lab")]
    Unknown(String),
}

/// Paths of the netmatrix binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub agent: PathBuf,
    pub aggregator: PathBuf,
    pub cli: PathBuf,
}

impl Binaries {
    /// Looks in `dir` if given, else `$NETMATRIX_BIN_DIR`, else next to the
    /// running executable and in its parent (test executables live in
    /// `target/debug/deps`, the binaries in `target/debug`).
    pub fn locate(dir: Option<&Path>) -> Result<Self, ProcessError> {
        let candidates: Vec<PathBuf> = match dir
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(BIN_DIR_ENV).map(PathBuf::from))
        {
            Some(d) => vec![d],
            None => {
                let exe = std::env::current_exe().ok();
                let here = exe.as_deref().and_then(Path::parent);
                here.into_iter()
                    .chain(here.and_then(Path::parent))
                    .map(Path::to_path_buf)
                    .collect()
            }
        };
        let find = |name: &str| {
            candidates
                .iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| ProcessError::MissingBinary {
                    name: name.to_string(),
                    searched: candidates
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        };
        Ok(Binaries {
            agent: find(AGENT_BIN)?,
            aggregator: find(AGGREGATOR_BIN)?,
            cli: find(CLI_BIN)?,
        })
    }
}

/// The `PATH` of every process the lab starts: the system's directories,
/// never the user's shell's (whose tools could shadow `ip` or `iptables`).
pub const LAB_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run, and where.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Unique name in the lab, e.g. `agent-node-2`; also the log file's name.
    pub name: String,
    /// Empty: the lab's own namespaces (a container runtime, which joins
    /// the pod's network namespace itself and needs the host's `/sys`).
    pub netns: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

struct Request {
    spec: ProcessSpec,
    log: PathBuf,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// The lab's running processes.
pub struct Processes {
    state: StateDir,
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    spawner: Mutex<Option<JoinHandle<()>>>,
    running: Mutex<BTreeMap<String, (ProcessSpec, Child)>>,
}

impl Processes {
    pub fn new(state: StateDir) -> Self {
        let (tx, rx) = mpsc::channel::<Request>();
        let spawner = std::thread::Builder::new()
            .name("lab-spawner".into())
            .spawn(move || {
                for req in rx {
                    let _ = req.reply.send(spawn_now(&req.spec, &req.log));
                }
            })
            .ok();
        Processes {
            state,
            requests: Mutex::new(Some(tx)),
            spawner: Mutex::new(spawner),
            running: Mutex::new(BTreeMap::new()),
        }
    }

    /// Log file of process `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.state.file(&format!("{name}.log"))
    }

    /// Starts `spec` (replacing a stopped process of the same name).
    pub fn start(&self, spec: ProcessSpec) -> Result<u32, ProcessError> {
        let log = self.log_path(&spec.name);
        let (reply, answer) = mpsc::channel();
        lock(&self.requests)
            .as_ref()
            .ok_or(ProcessError::SpawnerGone)?
            .send(Request {
                spec: spec.clone(),
                log: log.clone(),
                reply,
            })
            .map_err(|_| ProcessError::SpawnerGone)?;
        let child = answer
            .recv()
            .map_err(|_| ProcessError::SpawnerGone)?
            .map_err(|source| ProcessError::Spawn {
                name: spec.name.clone(),
                log: log.display().to_string(),
                source,
            })?;
        let pid = child.id();
        if let Err(e) = self.state.record_pid(&spec.name, pid) {
            tracing::warn!(error = %e, "cannot record pid");
        }
        tracing::info!(name = %spec.name, pid, netns = %spec.netns, "started");
        if let Some((_, mut old)) = lock(&self.running).insert(spec.name.clone(), (spec, child)) {
            stop_all(vec![&mut old]);
        }
        Ok(pid)
    }

    /// Stops process `name` (SIGTERM, then SIGKILL) and returns its spec so
    /// that it can be started again.
    pub fn stop(&self, name: &str) -> Result<ProcessSpec, ProcessError> {
        let (spec, mut child) = lock(&self.running)
            .remove(name)
            .ok_or_else(|| ProcessError::Unknown(name.to_string()))?;
        stop_all(vec![&mut child]);
        self.state.forget_pid(name);
        Ok(spec)
    }

    /// Freezes process `name` (SIGSTOP) or lets it go on (SIGCONT): a
    /// process starved of CPU, or paused by its runtime, as a whole.
    pub fn pause(&self, name: &str, paused: bool) -> Result<(), ProcessError> {
        let running = lock(&self.running);
        let (_, child) = running
            .get(name)
            .ok_or_else(|| ProcessError::Unknown(name.to_string()))?;
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child, not yet reaped (we hold it).
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        Ok(())
    }

    /// Names of processes that have exited on their own, with their status.
    pub fn exited(&self) -> Vec<(String, String)> {
        self.finished()
            .into_iter()
            .map(|(name, status)| (name, status.to_string()))
            .collect()
    }

    /// Processes that have exited on their own, with their exit code
    /// (`None`: killed by a signal).
    pub fn exit_codes(&self) -> Vec<(String, Option<i32>)> {
        self.finished()
            .into_iter()
            .map(|(name, status)| (name, status.code()))
            .collect()
    }

    fn finished(&self) -> Vec<(String, std::process::ExitStatus)> {
        lock(&self.running)
            .iter_mut()
            .filter_map(|(name, (_, child))| match child.try_wait() {
                Ok(Some(status)) => Some((name.clone(), status)),
                _ => None,
            })
            .collect()
    }

    /// Stops every process and the spawner thread.
    pub fn stop_everything(&self) {
        let mut running = std::mem::take(&mut *lock(&self.running));
        stop_all(running.values_mut().map(|(_, c)| c).collect());
        for name in running.keys() {
            self.state.forget_pid(name);
        }
        lock(&self.requests).take();
        if let Some(t) = lock(&self.spawner).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop_everything();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs on the spawner thread.
fn spawn_now(spec: &ProcessSpec, log: &Path) -> io::Result<Child> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut cmd = if spec.netns.is_empty() {
        Command::new(&spec.program)
    } else {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &spec.netns]).arg(&spec.program);
        cmd
    };
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: prctl is async-signal-safe; it runs in the child between fork
    // and exec. `ip netns exec` execs the binary, so the setting carries over.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// SIGTERM to all, wait up to [`STOP_GRACE`], SIGKILL the rest.
fn stop_all(mut children: Vec<&mut Child>) {
    for c in &children {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        if children.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}
