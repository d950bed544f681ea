//! [`PgStore`]: the event store on PostgreSQL.
//!
//! - **Writer**: one task per store takes every queued append (up to
//!   `max_batch`) and commits them in one transaction. The transaction first
//!   locks the one `sequencer` row (`SELECT … FOR UPDATE`): that lock is the
//!   one serialized step of every process on the database. Under it the batch
//!   reads the head, checks idempotency and expected versions, assigns
//!   positions and the hash chain, writes every row in one statement (UNNEST
//!   arrays), moves the sequencer and commits without waiting for the WAL
//!   flush (releasing the lock); then, outside the lock, it moves the durable
//!   horizon in a synchronously committed transaction ([`make_durable`]) and
//!   `NOTIFY`s. Nobody is answered before that flush. A request that fails a
//!   check fails alone; the others of its batch commit.
//! - **Live**: a publisher keeps `published`, the last position sent on the
//!   live channel, and only ever sends the batch that continues it. The writer
//!   publishes its own rows directly when they continue `published`; anything
//!   else (other processes' commits) is read from the table by position, in
//!   pages, by the follower task, woken by a LISTEN connection or, if
//!   notifications are lost or coalesced, by a poll every [`PgConfig::poll`].
//! - **Reads** go through a connection pool; each is one statement (one
//!   snapshot) bounded by the durable horizon ([`HORIZON`]), so it never
//!   returns a position without every one below it, nor one a crash of the
//!   database server could take back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use herald_core::audit::{Expect, VerifyReport};
use herald_core::envelope::{GENESIS_HASH, RecordedEvent, category_of};
use herald_core::framing::Framing;
use herald_core::store::{
    AppendOutcome, AppendRequest, Committed, CommittedBatch, DownOnDrop, EventStore, Filter, Head, LiveReceiver, Page,
    SealedEvent, StoreError, StreamSlice, WriteHealth, WriterHealth, fingerprints_match, next_recorded_at,
};
use herald_core::supervise::{PanicLimit, WriterFatal, give_up, panic_message, panicked_batch_error};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The channel every commit notifies, with its last position as the payload.
pub const NOTIFY_CHANNEL: &str = "herald_events";

/// The `application_name` of the LISTEN connection (unless the URL sets one).
pub const LISTENER_NAME: &str = "herald-listen";

#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Most appends committed in one transaction (one sequencer lock hold).
    pub max_batch: usize,
    /// Appends waiting for the writer before callers wait to enqueue.
    pub queue: usize,
    /// Committed batches kept for live readers; one further behind is told it lagged.
    pub live_capacity: usize,
    /// Pooled connections (the writer takes one per batch; reads the rest).
    pub pool_size: usize,
    /// How often the follower reads the table for commits it was not told of
    /// (lost or coalesced notifications, a listener reconnecting).
    pub poll: Duration,
    /// Whether to LISTEN for commits of other processes. Off, only the poll
    /// finds them (tests; a connection pooler that does not pass NOTIFY).
    pub listen: bool,
    /// Most rows the follower reads per query.
    pub page: usize,
    /// The writer gives up (calls `on_writer_fatal`) after this many panics
    /// with no commit in between, or this many within a minute.
    pub writer_panic_limit: u32,
    /// What happens when the writer gives up. Default: exit the process (70).
    pub on_writer_fatal: WriterFatal,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            max_batch: 512,
            queue: 4096,
            live_capacity: 1024,
            pool_size: 8,
            poll: Duration::from_millis(250),
            listen: true,
            page: 1000,
            writer_panic_limit: 3,
            on_writer_fatal: WriterFatal::default(),
        }
    }
}

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

struct Job {
    request: AppendRequest,
    reply: Reply,
}

/// What the tasks and the store's handles share.
#[derive(Default)]
struct Shared {
    health: Arc<WriterHealth>,
    /// Test hook: the next this-many batches panic before they commit.
    inject_panics: AtomicU32,
    /// Test hook: the next this-many batches commit and then fail before
    /// their flush (as a writer killed between the two would).
    lose_flushes: AtomicU32,
}

pub struct PgStore {
    pool: Pool,
    jobs: mpsc::Sender<Job>,
    live: broadcast::Sender<Arc<CommittedBatch>>,
    shared: Arc<Shared>,
    framing: Arc<dyn Framing>,
    /// Where the store is, without credentials (for messages).
    target: String,
    /// Stops the follower and the listener when the store is dropped.
    _stop: DropGuard,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish()
    }
}

/// `host:port/dbname` of a configuration: never the user's password.
/// `host:port/db` of a configuration, for messages (never its password).
pub fn describe_config(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default database)");
    format!("{host}:{port}/{db}")
}

/// An error and its causes, `: `-separated (tokio-postgres keeps the
/// server's message and the OS error in the cause, not in its own text).
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

pub(crate) fn pg(what: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!("{what}: {}", with_causes(&e)))
}

pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    // The database is unreachable or full: the caller may retry (503), not a bug (500).
    StoreError::Unavailable(format!("no PostgreSQL connection: {}", with_causes(&e)))
}

/// Bounds past `i64::MAX` saturate rather than wrap.
pub(crate) fn sql_int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

pub(crate) fn stored_u64(row: &Row, idx: usize, what: &str) -> Result<u64, StoreError> {
    let n: i64 = row.try_get(idx).map_err(|e| pg(what, e))?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{what}: negative value {n}")))
}

/// How herald's connections plan. Statements are prepared once per
/// connection and run for its whole life while the tables grow from empty,
/// and every hot statement has an index to walk. So: one generic plan per
/// statement (planning each execution afresh took about 30 % of the server's
/// CPU under load); sequential scans disabled, so that plan, even when made
/// on an empty table, walks the index and not the heap; no JIT, which a
/// disabled scan's cost penalty would otherwise trigger (hundreds of
/// milliseconds of compiling for a sub-millisecond statement).
const PLANNING: &str = "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off -c jit=off";

/// A pool of at most `size` connections (named `herald` unless the
/// configuration names them) and the database's description for messages
/// (no password). Connects nothing yet.
pub(crate) fn build_pool(pg_config: tokio_postgres::Config, size: usize) -> Result<(Pool, String), StoreError> {
    let target = describe_config(&pg_config);
    let mut pool_config = pg_config;
    if pool_config.get_application_name().is_none() {
        pool_config.application_name("herald");
    }
    let options = match pool_config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {PLANNING}"),
        _ => PLANNING.to_owned(),
    };
    pool_config.options(&options);
    let manager = Manager::from_config(
        pool_config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(size.max(1))
        .build()
        .map_err(|e| StoreError::Backend(format!("PostgreSQL pool for {target}: {e}")))?;
    Ok((pool, target))
}

/// A pooled connection, or an error naming the database.
pub(crate) async fn first_connection(pool: &Pool, target: &str) -> Result<Object, StoreError> {
    pool.get()
        .await
        .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL at {target}: {}", with_causes(&e))))
}

