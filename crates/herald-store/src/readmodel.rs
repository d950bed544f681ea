//! The deployments read model (API.md §5 `GET /api/deployments`), kept in its own
//! SQLite file (`<data dir>/readmodels.db`) so the projector never contends with
//! the event writer for the log's write lock.
//!
//! - Rows are [`DeploymentView`]s as JSON, keyed by deployment id, with the
//!   status and the position of the `DeploymentStarted` event as columns to
//!   filter and order by.
//! - A checkpoint (the last log position the model reflects) is written in the
//!   same transaction as the rows, so the two never disagree, and an apply only
//!   happens when the checkpoint is still the one the caller read: a second
//!   process (`herald projections rebuild` while `herald serve` runs) cannot
//!   make either of them apply events twice or skip some.
//! - Each row also records the log position of the last event that changed it
//!   (`updated_position`, indexed), so any process can find what changed
//!   between two checkpoints, whoever applied it ([`SqliteDeployments::changed`]).
//! - The model is derived data: when its format changes ([`MODEL_VERSION`]) the
//!   tables are migrated when a migration exists (version 1 → 2 adds
//!   `updated_position`), otherwise recreated empty at checkpoint 0 and the
//!   projector replays the log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use herald_core::deployment::DeploymentStatus;
use herald_core::deployment_view::{CATEGORY, DeploymentView, deployment_id};
use herald_core::envelope::RecordedEvent;
use herald_core::store::{EventStore, Filter, StoreError};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::scan::Scanner;
use crate::sqlite::{ReaderPool, SqliteStore, open_connection};

/// The read models' database file inside the data directory.
pub const READMODELS_FILE: &str = "readmodels.db";

/// Events read (and written) per page by [`rebuild`].
pub const REBUILD_PAGE: usize = 10_000;

/// The format of the tables below; a file with another version is recreated.
pub const MODEL_VERSION: i64 = 2;

/// The checkpoint's name in `checkpoints`.
const CHECKPOINT: &str = "deployments";

/// Read connections kept open between reads.
/// Concurrent read connections.
const IDLE_READERS: usize = 8;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS deployments (
    id               TEXT PRIMARY KEY,
    status           TEXT NOT NULL,
    started_position INTEGER NOT NULL,
    view             TEXT NOT NULL,
    updated_position INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deployments_status ON deployments (status, started_position);
CREATE INDEX IF NOT EXISTS deployments_started ON deployments (started_position);
CREATE INDEX IF NOT EXISTS deployments_updated ON deployments (updated_position);
CREATE TABLE IF NOT EXISTS checkpoints (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT OR IGNORE INTO checkpoints (name, position) VALUES ('deployments', 0);
"#;

const DROP: &str = "DROP TABLE IF EXISTS deployments; DROP TABLE IF EXISTS checkpoints;";

/// Version 1 → 2: rows learn the position of their last change. What changed
/// them before is not known any more; the checkpoint is an upper bound (so a
/// query for changes after an older position finds them rather than missing them).
const MIGRATE_1_TO_2: &str = "ALTER TABLE deployments ADD COLUMN updated_position INTEGER NOT NULL DEFAULT 0;
UPDATE deployments SET updated_position =
    COALESCE((SELECT position FROM checkpoints WHERE name = 'deployments'), 0);";

/// Rows read per [`SqliteDeployments::changed`] call at most.
pub const CHANGED_PAGE: usize = 1000;

/// A deployments row changed within some range of log positions, its view as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedRow {
    pub id: String,
    /// The position of the last event that changed it.
    pub updated_position: u64,
    /// The [`DeploymentView`] as JSON (what `serde_json::to_string` gives).
    pub view: String,
}

impl ChangedRow {
    pub fn parse(&self) -> Result<DeploymentView, StoreError> {
        parse_view(&self.id, &self.view)
    }
}

/// What [`SqliteDeployments::changed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// Rows changed after the position asked for, by `updated_position` ascending
    /// (positions are unique: an event changes one deployment).
    pub rows: Vec<ChangedRow>,
    /// The position every row changed at or before is in `rows` up to: the
    /// checkpoint (read in the same transaction) when they all fit, else the last
    /// row's `updated_position`. Never below the position asked for.
    pub position: u64,
    /// The model's checkpoint, read in the same transaction as the rows.
    pub checkpoint: u64,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The deployments read model in `<dir>/readmodels.db`.
pub struct SqliteDeployments {
    path: PathBuf,
    /// The only writing connection of this process.
    writer: Arc<Mutex<Connection>>,
    /// Read-only connections, opened on demand and reused.
    readers: ReaderPool,
}

impl std::fmt::Debug for SqliteDeployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDeployments").field("path", &self.path).finish()
    }
}

