//! The lab's state directory, `/run/netmatrix-lab/<prefix>/`: logs,
//! kubeconfigs, the pids of the processes it started, its control socket.
//!
//! The directory is also the lab's mark of ownership: `netmatrix-lab down`
//! only removes namespaces whose prefix has a state directory, so it never
//! touches a namespace some other tool happened to name `nm...`. It is created
//! before the first namespace and removed after the last one.

use std::io;
use std::path::{Path, PathBuf};

use crate::net::netns;
use crate::net::topology::{is_prefix, prefix_of};

/// Parent of every lab's state directory (tmpfs: gone after a reboot, like
/// the namespaces themselves).
pub const STATE_ROOT: &str = "/run/netmatrix-lab";
/// File holding the pid of the process that owns the lab.
const OWNER_FILE: &str = "owner.pid";
/// Directory of `<name>` files holding the pids of started processes.
const PIDS_DIR: &str = "pids";
/// The control socket (see [`crate::control`]).
pub const CONTROL_SOCKET: &str = "control.sock";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write the lab's state in {path}: {source} (is /run writable? run as root)")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One lab's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    prefix: String,
    path: PathBuf,
}

impl StateDir {
    /// Creates the directory of `prefix` and records this process as owner.
    pub fn create(prefix: &str) -> Result<Self, StateError> {
        let dir = Self::of(prefix);
        let pids = dir.path.join(PIDS_DIR);
        std::fs::create_dir_all(&pids).map_err(|source| StateError::Io {
            path: pids.clone(),
            source,
        })?;
        dir.write(OWNER_FILE, &std::process::id().to_string())?;
        Ok(dir)
    }

    /// The (possibly missing) directory of `prefix`.
    pub fn of(prefix: &str) -> Self {
        StateDir {
            prefix: prefix.to_string(),
            path: Path::new(STATE_ROOT).join(prefix),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.file(CONTROL_SOCKET)
    }

    pub fn write(&self, name: &str, content: &str) -> Result<PathBuf, StateError> {
        let path = self.file(name);
        std::fs::write(&path, content).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Records the pid of a started process, so that `down` can stop it when
    /// the lab itself was killed.
    pub fn record_pid(&self, name: &str, pid: u32) -> Result<(), StateError> {
        self.write(&format!("{PIDS_DIR}/{name}"), &pid.to_string())
            .map(|_| ())
    }

    /// The pid of the lab's running process `name` (`aggregator`, `agent-node-2`...).
    pub fn pid(&self, name: &str) -> Option<u32> {
        read_pid(&self.path.join(PIDS_DIR).join(name))
    }

    pub fn forget_pid(&self, name: &str) {
        let _ = std::fs::remove_file(self.path.join(PIDS_DIR).join(name));
    }

    /// Whether the process that created the lab still runs.
    pub fn owner_alive(&self) -> bool {
        read_pid(&self.file(OWNER_FILE)).is_some_and(|pid| pid_alive(pid) && pid != 0)
    }

    /// Removes the directory (the lab's last step).
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the lab's state directory");
        }
    }
}

/// Writes `content` to `path` through a rename (a reader sees the old file
/// or the new one, never half of it), readable by every user as the
/// kubelet's projected volumes are (0644), its directory created.
pub fn write_for_pods(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let staged = path.with_extension("staged");
    std::fs::write(&staged, content)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&staged, path)
}

/// Prefixes of every lab with a state directory.
pub fn labs() -> Vec<StateDir> {
    let Ok(dir) = std::fs::read_dir(STATE_ROOT) else {
        return Vec::new();
    };
    let mut labs: Vec<StateDir> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| is_prefix(name))
        .map(|p| StateDir::of(&p))
        .collect();
    labs.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    labs
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct DownReport {
    pub killed: Vec<u32>,
    pub namespaces: Vec<String>,
    pub errors: Vec<String>,
}

/// Removes what lab `prefix` left behind: its processes (by recorded pid,
/// checked to still be a netmatrix process), its containers, every
/// namespace with its prefix, and its state directory.
pub fn down(prefix: &str) -> DownReport {
    let dir = StateDir::of(prefix);
    let mut report = DownReport::default();
    if let Ok(entries) = std::fs::read_dir(dir.path.join(PIDS_DIR)) {
        for entry in entries.filter_map(|e| e.ok()) {
            let Some(pid) = read_pid(&entry.path()) else {
                continue;
            };
            if is_netmatrix_process(pid) {
                // SAFETY: kill(2) with a pid we recorded and just checked.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                report.killed.push(pid);
            }
        }
    }
    // The container runtime mode's containers outlive a killed lab (their
    // monitor is not the lab's child): remove them by the lab's label.
    crate::workloads::remove_containers(std::path::Path::new("podman"), prefix);
    crate::net::cni::forget(prefix);
    for ns in netns::list() {
        if prefix_of(&ns) == Some(prefix) {
            match netns::delete(&ns) {
                Ok(()) => report.namespaces.push(ns),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
    dir.remove();
    report
}

/// Lab-looking namespaces (`nmXXXX-...`) without a state directory: not ours
/// to delete, but worth telling the user about.
pub fn foreign_namespaces() -> Vec<String> {
    netns::list()
        .into_iter()
        .filter(|ns| prefix_of(ns).is_some_and(|p| !StateDir::of(p).path.exists()))
        .collect()
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` runs (a zombie, killed but not yet reaped, does not).
fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Guards against pid reuse: only processes whose command line names
/// netmatrix are killed.
fn is_netmatrix_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("netmatrix"))
        .unwrap_or(false)
}
