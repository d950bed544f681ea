//! Read models on PostgreSQL: each projection's tables and checkpoint in a
//! schema of its own (`rm_<NAME>`), written by the same runner logic as on
//! SQLite (`herald_store::projection::ReadModel` over [`PgModel`]) with the
//! projection's statements as written ([`Db`]: `?N` become `$N`).
//!
//! Several herald instances share one model. Correctness does not depend on
//! who applies: every apply locks the checkpoint row (`FOR UPDATE`) and
//! writes only if it is still the one the caller read, so two instances never
//! both apply a page. Efficiency does: one instance at a time *leads* a model
//! ([`PgModel::lead`]: a session-level advisory lock per model, held on a
//! connection of its own), the others only read it and publish its changes to
//! their resource streams. When the leader dies its connection closes, the
//! lock goes with it, and another instance takes it at its next try (each
//! tries at most every [`LEAD_RETRY`]).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use herald_core::store::StoreError;
use herald_store::projection::{READ_CHECKPOINT, ReadFn, ReadModel, RowProjection, Storage, WriteFn, write_checkpoint};
use herald_store::sql::{Db, Param, SqlRow, dollar_params};
use tokio::runtime::Handle;
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::{ToSql, Type, to_sql_checked};

use crate::store::{build_pool, pg, pool_error, with_causes};

/// Connections per read model's pool (reads of handlers and resource streams,
/// the runner's writes, and the leader's lock).
pub const MODEL_POOL_SIZE: usize = 6;

/// How often an instance that does not lead a model tries to, and how often
/// the leader checks its lock's connection is alive.
pub const LEAD_RETRY: Duration = Duration::from_secs(1);

/// The advisory lock keys of read models: this, plus a hash of the name.
const LEAD_LOCK_BASE: i64 = 0x6865_7261_6c64_0000; // "herald\0\0"

/// Where the read models of one database are opened.
#[derive(Clone)]
pub struct PgModels {
    config: tokio_postgres::Config,
}

impl PgModels {
    /// Read models in the database `config` names (each model gets a pool of
    /// its own, [`MODEL_POOL_SIZE`] connections at most).
    pub fn new(config: tokio_postgres::Config) -> PgModels {
        PgModels { config }
    }

    /// Opens (creating if needed) the model of `P` in its schema; a model
    /// stored in an older format is dropped and recreated empty at checkpoint
    /// 0 (it is then replayed from the log); one of a newer format is refused.
    pub async fn open<P: RowProjection>(&self) -> Result<ReadModel<P, PgModel>, StoreError> {
        if P::NAME.is_empty()
            || !P::NAME
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(StoreError::Backend(format!(
                "read model name {:?}: only lowercase letters, digits and _ may name a PostgreSQL schema",
                P::NAME
            )));
        }
        let schema = format!("rm_{}", P::NAME);
        let mut config = self.config.clone();
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} -c search_path={schema}"),
            _ => format!("-c search_path={schema}"),
        };
        config.options(&options);
        let (pool, target) = build_pool(config, MODEL_POOL_SIZE)?;
        let mut client = pool.get().await.map_err(|e| {
            StoreError::Backend(format!("cannot connect to PostgreSQL at {target}: {}", with_causes(&e)))
        })?;
        prepare_schema::<P>(&mut client, &schema).await?;
        drop(client);
        Ok(ReadModel::new(PgModel {
            pool,
            what: format!("read model {} in {target} (schema {schema})", P::NAME),
            lock_key: LEAD_LOCK_BASE ^ i64::from(fnv32(P::NAME)),
            lead: tokio::sync::Mutex::new(Lead::default()),
        }))
    }
}

