//! The deployments read model: one row per deployment, its [`DeploymentView`]
//! as JSON, with its status and the position of its start as columns to
//! filter and order by, and the position of its last change (indexed) for
//! resource streams.

use herald_core::event_ref::EventRef;
use herald_core::store::StoreError;
use herald_store::projection::{Changed, ChangedResource, RowProjection};
use rusqlite::{Connection, OptionalExtension, params};

use super::aggregate::DeploymentStatus;
use super::view::{CATEGORY, DeploymentView, deployment_id};

/// The resource kind (and SSE event) of one deployment.
pub const KIND: &str = "deployment";

pub struct Deployments;

/// A deployment's row in memory.
pub struct Row {
    pub view: DeploymentView,
    /// The position of its `DeploymentStarted` (the list's order).
    pub started_position: u64,
    /// The position of the last event that changed it.
    pub updated_position: u64,
}

pub struct Write {
    status: &'static str,
    started_position: u64,
    updated_position: u64,
    view: String,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(crate) fn parse_view(id: &str, json: &str) -> Result<DeploymentView, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("read model row for deployment {id}: {e}")))
}

/// Writes a deployment's row, whether it is new or not.
const UPSERT: &str = "INSERT INTO deployments (id, status, started_position, view, updated_position)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (id) DO UPDATE SET
         status = excluded.status, started_position = excluded.started_position, view = excluded.view,
         updated_position = excluded.updated_position";

impl RowProjection for Deployments {
    const NAME: &'static str = "deployments";
    const CATEGORIES: &'static [&'static str] = &[CATEGORY];
    const VERSION: i64 = 3;
    const SCHEMA: &'static str = "
        CREATE TABLE IF NOT EXISTS deployments (
            id               TEXT PRIMARY KEY,
            status           TEXT NOT NULL,
            started_position INTEGER NOT NULL,
            view             TEXT NOT NULL,
            updated_position INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS deployments_status ON deployments (status, started_position);
        CREATE INDEX IF NOT EXISTS deployments_started ON deployments (started_position);
        CREATE INDEX IF NOT EXISTS deployments_updated ON deployments (updated_position);";
    const TABLES: &'static [&'static str] = &["deployments"];

    type Row = Row;
    type Write = Write;

    fn key(stream: &str) -> Option<&str> {
        deployment_id(stream)
    }

    fn fold(row: &mut Option<Row>, event: &EventRef<'_>) -> bool {
        let (mut view, started, updated) = match row.take() {
            Some(r) => (Some(r.view), r.started_position, r.updated_position),
            None => (None, event.position, 0),
        };
        let changed = DeploymentView::fold(&mut view, event);
        *row = view.map(|view| Row {
            view,
            started_position: started,
            updated_position: if changed { event.position } else { updated },
        });
        changed
    }

    fn load(conn: &Connection, key: &str) -> Result<Option<Row>, StoreError> {
        let row: Option<(i64, i64, String)> = conn
            .prepare_cached("SELECT started_position, updated_position, view FROM deployments WHERE id = ?1")
            .map_err(backend)?
            .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(backend)?;
        row.map(|(started, updated, json)| {
            Ok(Row {
                view: parse_view(key, &json)?,
                started_position: started as u64,
                updated_position: updated as u64,
            })
        })
        .transpose()
    }

    fn prepare(_key: &str, row: &mut Row) -> Result<Write, StoreError> {
        Ok(Write {
            status: row.view.status.as_str(),
            started_position: row.started_position,
            updated_position: row.updated_position,
            view: serde_json::to_string(&row.view).map_err(backend)?,
        })
    }

    fn write(conn: &Connection, key: &str, w: &Write) -> Result<(), StoreError> {
        conn.prepare_cached(UPSERT)
            .map_err(backend)?
            .execute(params![
                key,
                w.status,
                w.started_position as i64,
                w.view,
                w.updated_position as i64
            ])
            .map_err(backend)?;
        Ok(())
    }

    fn changed(conn: &Connection, after: u64, until: u64, limit: usize) -> Result<Changed, StoreError> {
        let rows: Vec<(String, i64, String, String)> = conn
            .prepare_cached(
                "SELECT id, updated_position, status, view FROM deployments
                 WHERE updated_position > ?1 AND updated_position <= ?2
                 ORDER BY updated_position LIMIT ?3",
            )
            .map_err(backend)?
            .query_map(
                params![after as i64, until as i64, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        // Positions are unique per row (an event changes one deployment): a
        // full page covers everything up to its last row.
        let position = match rows.last() {
            Some((_, last, _, _)) if rows.len() >= limit => *last as u64,
            _ => until,
        };
        Ok(Changed {
            resources: rows
                .into_iter()
                .map(|(id, updated, status, view)| ChangedResource {
                    kind: KIND,
                    key: id,
                    changed_at: updated as u64,
                    event: KIND,
                    json: view,
                    class: DeploymentStatus::parse(&status).map(DeploymentStatus::as_str),
                })
                .collect(),
            position,
        })
    }
}

/// The stored views, most recently started first (with `status`, when given),
/// at most `limit`, as JSON text; read in the caller's transaction.
pub fn list(conn: &Connection, status: Option<DeploymentStatus>, limit: usize) -> Result<Vec<String>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    match status {
        Some(status) => conn
            .prepare_cached("SELECT view FROM deployments WHERE status = ?1 ORDER BY started_position DESC LIMIT ?2")
            .map_err(backend)?
            .query_map(params![status.as_str(), limit], |r| r.get(0))
            .map_err(backend)?
            .collect::<Result<_, _>>(),
        None => conn
            .prepare_cached("SELECT view FROM deployments ORDER BY started_position DESC LIMIT ?1")
            .map_err(backend)?
            .query_map([limit], |r| r.get(0))
            .map_err(backend)?
            .collect::<Result<_, _>>(),
    }
    .map_err(backend)
}

/// One stored view as JSON text, and the position of its last change.
pub fn get(conn: &Connection, id: &str) -> Result<Option<(String, u64)>, StoreError> {
    conn.prepare_cached("SELECT view, updated_position FROM deployments WHERE id = ?1")
        .map_err(backend)?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .optional()
        .map_err(backend)
}