impl SqliteDeployments {
    /// Opens (creating if needed) the read model in `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create data directory {}: {e}", dir.display())))?;
        let path = dir.join(READMODELS_FILE);
        let mut conn = open_connection(&path, false)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(backend)?;
        if version == 1 {
            tracing::info!(from = version, to = MODEL_VERSION, "migrating the read model");
            tx.execute_batch(MIGRATE_1_TO_2).map_err(backend)?;
            tx.pragma_update(None, "user_version", MODEL_VERSION).map_err(backend)?;
        } else if version != MODEL_VERSION {
            if version != 0 {
                tracing::info!(
                    from = version,
                    to = MODEL_VERSION,
                    "read model format changed: rebuilding it from the log"
                );
            }
            tx.execute_batch(DROP).map_err(backend)?;
            tx.pragma_update(None, "user_version", MODEL_VERSION).map_err(backend)?;
        }
        tx.execute_batch(SCHEMA).map_err(backend)?;
        tx.commit().map_err(backend)?;
        // A read model needs atomic commits (rows with their checkpoint), not
        // durable ones: after a power cut it may be a few commits behind and
        // catches up from the log, which is durable. So no fsync per apply
        // (WAL mode syncs at checkpoints), which would compete with the event
        // writer's own on the same disk.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
        Ok(Arc::new(SqliteDeployments {
            readers: ReaderPool::new(path.clone(), IDLE_READERS, true),
            path,
            writer: Arc::new(Mutex::new(conn)),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last log position the model reflects (0 = none).
    pub async fn checkpoint(&self) -> Result<u64, StoreError> {
        self.read(read_checkpoint).await
    }

    /// Applies events (any categories; non-deployment ones are skipped) and moves
    /// the checkpoint from `expected_checkpoint` to `new_checkpoint` in the same
    /// transaction as the rows.
    ///
    /// Returns `Ok(None)` and changes nothing when the stored checkpoint is not
    /// `expected_checkpoint` (another process reset or advanced it); otherwise
    /// the changed views, in the order of their first change, one per changed
    /// deployment, in its final state.
    pub async fn apply(
        &self,
        expected_checkpoint: u64,
        new_checkpoint: u64,
        events: Vec<Arc<RecordedEvent>>,
    ) -> Result<Option<Vec<DeploymentView>>, StoreError> {
        self.apply_events(expected_checkpoint, new_checkpoint, events, true)
            .await
    }

    /// [`apply`](Self::apply); with `collect` false the changed views are not
    /// returned (the list is empty), which saves a rebuild their copies.
    async fn apply_events(
        &self,
        expected_checkpoint: u64,
        new_checkpoint: u64,
        events: Vec<Arc<RecordedEvent>>,
        collect: bool,
    ) -> Result<Option<Vec<DeploymentView>>, StoreError> {
        self.write(move |conn| apply(conn, expected_checkpoint, new_checkpoint, &events, collect))
            .await
    }

    pub async fn get(&self, id: &str) -> Result<Option<DeploymentView>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let json: Option<String> = conn
                .prepare_cached("SELECT view FROM deployments WHERE id = ?1")
                .map_err(backend)?
                .query_row([&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            json.map(|json| parse_view(&id, &json)).transpose()
        })
        .await
    }

    /// Deployments (with `status`, when given), the most recently started first,
    /// at most `limit`; and the checkpoint, read in the same read transaction.
    pub async fn list(
        &self,
        status: Option<DeploymentStatus>,
        limit: usize,
    ) -> Result<(Vec<DeploymentView>, u64), StoreError> {
        self.read(move |conn| {
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows: Vec<(String, String)> = match status {
                Some(status) => tx
                    .prepare_cached(
                        "SELECT id, view FROM deployments WHERE status = ?1
                         ORDER BY started_position DESC LIMIT ?2",
                    )
                    .map_err(backend)?
                    .query_map(params![status.as_str(), limit], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(backend)?
                    .collect::<Result<_, _>>(),
                None => tx
                    .prepare_cached("SELECT id, view FROM deployments ORDER BY started_position DESC LIMIT ?1")
                    .map_err(backend)?
                    .query_map([limit], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(backend)?
                    .collect::<Result<_, _>>(),
            }
            .map_err(backend)?;
            let checkpoint = read_checkpoint(&tx)?;
            tx.commit().map_err(backend)?;
            let views = rows
                .iter()
                .map(|(id, json)| parse_view(id, json))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((views, checkpoint))
        })
        .await
    }

    /// The rows changed after log position `after` (by index on
    /// `updated_position`, at most `limit`, oldest change first), with the
    /// checkpoint, in one read transaction: whoever applied the changes, this
    /// process or another one.
    ///
    /// When the checkpoint is not above `after` (nothing new, or a rebuild
    /// started over) nothing is returned and `position` is `after`.
    pub async fn changed(&self, after: u64, limit: usize) -> Result<Changed, StoreError> {
        let limit = limit.max(1);
        self.read(move |conn| {
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let checkpoint = read_checkpoint(&tx)?;
            if checkpoint <= after {
                return Ok(Changed {
                    rows: Vec::new(),
                    position: after,
                    checkpoint,
                });
            }
            let rows: Vec<ChangedRow> = tx
                .prepare_cached(
                    "SELECT id, updated_position, view FROM deployments
                     WHERE updated_position > ?1 AND updated_position <= ?2
                     ORDER BY updated_position LIMIT ?3",
                )
                .map_err(backend)?
                .query_map(
                    params![
                        after as i64,
                        checkpoint as i64,
                        i64::try_from(limit).unwrap_or(i64::MAX)
                    ],
                    |r| {
                        Ok(ChangedRow {
                            id: r.get(0)?,
                            updated_position: r.get::<_, i64>(1)? as u64,
                            view: r.get(2)?,
                        })
                    },
                )
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            let position = match rows.last() {
                Some(last) if rows.len() >= limit => last.updated_position,
                _ => checkpoint,
            };
            Ok(Changed {
                rows,
                position,
                checkpoint,
            })
        })
        .await
    }

    /// Deletes every row and sets the checkpoint to 0, in one transaction.
    pub async fn reset(&self) -> Result<(), StoreError> {
        self.write(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            tx.execute("DELETE FROM deployments", []).map_err(backend)?;
            write_checkpoint(&tx, 0)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    /// Runs `f` on the writing connection, on a blocking thread.
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

    /// Runs `f` on a pooled read-only connection, on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.readers.run(f).await
    }
}

fn parse_view(id: &str, json: &str) -> Result<DeploymentView, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("read model row for deployment {id}: {e}")))
}

fn read_checkpoint(conn: &Connection) -> Result<u64, StoreError> {
    let position: Option<i64> = conn
        .prepare_cached("SELECT position FROM checkpoints WHERE name = ?1")
        .map_err(backend)?
        .query_row([CHECKPOINT], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    Ok(position.map_or(0, |p| p as u64))
}

fn write_checkpoint(conn: &Connection, position: u64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO checkpoints (name, position) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
    )
    .map_err(backend)?
    .execute(params![CHECKPOINT, position as i64])
    .map_err(backend)?;
    Ok(())
}

/// A deployment touched by one apply: loaded at most once, written at most once.
#[derive(Default)]
struct Slot {
    view: Option<DeploymentView>,
    started_position: u64,
    /// The position of the last event that changed the view.
    updated_position: u64,
    changed: bool,
}

impl Slot {
    /// Folds the event at `position` (its envelope `json`) into the view;
    /// returns whether the view changed (and marks the slot changed).
    fn fold(&mut self, json: &str, position: u64) -> Result<bool, serde_json::Error> {
        let before = self.view.as_ref().map(|v| v.stream_version);
        DeploymentView::fold_json(&mut self.view, json)?;
        if self.view.as_ref().map(|v| v.stream_version) == before {
            return Ok(false); // not a change (another type, already applied, …)
        }
        if before.is_none() {
            self.started_position = position;
        }
        self.updated_position = position;
        self.changed = true;
        Ok(true)
    }
}

/// Writes a deployment's row, whether it is new or not.
const UPSERT: &str = "INSERT INTO deployments (id, status, started_position, view, updated_position)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (id) DO UPDATE SET
         status = excluded.status, started_position = excluded.started_position, view = excluded.view,
         updated_position = excluded.updated_position";

fn apply(
    conn: &mut Connection,
    expected_checkpoint: u64,
    new_checkpoint: u64,
    events: &[Arc<RecordedEvent>],
    collect: bool,
) -> Result<Option<Vec<DeploymentView>>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    if read_checkpoint(&tx)? != expected_checkpoint {
        return Ok(None); // dropping `tx` rolls back (nothing was written)
    }
    let mut slots: HashMap<String, Slot> = HashMap::new();
    // Changed deployments in the order of their first change.
    let mut order: Vec<String> = Vec::new();
    for event in events {
        let Some(id) = deployment_id(event.stream()) else {
            continue;
        };
        // Looked up by `&str` first: no key allocated per event.
        if !slots.contains_key(id) {
            let slot = load_slot(&tx, id)?;
            slots.insert(id.to_owned(), slot);
        }
        let Some(slot) = slots.get_mut(id) else {
            continue; // inserted just above
        };
        let was_changed = slot.changed;
        // Text that is not UTF-8 is not an envelope either.
        let folded = std::str::from_utf8(event.json())
            .map_err(|e| e.to_string())
            .and_then(|json| slot.fold(json, event.position()).map_err(|e| e.to_string()));
        match folded {
            Ok(true) if !was_changed => order.push(id.to_owned()),
            Ok(_) => {}
            // The audit (hash chain) reports a damaged log; the model goes on.
            Err(e) => tracing::warn!(position = event.position(), error = %e, "skipping an unreadable event"),
        }
    }
    {
        let mut upsert = tx.prepare_cached(UPSERT).map_err(backend)?;
        for id in &order {
            let Some(Slot {
                view: Some(view),
                started_position,
                updated_position,
                ..
            }) = slots.get(id)
            else {
                continue; // a changed deployment always has a view
            };
            let json = serde_json::to_string(view).map_err(backend)?;
            upsert
                .execute(params![
                    id,
                    view.status.as_str(),
                    *started_position as i64,
                    json,
                    *updated_position as i64
                ])
                .map_err(backend)?;
        }
    }
    write_checkpoint(&tx, new_checkpoint)?;
    tx.commit().map_err(backend)?;
    if !collect {
        return Ok(Some(Vec::new()));
    }
    Ok(Some(
        order
            .iter()
            .filter_map(|id| slots.remove(id).and_then(|slot| slot.view))
            .collect(),
    ))
}

/// The outcome of one [`Projector::process_next`].
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Deployment events read from the log (and applied) in this step.
    pub read: usize,
    /// The model's checkpoint after the step.
    pub checkpoint: u64,
    /// The log's head when the page was read: caught up when `checkpoint >= head`.
    pub head: u64,
    /// The deployments this step changed, in their final state.
    pub changed: Vec<DeploymentView>,
}

