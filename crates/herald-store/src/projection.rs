//! Read models as keyed rows folded from the log: the one seam every domain's
//! projection plugs into, and the one runner that keeps them all.
//!
//! A domain writes a [`RowProjection`]: which categories it reads, its tables,
//! how an event folds into one keyed row in memory (through the borrowed
//! [`EventRef`]), how a row is loaded and written, and which resources changed
//! between two positions (rendered once, for every subscriber). Everything else
//! is here, the same for every projection:
//!
//! - its storage ([`Storage`]): its own SQLite file `<data>/readmodels/<NAME>.db`
//!   ([`SqliteModel`]: projections never contend with the event writer, nor
//!   with each other), or its own PostgreSQL schema (herald-postgres), recreated
//!   empty at checkpoint 0 when [`RowProjection::VERSION`] changes; the
//!   projection's statements are the same on both ([`Db`]);
//! - the checkpoint, written in the same transaction as the rows; an apply only
//!   happens when the checkpoint is still the one the caller read, so another
//!   process (a rebuild while `herald serve` runs) cannot make it apply events
//!   twice or skip some;
//! - [`ReadModel::process_next`]: read a page of the log after the checkpoint,
//!   fold, write, move the checkpoint;
//! - [`ReadModel::changed`]: what changed after a position, for resource streams;
//! - [`Consumer::rebuild`]: reset and replay the whole log (on SQLite fast: a
//!   scan of the log's file, folds on threads sharded by row key, one writer);
//! - [`Model`]: the model typed for its domain's handlers, whatever its storage.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::any::Any;

use async_trait::async_trait;
use herald_core::envelope::RecordedEvent;
use herald_core::event_ref::EventRef;
use herald_core::store::{EventStore, Filter, StoreError};
use rusqlite::{Connection, TransactionBehavior};

use crate::scan::Scanner;
pub use crate::sql::{Db, Param, SqlRow};
use crate::sqlite::{ReaderPool, SqliteStore, backend, open_connection};

/// A resource whose state changed, rendered once for every subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedResource {
    /// What kind of resource (`deployment`, `post`, `feed`, `feeds`): resource
    /// streams follow one kind, all of it or one key of it.
    pub kind: &'static str,
    /// Which one (`""` for a collection such as `feeds`).
    pub key: String,
    /// The log position of the last event that changed it.
    pub changed_at: u64,
    /// The SSE event name its state is sent as (`deployment`, `post`, …).
    pub event: &'static str,
    /// Its state: one line of JSON.
    pub json: String,
    /// A label subscribers may filter on without parsing the JSON (a
    /// deployment's status), if the kind has one.
    pub class: Option<&'static str>,
}

/// What [`RowProjection::changed`] found between two positions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changed {
    /// The changed resources, each once, in its state as of `position` or later.
    pub resources: Vec<ChangedResource>,
    /// Every change at or before this position (and after the one asked for)
    /// is in `resources`: `until` when they all fit, less when they did not.
    pub position: u64,
}

