//! The embedded event store: one SQLite file in WAL mode.
//!
//! - **One writer thread** owns the only writing connection. Appends queue on a
//!   bounded channel; the writer takes everything queued (up to `max_batch`),
//!   runs it in one `BEGIN IMMEDIATE` transaction — reading the head, checking
//!   versions and idempotency, assigning positions and the hash chain — and
//!   commits once (`synchronous=FULL`: durable before anyone is answered). That
//!   is group commit: one fsync for many commands.
//! - **Readers** use a small pool of read-only connections on blocking threads.
//!   A read bounds itself by the head it saw first, so it never sees a position
//!   without every one below it.
//! - **Live**: after each commit the writer encodes the batch's frames (in the
//!   [`Framing`] the store was opened with: the server's are SSE messages)
//!   into one buffer and publishes it; reads frame their events the same way.
//!   Other processes (`herald token create` while `herald serve` runs) may
//!   append to the same file: the writer notices their commits (the head it
//!   reads in every transaction, and when idle a poll of the head against the
//!   last position it published) and publishes those events first, so the live
//!   channel carries every position exactly once, in order.
//! - **Supervised**: each batch runs under `catch_unwind`. A panic fails only
//!   the callers of the batch in flight (their transaction was rolled back:
//!   503, nothing acknowledged is lost) and the loop goes on with the queue
//!   intact; [`EventStore::write_health`] reports the failure until a commit
//!   succeeds. A writer that keeps panicking calls [`WriterFatal`] (by default:
//!   exit the process, for a supervisor to restart it). See
//!   docs/adr/0006-writer-supervision.md.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_core::audit::{Expect, VerifyReport};
use herald_core::envelope::{GENESIS_HASH, RecordedEvent};
use herald_core::framing::Framing;
use herald_core::store::{
    AppendOutcome, AppendRequest, Committed, CommittedBatch, DownOnDrop, EventStore, Filter, Head, LiveReceiver, Page,
    SealedEvent, StoreError, StreamSlice, WriteHealth, WriterHealth, fingerprints_match, next_recorded_at,
};
use herald_core::supervise::{PanicLimit, give_up, panic_message, panicked_batch_error};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params, params_from_iter};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};

/// The database file inside the data directory.
pub const EVENTS_FILE: &str = "herald.db";

#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// Most appends committed in one transaction.
    pub max_batch: usize,
    /// Appends waiting for the writer before callers wait to enqueue.
    pub queue: usize,
    /// Committed batches kept for live readers; one further behind is told it lagged.
    pub live_capacity: usize,
    /// Concurrent read connections.
    pub readers: usize,
    /// How often an idle writer looks for commits made by other processes.
    pub external_poll: Duration,
    /// The writer gives up (calls `on_writer_fatal`) after this many panics
    /// with no commit in between, or this many within a minute.
    pub writer_panic_limit: u32,
    /// What happens when the writer gives up. Default: exit the process (70).
    pub on_writer_fatal: WriterFatal,
}

/// Called once, on the writer thread, when the writer keeps panicking and
/// stops (shared with the PostgreSQL store's writer).
pub use herald_core::supervise::WriterFatal;

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            max_batch: 512,
            queue: 4096,
            live_capacity: 1024,
            readers: 8,
            external_poll: Duration::from_millis(100),
            writer_panic_limit: 3,
            on_writer_fatal: WriterFatal::default(),
        }
    }
}

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

struct Job {
    request: AppendRequest,
    reply: Reply,
}

pub struct SqliteStore {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    live: broadcast::Sender<Arc<CommittedBatch>>,
    readers: ReaderPool,
    shared: Arc<Shared>,
    /// How every event read or committed is framed.
    framing: Arc<dyn Framing>,
}

/// What the writer thread and the store's handles share.
#[derive(Default)]
struct Shared {
    health: Arc<WriterHealth>,
    /// Test hook: the next this-many batches panic before they commit.
    inject_panics: AtomicU32,
    /// Test hook: the next this-many batches panic after they commit, before
    /// they are published and answered.
    inject_panics_after_commit: AtomicU32,
}

