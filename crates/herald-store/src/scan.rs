//! A streaming read of the event log for replays (`readmodel::rebuild`) and
//! for `herald verify`: rows are handed to a callback borrowed from SQLite,
//! without building a `RecordedEvent` (and its frame) per event.

use std::path::Path;

use herald_core::audit::{ChainVerifier, Expect, StoredRow, VerifyReport};
use herald_core::store::StoreError;
use rusqlite::{Connection, OptionalExtension, params};

use crate::sqlite::{APPEND_ONLY_TRIGGERS, EVENTS_FILE, SqliteStore, backend, open_connection, read_head, sql_int};

/// Rows per read transaction while verifying (a long one would hold back
/// checkpoints of a serving herald).
const VERIFY_PAGE: i64 = 10_000;

/// Bytes of the log's file a scanner maps into memory.
const SCAN_MMAP: i64 = 1 << 40;

/// One stored event, borrowed from the row being read.
pub struct ScanRow<'a> {
    pub position: u64,
    pub stream: &'a str,
    pub version: u64,
    pub category: &'a str,
    /// The envelope's JSON as stored.
    pub envelope: &'a str,
}

/// A read-only connection to an event store's file, for [`scan`].
pub struct Scanner {
    conn: Connection,
}

impl Scanner {
    /// Opens a read-only connection to `store`'s file.
    pub fn open(store: &SqliteStore) -> Result<Self, StoreError> {
        Self::open_path(store.path())
    }