/// A domain's read model as keyed rows. Every function is synchronous and runs
/// on a blocking thread, inside a transaction the runner opened, on whichever
/// database holds the model ([`Db`]: its statements are written once, in the
/// SQL both backends take).
pub trait RowProjection: Send + Sync + 'static {
    /// Its name: the file `readmodels/<NAME>.db` (the schema `rm_<NAME>` on
    /// PostgreSQL), the metric label, the name `herald projections rebuild
    /// NAME` takes. Lowercase letters, digits and `_`.
    const NAME: &'static str;
    /// The stream categories it reads (the log is read filtered by them).
    const CATEGORIES: &'static [&'static str];
    /// The format of its tables: a model stored with another version is
    /// recreated empty and replayed from the log.
    const VERSION: i64;
    /// `CREATE TABLE IF NOT EXISTS …` (and indexes) of its tables, in SQLite.
    const SCHEMA: &'static str;
    /// The same tables in PostgreSQL (`BIGINT` for SQLite's `INTEGER`, no
    /// `STRICT`), created in the model's own schema.
    const POSTGRES_SCHEMA: &'static str;
    /// Its tables, emptied by a reset and dropped by a format change.
    const TABLES: &'static [&'static str];

    /// One row in memory (it may keep what it needs to write a diff, such as
    /// the tags last written).
    type Row: Send + 'static;
    /// What writing a changed row takes, prepared on a fold thread.
    type Write: Send + 'static;

    /// The key of the row the events of `stream` fold into (one of
    /// [`CATEGORIES`](Self::CATEGORIES)); `None` skips them.
    fn key(stream: &str) -> Option<&str>;

    /// Folds `event` into its row (`None`: no row yet). Returns whether the row
    /// changed. Never fails and never panics: an event it cannot read (another
    /// type, data of another shape, one already folded) changes nothing.
    fn fold(row: &mut Option<Self::Row>, event: &EventRef<'_>) -> bool;

    /// The stored row of `key`, if any.
    fn load(db: &dyn Db, key: &str) -> Result<Option<Self::Row>, StoreError>;

    /// The stored rows of `keys` (distinct), those that exist, in any order;
    /// by default one [`load`](Self::load) each. A projection may read them in
    /// fewer statements (on PostgreSQL each statement is a round trip).
    fn load_many(db: &dyn Db, keys: &[&str]) -> Result<Loaded<Self::Row>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(row) = Self::load(db, key)? {
                out.push((Box::<str>::from(*key), row));
            }
        }
        Ok(out)
    }

    /// What to write for a changed row; afterwards `row` takes what was written
    /// as its new baseline (for diffs).
    fn prepare(key: &str, row: &mut Self::Row) -> Result<Self::Write, StoreError>;

    /// Writes one prepared row (inside the runner's transaction). Writes of
    /// different keys in one transaction come in no particular order: what
    /// they share (a count) must be updated commutatively.
    fn write(db: &dyn Db, key: &str, write: &Self::Write) -> Result<(), StoreError>;

    /// Writes the prepared rows of one transaction (distinct keys, in no
    /// particular order); by default [`write`](Self::write) for each. A
    /// projection whose rows share rows of their own (a count) may merge
    /// their shares here, one write per shared row: the outcome must be the
    /// one of writing them one by one, whatever rows come together.
    fn write_all(db: &dyn Db, rows: &[(Box<str>, Self::Write)]) -> Result<(), StoreError> {
        for (key, write) in rows {
            Self::write(db, key, write)?;
        }
        Ok(())
    }

    /// The resources changed by events in `(after, until]`, rendered, at most
    /// about `limit` of them (read in the runner's read transaction, `until`
    /// being the checkpoint it read).
    fn changed(db: &dyn Db, after: u64, until: u64, limit: usize) -> Result<Changed, StoreError>;
}

/// The directory of the read models inside the data directory.
pub const READMODELS_DIR: &str = "readmodels";

/// Events read (and written) per page by a rebuild.
pub const REBUILD_PAGE: usize = 10_000;

/// Read connections kept per read model.
const IDLE_READERS: usize = 8;

/// The longest a read with `min_position` waits for the model.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

const CHECKPOINTS: &str = "CREATE TABLE IF NOT EXISTS checkpoint (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
) STRICT;
INSERT OR IGNORE INTO checkpoint (id, position) VALUES (1, 0);";

/// The statement that reads a model's checkpoint (both backends).
pub const READ_CHECKPOINT: &str = "SELECT position FROM checkpoint WHERE id = 1";

/// The last log position the model in `db` reflects (0 = none).
pub fn read_checkpoint(db: &dyn Db) -> Result<u64, StoreError> {
    Ok(db.query_opt(READ_CHECKPOINT, &[], |r| r.position(0))?.unwrap_or(0))
}

/// Sets the model's checkpoint (inside the transaction that wrote its rows).
pub fn write_checkpoint(db: &dyn Db, position: u64) -> Result<(), StoreError> {
    db.execute("UPDATE checkpoint SET position = ?1 WHERE id = 1", &[position.into()])?;
    Ok(())
}

/// Rows per statement of [`insert_rows`].
const ROWS_PER_STATEMENT: usize = 64;