impl Step {
    /// Whether the model had reflected the whole log as of this step.
    pub fn caught_up(&self) -> bool {
        self.checkpoint >= self.head
    }
}

/// Moves the deployments read model along the event log, a page at a time.
pub struct Projector {
    store: Arc<dyn EventStore>,
    model: Arc<SqliteDeployments>,
    filter: Filter,
}

impl Projector {
    pub fn new(store: Arc<dyn EventStore>, model: Arc<SqliteDeployments>) -> Self {
        Projector {
            store,
            model,
            filter: Filter {
                categories: vec![CATEGORY.to_owned()],
                ..Filter::default()
            },
        }
    }

    /// One step: reads up to `page` deployment events after the stored checkpoint
    /// and applies them, moving the checkpoint to the page's `next_after` (past
    /// events of other categories too).
    ///
    /// When another process moves the checkpoint between the read and the apply
    /// the step starts again from the new checkpoint (a few times; then it
    /// returns a step that read nothing, with the checkpoint it found).
    pub async fn process_next(&mut self, page: usize) -> Result<Step, StoreError> {
        self.step(page, true).await
    }

    async fn step(&mut self, page: usize, collect: bool) -> Result<Step, StoreError> {
        const ATTEMPTS: usize = 3;
        let mut checkpoint = self.model.checkpoint().await?;
        let mut head = checkpoint;
        for _ in 0..ATTEMPTS {
            let found = self.store.read_all(checkpoint, &self.filter, page).await?;
            head = found.head;
            if found.events.is_empty() && found.next_after == checkpoint {
                // Caught up (or asked for nothing): nothing to write.
                return Ok(Step {
                    read: 0,
                    checkpoint,
                    head,
                    changed: Vec::new(),
                });
            }
            let read = found.events.len();
            let next = found.next_after;
            match self.model.apply_events(checkpoint, next, found.events, collect).await? {
                Some(changed) => {
                    return Ok(Step {
                        read,
                        checkpoint: next,
                        head,
                        changed,
                    });
                }
                None => {
                    tracing::debug!(
                        expected = checkpoint,
                        "read model checkpoint moved by someone else; reading again"
                    );
                    checkpoint = self.model.checkpoint().await?;
                }
            }
        }
        Ok(Step {
            read: 0,
            checkpoint,
            head,
            changed: Vec::new(),
        })
    }
}

