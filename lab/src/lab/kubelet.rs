//! The kubelet's part in the agents' identity: it mounts each agent pod's
//! projected ServiceAccount token (audience `netmatrix`) where the agent
//! reads it (`--token-file`), when the pod starts and again at 80 % of the
//! token's life, atomically (a reader sees the old token or the new one), as
//! the kubelet's atomic writer does for projected volumes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use netmatrix_api::labels;

use crate::emulator::apiserver::tokens::TokenAuthority;
use crate::emulator::cluster::ClusterState;
use crate::net::topology::NAMESPACE;
use crate::state::StateDir;

/// The agents' token mounts of one lab.
pub(super) struct TokenMounts {
    cluster: ClusterState,
    authority: Arc<TokenAuthority>,
    dir: StateDir,
    ttl: Duration,
}

impl TokenMounts {
    pub(super) fn new(
        cluster: ClusterState,
        authority: Arc<TokenAuthority>,
        dir: StateDir,
        ttl: Duration,
    ) -> Self {
        TokenMounts {
            cluster,
            authority,
            dir,
            ttl,
        }
    }

    /// The API emulator's signing key (it answers the TokenReviews).
    pub(super) fn authority(&self) -> &Arc<TokenAuthority> {
        &self.authority
    }

    /// Where the token of pod `pod` is mounted.
    pub(super) fn token_path(&self, pod: &str) -> PathBuf {
        self.dir.file(&format!("token-{pod}"))
    }

    /// Writes a fresh token for `pod`, bound to it as the cluster has it now.
    pub(super) fn mount_token(&self, pod: &str) -> std::io::Result<PathBuf> {
        let path = self.token_path(pod);
        self.authority.mount_pod_token(
            &self.cluster,
            (NAMESPACE, pod),
            labels::TOKEN_AUDIENCE,
            self.ttl,
            &path,
        )?;
        Ok(path)
    }

    /// Re-mounts every agent pod's token at 80 % of its life, for ever.
    pub(super) async fn rotate_forever(&self) {
        let every = self.ttl.mul_f64(0.8).max(Duration::from_secs(1));
        let agents = [
            labels::AGENT_SERVICE_ACCOUNT,
            labels::HOST_AGENT_SERVICE_ACCOUNT,
        ];
        loop {
            tokio::time::sleep(every).await;
            for pod in self.cluster.pods() {
                let is_agent = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.as_deref())
                    .is_some_and(|sa| agents.contains(&sa));
                let Some(name) = pod.metadata.name.as_deref().filter(|_| is_agent) else {
                    continue;
                };
                if let Err(error) = self.mount_token(name) {
                    tracing::warn!(%error, pod = name, "cannot rotate a token");
                }
            }
            tracing::debug!("agent tokens rotated");
        }
    }
}