/// Writes `rows` with statements of many rows each (a page's rows cost a
/// fraction of one statement each): `head`, then `(?, …)` of `columns`
/// parameters per row, then `tail` (an `ON CONFLICT` clause, say). `bind`
/// pushes one row's `columns` parameters.
pub fn insert_rows<'a, T>(
    db: &dyn Db,
    head: &str,
    columns: usize,
    tail: &str,
    rows: &'a [T],
    bind: impl Fn(&'a T, &mut Vec<Param<'a>>),
) -> Result<(), StoreError> {
    let sql = |n: usize| {
        let row = format!("({})", vec!["?"; columns].join(", "));
        format!("{head} {} {tail}", vec![row; n].join(", "))
    };
    let mut params = Vec::with_capacity(columns * ROWS_PER_STATEMENT.min(rows.len()));
    let mut chunks = rows.chunks_exact(ROWS_PER_STATEMENT);
    if chunks.len() > 0 {
        let many = sql(ROWS_PER_STATEMENT);
        for chunk in &mut chunks {
            params.clear();
            for row in chunk {
                bind(row, &mut params);
            }
            db.execute(&many, &params)?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let one = sql(1);
        for row in rest {
            params.clear();
            bind(row, &mut params);
            db.execute(&one, &params)?;
        }
    }
    Ok(())
}

/// The outcome of one [`ReadModel::process_next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Events of the model's categories read (and applied) in this step.
    pub read: usize,
    /// The model's checkpoint after the step.
    pub checkpoint: u64,
    /// The log's head when the page was read: caught up when `checkpoint >= head`.
    pub head: u64,
}

impl Step {
    pub fn caught_up(&self) -> bool {
        self.checkpoint >= self.head
    }
}

/// What [`Consumer::changed`] found: [`Changed`] and the checkpoint read in
/// the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangedPage {
    pub resources: Vec<ChangedResource>,
    /// Every change in `(after, position]` is in `resources`; never below `after`.
    pub position: u64,
    pub checkpoint: u64,
}

/// What a rebuild reads the log from: any [`EventStore`], and the SQLite
/// store through a faster path (a streaming scan of its file).
pub trait RebuildSource: Send + Sync + 'static {
    fn event_store(self: Arc<Self>) -> Arc<dyn EventStore>;

    /// A scanner of the log's file, when the store has one.
    fn scanner(&self) -> Option<Result<Scanner, StoreError>> {
        None
    }
}

impl RebuildSource for SqliteStore {
    fn event_store(self: Arc<Self>) -> Arc<dyn EventStore> {
        self
    }

    fn scanner(&self) -> Option<Result<Scanner, StoreError>> {
        Some(Scanner::open(self))
    }
}

/// A source that is only an [`EventStore`].
pub struct AnyStore(pub Arc<dyn EventStore>);

impl RebuildSource for AnyStore {
    fn event_store(self: Arc<Self>) -> Arc<dyn EventStore> {
        self.0.clone()
    }
}

/// A read model as the runner and `herald projections rebuild` see it,
/// whatever its rows.
#[async_trait]
pub trait Consumer: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The stream categories it reads.
    fn categories(&self) -> &'static [&'static str];
    /// See [`ReadModel::note_unrelated`].
    fn note_unrelated(&self, after: u64, to: u64) -> bool;
    /// The last log position the model reflects.
    async fn checkpoint(&self) -> Result<u64, StoreError>;
    /// Whether this process should apply the log to the model now (a backend
    /// several instances share lets one at a time: see [`Storage::lead`]).
    /// Every process reads it, and publishes its changes, either way.
    async fn lead(&self) -> Result<bool, StoreError>;
    /// Reads up to `page` events after the checkpoint and applies them.
    async fn process_next(&self, store: &Arc<dyn EventStore>, page: usize) -> Result<Step, StoreError>;
    /// [`process_next`](Self::process_next) for a process that does not lead
    /// the model: reads the page, notes a stretch with nothing of the
    /// model's (so reads know how far it reflects the log), applies nothing.
    async fn observe(&self, store: &Arc<dyn EventStore>, page: usize) -> Result<Step, StoreError>;
    /// The resources changed after `after`, about `limit` at most, rendered.
    async fn changed(&self, after: u64, limit: usize) -> Result<ChangedPage, StoreError>;
    /// Resets the model and replays the whole log; `progress(checkpoint, head)`
    /// after each write. Returns the events of its categories applied.
    async fn rebuild(
        &self,
        source: Arc<dyn RebuildSource>,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<u64, StoreError>;
}

/// Rows found by [`RowProjection::load_many`], each with its key.
pub type Loaded<R> = Vec<(Box<str>, R)>;

