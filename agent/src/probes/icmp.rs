//! ICMP echo to peer pods: the basic pod-to-pod path.
//!
//! One [`surge_ping::Client`] (one socket, one receive task) per address
//! family serves every target. surge-ping opens an unprivileged ICMP `DGRAM`
//! socket first — it works without any capability when the namespaced sysctl
//! `net.ipv4.ping_group_range` includes our group, which is how the chart runs
//! the pod-network agent — and falls back to a `RAW` socket (root or
//! `CAP_NET_RAW`) when it does not.
//!
//! With `DGRAM` the kernel rewrites the ICMP identifier, so replies are told
//! apart by target address and sequence number only. Each target therefore
//! gets its own sequence counter, and every echo of a round reserves its own
//! sequence number, so concurrent echoes to one host never collide
//! (`IdenticalRequests`) and a late reply from the previous round is never
//! taken for a new one. With `RAW` each target also gets its own identifier.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use netmatrix_api::{EchoResult, ErrorKind, ProbeError};
use surge_ping::{Client, Config, ICMP, IcmpPacket, PingIdentifier, PingSequence, SurgeError};

use super::{io_probe_error, millis};

/// Payload of a small echo: 56 bytes, like `ping`'s default.
const PAYLOAD: [u8; 56] = [0x6e; 56];
/// Upper bound of the gap between the echoes of one round to one target.
const MAX_ECHO_GAP: Duration = Duration::from_millis(200);

/// The ICMP socket could not be opened at all.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open an ICMP socket ({source}); set the pod sysctl net.ipv4.ping_group_range=\"0 2147483647\" \
     (pod network) or grant CAP_NET_RAW (host network)"
)]
pub struct IcmpSocketError {
    #[source]
    source: std::io::Error,
}

#[derive(Debug, Clone, Copy)]
struct TargetState {
    ident: u16,
    next_seq: u16,
}

/// Sends echo series to peers; shared by all concurrent probes of a round.
pub struct IcmpProber {
    v4: Client,
    /// `None` when the host has no IPv6 (peers with IPv6 addresses then fail
    /// with a clear message instead of the agent refusing to start).
    v6: Result<Client, String>,
    count: u16,
    timeout: Duration,
    gap: Duration,
    targets: Mutex<Targets>,
}

struct Targets {
    by_ip: HashMap<IpAddr, TargetState>,
    next_ident: u16,
}

impl IcmpProber {
    /// Opens the sockets. `count` echoes per round and target, each waiting
    /// up to `timeout`; echoes are spread over at most a quarter of `interval`.
    pub fn new(count: u16, timeout: Duration, interval: Duration) -> Result<Self, IcmpSocketError> {
        let v4 = Client::new(&Config::builder().kind(ICMP::V4).build())
            .map_err(|source| IcmpSocketError { source })?;
        let v6 = Client::new(&Config::builder().kind(ICMP::V6).build()).map_err(|e| {
            tracing::debug!(error = %e, "no ICMPv6 socket; IPv6 peers will be reported as failing");
            format!("no ICMPv6 socket: {e}")
        });
        tracing::info!(socket = ?v4.get_socket().get_type(), "ICMP socket open");
        let count = count.max(1);
        let gap = (interval / (4 * u32::from(count))).min(MAX_ECHO_GAP);
        Ok(Self {
            v4,
            v6,
            count,
            timeout,
            gap,
            targets: Mutex::new(Targets {
                by_ip: HashMap::new(),
                next_ident: rand::random(),
            }),
        })
    }

    /// Sends this round's echoes to `ip` and summarises them.
    pub async fn echo(&self, ip: IpAddr) -> EchoResult {
        let client = match (ip, &self.v6) {
            (IpAddr::V4(_), _) => &self.v4,
            (IpAddr::V6(_), Ok(v6)) => v6,
            (IpAddr::V6(_), Err(msg)) => {
                return EchoResult {
                    sent: u32::from(self.count),
                    error: Some(ProbeError::new(ErrorKind::Other, msg.clone())),
                    ..EchoResult::default()
                };
            }
        };
        let (ident, first_seq) = self.reserve(ip);
        let echoes = (0..self.count).map(|i| {
            let seq = first_seq.wrapping_add(i);
            let delay = self.gap * u32::from(i);
            echo_once(client, ip, ident, seq, self.timeout, delay)
        });
        summarise(join_all(echoes).await)
    }

