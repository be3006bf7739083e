//! A small client of the aggregator's `/api/v1` (plain HTTP, as served in
//! the cluster and through `kubectl port-forward`).

use std::time::Duration;

use netmatrix_api::facts::NodeFacts;
use netmatrix_api::{FINDINGS_PATH, Findings, MATRIX_PATH, Matrix, NODE_FACTS_PATH};
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid aggregator URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error(
        "cannot reach the aggregator at {url}: {message} (is the aggregator running, and is --aggregator-url right?)"
    )]
    Unreachable { url: String, message: String },
    #[error("the aggregator answered {url} with HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error(
        "unexpected answer from {url}: {message} (is this a netmatrix aggregator of the same version?)"
    )]
    Decode { url: String, message: String },
}

/// What the aggregator holds of a node's network facts.
#[derive(Debug)]
pub enum FactsAnswer {
    Held(NodeFacts),
    /// Its host agent was asked for them; they come with its next report.
    Asked,
    /// No host-network agent reports for the node.
    NoHostAgent,
}

/// Where the aggregator is; shared by every subcommand that asks it.
#[derive(Debug, Clone, clap::Args)]
pub struct AggregatorArgs {
    /// Aggregator URL: the Service in the cluster, or
    /// `http://127.0.0.1:8080` through `kubectl -n netmatrix port-forward
    /// svc/netmatrix-aggregator 8080`
    #[arg(
        long,
        env = "NETMATRIX_AGGREGATOR_URL",
        default_value = "http://netmatrix-aggregator.netmatrix.svc:8080"
    )]
    pub aggregator_url: String,
}

pub struct AggregatorClient {
    base: String,
    http: reqwest::Client,
}

impl AggregatorClient {
    /// `base`: e.g. `http://netmatrix-aggregator.netmatrix.svc:8080`.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, ClientError> {
        let url_error = |message: &str| ClientError::Url {
            url: base.to_owned(),
            message: message.to_owned(),
        };
        let parsed = reqwest::Url::parse(base).map_err(|e| url_error(&e.to_string()))?;
        if parsed.scheme() != "http" {
            return Err(url_error("only http:// is served by the aggregator"));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .build()
            .map_err(|e| url_error(&e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    pub async fn matrix(&self) -> Result<Matrix, ClientError> {
        self.get(MATRIX_PATH).await
    }

    pub async fn findings(&self) -> Result<Findings, ClientError> {
        self.get(FINDINGS_PATH).await
    }

    /// `node`'s network facts. Asking also has the aggregator keep them up
    /// to date for a while.
    pub async fn node_facts(&self, node: &str) -> Result<FactsAnswer, ClientError> {
        // Node names are DNS subdomains (checked by the caller against the
        // matrix): nothing to escape in a query.
        let path = format!("{NODE_FACTS_PATH}?node={node}");
        match self.get(&path).await {
            Ok(facts) => Ok(FactsAnswer::Held(facts)),
            Err(ClientError::Status { status: 404, .. }) => Ok(FactsAnswer::NoHostAgent),
            Err(ClientError::Status { status: 503, .. }) => Ok(FactsAnswer::Asked),
            Err(e) => Err(e),
        }
    }

    /// `node`'s network facts, waiting up to `patience` for ones just asked
    /// of its host agent (they come with its next report).
    pub async fn node_facts_waiting(
        &self,
        node: &str,
        patience: Duration,
    ) -> Result<FactsAnswer, ClientError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let answer = self.node_facts(node).await?;
            if !matches!(answer, FactsAnswer::Asked) || tokio::time::Instant::now() >= deadline {
                return Ok(answer);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                message: netmatrix_runtime::cause_chain(&e),
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                message: netmatrix_runtime::cause_chain(&e),
            })?;
        if !status.is_success() {
            return Err(ClientError::Status {
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url,
            message: e.to_string(),
        })
    }
}
