//! Reading an export back (`herald import`): NDJSON, one stored envelope per
//! line, exactly as `herald export` writes it. Every line is checked as
//! `herald verify` checks a stored row ([`ChainVerifier`]: the next position,
//! the exact canonical text, the envelope's fields, the hash chain), so a
//! backend writes only rows that verify, byte for byte as they were stored.
//!
//! The reader is generic over [`BufRead`] and holds one line and one batch at
//! a time: a file of millions of events is read in bounded memory. Backends
//! (`herald-store`, `herald-postgres`) write the batches; the rules they share
//! — which target counts as empty, how idempotency records are derived — are
//! here too.

use std::io::BufRead;

use crate::audit::ChainVerifier;
use crate::envelope::GENESIS_HASH;
use crate::store::{Head, SealedEvent, StoreError};

/// The longest line read (an envelope is far smaller: command bodies are at
/// most 64 KiB); a longer one is refused rather than buffered.
pub const MAX_LINE: usize = 32 << 20;

/// Rows per batch a backend writes in one statement.
pub const BATCH_ROWS: usize = 5_000;

/// Bytes of envelopes per batch at most (a batch ends early past this).
pub const BATCH_BYTES: usize = 16 << 20;

/// The fingerprint of an idempotency record derived from the log by an
/// import: the export does not carry the command's fingerprint (a digest of
/// the request, which the events do not hold), so any retry with the
/// record's `command_id` counts as the same command (see
/// [`crate::store::fingerprints_match`]). No real fingerprint (64 hex digits)
/// equals it.
pub const IMPORTED_FINGERPRINT: &str = "imported";

/// Why an import stopped. Nothing was written (backends import in one
/// transaction), except perhaps for [`ImportError::Unknown`].
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A line of the input is not the next event of a valid log.
    #[error("line {line} (position {position}): {problem}; nothing was imported")]
    Refused { line: u64, position: u64, problem: String },
    /// The input could not be read.
    #[error("cannot read the input at line {line}: {error}; nothing was imported")]
    Read { line: u64, error: std::io::Error },
    /// The target already holds events (the description says which and how many).
    #[error("{0}: import only into an empty store; nothing was imported")]
    NotEmpty(String),
    #[error("{0}; nothing was imported")]
    Store(#[from] StoreError),
    /// The commit's answer was lost: the import may have been committed.
    #[error("{0}")]
    Unknown(String),
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// Events imported.
    pub events: u64,
    /// The last event (position 0 and the genesis hash for an empty input).
    pub head: Head,
    /// Idempotency records derived from the log.
    pub commands: u64,
}

/// Checked events, in position order, and each one's `command_id` (for the
/// idempotency records a backend derives).
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<SealedEvent>,
    pub command_ids: Vec<String>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// What [`read_in_background`] sends: batches of checked events, then the
/// end of the input with the last event read.
#[derive(Debug)]
pub enum ImportItem {
    Rows(Batch),
    End {
        head: Head,
        /// See [`ImportReader::latest_recorded_at`].
        latest_recorded_at: String,
    },
}

/// Batches in flight between the reading thread and the writer.
const IN_FLIGHT: usize = 2;

/// Reads and checks `input` on a thread of its own (so that checking the
/// next batch overlaps writing this one), sending each batch, then
/// [`ImportItem::End`], or the first error and nothing after it. The channel
/// closing before `End` means the reader stopped (it failed to start, or
/// panicked): an incomplete input, to refuse.
pub fn read_in_background<R: BufRead + Send + 'static>(
    input: R,
) -> Result<tokio::sync::mpsc::Receiver<Result<ImportItem, ImportError>>, ImportError> {
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
    std::thread::Builder::new()
        .name("herald-import-reader".into())
        .spawn(move || {
            let mut reader = ImportReader::new(input);
            loop {
                let item = match reader.next_batch() {
                    Ok(rows) if rows.is_empty() => Ok(ImportItem::End {
                        head: reader.head(),
                        latest_recorded_at: reader.latest_recorded_at().to_owned(),
                    }),
                    Ok(rows) => Ok(ImportItem::Rows(rows)),
                    Err(e) => Err(e),
                };
                let last = !matches!(item, Ok(ImportItem::Rows(_)));
                if tx.blocking_send(item).is_err() || last {
                    return;
                }
            }
        })
        .map_err(|e| StoreError::Backend(format!("cannot start the thread that reads the input: {e}")))?;
    Ok(rx)
}

/// The error for a reader that stopped without saying how it ended.
pub fn reader_stopped() -> ImportError {
    ImportError::Store(StoreError::Backend(
        "the thread reading the input stopped before its end".into(),
    ))
}