    /// Forgets the counters of targets that are no longer peers, so the table
    /// does not grow with every pod that ever existed.
    pub fn retain_targets(&self, keep: &HashSet<IpAddr>) {
        if let Ok(mut t) = self.targets.lock() {
            t.by_ip.retain(|ip, _| keep.contains(ip));
        }
    }

    /// Identifier of `ip` and the first of `count` fresh sequence numbers.
    fn reserve(&self, ip: IpAddr) -> (u16, u16) {
        let Ok(mut t) = self.targets.lock() else {
            // A poisoned lock only means another probe panicked; fall back to
            // a random identifier rather than failing the echo.
            return (rand::random(), rand::random());
        };
        let fresh_ident = t.next_ident;
        let state = t.by_ip.entry(ip).or_insert(TargetState {
            ident: fresh_ident,
            next_seq: 0,
        });
        let reserved = (state.ident, state.next_seq);
        state.next_seq = state.next_seq.wrapping_add(self.count);
        if reserved.0 == fresh_ident {
            t.next_ident = t.next_ident.wrapping_add(1);
        }
        reserved
    }
}

async fn echo_once(
    client: &Client,
    ip: IpAddr,
    ident: u16,
    seq: u16,
    timeout: Duration,
    delay: Duration,
) -> Result<Duration, ProbeError> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut pinger = client.pinger(ip, PingIdentifier(ident)).await;
    pinger.timeout(timeout);
    match pinger.ping(PingSequence(seq), &PAYLOAD).await {
        Ok((packet, rtt)) => reply_outcome(&packet, rtt),
        Err(SurgeError::Timeout { .. }) => Err(ProbeError::new(
            ErrorKind::Timeout,
            format!("no echo reply from {ip} within {timeout:?}"),
        )),
        Err(SurgeError::IOError(err)) => Err(io_probe_error(&format!("ping {ip}: sendto"), &err)),
        Err(other) => Err(ProbeError::new(
            ErrorKind::Other,
            format!("ping {ip}: {other}"),
        )),
    }
}

/// An answer is either an echo reply or an ICMP error about our request
/// (a router or the local node saying "unreachable"): RAW sockets hand both
/// to surge-ping, which matches errors to the request they quote.
fn reply_outcome(packet: &IcmpPacket, rtt: Duration) -> Result<Duration, ProbeError> {
    let (family, kind, code, from) = match packet {
        IcmpPacket::V4(p) => (
            4,
            p.get_icmp_type().0,
            p.get_icmp_code().0,
            IpAddr::V4(p.get_source()),
        ),
        IcmpPacket::V6(p) => (
            6,
            p.get_icmpv6_type().0,
            p.get_icmpv6_code().0,
            IpAddr::V6(p.get_source()),
        ),
    };
    icmp_outcome(family, kind, code, from).map(|()| rtt)
}

/// Classifies an ICMP message type/code received in answer to an echo.
fn icmp_outcome(family: u8, kind: u8, code: u8, from: IpAddr) -> Result<(), ProbeError> {
    let unreachable = |what: &str| {
        Err(ProbeError::new(
            ErrorKind::Unreachable,
            format!("{what} (ICMP from {from})"),
        ))
    };
    match (family, kind, code) {
        (4, 0, _) | (6, 129, _) => Ok(()),
        (4, 3, 0) | (6, 1, 0) => unreachable("destination net unreachable"),
        (4, 3, 1) | (6, 1, 3) => unreachable("destination host unreachable"),
        (4, 3, 4) | (6, 2, _) => unreachable("fragmentation needed / packet too big"),
        (4, 3, 9 | 10 | 13) | (6, 1, 1) => unreachable("communication administratively prohibited"),
        (4, 3, c) | (6, 1, c) => unreachable(&format!("destination unreachable (code {c})")),
        (4, 11, _) | (6, 3, _) => unreachable("time to live exceeded"),
        (_, t, c) => Err(ProbeError::new(
            ErrorKind::Other,
            format!("unexpected ICMP type {t} code {c} from {from}"),
        )),
    }
}