/// A one-shot read of a model: `f(db, checkpoint)` inside one read
/// transaction, the checkpoint read in it.
pub type ReadFn<T> = Box<dyn FnOnce(&dyn Db, u64) -> Result<T, StoreError> + Send>;

/// A write of a model, inside one write transaction.
pub type WriteFn = Box<dyn FnOnce(&dyn Db) -> Result<(), StoreError> + Send>;

/// Where a read model's tables and checkpoint are kept: the embedded store's
/// file ([`SqliteModel`]) or a PostgreSQL schema (herald-postgres). The
/// runner's logic ([`ReadModel`]) is the same on both.
#[async_trait]
pub trait Storage: Send + Sync + Sized + 'static {
    /// Where it is, for messages (no credentials).
    fn describe(&self) -> String;

    /// The checkpoint as stored.
    async fn stored_checkpoint(&self) -> Result<u64, StoreError>;

    /// Runs `f` in one read transaction, with the stored checkpoint read in it.
    async fn read<T: Send + 'static>(&self, f: ReadFn<T>) -> Result<T, StoreError>;

    /// In one write transaction: when the stored checkpoint is `expected`
    /// (any, for `None`), runs `f`, sets the checkpoint to `new` and commits;
    /// otherwise changes nothing and returns `false`. Concurrent calls (this
    /// process or another) are serialized: two never both see `expected`.
    async fn write_from(&self, expected: Option<u64>, new: u64, f: WriteFn) -> Result<bool, StoreError>;

    /// Empties the tables of `P` and sets the checkpoint to 0, in one
    /// transaction.
    async fn reset<P: RowProjection>(&self) -> Result<(), StoreError> {
        let deleted = self
            .write_from(
                None,
                0,
                Box::new(|db| {
                    for table in P::TABLES {
                        db.execute(&format!("DELETE FROM \"{table}\""), &[])?;
                    }
                    Ok(())
                }),
            )
            .await?;
        debug_assert!(deleted, "a reset expects any checkpoint");
        Ok(())
    }

    /// Whether this process leads the model (applies the log to it). A store
    /// one process owns says yes; a shared one lets one process at a time.
    async fn lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// [`Consumer::rebuild`] of `model` (stored here) with pages of `page` events.
    async fn rebuild<P: RowProjection>(
        model: &ReadModel<P, Self>,
        source: Arc<dyn RebuildSource>,
        page: usize,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<u64, StoreError> {
        crate::rebuild::rebuild_by_pages::<P, Self>(model, &source.event_store(), page, progress).await
    }
}

/// The read model of `P`, kept in `S` (by default the embedded store's
/// `<data>/readmodels/<NAME>.db`).
pub struct ReadModel<P: RowProjection, S: Storage = SqliteModel> {
    storage: S,
    filter: Filter,
    /// Pages of the log with no event of this model's categories are not
    /// written (a commit per wake-up, per model, for nothing) but remembered
    /// here: see [`Skipped`].
    skipped: Mutex<Skipped>,
    _projection: PhantomData<fn() -> P>,
}

/// The log holds no event of the model's categories in `(base, examined]`:
/// while the stored checkpoint is `base`, the model reflects the log up to
/// `examined`. (Whoever wrote the stored checkpoint — this process, another
/// one, a rebuild reaching `base` again — the rows only depend on events of
/// the model's categories, and there are none in between.)
#[derive(Debug, Default, Clone, Copy)]
struct Skipped {
    base: u64,
    examined: u64,
}

impl Skipped {
    /// How far the model reflects the log, given its stored checkpoint.
    fn effective(self, stored: u64) -> u64 {
        if self.base == stored && self.examined > stored {
            self.examined
        } else {
            stored
        }
    }
}

/// A page without events of the model's categories moves the stored
/// checkpoint only once it is this far ahead of it (so a restart re-reads at
/// most this much of the log, and other processes see the model move).
const SKIP_WRITE: u64 = 10_000;

impl<P: RowProjection, S: Storage> std::fmt::Debug for ReadModel<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("name", &P::NAME)
            .field("storage", &self.storage.describe())
            .finish()
    }
}

/// The embedded store's file of one read model.
pub struct SqliteModel {
    path: PathBuf,
    /// The only writing connection of this process.
    writer: Arc<Mutex<Connection>>,
    readers: ReaderPool,
}

