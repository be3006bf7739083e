//! Why the API says a node's agent cannot report: its pod's status, the
//! pod's recent Warning Events, the Node's Ready condition. The inventory
//! reads them from the API objects; the `agent-missing` rule words them.
//!
//! Kept as plain data so the rules stay a pure function of what they are
//! given, and tests build it by hand.

/// What keeps a node's pod-network agent from running, per the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDown {
    /// The agents' namespace, for the commands the hint gives.
    pub namespace: String,
    pub cause: DownCause,
    /// The agent pod's recent Warning Events, newest first, each as
    /// `REASON (×COUNT): MESSAGE`.
    pub events: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownCause {
    /// The Node is NotReady because its container runtime's network is not
    /// ready (`NetworkReady=false`, "cni plugin not initialized"): the
    /// kubelet starts no pod-network pod there, the agent included.
    NodeNetworkNotReady { message: String },
    /// The pod sandbox cannot be created: the CNI fails to set up pods on
    /// the node (`FailedCreatePodSandBox`).
    SandboxFails { pod: String, message: String },
    /// The agent's image cannot be pulled (`ImagePullBackOff`,
    /// `ErrImagePull`, ...).
    ImageNotPulled {
        pod: String,
        reason: String,
        message: String,
    },
    /// The scheduler cannot place the pod (`Unschedulable`).
    Unschedulable { pod: String, message: String },
    /// The pod exists but its agent container does not run, for another
    /// reason (`CrashLoopBackOff`, `CreateContainerConfigError`, a phase
    /// other than Running...).
    NotRunning {
        pod: String,
        state: String,
        message: String,
    },
    /// No agent pod on the node at all.
    NoPod,
}

impl AgentDown {
    /// Whether the node is judged although NotReady: its NotReady is the
    /// pod network's own doing, which is what netmatrix watches.
    pub fn judged_when_not_ready(&self) -> bool {
        matches!(self.cause, DownCause::NodeNetworkNotReady { .. })
    }
}

/// Longest quoted API message: CNI errors run to several hundred bytes,
/// and the API's text is not ours to trust with a page's layout.
pub const MAX_QUOTE: usize = 300;

/// `text` cut to [`MAX_QUOTE`] characters on a character boundary.
pub fn quote(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTE) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_bounded_on_character_boundaries() {
        assert_eq!(quote("  short \n"), "short");
        let long = "é".repeat(MAX_QUOTE + 10);
        let q = quote(&long);
        assert_eq!(q.chars().count(), MAX_QUOTE + 1);
        assert!(q.ends_with('…'));
    }
}