/// One connection pool on a database with every migration applied, for the
/// event store ([`PgStore::with_database`]) and the accounts
/// ([`PgAccounts::with_database`](crate::PgAccounts::with_database)) to share:
/// one pool, one migration run.
#[derive(Clone)]
pub struct Database {
    pub(crate) pool: Pool,
    pub(crate) config: tokio_postgres::Config,
    pub(crate) target: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("target", &self.target).finish()
    }
}

impl Database {
    /// A pool of at most `size` connections (named `herald` unless the
    /// configuration names them), after applying the migrations the database
    /// lacks on its first connection.
    pub async fn connect(pg_config: tokio_postgres::Config, size: usize) -> Result<Database, StoreError> {
        let (pool, target) = build_pool(pg_config.clone(), size)?;
        let mut client = first_connection(&pool, &target).await?;
        crate::migrations::migrate(&mut client).await?;
        drop(client);
        Ok(Database {
            pool,
            config: pg_config,
            target,
        })
    }

    /// [`connect`](Self::connect) to a libpq URL or key=value string.
    pub async fn open(url: &str, size: usize) -> Result<Database, StoreError> {
        Self::connect(parse_url(url)?, size).await
    }

    /// `host:port/db` (never the password), for messages.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// `url` parsed; the error does not repeat it (it may hold a password).
pub(crate) fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    url.parse()
        .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL connection string: {}", with_causes(&e))))
}

fn sealed_row(row: &Row) -> Result<SealedEvent, StoreError> {
    const WHAT: &str = "reading an event row";
    Ok(SealedEvent {
        position: stored_u64(row, 0, WHAT)?,
        stream: row.try_get(1).map_err(|e| pg(WHAT, e))?,
        version: stored_u64(row, 2, WHAT)?,
        event_type: row.try_get(3).map_err(|e| pg(WHAT, e))?,
        json: row.try_get(4).map_err(|e| pg(WHAT, e))?,
        hash: row.try_get(5).map_err(|e| pg(WHAT, e))?,
    })
}

fn event_of(framing: &dyn Framing, row: &Row) -> Result<Arc<RecordedEvent>, StoreError> {
    event_at(framing, row, 0)
}

/// The event whose [`EVENT_COLUMNS`] start at column `at` of `row`.
fn event_at(framing: &dyn Framing, row: &Row, at: usize) -> Result<Arc<RecordedEvent>, StoreError> {
    const WHAT: &str = "reading an event row";
    let position = stored_u64(row, at, WHAT)?;
    let stream: &str = row.try_get(at + 1).map_err(|e| pg(WHAT, e))?;
    let version = stored_u64(row, at + 2, WHAT)?;
    let event_type: &str = row.try_get(at + 3).map_err(|e| pg(WHAT, e))?;
    let json: &str = row.try_get(at + 4).map_err(|e| pg(WHAT, e))?;
    Ok(Arc::new(RecordedEvent::from_parts(
        framing, position, stream, version, event_type, json,
    )))
}

const EVENT_COLUMNS: &str = "position, stream, version, type, envelope, hash";

impl PgStore {
    /// Connects to `url` (a libpq URL or key=value string), applies the
    /// migrations the database lacks, and starts the writer, the follower and
    /// (unless [`PgConfig::listen`] is off) the listener.
    pub async fn open(url: &str, framing: Arc<dyn Framing>, config: PgConfig) -> Result<Arc<PgStore>, StoreError> {
        Self::open_config(parse_url(url)?, framing, config).await
    }

    /// [`open`](Self::open) with a parsed configuration.
    pub async fn open_config(
        pg_config: tokio_postgres::Config,
        framing: Arc<dyn Framing>,
        config: PgConfig,
    ) -> Result<Arc<PgStore>, StoreError> {
        let database = Database::connect(pg_config, config.pool_size.max(2)).await?;
        Self::with_database(&database, framing, config).await
    }

    /// The store on `database`'s pool (shared with whatever else uses it, so
    /// [`PgConfig::pool_size`] is not used; the writer takes one of its
    /// connections per batch, reads and the follower the others).
    pub async fn with_database(
        database: &Database,
        framing: Arc<dyn Framing>,
        config: PgConfig,
    ) -> Result<Arc<PgStore>, StoreError> {
        let pool = database.pool.clone();
        let target = database.target.clone();
        let client = first_connection(&pool, &target).await?;
        // One row per writer that ever ran: those behind the horizon say
        // nothing (a live writer's upsert puts its row back).
        client
            .execute(&format!("DELETE FROM durable WHERE position < {HORIZON}"), &[])
            .await
            .map_err(|e| pg("tidying the durable horizon", e))?;
        let published = read_head(&client).await?.position;
        drop(client);

        let (jobs, jobs_rx) = mpsc::channel(config.queue.max(1));
        let (live, _) = broadcast::channel(config.live_capacity.max(1));
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let mirror = Arc::new(AtomicU64::new(published));
        let publisher = Arc::new(tokio::sync::Mutex::new(Publisher {
            published,
            mirror: mirror.clone(),
            live: live.clone(),
            framing: framing.clone(),
            page: config.page.max(1),
        }));
        let on_fatal = config.on_writer_fatal.clone();
        let writer_id = uuid::Uuid::now_v7().to_string();
        let writer = Writer {
            pool: pool.clone(),
            conn: None,
            framing: framing.clone(),
            jobs: jobs_rx,
            publisher: publisher.clone(),
            max_batch: config.max_batch.max(1),
            shared: shared.clone(),
            committed_unanswered: false,
            writer_id: writer_id.clone(),
            lock_wait_us: AtomicU64::new(0),
            last_end: AtomicU64::new(0),
            panics: PanicLimit::new(config.writer_panic_limit),
            on_fatal: config.on_writer_fatal,
        };
        tokio::spawn(async move {
            // Batches are supervised inside `run`; this catches a panic in
            // the supervision itself, which leaves nobody to write.
            if let Err(payload) = std::panic::AssertUnwindSafe(writer.run()).catch_unwind().await {
                (on_fatal.0)(&format!(
                    "the writer loop panicked outside a batch: {}",
                    panic_message(&*payload)
                ));
            }
        });
        tokio::spawn(follow(
            pool.clone(),
            publisher,
            wake.clone(),
            config.poll,
            writer_id,
            stop.clone(),
        ));
        if config.listen {
            let mut listen_config = database.config.clone();
            if listen_config.get_application_name().is_none() {
                listen_config.application_name(LISTENER_NAME);
            }
            let retry = config.poll.min(Duration::from_secs(1));
            tokio::spawn(listen(listen_config, target.clone(), wake, mirror, retry, stop.clone()));
        }
        Ok(Arc::new(PgStore {
            pool,
            jobs,
            live,
            shared,
            framing,
            target,
            _stop: stop.drop_guard(),
        }))
    }