impl SqliteModel {
    /// Opens (creating if needed) the file of `P` in the data directory `dir`;
    /// a file of another [`RowProjection::VERSION`] is emptied to checkpoint 0.
    pub fn open<P: RowProjection>(dir: &Path) -> Result<SqliteModel, StoreError> {
        let models = dir.join(READMODELS_DIR);
        std::fs::create_dir_all(&models)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", models.display())))?;
        let path = models.join(format!("{}.db", P::NAME));
        let mut conn = open_connection(&path, false)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(backend)?;
        if version != P::VERSION {
            if version != 0 {
                tracing::info!(
                    projection = P::NAME,
                    from = version,
                    to = P::VERSION,
                    "read model format changed: rebuilding it from the log"
                );
            }
            for table in P::TABLES {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS \"{table}\";"))
                    .map_err(backend)?;
            }
            tx.execute_batch("DROP TABLE IF EXISTS checkpoint;").map_err(backend)?;
            tx.pragma_update(None, "user_version", P::VERSION).map_err(backend)?;
        }
        tx.execute_batch(CHECKPOINTS).map_err(backend)?;
        tx.execute_batch(P::SCHEMA).map_err(backend)?;
        tx.commit().map_err(backend)?;
        // A read model needs atomic commits (rows with their checkpoint), not
        // durable ones: after a power cut it may be a few commits behind and
        // catches up from the log, which is durable.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
        // A step's multi-row upserts keep their statement journals in memory
        // (a temporary file took a third as many page writes as the WAL), and
        // a cache for the pages steps touch. Checkpoints stay at SQLite's 1,000
        // WAL pages: at 10,000 each flushed up to 40 MB at once, and the
        // writer's commits queued behind it on the disk (up to 100 ms).
        conn.pragma_update(None, "temp_store", "MEMORY").map_err(backend)?;
        conn.pragma_update(None, "cache_size", -16_384).map_err(backend)?;
        Ok(SqliteModel {
            readers: ReaderPool::new(path.clone(), IDLE_READERS, true),
            path,
            writer: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn writer(&self) -> Arc<Mutex<Connection>> {
        self.writer.clone()
    }
}

#[async_trait]
impl Storage for SqliteModel {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    async fn stored_checkpoint(&self) -> Result<u64, StoreError> {
        self.readers.run(|conn| read_checkpoint(conn)).await
    }

    async fn read<T: Send + 'static>(&self, f: ReadFn<T>) -> Result<T, StoreError> {
        self.readers
            .run(move |conn| {
                let tx = conn.unchecked_transaction().map_err(backend)?;
                let checkpoint = read_checkpoint(&*tx)?;
                let out = f(&*tx, checkpoint)?;
                tx.commit().map_err(backend)?;
                Ok(out)
            })
            .await
    }

    async fn write_from(&self, expected: Option<u64>, new: u64, f: WriteFn) -> Result<bool, StoreError> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            // IMMEDIATE: the write lock is taken before the checkpoint is read.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            if expected.is_some_and(|expected| read_checkpoint(&*tx).ok() != Some(expected)) {
                return Ok(false); // dropping `tx` rolls back (nothing was written)
            }
            f(&*tx)?;
            write_checkpoint(&*tx, new)?;
            tx.commit().map_err(backend)?;
            Ok(true)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read model write task failed: {e}")))?
    }

    async fn rebuild<P: RowProjection>(
        model: &ReadModel<P, Self>,
        source: Arc<dyn RebuildSource>,
        page: usize,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<u64, StoreError> {
        crate::rebuild::rebuild::<P>(model, source, page, progress).await
    }
}

impl<P: RowProjection> ReadModel<P, SqliteModel> {
    /// Opens (creating if needed) the model in the data directory `dir`; a file
    /// of another [`RowProjection::VERSION`] is emptied to checkpoint 0.
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        Ok(Arc::new(ReadModel::new(SqliteModel::open::<P>(dir)?)))
    }

    pub fn path(&self) -> &Path {
        self.storage.path()
    }
}

