//! The event store contract. Backends live in `herald-store`; every one of them
//! passes the same conformance suite (crate `herald-conformance`).
//!
//! Invariants every backend keeps:
//! - positions start at 1 and are assigned, with the hash chain, inside one
//!   serialized write: a reader never sees position N+1 before N;
//! - `(stream, version)` is unique and versions have no gaps;
//! - an append is all or nothing, and is durable before `append` returns;
//! - every committed batch is published on [`EventStore::live`] exactly once,
//!   in position order, after it is durable (events written by another process
//!   on the same store are published too).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::envelope::{Actor, Envelope, PendingEvent, RecordedEvent};
use crate::framing::Framing;

/// Optimistic concurrency, as in EventStoreDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's current version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's current version must be exactly this (0 = no stream).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` version (0 = no stream) satisfies this expectation.
    pub fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

/// An event to append; the store fills in the rest of the envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub schema: u32,
    pub data: Value,
}

/// One atomic append to one stream.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub actor: Actor,
    /// Written into every envelope of this append.
    pub command_id: String,
    pub correlation_id: String,
    /// When set, `command_id` is an idempotency key: the store remembers the result
    /// with this fingerprint of the command. A later append with the same
    /// `command_id` and fingerprint returns [`AppendOutcome::Duplicate`]; with a
    /// different fingerprint it fails with [`StoreError::CommandIdReused`].
    pub idempotency_fingerprint: Option<String>,
}

/// What an append wrote (or, for a duplicate, had written the first time).
#[derive(Debug, Clone)]
pub struct Committed {
    pub stream: String,
    /// The stream's version after the append.
    pub version: u64,
    pub events: Vec<Arc<RecordedEvent>>,
}

impl Committed {
    pub fn first_position(&self) -> u64 {
        self.events.first().map_or(0, |e| e.position())
    }
    pub fn last_position(&self) -> u64 {
        self.events.last().map_or(0, |e| e.position())
    }
}

#[derive(Debug, Clone)]
pub enum AppendOutcome {
    Appended(Committed),
    /// The `command_id` was seen before with the same fingerprint: nothing was appended.
    Duplicate(Committed),
}

impl AppendOutcome {
    pub fn committed(&self) -> &Committed {
        match self {
            AppendOutcome::Appended(c) | AppendOutcome::Duplicate(c) => c,
        }
    }
    pub fn into_committed(self) -> Committed {
        match self {
            AppendOutcome::Appended(c) | AppendOutcome::Duplicate(c) => c,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream} is at version {actual}, expected {expected:?}")]
    Conflict {
        stream: String,
        expected: ExpectedVersion,
        /// 0 when the stream does not exist.
        actual: u64,
    },
    #[error("command_id {command_id} was already used for a different command")]
    CommandIdReused { command_id: String },
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    #[error("the store is shutting down")]
    ShuttingDown,
    /// The write path failed for reasons not of the caller's making (the
    /// writer panicked or stopped); the message says whether the append may
    /// have been committed (then a retry with the same `command_id` tells).
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("store backend error: {0}")]
    Backend(String),
}

/// Which events a reader wants. OR within one field, AND across fields; an
/// empty field matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub streams: Vec<String>,
    pub categories: Vec<String>,
    pub types: Vec<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.categories.is_empty() && self.types.is_empty()
    }

    pub fn matches(&self, e: &RecordedEvent) -> bool {
        (self.streams.is_empty() || self.streams.iter().any(|s| s == e.stream()))
            && (self.categories.is_empty() || self.categories.iter().any(|c| c == e.category()))
            && (self.types.is_empty() || self.types.iter().any(|t| t == e.event_type()))
    }
}

/// A page of the global log.
#[derive(Debug, Clone)]
pub struct Page {
    pub events: Vec<Arc<RecordedEvent>>,
    /// The last position examined: pass it back as `after` to read on. With a
    /// filter this may be past the last returned event.
    pub next_after: u64,
    /// The head of the log when the page was read.
    pub head: u64,
}

/// The last event of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub position: u64,
    /// `GENESIS_HASH` for an empty log.
    pub hash: String,
}