    /// Test hook: the writer's next `n` batches panic before they commit (as
    /// a failed write inside the writer would). Not reachable over HTTP.
    #[doc(hidden)]
    pub fn inject_writer_panics(&self, n: u32) {
        self.shared.inject_panics.store(n, Ordering::SeqCst);
    }

    /// Test hook: the writer's next `n` batches commit, then fail as if the
    /// process died before making them durable (their callers are told the
    /// append may have been committed). Not reachable over HTTP.
    #[doc(hidden)]
    pub fn lose_writer_flushes(&self, n: u32) {
        self.shared.lose_flushes.store(n, Ordering::SeqCst);
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// PostgreSQL `text` cannot hold U+0000. The envelope escapes it (canonical
/// JSON), but event types, command ids and fingerprints are also stored in
/// columns of their own: such an append is refused before it is queued, so
/// that it cannot fail the batch it would have joined.
fn refuse_nul(request: &AppendRequest) -> Result<(), StoreError> {
    let bad = if request.events.iter().any(|e| e.event_type.contains('\0')) {
        Some("an event type")
    } else if request.idempotency_fingerprint.is_some() && request.command_id.contains('\0') {
        Some("the command_id")
    } else if request
        .idempotency_fingerprint
        .as_deref()
        .is_some_and(|f| f.contains('\0'))
    {
        Some("the idempotency fingerprint")
    } else {
        None
    };
    match bad {
        Some(what) => Err(StoreError::InvalidAppend(format!("{what} contains a NUL character"))),
        None => Ok(()),
    }
}

/// The durable horizon (migration 3) as an SQL expression: every position up
/// to it is committed *and* flushed; readers read no further.
pub(crate) const HORIZON: &str = "(SELECT max(position) FROM durable)";

/// The readers' head: the last durable position and its hash.
pub(crate) async fn read_head(client: &impl deadpool_postgres::GenericClient) -> Result<Head, StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT h.position, e.hash FROM (SELECT {HORIZON} AS position) h
             LEFT JOIN events e ON e.position = h.position"
        ))
        .await
        .map_err(|e| pg("reading the head", e))?;
    let row = client
        .query_one(&stmt, &[])
        .await
        .map_err(|e| pg("reading the head", e))?;
    let position: Option<i64> = row.try_get(0).map_err(|e| pg("reading the head", e))?;
    let position = match position {
        Some(_) => stored_u64(&row, 0, "reading the head")?,
        None => return Err(StoreError::Corrupt("the durable horizon has no row".into())),
    };
    let hash: Option<String> = row.try_get(1).map_err(|e| pg("reading the head", e))?;
    head_of(position, hash)
}

/// The head as the sequencer has it: every committed position, durable or
/// not yet (verify, which reads one snapshot of whatever is committed).
pub(crate) async fn read_sequencer_head(client: &impl deadpool_postgres::GenericClient) -> Result<Head, StoreError> {
    let row = client
        .query_one("SELECT position, hash FROM sequencer", &[])
        .await
        .map_err(|e| pg("reading the head", e))?;
    let position = stored_u64(&row, 0, "reading the head")?;
    let hash: String = row.try_get(1).map_err(|e| pg("reading the head", e))?;
    head_of(position, Some(hash))
}

fn head_of(position: u64, hash: Option<String>) -> Result<Head, StoreError> {
    match (position, hash) {
        (0, _) => Ok(Head {
            position,
            hash: GENESIS_HASH.to_owned(),
        }),
        (_, Some(hash)) => Ok(Head { position, hash }),
        (_, None) => Err(StoreError::Corrupt(format!(
            "the durable horizon is at position {position}, which the log does not hold"
        ))),
    }
}

/// Moves writer `$1`'s row of the durable horizon to the sequencer's position
/// (as this transaction sees it); returns that position.
pub(crate) const MOVE_HORIZON: &str = "INSERT INTO durable (writer, position) SELECT $1, position FROM sequencer
     ON CONFLICT (writer) DO UPDATE SET position = GREATEST(durable.position, excluded.position)
     RETURNING position";

/// Moves this writer's row of the durable horizon to the sequencer's
/// position, in a transaction that commits with the session's
/// `synchronous_commit` (on by default): its WAL flush covers every commit
/// before it, so once it returns, every position up to the one it returns is
/// durable. (The upsert always writes, so the commit always flushes.) Then
/// notifies every instance, in a statement of its own sent in the same
/// pipeline (the server runs it once the upsert has committed): a NOTIFY
/// holds PostgreSQL's one notification-queue lock until its transaction ends,
/// and inside the upsert's transaction that would serialize every instance's
/// flushes. Returns the new horizon of this writer.
pub(crate) async fn make_durable(client: &deadpool_postgres::ClientWrapper, writer: &str) -> Result<u64, StoreError> {
    const WHAT: &str = "making the batch durable";
    let notify_sql = format!("SELECT pg_notify($1, {HORIZON}::text)");
    let (upsert, notify) = tokio::try_join!(client.prepare_cached(MOVE_HORIZON), client.prepare_cached(&notify_sql),)
        .map_err(|e| pg(WHAT, e))?;
    let writer_arg: [&(dyn ToSql + Sync); 1] = [&writer];
    let durable = async {
        let row = client.query_one(&upsert, &writer_arg).await.map_err(|e| pg(WHAT, e))?;
        stored_u64(&row, 0, WHAT)
    };
    // Its payload, the horizon, lets a listener skip what it published already.
    let told = client.query_one(&notify, &[&NOTIFY_CHANNEL]);
    let (durable, told) = tokio::join!(durable, told);
    let durable = durable?;
    if let Err(e) = told {
        // Nothing depends on it: the other instances' followers poll.
        tracing::debug!(error = %with_causes(&e), "notifying the other instances failed");
    }
    Ok(durable)
}

