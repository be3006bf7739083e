//! A real Prometheus (Debian's `prometheus` package) inside the lab: it
//! scrapes the aggregator and every agent from node 1's namespace, and
//! evaluates the chart's alert rules (`charts/netmatrix/files/`), so alert
//! tests see what a cluster's Prometheus would.
//!
//! It listens on loopback inside node 1's namespace and is reached through
//! its own forwarder on the root namespace's 127.0.0.1, like the aggregator.
//! Scrape targets are static (the lab knows every address); in a cluster
//! the chart's ServiceMonitor and PodMonitors discover the same endpoints.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::task::JoinHandle;

use super::{Lab, LabError};
use crate::net::topology::{AGENT_SVC, AGGREGATOR_PORT, HOST_AGENT_PORT};
use crate::process::ProcessSpec;

/// Prometheus's port on node 1's loopback.
const PROMETHEUS_PORT: u16 = 9099;
/// Scrape and rule evaluation period: the lab probes every second.
const PERIOD: &str = "1s";
/// How long Prometheus may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running Prometheus in a lab. Stopped with the lab; dropping the handle
/// closes its forwarder.
pub struct LabPrometheus {
    url: String,
    forwarder: JoinHandle<()>,
    http: reqwest::Client,
}

impl Drop for LabPrometheus {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// One alert as listed by `GET /api/v1/alerts`.
#[derive(Debug, Clone, Deserialize)]
pub struct Alert {
    pub labels: std::collections::BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: String,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }
}

/// One scrape target as listed by `GET /api/v1/targets`.
#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    #[serde(rename = "scrapeUrl")]
    pub scrape_url: String,
    /// `up`, `down` or `unknown`.
    pub health: String,
    #[serde(rename = "lastError", default)]
    pub last_error: String,
}

#[derive(Deserialize)]
struct ApiResponse<T> {
    status: String,
    data: T,
}

#[derive(Deserialize)]
struct AlertsData {
    alerts: Vec<Alert>,
}

#[derive(Deserialize)]
struct TargetsData {
    #[serde(rename = "activeTargets")]
    active_targets: Vec<Target>,
}

/// Where Debian installs Prometheus, or the first `prometheus` on PATH.
pub fn prometheus_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}

