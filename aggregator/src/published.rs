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

use netmatrix_api::{Matrix, MatrixRow};

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

/// An encoded matrix: pieces sent one after the other. A matrix encoded in
/// parallel is sent as the pieces the threads wrote: joining them would copy
/// a hundred megabytes at a million cells.
#[derive(Debug, Clone)]
pub struct Encoded(Arc<[Bytes]>);

impl Encoded {
    fn new(pieces: Vec<Vec<u8>>) -> Self {
        Encoded(pieces.into_iter().map(Bytes::from).collect())
    }

    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces as an HTTP body.
    pub fn body(&self) -> axum::body::Body {
        match &*self.0 {
            [one] => axum::body::Body::from(one.clone()),
            pieces => {
                let pieces: Vec<Result<Bytes, std::convert::Infallible>> =
                    pieces.iter().cloned().map(Ok).collect();
                axum::body::Body::from_stream(futures::stream::iter(pieces))
            }
        }
    }

    /// The pieces joined (tests, small forms).
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.concat()
    }

    /// Where the first piece starts (tests: encoded once, not twice).
    pub fn as_ptr(&self) -> *const u8 {
        self.0.first().map_or(std::ptr::null(), |b| b.as_ptr())
    }
}

#[derive(Default)]
struct Encoding {
    bytes: OnceLock<Result<Encoded, EncodeError>>,
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
    pub fn request(&self, form: Form) -> Option<Result<Encoded, EncodeError>> {
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
    pub fn encoded(&self, form: Form) -> Result<Encoded, EncodeError> {
        self.slot(form)
            .bytes
            .get_or_init(|| self.encode(form).map(Encoded::new).map_err(Arc::new))
            .clone()
    }

    fn encode(&self, form: Form) -> Result<Vec<Vec<u8>>, serde_json::Error> {
        match form {
            Form::Full => encode_full(&self.matrix, parallelism()),
            Form::Compact => Ok(vec![serde_json::to_vec(&crate::serve::compact(
                &self.matrix,
            ))?]),
        }
    }
}

/// Threads for encoding a large matrix: the cores there are, up to four.
fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Below this many cells a matrix is encoded on the calling thread.
const PARALLEL_MIN_CELLS: usize = 50_000;

/// The matrix as `serde_json` writes it, in pieces, with the rows encoded
/// in `threads` chunks at once: at a million cells encoding is a few hundred
/// milliseconds of one core. Joined, the pieces are byte for byte
/// `serde_json::to_vec(matrix)` (tested).
fn encode_full(matrix: &Matrix, threads: usize) -> Result<Vec<Vec<u8>>, serde_json::Error> {
    let cells: usize = matrix.rows.iter().map(|r| r.cells.len()).sum();
    if threads < 2 || cells < PARALLEL_MIN_CELLS {
        // Sized up front: growing a 100 MB buffer by doubling copies it
        // several times over (a tenth of the encoding time at 1M cells).
        let mut out = Vec::with_capacity(cells.saturating_mul(BYTES_PER_CELL) + 4096);
        serde_json::to_writer(&mut out, matrix)?;
        return Ok(vec![out]);
    }
    let mut head = b"{\"generated_unix_ms\":".to_vec();
    serde_json::to_writer(&mut head, &matrix.generated_unix_ms)?;
    head.extend_from_slice(b",\"nodes\":");
    serde_json::to_writer(&mut head, &matrix.nodes)?;
    head.extend_from_slice(b",\"rows\":[");
    let mut pieces = vec![head];
    pieces.extend(encode_rows(&matrix.rows, threads)?);
    let mut tail = b"]".to_vec();
    if !matrix.host_rows.is_empty() {
        tail.extend_from_slice(b",\"host_rows\":[");
        pieces.push(tail);
        pieces.extend(encode_rows(&matrix.host_rows, threads)?);
        tail = b"]".to_vec();
    }
    tail.push(b'}');
    pieces.push(tail);
    Ok(pieces)
}

/// `rows` encoded in up to `threads` chunks, comma-separated within and
/// between them (each chunk but the last ends with a comma).
fn encode_rows(rows: &[MatrixRow], threads: usize) -> Result<Vec<Vec<u8>>, serde_json::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let chunk = rows.len().div_ceil(threads);
    let last = rows.len().div_ceil(chunk) - 1;
    std::thread::scope(|scope| {
        let workers: Vec<_> = rows
            .chunks(chunk)
            .enumerate()
            .map(|(k, rows)| {
                scope.spawn(move || {
                    let cells: usize = rows.iter().map(|r| r.cells.len()).sum();
                    let mut out = Vec::with_capacity(cells.saturating_mul(BYTES_PER_CELL) + 1024);
                    for (i, row) in rows.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        serde_json::to_writer(&mut out, row)?;
                    }
                    if k < last {
                        out.push(b',');
                    }
                    Ok(out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::fixtures::{self, cell};
    use netmatrix_api::{Cell, Status};

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
        let matrix: Matrix = serde_json::from_slice(&body.to_vec()).unwrap();
        assert_eq!(matrix.nodes, ["n1"]);

        // Encoding ahead is not a request: it does not keep itself going.
        let q = published();
        q.encoded(Form::Compact).unwrap();
        assert!(!q.was_requested(Form::Compact));
    }

    #[test]
    fn the_parallel_encoding_is_serde_json_s_byte_for_byte() {
        let cell = Cell {
            loss: Some(0.0),
            rtt_avg_ms: Some(0.25),
            pods: 1,
            ..cell("n\"0", Status::Ok)
        };
        // Seven rows sharing enough cells to be encoded in parallel.
        let nodes: Vec<String> = (0..7).map(|i| format!("n\"{i}")).collect();
        let per_row = PARALLEL_MIN_CELLS.div_ceil(nodes.len());
        let row = |node: &String| MatrixRow {
            report_age_ms: Some(1.5),
            ..fixtures::row(node, vec![cell.clone(); per_row])
        };
        let mut matrix = Matrix {
            generated_unix_ms: 42,
            ..fixtures::matrix(nodes.iter().map(row).collect())
        };
        for host_rows in [0, 3] {
            matrix.host_rows = matrix.rows[..host_rows].to_vec();
            let serial = serde_json::to_vec(&matrix).unwrap();
            for threads in [1, 2, 3, 4, 8] {
                let encoded = encode_full(&matrix, threads).unwrap().concat();
                assert!(
                    encoded == serial,
                    "{threads} threads, {host_rows} host rows"
                );
            }
        }
    }

    #[tokio::test]
    async fn pieces_are_sent_in_order_with_their_length() {
        use http_body_util::BodyExt;
        let encoded = Encoded::new(vec![b"{\"a\":[".to_vec(), b"1,".to_vec(), b"2]}".to_vec()]);
        assert_eq!(encoded.len(), 11);
        let body = encoded.body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"a\":[1,2]}");
    }
}
