//! Kubernetes labels and names shared by the chart, the lab and the binaries.
//!
//! Agents and companion pods both carry [`PROBE_TARGET`], so one equality-based
//! selector finds every pod that should be pinged.

/// `app.kubernetes.io/name` of every netmatrix pod.
pub const NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/component`: `agent`, `host-agent`, `companion` or `aggregator`.
pub const COMPONENT: &str = "app.kubernetes.io/component";
/// Set to `"true"` on pods other agents should probe (agents and companions).
pub const PROBE_TARGET: &str = "netmatrix.io/probe-target";

pub const APP: &str = "netmatrix";
pub const COMPONENT_AGENT: &str = "agent";
pub const COMPONENT_COMPANION: &str = "companion";
/// The agent of the host network (`hostNetwork: true`): its pod IP is the
/// node's IP, and it probes the other host agents, so node-to-node paths are
/// measured beside pod-to-pod ones.
pub const COMPONENT_HOST_AGENT: &str = "host-agent";
pub const COMPONENT_AGGREGATOR: &str = "aggregator";

/// Selector of the pods an agent probes.
pub const PEER_SELECTOR: &str = "app.kubernetes.io/name=netmatrix,netmatrix.io/probe-target=true";
/// Selector of the agent pods (the ones that report, and that the headless
/// Service's SRV record lists).
pub const AGENT_SELECTOR: &str =
    "app.kubernetes.io/name=netmatrix,app.kubernetes.io/component=agent";
/// Selector of the host-network agent pods: what a host agent probes, and
/// who else may report (with `network: host`).
pub const HOST_AGENT_SELECTOR: &str =
    "app.kubernetes.io/name=netmatrix,app.kubernetes.io/component=host-agent";
/// Selector of every pod allowed to report: pod-network and host-network agents.
pub const REPORTER_SELECTOR: &str =
    "app.kubernetes.io/name=netmatrix,app.kubernetes.io/component in (agent,host-agent)";
/// Selector of the aggregator pods (agents report to them directly when the
/// aggregator Service is unreachable).
pub const AGGREGATOR_SELECTOR: &str =
    "app.kubernetes.io/name=netmatrix,app.kubernetes.io/component=aggregator";

/// ServiceAccount of the pod-network agents (the chart's name for a release
/// called `netmatrix`).
pub const AGENT_SERVICE_ACCOUNT: &str = "netmatrix-agent";
/// ServiceAccount of the host-network agents.
pub const HOST_AGENT_SERVICE_ACCOUNT: &str = "netmatrix-host-agent";
/// Audience of the agents' projected ServiceAccount tokens: the aggregator
/// refuses tokens issued for anyone else (the API server's among them).
pub const TOKEN_AUDIENCE: &str = "netmatrix";