#[async_trait]
impl EventStore for PgStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        request.check()?;
        refuse_nul(&request)?;
        if self.shared.health.is_down() {
            return Err(StoreError::Unavailable(self.shared.health.cause()));
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { request, reply })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        answer.await.map_err(|_| StoreError::ShuttingDown)?
    }

    async fn find_command(&self, command_id: &str) -> Result<Option<(String, Committed)>, StoreError> {
        let client = self.client().await?;
        find_command(&client, &*self.framing, command_id, Horizon::Durable).await
    }

    async fn read_stream(&self, stream: &str, from_version: u64, limit: usize) -> Result<StreamSlice, StoreError> {
        let client = self.client().await?;
        // One statement, one snapshot: the stream's version and its rows agree.
        let stmt = client
            .prepare_cached(&format!(
                "SELECT v.current, e.position, e.stream, e.version, e.type, e.envelope
                 FROM (SELECT {HORIZON} AS horizon) h
                 CROSS JOIN LATERAL (
                     SELECT COALESCE(MAX(version), 0) AS current FROM events
                     WHERE stream = $1 AND position <= h.horizon
                 ) v
                 LEFT JOIN LATERAL (
                     SELECT position, stream, version, type, envelope FROM events
                     WHERE stream = $1 AND version >= $2 AND position <= h.horizon ORDER BY version LIMIT $3
                 ) e ON true
                 ORDER BY e.version"
            ))
            .await
            .map_err(|e| pg("read_stream", e))?;
        let rows = client
            .query(&stmt, &[&stream, &sql_int(from_version), &sql_int(limit)])
            .await
            .map_err(|e| pg("read_stream", e))?;
        let mut version = 0;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            version = stored_u64(row, 0, "read_stream")?;
            let position: Option<i64> = row.try_get(1).map_err(|e| pg("read_stream", e))?;
            if position.is_none() {
                continue;
            }
            let position = stored_u64(row, 1, "read_stream")?;
            let stream: &str = row.try_get(2).map_err(|e| pg("read_stream", e))?;
            let v = stored_u64(row, 3, "read_stream")?;
            let event_type: &str = row.try_get(4).map_err(|e| pg("read_stream", e))?;
            let json: &str = row.try_get(5).map_err(|e| pg("read_stream", e))?;
            events.push(Arc::new(RecordedEvent::from_parts(
                &*self.framing,
                position,
                stream,
                v,
                event_type,
                json,
            )));
        }
        Ok(StreamSlice { version, events })
    }

    async fn read_all(&self, after: u64, filter: &Filter, limit: usize) -> Result<Page, StoreError> {
        let client = self.client().await?;
        let after_i = sql_int(after);
        let limit_i = sql_int(limit.max(1));
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&after_i, &limit_i];
        let columns = [
            ("stream", &filter.streams),
            ("category", &filter.categories),
            ("type", &filter.types),
        ];
        let mut others = String::new();
        let mut driving = None;
        for (column, values) in columns {
            if values.is_empty() {
                continue;
            }
            args.push(values);
            if driving.is_none() {
                driving = Some((column, args.len()));
            } else {
                others.push_str(&format!(" AND {column} = ANY(${})", args.len()));
            }
        }
        let page = match driving {
            None => format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 AND position <= h.head ORDER BY position LIMIT $2"
            ),
            // `column = ANY(array)` cannot walk the (column, position) index in
            // position order: PostgreSQL would read every match up to the head
            // and sort them. One ordered, limited index walk per value instead,
            // merged: work bounded by the page, not by how far behind the reader is.
            Some((column, n)) => format!(
                "SELECT p.* FROM (SELECT DISTINCT unnest(${n}::text[]) AS value) f, LATERAL (
                     SELECT {EVENT_COLUMNS} FROM events
                     WHERE {column} = f.value AND position > $1 AND position <= h.head{others}
                     ORDER BY position LIMIT $2
                 ) p
                 ORDER BY p.position LIMIT $2"
            ),
        };
        // One statement, one snapshot: the head (the durable horizon) and the
        // page below it.
        let sql = format!(
            "SELECT h.head, e.* FROM (SELECT {HORIZON} AS head) h
             LEFT JOIN LATERAL ({page}) e ON true
             ORDER BY e.position"
        );
        let stmt = client.prepare_cached(&sql).await.map_err(|e| pg("read_all", e))?;
        let rows = client.query(&stmt, &args).await.map_err(|e| pg("read_all", e))?;
        let head = match rows.first() {
            Some(row) => stored_u64(row, 0, "read_all")?,
            None => return Err(StoreError::Corrupt("the durable horizon has no row".into())),
        };
        if limit == 0 || after >= head {
            // Nothing to examine: a reader that is ahead (or asked for nothing) stays put.
            return Ok(Page {
                events: Vec::new(),
                next_after: after,
                head,
            });
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let position: Option<i64> = row.try_get(1).map_err(|e| pg("read_all", e))?;
            if position.is_some() {
                events.push(event_at(&*self.framing, row, 1)?);
            }
        }
        let next_after = if events.len() == limit {
            events.last().map_or(head, |e| e.position())
        } else {
            head
        };
        Ok(Page {
            events,
            next_after,
            head,
        })
    }

    async fn head(&self) -> Result<Head, StoreError> {
        let client = self.client().await?;
        read_head(&client).await
    }

    fn live(&self) -> LiveReceiver {
        self.live.subscribe()
    }

    /// Every column of every row, in one repeatable-read snapshot, and the
    /// append-only triggers.
    async fn verify(&self, expect: Option<Expect>) -> Result<VerifyReport, StoreError> {
        let mut client = self.client().await?;
        crate::verify::verify_log(&mut client, expect, |_, _| {}).await
    }

    fn write_health(&self) -> WriteHealth {
        self.shared.health.health()
    }
}

/// How far a read may see.
#[derive(Clone, Copy)]
enum Horizon {
    /// Only what is durable (every reader but the writer).
    Durable,
    /// Whatever is committed (the writer, under the sequencer lock: it
    /// answers only after its own batch, and so everything before it, is durable).
    Committed,
}