impl<P: RowProjection, S: Storage> ReadModel<P, S> {
    /// The model of `P` kept in `storage` (opened for `P`).
    pub fn new(storage: S) -> Self {
        ReadModel {
            storage,
            filter: Filter {
                categories: P::CATEGORIES.iter().map(|c| (*c).to_owned()).collect(),
                ..Filter::default()
            },
            skipped: Mutex::default(),
            _projection: PhantomData,
        }
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The last log position the model reflects (0 = none).
    pub async fn checkpoint(&self) -> Result<u64, StoreError> {
        let stored = self.storage.stored_checkpoint().await?;
        Ok(self.effective(stored))
    }

    /// What this process last knew: the stored checkpoint `base`, and how far
    /// past it the log holds nothing of the model's.
    fn remember(&self, base: u64, examined: u64) {
        *self.skipped.lock().unwrap_or_else(|p| p.into_inner()) = Skipped { base, examined };
    }

    /// The log's positions `(after, to]` hold no event of the model's
    /// categories (a committed batch seen live): when the model is known to
    /// reflect the log up to `after`, it now reflects it up to `to`, without
    /// reading or writing anything. `false` when that is not known (read
    /// the log instead).
    pub fn note_unrelated(&self, after: u64, to: u64) -> bool {
        let mut skipped = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        if skipped.examined != after || to <= after || to.saturating_sub(skipped.base) >= SKIP_WRITE {
            return false;
        }
        skipped.examined = to;
        true
    }

    /// How far the model reflects the log, given its stored checkpoint.
    fn effective(&self, stored: u64) -> u64 {
        self.skipped.lock().unwrap_or_else(|p| p.into_inner()).effective(stored)
    }

    /// Runs `f` in one read transaction of the model, with the checkpoint
    /// read in that transaction (what the answer reflects).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Db, u64) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let skipped = *self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        self.storage
            .read(Box::new(move |db, checkpoint| f(db, skipped.effective(checkpoint))))
            .await
    }