/// What [`rebuild`] reads the log from: any [`EventStore`], and the SQLite
/// store through a faster path (a streaming scan of its file).
pub trait RebuildSource: Send + Sync + 'static {
    fn into_event_store(self: Arc<Self>) -> Arc<dyn EventStore>;

    /// A scanner of the log's file, when the store has one.
    fn scanner(&self) -> Option<Result<Scanner, StoreError>> {
        None
    }
}

impl RebuildSource for SqliteStore {
    fn into_event_store(self: Arc<Self>) -> Arc<dyn EventStore> {
        self
    }

    fn scanner(&self) -> Option<Result<Scanner, StoreError>> {
        Some(Scanner::open(self))
    }
}

impl RebuildSource for dyn EventStore {
    fn into_event_store(self: Arc<Self>) -> Arc<dyn EventStore> {
        self
    }
}

/// Resets the model and replays the whole log, writing every [`REBUILD_PAGE`]
/// events; calls `progress(checkpoint, head)` after each write. Returns the
/// number of (deployment) events applied.
pub async fn rebuild<S: RebuildSource + ?Sized>(
    store: Arc<S>,
    model: Arc<SqliteDeployments>,
    progress: impl FnMut(u64, u64),
) -> Result<u64, StoreError> {
    rebuild_with_page(store, model, REBUILD_PAGE, progress).await
}

