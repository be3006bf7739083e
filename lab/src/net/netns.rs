//! Network namespaces and the kernel's own tools (`ip`, `bridge`, `iptables`).
//!
//! Every command the lab runs goes through [`run`], so that a failure names the
//! exact command line and the tool's stderr: a lab that cannot be built must
//! say which step failed and why, not "exit status 2".
//!
//! [`in_netns`] opens sockets inside a namespace without forking: a socket
//! stays in the namespace it was created in, so the lab's in-process servers
//! (API server, DNS, forwarder) can live inside the virtual cluster while the
//! lab process itself stays in the root namespace.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where `ip netns add` mounts namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A failed command or namespace operation.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "cannot run `{command}`: {source} (are iproute2 and iptables installed? see scripts/setup)"
    )]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {name}: {source} (does {NETNS_DIR}/{name} exist?)")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("in network namespace {name}: {source}")]
    Inside {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `program args...` (in namespace `ns` through `ip netns exec` when
/// given), feeding `stdin` if any, and returns its stdout.
pub fn run_with_input<S: AsRef<OsStr>>(
    ns: Option<&str>,
    program: &str,
    args: &[S],
    stdin: Option<&str>,
) -> Result<String, NetnsError> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args);
    let command = describe(&cmd);
    tracing::debug!(%command, "run");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| NetnsError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| NetnsError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args...`, in namespace `ns` when given.
pub fn run<S: AsRef<OsStr>>(
    ns: Option<&str>,
    program: &str,
    args: &[S],
) -> Result<String, NetnsError> {
    run_with_input(ns, program, args, None)
}

/// `ip -n NS args...` (or plain `ip args...` without a namespace). `ip -n`
/// switches namespace itself, which is cheaper than `ip netns exec`.
pub fn ip(ns: &str, args: &[&str]) -> Result<String, NetnsError> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run(None, "ip", &full)
}

/// `bridge -n NS args...`.
pub fn bridge(ns: &str, args: &[&str]) -> Result<String, NetnsError> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run(None, "bridge", &full)
}

/// `iptables -w args...` inside namespace `ns`.
pub fn iptables(ns: &str, args: &[&str]) -> Result<String, NetnsError> {
    let mut full = vec!["-w"];
    full.extend_from_slice(args);
    run(Some(ns), "iptables", &full)
}

/// Feeds `rules` (iptables-save format) to `iptables-restore --noflush` in
/// `ns`: one atomic transaction per node instead of one process per rule.
pub fn iptables_restore(ns: &str, rules: &str) -> Result<(), NetnsError> {
    run_with_input(Some(ns), "iptables-restore", &["--noflush"], Some(rules)).map(|_| ())
}

/// Sets namespaced sysctls (`key=value`) inside `ns`.
pub fn sysctl(ns: &str, settings: &[&str]) -> Result<(), NetnsError> {
    let mut args = vec!["-q", "-w"];
    args.extend_from_slice(settings);
    run(Some(ns), "sysctl", &args).map(|_| ())
}

/// Reads one sysctl inside `ns`.
pub fn sysctl_get(ns: &str, key: &str) -> Result<String, NetnsError> {
    run(Some(ns), "sysctl", &["-n", key]).map(|s| s.trim().to_string())
}

/// Creates a named network namespace with `lo` up.
pub fn add(name: &str) -> Result<(), NetnsError> {
    run(None, "ip", &["netns", "add", name])?;
    ip(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a named network namespace; a missing one is not an error (cleanup
/// must be idempotent).
pub fn delete(name: &str) -> Result<(), NetnsError> {
    if !exists(name) {
        return Ok(());
    }
    run(None, "ip", &["netns", "del", name]).map(|_| ())
}

/// Whether `/run/netns/NAME` exists.
pub fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Names of all named network namespaces (empty when there are none).
pub fn list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Runs `f` on a fresh thread that first joins network namespace `name`, and
/// returns its result. Sockets created by `f` stay in that namespace after the
/// thread exits; the calling thread's namespace is untouched.
///
/// Blocking: call it from `tokio::task::spawn_blocking` in async code.
pub fn in_netns<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> std::io::Result<T> + Send,
{
    let path = Path::new(NETNS_DIR).join(name);
    let file = File::open(&path).map_err(|source| NetnsError::Enter {
        name: name.to_string(),
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a valid fd we own; it only changes this
                // short-lived thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(NetnsError::Enter {
                        name: name.to_string(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                f().map_err(|source| NetnsError::Inside {
                    name: name.to_string(),
                    source,
                })
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetnsError::Inside {
                    name: name.to_string(),
                    source: std::io::Error::other("the closure panicked"),
                })
            })
    })
}

/// `GET path` over HTTP/1.0 to `addr`, from a socket opened inside `ns` (as
/// `kubectl port-forward` reaches a pod's loopback), each step bounded by
/// `timeout`: the body of a `200`; any other answer is an error naming its
/// status line.
pub fn http_get(
    ns: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<String, NetnsError> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
        let ok = head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200");
        if !ok {
            let status = head.lines().next().unwrap_or("");
            return Err(std::io::Error::other(format!("GET {addr}{path}: {status}")));
        }
        Ok(body.to_owned())
    })
}

/// Shell-like rendering of a command for error messages and logs.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
