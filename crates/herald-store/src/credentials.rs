//! API tokens (and, later, users, passkeys and sessions) in the embedded store's
//! database file, beside the events so one file holds everything.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::auth::{CredentialStore, Role, TokenRecord};
use herald_core::store::StoreError;
use rusqlite::{Connection, OptionalExtension, params};

use crate::sqlite::{EVENTS_FILE, ReaderPool, open_connection};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  TEXT
) STRICT;
"#;

pub struct SqliteCredentials {
    pool: ReaderPool,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteCredentials {
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let path = dir.join(EVENTS_FILE);
        open_connection(&path, false)?.execute_batch(SCHEMA).map_err(backend)?;
        Ok(Arc::new(SqliteCredentials {
            pool: ReaderPool::new(path, 4, false),
        }))
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.pool.run(f).await
    }
}

fn row_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, String, String, Option<String>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn to_record(
    (id, name, role, created_at, created_by, revoked_at): (String, String, String, String, String, Option<String>),
) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("token {id} has unknown role {role:?}")))?,
        created_by: serde_json::from_str(&created_by)
            .map_err(|e| StoreError::Corrupt(format!("token {id} created_by: {e}")))?,
        id,
        name,
        created_at,
        revoked_at,
    })
}

const COLUMNS: &str = "id, name, role, created_at, created_by, revoked_at";

#[async_trait]
impl CredentialStore for SqliteCredentials {
    async fn insert_token(&self, record: &TokenRecord, secret_hash: &str) -> Result<(), StoreError> {
        let record = record.clone();
        let secret_hash = secret_hash.to_owned();
        self.with(move |conn| {
            let created_by = serde_json::to_string(&record.created_by).map_err(backend)?;
            conn.execute(
                "INSERT INTO api_tokens (id, name, role, secret_hash, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![record.id, record.name, record.role.as_str(), secret_hash, record.created_at, created_by],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn find_token(&self, secret_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let secret_hash = secret_hash.to_owned();
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM api_tokens WHERE secret_hash = ?1 AND revoked_at IS NULL"
            ))
            .map_err(backend)?
            .query_row([secret_hash], row_token)
            .optional()
            .map_err(backend)?
            .map(to_record)
            .transpose()
        })
        .await
    }

    async fn revoke_token(&self, id: &str, at: &str) -> Result<bool, StoreError> {
        let (id, at) = (id.to_owned(), at.to_owned());
        self.with(move |conn| {
            conn.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at],
            )
            .map(|n| n == 1)
            .map_err(backend)
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM api_tokens ORDER BY created_at, id"))
                .map_err(backend)?;
            let rows = stmt
                .query_map([], row_token)
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            rows.into_iter().map(to_record).collect()
        })
        .await
    }
}
