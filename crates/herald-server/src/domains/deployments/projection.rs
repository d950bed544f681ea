//! The deployments read model: one row per deployment, its [`DeploymentView`]
//! as JSON, with its status and the position of its start as columns to
//! filter and order by, and the position of its last change (indexed) for
//! resource streams.

use herald_core::event_ref::EventRef;
use herald_core::store::StoreError;
use herald_store::projection::{Changed, ChangedResource, Db, Loaded, RowProjection};
use herald_store::sql::{Param, chunk_len, numbered};

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

/// Writes deployments' rows (distinct ids), new or not, up to 64 a statement.
fn upsert(db: &dyn Db, rows: &[(&str, &Write)]) -> Result<(), StoreError> {
    let mut rest = rows;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
        let mut params: Vec<Param<'_>> = Vec::with_capacity(chunk.len() * 5);
        for (key, w) in chunk {
            params.extend([
                Param::Text(key),
                w.status.into(),
                w.started_position.into(),
                (&w.view).into(),
                w.updated_position.into(),
            ]);
        }
        db.execute(
            &format!(
                "INSERT INTO deployments (id, status, started_position, view, updated_position) VALUES {}
                 ON CONFLICT (id) DO UPDATE SET
                     status = excluded.status, started_position = excluded.started_position, view = excluded.view,
                     updated_position = excluded.updated_position",
                numbered(chunk.len(), 5)
            ),
            &params,
        )?;
        rest = tail;
    }
    Ok(())
}

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
    const POSTGRES_SCHEMA: &'static str = "
        CREATE TABLE IF NOT EXISTS deployments (
            id               TEXT PRIMARY KEY,
            status           TEXT NOT NULL,
            started_position BIGINT NOT NULL,
            view             TEXT NOT NULL,
            updated_position BIGINT NOT NULL
        );
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

    fn load(db: &dyn Db, key: &str) -> Result<Option<Row>, StoreError> {
        Ok(Self::load_many(db, &[key])?.pop().map(|(_, row)| row))
    }

    fn load_many(db: &dyn Db, keys: &[&str]) -> Result<Loaded<Row>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        let mut rest = keys;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
            let params: Vec<Param<'_>> = chunk.iter().map(|k| Param::Text(k)).collect();
            db.query(
                &format!(
                    "SELECT id, started_position, updated_position, view FROM deployments WHERE id IN ({})",
                    numbered(chunk.len(), 1)
                ),
                &params,
                &mut |r| {
                    let id = r.text(0)?;
                    let row = Row {
                        view: parse_view(&id, &r.text(3)?)?,
                        started_position: r.position(1)?,
                        updated_position: r.position(2)?,
                    };
                    out.push((id.into_boxed_str(), row));
                    Ok(())
                },
            )?;
            rest = tail;
        }
        Ok(out)
    }

    fn prepare(_key: &str, row: &mut Row) -> Result<Write, StoreError> {
        Ok(Write {
            status: row.view.status.as_str(),
            started_position: row.started_position,
            updated_position: row.updated_position,
            view: serde_json::to_string(&row.view).map_err(backend)?,
        })
    }

    fn write(db: &dyn Db, key: &str, w: &Write) -> Result<(), StoreError> {
        upsert(db, &[(key, w)])
    }

    fn write_all(db: &dyn Db, rows: &[(Box<str>, Write)]) -> Result<(), StoreError> {
        let rows: Vec<(&str, &Write)> = rows.iter().map(|(key, w)| (&**key, w)).collect();
        upsert(db, &rows)
    }

    fn changed(db: &dyn Db, after: u64, until: u64, limit: usize) -> Result<Changed, StoreError> {
        let rows = db.query_vec(
            "SELECT id, updated_position, status, view FROM deployments
             WHERE updated_position > ?1 AND updated_position <= ?2
             ORDER BY updated_position LIMIT ?3",
            &[after.into(), until.into(), limit.into()],
            |r| Ok((r.text(0)?, r.position(1)?, r.text(2)?, r.text(3)?)),
        )?;
        // Positions are unique per row (an event changes one deployment): a
        // full page covers everything up to its last row.
        let position = match rows.last() {
            Some((_, last, _, _)) if rows.len() >= limit => *last,
            _ => until,
        };
        Ok(Changed {
            resources: rows
                .into_iter()
                .map(|(id, updated, status, view)| ChangedResource {
                    kind: KIND,
                    key: id,
                    changed_at: updated,
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
pub fn list(db: &dyn Db, status: Option<DeploymentStatus>, limit: usize) -> Result<Vec<String>, StoreError> {
    match status {
        Some(status) => db.query_vec(
            "SELECT view FROM deployments WHERE status = ?1 ORDER BY started_position DESC LIMIT ?2",
            &[status.as_str().into(), limit.into()],
            |r| r.text(0),
        ),
        None => db.query_vec(
            "SELECT view FROM deployments ORDER BY started_position DESC LIMIT ?1",
            &[limit.into()],
            |r| r.text(0),
        ),
    }
}

/// One stored view as JSON text, and the position of its last change.
pub fn get(db: &dyn Db, id: &str) -> Result<Option<(String, u64)>, StoreError> {
    db.query_opt(
        "SELECT view, updated_position FROM deployments WHERE id = ?1",
        &[id.into()],
        |r| Ok((r.text(0)?, r.position(1)?)),
    )
}