fn fnv32(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Creates the model's schema and tables, or recreates them for a format
/// change; one instance at a time (a transaction-scoped advisory lock).
async fn prepare_schema<P: RowProjection>(client: &mut Object, schema: &str) -> Result<(), StoreError> {
    let what = |step: &'static str| move |e| pg(&format!("read model {}: {step}", P::NAME), e);
    let tx = client.transaction().await.map_err(what("begin"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&(LEAD_LOCK_BASE ^ i64::from(fnv32(P::NAME)) ^ 1)],
    )
    .await
    .map_err(what("lock"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS \"{schema}\".format (
             id      INT PRIMARY KEY CHECK (id = 1),
             version BIGINT NOT NULL
         );"
    ))
    .await
    .map_err(what("create schema"))?;
    let stored: Option<i64> = tx
        .query_opt(&format!("SELECT version FROM \"{schema}\".format WHERE id = 1"), &[])
        .await
        .map_err(what("read format"))?
        .map(|r| r.get(0));
    match stored {
        Some(v) if v == P::VERSION => {}
        Some(v) if v > P::VERSION => {
            return Err(StoreError::Backend(format!(
                "read model {}: its tables are in format {v}, newer than this herald's {} \
                 (a newer herald shares this database; upgrade this one)",
                P::NAME,
                P::VERSION
            )));
        }
        _ => {
            if let Some(v) = stored {
                tracing::info!(
                    projection = P::NAME,
                    from = v,
                    to = P::VERSION,
                    "read model format changed: rebuilding it from the log"
                );
            }
            let mut drop = String::new();
            for table in P::TABLES.iter().chain(&["checkpoint"]) {
                drop.push_str(&format!("DROP TABLE IF EXISTS \"{schema}\".\"{table}\" CASCADE;"));
            }
            tx.batch_execute(&drop).await.map_err(what("drop tables"))?;
            tx.execute(
                &format!(
                    "INSERT INTO \"{schema}\".format (id, version) VALUES (1, $1)
                     ON CONFLICT (id) DO UPDATE SET version = excluded.version"
                ),
                &[&P::VERSION],
            )
            .await
            .map_err(what("write format"))?;
        }
    }
    // The pool's connections find the tables through their search_path.
    tx.batch_execute(&format!(
        "SET LOCAL search_path TO \"{schema}\";
         CREATE TABLE IF NOT EXISTS checkpoint (
             id       INT PRIMARY KEY CHECK (id = 1),
             position BIGINT NOT NULL
         );
         INSERT INTO checkpoint (id, position) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
         {}",
        P::POSTGRES_SCHEMA
    ))
    .await
    .map_err(what("create tables"))?;
    tx.commit().await.map_err(what("commit"))
}

/// Whether this process leads a model: the connection holding its lock.
#[derive(Default)]
struct Lead {
    holder: Option<Object>,
    /// When the lock (or the holder's liveness) was last checked.
    checked: Option<Instant>,
}

/// One read model's schema.
pub struct PgModel {
    pool: Pool,
    what: String,
    lock_key: i64,
    lead: tokio::sync::Mutex<Lead>,
}

impl PgModel {
    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `f` on a blocking thread with the model's connection inside a
    /// transaction (`read_only`: a snapshot; otherwise read committed).
    async fn transaction<T: Send + 'static>(
        &self,
        read_only: bool,
        f: impl FnOnce(&dyn Db) -> Result<Option<T>, StoreError> + Send + 'static,
    ) -> Result<Option<T>, StoreError> {
        let mut client = self.client().await?;
        let what = self.what.clone();
        tokio::task::spawn_blocking(move || {
            let rt = Handle::current();
            let builder = client.build_transaction();
            let builder = if read_only {
                builder.isolation_level(IsolationLevel::RepeatableRead).read_only(true)
            } else {
                builder.isolation_level(IsolationLevel::ReadCommitted)
            };
            let tx = rt.block_on(builder.start()).map_err(|e| pg(&what, e))?;
            let out = f(&PgDb { tx: &tx, rt: &rt })?;
            match out {
                // `None`: roll back (dropping `tx` does).
                None => Ok(None),
                Some(out) => {
                    rt.block_on(tx.commit()).map_err(|e| pg(&what, e))?;
                    Ok(Some(out))
                }
            }
        })
        .await
        .map_err(|e| StoreError::Backend(format!("{}: task failed: {e}", self.what)))?
    }
}

#[async_trait]
impl Storage for PgModel {
    fn describe(&self) -> String {
        self.what.clone()
    }

