//! Read models as keyed rows folded from the log: the one seam every domain's
//! projection plugs into, and the one runner that keeps them all.
//!
//! A domain writes a [`RowProjection`]: which categories it reads, its tables,
//! how an event folds into one keyed row in memory (through the borrowed
//! [`EventRef`]), how a row is loaded and written, and which resources changed
//! between two positions (rendered once, for every subscriber). Everything else
//! is here, the same for every projection:
//!
//! - its own SQLite file `<data>/readmodels/<NAME>.db` (so projections never
//!   contend with the event writer, nor with each other), recreated empty at
//!   checkpoint 0 when [`RowProjection::VERSION`] changes;
//! - the checkpoint, written in the same transaction as the rows; an apply only
//!   happens when the checkpoint is still the one the caller read, so another
//!   process (a rebuild while `herald serve` runs) cannot make it apply events
//!   twice or skip some;
//! - [`ReadModel::process_next`]: read a page of the log after the checkpoint,
//!   fold, write, move the checkpoint;
//! - [`ReadModel::changed`]: what changed after a position, for resource streams;
//! - [`ReadModel::rebuild`]: reset and replay the whole log fast (a scan of the
//!   log's file, folds on threads sharded by row key, one writer).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::envelope::RecordedEvent;
use herald_core::event_ref::EventRef;
use herald_core::store::{EventStore, Filter, StoreError};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::scan::Scanner;
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
/// on a blocking thread, inside a transaction the runner opened.
pub trait RowProjection: Send + Sync + 'static {
    /// Its name: the file `readmodels/<NAME>.db`, the metric label, the name
    /// `herald projections rebuild NAME` takes.
    const NAME: &'static str;
    /// The stream categories it reads (the log is read filtered by them).
    const CATEGORIES: &'static [&'static str];
    /// The format of its tables: a file with another version is recreated
    /// empty and replayed from the log.
    const VERSION: i64;
    /// `CREATE TABLE IF NOT EXISTS …` (and indexes) of its tables.
    const SCHEMA: &'static str;
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
    fn load(conn: &Connection, key: &str) -> Result<Option<Self::Row>, StoreError>;

    /// What to write for a changed row; afterwards `row` takes what was written
    /// as its new baseline (for diffs).
    fn prepare(key: &str, row: &mut Self::Row) -> Result<Self::Write, StoreError>;

    /// Writes one prepared row (inside the runner's transaction). Writes of
    /// different keys in one transaction come in no particular order: what
    /// they share (a count) must be updated commutatively.
    fn write(conn: &Connection, key: &str, write: &Self::Write) -> Result<(), StoreError>;

    /// Writes the prepared rows of one transaction (distinct keys, in no
    /// particular order); by default [`write`](Self::write) for each. A
    /// projection whose rows share rows of their own (a count) may merge
    /// their shares here, one write per shared row: the outcome must be the
    /// one of writing them one by one, whatever rows come together.
    fn write_all(conn: &Connection, rows: &[(Box<str>, Self::Write)]) -> Result<(), StoreError> {
        for (key, write) in rows {
            Self::write(conn, key, write)?;
        }
        Ok(())
    }

    /// The resources changed by events in `(after, until]`, rendered, at most
    /// about `limit` of them (read in the runner's read transaction, `until`
    /// being the checkpoint it read).
    fn changed(conn: &Connection, after: u64, until: u64, limit: usize) -> Result<Changed, StoreError>;
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