/// The idempotency record of `command_id` and the events it wrote. Works on a
/// pooled client or inside the writer's transaction.
async fn find_command(
    client: &tokio_postgres::Client,
    framing: &dyn Framing,
    command_id: &str,
    horizon: Horizon,
) -> Result<Option<(String, Committed)>, StoreError> {
    const WHAT: &str = "find_command";
    let sql = match horizon {
        Horizon::Durable => format!(
            "SELECT fingerprint, stream, version, first_position, last_position FROM commands
             WHERE command_id = $1 AND last_position <= {HORIZON}"
        ),
        Horizon::Committed => "SELECT fingerprint, stream, version, first_position, last_position FROM commands
             WHERE command_id = $1"
            .to_owned(),
    };
    let row = client.query_opt(&sql, &[&command_id]).await.map_err(|e| pg(WHAT, e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let fingerprint: String = row.try_get(0).map_err(|e| pg(WHAT, e))?;
    let stream: String = row.try_get(1).map_err(|e| pg(WHAT, e))?;
    let version = stored_u64(&row, 2, WHAT)?;
    let first: i64 = row.try_get(3).map_err(|e| pg(WHAT, e))?;
    let last: i64 = row.try_get(4).map_err(|e| pg(WHAT, e))?;
    let rows = client
        .query(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE position >= $1 AND position <= $2 ORDER BY position"),
            &[&first, &last],
        )
        .await
        .map_err(|e| pg(WHAT, e))?;
    let events = rows
        .iter()
        .map(|r| event_of(framing, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((
        fingerprint,
        Committed {
            stream,
            version,
            events,
        },
    )))
}

// ---------------------------------------------------------------------------
// Live: the publisher, the follower and the listener
// ---------------------------------------------------------------------------

/// Sends batches on the live channel strictly in position order, each once.
struct Publisher {
    /// Last position sent on `live`.
    published: u64,
    /// `published`, for the listener to skip notifications of what was sent.
    mirror: Arc<AtomicU64>,
    live: broadcast::Sender<Arc<CommittedBatch>>,
    framing: Arc<dyn Framing>,
    page: usize,
}

impl Publisher {
    fn send(&mut self, batch: CommittedBatch) {
        if let Some(last) = batch.events.last() {
            self.published = last.position();
            self.mirror.store(self.published, Ordering::Release);
            // No receivers is fine: nobody is listening.
            let _ = self.live.send(Arc::new(batch));
        }
    }

    /// Publishes every committed row after `published`, up to `until`, read
    /// from the table by position in pages.
    async fn catch_up(&mut self, client: &deadpool_postgres::ClientWrapper, until: u64) -> Result<(), StoreError> {
        const WHAT: &str = "reading new events";
        while self.published < until {
            // Bounded by the durable horizon in the same statement (one
            // snapshot): everything up to it is committed, so the page has no gap.
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events
                     WHERE position > $1 AND position <= LEAST($2, {HORIZON})
                     ORDER BY position LIMIT $3"
                ))
                .await
                .map_err(|e| pg(WHAT, e))?;
            let rows = client
                .query(&stmt, &[&sql_int(self.published), &sql_int(until), &sql_int(self.page)])
                .await
                .map_err(|e| pg(WHAT, e))?;
            let rows = rows.iter().map(sealed_row).collect::<Result<Vec<_>, _>>()?;
            let Some(first) = rows.first() else {
                return Ok(());
            };
            let contiguous = rows
                .iter()
                .enumerate()
                .all(|(i, r)| r.position == self.published + 1 + i as u64);
            if first.position != self.published + 1 || !contiguous {
                return Err(StoreError::Corrupt(format!(
                    "the log has a gap after position {} (read positions {}..={})",
                    self.published,
                    first.position,
                    rows.last().map_or(0, |r| r.position)
                )));
            }
            let full = rows.len() == self.page;
            self.send(CommittedBatch::encode(&*self.framing, &rows));
            if !full {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Wakes on a notification or every `poll`, and publishes what others
/// committed. At each poll it also checks the durable horizon: a batch whose
/// writer died between its commit and its flush (`make_durable`) would keep
/// readers below it until the next batch; seen stuck on two polls in a row,
/// the follower makes it durable itself.
async fn follow(
    pool: Pool,
    publisher: Arc<tokio::sync::Mutex<Publisher>>,
    wake: Arc<Notify>,
    poll: Duration,
    writer_id: String,
    stop: CancellationToken,
) {
    let mut stuck: Option<(u64, u64)> = None;
    loop {
        let polled = tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => false,
            _ = tokio::time::sleep(poll) => true,
        };
        let client = match pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %with_causes(&e), "the live follower has no PostgreSQL connection");
                continue;
            }
        };
        // Supervised: a panic here is logged and the next wake-up tries again
        // (`published` only moves once a batch is sent, so nothing is skipped).
        let read = std::panic::AssertUnwindSafe(async {
            let mut publisher = publisher.lock().await;
            publisher.catch_up(&client, u64::MAX).await
        })
        .catch_unwind()
        .await;
        match read {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the live follower could not read new events"),
            Err(_) => tracing::error!("the live follower panicked while reading new events; it goes on"),
        }
        if polled {
            stuck = match unflushed(&client).await {
                Ok(Some(seen)) if stuck == Some(seen) => {
                    tracing::info!(
                        committed = seen.0,
                        durable = seen.1,
                        "commits past the durable horizon were left unflushed (a writer stopped); flushing them"
                    );
                    if let Err(e) = make_durable(&client, &writer_id).await {
                        tracing::warn!(error = %e, "could not move the durable horizon");
                    }
                    wake.notify_one();
                    None
                }
                Ok(seen) => seen,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the durable horizon");
                    None
                }
            };
        }
    }
}

/// `(committed, durable)` when the sequencer is past the durable horizon.
async fn unflushed(client: &Object) -> Result<Option<(u64, u64)>, StoreError> {
    const WHAT: &str = "reading the durable horizon";
    let stmt = client
        .prepare_cached(&format!("SELECT (SELECT position FROM sequencer), {HORIZON}"))
        .await
        .map_err(|e| pg(WHAT, e))?;
    let row = client.query_one(&stmt, &[]).await.map_err(|e| pg(WHAT, e))?;
    let committed = stored_u64(&row, 0, WHAT)?;
    let durable = stored_u64(&row, 1, WHAT)?;
    Ok((committed > durable).then_some((committed, durable)))
}

/// Holds a LISTEN connection and wakes the follower on every notification;
/// reconnects after an error (logged), waking the follower then too, since
/// notifications sent meanwhile are lost.
async fn listen(
    config: tokio_postgres::Config,
    target: String,
    wake: Arc<Notify>,
    published: Arc<AtomicU64>,
    retry: Duration,
    stop: CancellationToken,
) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = mpsc::unbounded_channel::<()>();
                let published = published.clone();
                let driver = tokio::spawn(async move {
                    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                // Already published (typically this store's own commit): nothing to read.
                                if n.payload()
                                    .parse::<u64>()
                                    .is_ok_and(|p| p <= published.load(Ordering::Acquire))
                                {
                                    continue;
                                }
                                if tx.send(()).is_err() {
                                    return Ok(());
                                }
                            }
                            Ok(_) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                });
                match client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")).await {
                    Ok(()) => {
                        // Anything committed before LISTEN took effect was not notified.
                        wake.notify_one();
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => {
                                    driver.abort();
                                    return;
                                }
                                message = rx.recv() => match message {
                                    Some(()) => wake.notify_one(),
                                    None => break,
                                },
                            }
                        }
                        match driver.await {
                            Ok(Err(e)) => {
                                tracing::warn!(%target, error = %with_causes(&e), "the LISTEN connection failed; reconnecting")
                            }
                            _ => tracing::warn!(%target, "the LISTEN connection closed; reconnecting"),
                        }
                    }
                    Err(e) => {
                        driver.abort();
                        tracing::warn!(%target, error = %with_causes(&e), "LISTEN failed; retrying");
                    }
                }
                drop(client);
            }
            Err(e) => tracing::warn!(%target, error = %with_causes(&e), "cannot open the LISTEN connection; retrying"),
        }
        wake.notify_one();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------

enum Applied {
    Appended {
        stream: String,
        version: u64,
        rows: std::ops::Range<usize>,
    },
    /// Seen in an earlier batch.
    Duplicate(Committed),
    /// The same command earlier in this batch (that job's index).
    DuplicateOf(usize),
}

/// Why a batch did not commit.
enum WriteError {
    /// Nothing was committed.
    Failed(StoreError),
    /// COMMIT was sent but its answer was lost: the batch may have committed.
    Unknown(StoreError),
}