    async fn stored_checkpoint(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(READ_CHECKPOINT)
            .await
            .map_err(|e| pg(&self.what, e))?;
        let row = client.query_opt(&stmt, &[]).await.map_err(|e| pg(&self.what, e))?;
        let n: i64 = match row {
            Some(row) => row.try_get(0).map_err(|e| pg(&self.what, e))?,
            None => 0,
        };
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{}: negative checkpoint {n}", self.what)))
    }

    async fn read<T: Send + 'static>(&self, f: ReadFn<T>) -> Result<T, StoreError> {
        let out = self
            .transaction(true, move |db| {
                let checkpoint = herald_store::projection::read_checkpoint(db)?;
                f(db, checkpoint).map(Some)
            })
            .await?;
        out.ok_or_else(|| StoreError::Backend(format!("{}: a read rolled back", self.what)))
    }

    async fn write_from(&self, expected: Option<u64>, new: u64, f: WriteFn) -> Result<bool, StoreError> {
        let done = self
            .transaction(false, move |db| {
                // Taken before anything is read: concurrent writers of this
                // model (any instance) wait here, then see the new checkpoint.
                let stored = db
                    .query_opt("SELECT position FROM checkpoint WHERE id = 1 FOR UPDATE", &[], |r| {
                        r.position(0)
                    })?
                    .unwrap_or(0);
                if expected.is_some_and(|expected| expected != stored) {
                    return Ok(None);
                }
                f(db)?;
                write_checkpoint(db, new)?;
                Ok(Some(()))
            })
            .await?;
        Ok(done.is_some())
    }

    async fn lead(&self) -> Result<bool, StoreError> {
        let mut lead = self.lead.lock().await;
        if lead.checked.is_some_and(|at| at.elapsed() < LEAD_RETRY) {
            return Ok(lead.holder.is_some());
        }
        lead.checked = Some(Instant::now());
        if let Some(holder) = &lead.holder {
            // Still alive? (A closed connection has lost the lock.)
            if holder.simple_query("SELECT 1").await.is_ok() {
                return Ok(true);
            }
            tracing::warn!(model = %self.what, "the connection holding the read model's lead closed");
            lead.holder = None;
        }
        let client = self.client().await?;
        let won: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&self.lock_key])
            .await
            .map_err(|e| pg(&self.what, e))?
            .get(0);
        if won {
            tracing::info!(model = %self.what, "leading the read model (applying the log to it)");
            // Taken out of the pool: the lock lives as long as this connection.
            lead.holder = Some(client);
        }
        Ok(won)
    }
}

/// A parameter as tokio-postgres binds it.
#[derive(Debug)]
struct PgParam<'a>(Param<'a>);

impl ToSql for PgParam<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Param::Int(n) => n.to_sql(ty, out),
            Param::Text(s) => s.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// A transaction of a model, run from a blocking thread.
struct PgDb<'a> {
    tx: &'a deadpool_postgres::Transaction<'a>,
    rt: &'a Handle,
}

impl PgDb<'_> {
    fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        self.rt
            .block_on(self.tx.prepare_cached(&dollar_params(sql)))
            .map_err(|e| pg("read model statement", e))
    }
}

fn bind<'p>(params: &'p [PgParam<'p>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Db for PgDb<'_> {
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let stmt = self.prepare(sql)?;
        let params: Vec<PgParam<'_>> = params.iter().map(|p| PgParam(*p)).collect();
        self.rt
            .block_on(self.tx.execute(&stmt, &bind(&params)))
            .map_err(|e| pg("read model write", e))
    }

    fn query(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn SqlRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let stmt = self.prepare(sql)?;
        let params: Vec<PgParam<'_>> = params.iter().map(|p| PgParam(*p)).collect();
        let rows = self
            .rt
            .block_on(self.tx.query(&stmt, &bind(&params)))
            .map_err(|e| pg("read model query", e))?;
        for row in &rows {
            each(&PgRow(row))?;
        }
        Ok(())
    }
}

struct PgRow<'a>(&'a tokio_postgres::Row);

impl SqlRow for PgRow<'_> {
    fn int(&self, idx: usize) -> Result<i64, StoreError> {
        self.0.try_get(idx).map_err(|e| pg("read model row", e))
    }

    fn text(&self, idx: usize) -> Result<String, StoreError> {
        self.0.try_get(idx).map_err(|e| pg("read model row", e))
    }
}