/// Takes one from a test hook's count: one relaxed load when it is 0.
fn take_one(counter: &AtomicU32) -> bool {
    counter.load(Ordering::Relaxed) > 0
        && counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The triggers that make `events` append-only: name, then what follows
/// `CREATE TRIGGER <name>`. Created at open, and checked by `herald verify`
/// (`scan.rs`) against exactly this text.
pub(crate) const APPEND_ONLY_TRIGGERS: [(&str, &str); 2] = [
    (
        "events_append_only_update",
        "BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
    ),
    (
        "events_append_only_delete",
        "BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
    ),
];

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream   TEXT NOT NULL,
    version  INTEGER NOT NULL,
    category TEXT NOT NULL,
    type     TEXT NOT NULL,
    envelope TEXT NOT NULL,
    hash     TEXT NOT NULL
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS events_stream_version ON events (stream, version);
CREATE INDEX IF NOT EXISTS events_category ON events (category, position);
CREATE INDEX IF NOT EXISTS events_type ON events (type, position);
CREATE TABLE IF NOT EXISTS commands (
    command_id     TEXT PRIMARY KEY,
    fingerprint    TEXT NOT NULL,
    stream         TEXT NOT NULL,
    version        INTEGER NOT NULL,
    first_position INTEGER NOT NULL,
    last_position  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
"#;

/// Opens a connection with the pragmas every herald connection uses.
pub fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(backend)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
    }
    // Without the query-planner stability guarantee, this SQLite build (STAT4)
    // re-prepares a cached statement every time a new value is bound to a
    // column it filters on — most of a command's CPU went there. Our queries
    // have one good plan whatever the values.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` with default settings.
    /// Every event it reads or commits is framed once with `framing` (the
    /// server passes its SSE framing; tools that deliver nothing,
    /// [`JsonLines`](herald_core::framing::JsonLines)).
    pub fn open(dir: &Path, framing: Arc<dyn Framing>) -> Result<Arc<SqliteStore>, StoreError> {
        Self::open_with(dir, framing, SqliteConfig::default())
    }

    pub fn open_with(
        dir: &Path,
        framing: Arc<dyn Framing>,
        config: SqliteConfig,
    ) -> Result<Arc<SqliteStore>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create data directory {}: {e}", dir.display())))?;
        let path = dir.join(EVENTS_FILE);
        let conn = open_connection(&path, false)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        for (name, body) in APPEND_ONLY_TRIGGERS {
            conn.execute_batch(&format!("CREATE TRIGGER IF NOT EXISTS {name} {body};"))
                .map_err(backend)?;
        }
        // The writer's own connection: a 64 MiB page cache (the indexes take
        // random inserts), and checkpoints every 10,000 WAL pages rather than
        // SQLite's 1,000, so a page many commits touch is copied back once.
        conn.pragma_update(None, "cache_size", -65_536).map_err(backend)?;
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)
            .map_err(backend)?;
        let published = read_head(&conn)?.position;
        let (jobs, rx) = mpsc::channel(config.queue);
        let (live, _) = broadcast::channel(config.live_capacity);
        let shared = Arc::new(Shared::default());
        let writer = Writer {
            conn,
            framing: framing.clone(),
            jobs: rx,
            live: live.clone(),
            published,
            last_recorded_at: String::new(),
            max_batch: config.max_batch,
            poll: config.external_poll,
            shared: shared.clone(),
            panic_limit: config.writer_panic_limit.max(1),
            on_fatal: config.on_writer_fatal,
            committed_unanswered: false,
        };
        let on_fatal = writer.on_fatal.clone();
        std::thread::Builder::new()
            .name("herald-writer".into())
            .spawn(move || {
                // Batches are supervised inside `run`; this catches a panic in
                // the supervision itself, which leaves nobody to write.
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| writer.run())) {
                    (on_fatal.0)(&format!(
                        "the writer loop panicked outside a batch: {}",
                        panic_message(&*payload)
                    ));
                }
            })
            .map_err(backend)?;
        Ok(Arc::new(SqliteStore {
            readers: ReaderPool::new(path.clone(), config.readers, true),
            path,
            jobs,
            live,
            shared,
            framing,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Test hook: the writer's next batch panics before it commits (as a
    /// failed log write inside the writer would). Not reachable over HTTP.
    #[doc(hidden)]
    pub fn inject_writer_panic(&self) {
        self.inject_writer_panics(1);
    }

    /// Test hook: the writer's next `n` batches panic before they commit.
    #[doc(hidden)]
    pub fn inject_writer_panics(&self, n: u32) {
        self.shared.inject_panics.store(n, Ordering::SeqCst);
    }

    /// Test hook: the writer's next batch panics right after its commit, before
    /// it is published and its callers answered.
    #[doc(hidden)]
    pub fn inject_writer_panic_after_commit(&self) {
        self.shared.inject_panics_after_commit.store(1, Ordering::SeqCst);
    }

    /// Runs `f` on a pooled read connection, on a blocking thread.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.readers.run(f).await
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        request.check()?;
        if self.shared.health.is_down() {
            return Err(StoreError::Unavailable(self.shared.health.cause()));
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { request, reply })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        answer.await.map_err(|_| StoreError::ShuttingDown)?
    }

    async fn find_command(&self, command_id: &str) -> Result<Option<(String, Committed)>, StoreError> {
        let command_id = command_id.to_owned();
        let framing = self.framing.clone();
        self.read(move |conn| find_command(conn, &*framing, &command_id)).await
    }

    async fn read_stream(&self, stream: &str, from_version: u64, limit: usize) -> Result<StreamSlice, StoreError> {
        let stream = stream.to_owned();
        let framing = self.framing.clone();
        self.read(move |conn| read_stream(conn, &*framing, &stream, from_version, limit))
            .await
    }

    async fn read_all(&self, after: u64, filter: &Filter, limit: usize) -> Result<Page, StoreError> {
        let filter = filter.clone();
        let framing = self.framing.clone();
        self.read(move |conn| read_all(conn, &*framing, after, &filter, limit))
            .await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        self.read(read_head).await
    }

    fn live(&self) -> LiveReceiver {
        self.live.subscribe()
    }

    /// Every column of every row, on a fresh read-only connection on a
    /// blocking thread.
    async fn verify(&self, expect: Option<Expect>) -> Result<VerifyReport, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || crate::scan::Scanner::open_path(&path)?.verify(expect, |_, _| {}))
            .await
            .map_err(|e| StoreError::Backend(format!("verify task failed: {e}")))?
    }

    fn write_health(&self) -> WriteHealth {
        self.shared.health.health()
    }
}