/// The longest a batch waits for more jobs (see `Writer::linger`).
const LINGER_MAX: Duration = Duration::from_millis(2);

/// A wait for the lock shorter than this does not count (tokio's timers have
/// a resolution of a millisecond): no linger.
const LINGER_MIN: Duration = Duration::from_micros(200);

struct Writer {
    pool: Pool,
    /// The writer's own connection, out of the pool, between batches (a batch
    /// that fails drops it: see `commit`).
    conn: Option<deadpool_postgres::ClientWrapper>,
    framing: Arc<dyn Framing>,
    jobs: mpsc::Receiver<Job>,
    publisher: Arc<tokio::sync::Mutex<Publisher>>,
    max_batch: usize,
    shared: Arc<Shared>,
    /// Set between a commit and the end of its answers.
    committed_unanswered: bool,
    /// This writer's row of the durable horizon.
    writer_id: String,
    /// How long the last batch waited for the sequencer lock, in µs, when
    /// another writer had committed since the batch before (else 0).
    lock_wait_us: AtomicU64,
    /// The sequencer's position after this writer's last batch.
    last_end: AtomicU64,
    panics: PanicLimit,
    on_fatal: WriterFatal,
}

impl Writer {
    async fn run(mut self) {
        let _down = DownOnDrop(self.shared.health.clone());
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(job) = self.jobs.recv().await {
            batch.push(job);
            while batch.len() < self.max_batch {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.linger(&mut batch).await;
            let result = std::panic::AssertUnwindSafe(self.commit(&mut batch))
                .catch_unwind()
                .await;
            match result {
                Ok(true) => self.panics.committed(),
                Ok(false) => {}
                Err(payload) => {
                    if !self.survive_panic(&mut batch, &panic_message(&*payload)) {
                        return;
                    }
                }
            }
        }
        tracing::debug!("event store writer stopped");
    }

    /// Group commit across instances: when the last batch waited for the
    /// sequencer and other writers had committed before it (other instances'
    /// batches held the lock), takes in more jobs for
    /// as long as it waited, [`LINGER_MAX`] at most, before locking (a wait
    /// under [`LINGER_MIN`] does not count). Those
    /// jobs would have gone into a batch of their own, one more lock hold and
    /// about ten statements more, and this batch would probably have waited
    /// that long on the lock anyway. Alone on the database the lock is free,
    /// the wait about nothing, and no batch lingers.
    async fn linger(&mut self, batch: &mut Vec<Job>) {
        let waited = Duration::from_micros(self.lock_wait_us.load(Ordering::Relaxed));
        if waited < LINGER_MIN || batch.len() >= self.max_batch {
            return;
        }
        let deadline = tokio::time::Instant::now() + waited.min(LINGER_MAX);
        while batch.len() < self.max_batch {
            match tokio::time::timeout_at(deadline, self.jobs.recv()).await {
                Ok(Some(job)) => batch.push(job),
                _ => break,
            }
        }
    }

    /// After a panic: fails the callers of the batch in flight (their
    /// transaction was dropped unfinished, which rolls it back and releases
    /// the sequencer; the next batch reads the head again) and decides whether
    /// to go on. Returns false when the writer gives up: the fatal hook has
    /// been called and every queued caller failed.
    fn survive_panic(&mut self, batch: &mut Vec<Job>, message: &str) -> bool {
        let cause = format!("the event store writer panicked: {message}");
        self.shared.health.set_failing(&cause);
        // Committed: rare, the panic came between the commit and the answers.
        let committed = std::mem::take(&mut self.committed_unanswered);
        tracing::error!(panic = %message, appends = batch.len(), committed, "the event store writer panicked while writing a batch");
        for job in batch.drain(..) {
            let _ = job.reply.send(Err(panicked_batch_error(message, committed)));
        }
        let Some(why) = self.panics.panicked(Instant::now(), message) else {
            return true;
        };
        give_up(&self.shared.health, &self.on_fatal, &why, &mut self.jobs, |job, e| {
            let _ = job.reply.send(Err(e));
        });
        false
    }

    /// Commits every job of `batch` in one transaction, publishes, answers
    /// each. Returns whether the transaction committed.
    async fn commit(&mut self, batch: &mut Vec<Job>) -> bool {
        // Taken for the batch and put back only after it succeeded: after an
        // error, or a panic that unwinds through here, the connection is
        // dropped, which closes it and rolls back whatever it left open.
        let client = match self.conn.take() {
            Some(c) => c,
            // Out of the pool for good (its slot freed).
            None => match self.pool.get().await {
                Ok(c) => Object::take(c),
                Err(e) => {
                    let e = pool_error(e);
                    self.fail(batch, &e, e.to_string());
                    return false;
                }
            },
        };
        match self.write(&client, batch).await {
            Ok((rows, outcomes)) => {
                self.committed_unanswered = true;
                self.shared.health.set_ok();
                // The callers first, then the live channel: a caller's task is
                // woken before the subscribers' (thousands, woken by one send).
                let encoded = (!rows.is_empty()).then(|| CommittedBatch::encode(&*self.framing, &rows));
                let events = encoded.as_ref().map(|b| b.events.clone()).unwrap_or_default();
                for (job, answer) in batch.drain(..).zip(answers(outcomes, &events)) {
                    let _ = job.reply.send(answer);
                }
                self.committed_unanswered = false;
                if let Some(encoded) = encoded {
                    self.publish(&client, &rows, encoded).await;
                }
                self.conn = Some(client);
                true
            }
            Err(WriteError::Failed(e)) => {
                let why = e.to_string();
                self.fail(batch, &e, why);
                false
            }
            Err(WriteError::Unknown(e)) => {
                let why = format!(
                    "{e}; the append may have been committed: retry it with the same command_id to get its result"
                );
                self.fail(batch, &StoreError::Unavailable(why.clone()), why);
                false
            }
        }
    }

    fn fail(&self, batch: &mut Vec<Job>, e: &StoreError, why: String) {
        self.shared
            .health
            .set_failing(&format!("the last commit failed: {why}"));
        tracing::error!(error = %why, appends = batch.len(), "event store commit failed");
        for job in batch.drain(..) {
            let err = match e {
                StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                other => StoreError::Backend(other.to_string()),
            };
            let _ = job.reply.send(Err(err));
        }
    }

    /// Publishes this batch's rows (`batch`, framed), after whatever others
    /// committed before them.
    async fn publish(&self, client: &deadpool_postgres::ClientWrapper, rows: &[SealedEvent], batch: CommittedBatch) {
        if rows.is_empty() {
            return;
        }
        let first = rows[0].position;
        let last = rows[rows.len() - 1].position;
        let mut publisher = self.publisher.lock().await;
        if publisher.published + 1 < first
            && let Err(e) = publisher.catch_up(client, first - 1).await
        {
            // The follower publishes them (and these rows) from the table.
            tracing::warn!(error = %e, "reading events committed by others before this batch failed");
            return;
        }
        if publisher.published + 1 == first {
            publisher.send(batch);
        } else if publisher.published >= first && publisher.published < last {
            // The follower read the start of this batch from the table already.
            let from = rows.iter().position(|r| r.position > publisher.published).unwrap_or(0);
            let rest = CommittedBatch::encode(&*self.framing, &rows[from..]);
            publisher.send(rest);
        }
        // Otherwise the follower has published them already, or rows below
        // them are still unpublished (a read failed) and the follower
        // publishes those and these from the table, in order.
    }

    /// One transaction under the sequencer lock.
    ///
    /// Two round trips under the lock, each a pipeline of statements sent
    /// together (tokio-postgres pipelines the requests of futures polled
    /// together; the server runs them in order): begin, lock, read the head,
    /// the stream versions and the idempotency records; then insert, move the
    /// sequencer, commit. The commit does not wait for the WAL flush, so the
    /// next batch (any instance) need not wait for it either; the flush comes
    /// after, outside the lock (`make_durable`), and nobody reads or is
    /// answered before it. The caller drops `client` after an error, which
    /// closes it and rolls back whatever was left open.
    async fn write(
        &self,
        client: &deadpool_postgres::ClientWrapper,
        batch: &[Job],
    ) -> Result<(Vec<SealedEvent>, Vec<Result<Applied, StoreError>>), WriteError> {
        let failed = |what: &'static str| move |e: tokio_postgres::Error| WriteError::Failed(pg(what, e));
        let mut streams: Vec<&str> = batch.iter().map(|j| j.request.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        let ids: Vec<&str> = batch
            .iter()
            .filter(|j| j.request.idempotency_fingerprint.is_some())
            .map(|j| j.request.command_id.as_str())
            .collect();
        let (lock, versions_of, known_of) = tokio::try_join!(
            client.prepare_cached("SELECT position, hash, recorded_at FROM sequencer FOR UPDATE"),
            // One backward index walk per stream (not every row of each).
            client.prepare_cached(
                "SELECT s.stream, last.version FROM unnest($1::text[]) s(stream), LATERAL (
                     SELECT version FROM events e WHERE e.stream = s.stream ORDER BY version DESC LIMIT 1
                 ) last"
            ),
            client.prepare_cached("SELECT command_id, fingerprint FROM commands WHERE command_id = ANY($1)"),
        )
        .map_err(failed("preparing the batch's statements"))?;
        // The serialized step: until this commits, every other batch, in any
        // process, waits on the lock.
        let (streams_arg, ids_arg): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) = ([&streams], [&ids]);
        // When BEGIN is answered and when the lock is: the difference is how
        // long the lock was held by other batches (see `linger`).
        let (begun, seq, stream_versions, known_commands) = tokio::join!(
            async {
                let begun = client.batch_execute("BEGIN; SET LOCAL synchronous_commit TO off").await;
                (begun, Instant::now())
            },
            async { (client.query_one(&lock, &[]).await, Instant::now()) },
            client.query(&versions_of, &streams_arg),
            client.query(&known_of, &ids_arg),
        );
        let ((begun, begun_at), (seq, locked_at)) = (begun, seq);
        begun.map_err(failed("begin"))?;
        let seq = seq.map_err(failed("locking the sequencer"))?;
        let mut head = Head {
            position: stored_u64(&seq, 0, "the sequencer").map_err(WriteError::Failed)?,
            hash: seq.try_get(1).map_err(failed("the sequencer"))?,
        };
        // Contended: another writer committed since this one's last batch
        // (alone, the measured gap is scheduling noise, not a wait).
        let contended = head.position != self.last_end.load(Ordering::Relaxed);
        let waited = locked_at.saturating_duration_since(begun_at);
        let waited_us = if contended {
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX)
        } else {
            0
        };
        self.lock_wait_us.store(waited_us, Ordering::Relaxed);
        let last_recorded_at: String = seq.try_get(2).map_err(failed("the sequencer"))?;
        let recorded_at = next_recorded_at(&last_recorded_at);

