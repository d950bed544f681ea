//! `herald import` into PostgreSQL: the batches of an export, checked by
//! [`herald_core::import`], written into an empty log in **one
//! transaction** (a statement per batch), with the sequencer locked
//! throughout: the log is append-only (UPDATE, DELETE and TRUNCATE abort),
//! so a half-done import could not be undone; a failure at any line, a lost
//! connection or a refusal leaves the database as it was. Other herald
//! processes wait on the sequencer until it commits, then append after the
//! imported head.

use herald_core::import::{IMPORTED_FINGERPRINT, ImportError, ImportItem, ImportSummary, reader_stopped};
use tokio::sync::mpsc;

use crate::store::{Database, MOVE_HORIZON, NOTIFY_CHANNEL, first_connection, insert_events, pg, sql_int, stored_u64};

/// Derives the idempotency records from the imported log: one per
/// `command_id` that only one append wrote (its events in one stream, at
/// consecutive positions and versions), with the fingerprint unknown
/// ([`IMPORTED_FINGERPRINT`]). A `command_id` several appends share was no
/// idempotency key (the store never appends twice for one).
///
/// The command ids come from the import's own table (filled with each batch
/// from the envelopes the reader parsed): PostgreSQL's JSON operators refuse
/// an envelope with `\u0000` anywhere in it, which the log may hold.
const DERIVE_COMMANDS: &str = "
INSERT INTO commands (command_id, fingerprint, stream, version, first_position, last_position)
SELECT i.command_id, $1, min(e.stream), max(e.version), min(e.position), max(e.position)
FROM herald_import_commands i JOIN events e ON e.position = i.position
GROUP BY i.command_id
HAVING count(DISTINCT e.stream) = 1
   AND max(e.position) - min(e.position) + 1 = count(*)
   AND max(e.version) - min(e.version) = max(e.position) - min(e.position)";

/// Imports the batches `read_in_background` sends into the log of
/// `database`, which must be empty. `progress` is called after each batch
/// with the events written so far.
pub async fn import(
    database: &Database,
    mut batches: mpsc::Receiver<Result<ImportItem, ImportError>>,
    mut progress: impl FnMut(u64) + Send,
) -> Result<ImportSummary, ImportError> {
    let target = database.target();
    let mut client = first_connection(&database.pool, target).await?;
    let tx = client.transaction().await.map_err(|e| pg("import: begin", e))?;
    let sequencer = tx
        .query_one("SELECT position FROM sequencer FOR UPDATE", &[])
        .await
        .map_err(|e| pg("import: locking the sequencer", e))?;
    let head = stored_u64(&sequencer, 0, "import: the sequencer")?;
    let row = tx
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM events LIMIT 1) e), \
                    (SELECT count(*) FROM (SELECT 1 FROM commands LIMIT 1) c)",
            &[],
        )
        .await
        .map_err(|e| pg("import: reading the log", e))?;
    let (events, commands): (i64, i64) = (
        row.try_get(0).map_err(|e| pg("import: reading the log", e))?,
        row.try_get(1).map_err(|e| pg("import: reading the log", e))?,
    );
    if head > 0 || events > 0 {
        return Err(ImportError::NotEmpty(format!(
            "the PostgreSQL database {target} already holds a log (head position {head})"
        )));
    }
    if commands > 0 {
        return Err(ImportError::NotEmpty(format!(
            "the PostgreSQL database {target} has idempotency records but no events"
        )));
    }

    tx.batch_execute(
        "CREATE TEMPORARY TABLE herald_import_commands (position bigint NOT NULL, command_id text NOT NULL)
         ON COMMIT DROP",
    )
    .await
    .map_err(|e| pg("import: a table for the command ids", e))?;

    let mut written = 0u64;
    let (head, latest_recorded_at) = loop {
        match batches.recv().await {
            Some(Ok(ImportItem::Rows(batch))) => {
                let rows = &batch.events;
                // PostgreSQL text cannot hold U+0000 (the envelope escapes it;
                // the type column would not).
                if let Some(row) = rows.iter().find(|r| r.event_type.contains('\0')) {
                    return Err(ImportError::Refused {
                        line: row.position,
                        position: row.position,
                        problem: "the event type contains a NUL character, which PostgreSQL cannot store".into(),
                    });
                }
                insert_events(&tx, rows)
                    .await
                    .map_err(|e| pg(&format!("import: inserting positions {}..", written + 1), e))?;
                // A command id with U+0000 cannot be a record's key: it gets none.
                let (positions, ids): (Vec<i64>, Vec<&str>) = rows
                    .iter()
                    .zip(&batch.command_ids)
                    .filter(|(_, id)| !id.contains('\0'))
                    .map(|(row, id)| (sql_int(row.position), id.as_str()))
                    .unzip();
                tx.execute(
                    "INSERT INTO herald_import_commands (position, command_id)
                     SELECT * FROM UNNEST($1::bigint[], $2::text[])",
                    &[&positions, &ids],
                )
                .await
                .map_err(|e| pg("import: recording the command ids", e))?;
                written += rows.len() as u64;
                progress(written);
            }
            Some(Ok(ImportItem::End {
                head,
                latest_recorded_at,
            })) => break (head, latest_recorded_at),
            Some(Err(e)) => return Err(e),
            None => return Err(reader_stopped()),
        }
    };
    let commands = tx
        .execute(DERIVE_COMMANDS, &[&IMPORTED_FINGERPRINT])
        .await
        .map_err(|e| pg("import: deriving the idempotency records", e))?;
    if head.position > 0 {
        tx.execute(
            "UPDATE sequencer SET position = $1, hash = $2, recorded_at = $3",
            &[&sql_int(head.position), &head.hash, &latest_recorded_at],
        )
        .await
        .map_err(|e| pg("import: moving the sequencer", e))?;
        // This transaction commits synchronously: the horizon moves with it.
        tx.execute(MOVE_HORIZON, &[&"import"])
            .await
            .map_err(|e| pg("import: moving the durable horizon", e))?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&NOTIFY_CHANNEL, &head.position.to_string()],
        )
        .await
        .map_err(|e| pg("import: notifying", e))?;
    }
    tx.commit().await.map_err(|e| {
        ImportError::Unknown(format!(
            "import: commit: {}; the import may have been committed (`herald verify` and `herald export` tell)",
            crate::store::with_causes(&e)
        ))
    })?;
    Ok(ImportSummary {
        events: written,
        head,
        commands,
    })
}