/// The last log position the model in `conn` reflects (0 = none).
pub fn read_checkpoint(conn: &Connection) -> Result<u64, StoreError> {
    let position: Option<i64> = conn
        .prepare_cached("SELECT position FROM checkpoint WHERE id = 1")
        .map_err(backend)?
        .query_row([], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    Ok(position.map_or(0, |p| p as u64))
}

/// Rows per statement of [`insert_rows`].
const ROWS_PER_STATEMENT: usize = 64;

/// Writes `rows` with statements of many rows each (a page's rows cost a
/// fraction of one statement each): `head`, then `(?, …)` of `columns`
/// parameters per row, then `tail` (an `ON CONFLICT` clause, say). `bind`
/// binds one row's parameters, the first at index `first` (1-based).
pub fn insert_rows<T>(
    conn: &Connection,
    head: &str,
    columns: usize,
    tail: &str,
    rows: &[T],
    bind: impl Fn(&mut rusqlite::Statement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> Result<(), StoreError> {
    let sql = |n: usize| {
        let row = format!("({})", vec!["?"; columns].join(", "));
        format!("{head} {} {tail}", vec![row; n].join(", "))
    };
    let mut chunks = rows.chunks_exact(ROWS_PER_STATEMENT);
    if chunks.len() > 0 {
        let mut stmt = conn.prepare_cached(&sql(ROWS_PER_STATEMENT)).map_err(backend)?;
        for chunk in &mut chunks {
            for (i, row) in chunk.iter().enumerate() {
                bind(&mut stmt, 1 + i * columns, row).map_err(backend)?;
            }
            stmt.raw_execute().map_err(backend)?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut stmt = conn.prepare_cached(&sql(1)).map_err(backend)?;
        for row in rest {
            bind(&mut stmt, 1, row).map_err(backend)?;
            stmt.raw_execute().map_err(backend)?;
        }
    }
    Ok(())
}

pub(crate) fn write_checkpoint(conn: &Connection, position: u64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE checkpoint SET position = ?1 WHERE id = 1")
        .map_err(backend)?
        .execute(params![position as i64])
        .map_err(backend)?;
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
    /// Reads up to `page` events after the checkpoint and applies them.
    async fn process_next(&self, store: &Arc<dyn EventStore>, page: usize) -> Result<Step, StoreError>;
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

/// The read model of `P` in `<data>/readmodels/<NAME>.db`.
pub struct ReadModel<P: RowProjection> {
    path: PathBuf,
    /// The only writing connection of this process.
    writer: Arc<Mutex<Connection>>,
    readers: ReaderPool,
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

impl<P: RowProjection> std::fmt::Debug for ReadModel<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("name", &P::NAME)
            .field("path", &self.path)
            .finish()
    }
}

impl<P: RowProjection> ReadModel<P> {
    /// Opens (creating if needed) the model in the data directory `dir`; a file
    /// of another [`RowProjection::VERSION`] is emptied to checkpoint 0.
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
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
        Ok(Arc::new(ReadModel {
            readers: ReaderPool::new(path.clone(), IDLE_READERS, true),
            path,
            writer: Arc::new(Mutex::new(conn)),
            filter: Filter {
                categories: P::CATEGORIES.iter().map(|c| (*c).to_owned()).collect(),
                ..Filter::default()
            },
            skipped: Mutex::default(),
            _projection: PhantomData,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last log position the model reflects (0 = none).
    pub async fn checkpoint(&self) -> Result<u64, StoreError> {
        let stored = self.stored_checkpoint().await?;
        Ok(self.effective(stored))
    }

    /// The checkpoint as stored in the file.
    async fn stored_checkpoint(&self) -> Result<u64, StoreError> {
        self.readers.run(read_checkpoint).await
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
        f: impl FnOnce(&Connection, u64) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let skipped = *self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        self.readers
            .run(move |conn| {
                let tx = conn.unchecked_transaction().map_err(backend)?;
                let checkpoint = read_checkpoint(&tx)?;
                let out = f(&tx, skipped.effective(checkpoint))?;
                tx.commit().map_err(backend)?;
                Ok(out)
            })
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
        self.write(reset_tables::<P>).await
    }

    /// Forgets what [`Self::note_unrelated`] noted (before the rebuild's
    /// writer thread resets the tables itself, with [`reset_tables`]).
    pub(crate) fn forget_skipped(&self) {
        self.remember(0, 0);
    }

    /// Applies `events` (of any categories: others are skipped) and moves the
    /// checkpoint from `expected` to `new` in the same transaction. `false`
    /// (and nothing changed) when the stored checkpoint is not `expected`.
    pub async fn apply(&self, expected: u64, new: u64, events: Vec<Arc<RecordedEvent>>) -> Result<bool, StoreError> {
        self.write(move |conn| apply::<P>(conn, expected, new, &events)).await
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read model write task failed: {e}")))?
    }

    pub(crate) async fn step(&self, store: &Arc<dyn EventStore>, page: usize) -> Result<Step, StoreError> {
        const ATTEMPTS: usize = 3;
        let mut stored = self.stored_checkpoint().await?;
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
            stored = self.stored_checkpoint().await?;
            checkpoint = self.effective(stored);
        }
        Ok(Step {
            read: 0,
            checkpoint,
            head,
        })
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

fn load_slot<P: RowProjection>(conn: &Connection, key: &str) -> Result<Slot<P::Row>, StoreError> {
    Ok(Slot {
        row: P::load(conn, key)?,
        changed: false,
    })
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
    write_checkpoint(&tx, 0)?;
    tx.commit().map_err(backend)
}

fn apply<P: RowProjection>(
    conn: &mut Connection,
    expected: u64,
    new: u64,
    events: &[Arc<RecordedEvent>],
) -> Result<bool, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    if read_checkpoint(&tx)? != expected {
        return Ok(false); // dropping `tx` rolls back (nothing was written)
    }
    let mut slots: HashMap<Box<str>, Slot<P::Row>> = HashMap::new();
    let mut order: Vec<Box<str>> = Vec::new();
    for event in events {
        let Some(key) = P::key(event.stream()) else {
            continue;
        };
        if !slots.contains_key(key) {
            let slot = load_slot::<P>(&tx, key)?;
            slots.insert(key.into(), slot);
            order.push(key.into());
        }
        let Some(slot) = slots.get_mut(key) else {
            continue; // inserted just above
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
    P::write_all(&tx, &writes)?;
    write_checkpoint(&tx, new)?;
    tx.commit().map_err(backend)?;
    Ok(true)
}

#[async_trait]
impl<P: RowProjection> Consumer for ReadModel<P> {
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

    async fn process_next(&self, store: &Arc<dyn EventStore>, page: usize) -> Result<Step, StoreError> {
        self.step(store, page).await
    }

    async fn changed(&self, after: u64, limit: usize) -> Result<ChangedPage, StoreError> {
        let limit = limit.max(1);
        self.read(move |conn, checkpoint| {
            if checkpoint <= after {
                return Ok(ChangedPage {
                    resources: Vec::new(),
                    position: after,
                    checkpoint,
                });
            }
            let changed = P::changed(conn, after, checkpoint, limit)?;
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
        crate::rebuild::rebuild::<P>(self, source, REBUILD_PAGE, progress).await
    }
}

impl<P: RowProjection> ReadModel<P> {
    /// [`Consumer::rebuild`] with pages of `page` events (tests use small ones).
    pub async fn rebuild_with_page(
        &self,
        source: Arc<dyn RebuildSource>,
        page: usize,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<u64, StoreError> {
        crate::rebuild::rebuild::<P>(self, source, page, progress).await
    }

    pub(crate) fn writer(&self) -> Arc<Mutex<Connection>> {
        self.writer.clone()
    }

    pub(crate) fn filter(&self) -> &Filter {
        &self.filter
    }
}