/// SQLite integers are signed: bounds past `i64::MAX` saturate rather than wrap.
pub(crate) fn sql_int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn row_event(framing: &dyn Framing, row: &rusqlite::Row<'_>) -> rusqlite::Result<Arc<RecordedEvent>> {
    let position: i64 = row.get(0)?;
    let stream: String = row.get(1)?;
    let version: i64 = row.get(2)?;
    let event_type: String = row.get(3)?;
    let json: String = row.get(4)?;
    Ok(Arc::new(RecordedEvent::from_parts(
        framing,
        position as u64,
        &stream,
        version as u64,
        &event_type,
        &json,
    )))
}

pub(crate) fn read_head(conn: &Connection) -> Result<Head, StoreError> {
    let head = conn
        .prepare_cached("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
        .map_err(backend)?
        .query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)))
        .optional()
        .map_err(backend)?;
    Ok(match head {
        Some((position, hash)) => Head { position, hash },
        None => Head {
            position: 0,
            hash: GENESIS_HASH.to_owned(),
        },
    })
}

fn stream_version(conn: &Connection, stream: &str) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?1")
        .map_err(backend)?
        .query_row([stream], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
        .map_err(backend)
}

/// One statement for the common case (the whole rest of the stream fits in
/// `limit`: its last row is the stream's version); a second, in one read
/// transaction with the first, only when the slice is a page of a longer stream.
fn read_stream(
    conn: &Connection,
    framing: &dyn Framing,
    stream: &str,
    from_version: u64,
    limit: usize,
) -> Result<StreamSlice, StoreError> {
    const SLICE: &str = "SELECT position, stream, version, type, envelope FROM events
                         WHERE stream = ?1 AND version >= ?2 ORDER BY version LIMIT ?3";
    let query = |conn: &Connection| -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let mut stmt = conn.prepare_cached(SLICE).map_err(backend)?;
        let rows = stmt
            .query_map(params![stream, sql_int(from_version), sql_int(limit)], |row| {
                row_event(framing, row)
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    };
    let events = query(conn)?;
    if events.len() < limit && (!events.is_empty() || from_version <= 1) {
        let version = events.last().map_or(0, |e| e.version());
        return Ok(StreamSlice { version, events });
    }
    // A page of a longer stream, or past its end: the version must come from
    // the same snapshot as the rows.
    conn.execute_batch("BEGIN DEFERRED").map_err(backend)?;
    let read = (|| {
        let events = query(conn)?;
        let version = stream_version(conn, stream)?;
        Ok(StreamSlice { version, events })
    })();
    conn.execute_batch("COMMIT").map_err(backend)?;
    read
}

fn read_all(
    conn: &Connection,
    framing: &dyn Framing,
    after: u64,
    filter: &Filter,
    limit: usize,
) -> Result<Page, StoreError> {
    let head = read_head(conn)?.position;
    if limit == 0 || after >= head {
        // Nothing to examine: a reader that is ahead (or asked for nothing) stays put.
        return Ok(Page {
            events: Vec::new(),
            next_after: after,
            head,
        });
    }
    let mut sql = String::from(
        "SELECT position, stream, version, type, envelope FROM events WHERE position > ? AND position <= ?",
    );
    let mut args: Vec<rusqlite::types::Value> = vec![sql_int(after).into(), sql_int(head).into()];
    for (column, values) in [
        ("stream", &filter.streams),
        ("category", &filter.categories),
        ("type", &filter.types),
    ] {
        if values.is_empty() {
            continue;
        }
        sql.push_str(" AND ");
        sql.push_str(column);
        sql.push_str(" IN (");
        for (i, v) in values.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            args.push(v.clone().into());
        }
        sql.push(')');
    }
    sql.push_str(" ORDER BY position LIMIT ?");
    args.push(sql_int(limit).into());
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let events = stmt
        .query_map(params_from_iter(args), |row| row_event(framing, row))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let next_after = if events.len() == limit {
        events.last().map_or(head, |e| e.position())
    } else {
        head
    };
    Ok(Page {
        events,
        next_after,
        head,
    })
}

