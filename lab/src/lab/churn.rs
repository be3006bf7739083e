//! Churn: what changes in a running cluster without anything being broken
//! (a node cordoned, an agent restarted, a pod re-created with a new
//! address, a node joining or leaving). Netmatrix must follow it without
//! raising findings.

use std::sync::atomic::Ordering;

use super::{
    AGGREGATOR_POD, AGGREGATOR_PROCESS, AgentNetwork, Lab, LabError, agent_process,
    companion_process, lock, objects,
};
use crate::net::network;
use crate::net::services;
use crate::net::topology::{NAMESPACE, NodePlan, Overlay, PodPlan, Topology};

impl Lab {
    /// Churn acts on the processes and pods the process mode plans; in the
    /// container runtime mode the cluster's workloads own them.
    pub(super) fn process_mode(&self, what: &str) -> Result<(), LabError> {
        if self.topology().netmatrix_pods {
            Ok(())
        } else {
            Err(LabError::Busy(format!(
                "{what} acts on the process mode's own pods and processes: it is not available with --runtime container"
            )))
        }
    }

    pub(super) fn node_plan(&self, node: &str) -> Result<NodePlan, LabError> {
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

    /// Kills the aggregator (its pod deleted, or its container crashed):
    /// what it held in memory is gone. The agents keep probing the lists
    /// they hold. [`start_aggregator`](Self::start_aggregator) brings it back.
    pub fn stop_aggregator(&self) -> Result<(), LabError> {
        self.process_mode("stopping the aggregator")?;
        self.procs.stop(AGGREGATOR_PROCESS)?;
        tracing::info!("aggregator stopped");
        Ok(())
    }

    /// Starts the aggregator again after [`stop_aggregator`](Self::stop_aggregator):
    /// a fresh process, which lists the API again.
    pub fn start_aggregator(&self) -> Result<(), LabError> {
        self.process_mode("starting the aggregator")?;
        self.start_pod(AGGREGATOR_POD, self.aggregator_spec()?)?;
        tracing::info!("aggregator started");
        Ok(())
    }

    /// Restarts one agent process, as the kubelet restarts a container:
    /// same pod, same address, a new process (its round counter starts
    /// again). Blocks up to the stop grace (2 s).
    pub fn restart_agent(&self, node: &str, network: AgentNetwork) -> Result<(), LabError> {
        self.process_mode("restart-agent")?;
        let plan = self.node_plan(node)?;
        let name = agent_process(&plan, network);
        // A stopped agent (kill-agent) is simply started.
        if let Err(e) = self.procs.stop(&name) {
            tracing::debug!(error = %e, "agent was not running");
        }
        self.start_agent_pod(&plan, network)?;
        tracing::info!(process = %name, "agent restarted");
        Ok(())
    }

    /// Re-creates `node`'s companion pod under a new name and address, as a
    /// Deployment replaces a deleted pod: the old Pod object goes
    /// (terminating, then deleted) with its namespace; the new one is
    /// created `Pending` without an address, its namespace is wired, and
    /// only then is it `Running` with its IP. Returns the new pod.
    pub fn recreate_companion(&self, node: &str) -> Result<PodPlan, LabError> {
        self.process_mode("re-creating a companion")?;
        let _serial = lock(&self.churn);
        let plan = self.node_plan(node)?;
        let old = plan.companion.clone();
        let generation = self.recreated.fetch_add(1, Ordering::SeqCst) + 1;
        let new = Topology::recreated_companion(&plan, generation);

        self.cluster.set_pod_terminating(NAMESPACE, &old.name);
        if self.binaries.is_some()
            && let Err(e) = self.procs.stop(&companion_process(&plan))
        {
            tracing::debug!(error = %e, "companion was not running");
        }
        self.cluster.delete_pod(NAMESPACE, &old.name);
        network::remove_pod(&plan, &old)?;

        let running = objects::companion_pod(&plan, &new);
        self.cluster.apply_pod(objects::pending(&running));
        if let Err(e) = network::add_pod(&plan, &new) {
            // Leave no half-wired namespace; the Pod stays Pending, as a
            // pod whose sandbox cannot be created does.
            let _ = network::remove_pod(&plan, &new);
            return Err(e.into());
        }
        self.topo
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set_companion(plan.index, new.clone());
        if self.binaries.is_some() {
            self.start_pod(&new.name, self.companion_spec(&plan, &new)?)?;
        }
        // kube-proxy follows the new endpoint on every node.
        let topo = self.topology();
        for node in &topo.nodes {
            services::restore(&topo, node)?;
        }
        self.cluster.apply_pod(running);
        tracing::info!(node, old = %old.name, new = %new.name, ip = %new.ip, "companion re-created");
        Ok(new)
    }

    /// A machine joins the cluster, in the order a real one does: its
    /// kubelet registers the Node (NotReady: no CNI yet); its network comes
    /// up (flanneld on every node programs the overlay to it, kube-proxy
    /// adds its agent to the Service rules); the Node turns Ready; the
    /// DaemonSet pods are created Pending, then Running; their agents
    /// start. Returns the new node (the lowest free index: `node-4` in a
    /// 3-node lab). Blocks for about a second.
    pub fn add_node(&self) -> Result<NodePlan, LabError> {
        self.process_mode("add-node")?;
        let _serial = lock(&self.churn);
        self.refuse_with_faults("add a node")?;
        let mut next = self.topology();
        let node = next.next_node()?;
        next.insert_node(node.clone());
        tracing::info!(node = %node.name, ip = %node.ip, "node joining");

        self.cluster.apply_node(objects::joining_node(&node));
        let wired = network::add_node(&next, &node).and_then(|()| {
            services::install(&next, &node)?;
            for other in next.nodes.iter().filter(|n| n.index != node.index) {
                services::restore(&next, other)?;
            }
            Ok(())
        });
        if let Err(e) = wired {
            // Undo it all: the node never made it.
            let current = self.topology();
            for cleanup in network::remove_node(&current, &node) {
                tracing::debug!(error = %cleanup, "undoing a failed join");
            }
            for other in &current.nodes {
                let _ = services::restore(&current, other);
            }
            self.cluster.delete_node(&node.name);
            return Err(e.into());
        }
        let before = self.topology();
        *self.topo.write().unwrap_or_else(|e| e.into_inner()) = next;
        if self.config.overlay == Overlay::Bgp
            && let Err(e) = self.reconfigure_bgp(Some(&node), true)
        {
            // calico-node could not join the mesh: the node never made it.
            let _ = self.procs.stop(&crate::net::bgp::process(&node));
            *self.topo.write().unwrap_or_else(|e| e.into_inner()) = before.clone();
            if let Err(undo) = self.reconfigure_bgp(None, true) {
                tracing::warn!(error = %undo, "restoring the BGP mesh");
            }
            for cleanup in network::remove_node(&before, &node) {
                tracing::debug!(error = %cleanup, "undoing a failed join");
            }
            for other in &before.nodes {
                let _ = services::restore(&before, other);
            }
            self.cluster.delete_node(&node.name);
            return Err(e);
        }
        self.cluster.set_node_ready(&node.name, true);

        let pods = objects::node_pods(&node, self.config.host_agents);
        for pod in &pods {
            self.cluster.apply_pod(objects::pending(pod));
        }
        for pod in pods {
            self.cluster.apply_pod(pod);
        }
        if self.binaries.is_some() {
            self.procs
                .start(self.companion_spec(&node, &node.companion)?)?;
            self.procs
                .start(self.agent_spec(&node, AgentNetwork::Pod)?)?;
            if self.config.host_agents {
                self.procs
                    .start(self.agent_spec(&node, AgentNetwork::Host)?)?;
            }
        }
        tracing::info!(node = %node.name, "node joined");
        Ok(node)
    }

    /// A machine leaves, as an operator retires one: `kubectl drain`
    /// (cordon; its pods terminate and their agents stop), `kubectl delete
    /// node` (its pods go with it), then the machine is switched off (its
    /// overlay entries and routes go from the other nodes, kube-proxy drops
    /// its agent from the Service rules, its namespaces are removed). Node 1
    /// (the control plane) cannot leave. Blocks up to the agents' stop grace
    /// (2 s each).
    pub fn remove_node(&self, name: &str) -> Result<NodePlan, LabError> {
        self.process_mode("remove-node")?;
        let _serial = lock(&self.churn);
        self.refuse_with_faults("remove a node")?;
        let mut next = self.topology();
        let node = next.remove_node(name)?;
        tracing::info!(node = %node.name, "node leaving");

        self.cluster.set_node_unschedulable(name, true);
        let mut pods = vec![node.agent.name.clone(), node.companion.name.clone()];
        if self.config.host_agents {
            pods.push(node.host_agent.clone());
        }
        for pod in &pods {
            self.cluster.set_pod_terminating(NAMESPACE, pod);
        }
        for network in [AgentNetwork::Pod, AgentNetwork::Host] {
            if let Err(e) = self.procs.stop(&agent_process(&node, network)) {
                tracing::debug!(error = %e, "agent was not running");
            }
        }
        if let Err(e) = self.procs.stop(&companion_process(&node)) {
            tracing::debug!(error = %e, "companion was not running");
        }
        for pod in &pods {
            self.cluster.delete_pod(NAMESPACE, pod);
        }
        self.cluster.delete_node(name);
        *self.topo.write().unwrap_or_else(|e| e.into_inner()) = next.clone();

        if self.config.overlay == Overlay::Bgp {
            if let Err(e) = self.procs.stop(&crate::net::bgp::process(&node)) {
                tracing::debug!(error = %e, "BIRD was not running");
            }
            if let Err(e) = self.reconfigure_bgp(None, true) {
                tracing::warn!(error = %e, "reconfiguring the BGP mesh");
            }
        }
        let mut errors = network::remove_node(&next, &node);
        for other in &next.nodes {
            if let Err(e) = services::restore(&next, other) {
                errors.push(e);
            }
        }
        match errors.into_iter().next() {
            Some(first) => Err(first.into()),
            None => {
                tracing::info!(node = %node.name, "node removed");
                Ok(node)
            }
        }
    }

    /// Joining and leaving rewrite every node's Service rules, which would
    /// silently heal a `dnat` fault: churn wants a healthy lab.
    fn refuse_with_faults(&self, what: &str) -> Result<(), LabError> {
        if lock(&self.faults).is_empty() {
            return Ok(());
        }
        Err(LabError::Busy(format!(
            "cannot {what} while faults are applied ({}): `netmatrix-lab heal` first",
            self.faults_summary()
        )))
    }
}
