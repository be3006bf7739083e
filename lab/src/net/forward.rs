//! The forwarders: `127.0.0.1:PORT` in the root namespace to a server
//! inside the lab (the aggregator; the API emulator, for kubectl and helm),
//! like `kubectl port-forward`.
//!
//! They are the lab's only sockets in the root namespace, and they only
//! listen on loopback: for each accepted connection a forwarder opens a
//! connection from inside node 1's namespace (a socket stays in the
//! namespace it was created in) and copies bytes both ways. The root namespace never routes to a lab address.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::net::netns;

/// How long a connection into the lab may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Binds `127.0.0.1:port` (`0`: any free port).
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await
}

/// Accepts connections forever and forwards each to `target` from inside
/// namespace `netns`.
pub async fn serve(listener: TcpListener, netns: String, target: SocketAddr) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "forwarder accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let netns = netns.clone();
        tokio::spawn(async move {
            if let Err(error) = forward(client, &netns, target).await {
                tracing::debug!(%peer, %target, %error, "forwarded connection ended");
            }
        });
    }
}

async fn forward(mut client: TcpStream, netns: &str, target: SocketAddr) -> std::io::Result<()> {
    let ns = netns.to_string();
    let upstream = tokio::task::spawn_blocking(move || {
        netns::in_netns(&ns, move || {
            let s = std::net::TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)?;
    let mut upstream = TcpStream::from_std(upstream)?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
