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
//!
//! The MTU probe ([`MtuProbe`]) sends a few large echoes per peer through a
//! second pair of sockets with Don't Fragment set: such a packet is never
//! fragmented, so it either crosses the path whole or is lost (or answered
//! with "fragmentation needed"), which is what an MTU mismatch does to real
//! traffic. Large and small echoes of one target draw their sequence numbers
//! from the same counter: a `RAW` socket sees every ICMP packet, so a large
//! reply must never match a small request of the other socket.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use netmatrix_api::{EchoResult, ErrorKind, ProbeError};
use surge_ping::{Client, Config, ICMP, IcmpPacket, PingIdentifier, PingSequence, SurgeError};

use super::{io_probe_error, millis};

/// Payload of a small echo: 56 bytes, like `ping`'s default.
const PAYLOAD: [u8; 56] = [PAYLOAD_BYTE; 56];
/// Upper bound of the gap between the echoes of one round to one target.
const MAX_ECHO_GAP: Duration = Duration::from_millis(200);

/// Byte of every echo payload (`n`).
const PAYLOAD_BYTE: u8 = 0x6e;
/// IPv4 header without options, plus the ICMP echo header.
const V4_HEADERS: u32 = 20 + 8;
/// IPv6 header, plus the ICMPv6 echo header.
const V6_HEADERS: u32 = 40 + 8;

/// The large Don't-Fragment echoes of the MTU probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuProbe {
    /// Size of the whole IP packet, headers included.
    pub bytes: u32,
    /// Echoes per peer and round.
    pub count: u16,
}

impl MtuProbe {
    /// ICMP payload length that makes an IP packet of [`Self::bytes`] to
    /// `ip`: minus the IP header (20 bytes for IPv4, 40 for IPv6) and the
    /// 8-byte ICMP echo header.
    pub fn payload_len(&self, ip: IpAddr) -> usize {
        let headers = match ip {
            IpAddr::V4(_) => V4_HEADERS,
            IpAddr::V6(_) => V6_HEADERS,
        };
        usize::try_from(self.bytes.saturating_sub(headers)).unwrap_or(usize::MAX)
    }
}

/// The sockets of the MTU probe, with Don't Fragment set.
struct DfClients {
    probe: MtuProbe,
    v4: Client,
    /// `None` when the host has no IPv6: IPv6 peers then get no MTU result.
    v6: Option<Client>,
    payload_v4: Vec<u8>,
    payload_v6: Vec<u8>,
    gap: Duration,
}

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
    /// `None` when the MTU probe is off (or no Don't-Fragment socket opened).
    df: Option<DfClients>,
    targets: Mutex<Targets>,
}

struct Targets {
    by_ip: HashMap<IpAddr, TargetState>,
    next_ident: u16,
}

impl IcmpProber {
    /// Opens the sockets. `count` echoes per round and target, each waiting
    /// up to `timeout`; echoes are spread over at most a quarter of `interval`.
    /// With `mtu`, a second pair of sockets with Don't Fragment set sends the
    /// large echoes ([`Self::echo_large`]).
    pub fn new(
        count: u16,
        timeout: Duration,
        interval: Duration,
        mtu: Option<MtuProbe>,
    ) -> Result<Self, IcmpSocketError> {
        let v4 = Client::new(&Config::builder().kind(ICMP::V4).build())
            .map_err(|source| IcmpSocketError { source })?;
        enlarge_receive_buffer(&v4);
        let v6 = Client::new(&Config::builder().kind(ICMP::V6).build()).map_err(|e| {
            tracing::debug!(error = %e, "no ICMPv6 socket; IPv6 peers will be reported as failing");
            format!("no ICMPv6 socket: {e}")
        });
        if let Ok(v6) = &v6 {
            enlarge_receive_buffer(v6);
        }
        tracing::info!(socket = ?v4.get_socket().get_type(), "ICMP socket open");
        let count = count.max(1);
        let gap = echo_gap(interval, count);
        let df = mtu.and_then(|probe| DfClients::open(probe, interval));
        Ok(Self {
            v4,
            v6,
            count,
            timeout,
            gap,
            df,
            targets: Mutex::new(Targets {
                by_ip: HashMap::new(),
                next_ident: rand::random(),
            }),
        })
    }

    /// Echoes per target and round (`--icmp-count`).
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Sends this round's echoes to `ip` and summarises them.
    pub async fn echo(&self, ip: IpAddr) -> EchoResult {
        self.echo_n(ip, self.count).await
    }

