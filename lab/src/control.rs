//! The control socket: `netmatrix-lab fault ...` and `heal` in another
//! terminal reach the running `netmatrix-lab up` through a Unix socket in the
//! lab's state directory. One JSON request line, one JSON answer line.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::lab::Lab;
use crate::net::faults::Fault;
use crate::state::{self, StateDir};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Fault {
        fault: Fault,
    },
    Heal,
    Status,
    /// A node joins ([`Lab::add_node`]).
    AddNode,
    /// A node leaves ([`Lab::remove_node`]).
    RemoveNode {
        node: String,
    },
    /// A churn run ([`Lab::churn`]); answered when it ends.
    Churn {
        duration_ms: u64,
    },
    /// What the API emulator sent each client ([`Lab::api_clients`]); the
    /// message is their counters as JSON.
    ApiClients,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no running lab found (start one with `netmatrix-lab up`)")]
    NoLab,
    #[error("several labs are running ({0}); say which with --prefix")]
    Ambiguous(String),
    #[error(
        "lab {0} is not running (no live owner or control socket); `netmatrix-lab down --prefix {0}` removes its leftovers"
    )]
    NotRunning(String),
    #[error("talking to the lab at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the lab answered something unreadable: {0}")]
    Protocol(String),
}

/// Binds the control socket of `dir`.
pub fn bind(dir: &StateDir) -> std::io::Result<UnixListener> {
    let path = dir.control_socket();
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(path)
}

/// Answers requests for `lab` until the task is dropped.
pub async fn serve(listener: UnixListener, lab: Arc<Lab>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let lab = lab.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, lab).await {
                tracing::debug!(%error, "control connection failed");
            }
        });
    }
}

async fn answer(stream: UnixStream, lab: Arc<Lab>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        // Async: it polls the aggregator and runs its steps on the
        // blocking pool itself.
        Ok(Request::Churn { duration_ms }) => {
            match lab.churn(Duration::from_millis(duration_ms)).await {
                Ok(report) => Response {
                    ok: report.clean(),
                    message: report.to_string(),
                },
                Err(e) => Response {
                    ok: false,
                    message: format!("churn: {e}"),
                },
            }
        }
        Ok(request) => tokio::task::spawn_blocking(move || handle(&lab, request))
            .await
            .unwrap_or_else(|e| Response {
                ok: false,
                message: format!("the request failed: {e}"),
            }),
        Err(e) => Response {
            ok: false,
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    out.push('\n');
    write.write_all(out.as_bytes()).await
}

fn handle(lab: &Lab, request: Request) -> Response {
    let result = match request {
        Request::Fault { fault } => lab
            .fault(fault.clone())
            .map(|()| format!("applied {fault}")),
        Request::Heal => lab.heal().map(|healed| {
            if healed.is_empty() {
                "nothing to heal".to_string()
            } else {
                let names: Vec<String> = healed.iter().map(ToString::to_string).collect();
                format!("healed {}", names.join(", "))
            }
        }),
        Request::AddNode => lab
            .add_node()
            .map(|n| format!("{} joined ({}, pods {})", n.name, n.ip, n.pod_cidr)),
        Request::RemoveNode { node } => lab
            .remove_node(&node)
            .map(|n| format!("{} removed", n.name)),
        Request::Churn { .. } => Ok("churn runs asynchronously".into()),
        Request::ApiClients => {
            serde_json::to_string_pretty(&lab.api_clients()).map_err(|e| crate::lab::LabError::Io {
                what: "writing the API clients as JSON".into(),
                source: std::io::Error::other(e),
            })
        }
        Request::Status => Ok(format!(
            "lab {} at {}; faults: {}",
            lab.prefix(),
            lab.aggregator_url(),
            lab.faults_summary()
        )),
    };
    match result {
        Ok(message) => Response { ok: true, message },
        Err(e) => Response {
            ok: false,
            message: e.to_string(),
        },
    }
}

/// The running lab to talk to: `prefix` if given, else the only running one.
pub fn find_lab(prefix: Option<&str>) -> Result<StateDir, ControlError> {
    if let Some(p) = prefix {
        let dir = StateDir::of(p);
        if dir.owner_alive() && dir.control_socket().exists() {
            return Ok(dir);
        }
        return Err(ControlError::NotRunning(p.to_string()));
    }
    let mut running = running_labs();
    match running.len() {
        0 => Err(ControlError::NoLab),
        1 => Ok(running.remove(0)),
        _ => Err(ControlError::Ambiguous(
            running
                .iter()
                .map(|d| d.prefix().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The labs whose `up` still runs and listens on its control socket.
pub fn running_labs() -> Vec<StateDir> {
    state::labs()
        .into_iter()
        .filter(|d| d.owner_alive() && d.control_socket().exists())
        .collect()
}

/// Sends one request to the lab listening on `socket`.
pub async fn request(socket: &Path, request: &Request) -> Result<Response, ControlError> {
    let io = |source| ControlError::Io {
        path: socket.display().to_string(),
        source,
    };
    let stream = UnixStream::connect(socket).await.map_err(io)?;
    let (read, mut write) = stream.into_split();
    let mut line =
        serde_json::to_string(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::Protocol(format!("{e}: {answer:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object() {
        let r = Request::Fault {
            fault: Fault::overlay_down("node-2"),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"op":"fault","fault":{"kind":"overlay-down","nodes":["node-2"]}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Request::Heal).unwrap(),
            r#"{"op":"heal"}"#
        );
    }
}