/// A stream's events from some version on.
#[derive(Debug, Clone)]
pub struct StreamSlice {
    /// The stream's current version (0 = no such stream).
    pub version: u64,
    pub events: Vec<Arc<RecordedEvent>>,
}

/// Events committed together, published once to every live reader.
///
/// `frames` is every event's frame (in the store's
/// [`Framing`](crate::framing::Framing)) back to back, in one allocation; each
/// event's own frame is a slice of it. A reader that wants the whole batch sends
/// `frames` as is.
#[derive(Debug, Clone)]
pub struct CommittedBatch {
    pub events: Vec<Arc<RecordedEvent>>,
    pub frames: Bytes,
}

impl CommittedBatch {
    pub fn first_position(&self) -> u64 {
        self.events.first().map_or(0, |e| e.position())
    }
    pub fn last_position(&self) -> u64 {
        self.events.last().map_or(0, |e| e.position())
    }
}

pub type LiveReceiver = broadcast::Receiver<Arc<CommittedBatch>>;

/// Whether appends can be written now (`/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteHealth {
    Ok,
    /// The writer runs, but its last batch did not commit (the cause); it is
    /// `Ok` again after the next commit.
    Failing(String),
    /// Nothing can be written: the writer has stopped (the cause).
    Down(String),
}

/// A store writer's health as the store's handles see it: what
/// [`EventStore::write_health`] reports, and whether appends are refused (the
/// writer is down). Every backend's writer keeps one.
#[derive(Debug, Default)]
pub struct WriterHealth {
    /// The writer has stopped.
    down: AtomicBool,
    /// The last batch did not commit (cleared by the next commit).
    failing: AtomicBool,
    /// Why (`down` or `failing`); written only on a failure.
    cause: Mutex<String>,
}

impl WriterHealth {
    pub fn set_failing(&self, cause: &str) {
        *self.cause.lock().unwrap_or_else(|p| p.into_inner()) = cause.to_owned();
        self.failing.store(true, Ordering::Release);
    }

    /// After a commit: one atomic load unless the batch before had failed.
    pub fn set_ok(&self) {
        if self.failing.load(Ordering::Relaxed) {
            self.failing.store(false, Ordering::Release);
        }
    }

    pub fn set_down(&self, cause: &str) {
        *self.cause.lock().unwrap_or_else(|p| p.into_inner()) = cause.to_owned();
        self.down.store(true, Ordering::Release);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Why the writer is down or failing (empty when it never was).
    pub fn cause(&self) -> String {
        self.cause.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn health(&self) -> WriteHealth {
        if self.is_down() {
            WriteHealth::Down(self.cause())
        } else if self.failing.load(Ordering::Acquire) {
            WriteHealth::Failing(self.cause())
        } else {
            WriteHealth::Ok
        }
    }
}

/// Held by a writer's thread or task: marks the writer down when dropped,
/// however it ends, unless something marked it down already (with its cause).
pub struct DownOnDrop(pub Arc<WriterHealth>);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if !self.0.is_down() {
            self.0.set_down("the event store writer has stopped");
        }
    }
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends atomically and durably, checking `expected` and idempotency.
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError>;

    /// The result of an earlier append with this idempotency key, with its fingerprint.
    async fn find_command(&self, command_id: &str) -> Result<Option<(String, Committed)>, StoreError>;

    /// Events of `stream` with version ≥ `from_version`, at most `limit`.
    async fn read_stream(&self, stream: &str, from_version: u64, limit: usize) -> Result<StreamSlice, StoreError>;

    /// Events with position > `after` matching `filter`, at most `limit`, in order.
    async fn read_all(&self, after: u64, filter: &Filter, limit: usize) -> Result<Page, StoreError>;

    async fn head(&self) -> Result<Head, StoreError>;

    /// Batches committed from now on. A receiver that falls more than the
    /// channel's capacity behind gets `Lagged`: it must read the store, never skip.
    fn live(&self) -> LiveReceiver;

    /// Verifies the whole log (see [`crate::audit`]), and `expect` if given.
    /// The default checks what the trait can read; a backend overrides it to
    /// check every column it stores too.
    async fn verify(&self, expect: Option<crate::audit::Expect>) -> Result<crate::audit::VerifyReport, StoreError> {
        crate::audit::verify(self, expect, |_, _| {}).await
    }

