//! An HTTP/1 server that no client can hold open: the agent's and the
//! aggregator's.
//!
//! `axum::serve` has no connection limit and no timeouts, so a handful of
//! slow or idle clients can pin memory and file descriptors for ever. Here
//! every connection is bounded, with kept parts only:
//!
//! - at most [`ServerLimits::max_connections`] at once (a semaphore around
//!   `accept`; further clients wait in the kernel's backlog), and at most
//!   [`ServerLimits::max_connections_per_ip`] from one address (more are
//!   closed at once), so that one client cannot take every slot;
//! - request headers must arrive within [`ServerLimits::header_timeout`],
//!   which hyper also applies to the wait for the next request on a kept-alive
//!   connection, so idle connections close too (hyper's
//!   `header_read_timeout`);
//! - a request body must arrive within [`ServerLimits::body_timeout`] in all
//!   (tower-http's `RequestBodyDeadlineLayer`: a client trickling a byte a
//!   second is cut off too);
//! - a handler must answer within [`ServerLimits::request_timeout`]
//!   (tower-http's `TimeoutLayer`, `408`);
//! - no write to the client may stall longer than
//!   [`ServerLimits::write_timeout`] (`tokio-io-timeout`: a client that
//!   requests the matrix and stops reading is dropped);
//! - a connection lives at most [`ServerLimits::max_connection_age`]: then
//!   it finishes the answer in progress, within as long again, and closes (as
//!   gRPC's `MaxConnectionAge`: a client reading the matrix a trickle at a
//!   time, never stalling a write for long, is cut off too).
//!
//! Handlers can read the client's address with
//! `axum::extract::ConnectInfo<SocketAddr>`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tower::ServiceBuilder;
use tower_http::add_extension::AddExtensionLayer;
use tower_http::timeout::{RequestBodyDeadlineLayer, TimeoutLayer};

/// How long and how many: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connection_age: Duration,
}

impl Default for ServerLimits {
    /// Generous for a real client on a cluster network (a report is sent in
    /// milliseconds), short for one that stalls.
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            // Agents behind one address (pods masqueraded to their node's),
            // Prometheus, a browser: far fewer than this.
            max_connections_per_ip: 64,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            // The full matrix of 1,000 nodes is 100 MB.
            max_connection_age: Duration::from_secs(120),
        }
    }
}

/// Largest buffer hyper keeps per connection for request heads (its default
/// is about 400 KiB). Bodies stream through it in pieces, so this bounds
/// the memory of a connection that sends huge headers.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Serves `app` on every listener until `shutdown` completes, then stops
/// accepting (connections in flight are dropped with the process).
pub async fn serve(
    listeners: Vec<TcpListener>,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let app = app
        .layer(RequestBodyDeadlineLayer::new(limits.body_timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = PerIp::default();
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept_loop(
            listener,
            app.clone(),
            limits,
            Arc::clone(&slots),
            per_ip.clone(),
        ));
    }
    shutdown.await;
    accepting.abort_all();
}

/// Connections open per client address.
#[derive(Clone, Default)]
struct PerIp(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection counted in [`PerIp`] until dropped.
struct Counted {
    per_ip: PerIp,
    ip: IpAddr,
}

impl PerIp {
    fn admit(&self, ip: IpAddr, max: usize) -> Option<Counted> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_default();
        if *count >= max.max(1) {
            return None;
        }
        *count += 1;
        Some(Counted {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.per_ip.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    slots: Arc<Semaphore>,
    per_ip: PerIp,
) {
    loop {
        // Wait for a free slot before accepting: over the limit, clients
        // queue in the backlog instead of costing us memory.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause, as axum does.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(counted) = per_ip.admit(peer.ip(), limits.max_connections_per_ip) else {
            tracing::debug!(%peer, "too many connections from this address; closed");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = ServiceBuilder::new()
            .layer(AddExtensionLayer::new(ConnectInfo(peer)))
            .service(app.clone());
        tokio::spawn(async move {
            let mut io = TimeoutStream::new(tcp);
            io.set_write_timeout(Some(limits.write_timeout));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_READ_BUFFER)
                .serve_connection(
                    TokioIo::new(Box::pin(io)),
                    TowerToHyperService::new(service),
                );
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = tokio::time::sleep(limits.max_connection_age) => {
                    // Old enough: finish the answer in progress, then close.
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(limits.max_connection_age, connection)
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection closed with an error");
            }
            drop((slot, counted));
        });
    }
}

/// Binds every address, saying which one failed.
pub async fn bind_all(
    addrs: &[SocketAddr],
) -> Result<Vec<TcpListener>, (SocketAddr, std::io::Error)> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        listeners.push(TcpListener::bind(addr).await.map_err(|e| (*addr, e))?);
    }
    Ok(listeners)
}

