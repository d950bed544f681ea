//! `herald verify` on PostgreSQL: every stored column of every row checked
//! through [`herald_core::audit`] (the same code as the embedded store's), in
//! pages of one repeatable-read, read-only snapshot, and the append-only
//! triggers. [`verify_read_only`] does it on one connection to a database it
//! does not migrate or otherwise change.

use deadpool_postgres::Object;
use herald_core::audit::{ChainVerifier, Expect, StoredRow, VerifyReport};
use herald_core::store::StoreError;
use tokio_postgres::IsolationLevel;

use crate::migrations::MIGRATIONS;
use crate::store::{build_pool, first_connection, pg, read_sequencer_head, sql_int, stored_u64};

/// The triggers that keep `events` append-only (migration 1); `verify` checks them.
pub(crate) const APPEND_ONLY_TRIGGERS: [&str; 2] = ["events_append_only", "events_no_truncate"];

/// Rows per query while verifying.
const PAGE: i64 = 1000;

/// What [`verify_read_only`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub report: VerifyReport,
    /// The database's schema version (its last migration).
    pub schema_version: i64,
}

impl Verified {
    /// A note when the schema is older than this herald's (verifying it is
    /// fine: the log's tables are those of migration 1; the next herald that
    /// opens it as a store migrates it).
    pub fn schema_note(&self) -> Option<String> {
        let latest = latest_version();
        (self.schema_version < latest).then(|| {
            format!(
                "the database's schema is at migration {}, older than this herald's ({latest}); verify does not \
                 migrate it",
                self.schema_version
            )
        })
    }
}

fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Verifies the log of the database at `pg_config` on one connection,
/// without migrating it: refuses a database with no herald log, or one whose
/// schema is newer than this herald knows. `progress` is called after each
/// page with (checked, head).
pub async fn verify_read_only(
    pg_config: tokio_postgres::Config,
    expect: Option<Expect>,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<Verified, StoreError> {
    let (pool, target) = build_pool(pg_config, 1)?;
    let mut client = first_connection(&pool, &target).await?;
    const WHAT: &str = "reading the schema";
    let row = client
        .query_one(
            "SELECT to_regclass('herald_migrations') IS NOT NULL AND to_regclass('events') IS NOT NULL
                    AND to_regclass('sequencer') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| pg(WHAT, e))?;
    let found: bool = row.try_get(0).map_err(|e| pg(WHAT, e))?;
    if !found {
        return Err(StoreError::Backend(format!(
            "there is no herald event log in the PostgreSQL database {target}"
        )));
    }
    let schema_version: Option<i64> = client
        .query_one("SELECT max(version) FROM herald_migrations", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| pg(WHAT, e))?;
    let Some(schema_version) = schema_version else {
        return Err(StoreError::Backend(format!(
            "there is no herald event log in the PostgreSQL database {target} (no migration is recorded)"
        )));
    };
    let latest = latest_version();
    if schema_version > latest {
        return Err(StoreError::Backend(format!(
            "the PostgreSQL database {target} has schema migration {schema_version}, newer than this herald knows \
             ({latest}): verify it with a newer herald"
        )));
    }
    let report = verify_log(&mut client, expect, progress).await?;
    Ok(Verified { report, schema_version })
}

/// The verification itself, on `client`, in one read-only repeatable-read
/// transaction (one snapshot), in pages.
pub(crate) async fn verify_log(
    client: &mut Object,
    expect: Option<Expect>,
    mut progress: impl FnMut(u64, u64) + Send,
) -> Result<VerifyReport, StoreError> {
    const WHAT: &str = "verify";
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| pg(WHAT, e))?;
    let head = read_sequencer_head(&tx).await?;
    let until = sql_int(head.position);
    let mut verifier = ChainVerifier::new(head, expect);
    let stmt = tx
        .prepare(
            "SELECT position, stream, version, type, category, hash, envelope FROM events
             WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3",
        )
        .await
        .map_err(|e| pg(WHAT, e))?;
    let mut after = 0i64;
    'pages: while after < until {
        let rows = tx
            .query(&stmt, &[&after, &until, &PAGE])
            .await
            .map_err(|e| pg(WHAT, e))?;
        let Some(last) = rows.last() else { break };
        after = last.try_get(0).map_err(|e| pg(WHAT, e))?;
        for row in &rows {
            let position = stored_u64(row, 0, WHAT)?;
            let version = stored_u64(row, 2, WHAT)?;
            let checked = verifier.check(StoredRow {
                position,
                envelope: row.try_get(6).map_err(|e| pg(WHAT, e))?,
                stream: Some(row.try_get(1).map_err(|e| pg(WHAT, e))?),
                version: Some(version),
                event_type: Some(row.try_get(3).map_err(|e| pg(WHAT, e))?),
                category: Some(row.try_get(4).map_err(|e| pg(WHAT, e))?),
                hash: Some(row.try_get(5).map_err(|e| pg(WHAT, e))?),
            });
            if !checked {
                break 'pages;
            }
        }
        progress(verifier.checked(), u64::try_from(until).unwrap_or(0));
    }
    let enabled: Vec<String> = tx
        .query(
            "SELECT tgname::text FROM pg_trigger
             WHERE tgrelid = 'events'::regclass AND NOT tgisinternal AND tgenabled <> 'D'",
            &[],
        )
        .await
        .map_err(|e| pg(WHAT, e))?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(|e| pg(WHAT, e))?;
    let findings: Vec<String> = APPEND_ONLY_TRIGGERS
        .iter()
        .filter(|name| !enabled.iter().any(|t| t == *name))
        .map(|name| format!("the append-only trigger {name} on events is missing or disabled"))
        .collect();
    tx.commit().await.map_err(|e| pg(WHAT, e))?;
    Ok(verifier.finish(&findings))
}