        let mut versions: HashMap<String, u64> = HashMap::with_capacity(streams.len());
        for row in stream_versions.map_err(failed("reading stream versions"))? {
            let stream: String = row.try_get(0).map_err(failed("reading stream versions"))?;
            let version = stored_u64(&row, 1, "reading stream versions").map_err(WriteError::Failed)?;
            versions.insert(stream, version);
        }

        let mut known: HashMap<String, String> = HashMap::new();
        for row in known_commands.map_err(failed("reading idempotency records"))? {
            known.insert(
                row.try_get(0).map_err(failed("reading idempotency records"))?,
                row.try_get(1).map_err(failed("reading idempotency records"))?,
            );
        }

        let mut rows: Vec<SealedEvent> = Vec::new();
        let mut outcomes: Vec<Result<Applied, StoreError>> = Vec::with_capacity(batch.len());
        // Commands of this batch: id → (fingerprint, job index).
        let mut in_batch: HashMap<&str, (&str, usize)> = HashMap::new();
        // (command_id, fingerprint, stream, version, first, last)
        let mut commands: Vec<(&str, &str, &str, u64, u64, u64)> = Vec::new();
        for (i, job) in batch.iter().enumerate() {
            let r = &job.request;
            if let Some(fingerprint) = &r.idempotency_fingerprint {
                if let Some(seen) = known.get(&r.command_id) {
                    if fingerprints_match(seen, fingerprint) {
                        let found = find_command(client, &*self.framing, &r.command_id, Horizon::Committed)
                            .await
                            .map_err(WriteError::Failed)?;
                        outcomes.push(match found {
                            Some((_, committed)) => Ok(Applied::Duplicate(committed)),
                            None => Err(StoreError::Corrupt(format!(
                                "the idempotency record of {} vanished",
                                r.command_id
                            ))),
                        });
                    } else {
                        outcomes.push(Err(StoreError::CommandIdReused {
                            command_id: r.command_id.clone(),
                        }));
                    }
                    continue;
                }
                if let Some(&(seen, j)) = in_batch.get(r.command_id.as_str()) {
                    outcomes.push(if seen == fingerprint {
                        Ok(Applied::DuplicateOf(j))
                    } else {
                        Err(StoreError::CommandIdReused {
                            command_id: r.command_id.clone(),
                        })
                    });
                    continue;
                }
            }
            let current = versions.get(&r.stream).copied().unwrap_or(0);
            if !r.expected.admits(current) {
                outcomes.push(Err(StoreError::Conflict {
                    stream: r.stream.clone(),
                    expected: r.expected,
                    actual: current,
                }));
                continue;
            }
            if let Err(e) = r.check_event_types() {
                outcomes.push(Err(e));
                continue;
            }
            let first_row = rows.len();
            r.seal(current, &mut head, &recorded_at, &mut rows);
            let version = rows.last().map_or(current, |e| e.version);
            versions.insert(r.stream.clone(), version);
            if let Some(fingerprint) = &r.idempotency_fingerprint {
                in_batch.insert(&r.command_id, (fingerprint, i));
                commands.push((
                    &r.command_id,
                    fingerprint,
                    &r.stream,
                    version,
                    rows[first_row].position,
                    head.position,
                ));
            }
            outcomes.push(Ok(Applied::Appended {
                stream: r.stream.clone(),
                version,
                rows: first_row..rows.len(),
            }));
        }

