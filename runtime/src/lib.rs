//! Process plumbing shared by the netmatrix binaries, so that the agent and
//! the aggregator start, load their Kubernetes configuration and stop the
//! same way:
//!
//! - [`init`]: logging (`RUST_LOG`, default `info`) and the one rustls crypto
//!   provider (ring; with two providers compiled in, rustls panics at the
//!   first client);
//! - [`kube_config`]: `--kubeconfig` (several files, like `KUBECONFIG`) or
//!   the in-cluster service account;
//! - [`shutdown_signal`]: SIGINT or SIGTERM (Kubernetes stops pods with SIGTERM);
//! - [`exit_code`]: the operator-facing error chain, without a backtrace;
//! - [`serve`]: the bounded HTTP server both binaries serve with;
//! - [`k8s`]: one reading of Pods, Nodes and API times, and the watch loop;
//! - [`clock`]: now, in Unix milliseconds or seconds;
//! - [`metrics`]: gauge series that vanish when no longer written;
//! - [`flags`]: flags both binaries take, declared once.

pub mod clock;
pub mod flags;
pub mod k8s;
pub mod metrics;
pub mod serve;
pub mod udp_echo;

pub use clock::{now_unix_ms, now_unix_secs};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use tracing_subscriber::EnvFilter;

/// Why no Kubernetes client configuration could be built.
#[derive(Debug, thiserror::Error)]
pub enum KubeConfigError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Read {
        path: PathBuf,
        source: KubeconfigError,
    },
    #[error("--kubeconfig names no file")]
    Empty,
    #[error(
        "cannot configure the Kubernetes client: {0}; pass --kubeconfig (or KUBECONFIG), or run in a pod with a service account"
    )]
    Config(String),
}

/// Logging and the process-wide crypto provider; call first in `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Colour only on a terminal: `kubectl logs` and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
}

/// The Kubernetes client configuration: the kubeconfig file(s) given
/// (colon-separated and merged, like kubectl's `KUBECONFIG`), otherwise
/// kube's inference (in-cluster service account, then `~/.kube/config`).
pub async fn kube_config(kubeconfig: Option<&Path>) -> Result<kube::Config, KubeConfigError> {
    let Some(paths) = kubeconfig else {
        return kube::Config::infer()
            .await
            .map_err(|e| KubeConfigError::Config(e.to_string()));
    };
    let mut merged: Option<Kubeconfig> = None;
    for path in std::env::split_paths(paths).filter(|p| !p.as_os_str().is_empty()) {
        let read = |source| KubeConfigError::Read {
            path: path.clone(),
            source,
        };
        let next = Kubeconfig::read_from(&path).map_err(read)?;
        merged = Some(match merged {
            None => next,
            Some(m) => m.merge(next).map_err(read)?,
        });
    }
    let merged = merged.ok_or(KubeConfigError::Empty)?;
    kube::Config::from_custom_kubeconfig(merged, &KubeConfigOptions::default())
        .await
        .map_err(|e| KubeConfigError::Config(e.to_string()))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

/// Logs a failed run as one cause chain (no backtrace, even with
/// `RUST_BACKTRACE` set) and turns it into the exit code.
pub fn exit_code<E: std::error::Error>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", cause_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// `error: cause: cause`, skipping causes whose text an outer message
/// already shows (many errors print their source in their own message).
pub fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cause_chain_shows_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("top")]
        struct Top(#[source] Outer);
        let e = Top(Outer(std::io::Error::other("disk on fire")));
        assert_eq!(cause_chain(&e), "top: outer: disk on fire");
    }

    #[tokio::test]
    async fn kubeconfig_files_are_read_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("netmatrix-runtime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.yaml");
        std::fs::write(
            &good,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
        )
        .unwrap();
        let config = kube_config(Some(&good)).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:1/");

        let missing = dir.join("missing.yaml");
        let err = kube_config(Some(&missing)).await.unwrap_err();
        assert!(err.to_string().contains("missing.yaml"), "{err}");
        assert!(matches!(
            kube_config(Some(Path::new(""))).await,
            Err(KubeConfigError::Empty)
        ));
        std::fs::remove_dir_all(dir).ok();
    }
}