impl Lab {
    /// Starts Prometheus in node 1's namespace with `rule_files`, scraping
    /// the aggregator and every agent each second, and waits until it is
    /// ready.
    pub async fn start_prometheus(&self, rule_files: &[&Path]) -> Result<LabPrometheus, LabError> {
        let program = prometheus_binary().ok_or_else(|| LabError::Io {
            what:
                "prometheus not found (Debian package `prometheus`; scripts/setup-test installs it)"
                    .into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let topo = self.topology();
        let cp = topo.control_plane().clone();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| std::path::absolute(p).map(|p| p.display().to_string()))
            .collect::<Result<_, _>>()
            .map_err(|source| LabError::Io {
                what: "rule file path".into(),
                source,
            })?;
        let agents: Vec<(String, String)> = topo
            .nodes
            .iter()
            .map(|n| (format!("{}:{}", n.agent.ip, AGENT_SVC.1), n.name.clone()))
            .collect();
        let host_agents: Vec<(String, String)> = if self.config.host_agents {
            topo.nodes
                .iter()
                .map(|n| (format!("{}:{HOST_AGENT_PORT}", n.ip), n.name.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let config = config_yaml(
            &rules,
            &format!("{}:{AGGREGATOR_PORT}", cp.ip),
            &agents,
            &host_agents,
        );
        let config_path = self.state.write("prometheus.yml", &config)?;
        let data = self.state.file("prometheus-data");
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, PROMETHEUS_PORT));
        self.procs.start(ProcessSpec {
            name: "prometheus".into(),
            netns: cp.netns.clone(),
            program,
            args: vec![
                format!("--config.file={}", config_path.display()),
                format!("--storage.tsdb.path={}", data.display()),
                format!("--web.listen-address={listen}"),
                // Alerts resolve as soon as their rule stops matching.
                "--rules.alert.resend-delay=1s".into(),
            ],
            env: vec![],
        })?;
        let listener = crate::net::forward::bind(0)
            .await
            .map_err(|source| LabError::Io {
                what: "forwarder for Prometheus on 127.0.0.1".into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| LabError::Io {
            what: "forwarder address".into(),
            source,
        })?;
        let forwarder = tokio::spawn(crate::net::forward::serve(listener, cp.netns, listen));
        let prometheus = LabPrometheus {
            url: format!("http://{addr}"),
            forwarder,
            // The lab's client: no proxy, short timeouts.
            http: self.http.clone(),
        };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }
}

impl LabPrometheus {
    /// `http://127.0.0.1:PORT`, through the forwarder.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn wait_ready(&self) -> Result<(), LabError> {
        let started = Instant::now();
        let url = format!("{}/-/ready", self.url);
        let mut last = String::new();
        while started.elapsed() < READY_WITHIN {
            match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(LabError::Timeout {
            waited: READY_WITHIN,
            what: "Prometheus to be ready".into(),
            last,
        })
    }

    /// Active and pending alerts.
    pub async fn alerts(&self) -> Result<Vec<Alert>, LabError> {
        let data: AlertsData = self.get("/api/v1/alerts").await?;
        Ok(data.alerts)
    }

    /// Scrape targets and their health.
    pub async fn targets(&self) -> Result<Vec<Target>, LabError> {
        let data: TargetsData = self.get("/api/v1/targets?state=active").await?;
        Ok(data.active_targets)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, LabError> {
        let url = format!("{}{path}", self.url);
        let body: ApiResponse<T> = super::get_json(&self.http, url.clone()).await?;
        if body.status != "success" {
            return Err(LabError::Http {
                url,
                message: format!("Prometheus answered status {:?}", body.status),
            });
        }
        Ok(body.data)
    }
}

/// `prometheus.yml`: the aggregator and agents as static targets, each
/// agent labelled with its node like the chart's PodMonitor does.
fn config_yaml(
    rules: &[String],
    aggregator: &str,
    agents: &[(String, String)],
    host_agents: &[(String, String)],
) -> String {
    let mut out = format!(
        "global:\n  scrape_interval: {PERIOD}\n  scrape_timeout: {PERIOD}\n  evaluation_interval: {PERIOD}\nrule_files:\n"
    );
    for r in rules {
        out.push_str(&format!("  - {r:?}\n"));
    }
    out.push_str(&format!(
        "scrape_configs:\n  - job_name: netmatrix-aggregator\n    static_configs:\n      - targets: [{aggregator:?}]\n"
    ));
    for (job, targets) in [
        ("netmatrix-agent", agents),
        ("netmatrix-host-agent", host_agents),
    ] {
        if targets.is_empty() {
            continue;
        }
        out.push_str(&format!("  - job_name: {job}\n    static_configs:\n"));
        for (target, node) in targets {
            out.push_str(&format!(
                "      - targets: [{target:?}]\n        labels: {{node: {node:?}}}\n"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_every_target_with_its_node() {
        let yaml = config_yaml(
            &["/r/alerts.yaml".into()],
            "10.0.0.1:8080",
            &[
                ("10.244.1.2:9090".into(), "node-1".into()),
                ("10.244.2.2:9090".into(), "node-2".into()),
            ],
            &[],
        );
        assert!(yaml.contains("  - \"/r/alerts.yaml\"\n"), "{yaml}");
        assert!(yaml.contains("targets: [\"10.0.0.1:8080\"]"), "{yaml}");
        assert!(
            yaml.contains("targets: [\"10.244.2.2:9090\"]\n        labels: {node: \"node-2\"}"),
            "{yaml}"
        );
        assert!(!yaml.contains("netmatrix-host-agent"), "{yaml}");
    }
}