fn find_command(
    conn: &Connection,
    framing: &dyn Framing,
    command_id: &str,
) -> Result<Option<(String, Committed)>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT fingerprint, stream, version, first_position, last_position FROM commands WHERE command_id = ?1",
        )
        .map_err(backend)?
        .query_row([command_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()
        .map_err(backend)?;
    let Some((fingerprint, stream, version, first, last)) = row else {
        return Ok(None);
    };
    let events = conn
        .prepare_cached(
            "SELECT position, stream, version, type, envelope FROM events
             WHERE position >= ?1 AND position <= ?2 ORDER BY position",
        )
        .map_err(backend)?
        .query_map(params![first, last], |row| row_event(framing, row))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    Ok(Some((
        fingerprint,
        Committed {
            stream,
            version: version as u64,
            events,
        },
    )))
}

/// Connections opened on demand up to a limit and reused; each use runs on a
/// blocking thread.
pub(crate) struct ReaderPool {
    path: PathBuf,
    read_only: bool,
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

impl ReaderPool {
    pub(crate) fn new(path: PathBuf, size: usize, read_only: bool) -> Self {
        ReaderPool {
            path,
            read_only,
            idle: Arc::new(Mutex::new(Vec::with_capacity(size))),
            permits: Arc::new(Semaphore::new(size.max(1))),
        }
    }

    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        let idle = self.idle.clone();
        let path = self.path.clone();
        let read_only = self.read_only;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&path, read_only)?,
            };
            let result = f(&conn);
            idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

/// A row written in the current transaction, to be encoded once committed.
type Row = SealedEvent;

/// Why a batch's transaction did not commit.
enum WriteError {
    /// A job failed after it had written (SQLite failed): write the batch again
    /// with a savepoint per job.
    Retry(StoreError),
    Failed(StoreError),
}

/// Why one append was not applied.
enum Refusal {
    /// Found before the append wrote anything: the others of its batch go on.
    Refused(StoreError),
    /// SQLite failed while the append was writing.
    Failed(StoreError),
}

enum Applied {
    Appended {
        stream: String,
        version: u64,
        rows: std::ops::Range<usize>,
    },
    Duplicate(Committed),
}

struct Writer {
    conn: Connection,
    /// How each committed event is framed.
    framing: Arc<dyn Framing>,
    jobs: mpsc::Receiver<Job>,
    live: broadcast::Sender<Arc<CommittedBatch>>,
    /// Last position published on `live`.
    published: u64,
    last_recorded_at: String,
    max_batch: usize,
    poll: Duration,
    shared: Arc<Shared>,
    panic_limit: u32,
    on_fatal: WriterFatal,
    /// Set between a batch's commit and the end of its answers: a panic there
    /// leaves committed appends unanswered.
    committed_unanswered: bool,
}

impl Writer {
    fn run(mut self) {
        let _down = DownOnDrop(self.shared.health.clone());
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                self.shared
                    .health
                    .set_down(&format!("the event store writer could not start: {e}"));
                tracing::error!(error = %e, "event store writer could not start");
                return;
            }
        };
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut panics = PanicLimit::new(self.panic_limit);
        loop {
            match runtime.block_on(async { tokio::time::timeout(self.poll, self.jobs.recv()).await }) {
                Ok(Some(job)) => batch.push(job),
                Ok(None) => break, // every handle dropped: shut down
                Err(_) => {
                    // Idle: has another process appended? Comparing the head with
                    // what was published leaves no window to miss a commit in.
                    match catch_unwind(AssertUnwindSafe(|| self.publish_external())) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "reading events appended by another process failed");
                        }
                        Err(payload) => {
                            let message = panic_message(&*payload);
                            if !self.survive_panic(&mut batch, &mut panics, &message) {
                                return;
                            }
                        }
                    }
                    continue;
                }
            }
            while batch.len() < self.max_batch {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            match catch_unwind(AssertUnwindSafe(|| self.commit(&mut batch))) {
                Ok(true) => panics.committed(),
                Ok(false) => {}
                Err(payload) => {
                    let message = panic_message(&*payload);
                    if !self.survive_panic(&mut batch, &mut panics, &message) {
                        return;
                    }
                }
            }
        }
        tracing::debug!("event store writer stopped");
    }

    /// After a panic: fails the callers of the batch in flight (nothing of
    /// theirs was committed: the transaction rolled back as it unwound), puts the
    /// connection back in a clean state, and decides whether to go on. The head
    /// is read again from the database by the next transaction, and
    /// `published` only moves once a batch is on the live channel, so rows the
    /// panic left unpublished (committed by this process or another) are
    /// published by the next transaction, once.
    ///
    /// Returns false when the writer gives up: the fatal hook has been called
    /// and every queued caller failed.
    fn survive_panic(&mut self, batch: &mut Vec<Job>, panics: &mut PanicLimit, message: &str) -> bool {
        let cause = format!("the event store writer panicked: {message}");
        self.shared.health.set_failing(&cause);
        // Committed: rare, the panic came between the commit and the answers.
        let committed = std::mem::take(&mut self.committed_unanswered);
        tracing::error!(panic = %message, appends = batch.len(), committed, "the event store writer panicked while writing a batch");
        for job in batch.drain(..) {
            let _ = job.reply.send(Err(panicked_batch_error(message, committed)));
        }
        if !self.conn.is_autocommit() {
            // Dropping the transaction while unwinding rolls back; this is in
            // case the panic came from inside that.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.conn.flush_prepared_statement_cache();
        let Some(why) = panics.panicked(Instant::now(), message) else {
            return true;
        };
        give_up(&self.shared.health, &self.on_fatal, &why, &mut self.jobs, |job, e| {
            let _ = job.reply.send(Err(e));
        });
        false
    }

    fn publish_external(&mut self) -> Result<(), StoreError> {
        if read_head(&self.conn)?.position <= self.published {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(backend)?;
        let external = external_rows(&tx, self.published)?;
        drop(tx);
        self.publish(&external);
        Ok(())
    }

    /// Commits every job of `batch` in one transaction and answers each.
    /// Returns whether the transaction committed.
    fn commit(&mut self, batch: &mut Vec<Job>) -> bool {
        // Every refusal (conflict, reused command id, bad event) is found before
        // a job writes anything, so the jobs need no savepoints; only when
        // SQLite itself fails part-way is the batch written again job by job,
        // each in a savepoint, so that one failure does not fail the others.
        let result = match self.write(batch, false) {
            Err(WriteError::Retry(e)) => {
                tracing::warn!(error = %e, appends = batch.len(), "an append failed; writing its batch again one append at a time");
                self.write(batch, true)
            }
            other => other,
        };
        match result {
            Ok((rows, applied)) => {
                self.committed_unanswered = true;
                if take_one(&self.shared.inject_panics_after_commit) {
                    panic!("injected writer panic after the commit (test hook)");
                }
                self.shared.health.set_ok();
                let (events, encoded) = self.encode(&rows);
                // The callers first, then the live channel: a caller's task is
                // woken before the subscribers' (a thousand of them, woken by
                // one send, would otherwise run before it): the next command
                // of a client that waits for its answer starts sooner.
                for (job, outcome) in batch.drain(..).zip(applied) {
                    let answer = outcome.map(|applied| match applied {
                        Applied::Appended { stream, version, rows } => AppendOutcome::Appended(Committed {
                            stream,
                            version,
                            events: events[rows].to_vec(),
                        }),
                        Applied::Duplicate(committed) => AppendOutcome::Duplicate(committed),
                    });
                    let _ = job.reply.send(answer);
                }
                self.committed_unanswered = false;
                self.send(encoded);
                true
            }
            Err(WriteError::Retry(e) | WriteError::Failed(e)) => {
                self.shared.health.set_failing(&format!("the last commit failed: {e}"));
                tracing::error!(error = %e, appends = batch.len(), "event store commit failed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(StoreError::Backend(e.to_string())));
                }
                false
            }
        }
    }

    /// One transaction: rows appended by others since the last publish, then
    /// every job's rows. Returns all rows (in position order) and each job's outcome.
    ///
    /// Without `savepoints`, a job that fails after it started writing fails
    /// the whole transaction with [`WriteError::Retry`] (nothing is committed).
    #[allow(clippy::type_complexity)]
    fn write(
        &mut self,
        batch: &[Job],
        savepoints: bool,
    ) -> Result<(Vec<Row>, Vec<Result<Applied, StoreError>>), WriteError> {
        let mut tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| WriteError::Failed(backend(e)))?;
        let mut rows = external_rows(&tx, self.published).map_err(WriteError::Failed)?;
        let mut head = read_head(&tx).map_err(WriteError::Failed)?;
        let recorded_at = next_recorded_at(&self.last_recorded_at);
        let mut outcomes = Vec::with_capacity(batch.len());
        for job in batch {
            if !savepoints {
                match apply(&tx, &*self.framing, &job.request, &mut head, &mut rows, &recorded_at) {
                    Ok(applied) => outcomes.push(Ok(applied)),
                    Err(Refusal::Refused(e)) => outcomes.push(Err(e)),
                    // Dropping `tx` rolls the whole batch back.
                    Err(Refusal::Failed(e)) => return Err(WriteError::Retry(e)),
                }
                continue;
            }
            let sp_head = head.clone();
            let sp_rows = rows.len();
            let mut sp = tx.savepoint().map_err(|e| WriteError::Failed(backend(e)))?;
            match apply(&sp, &*self.framing, &job.request, &mut head, &mut rows, &recorded_at) {
                Ok(applied) => {
                    sp.commit().map_err(|e| WriteError::Failed(backend(e)))?;
                    outcomes.push(Ok(applied));
                }
                Err(Refusal::Refused(e) | Refusal::Failed(e)) => {
                    sp.rollback().map_err(|e| WriteError::Failed(backend(e)))?;
                    drop(sp);
                    head = sp_head;
                    rows.truncate(sp_rows);
                    outcomes.push(Err(e));
                }
            }
        }
        if take_one(&self.shared.inject_panics) {
            panic!("injected writer panic (test hook)");
        }
        tx.commit().map_err(|e| WriteError::Failed(backend(e)))?;
        self.last_recorded_at = recorded_at;
        Ok((rows, outcomes))
    }

    /// Encodes `rows` (each framed once) into one buffer and publishes them as one batch.
    fn publish(&mut self, rows: &[Row]) -> Vec<Arc<RecordedEvent>> {
        let (events, batch) = self.encode(rows);
        self.send(batch);
        events
    }

    /// Encodes `rows` (each framed once) into one batch, to [`Self::send`].
    fn encode(&mut self, rows: &[Row]) -> (Vec<Arc<RecordedEvent>>, Option<CommittedBatch>) {
        if rows.is_empty() {
            return (Vec::new(), None);
        }
        let batch = CommittedBatch::encode(&*self.framing, rows);
        (batch.events.clone(), Some(batch))
    }

    /// Publishes an encoded batch on the live channel.
    fn send(&mut self, batch: Option<CommittedBatch>) {
        let Some(batch) = batch else { return };
        self.published = batch.events.last().map_or(self.published, |e| e.position());
        // No receivers is fine: nobody is listening.
        let _ = self.live.send(Arc::new(batch));
    }
}

