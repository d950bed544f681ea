//! `herald projections rebuild`: resets a read model and replays the whole log
//! into it, for any [`RowProjection`].
//!
//! On the SQLite store the log's file is scanned in stages on their own
//! threads: one scans (`page` rows at a time, copied into a [`Chunk`]);
//! [`FOLDERS`] fold each chunk into rows in memory, each the keys of its shard;
//! one writes each chunk's changed rows, once each, with the checkpoint, in one
//! transaction. On another store the log is read a page per transaction
//! through [`EventStore::read_all`]. Either way, when another process moves the
//! checkpoint meanwhile the replay stops and goes on a step at a time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use herald_core::store::{EventStore, StoreError};
use rusqlite::{Connection, TransactionBehavior};

use crate::projection::{
    ReadModel, RebuildSource, RowProjection, Slot, SqliteModel, Storage, fold_json, read_checkpoint, reset_tables,
    write_checkpoint,
};
use crate::scan::Scanner;
use crate::sqlite::{backend, open_connection};

pub(crate) async fn rebuild<P: RowProjection>(
    model: &ReadModel<P, SqliteModel>,
    source: Arc<dyn RebuildSource>,
    page: usize,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<u64, StoreError> {
    let Some(scanner) = source.scanner().transpose()? else {
        return rebuild_by_pages::<P, SqliteModel>(model, &source.event_store(), page, progress).await;
    };
    let store = source.event_store();
    let page = page.max(1);
    let started = std::time::Instant::now();
    // (It resets the model while it scans the first page.)
    let (applied, moved) = replay::<P>(scanner, model, page, progress).await?;
    tracing::debug!(
        projection = P::NAME,
        ms = started.elapsed().as_millis() as u64,
        "rebuild: replayed"
    );
    catch_up(model, &store, page, applied, moved, progress).await
}

/// A rebuild of a model in any storage, from any store: reset, then the log
/// read a page per transaction through [`EventStore::read_all`].
pub async fn rebuild_by_pages<P: RowProjection, S: Storage>(
    model: &ReadModel<P, S>,
    store: &Arc<dyn EventStore>,
    page: usize,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<u64, StoreError> {
    let page = page.max(1);
    model.reset().await?;
    let (applied, moved) = replay_pages(store, model, page, progress).await?;
    catch_up(model, store, page, applied, moved, progress).await
}

/// After a replay: when another process moved the checkpoint, or the log
/// grew, goes on a step at a time until caught up.
async fn catch_up<P: RowProjection, S: Storage>(
    model: &ReadModel<P, S>,
    store: &Arc<dyn EventStore>,
    page: usize,
    mut applied: u64,
    moved: bool,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<u64, StoreError> {
    if !moved && model.checkpoint().await? >= store.head().await?.position {
        return Ok(applied);
    }
    loop {
        let step = model.step(store, page).await?;
        applied += step.read as u64;
        if step.read > 0 || moved {
            progress(step.checkpoint, step.head);
        }
        if step.caught_up() {
            return Ok(applied);
        }
    }
}

/// Replays through [`EventStore::read_all`], the next page read while the
/// previous one is applied. Returns the events applied and whether another
/// process moved the checkpoint (which stops it).
async fn replay_pages<P: RowProjection, S: Storage>(
    store: &Arc<dyn EventStore>,
    model: &ReadModel<P, S>,
    page: usize,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<(u64, bool), StoreError> {
    let filter = model.filter().clone();
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
        if model.apply(checkpoint, next_after, found.events).await? {
            applied += count;
            checkpoint = next_after;
            progress(checkpoint, head);
            if checkpoint >= head {
                next.abort();
                return Ok((applied, false));
            }
        } else {
            next.abort();
            return Ok((applied, true));
        }
    }
}

/// Chunks a rebuild allocates (being scanned, queued, being folded).
const CHUNKS: usize = 3;

/// Threads folding chunks, each for a shard of the keys.
const FOLDERS: usize = 2;

/// Rows the rebuild scanned, their text copied into one buffer.
#[derive(Default)]
struct Chunk {
    text: String,
    rows: Vec<ChunkRow>,
    /// Events of the model's categories scanned (what a rebuild counts).
    events: u64,
    /// The position the model reflects once this chunk is applied.
    end: u64,
    head: u64,
}

/// An event of the model's categories in a [`Chunk`].
struct ChunkRow {
    position: u64,
    version: u64,
    /// The fold thread of its key.
    shard: usize,
    key: std::ops::Range<usize>,
    json: std::ops::Range<usize>,
}

impl Chunk {
    // `text` only holds whole `&str`s.
    fn key(&self, row: &ChunkRow) -> &str {
        self.text.get(row.key.clone()).unwrap_or_default()
    }
    fn json(&self, row: &ChunkRow) -> &str {
        self.text.get(row.json.clone()).unwrap_or_default()
    }
}

/// The writes one flush makes (changed rows, sorted by key), and the checkpoint it moves to.
struct Flush<W> {
    rows: Vec<(Box<str>, W)>,
    events: u64,
    end: u64,
    head: u64,
}

fn stage_failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("rebuild stage failed: {e}"))
}

/// The fold thread of `key`.
fn shard_of(key: &str) -> usize {
    // FNV-1a: cheap and stable.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % FOLDERS as u64) as usize
}

async fn replay<P: RowProjection>(
    scanner: Scanner,
    model: &ReadModel<P, SqliteModel>,
    page: usize,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<(u64, bool), StoreError> {
    // Chunks in flight are bounded (a pool of CHUNKS), and so are flushes
    // (handed over only when the writer is idle).
    let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel::<Arc<Chunk>>(CHUNKS * FOLDERS);
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let (chunk_txs, chunk_rxs): (Vec<_>, Vec<_>) = (0..FOLDERS)
        .map(|_| std::sync::mpsc::sync_channel::<Arc<Chunk>>(1))
        .unzip();
    // The writer thread resets the model first, while the log is scanned and
    // the first chunks folded. Nothing reads the model before: a fold thread
    // loads a row only for a stream that began two chunks back or more, once
    // the writer has committed that chunk's flush — after the reset (on an
    // error there, every stage stops: their output has nowhere to go).
    model.forget_skipped();
    let scan = tokio::task::spawn_blocking(move || scan_stage::<P>(&scanner, page, &chunk_txs, &spent_rx));
    let mut flush_rxs = Vec::new();
    let mut folds = Vec::new();
    for (shard, chunk_rx) in chunk_rxs.into_iter().enumerate() {
        let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel::<Flush<P::Write>>(0);
        flush_rxs.push(flush_rx);
        let path = model.path().to_owned();
        let spent = spent_tx.clone();
        folds.push(tokio::task::spawn_blocking(move || {
            fold_stage::<P>(&path, shard, &chunk_rx, &spent, &flush_tx)
        }));
    }
    drop(spent_tx);
    let writer = model.storage().writer();
    let write = tokio::task::spawn_blocking(move || {
        let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
        reset_tables::<P>(&mut conn)?;
        let written = write_stage::<P>(&mut conn, &flush_rxs, &progress_tx);
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

fn scan_stage<P: RowProjection>(
    scanner: &Scanner,
    page: usize,
    chunks: &[std::sync::mpsc::SyncSender<Arc<Chunk>>],
    spent: &std::sync::mpsc::Receiver<Arc<Chunk>>,
) -> Result<(), StoreError> {
    let head = scanner.head()?;
    let mut after = 0;
    let mut allocated = 0;
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
        chunk.text.clear();
        chunk.rows.clear();
        chunk.events = 0;
        chunk.head = head;
        let mut last = after;
        let scanned = scanner.scan(after, head, page, |row| {
            last = row.position;
            if !P::CATEGORIES.contains(&row.category) {
                return Ok(());
            }
            chunk.events += 1;
            if let Some(key) = P::key(row.stream) {
                let start = chunk.text.len();
                chunk.text.push_str(key);
                let mid = chunk.text.len();
                chunk.text.push_str(row.envelope);
                chunk.rows.push(ChunkRow {
                    position: row.position,
                    version: row.version,
                    shard: shard_of(key),
                    key: start..mid,
                    json: mid..chunk.text.len(),
                });
            }
            Ok(())
        })?;
        chunk.end = if scanned < page { head } else { last };
        let done = chunk.end >= head;
        after = chunk.end;
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

fn fold_stage<P: RowProjection>(
    model_path: &Path,
    shard: usize,
    chunks: &std::sync::mpsc::Receiver<Arc<Chunk>>,
    spent: &std::sync::mpsc::SyncSender<Arc<Chunk>>,
    flushes: &std::sync::mpsc::SyncSender<Flush<P::Write>>,
) -> Result<(), StoreError> {
    // Where a row is before this chunk: in this chunk's slots once touched;
    // else in the previous chunk's (which the writer may still be writing);
    // else in the model (every earlier flush is committed: the previous one was
    // only handed over once the writer was done with the one before); or
    // nowhere when this is its stream's first event.
    let mut previous: HashMap<Box<str>, Slot<P::Row>> = HashMap::new();
    let mut slots: HashMap<Box<str>, Slot<P::Row>> = HashMap::new();
    let mut reader: Option<Connection> = None;
    for chunk in chunks {
        for row in chunk.rows.iter().filter(|row| row.shard == shard) {
            let key = chunk.key(row);
            let slot = match slots.get_mut(key) {
                Some(slot) => slot,
                None => {
                    let slot = match previous.remove(key) {
                        Some(slot) => Slot {
                            row: slot.row,
                            changed: false,
                        },
                        // Versions grow with positions: nothing of this stream came before.
                        None if row.version == 1 => Slot {
                            row: None,
                            changed: false,
                        },
                        None => {
                            let conn = match &mut reader {
                                Some(conn) => conn,
                                None => reader.insert(open_connection(model_path, true)?),
                            };
                            Slot {
                                row: P::load(&*conn, key)?,
                                changed: false,
                            }
                        }
                    };
                    slots.entry(key.into()).or_insert(slot)
                }
            };
            fold_json::<P>(slot, chunk.json(row), row.position);
        }
        // Prepared here, where there is a thread per shard, not in the writer.
        let mut rows = Vec::new();
        for (key, slot) in &mut slots {
            if let (true, Some(row)) = (slot.changed, slot.row.as_mut()) {
                rows.push((key.clone(), P::prepare(key, row)?));
            }
        }
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let flush = Flush {
            rows,
            events: chunk.events,
            end: chunk.end,
            head: chunk.head,
        };
        let _ = spent.try_send(chunk);
        if flushes.send(flush).is_err() {
            return Ok(()); // the writer stopped
        }
        // The slots become the previous chunk's; their maps are reused.
        std::mem::swap(&mut previous, &mut slots);
        slots.clear();
    }
    Ok(())
}

/// Writes each flush in one transaction; returns the events applied and
/// whether it stopped because the checkpoint was not the one it wrote last.
fn write_stage<P: RowProjection>(
    conn: &mut Connection,
    flushes: &[std::sync::mpsc::Receiver<Flush<P::Write>>],
    progress: &tokio::sync::mpsc::UnboundedSender<(u64, u64)>,
) -> Result<(u64, bool), StoreError> {
    let mut checkpoint = 0;
    let mut applied = 0;
    'flushes: loop {
        // A chunk's flush from each fold thread (the same chunk: they go in order).
        let mut flush: Option<Flush<P::Write>> = None;
        for from in flushes {
            let Ok(part) = from.recv() else {
                break 'flushes; // done, or a fold thread stopped
            };
            match &mut flush {
                None => flush = Some(part),
                Some(flush) => flush.rows = merge(std::mem::take(&mut flush.rows), part.rows),
            }
        }
        let Some(flush) = flush else {
            break;
        };
        // Commits in between need not reach the disk: each is atomic (the
        // checkpoint with its rows), and the last one, synced, makes every one
        // before it durable.
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
        if read_checkpoint(&*tx)? != checkpoint {
            return Ok((applied, true)); // dropping `tx` rolls back
        }
        P::write_all(&*tx, &flush.rows)?;
        write_checkpoint(&*tx, flush.end)?;
        tx.commit().map_err(backend)?;
        applied += flush.events;
        checkpoint = flush.end;
        let _ = progress.send((checkpoint, flush.head));
    }
    Ok((applied, false))
}

/// Two lists sorted by key, merged into one (the shards' keys are disjoint).
fn merge<W>(a: Vec<(Box<str>, W)>, b: Vec<(Box<str>, W)>) -> Vec<(Box<str>, W)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => return out,
        };
        out.extend(next);
    }
}