    /// Opens the store in `dir` read-only (`SQLITE_OPEN_READ_ONLY`): nothing is
    /// created or changed — a dropped trigger stays dropped, for
    /// [`verify`](Self::verify) to report. Fails if there is no store there.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(EVENTS_FILE);
        if !path.is_file() {
            return Err(StoreError::Backend(format!(
                "there is no herald store at {}",
                path.display()
            )));
        }
        Self::open_path(&path)
    }

    pub fn open_path(path: &Path) -> Result<Self, StoreError> {
        let conn = open_connection(path, true)?;
        // Pages read straight from the file's mapping rather than copied in.
        conn.pragma_update(None, "mmap_size", SCAN_MMAP).map_err(backend)?;
        Ok(Scanner { conn })
    }

    /// The last position in the log (0: empty).
    pub fn head(&self) -> Result<u64, StoreError> {
        Ok(read_head(&self.conn)?.position)
    }

    /// Calls `f` for each event with `after < position <= until`, in position
    /// order, at most `limit` of them (one read transaction). Returns how many
    /// were visited.
    pub fn scan(
        &self,
        after: u64,
        until: u64,
        limit: usize,
        mut f: impl FnMut(ScanRow<'_>) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT position, stream, version, category, envelope FROM events
                 WHERE position > ?1 AND position <= ?2 ORDER BY position LIMIT ?3",
            )
            .map_err(backend)?;
        let mut rows = stmt
            .query(params![sql_int(after), sql_int(until), sql_int(limit)])
            .map_err(backend)?;
        let mut visited = 0;
        while let Some(row) = rows.next().map_err(backend)? {
            let str =
                |i: usize| -> Result<&str, StoreError> { row.get_ref(i).map_err(backend)?.as_str().map_err(backend) };
            f(ScanRow {
                position: row.get::<_, i64>(0).map_err(backend)? as u64,
                stream: str(1)?,
                version: row.get::<_, i64>(2).map_err(backend)? as u64,
                category: str(3)?,
                envelope: str(4)?,
            })?;
            visited += 1;
        }
        Ok(visited)
    }

    /// Problems with the schema that only tampering explains: an append-only
    /// trigger missing or changed.
    pub fn schema_findings(&self) -> Result<Vec<String>, StoreError> {
        let mut findings = Vec::new();
        let normalize = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        // As SQLite keeps them (whitespace aside): a trigger with a `WHEN`
        // clause or another body is no guard.
        for (name, body) in APPEND_ONLY_TRIGGERS {
            let expected = format!("CREATE TRIGGER {name} {body}");
            let sql: Option<String> = self
                .conn
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            match sql.as_deref().map(normalize) {
                None => findings.push(format!(
                    "the append-only trigger {name} is missing: rows may have been changed or deleted \
                     (herald recreates it on its next start; verify does not)"
                )),
                Some(sql) if sql != normalize(&expected) => {
                    findings.push(format!("the append-only trigger {name} has been changed: {sql}"))
                }
                Some(_) => {}
            }
        }
        Ok(findings)
    }

    /// The idempotency records (`commands`) up to `until`: each must point at
    /// events of its own append (same stream and command id, its versions).
    /// Returns the first that does not.
    pub fn commands_finding(&self, until: u64) -> Result<Option<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT c.command_id, c.stream, c.version, c.first_position, c.last_position,
                        f.stream, f.version, json_extract(f.envelope, '$.command_id'),
                        l.stream, l.version, json_extract(l.envelope, '$.command_id')
                 FROM commands c
                 LEFT JOIN events f ON f.position = c.first_position
                 LEFT JOIN events l ON l.position = c.last_position
                 WHERE c.last_position <= ?1",
            )
            .map_err(backend)?;
        let mut rows = stmt.query([sql_int(until)]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            type Event = (Option<String>, Option<i64>, Option<String>);
            let get = |i| row.get::<_, Option<String>>(i).ok().flatten();
            let (command_id, stream) = (get(0).unwrap_or_default(), get(1).unwrap_or_default());
            let version = row.get::<_, i64>(2).unwrap_or(-1);
            let (first, last) = (row.get::<_, i64>(3).unwrap_or(-1), row.get::<_, i64>(4).unwrap_or(-1));
            let f: Event = (get(5), row.get(6).ok().flatten(), get(7));
            let l: Event = (get(8), row.get(9).ok().flatten(), get(10));
            let ours = |e: &Event| e.0.as_deref() == Some(&stream) && e.2.as_deref() == Some(&command_id);
            let versions_fit = matches!((f.1, l.1), (Some(fv), Some(lv)) if lv == version && lv - fv == last - first);
            if first < 1 || last < first || !ours(&f) || !ours(&l) || !versions_fit {
                return Ok(Some(format!(
                    "the idempotency record of command_id {command_id:?} (stream {stream:?}, version {version}, \
                     positions {first}..={last}) does not match the events at those positions"
                )));
            }
        }
        Ok(None)
    }

    /// Verifies every row and column of the log (see [`herald_core::audit`]),
    /// the `expect` anchor and the append-only triggers. `progress` is called
    /// after each page with (checked, head).
    pub fn verify(
        &self,
        expect: Option<Expect>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<VerifyReport, StoreError> {
        let findings = self.schema_findings()?;
        let head = read_head(&self.conn)?;
        let until = head.position;
        let mut verifier = ChainVerifier::new(head, expect);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT position, stream, version, type, category, hash, envelope FROM events
                 WHERE position > ?1 AND position <= ?2 ORDER BY position LIMIT ?3",
            )
            .map_err(backend)?;
        let mut after = 0u64;
        'pages: while after < until {
            let mut rows = stmt
                .query(params![sql_int(after), sql_int(until), VERIFY_PAGE])
                .map_err(backend)?;
            let mut seen = 0;
            while let Some(row) = rows.next().map_err(backend)? {
                seen += 1;
                let position = row.get::<_, i64>(0).map_err(backend)?;
                let Ok(position) = u64::try_from(position) else {
                    verifier.fail_at(1, format!("a row has the negative position {position}"));
                    break 'pages;
                };
                // A column of the wrong type (STRICT tables refuse them, but the
                // file may have been rewritten) is a finding, not an error.
                let text = |i: usize| row.get_ref(i).ok().and_then(|v| v.as_str().ok());
                let (Some(stream), Some(event_type), Some(category), Some(hash), Some(envelope)) =
                    (text(1), text(3), text(4), text(5), text(6))
                else {
                    verifier.fail_at(
                        position,
                        format!("the row at position {position} has a column that is not text"),
                    );
                    break 'pages;
                };
                let version = row.get::<_, i64>(2).map_err(backend)?;
                if !verifier.check(StoredRow {
                    position,
                    envelope,
                    stream: Some(stream),
                    version: Some(u64::try_from(version).unwrap_or(u64::MAX)),
                    event_type: Some(event_type),
                    category: Some(category),
                    hash: Some(hash),
                }) {
                    break 'pages;
                }
                after = position;
            }
            if seen == 0 {
                break;
            }
            progress(verifier.checked(), until);
        }
        let mut findings = findings;
        findings.extend(self.commands_finding(until)?);
        Ok(verifier.finish(&findings))
    }
}
