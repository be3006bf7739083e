//! TCP connect with a timeout: the ClusterIP check, and the first stage of
//! the API server check.
//!
//! A ClusterIP connect exercises the node's service path (kube-proxy's DNAT
//! rules, the route to the service CIDR) without depending on what the
//! backend speaks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netmatrix_api::{ErrorKind, ProbeError, ServiceKind, ServiceResult, ServiceStage};
use tokio::net::TcpStream;

use super::{io_probe_error, millis};

/// A ClusterIP service checked with a TCP connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIpTarget {
    /// Operator-facing name, e.g. `aggregator`.
    pub name: String,
    pub addr: SocketAddr,
}

/// Connects to `addr` within `timeout`.
///
/// Errors read like Go's dialer (`dial tcp 10.96.0.1:443: connect: network is
/// unreachable`, `dial tcp ...: i/o timeout`) because that is the text
/// operators know from kubelet and CNI logs.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProbeError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(io_probe_error(&format!("dial tcp {addr}: connect"), &err)),
        Err(_) => Err(ProbeError::new(
            ErrorKind::Timeout,
            format!("dial tcp {addr}: i/o timeout (no answer within {timeout:?})"),
        )),
    }
}

/// The ClusterIP check: a TCP connect, closed right away.
pub async fn check_clusterip(name: &str, addr: SocketAddr, timeout: Duration) -> ServiceResult {
    let started = Instant::now();
    let outcome = connect(addr, timeout).await;
    let elapsed = started.elapsed();
    let mut result = ServiceResult {
        kind: ServiceKind::Clusterip,
        name: name.to_owned(),
        target: addr.to_string(),
        ok: false,
        reached: None,
        latency_ms: None,
        error: None,
    };
    match outcome {
        Ok(_stream) => {
            result.ok = true;
            result.reached = Some(ServiceStage::Tcp);
            result.latency_ms = Some(millis(elapsed));
        }
        Err(err) => result.error = Some(err),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn connect_to_a_loopback_listener_succeeds() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = check_clusterip("test", addr, Duration::from_secs(1)).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.reached, Some(ServiceStage::Tcp));
        assert_eq!(r.target, addr.to_string());
        assert!(r.latency_ms.is_some());
    }

    #[tokio::test]
    async fn closed_loopback_port_is_refused() {
        // Bind then drop: the port is free, and nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let r = check_clusterip("test", addr, Duration::from_secs(1)).await;
        assert!(!r.ok);
        assert_eq!(r.reached, None);
        let err = r.error.unwrap();
        assert_eq!(err.kind, ErrorKind::Refused);
        assert_eq!(
            err.message,
            format!("dial tcp {addr}: connect: connection refused")
        );
    }
}