    /// The write path's health; cheap (polled by `/readyz`).
    fn write_health(&self) -> WriteHealth {
        WriteHealth::Ok
    }
}

impl AppendRequest {
    /// The checks every backend makes before an append is queued: at least one
    /// event, and a valid `<category>-<id>` stream name (API.md §3).
    pub fn check(&self) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Err(StoreError::InvalidAppend("an append needs at least one event".into()));
        }
        crate::names::StreamName::parse(&self.stream)
            .map_err(|e| StoreError::InvalidAppend(format!("stream {:?}: {e}", self.stream)))?;
        Ok(())
    }

    /// Every event type is non-empty and has no line break (frames rely on
    /// it). Backends check it inside the write, after idempotency and the
    /// expected version, as the SQLite store always has.
    pub fn check_event_types(&self) -> Result<(), StoreError> {
        match self
            .events
            .iter()
            .find(|e| e.event_type.is_empty() || e.event_type.contains(['\n', '\r']))
        {
            Some(event) => Err(StoreError::InvalidAppend(format!(
                "event type {:?} is empty or has a line break",
                event.event_type
            ))),
            None => Ok(()),
        }
    }

    /// Builds and seals this append's envelopes on top of `head` (which moves
    /// to the last one), the stream being at `version` before it; pushes one
    /// row per event onto `out`. Every backend writes exactly these rows.
    pub fn seal(&self, version: u64, head: &mut Head, recorded_at: &str, out: &mut Vec<SealedEvent>) {
        for (version, event) in (version + 1..).zip(&self.events) {
            let mut envelope = Envelope {
                position: head.position + 1,
                id: uuid::Uuid::now_v7(),
                stream: self.stream.clone(),
                version,
                event_type: event.event_type.clone(),
                schema: event.schema,
                data: event.data.clone(),
                actor: self.actor.clone(),
                command_id: self.command_id.clone(),
                correlation_id: self.correlation_id.clone(),
                recorded_at: recorded_at.to_owned(),
                hash: String::new(),
            };
            let json = envelope.seal(&head.hash);
            head.position = envelope.position;
            head.hash.clone_from(&envelope.hash);
            out.push(SealedEvent {
                position: envelope.position,
                stream: envelope.stream,
                version,
                event_type: envelope.event_type,
                json,
                hash: envelope.hash,
            });
        }
    }
}

/// Whether a retry whose fingerprint is `given` is the command an
/// idempotency record with fingerprint `stored` remembers: the same
/// fingerprint, or a record an import derived from the log, whose
/// fingerprint is unknown ([`crate::import::IMPORTED_FINGERPRINT`]: any retry
/// with its `command_id` is taken as the same command).
pub fn fingerprints_match(stored: &str, given: &str) -> bool {
    stored == given || stored == crate::import::IMPORTED_FINGERPRINT
}

/// The `recorded_at` of a new batch: now (UTC, milliseconds, RFC 3339), or
/// `last` if the clock went back — `recorded_at` never decreases along the log.
pub fn next_recorded_at(last: &str) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if now.as_str() > last { now } else { last.to_owned() }
}

/// One stored event as a backend writes and reads its row: the columns it
/// keeps next to the envelope's canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEvent {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub event_type: String,
    /// The envelope's canonical JSON, hash included: what is stored and served.
    pub json: String,
    pub hash: String,
}

impl CommittedBatch {
    /// Frames `rows` (in position order) once each, back to back in one
    /// buffer, in `framing`.
    pub fn encode(framing: &dyn Framing, rows: &[SealedEvent]) -> CommittedBatch {
        let size = rows.iter().map(|r| framing.max_len(&r.event_type, &r.json)).sum();
        let mut buf = BytesMut::with_capacity(size);
        let pending: Vec<PendingEvent> = rows
            .iter()
            .map(|r| {
                RecordedEvent::encode_into(
                    framing,
                    &mut buf,
                    r.position,
                    &r.stream,
                    r.version,
                    &r.event_type,
                    &r.json,
                )
            })
            .collect();
        let frames = buf.freeze();
        let events = pending
            .into_iter()
            .map(|p| Arc::new(p.finish(frames.clone())))
            .collect();
        CommittedBatch { events, frames }
    }
}