/// Reads an export line by line, checking each, in batches.
pub struct ImportReader<R> {
    input: R,
    verifier: ChainVerifier,
    line: u64,
    buf: Vec<u8>,
    latest_recorded_at: String,
    done: bool,
}

impl<R: BufRead> ImportReader<R> {
    pub fn new(input: R) -> Self {
        ImportReader {
            input,
            // The head is only used by `finish`, which an import never calls.
            verifier: ChainVerifier::new(
                Head {
                    position: 0,
                    hash: GENESIS_HASH.to_owned(),
                },
                None,
            ),
            line: 0,
            buf: Vec::new(),
            latest_recorded_at: String::new(),
            done: false,
        }
    }

    /// The last event read (position 0 and the genesis hash before the first).
    pub fn head(&self) -> Head {
        self.verifier.last()
    }

    /// The latest `recorded_at` read (empty before the first): a backend
    /// that keeps it for its next append (so that `recorded_at` does not go
    /// back) starts from this.
    pub fn latest_recorded_at(&self) -> &str {
        &self.latest_recorded_at
    }

    /// The next checked event and its `command_id`, or `None` at the end of
    /// the input.
    pub fn next_row(&mut self) -> Result<Option<(SealedEvent, String)>, ImportError> {
        if self.done {
            return Ok(None);
        }
        self.buf.clear();
        let line = self.line + 1;
        let position = self.verifier.checked() + 1;
        let refused = |problem: String| ImportError::Refused {
            line,
            position,
            problem,
        };
        let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX).saturating_add(1);
        let read = std::io::Read::take(&mut self.input, limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|error| ImportError::Read { line, error })?;
        if read == 0 {
            self.done = true;
            return Ok(None);
        }
        self.line = line;
        if self.buf.last() != Some(&b'\n') {
            self.done = true;
            return Err(refused(if self.buf.len() > MAX_LINE {
                format!("the line is longer than {} MiB", MAX_LINE >> 20)
            } else {
                "the last line does not end with a line break: the file is truncated".to_owned()
            }));
        }
        self.buf.pop();
        let text = std::str::from_utf8(&self.buf).map_err(|e| refused(format!("the line is not UTF-8: {e}")))?;
        let checked = self
            .verifier
            .check_envelope(text)
            .map_err(|(_, problem)| refused(problem))?;
        if let Err(e) = crate::names::StreamName::parse(&checked.stream) {
            return Err(refused(format!(
                "stream {:?} is not a stream name: {e}",
                checked.stream
            )));
        }
        if checked.event_type.is_empty() || checked.event_type.contains(['\n', '\r']) {
            return Err(refused(format!(
                "event type {:?} is empty or has a line break",
                checked.event_type
            )));
        }
        // Not checked for order: an embedded store restarted after its clock
        // went back wrote an earlier `recorded_at` after a later one.
        if checked.recorded_at > self.latest_recorded_at {
            self.latest_recorded_at = checked.recorded_at;
        }
        Ok(Some((
            SealedEvent {
                position: checked.position,
                stream: checked.stream,
                version: checked.version,
                event_type: checked.event_type,
                json: text.to_owned(),
                hash: checked.hash,
            },
            checked.command_id,
        )))
    }

    /// The next batch: up to [`BATCH_ROWS`] events or about [`BATCH_BYTES`]
    /// of envelopes; empty at the end of the input.
    pub fn next_batch(&mut self) -> Result<Batch, ImportError> {
        let mut batch = Batch::default();
        let mut bytes = 0;
        while batch.len() < BATCH_ROWS && bytes < BATCH_BYTES {
            match self.next_row()? {
                Some((event, command_id)) => {
                    bytes += event.json.len();
                    batch.events.push(event);
                    batch.command_ids.push(command_id);
                }
                None => break,
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Actor;
    use crate::store::{AppendRequest, ExpectedVersion, NewEvent};

    /// An export of `n` events on two streams, as the store writes it.
    fn export(n: u64) -> (String, Head) {
        let mut head = Head {
            position: 0,
            hash: GENESIS_HASH.to_owned(),
        };
        let mut rows = Vec::new();
        for i in 0..n {
            let request = AppendRequest {
                stream: format!("post-{}", i % 2),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent {
                    event_type: "Noted".into(),
                    schema: 1,
                    data: serde_json::json!({ "text": format!("note {i}") }),
                }],
                actor: Actor::system("test"),
                command_id: format!("c{i}"),
                correlation_id: "r".into(),
                idempotency_fingerprint: None,
            };
            request.seal(i / 2, &mut head, "2026-01-01T00:00:00.000Z", &mut rows);
        }
        (rows.iter().map(|r| format!("{}\n", r.json)).collect(), head)
    }

    fn read_all(text: &str) -> Result<(Vec<SealedEvent>, Head), ImportError> {
        let mut reader = ImportReader::new(text.as_bytes());
        let mut rows = Vec::new();
        loop {
            let batch = reader.next_batch()?;
            if batch.is_empty() {
                return Ok((rows, reader.head()));
            }
            assert_eq!(batch.command_ids.len(), batch.events.len());
            rows.extend(batch.events);
        }
    }

    fn refused(text: &str) -> (u64, u64, String) {
        match read_all(text) {
            Err(ImportError::Refused {
                line,
                position,
                problem,
            }) => (line, position, problem),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_export_reads_back_as_the_rows_it_was_written_from() {
        let (text, head) = export(7);
        let (rows, read_head) = read_all(&text).expect("an intact export");
        assert_eq!(read_head, head);
        assert_eq!(rows.len(), 7);
        let back: String = rows.iter().map(|r| format!("{}\n", r.json)).collect();
        assert_eq!(back, text);
        assert_eq!(
            (rows[3].position, rows[3].stream.as_str(), rows[3].version),
            (4, "post-1", 2)
        );
        assert_eq!(read_all("").expect("an empty export").1.position, 0);
    }

    #[test]
    fn a_tampered_line_is_refused_naming_it() {
        let (text, _) = export(5);
        let (line, position, problem) = refused(&text.replace("note 2", "note 9"));
        assert_eq!((line, position), (3, 3));
        assert!(problem.contains("the chain gives"), "{problem}");
        // Whitespace: not the stored text.
        let mut lines: Vec<&str> = text.lines().collect();
        let spaced = lines[1].replacen(':', ": ", 1);
        lines[1] = &spaced;
        let (line, _, problem) = refused(&(lines.join("\n") + "\n"));
        assert_eq!(line, 2);
        assert!(problem.contains("not canonical"), "{problem}");
    }

    #[test]
    fn missing_or_reordered_lines_are_refused() {
        let (text, _) = export(4);
        let lines: Vec<&str> = text.lines().collect();
        let swapped = format!("{}\n{}\n{}\n{}\n", lines[0], lines[2], lines[1], lines[3]);
        let (line, position, problem) = refused(&swapped);
        assert_eq!((line, position), (2, 2));
        assert!(problem.contains("is position 3 but position 2 comes next"), "{problem}");
        let skipped = format!("{}\n{}\n", lines[0], lines[2]);
        assert_eq!(refused(&skipped).0, 2);
        // A line for a store that does not start at 1.
        assert_eq!(refused(&format!("{}\n", lines[1])).1, 1);
    }

    #[test]
    fn a_truncated_or_odd_line_is_refused() {
        let (text, _) = export(3);
        // Cut inside the last line, or just before its line break.
        let (line, position, problem) = refused(&text[..text.len() - 10]);
        assert_eq!((line, position), (3, 3));
        assert!(problem.contains("truncated"), "{problem}");
        assert!(refused(&text[..text.len() - 1]).2.contains("truncated"));
        // A blank line, CRLF, bytes that are not UTF-8.
        assert_eq!(refused(&format!("{text}\n")).0, 4);
        assert_eq!(refused(&text.replacen('\n', "\r\n", 1)).0, 1);
        let mut bytes = text.clone().into_bytes();
        bytes.insert(10, 0xff);
        let mut reader = ImportReader::new(&bytes[..]);
        match reader.next_row() {
            Err(ImportError::Refused { line: 1, problem, .. }) => assert!(problem.contains("UTF-8"), "{problem}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_without_buffering_it() {
        let long = vec![b'x'; MAX_LINE + 10];
        let mut reader = ImportReader::new(&long[..]);
        match reader.next_row() {
            Err(ImportError::Refused { line: 1, problem, .. }) => assert!(problem.contains("longer"), "{problem}"),
            other => panic!("{other:?}"),
        }
        assert!(reader.buf.len() <= MAX_LINE + 1);
    }

    #[test]
    fn the_background_reader_sends_batches_then_the_end() {
        let (text, head) = export(BATCH_ROWS as u64 + 3);
        let mut rx = read_in_background(std::io::Cursor::new(text.into_bytes())).expect("start");
        let mut sizes = Vec::new();
        loop {
            match rx.blocking_recv() {
                Some(Ok(ImportItem::Rows(rows))) => sizes.push(rows.len()),
                Some(Ok(ImportItem::End {
                    head: end,
                    latest_recorded_at,
                })) => {
                    assert_eq!(end, head);
                    assert_eq!(latest_recorded_at, "2026-01-01T00:00:00.000Z");
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(sizes, vec![BATCH_ROWS, 3]);
        assert!(rx.blocking_recv().is_none());
    }
}
