//! One evaluation round's matrix as served: the matrix itself, and its JSON
//! encodings made once per round.
//!
//! At 1,000 nodes encoding a million cells is the expensive part of serving
//! the matrix (a few hundred milliseconds), so every client polling within a
//! round shares one encoding, and the forms that clients asked for last
//! round are encoded ahead, right after the evaluation, so that a page or a
//! script polling every round is answered from memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use netmatrix_api::Matrix;

/// A cell's JSON is about 115 bytes (loss, RTTs, age, pods, destination).
const BYTES_PER_CELL: usize = 128;

/// The ways the matrix is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `GET /api/v1/matrix`: every cell with its details.
    Full,
    /// `GET /api/v1/matrix/compact`: statuses only, for the web page.
    Compact,
}

/// Encoding the matrix failed (a bug, not bad input: the matrix is ours).
/// Kept like a success: encoding the same matrix again fails the same way.
pub type EncodeError = Arc<serde_json::Error>;

#[derive(Default)]
struct Encoding {
    bytes: OnceLock<Result<Bytes, EncodeError>>,
    /// Set by clients' requests only, not by encoding ahead: a form nobody
    /// asks for any more stops being encoded after one round.
    requested: AtomicBool,
}

/// One round's matrix and its encodings.
pub struct Published {
    pub matrix: Arc<Matrix>,
    full: Encoding,
    compact: Encoding,
}

impl Published {
    pub fn new(matrix: Arc<Matrix>) -> Self {
        Published {
            matrix,
            full: Encoding::default(),
            compact: Encoding::default(),
        }
    }

    fn slot(&self, form: Form) -> &Encoding {
        match form {
            Form::Full => &self.full,
            Form::Compact => &self.compact,
        }
    }

    /// A client asks for `form`: remembered for encoding ahead next round.
    /// Returns the encoding when it is already made (no blocking).
    pub fn request(&self, form: Form) -> Option<Result<Bytes, EncodeError>> {
        let slot = self.slot(form);
        slot.requested.store(true, Ordering::Relaxed);
        slot.bytes.get().cloned()
    }

    /// Whether a client asked for `form` this round.
    pub fn was_requested(&self, form: Form) -> bool {
        self.slot(form).requested.load(Ordering::Relaxed)
    }

    /// `form`'s encoding, made on first call. Blocks (concurrent callers wait
    /// for the one encoding rather than each making their own): call off the
    /// async threads.
    pub fn encoded(&self, form: Form) -> Result<Bytes, EncodeError> {
        self.slot(form)
            .bytes
            .get_or_init(|| self.encode(form).map(Bytes::from).map_err(Arc::new))
            .clone()
    }

    fn encode(&self, form: Form) -> Result<Vec<u8>, serde_json::Error> {
        match form {
            Form::Full => {
                // Sized up front: growing a 100 MB buffer by doubling copies
                // it several times over (a tenth of the encoding time at 1M
                // cells).
                let cells: usize = self.matrix.rows.iter().map(|r| r.cells.len()).sum();
                let mut out = Vec::with_capacity(cells.saturating_mul(BYTES_PER_CELL) + 4096);
                serde_json::to_writer(&mut out, &*self.matrix)?;
                Ok(out)
            }
            Form::Compact => serde_json::to_vec(&crate::web::compact(&self.matrix)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> Published {
        Published::new(Arc::new(Matrix {
            generated_unix_ms: 1,
            nodes: vec!["n1".into()],
            rows: Vec::new(),
            host_rows: Vec::new(),
        }))
    }

    #[test]
    fn encodes_once_and_remembers_only_client_requests() {
        let p = published();
        assert!(p.request(Form::Full).is_none(), "not encoded yet");
        assert!(p.was_requested(Form::Full));
        let body = p.encoded(Form::Full).unwrap();
        let again = p.request(Form::Full).unwrap().unwrap();
        assert_eq!(body.as_ptr(), again.as_ptr(), "encoded once");
        let matrix: Matrix = serde_json::from_slice(&body).unwrap();
        assert_eq!(matrix.nodes, ["n1"]);

        // Encoding ahead is not a request: it does not keep itself going.
        let q = published();
        q.encoded(Form::Compact).unwrap();
        assert!(!q.was_requested(Form::Compact));
    }
}
