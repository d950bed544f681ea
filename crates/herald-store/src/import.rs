//! `herald import` into the embedded store: the batches of an export, checked
//! by [`herald_core::import`], written into an empty `herald.db` in **one
//! transaction** (`BEGIN IMMEDIATE`, so no other writer interleaves): the log
//! is append-only, so a half-done import could not be undone; a failure at
//! any line leaves the file as it was. Run it on a store no herald serves
//! (a serving writer would wait on the file's lock for the whole import).

use std::path::Path;

use herald_core::import::{IMPORTED_FINGERPRINT, ImportError, ImportItem, ImportSummary, reader_stopped};
use herald_core::store::StoreError;
use rusqlite::params;
use tokio::sync::mpsc;

use crate::sqlite::{APPEND_ONLY_TRIGGERS, EVENTS_FILE, SCHEMA, backend, open_connection, read_head, sql_int};

/// The idempotency records derived from the imported log, by the rule of
/// the PostgreSQL import (one per `command_id` only one append wrote, with
/// the fingerprint unknown).
const DERIVE_COMMANDS: &str = "
INSERT INTO commands (command_id, fingerprint, stream, version, first_position, last_position)
SELECT command_id, ?1, min(stream), max(version), min(position), max(position)
FROM (SELECT json_extract(envelope, '$.command_id') AS command_id, stream, version, position FROM events)
WHERE command_id IS NOT NULL
GROUP BY command_id
HAVING count(DISTINCT stream) = 1
   AND max(position) - min(position) + 1 = count(*)
   AND max(version) - min(version) = max(position) - min(position)";

/// Imports the batches `read_in_background` sends into the store in `dir`
/// (created if needed), whose log must be empty. Blocking: run it on a
/// blocking thread. `progress` is called after each batch with the events
/// written so far.
pub fn import(
    dir: &Path,
    mut batches: mpsc::Receiver<Result<ImportItem, ImportError>>,
    mut progress: impl FnMut(u64),
) -> Result<ImportSummary, ImportError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Backend(format!("cannot create data directory {}: {e}", dir.display())))?;
    let mut conn = open_connection(&dir.join(EVENTS_FILE), false)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(backend)?;
    tx.execute_batch(SCHEMA).map_err(backend)?;
    for (name, body) in APPEND_ONLY_TRIGGERS {
        tx.execute_batch(&format!("CREATE TRIGGER IF NOT EXISTS {name} {body};"))
            .map_err(backend)?;
    }
    let head = read_head(&tx)?;
    if head.position > 0 {
        return Err(ImportError::NotEmpty(format!(
            "the store in {} already holds a log (head position {})",
            dir.display(),
            head.position
        )));
    }
    let commands: bool = tx
        .query_row("SELECT EXISTS (SELECT 1 FROM commands)", [], |r| r.get(0))
        .map_err(backend)?;
    if commands {
        return Err(ImportError::NotEmpty(format!(
            "the store in {} has idempotency records but no events",
            dir.display()
        )));
    }
    let mut written = 0u64;
    let head = {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (position, stream, version, category, type, envelope, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(backend)?;
        loop {
            match batches.blocking_recv() {
                Some(Ok(ImportItem::Rows(batch))) => {
                    let rows = &batch.events;
                    for row in rows {
                        insert
                            .execute(params![
                                sql_int(row.position),
                                row.stream,
                                sql_int(row.version),
                                herald_core::envelope::category_of(&row.stream),
                                row.event_type,
                                row.json,
                                row.hash,
                            ])
                            .map_err(|e| StoreError::Backend(format!("inserting position {}: {e}", row.position)))?;
                    }
                    written += rows.len() as u64;
                    progress(written);
                }
                Some(Ok(ImportItem::End { head, .. })) => break head,
                Some(Err(e)) => return Err(e),
                None => return Err(reader_stopped()),
            }
        }
    };
    let commands = tx
        .execute(DERIVE_COMMANDS, [IMPORTED_FINGERPRINT])
        .map_err(|e| StoreError::Backend(format!("deriving the idempotency records: {e}")))?;
    tx.commit()
        .map_err(|e| StoreError::Backend(format!("committing the import: {e}")))?;
    Ok(ImportSummary {
        events: written,
        head,
        commands: commands as u64,
    })
}
