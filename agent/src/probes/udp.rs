//! UDP and TCP to a peer pod's own port: the protocols applications use,
//! beside ICMP. A path that answers ICMP and drops TCP (or the reverse) is
//! filtered, not broken; only probing each tells the two apart.
//!
//! UDP goes to the peer's echo ([`netmatrix_runtime::udp_echo`]) on its TCP
//! port's number; TCP is a connect (SYN, SYN-ACK) closed right away, no
//! payload.
//!
//! A refusal (a TCP reset, an ICMP port unreachable) crossed the path as
//! well as an answer did: it counts as received, with the refusal kept as
//! the error. The pod is there and its port closed (its process stopped or
//! restarting, an older agent without the UDP echo during a rollout), which
//! is no filter. A firewall that rejects rather than drops reads the same
//! way; NetworkPolicy implementations drop.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netmatrix_api::{EchoResult, ErrorKind, ProbeError};
use netmatrix_runtime::udp_echo::{REPLY, REQUEST};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use super::icmp::summarise;
use super::{io_probe_error, tcp};

/// The ports of the peer pods probed over TCP and UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPorts {
    pub agent: u16,
    pub companion: u16,
}

impl PeerPorts {
    /// The port probed on `peer`: its component's (a peer found through DNS
    /// is an agent: the SRV record lists agents).
    pub fn of(&self, component: Option<&str>) -> u16 {
        match component {
            Some(netmatrix_api::labels::COMPONENT_COMPANION) => self.companion,
            _ => self.agent,
        }
    }
}

/// At most this many TCP and UDP probes hold a socket at once: every one
/// is a file descriptor, and a round to thousands of peers must neither hit
/// the process's limit nor read as failures when it would.
pub const MAX_OPEN_SOCKETS: usize = 512;

/// UDP and TCP probes to peer pods' ports.
#[derive(Debug, Clone)]
pub struct TransportProber {
    pub timeout: Duration,
    /// Between two echoes to the same peer.
    pub gap: Duration,
    sockets: Arc<Semaphore>,
}

impl TransportProber {
    pub fn new(timeout: Duration, gap: Duration) -> Self {
        Self {
            timeout,
            gap,
            sockets: Arc::new(Semaphore::new(MAX_OPEN_SOCKETS)),
        }
    }

    /// One TCP connect to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> EchoResult {
        // Never closed: acquiring cannot fail.
        let _socket = self.sockets.acquire().await.ok();
        let started = Instant::now();
        match tcp::connect(addr, self.timeout).await {
            Ok(_stream) => summarise(vec![Ok(started.elapsed())]),
            Err(e) if e.kind == ErrorKind::Refused => refused(1, e),
            Err(e) => summarise(vec![Err(e)]),
        }
    }

    /// `count` UDP echoes to `addr`, `bytes`-long IP packets with Don't
    /// Fragment set when given (the MTU probe where ICMP is filtered).
    pub async fn echo(&self, addr: SocketAddr, count: u16, bytes: Option<u32>) -> EchoResult {
        let _socket = self.sockets.acquire().await.ok();
        let count = count.max(1);
        let socket = match open(addr, bytes.is_some()).await {
            Ok(socket) => socket,
            Err(e) => {
                let error = io_probe_error(&format!("dial udp {addr}"), &e);
                return EchoResult {
                    sent: u32::from(count),
                    error: Some(error),
                    ..EchoResult::default()
                };
            }
        };
        let payload_len = bytes.map_or(16, |b| payload_len(b, addr.ip()));
        // Replies are matched by sequence number (the socket is this
        // probe's own, connected to `addr`: nothing else arrives on it).
        let sent_at: Vec<Instant> = Vec::with_capacity(usize::from(count));
        let sent_at = std::sync::Mutex::new(sent_at);
        let sender = async {
            for seq in 0..count {
                if seq > 0 {
                    tokio::time::sleep(self.gap).await;
                }
                let mut datagram = Vec::with_capacity(payload_len.max(6));
                datagram.extend_from_slice(REQUEST);
                datagram.extend_from_slice(&seq.to_be_bytes());
                datagram.resize(payload_len.max(6), 0);
                if let Ok(mut s) = sent_at.lock() {
                    s.push(Instant::now());
                }
                if let Err(e) = socket.send(&datagram).await {
                    return Err(io_probe_error(&format!("write udp {addr}"), &e));
                }
            }
            Ok(())
        };
        let deadline = self.timeout + self.gap * u32::from(count - 1);
        let receiver = async {
            let mut rtts: Vec<Option<Duration>> = vec![None; usize::from(count)];
            let mut error: Option<ProbeError> = None;
            let mut refusal: Option<ProbeError> = None;
            let mut buf = vec![0u8; 16];
            let _ = tokio::time::timeout(deadline, async {
                while rtts.iter().any(Option::is_none) {
                    match socket.recv(&mut buf).await {
                        Ok(n) => {
                            let Some(seq) = buf
                                .get(..n.min(6))
                                .and_then(|b| b.strip_prefix(REPLY.as_slice()))
                                .and_then(|s| <[u8; 2]>::try_from(s).ok())
                                .map(u16::from_be_bytes)
                            else {
                                continue;
                            };
                            let sent = sent_at
                                .lock()
                                .ok()
                                .and_then(|s| s.get(usize::from(seq)).copied());
                            if let (Some(slot), Some(sent)) = (rtts.get_mut(usize::from(seq)), sent)
                            {
                                slot.get_or_insert(sent.elapsed());
                            }
                        }
                        // ICMP port unreachable arrives as ECONNREFUSED on
                        // a connected socket: the pod is there, the port
                        // closed. Said once; the wait goes on for the rest.
                        Err(e) => {
                            let probe_error = io_probe_error(&format!("read udp {addr}"), &e);
                            if e.kind() == io::ErrorKind::ConnectionRefused {
                                refusal = Some(probe_error);
                                break;
                            }
                            error = Some(probe_error);
                        }
                    }
                }
            })
            .await;
            (rtts, error, refusal)
        };
        let (sent, (rtts, error, refusal)) = tokio::join!(sender, receiver);
        if let Some(refusal) = refusal {
            return refused(u32::from(count), refusal);
        }
        let timeout_error = || {
            ProbeError::new(
                ErrorKind::Timeout,
                format!(
                    "timeout: no udp echo reply from {addr} within {:?}",
                    self.timeout
                ),
            )
        };
        let outcomes = rtts
            .into_iter()
            .map(|rtt| {
                // A missing reply: the send's error, else the socket's,
                // else it timed out.
                rtt.ok_or_else(|| {
                    sent.clone()
                        .err()
                        .or_else(|| error.clone())
                        .unwrap_or_else(timeout_error)
                })
            })
            .collect();
        summarise(outcomes)
    }
}