/// Folds the outcomes of one series into the wire result.
fn summarise(outcomes: Vec<Result<Duration, ProbeError>>) -> EchoResult {
    let sent = u32::try_from(outcomes.len()).unwrap_or(u32::MAX);
    let mut rtts = Vec::with_capacity(outcomes.len());
    let mut error = None;
    for outcome in outcomes {
        match outcome {
            Ok(rtt) => rtts.push(millis(rtt)),
            Err(e) => error = Some(e),
        }
    }
    let received = u32::try_from(rtts.len()).unwrap_or(u32::MAX);
    let (min, avg, max) = if rtts.is_empty() {
        (None, None, None)
    } else {
        let min = rtts.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rtts.iter().copied().fold(0.0, f64::max);
        let avg = rtts.iter().sum::<f64>() / rtts.len() as f64;
        (Some(min), Some(avg), Some(max))
    };
    EchoResult {
        sent,
        received,
        rtt_min_ms: min,
        rtt_avg_ms: avg,
        rtt_max_ms: max,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prober(count: u16) -> IcmpProber {
        IcmpProber::new(count, Duration::from_secs(1), Duration::from_secs(2)).unwrap()
    }

    #[tokio::test]
    async fn loopback_answers_every_echo() {
        let r = prober(3).echo("127.0.0.1".parse().unwrap()).await;
        assert_eq!((r.sent, r.received), (3, 3), "{r:?}");
        assert!(r.error.is_none());
        // Loopback RTT can read 0: only check the ordering.
        let (min, avg, max) = (
            r.rtt_min_ms.unwrap(),
            r.rtt_avg_ms.unwrap(),
            r.rtt_max_ms.unwrap(),
        );
        assert!(min <= avg && avg <= max);
    }

    #[tokio::test]
    async fn concurrent_series_to_one_target_do_not_collide() {
        let p = prober(2);
        let ip = "127.0.0.1".parse().unwrap();
        let (a, b) = tokio::join!(p.echo(ip), p.echo(ip));
        assert_eq!((a.received, b.received), (2, 2), "{a:?} {b:?}");
    }

    #[test]
    fn icmp_errors_are_classified() {
        let from: IpAddr = "10.244.1.1".parse().unwrap();
        assert!(icmp_outcome(4, 0, 0, from).is_ok());
        assert!(icmp_outcome(6, 129, 0, from).is_ok());
        let e = icmp_outcome(4, 3, 1, from).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unreachable);
        assert_eq!(
            e.message,
            "destination host unreachable (ICMP from 10.244.1.1)"
        );
        assert_eq!(
            icmp_outcome(4, 5, 0, from).unwrap_err().kind,
            ErrorKind::Other
        );
    }

    #[test]
    fn summary_counts_losses_and_keeps_the_last_error() {
        let r = summarise(vec![
            Ok(Duration::from_millis(2)),
            Err(ProbeError::new(ErrorKind::Timeout, "first")),
            Ok(Duration::from_millis(4)),
            Err(ProbeError::new(ErrorKind::Timeout, "last")),
        ]);
        assert_eq!((r.sent, r.received), (4, 2));
        assert_eq!(r.rtt_min_ms, Some(2.0));
        assert_eq!(r.rtt_avg_ms, Some(3.0));
        assert_eq!(r.rtt_max_ms, Some(4.0));
        assert_eq!(r.error.unwrap().message, "last");

        let r = summarise(vec![Err(ProbeError::new(ErrorKind::Timeout, "x"))]);
        assert_eq!(r.rtt_avg_ms, None);
        assert_eq!(r.loss(), 1.0);
    }

    #[tokio::test]
    async fn each_target_gets_its_own_identifier_and_fresh_sequences() {
        let p = IcmpProber {
            v4: Client::new(&Config::default()).unwrap(),
            v6: Err(String::new()),
            count: 3,
            timeout: Duration::from_secs(1),
            gap: Duration::ZERO,
            targets: Mutex::new(Targets {
                by_ip: HashMap::new(),
                next_ident: u16::MAX,
            }),
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(p.reserve(a), (u16::MAX, 0));
        assert_eq!(p.reserve(a), (u16::MAX, 3));
        assert_eq!(p.reserve(b), (0, 0));
        p.retain_targets(&HashSet::from([b]));
        assert_eq!(p.reserve(a), (1, 0));
    }
}