    /// Sends `count` echoes to `ip`, spaced as usual, and summarises them.
    pub async fn echo_n(&self, ip: IpAddr, count: u16) -> EchoResult {
        let count = count.max(1);
        let client = match (ip, &self.v6) {
            (IpAddr::V4(_), _) => &self.v4,
            (IpAddr::V6(_), Ok(v6)) => v6,
            (IpAddr::V6(_), Err(msg)) => {
                return EchoResult {
                    sent: u32::from(count),
                    error: Some(ProbeError::new(ErrorKind::Other, msg.clone())),
                    ..EchoResult::default()
                };
            }
        };
        let (ident, first_seq) = self.reserve(ip, count);
        let echoes = (0..count).map(|i| {
            let seq = first_seq.wrapping_add(i);
            let delay = self.gap * u32::from(i);
            let echo = Echo {
                payload: &PAYLOAD,
                dont_fragment_bytes: None,
            };
            echo_once(client, ip, ident, seq, self.timeout, delay, echo)
        });
        summarise(join_all(echoes).await)
    }

    /// Size of the MTU probe's IP packets; `None` when the probe is off.
    pub fn mtu_probe_bytes(&self) -> Option<u32> {
        self.df.as_ref().map(|df| df.probe.bytes)
    }

    /// Sends this round's large Don't-Fragment echoes to `ip`; `None` when
    /// the MTU probe is off or has no socket for `ip`'s family.
    pub async fn echo_large(&self, ip: IpAddr) -> Option<EchoResult> {
        let df = self.df.as_ref()?;
        let (client, payload) = match ip {
            IpAddr::V4(_) => (&df.v4, &df.payload_v4),
            IpAddr::V6(_) => (df.v6.as_ref()?, &df.payload_v6),
        };
        let (ident, first_seq) = self.reserve(ip, df.probe.count);
        let echoes = (0..df.probe.count).map(|i| {
            let seq = first_seq.wrapping_add(i);
            // Half a gap later than the small echoes: the two series
            // interleave instead of leaving together.
            let delay = df.gap * u32::from(i) + df.gap / 2;
            let echo = Echo {
                payload,
                dont_fragment_bytes: Some(df.probe.bytes),
            };
            echo_once(client, ip, ident, seq, self.timeout, delay, echo)
        });
        Some(summarise(join_all(echoes).await))
    }

    /// Forgets the counters of targets that are no longer peers, so the table
    /// does not grow with every pod that ever existed.
    pub fn retain_targets(&self, keep: &HashSet<IpAddr>) {
        if let Ok(mut t) = self.targets.lock() {
            t.by_ip.retain(|ip, _| keep.contains(ip));
        }
    }

    /// Identifier of `ip` and the first of `count` fresh sequence numbers.
    fn reserve(&self, ip: IpAddr, count: u16) -> (u16, u16) {
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
        state.next_seq = state.next_seq.wrapping_add(count);
        if reserved.0 == fresh_ident {
            t.next_ident = t.next_ident.wrapping_add(1);
        }
        reserved
    }
}

impl DfClients {
    /// Opens a Don't-Fragment socket per family. Without an IPv4 one the
    /// probe is off (with a warning): large echoes that the kernel may
    /// fragment would pass on a path whose MTU is too small, and an MTU
    /// probe that cannot fail proves nothing.
    fn open(probe: MtuProbe, interval: Duration) -> Option<Self> {
        let open = |kind: ICMP| -> io::Result<Client> {
            let client = Client::new(&Config::builder().kind(kind).build())?;
            set_dont_fragment(&client, kind)?;
            enlarge_receive_buffer(&client);
            Ok(client)
        };
        let v4 = match open(ICMP::V4) {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, "cannot open an ICMP socket with Don't Fragment set; the MTU probe is off");
                return None;
            }
        };
        let v6 = open(ICMP::V6)
            .map_err(|error| {
                tracing::debug!(%error, "no ICMPv6 socket with Don't Fragment; no MTU probe to IPv6 peers");
            })
            .ok();
        let payload = |ip: IpAddr| vec![PAYLOAD_BYTE; probe.payload_len(ip)];
        tracing::info!(
            bytes = probe.bytes,
            count = probe.count,
            "MTU probe on: large echoes with Don't Fragment set"
        );
        Some(Self {
            probe,
            v4,
            v6,
            payload_v4: payload(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            payload_v6: payload(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
            gap: echo_gap(interval, probe.count),
        })
    }
}

/// How the MTU probe's sockets treat Don't Fragment: `PMTUDISC_PROBE`, what
/// `tracepath` and `ping -M probe` use. Like `PMTUDISC_DO` it sets DF on
/// every packet and never fragments locally; unlike it, it ignores the path
/// MTU the kernel cached from an earlier "fragmentation needed" (kept for
/// `net.ipv4.route.mtu_expires`, 10 minutes). So every round tests the path
/// as it is now: with `DO`, a healed MTU fault would go on failing with
/// `EMSGSIZE` for up to 10 minutes, crying wolf.
const V4_DONT_FRAGMENT: libc::c_int = libc::IP_PMTUDISC_PROBE;
const V6_DONT_FRAGMENT: libc::c_int = libc::IPV6_PMTUDISC_PROBE;

