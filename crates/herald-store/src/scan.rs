//! A streaming read of the event log for replays (`readmodel::rebuild`): rows
//! are handed to a callback borrowed from SQLite, without building a
//! `RecordedEvent` (and its SSE frame) per event.

use std::path::Path;

use herald_core::store::StoreError;
use rusqlite::{Connection, params};

use crate::sqlite::{SqliteStore, backend, open_connection, read_head, sql_int};

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
}