        if take_one(&self.shared.inject_panics) {
            panic!("injected writer panic (test hook)");
        }
        if rows.is_empty() {
            // Nothing to write (every request failed a check or repeated one).
            client.batch_execute("COMMIT").await.map_err(failed("commit"))?;
        } else {
            let ids: Vec<&str> = commands.iter().map(|c| c.0).collect();
            let fingerprints: Vec<&str> = commands.iter().map(|c| c.1).collect();
            let streams: Vec<&str> = commands.iter().map(|c| c.2).collect();
            let versions: Vec<i64> = commands.iter().map(|c| sql_int(c.3)).collect();
            let firsts: Vec<i64> = commands.iter().map(|c| sql_int(c.4)).collect();
            let lasts: Vec<i64> = commands.iter().map(|c| sql_int(c.5)).collect();
            let (insert, record, advance) = tokio::try_join!(
                client.prepare_cached(INSERT_EVENTS),
                client.prepare_cached(
                    "INSERT INTO commands (command_id, fingerprint, stream, version, first_position, last_position)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])",
                ),
                client.prepare_cached("UPDATE sequencer SET position = $1, hash = $2, recorded_at = $3"),
            )
            .map_err(failed("preparing the batch's statements"))?;
            let columns = EventColumns::of(&rows);
            let position = sql_int(head.position);
            let record_args: [&(dyn ToSql + Sync); 6] = [&ids, &fingerprints, &streams, &versions, &firsts, &lasts];
            let insert_args = columns.args();
            let advance_args: [&(dyn ToSql + Sync); 3] = [&position, &head.hash, &recorded_at];
            let (inserted, recorded, advanced, committed) = tokio::join!(
                client.execute(&insert, &insert_args),
                async {
                    if commands.is_empty() {
                        Ok(0)
                    } else {
                        client.execute(&record, &record_args).await
                    }
                },
                client.execute(&advance, &advance_args),
                client.batch_execute("COMMIT"),
            );
            // A failed statement aborts the transaction, and COMMIT then rolls
            // it back: nothing of the batch is committed.
            inserted.map_err(failed("inserting events"))?;
            recorded.map_err(failed("inserting idempotency records"))?;
            advanced.map_err(failed("moving the sequencer"))?;
            committed.map_err(|e| WriteError::Unknown(pg("commit", e)))?;
        }
        if take_one(&self.shared.lose_flushes) {
            return Err(WriteError::Unknown(StoreError::Unavailable(
                "the flush was skipped (test hook)".into(),
            )));
        }
        self.last_end.store(head.position, Ordering::Relaxed);
        // Durable before anyone is answered, a duplicate included (what it
        // found may be another batch's, committed and not flushed yet: this
        // flush covers it too).
        make_durable(client, &self.writer_id)
            .await
            .map_err(WriteError::Unknown)?;
        Ok((rows, outcomes))
    }
}

/// Takes one from a test hook's count: one relaxed load when it is 0.
fn take_one(counter: &AtomicU32) -> bool {
    counter.load(Ordering::Relaxed) > 0
        && counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
}

/// The writer's (and the import's) one statement for a batch of rows
/// (arrays through UNNEST).
pub(crate) const INSERT_EVENTS: &str = "INSERT INTO events (position, stream, version, type, category, hash, envelope)
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])";

/// Rows as the column arrays [`INSERT_EVENTS`] binds.
pub(crate) struct EventColumns<'a> {
    positions: Vec<i64>,
    streams: Vec<&'a str>,
    versions: Vec<i64>,
    types: Vec<&'a str>,
    categories: Vec<&'a str>,
    hashes: Vec<&'a str>,
    envelopes: Vec<&'a str>,
}

impl<'a> EventColumns<'a> {
    pub(crate) fn of(rows: &'a [SealedEvent]) -> Self {
        EventColumns {
            positions: rows.iter().map(|r| sql_int(r.position)).collect(),
            streams: rows.iter().map(|r| r.stream.as_str()).collect(),
            versions: rows.iter().map(|r| sql_int(r.version)).collect(),
            types: rows.iter().map(|r| r.event_type.as_str()).collect(),
            categories: rows.iter().map(|r| category_of(&r.stream)).collect(),
            hashes: rows.iter().map(|r| r.hash.as_str()).collect(),
            envelopes: rows.iter().map(|r| r.json.as_str()).collect(),
        }
    }

    pub(crate) fn args(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.positions,
            &self.streams,
            &self.versions,
            &self.types,
            &self.categories,
            &self.hashes,
            &self.envelopes,
        ]
    }
}

/// Inserts `rows` in one statement: an import's batches.
pub(crate) async fn insert_events(
    client: &impl deadpool_postgres::GenericClient,
    rows: &[SealedEvent],
) -> Result<u64, tokio_postgres::Error> {
    let columns = EventColumns::of(rows);
    client.execute(INSERT_EVENTS, &columns.args()).await
}

/// Each job's answer once its batch committed and was framed.
fn answers(
    outcomes: Vec<Result<Applied, StoreError>>,
    events: &[Arc<RecordedEvent>],
) -> Vec<Result<AppendOutcome, StoreError>> {
    let appended: Vec<Option<Committed>> = outcomes
        .iter()
        .map(|o| match o {
            Ok(Applied::Appended { stream, version, rows }) => Some(Committed {
                stream: stream.clone(),
                version: *version,
                events: events.get(rows.clone()).map(<[_]>::to_vec).unwrap_or_default(),
            }),
            _ => None,
        })
        .collect();
    outcomes
        .into_iter()
        .enumerate()
        .map(|(i, outcome)| match outcome {
            Ok(Applied::Appended { .. }) => appended[i]
                .clone()
                .map(AppendOutcome::Appended)
                .ok_or_else(|| StoreError::Backend("an append lost its result".into())),
            Ok(Applied::Duplicate(committed)) => Ok(AppendOutcome::Duplicate(committed)),
            Ok(Applied::DuplicateOf(j)) => appended
                .get(j)
                .cloned()
                .flatten()
                .map(AppendOutcome::Duplicate)
                .ok_or_else(|| StoreError::Backend("an append's duplicate in its batch lost its original".into())),
            Err(e) => Err(e),
        })
        .collect()
}