/// Rows with position > `published` (written by another process), in order.
fn external_rows(conn: &Connection, published: u64) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT position, stream, version, type, envelope, hash FROM events WHERE position > ?1 ORDER BY position",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([sql_int(published)], |r| {
            Ok(Row {
                position: r.get::<_, i64>(0)? as u64,
                stream: r.get(1)?,
                version: r.get::<_, i64>(2)? as u64,
                event_type: r.get(3)?,
                json: r.get(4)?,
                hash: r.get(5)?,
            })
        })
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    Ok(rows)
}

/// Checks and writes one append inside the writer's transaction.
fn apply(
    tx: &Connection,
    framing: &dyn Framing,
    request: &AppendRequest,
    head: &mut Head,
    rows: &mut Vec<Row>,
    recorded_at: &str,
) -> Result<Applied, Refusal> {
    // Every check first: until the first insert, a refusal leaves nothing to undo.
    if let Some(fingerprint) = &request.idempotency_fingerprint
        && let Some((seen, committed)) = find_command(tx, framing, &request.command_id).map_err(Refusal::Refused)?
    {
        return if fingerprints_match(&seen, fingerprint) {
            Ok(Applied::Duplicate(committed))
        } else {
            Err(Refusal::Refused(StoreError::CommandIdReused {
                command_id: request.command_id.clone(),
            }))
        };
    }
    let current = stream_version(tx, &request.stream).map_err(Refusal::Refused)?;
    if !request.expected.admits(current) {
        return Err(Refusal::Refused(StoreError::Conflict {
            stream: request.stream.clone(),
            expected: request.expected,
            actual: current,
        }));
    }
    request.check_event_types().map_err(Refusal::Refused)?;
    // From here on, only SQLite can fail.
    let failed = |e: rusqlite::Error| Refusal::Failed(backend(e));
    let category = herald_core::envelope::category_of(&request.stream);
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO events (position, stream, version, category, type, envelope, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(failed)?;
    let first_row = rows.len();
    request.seal(current, head, recorded_at, rows);
    for row in &rows[first_row..] {
        insert
            .execute(params![
                row.position as i64,
                row.stream,
                row.version as i64,
                category,
                row.event_type,
                row.json,
                row.hash,
            ])
            .map_err(failed)?;
    }
    let version = rows.last().map_or(current, |r| r.version);
    if let Some(fingerprint) = &request.idempotency_fingerprint {
        tx.prepare_cached(
            "INSERT INTO commands (command_id, fingerprint, stream, version, first_position, last_position)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(failed)?
        .execute(params![
            request.command_id,
            fingerprint,
            request.stream,
            version as i64,
            rows[first_row].position as i64,
            head.position as i64,
        ])
        .map_err(failed)?;
    }
    Ok(Applied::Appended {
        stream: request.stream.clone(),
        version,
        rows: first_row..rows.len(),
    })
}
