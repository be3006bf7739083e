//! The probes. Each one turns a network check into a wire result
//! ([`netmatrix_api::EchoResult`], [`ServiceResult`](netmatrix_api::ServiceResult),
//! [`DnsResult`](netmatrix_api::DnsResult)) and never returns a Rust error:
//! a failure is data, classified by [`ErrorKind`] so that the aggregator can
//! tell "unreachable" from "refused" from "timeout".

use std::io;
use std::time::Duration;

use netmatrix_api::{ErrorKind, ProbeError};

pub mod apiserver;
pub mod dns;
pub mod icmp;
pub mod tcp;
pub mod udp;

/// Linux `ENETUNREACH`.
const ENETUNREACH: i32 = 101;
/// Linux `EHOSTUNREACH`.
const EHOSTUNREACH: i32 = 113;
/// Linux `ECONNREFUSED`.
const ECONNREFUSED: i32 = 111;

/// Classifies an OS error the way an operator reads it.
pub(crate) fn io_error_kind(err: &io::Error) -> ErrorKind {
    match err.raw_os_error() {
        Some(ENETUNREACH | EHOSTUNREACH) => ErrorKind::Unreachable,
        Some(ECONNREFUSED) => ErrorKind::Refused,
        _ => match err.kind() {
            io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                ErrorKind::Unreachable
            }
            _ => ErrorKind::Other,
        },
    }
}

/// The OS message without Rust's decoration: `network is unreachable`
/// rather than `Network is unreachable (os error 101)`, as Go (kubectl,
/// kubelet, CNI plugins) prints it, so it matches what operators search for.
pub(crate) fn os_message(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A probe error from an OS error, with a context prefix such as
/// `dial tcp 10.96.0.1:443: connect`.
pub(crate) fn io_probe_error(context: &str, err: &io::Error) -> ProbeError {
    ProbeError::new(
        io_error_kind(err),
        format!("{context}: {}", os_message(err)),
    )
}

/// setsockopt(2) of an integer option on `fd`, which the caller keeps open
/// for the call.
pub(crate) fn set_int_option(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).map_err(io::Error::other)?;
    // SAFETY: `fd` is an open socket for the call's duration (the caller's
    // promise); `value` is a c_int on this stack frame and `len` its exact
    // size, as setsockopt(2) requires for integer options.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Milliseconds as the wire types carry them (to the microsecond).
pub(crate) fn millis(d: Duration) -> f64 {
    netmatrix_api::round_ms(d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_keep_their_kind_and_read_like_go() {
        let e = io::Error::from_raw_os_error(ENETUNREACH);
        let p = io_probe_error("dial tcp 10.96.0.1:443: connect", &e);
        assert_eq!(p.kind, ErrorKind::Unreachable);
        assert_eq!(
            p.message,
            "dial tcp 10.96.0.1:443: connect: network is unreachable"
        );
        let e = io::Error::from_raw_os_error(EHOSTUNREACH);
        assert_eq!(io_error_kind(&e), ErrorKind::Unreachable);
        assert_eq!(os_message(&e), "no route to host");
        let e = io::Error::from_raw_os_error(ECONNREFUSED);
        assert_eq!(io_error_kind(&e), ErrorKind::Refused);
        let e = io::Error::other("Something odd");
        assert_eq!(io_error_kind(&e), ErrorKind::Other);
        assert_eq!(os_message(&e), "something odd");
    }
}