    /// Waits until the model has reached `min_position`, at most `limit`;
    /// returns the checkpoint it saw last (below `min_position` on a timeout).
    pub async fn wait_for(&self, min_position: u64, limit: Duration) -> Result<u64, StoreError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pause = Duration::from_millis(2);
        loop {
            let checkpoint = self.checkpoint().await?;
            if checkpoint >= min_position || tokio::time::Instant::now() >= deadline {
                return Ok(checkpoint);
            }
            tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Deletes every row and sets the checkpoint to 0, in one transaction.
    pub async fn reset(&self) -> Result<(), StoreError> {
        self.forget_skipped();
        self.storage.reset::<P>().await
    }

    /// Forgets what [`Self::note_unrelated`] noted (before a rebuild resets
    /// the tables itself).
    pub(crate) fn forget_skipped(&self) {
        self.remember(0, 0);
    }

    /// Applies `events` (of any categories: others are skipped) and moves the
    /// checkpoint from `expected` to `new` in the same transaction. `false`
    /// (and nothing changed) when the stored checkpoint is not `expected`.
    pub async fn apply(&self, expected: u64, new: u64, events: Vec<Arc<RecordedEvent>>) -> Result<bool, StoreError> {
        self.storage
            .write_from(
                Some(expected),
                new,
                Box::new(move |db| fold_and_write::<P>(db, &events)),
            )
            .await
    }

    pub(crate) async fn step(&self, store: &Arc<dyn EventStore>, page: usize) -> Result<Step, StoreError> {
        self.step_or_observe(store, page, true).await
    }

    /// A step, applying the page when `apply` (see [`Consumer::observe`]).
    async fn step_or_observe(&self, store: &Arc<dyn EventStore>, page: usize, apply: bool) -> Result<Step, StoreError> {
        const ATTEMPTS: usize = 3;
        let mut stored = self.storage.stored_checkpoint().await?;
        let mut checkpoint = self.effective(stored);
        let mut head = checkpoint;
        for _ in 0..ATTEMPTS {
            let found = store.read_all(checkpoint, &self.filter, page).await?;
            head = found.head;
            if found.events.is_empty() && found.next_after == checkpoint {
                self.remember(stored, checkpoint);
                return Ok(Step {
                    read: 0,
                    checkpoint,
                    head,
                });
            }
            let read = found.events.len();
            let next = found.next_after;
            if found.events.is_empty() && next.saturating_sub(stored) < SKIP_WRITE {
                // Nothing of this model's up to `next`: remembered, not written.
                *self.skipped.lock().unwrap_or_else(|p| p.into_inner()) = Skipped {
                    base: stored,
                    examined: next,
                };
                return Ok(Step {
                    read: 0,
                    checkpoint: next,
                    head,
                });
            }
            if !apply {
                return Ok(Step {
                    read: 0,
                    checkpoint,
                    head,
                });
            }
            // The page was read from the effective checkpoint; between the
            // stored one and it there is nothing of this model's.
            if self.apply(stored, next, found.events).await? {
                self.remember(next, next);
                return Ok(Step {
                    read,
                    checkpoint: next,
                    head,
                });
            }
            tracing::debug!(
                projection = P::NAME,
                expected = stored,
                "read model checkpoint moved by someone else; reading again"
            );
            stored = self.storage.stored_checkpoint().await?;
            checkpoint = self.effective(stored);
        }
        Ok(Step {
            read: 0,
            checkpoint,
            head,
        })
    }

    /// [`Consumer::rebuild`] with pages of `page` events (tests use small ones).
    pub async fn rebuild_with_page(
        &self,
        source: Arc<dyn RebuildSource>,
        page: usize,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<u64, StoreError> {
        S::rebuild::<P>(self, source, page, progress).await
    }

    pub(crate) fn filter(&self) -> &Filter {
        &self.filter
    }
}

/// A row touched by one apply (or one rebuild chunk): loaded at most once,
/// written at most once.
pub(crate) struct Slot<R> {
    pub(crate) row: Option<R>,
    pub(crate) changed: bool,
}

impl<R> Default for Slot<R> {
    fn default() -> Self {
        Slot {
            row: None,
            changed: false,
        }
    }
}

/// Folds one stored envelope into `slot`; a text that is no envelope is skipped with a warning.
pub(crate) fn fold_json<P: RowProjection>(slot: &mut Slot<P::Row>, json: &str, position: u64) {
    match EventRef::parse(json) {
        Ok(event) => {
            if P::fold(&mut slot.row, &event) {
                slot.changed = true;
            }
        }
        // The audit (hash chain) reports a damaged log; the model goes on.
        Err(e) => tracing::warn!(projection = P::NAME, position, error = %e, "skipping an unreadable event"),
    }
}

/// Empties the model's tables and sets its checkpoint to 0, in one transaction.
pub(crate) fn reset_tables<P: RowProjection>(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    for table in P::TABLES {
        tx.execute(&format!("DELETE FROM \"{table}\""), []).map_err(backend)?;
    }
    write_checkpoint(&*tx, 0)?;
    tx.commit().map_err(backend)
}

/// Folds `events` (of any categories: others are skipped) into their rows,
/// each loaded once, and writes the changed ones (inside the caller's
/// transaction; the checkpoint is the caller's).
pub fn fold_and_write<P: RowProjection>(db: &dyn Db, events: &[Arc<RecordedEvent>]) -> Result<(), StoreError> {
    let mut slots: HashMap<Box<str>, Slot<P::Row>> = HashMap::new();
    let mut order: Vec<Box<str>> = Vec::new();
    for event in events {
        if let Some(key) = P::key(event.stream())
            && !slots.contains_key(key)
        {
            slots.insert(key.into(), Slot::default());
            order.push(key.into());
        }
    }
    // Every row the page touches, loaded together before any is folded.
    let keys: Vec<&str> = order.iter().map(|k| &**k).collect();
    for (key, row) in P::load_many(db, &keys)? {
        if let Some(slot) = slots.get_mut(&key) {
            slot.row = Some(row);
        }
    }
    for event in events {
        let Some(key) = P::key(event.stream()) else {
            continue;
        };
        let Some(slot) = slots.get_mut(key) else {
            continue; // every key has its slot (above)
        };
        match std::str::from_utf8(event.json()) {
            Ok(json) => fold_json::<P>(slot, json, event.position()),
            Err(e) => {
                tracing::warn!(projection = P::NAME, position = event.position(), error = %e, "skipping an unreadable event")
            }
        }
    }
    let mut writes = Vec::new();
    for key in order {
        if let Some(Slot {
            row: Some(row),
            changed: true,
        }) = slots.get_mut(&key)
        {
            let write = P::prepare(&key, row)?;
            writes.push((key, write));
        }
    }
    P::write_all(db, &writes)
}

#[async_trait]
impl<P: RowProjection, S: Storage> Consumer for ReadModel<P, S> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn categories(&self) -> &'static [&'static str] {
        P::CATEGORIES
    }