/// Sets Don't Fragment on an ICMP socket (`IP_MTU_DISCOVER`, IPv6:
/// `IPV6_MTU_DISCOVER`, see [`V4_DONT_FRAGMENT`]). A send larger than the
/// outgoing interface's MTU then fails with `EMSGSIZE`.
fn set_dont_fragment(client: &Client, kind: ICMP) -> io::Result<()> {
    let (level, name, value) = match kind {
        ICMP::V4 => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, V4_DONT_FRAGMENT),
        ICMP::V6 => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            V6_DONT_FRAGMENT,
        ),
    };
    set_int_option(client, level, name, value)
}

/// Receive buffer asked for on every ICMP socket. Replies to a round's
/// echoes arrive in bursts (thousands of peers answer within milliseconds);
/// with the kernel's default (about 200 KB) the queue overflows while the
/// receive task is descheduled, and live peers read as lost. The kernel caps
/// the request at `net.core.rmem_max`.
const RECEIVE_BUFFER_BYTES: libc::c_int = 4 << 20;

/// Enlarges the socket's receive buffer ([`RECEIVE_BUFFER_BYTES`]); a
/// failure only costs headroom, so it is logged, not fatal.
fn enlarge_receive_buffer(client: &Client) {
    if let Err(error) = set_int_option(
        client,
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        RECEIVE_BUFFER_BYTES,
    ) {
        tracing::warn!(%error, "cannot enlarge the ICMP receive buffer; replies to large rounds may be dropped");
    }
}

fn set_int_option(
    client: &Client,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // `client` owns the socket and outlives this call.
    super::set_int_option(client.get_socket().get_native_sock(), level, name, value)
}

/// A large echo's `EMSGSIZE` ("message too long": the packet does not fit
/// the MTU the kernel applies to this destination, the outgoing interface's,
/// or a route's `mtu lock`), worded for the operator. Kind `Unreachable`,
/// like the ICMP "fragmentation needed" a router sends: this destination
/// cannot be reached with packets of this size. It is one lost echo, never an
/// error of the round.
fn too_big(ip: IpAddr, bytes: u32) -> ProbeError {
    ProbeError::new(
        ErrorKind::Unreachable,
        format!(
            "ping {ip}: sendto: message too long: a {bytes}-byte packet with Don't Fragment \
             exceeds the MTU of the route to {ip} (ip route get {ip}; ip link)"
        ),
    )
}

/// What one echo carries.
#[derive(Clone, Copy)]
struct Echo<'a> {
    payload: &'a [u8],
    /// Size of the IP packet when Don't Fragment is set (the MTU probe).
    dont_fragment_bytes: Option<u32>,
}

/// Gap between the echoes of one series: spread over at most a quarter of
/// the interval, and never more than [`MAX_ECHO_GAP`].
pub(crate) fn echo_gap(interval: Duration, count: u16) -> Duration {
    (interval / (4 * u32::from(count.max(1)))).min(MAX_ECHO_GAP)
}