/// `sent` probes refused: every one crossed the path.
fn refused(sent: u32, error: ProbeError) -> EchoResult {
    EchoResult {
        sent,
        received: sent,
        error: Some(error),
        ..EchoResult::default()
    }
}

/// UDP payload length that makes an IP packet of `bytes` to `ip` (minus
/// the IP and the 8-byte UDP headers).
fn payload_len(bytes: u32, ip: IpAddr) -> usize {
    let headers = if ip.is_ipv4() { 28 } else { 48 };
    usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .saturating_sub(headers)
}

async fn open(addr: SocketAddr, dont_fragment: bool) -> io::Result<UdpSocket> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    if dont_fragment {
        set_dont_fragment(&socket, addr.is_ipv4())?;
    }
    socket.connect(addr).await?;
    Ok(socket)
}

/// `IP_PMTUDISC_PROBE`, as the ICMP MTU probe: DF on every packet, the
/// cached path MTU ignored (a healed fault reads healed at once).
fn set_dont_fragment(socket: &UdpSocket, v4: bool) -> io::Result<()> {
    let (level, name, value) = if v4 {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    } else {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
    };
    // `socket` is borrowed: its fd stays open for the call.
    super::set_int_option(socket.as_raw_fd(), level, name, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn prober() -> TransportProber {
        TransportProber::new(Duration::from_millis(300), Duration::from_millis(5))
    }

    #[tokio::test]
    async fn udp_echoes_are_answered_by_the_echo_and_lost_without_it() {
        let server = netmatrix_runtime::udp_echo::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let echo = tokio::spawn(netmatrix_runtime::udp_echo::serve(server));
        let r = prober().echo(addr, 3, None).await;
        assert_eq!((r.sent, r.received), (3, 3), "{r:?}");
        assert!(r.error.is_none());
        let large = prober().echo(addr, 3, Some(1400)).await;
        assert_eq!(large.received, 3, "{large:?}");
        echo.abort();
        let _ = echo.await;
        // The port closed: refused at once, and counted as crossed (the
        // pod answered).
        let r = prober().echo(addr, 3, None).await;
        assert_eq!((r.sent, r.received), (3, 3), "{r:?}");
        assert_eq!(r.error.map(|e| e.kind), Some(ErrorKind::Refused));
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r = prober().echo(silent.local_addr().unwrap(), 3, None).await;
        assert_eq!(r.received, 0);
        assert_eq!(r.error.map(|e| e.kind), Some(ErrorKind::Timeout));
    }

    #[tokio::test]
    async fn tcp_connects_or_says_why() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ok = prober().connect(addr).await;
        assert_eq!((ok.sent, ok.received), (1, 1));
        drop(listener);
        let refused = prober().connect(addr).await;
        assert_eq!(refused.received, 1, "a reset crossed the path");
        assert_eq!(refused.error.map(|e| e.kind), Some(ErrorKind::Refused));
    }
}
