//! Churn: what changes in a running cluster without anything being broken
//! (a node cordoned, an agent restarted, a pod re-created with a new
//! address). Netmatrix must follow it without raising findings.

use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use netmatrix_api::labels;

use super::{AgentNetwork, Lab, LabError, agent_process, lock};
use crate::cluster;
use crate::network;
use crate::topology::{NAMESPACE, NodePlan, PodPlan, Topology};

impl Lab {
    fn node_plan(&self, node: &str) -> Result<NodePlan, LabError> {
        self.topology()
            .node(node)
            .cloned()
            .ok_or_else(|| LabError::UnknownNode(node.to_owned()))
    }

    /// `kubectl cordon NODE`: `spec.unschedulable` set.
    pub fn cordon(&self, node: &str) -> Result<(), LabError> {
        self.set_unschedulable(node, true)
    }

    /// `kubectl uncordon NODE`.
    pub fn uncordon(&self, node: &str) -> Result<(), LabError> {
        self.set_unschedulable(node, false)
    }

    fn set_unschedulable(&self, node: &str, on: bool) -> Result<(), LabError> {
        if !self.cluster.set_node_unschedulable(node, on) {
            return Err(LabError::UnknownNode(node.to_owned()));
        }
        tracing::info!(node, cordoned = on, "node schedulability changed");
        Ok(())
    }

    /// Restarts one agent process, as the kubelet restarts a container:
    /// same pod, same address, a new process (its round counter starts
    /// again). Blocks up to the stop grace (2 s).
    pub fn restart_agent(&self, node: &str, network: AgentNetwork) -> Result<(), LabError> {
        let plan = self.node_plan(node)?;
        let name = agent_process(&plan, network);
        // A stopped agent (kill-agent) is simply started.
        if let Err(e) = self.procs.stop(&name) {
            tracing::debug!(error = %e, "agent was not running");
        }
        self.procs.start(self.agent_spec(&plan, network)?)?;
        tracing::info!(process = %name, "agent restarted");
        Ok(())
    }

    /// Re-creates `node`'s companion pod under a new name and address, as a
    /// Deployment replaces a deleted pod: the old Pod object goes
    /// (terminating, then deleted) with its namespace; the new one is
    /// created `Pending` without an address, its namespace is wired, and
    /// only then is it `Running` with its IP. Returns the new pod.
    pub fn recreate_companion(&self, node: &str) -> Result<PodPlan, LabError> {
        let _serial = lock(&self.churn);
        let plan = self.node_plan(node)?;
        let old = plan.companion.clone();
        let generation = self.recreated.fetch_add(1, Ordering::SeqCst) + 1;
        let new = Topology::recreated_companion(&plan, generation);

        self.cluster.set_pod_terminating(NAMESPACE, &old.name);
        self.cluster.delete_pod(NAMESPACE, &old.name);
        network::remove_pod(&old)?;

        let running = companion_pod(&plan, &new);
        let mut pending = running.clone();
        if let Some(status) = pending.status.as_mut() {
            status.phase = Some("Pending".to_owned());
            status.pod_ip = None;
            status.pod_ips = None;
            status.conditions = Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: "False".to_owned(),
                ..Default::default()
            }]);
        }
        self.cluster.apply_pod(pending);
        if let Err(e) = network::add_pod(&plan, &new) {
            // Leave no half-wired namespace; the Pod stays Pending, as a
            // pod whose sandbox cannot be created does.
            let _ = network::remove_pod(&new);
            return Err(e.into());
        }
        self.topo
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set_companion(plan.index, new.clone());
        self.cluster.apply_pod(running);
        tracing::info!(node, old = %old.name, new = %new.name, ip = %new.ip, "companion re-created");
        Ok(new)
    }
}

/// The Running Pod object of a companion.
fn companion_pod(node: &NodePlan, pod: &PodPlan) -> Pod {
    cluster::pod(
        NAMESPACE,
        &pod.name,
        &node.name,
        &pod.ip.to_string(),
        &[
            (labels::NAME, labels::APP),
            (labels::COMPONENT, labels::COMPONENT_COMPANION),
            (labels::PROBE_TARGET, "true"),
        ],
        false,
    )
}
