//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::time::Duration;

use netmatrix_lab::lab::is_root;
use netmatrix_lab::net::netns;
use netmatrix_lab::net::topology::Topology;
use netmatrix_lab::{Lab, LabConfig};

/// Each wait of the end-to-end tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(60);

/// Fails (never skips) when not root: a skipped acceptance test would read as
/// a pass.
pub fn require_root() {
    assert!(
        is_root(),
        "the lab creates network namespaces: run the end-to-end tests as root (sudo, or scripts/test)"
    );
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "netmatrix_lab=info".into()),
        )
        .try_init();
}

/// A 3-node lab with a 1 s interval, its own prefix and a free forwarder port.
pub async fn lab(components: bool) -> Lab {
    require_root();
    init_tracing();
    let lab = Lab::up(LabConfig {
        components,
        ..LabConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    eprintln!("lab {} up in {:.2?}", lab.prefix(), lab.up_took());
    lab
}

/// One `ping` from namespace `ns` (1 s timeout) with `extra` options.
pub fn ping_args(ns: &str, ip: &str, extra: &[&str]) -> bool {
    let mut args = vec!["-c", "1", "-W", "1", "-q"];
    args.extend_from_slice(extra);
    args.push(ip);
    netns::run(Some(ns), "ping", &args).is_ok()
}

/// Whether `ip` answers a ping from `ns`. Two tries: the first echo after a
/// heal may wait for ARP.
pub fn ping(ns: &str, ip: &str) -> bool {
    ping_args(ns, ip, &[]) || ping_args(ns, ip, &[])
}

/// Every agent pod reaches every probe target (agent and companion pods) of
/// every node, its own included.
pub fn assert_pod_mesh(t: &Topology) {
    for from in &t.nodes {
        for to in &t.nodes {
            for pod in to.probe_targets() {
                let ip = pod.ip.to_string();
                assert!(
                    ping(&from.agent.netns, &ip),
                    "{} -> {} ({ip})",
                    from.name,
                    pod.name
                );
            }
        }
    }
}

/// `tool ARGS` (kubectl, helm) against `lab` through its kubeconfig; its
/// stdout, or a panic with its stderr.
pub fn client(lab: &Lab, tool: &str, args: &[&str]) -> String {
    let mut command = std::process::Command::new(tool);
    command.env("KUBECONFIG", lab.kubeconfig_path());
    // Caches and helm's state in the lab's state directory (removed with
    // the lab), not in the user's home.
    let cache = lab.state_dir().file("client-cache");
    command
        .env("HELM_CACHE_HOME", &cache)
        .env("HELM_CONFIG_HOME", &cache)
        .env("HELM_DATA_HOME", &cache);
    if tool == "kubectl" {
        command.arg("--cache-dir").arg(&cache);
    }
    let output = command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): install it with scripts/setup-test"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{tool} {args:?} failed ({}):\n{}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