/// [`rebuild`] with pages of `page` events (at least 1).
pub async fn rebuild_with_page<S: RebuildSource + ?Sized>(
    store: Arc<S>,
    model: Arc<SqliteDeployments>,
    page: usize,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, StoreError> {
    let scanner = store.scanner().transpose()?;
    let store = store.into_event_store();
    let started = std::time::Instant::now();
    let page = page.max(1);
    let mut projector = Projector::new(store.clone(), model.clone());
    let (mut applied, moved) = match scanner {
        // (It resets the model while it scans the first page.)
        Some(scanner) => replay(scanner, &model, page, &mut progress).await?,
        None => {
            model.reset().await?;
            replay_pages(&store, &model, page, &mut progress).await?
        }
    };
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "rebuild: replayed");
    if !moved && projector.model.checkpoint().await? >= store.head().await?.position {
        return Ok(applied);
    }
    // Another process moved the checkpoint, or the log grew: go on a step at a time.
    loop {
        let step = projector.step(page, false).await?;
        applied += step.read as u64;
        if step.read > 0 || moved {
            progress(step.checkpoint, step.head);
        }
        if step.caught_up() {
            return Ok(applied);
        }
    }
}

/// Replays the log through [`EventStore::read_all`], a page per transaction,
/// the next page read while the previous one is applied. Returns the events
/// applied and whether another process moved the checkpoint (which stops it).
async fn replay_pages(
    store: &Arc<dyn EventStore>,
    model: &Arc<SqliteDeployments>,
    page: usize,
    progress: &mut impl FnMut(u64, u64),
) -> Result<(u64, bool), StoreError> {
    let filter = Filter {
        categories: vec![CATEGORY.to_owned()],
        ..Filter::default()
    };
    let read = |after: u64| {
        let store = store.clone();
        let filter = filter.clone();
        tokio::spawn(async move { store.read_all(after, &filter, page).await })
    };
    let mut applied = 0u64;
    let mut checkpoint = 0u64;
    let mut next = read(checkpoint);
    loop {
        let found = next
            .await
            .map_err(|e| StoreError::Backend(format!("rebuild read task failed: {e}")))??;
        let (head, next_after) = (found.head, found.next_after);
        if found.events.is_empty() && next_after == checkpoint {
            progress(checkpoint, head);
            return Ok((applied, false)); // caught up
        }
        next = read(next_after.min(head));
        let count = found.events.len() as u64;
        match model.apply_events(checkpoint, next_after, found.events, false).await? {
            Some(_) => {
                applied += count;
                checkpoint = next_after;
                progress(checkpoint, head);
                if checkpoint >= head {
                    next.abort();
                    return Ok((applied, false));
                }
            }
            None => {
                next.abort();
                return Ok((applied, true));
            }
        }
    }
}