async fn echo_once(
    client: &Client,
    ip: IpAddr,
    ident: u16,
    seq: u16,
    timeout: Duration,
    delay: Duration,
    echo: Echo<'_>,
) -> Result<Duration, ProbeError> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut pinger = client.pinger(ip, PingIdentifier(ident)).await;
    pinger.timeout(timeout);
    match pinger.ping(PingSequence(seq), echo.payload).await {
        Ok((packet, rtt)) => reply_outcome(&packet, rtt),
        Err(SurgeError::Timeout { .. }) => Err(ProbeError::new(
            ErrorKind::Timeout,
            format!("no echo reply from {ip} within {timeout:?}"),
        )),
        Err(SurgeError::IOError(err)) if err.raw_os_error() == Some(libc::EMSGSIZE) => {
            match echo.dont_fragment_bytes {
                Some(bytes) => Err(too_big(ip, bytes)),
                None => Err(io_probe_error(&format!("ping {ip}: sendto"), &err)),
            }
        }
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
pub(crate) fn summarise(outcomes: Vec<Result<Duration, ProbeError>>) -> EchoResult {
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
        let avg = netmatrix_api::round_ms(rtts.iter().sum::<f64>() / rtts.len() as f64);
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
        IcmpProber::new(count, Duration::from_secs(1), Duration::from_secs(2), None).unwrap()
    }

    fn mtu_prober(bytes: u32) -> IcmpProber {
        IcmpProber::new(
            1,
            Duration::from_secs(1),
            Duration::from_secs(2),
            Some(MtuProbe { bytes, count: 2 }),
        )
        .unwrap()
    }

    /// The option as the kernel reports it.
    fn mtu_discover(client: &Client, kind: ICMP) -> libc::c_int {
        let (level, name) = match kind {
            ICMP::V4 => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            ICMP::V6 => (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
        };
        sock_option(client, level, name)
    }

    fn sock_option(client: &Client, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = -1;
        let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap();
        // SAFETY: a live socket, and a c_int buffer with its size.
        let rc = unsafe {
            libc::getsockopt(
                client.get_socket().get_native_sock(),
                level,
                name,
                (&raw mut value).cast::<libc::c_void>(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        value
    }

    #[tokio::test]
    async fn receive_buffers_are_enlarged_as_far_as_the_kernel_allows() {
        let rmem_max: libc::c_int = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let prober = mtu_prober(1400);
        let df = prober.df.as_ref().expect("DF socket");
        // The kernel doubles the value asked for (bookkeeping overhead).
        let want = 2 * RECEIVE_BUFFER_BYTES.min(rmem_max);
        for client in [&prober.v4, &df.v4] {
            let got = sock_option(client, libc::SOL_SOCKET, libc::SO_RCVBUF);
            assert!(got >= want, "SO_RCVBUF {got}, expected at least {want}");
        }
    }

    #[test]
    fn mtu_payload_leaves_room_for_the_headers() {
        let probe = MtuProbe {
            bytes: 1450,
            count: 2,
        };
        assert_eq!(probe.payload_len("10.244.1.2".parse().unwrap()), 1450 - 28);
        assert_eq!(probe.payload_len("fd00::2".parse().unwrap()), 1450 - 48);
        let tiny = MtuProbe {
            bytes: 10,
            count: 1,
        };
        assert_eq!(tiny.payload_len("10.244.1.2".parse().unwrap()), 0);
    }

    #[tokio::test]
    async fn mtu_sockets_have_dont_fragment_set() {
        let p = mtu_prober(1450);
        assert_eq!(p.mtu_probe_bytes(), Some(1450));
        let df = p.df.as_ref().unwrap();
        assert_eq!(df.payload_v4.len(), 1422);
        // DF on every packet, the cached path MTU ignored.
        assert_eq!(mtu_discover(&df.v4, ICMP::V4), libc::IP_PMTUDISC_PROBE);
        if let Some(v6) = &df.v6 {
            assert_eq!(mtu_discover(v6, ICMP::V6), libc::IPV6_PMTUDISC_PROBE);
        }
        // The small echoes' socket is left alone (the kernel's default).
        assert_ne!(mtu_discover(&p.v4, ICMP::V4), libc::IP_PMTUDISC_PROBE);
        assert!(prober(1).mtu_probe_bytes().is_none());
        assert!(
            prober(1)
                .echo_large("127.0.0.1".parse().unwrap())
                .await
                .is_none()
        );
    }

    /// Loopback's MTU is 65536: a 9000-byte DF echo (a jumbo frame, larger
    /// than surge-ping's 2048-byte receive buffer) comes back.
    #[tokio::test]
    async fn large_dont_fragment_echoes_to_loopback_are_answered() {
        let p = mtu_prober(9000);
        let ip = "127.0.0.1".parse().unwrap();
        let (small, large) = tokio::join!(p.echo(ip), p.echo_large(ip));
        assert_eq!((small.sent, small.received), (1, 1), "{small:?}");
        let large = large.unwrap();
        assert_eq!((large.sent, large.received), (2, 2), "{large:?}");
    }

    /// A packet the kernel refuses to send whole (here: over the 64 KiB IP
    /// limit, as with a path MTU learnt from "fragmentation needed") is a
    /// lost echo with a clear message, not a panic or a round failure.
    #[tokio::test]
    async fn an_oversized_dont_fragment_echo_is_a_lost_echo() {
        let p = mtu_prober(70_000);
        let r = p.echo_large("127.0.0.1".parse().unwrap()).await.unwrap();
        assert_eq!((r.sent, r.received), (2, 0), "{r:?}");
        let e = r.error.unwrap();
        assert_eq!(e.kind, ErrorKind::Unreachable);
        assert!(
            e.message.starts_with(
                "ping 127.0.0.1: sendto: message too long: a 70000-byte packet with Don't Fragment"
            ),
            "{e}"
        );
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
            df: None,
            targets: Mutex::new(Targets {
                by_ip: HashMap::new(),
                next_ident: u16::MAX,
            }),
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(p.reserve(a, 3), (u16::MAX, 0));
        assert_eq!(p.reserve(a, 3), (u16::MAX, 3));
        // Large echoes draw from the same counter.
        assert_eq!(p.reserve(a, 2), (u16::MAX, 6));
        assert_eq!(p.reserve(a, 3), (u16::MAX, 8));
        assert_eq!(p.reserve(b, 3), (0, 0));
        p.retain_targets(&HashSet::from([b]));
        assert_eq!(p.reserve(a, 3), (1, 0));
    }
}
