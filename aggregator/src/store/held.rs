//! A held report's peers, in the form the matrix build reads.
//!
//! A report is held until its agent's next one, and at 5,000 nodes a
//! quarter of a million peers are held at once. As parsed, a peer takes
//! about 500 bytes (four echo results with three `f64` latencies and an
//! error each, two names of its own); held, 120: the latencies the matrix
//! reads (the small echoes' only) as `f32` (seven significant digits: to
//! the microsecond up to 8 seconds, which covers any path that answers),
//! the rare errors boxed, and the names shared with the inventory's
//! address index (a reference count, not a copy).

use std::net::IpAddr;
use std::sync::Arc;

use netmatrix_api::{EchoResult, PeerResult, ProbeError};

/// The name of no pod (an address placed by its node's pod CIDR only):
/// one shared allocation.
pub fn no_pod() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    Arc::clone(&EMPTY)
}

/// One probed pod of a held report.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldPeer {
    /// The node the pod runs on (never empty: unplaced peers are dropped).
    pub node: Arc<str>,
    /// Empty when only the node is known (an address in its pod CIDR).
    pub pod: Arc<str>,
    pub ip: IpAddr,
    /// The port TCP and UDP went to.
    pub port: Option<u16>,
    pub icmp: Echoes,
    /// The large echoes, TCP connects and UDP echoes: counted only (their
    /// latencies are not shown), 12 bytes each instead of 20.
    pub mtu: Option<Counts>,
    pub tcp: Option<Counts>,
    pub udp: Option<Counts>,
    /// The small and the large echoes' last errors (what a cell shows).
    errors: Option<Box<Errors>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Errors {
    icmp: Option<ProbeError>,
    mtu: Option<ProbeError>,
}

impl HeldPeer {
    /// `peer`, placed on `node` (and named `pod` when the report did not
    /// name it).
    pub fn new(peer: PeerResult, node: Arc<str>, pod: Arc<str>) -> Self {
        let PeerResult {
            ip,
            port,
            icmp,
            mtu,
            tcp,
            udp,
            ..
        } = peer;
        let (icmp_error, mtu_error) = (
            icmp.error.clone(),
            mtu.as_ref().and_then(|m| m.error.clone()),
        );
        let errors = (icmp_error.is_some() || mtu_error.is_some()).then(|| {
            Box::new(Errors {
                icmp: icmp_error,
                mtu: mtu_error,
            })
        });
        HeldPeer {
            node,
            pod,
            ip,
            port,
            icmp: Echoes::of(&icmp),
            mtu: mtu.as_ref().map(Counts::of),
            tcp: tcp.as_ref().map(Counts::of),
            udp: udp.as_ref().map(Counts::of),
            errors,
        }
    }

    /// The small echoes' last error.
    pub fn icmp_error(&self) -> Option<&ProbeError> {
        self.errors.as_ref().and_then(|e| e.icmp.as_ref())
    }

    /// The large echoes' last error.
    pub fn mtu_error(&self) -> Option<&ProbeError> {
        self.errors.as_ref().and_then(|e| e.mtu.as_ref())
    }
}

/// A latency held as `f32`, NaN for none (half the size of an
/// `Option<f64>`): from the wire's milliseconds...
pub(crate) fn held_ms(ms: Option<f64>) -> f32 {
    ms.filter(|v| v.is_finite()).map_or(f32::NAN, |v| v as f32)
}

/// ...and back.
pub(crate) fn measured_ms(held: f32) -> Option<f64> {
    (!held.is_nan()).then_some(f64::from(held))
}

/// Probes sent and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub sent: u32,
    pub received: u32,
}

impl Counts {
    pub fn of(echoes: &EchoResult) -> Self {
        Counts {
            sent: echoes.sent,
            received: echoes.received,
        }
    }
}

/// Echo counts and the latencies the matrix shows.
#[derive(Debug, Clone, Copy)]
pub struct Echoes {
    pub sent: u32,
    pub received: u32,
    /// Milliseconds; NaN when none was measured.
    rtt_avg: f32,
    rtt_max: f32,
}

/// Equal when the same bits: NaN ("none measured") equals itself, so that a
/// held report equals its copy.
impl PartialEq for Echoes {
    fn eq(&self, other: &Self) -> bool {
        (
            self.sent,
            self.received,
            self.rtt_avg.to_bits(),
            self.rtt_max.to_bits(),
        ) == (
            other.sent,
            other.received,
            other.rtt_avg.to_bits(),
            other.rtt_max.to_bits(),
        )
    }
}

impl Echoes {
    pub fn of(echoes: &EchoResult) -> Self {
        Echoes {
            sent: echoes.sent,
            received: echoes.received,
            rtt_avg: held_ms(echoes.rtt_avg_ms),
            rtt_max: held_ms(echoes.rtt_max_ms),
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            sent: self.sent,
            received: self.received,
        }
    }

    pub fn rtt_avg_ms(&self) -> Option<f64> {
        measured_ms(self.rtt_avg)
    }

    pub fn rtt_max_ms(&self) -> Option<f64> {
        measured_ms(self.rtt_max)
    }

    /// Fraction of echoes lost, 0.0 to 1.0 (1.0 when nothing was sent).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - f64::from(self.received.min(self.sent)) / f64::from(self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::ErrorKind;

    #[test]
    fn a_held_peer_keeps_what_the_matrix_reads() {
        let echoes = |sent, received, rtt: Option<f64>| EchoResult {
            sent,
            received,
            rtt_min_ms: rtt,
            rtt_avg_ms: rtt,
            rtt_max_ms: rtt.map(|v| v * 2.0),
            error: None,
        };
        let mut icmp = echoes(3, 1, Some(0.348));
        icmp.error = Some(ProbeError::new(ErrorKind::Timeout, "no reply"));
        let peer = PeerResult {
            node: String::new(),
            pod: String::new(),
            ip: "10.244.2.3".parse().unwrap(),
            icmp,
            mtu: Some(echoes(1, 0, None)),
            tcp: Some(echoes(1, 1, Some(1.5))),
            udp: None,
            port: Some(8080),
        };
        let held = HeldPeer::new(peer, "n2".into(), "n2-3".into());
        assert_eq!((held.icmp.sent, held.icmp.received), (3, 1));
        // Kept to the microsecond the wire carries.
        assert_eq!(
            held.icmp.rtt_avg_ms().map(|v| (v * 1e3).round()),
            Some(348.0)
        );
        assert_eq!(
            held.icmp.rtt_max_ms().map(|v| (v * 1e3).round()),
            Some(696.0)
        );
        assert_eq!(
            held.mtu,
            Some(Counts {
                sent: 1,
                received: 0
            })
        );
        assert_eq!(held.icmp_error().map(|e| e.kind), Some(ErrorKind::Timeout));
        assert_eq!(held.mtu_error(), None);
        assert!(held.udp.is_none());
        assert_eq!(
            (&*held.node, &*held.pod, held.port),
            ("n2", "n2-3", Some(8080))
        );
    }

    #[test]
    fn a_held_peer_is_a_fraction_of_a_parsed_one() {
        // What the held form is for: keep it well under a parsed peer.
        assert!(std::mem::size_of::<HeldPeer>() <= 120);
        assert!(std::mem::size_of::<PeerResult>() >= 2 * std::mem::size_of::<HeldPeer>());
    }
}