/// Chunks a rebuild allocates (being scanned, queued, being folded).
const CHUNKS: usize = 3;

/// Rows the rebuild scanned, their text copied into one buffer.
#[derive(Default)]
struct Chunk {
    text: String,
    rows: Vec<ChunkRow>,
    /// Events of the deployment category scanned (what a rebuild counts).
    events: u64,
    /// The position the model reflects once this chunk is applied.
    end: u64,
    head: u64,
}

/// A deployment event in a [`Chunk`].
struct ChunkRow {
    position: u64,
    version: u64,
    /// The fold thread of its deployment.
    shard: usize,
    id: std::ops::Range<usize>,
    json: std::ops::Range<usize>,
}

impl Chunk {
    // `text` only holds whole `&str`s.
    fn id(&self, row: &ChunkRow) -> &str {
        self.text.get(row.id.clone()).unwrap_or_default()
    }
    fn json(&self, row: &ChunkRow) -> &str {
        self.text.get(row.json.clone()).unwrap_or_default()
    }
}

/// A row of the model, its view serialized.
struct Row {
    id: Box<str>,
    status: DeploymentStatus,
    started_position: u64,
    updated_position: u64,
    view: String,
}

/// The rows one flush writes (changed deployments, sorted by id), and the checkpoint it moves to.
struct Flush {
    rows: Vec<Row>,
    events: u64,
    end: u64,
    head: u64,
}

fn stage_failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("rebuild stage failed: {e}"))
}

/// Replays the log from an empty model, in stages on their own threads: one
/// scans the log's file (`page` rows at a time, copied into a [`Chunk`]);
/// [`FOLDERS`] parse and fold each chunk into views in memory, each the
/// deployments of its shard; one writes each chunk's changed deployments, once
/// each, with the checkpoint, in one transaction. Returns the events applied
/// and whether another process moved the checkpoint (which stops it).
async fn replay(
    scanner: Scanner,
    model: &Arc<SqliteDeployments>,
    page: usize,
    progress: &mut impl FnMut(u64, u64),
) -> Result<(u64, bool), StoreError> {
    // Chunks in flight are bounded (a pool of CHUNKS), and so are flushes
    // (handed over only when the writer is idle).
    let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel::<Arc<Chunk>>(CHUNKS * FOLDERS);
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let (chunk_txs, chunk_rxs): (Vec<_>, Vec<_>) = (0..FOLDERS)
        .map(|_| std::sync::mpsc::sync_channel::<Arc<Chunk>>(1))
        .unzip();
    // The log is scanned while the model is reset; nothing reads the model
    // (the fold threads) or writes it before the reset is done.
    let scan = tokio::task::spawn_blocking(move || scan_stage(&scanner, page, &chunk_txs, &spent_rx));
    let started = std::time::Instant::now();
    model.reset().await?; // on an error the scan stops: its chunks have nowhere to go
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "rebuild: model reset");
    let mut flush_rxs = Vec::new();
    let mut folds = Vec::new();
    for (shard, chunk_rx) in chunk_rxs.into_iter().enumerate() {
        let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel::<Flush>(0);
        flush_rxs.push(flush_rx);
        let path = model.path().to_owned();
        let spent = spent_tx.clone();
        folds.push(tokio::task::spawn_blocking(move || {
            fold_stage(&path, shard, &chunk_rx, &spent, &flush_tx)
        }));
    }
    drop(spent_tx);
    let writer = model.writer.clone();
    let write = tokio::task::spawn_blocking(move || {
        let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
        // Commits in between need not reach the disk: each is atomic (the
        // checkpoint with its rows) whatever the setting, and the last one,
        // synced, makes every one before it durable.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
        let written = write_stage(&mut conn, &flush_rxs, &progress_tx);
        let restored = conn.pragma_update(None, "synchronous", "NORMAL").map_err(backend);
        let written = written?;
        restored?;
        Ok::<_, StoreError>(written)
    });
    while let Some((checkpoint, head)) = progress_rx.recv().await {
        progress(checkpoint, head);
    }
    let written = write.await.map_err(stage_failed)?;
    let mut folded = Vec::new();
    for fold in folds {
        folded.push(fold.await.map_err(stage_failed)?);
    }
    let scanned = scan.await.map_err(stage_failed)?;
    let (applied, moved) = written?;
    if !moved {
        // A stage that stopped early stops the ones after it: its error is the cause.
        scanned?;
        for folded in folded {
            folded?;
        }
    }
    Ok((applied, moved))
}