/// `IP:PORT` where IP may be IPv6 with or without brackets (`[fd00::a]:80`,
/// or `fd00::a:80` as a chart's `$(HOST_IP):8080` expands on an IPv6
/// cluster): the port is after the last colon.
pub fn parse_ip_port(value: &str) -> Option<SocketAddr> {
    let (ip, port) = value.trim().rsplit_once(':')?;
    let ip = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
}

/// A clap value parser for listen addresses ([`parse_ip_port`]).
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    parse_ip_port(value).ok_or_else(|| format!("{value}: not IP:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: ServerLimits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app =
            Router::new()
                .route(
                    "/",
                    get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                        peer.ip().to_string()
                    }),
                )
                .route(
                    "/echo",
                    post(|body: axum::body::Bytes| async move { body.len().to_string() }),
                )
                .route("/big", get(|| async { vec![b'x'; 64 << 20] }));
        tokio::spawn(serve(vec![listener], app, limits, std::future::pending()));
        addr
    }

    fn short() -> ServerLimits {
        ServerLimits {
            max_connections: 4,
            max_connections_per_ip: 16,
            header_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_millis(300),
            max_connection_age: Duration::from_secs(2),
        }
    }

    /// Reads until the server closes, with a bound; `true` when it closed.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = vec![0u8; 1 << 16];
        let read_all = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, read_all).await.is_ok()
    }

    #[tokio::test]
    async fn answers_and_tells_handlers_the_peer() {
        let addr = start(short()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("127.0.0.1"), "{text}");
    }

    #[tokio::test]
    async fn idle_slow_and_stalled_clients_are_dropped() {
        let addr = start(short()).await;
        // Idle: connected, says nothing.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        // Slow headers.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
        // Kept alive after one answer, then idle.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // A body that never completes.
        let mut body = TcpStream::connect(addr).await.unwrap();
        body.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
            .await
            .unwrap();
        for (what, stream) in [
            ("idle", &mut idle),
            ("slow", &mut slow),
            ("kept", &mut kept),
            ("body", &mut body),
        ] {
            assert!(
                closed_within(stream, Duration::from_secs(3)).await,
                "{what} stayed open"
            );
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped() {
        let addr = start(short()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // Read nothing for a while: the server's writes stall, then it gives up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut received = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received += n,
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "the connection stayed open");
        assert!(received < 64 << 20, "the whole body arrived: {received}");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait() {
        let addr = start(short()).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
            held.push(s);
        }
        // The fifth is connected by the kernel but not served until a slot
        // frees (the slow ones are cut after the header timeout).
        let started = tokio::time::Instant::now();
        let mut fifth = TcpStream::connect(addr).await.unwrap();
        fifth
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        fifth.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_slot() {
        let addr = start(ServerLimits {
            max_connections: 64,
            max_connections_per_ip: 3,
            ..short()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
            held.push(s);
        }
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut fourth, Duration::from_millis(200)).await,
            "a fourth connection from the same address was kept"
        );
        // Once one of the three is gone, the address may connect again.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = TcpStream::connect(addr).await.unwrap();
        again
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        again.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }

    #[tokio::test]
    async fn a_client_that_reads_a_trickle_is_cut_off() {
        // Writes never stall long enough for the write timeout: only the
        // connection's age can end this.
        let addr = start(ServerLimits {
            write_timeout: Duration::from_secs(30),
            ..short()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // A little at a time, never stalling the server's writes for long.
        let started = tokio::time::Instant::now();
        let mut received = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => received += n,
                Err(_) => panic!("neither data nor close for 10 s"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(started.elapsed() < Duration::from_secs(20), "still sending");
        }
        assert!(received < 64 << 20, "the whole body was sent: {received}");
    }

    #[test]
    fn listen_addresses_take_bare_ipv6() {
        assert_eq!(parse_ip_port("fd00::1:8080"), "[fd00::1]:8080".parse().ok());
        assert_eq!(
            parse_ip_port("[fd00::1]:8080"),
            "[fd00::1]:8080".parse().ok()
        );
        assert_eq!(parse_ip_port(" 0.0.0.0:80 "), "0.0.0.0:80".parse().ok());
        assert!(parse_listen("8080").is_err());
    }
}
