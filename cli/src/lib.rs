//! The `netmatrix` command line.
//!
//! - [`validate`]: the verdict on the pod network, from the aggregator
//!   (`helm test` runs it right after an install); [`verdict`] judges one
//!   aggregator round.
//! - [`render`]: the terminal views behind `matrix`, `findings` and
//!   `explain NODE` (and the lab's printout).
//! - [`client`]: the aggregator's `/api/v1`, over plain HTTP.
//! - [`companion`]: the companion DaemonSet's target-only mode.
//!
//! The agent and the aggregator are their own binaries
//! (`netmatrix-agent`, `netmatrix-aggregator`); all three ship in one image.

pub mod client;
pub mod companion;
pub mod render;
pub mod validate;
pub mod verdict;
