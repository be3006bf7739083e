//! The UDP echo the agents and companions answer on their TCP port's
//! number, so that a peer's UDP path is probed the way applications use it
//! (ICMP may be filtered where UDP passes, and the reverse).
//!
//! Only datagrams that start with [`REQUEST`] are answered, with the same
//! bytes behind [`REPLY`], never with more bytes than came in. A reply is
//! never answered: two echo servers cannot be made to bounce a spoofed
//! datagram between each other forever (the old echo/chargen loop), and
//! nothing else on the network is answered at all.

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// The first bytes of a probe.
pub const REQUEST: &[u8; 4] = b"NMQ1";
/// The first bytes of an answer.
pub const REPLY: &[u8; 4] = b"NMR1";
/// The largest datagram read: an MTU probe fills a jumbo frame at most.
const MAX_DATAGRAM: usize = 9216;

/// The answer to `datagram`, `None` when it is not a probe.
pub fn answer(datagram: &[u8]) -> Option<Vec<u8>> {
    let rest = datagram.strip_prefix(REQUEST.as_slice())?;
    let mut reply = Vec::with_capacity(datagram.len());
    reply.extend_from_slice(REPLY);
    reply.extend_from_slice(rest);
    Some(reply)
}

/// Binds the echo on `addr`'s UDP port.
pub async fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr).await
}

/// Answers probes on `socket` until the task is dropped. Errors of one
/// datagram (a peer gone, ICMP errors queued on the socket) are not the
/// server's: it goes on.
pub async fn serve(socket: UdpSocket) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!(%error, "udp echo: receive failed");
                continue;
            }
        };
        let Some(reply) = buf.get(..len).and_then(answer) else {
            continue;
        };
        if let Err(error) = socket.send_to(&reply, from).await {
            tracing::debug!(%error, %from, "udp echo: answer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_probes_are_answered_never_replies() {
        assert_eq!(answer(b"NMQ1abc").as_deref(), Some(&b"NMR1abc"[..]));
        assert_eq!(answer(b"NMR1abc"), None);
        assert_eq!(answer(b"hello"), None);
        assert_eq!(answer(b""), None);
    }

    #[tokio::test]
    async fn answers_on_loopback() {
        let server = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(serve(server));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        client.send(b"NMR1ignored").await.unwrap();
        client.send(b"NMQ1\x00\x07").await.unwrap();
        let mut buf = [0u8; 16];
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"NMR1\x00\x07");
    }
}