/// Threads folding chunks, each for a shard of the deployments.
const FOLDERS: usize = 2;

/// The fold thread of deployment `id`.
fn shard_of(id: &str) -> usize {
    // FNV-1a: cheap and stable.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % FOLDERS as u64) as usize
}

fn scan_stage(
    scanner: &Scanner,
    page: usize,
    chunks: &[std::sync::mpsc::SyncSender<Arc<Chunk>>],
    spent: &std::sync::mpsc::Receiver<Arc<Chunk>>,
) -> Result<(), StoreError> {
    let head = scanner.head()?;
    let mut after = 0;
    let mut allocated = 0;
    let mut busy = std::time::Duration::ZERO;
    loop {
        // A pool of CHUNKS buffers, reused (fresh memory costs page faults):
        // one is free again once every fold thread has sent it back.
        let mut chunk = if allocated < CHUNKS {
            allocated += 1;
            Chunk::default()
        } else {
            loop {
                match spent.recv() {
                    Ok(chunk) => {
                        if let Ok(chunk) = Arc::try_unwrap(chunk) {
                            break chunk;
                        }
                    }
                    Err(_) => return Ok(()), // the fold threads stopped
                }
            }
        };
        let started = std::time::Instant::now();
        chunk.text.clear();
        chunk.rows.clear();
        chunk.events = 0;
        chunk.head = head;
        let mut last = after;
        let scanned = scanner.scan(after, head, page, |row| {
            last = row.position;
            if row.category != CATEGORY {
                return Ok(());
            }
            chunk.events += 1;
            if let Some(id) = deployment_id(row.stream) {
                let start = chunk.text.len();
                chunk.text.push_str(id);
                let mid = chunk.text.len();
                chunk.text.push_str(row.envelope);
                chunk.rows.push(ChunkRow {
                    position: row.position,
                    version: row.version,
                    shard: shard_of(id),
                    id: start..mid,
                    json: mid..chunk.text.len(),
                });
            }
            Ok(())
        })?;
        chunk.end = if scanned < page { head } else { last };
        let done = chunk.end >= head;
        after = chunk.end;
        busy += started.elapsed();
        if done {
            tracing::debug!(busy_ms = busy.as_millis() as u64, "rebuild: scan stage done");
        }
        let chunk = Arc::new(chunk);
        for to in chunks {
            if to.send(chunk.clone()).is_err() {
                return Ok(()); // a later stage stopped
            }
        }
        if done {
            return Ok(());
        }
    }
}