    fn note_unrelated(&self, after: u64, to: u64) -> bool {
        ReadModel::note_unrelated(self, after, to)
    }

    async fn checkpoint(&self) -> Result<u64, StoreError> {
        ReadModel::checkpoint(self).await
    }

    async fn lead(&self) -> Result<bool, StoreError> {
        self.storage.lead().await
    }

    async fn process_next(&self, store: &Arc<dyn EventStore>, page: usize) -> Result<Step, StoreError> {
        self.step(store, page).await
    }

    async fn observe(&self, store: &Arc<dyn EventStore>, page: usize) -> Result<Step, StoreError> {
        self.step_or_observe(store, page, false).await
    }

    async fn changed(&self, after: u64, limit: usize) -> Result<ChangedPage, StoreError> {
        let limit = limit.max(1);
        self.read(move |db, checkpoint| {
            if checkpoint <= after {
                return Ok(ChangedPage {
                    resources: Vec::new(),
                    position: after,
                    checkpoint,
                });
            }
            let changed = P::changed(db, after, checkpoint, limit)?;
            Ok(ChangedPage {
                resources: changed.resources,
                position: changed.position.clamp(after, checkpoint),
                checkpoint,
            })
        })
        .await
    }

    async fn rebuild(
        &self,
        source: Arc<dyn RebuildSource>,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<u64, StoreError> {
        S::rebuild::<P>(self, source, REBUILD_PAGE, progress).await
    }
}

/// A read model as its domain's handlers see it, whichever its storage.
#[async_trait]
pub trait ModelReads: Consumer {
    /// [`ReadModel::read`], its answer boxed.
    async fn read_any(&self, f: ReadFn<Box<dyn Any + Send>>) -> Result<Box<dyn Any + Send>, StoreError>;
    /// [`ReadModel::wait_for`].
    async fn wait_for(&self, min_position: u64, limit: Duration) -> Result<u64, StoreError>;
    /// As a [`Consumer`].
    fn as_consumer(self: Arc<Self>) -> Arc<dyn Consumer>;
}

#[async_trait]
impl<P: RowProjection, S: Storage> ModelReads for ReadModel<P, S> {
    async fn read_any(&self, f: ReadFn<Box<dyn Any + Send>>) -> Result<Box<dyn Any + Send>, StoreError> {
        self.read(f).await
    }

    async fn wait_for(&self, min_position: u64, limit: Duration) -> Result<u64, StoreError> {
        ReadModel::wait_for(self, min_position, limit).await
    }

    fn as_consumer(self: Arc<Self>) -> Arc<dyn Consumer> {
        self
    }
}

/// The read model of `P`, typed for its handlers, whichever its storage.
pub struct Model<P: RowProjection> {
    inner: Arc<dyn ModelReads>,
    _projection: PhantomData<fn() -> P>,
}

impl<P: RowProjection> Clone for Model<P> {
    fn clone(&self) -> Self {
        Model {
            inner: self.inner.clone(),
            _projection: PhantomData,
        }
    }
}

impl<P: RowProjection> Model<P> {
    pub fn new<S: Storage>(model: Arc<ReadModel<P, S>>) -> Self {
        Model {
            inner: model,
            _projection: PhantomData,
        }
    }

    /// Runs `f` in one read transaction of the model, with the checkpoint
    /// it reflects.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Db, u64) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let out = self
            .inner
            .read_any(Box::new(move |db, checkpoint| {
                f(db, checkpoint).map(|t| Box::new(t) as Box<dyn Any + Send>)
            }))
            .await?;
        out.downcast::<T>()
            .map(|t| *t)
            .map_err(|_| StoreError::Backend(format!("read model {}: a read returned another type", P::NAME)))
    }

    /// Waits until the model has reached `min_position`, at most `limit`.
    pub async fn wait_for(&self, min_position: u64, limit: Duration) -> Result<u64, StoreError> {
        self.inner.wait_for(min_position, limit).await
    }

    /// As the runner sees it.
    pub fn consumer(&self) -> Arc<dyn Consumer> {
        self.inner.clone().as_consumer()
    }
}

impl<P: RowProjection> std::ops::Deref for Model<P> {
    type Target = dyn ModelReads;

    fn deref(&self) -> &dyn ModelReads {
        &*self.inner
    }
}
