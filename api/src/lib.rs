//! Wire types of netmatrix, version 1 (`/api/v1`).
//!
//! This crate is the single definition of everything that crosses the wire
//! between the agent, the aggregator and the tools that read the aggregator
//! (the `validate` command, the web page, the lab). Both sides depend on it, so
//! a field renamed here is renamed everywhere at compile time.
//!
//! Conventions:
//! - field names are `snake_case`, enum values `kebab-case`;
//! - durations are milliseconds as `f64` (`*_ms`), timestamps are Unix
//!   milliseconds as `u64` (`*_unix_ms`);
//! - optional fields are omitted when empty, and unknown fields are ignored on
//!   read, so that a newer agent can talk to an older aggregator.
//!
//! The types are re-exported at the crate root (`netmatrix_api::Report`);
//! they are written by topic:
//! - `report`: what an agent sends ([`Report`]) and the answer
//!   ([`ReportAccepted`]);
//! - `matrix`, `column`: what the aggregator serves ([`Matrix`], [`CheckColumn`]);
//! - `findings`: what it names ([`Findings`], [`FindingKind`]);
//! - `compact`: the matrix in a few bytes per cell ([`CompactMatrix`]);
//! - `endpoints`: the paths, and the error body ([`ApiError`]);
//! - `pinglist`: what the aggregator tells each agent to probe ([`Pinglist`]);
//! - [`protobuf`]: the report in Protocol Buffers, as agents send it;
//! - [`facts`], [`labels`], [`sampling`], [`validate`]: a node's own
//!   network, Kubernetes labels, the sampled mesh, report validation;
//! - `fixtures` (feature `fixtures`): wire values for tests.

mod column;
mod compact;
mod endpoints;
mod findings;
mod matrix;
mod pinglist;
mod report;

pub mod facts;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod labels;
pub mod protobuf;
pub mod sampling;
pub mod validate;

pub use column::*;
pub use compact::*;
pub use endpoints::*;
pub use findings::*;
pub use matrix::*;
pub use pinglist::*;
pub use report::*;

/// 64-bit FNV-1a: a fixed algorithm, stable across processes and versions
/// of the standard library (unlike `DefaultHasher`), for digests that the
/// agents and the aggregator must agree on.
pub(crate) fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_use_kebab_case_on_the_wire() {
        let v = serde_json::to_value(FindingKind::ApiserverUnreachable).unwrap();
        assert_eq!(v, "apiserver-unreachable");
        assert_eq!(
            FindingKind::ApiserverUnreachable.as_str(),
            "apiserver-unreachable"
        );
        let v = serde_json::to_value(ErrorKind::WrongAnswer).unwrap();
        assert_eq!(v, ErrorKind::WrongAnswer.as_str());
        assert_eq!(serde_json::to_value(RecordType::Srv).unwrap(), "SRV");
    }
}