fn fold_stage(
    model_path: &Path,
    shard: usize,
    chunks: &std::sync::mpsc::Receiver<Arc<Chunk>>,
    spent: &std::sync::mpsc::SyncSender<Arc<Chunk>>,
    flushes: &std::sync::mpsc::SyncSender<Flush>,
) -> Result<(), StoreError> {
    // Where a deployment's view is before this chunk: in this chunk's slots
    // once touched; else in the previous chunk's (which the writer may still
    // be writing); else in the model (every earlier flush is committed: the
    // previous one was only handed over once the writer was done with the one
    // before); or nowhere when this is its stream's first event.
    let mut previous: HashMap<Box<str>, Slot> = HashMap::new();
    let mut slots: HashMap<Box<str>, Slot> = HashMap::new();
    let mut reader: Option<Connection> = None;
    let mut busy = std::time::Duration::ZERO;
    for chunk in chunks {
        let started = std::time::Instant::now();
        for row in chunk.rows.iter().filter(|row| row.shard == shard) {
            let id = chunk.id(row);
            let slot = match slots.get_mut(id) {
                Some(slot) => slot,
                None => {
                    let slot = match previous.remove(id) {
                        Some(slot) => Slot { changed: false, ..slot },
                        // Versions grow with positions: nothing of this stream came before.
                        None if row.version == 1 => Slot::default(),
                        None => {
                            let conn = match &mut reader {
                                Some(conn) => conn,
                                None => reader.insert(open_connection(model_path, true)?),
                            };
                            load_slot(conn, id)?
                        }
                    };
                    slots.entry(id.into()).or_insert(slot)
                }
            };
            if let Err(e) = slot.fold(chunk.json(row), row.position) {
                tracing::warn!(position = row.position, error = %e, "skipping an unreadable event");
            }
        }
        // Serialized here, where there is a thread per shard, not in the writer.
        let mut rows = Vec::new();
        for (id, slot) in &slots {
            if let (true, Some(view)) = (slot.changed, &slot.view) {
                rows.push(Row {
                    id: id.clone(),
                    status: view.status,
                    started_position: slot.started_position,
                    updated_position: slot.updated_position,
                    view: serde_json::to_string(view).map_err(backend)?,
                });
            }
        }
        rows.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let flush = Flush {
            rows,
            events: chunk.events,
            end: chunk.end,
            head: chunk.head,
        };
        let _ = spent.try_send(chunk);
        busy += started.elapsed();
        if flushes.send(flush).is_err() {
            return Ok(()); // the writer stopped
        }
        // The slots become the previous chunk's; their maps are reused.
        std::mem::swap(&mut previous, &mut slots);
        slots.clear();
    }
    tracing::debug!(shard, busy_ms = busy.as_millis() as u64, "rebuild: fold stage done");
    Ok(())
}

/// The stored row of deployment `id` as a [`Slot`] (empty when there is none).
fn load_slot(conn: &Connection, id: &str) -> Result<Slot, StoreError> {
    let row: Option<(i64, i64, String)> = conn
        .prepare_cached("SELECT started_position, updated_position, view FROM deployments WHERE id = ?1")
        .map_err(backend)?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
        .map_err(backend)?;
    Ok(match row {
        Some((started_position, updated_position, json)) => Slot {
            view: Some(parse_view(id, &json)?),
            started_position: started_position as u64,
            updated_position: updated_position as u64,
            changed: false,
        },
        None => Slot::default(),
    })
}

/// Writes each flush in one transaction; returns the events applied and
/// whether it stopped because the checkpoint was not the one it wrote last.
fn write_stage(
    conn: &mut Connection,
    flushes: &[std::sync::mpsc::Receiver<Flush>],
    progress: &tokio::sync::mpsc::UnboundedSender<(u64, u64)>,
) -> Result<(u64, bool), StoreError> {
    let mut checkpoint = 0;
    let mut applied = 0;
    let mut busy = std::time::Duration::ZERO;
    'flushes: loop {
        // A chunk's flush from each fold thread (the same chunk: they go in order).
        let mut flush: Option<Flush> = None;
        for from in flushes {
            let Ok(part) = from.recv() else {
                break 'flushes; // done, or a fold thread stopped
            };
            match &mut flush {
                None => flush = Some(part),
                Some(flush) => flush.rows.extend(part.rows),
            }
        }
        let Some(mut flush) = flush else {
            break;
        };
        if flushes.len() > 1 {
            flush.rows.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        }
        let started = std::time::Instant::now();
        if flush.end >= flush.head {
            conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        }
        if flush.rows.is_empty() && flush.end == checkpoint {
            let _ = progress.send((checkpoint, flush.head)); // an empty log
            continue;
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if read_checkpoint(&tx)? != checkpoint {
            return Ok((applied, true)); // dropping `tx` rolls back
        }
        {
            let mut upsert = tx.prepare_cached(UPSERT).map_err(backend)?;
            for row in &flush.rows {
                upsert
                    .execute(params![
                        &*row.id,
                        row.status.as_str(),
                        row.started_position as i64,
                        row.view,
                        row.updated_position as i64
                    ])
                    .map_err(backend)?;
            }
        }
        write_checkpoint(&tx, flush.end)?;
        tx.commit().map_err(backend)?;
        applied += flush.events;
        checkpoint = flush.end;
        let _ = progress.send((checkpoint, flush.head));
        busy += started.elapsed();
    }
    tracing::debug!(busy_ms = busy.as_millis() as u64, "rebuild: write stage done");
    Ok((applied, false))
}
