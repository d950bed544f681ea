//! The schema, as versioned migrations: those a database lacks are applied
//! together, in one transaction, under a transaction-scoped advisory lock, so
//! that instances starting together do not race and a failed one leaves
//! nothing half-applied; `herald_migrations` records which are in.

use herald_core::store::StoreError;
use tokio_postgres::Client;

/// One schema step. Versions start at 1 and never change once released: a
/// change to the schema is a new migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The advisory lock key every herald instance takes to migrate ("herald").
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "event log",
        sql: r#"
CREATE TABLE events (
    position bigint PRIMARY KEY,
    stream   text   NOT NULL,
    version  bigint NOT NULL,
    type     text   NOT NULL,
    category text   NOT NULL,
    hash     text   NOT NULL,
    envelope text   NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream, version),
    CONSTRAINT events_position_positive CHECK (position > 0),
    CONSTRAINT events_version_positive CHECK (version > 0)
);
CREATE INDEX events_category ON events (category, position);
CREATE INDEX events_type ON events (type, position);

CREATE TABLE commands (
    command_id     text   PRIMARY KEY,
    fingerprint    text   NOT NULL,
    stream         text   NOT NULL,
    version        bigint NOT NULL,
    first_position bigint NOT NULL,
    last_position  bigint NOT NULL
);

-- The one serialized step: every commit batch locks this row (FOR UPDATE),
-- reads the head, appends after it and moves it, then commits.
CREATE TABLE sequencer (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    position    bigint  NOT NULL,
    hash        text    NOT NULL,
    recorded_at text    NOT NULL
);
INSERT INTO sequencer (id, position, hash, recorded_at)
VALUES (true, 0, '0000000000000000000000000000000000000000000000000000000000000000', '');

CREATE FUNCTION herald_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only';
END
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION herald_events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION herald_events_append_only();
"#,
    },
    Migration {
        version: 2,
        name: "accounts and tokens",
        sql: r#"
-- Users, passkeys, sessions, invites, passkey ceremonies, login attempt
-- windows and API tokens (herald_core::accounts and ::auth), as the embedded
-- store has them. Secrets only as SHA-256 hashes. Text that is ordered by
-- (ids, RFC 3339 times) compares bytewise, as on SQLite.
CREATE TABLE users (
    id           text COLLATE "C" PRIMARY KEY,
    username     text NOT NULL UNIQUE,
    display_name text NOT NULL,
    roles        text NOT NULL,
    created_at   text COLLATE "C" NOT NULL,
    disabled_at  text
);
CREATE TABLE passkeys (
    credential_id text COLLATE "C" PRIMARY KEY,
    user_id       text NOT NULL REFERENCES users (id),
    passkey       text NOT NULL,
    created_at    text COLLATE "C" NOT NULL,
    last_used_at  text
);
CREATE INDEX passkeys_user ON passkeys (user_id);
CREATE TABLE sessions (
    id           text COLLATE "C" PRIMARY KEY,
    secret_hash  text   NOT NULL UNIQUE,
    user_id      text   NOT NULL,
    created_at   bigint NOT NULL,
    last_seen_at bigint NOT NULL,
    expires_at   bigint NOT NULL,
    verified_at  bigint NOT NULL,
    user_agent   text
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE TABLE invites (
    id         text COLLATE "C" PRIMARY KEY,
    code_hash  text   NOT NULL UNIQUE,
    role       text   NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    created_by text   NOT NULL,
    expires_at bigint NOT NULL,
    used_by    text
);
CREATE TABLE ceremonies (
    id         text   PRIMARY KEY,
    kind       text   NOT NULL,
    state      text   NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX ceremonies_expiry ON ceremonies (expires_at);
-- Per account (a username, or '*' for failures that named no account), in
-- fixed windows: the login limit, and which failure of a window the log
-- records; `unrecorded` counts the failures no event recorded yet.
CREATE TABLE login_attempts (
    account      text   PRIMARY KEY,
    window_start bigint NOT NULL,
    attempts     bigint NOT NULL,
    failures     bigint NOT NULL,
    unrecorded   bigint NOT NULL
);
CREATE INDEX login_attempts_window ON login_attempts (window_start);
CREATE TABLE api_tokens (
    id          text COLLATE "C" PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL,
    secret_hash text NOT NULL UNIQUE,
    created_at  text COLLATE "C" NOT NULL,
    created_by  text NOT NULL,
    revoked_at  text
);
"#,
    },
    Migration {
        version: 3,
        name: "durable horizon",
        sql: r#"
-- How far the log is known to be durable. A commit batch commits with
-- synchronous_commit off (its sequencer lock is released without waiting for
-- the WAL flush), then its writer upserts its own row here to the sequencer's
-- position in a transaction that commits synchronously: that flush covers
-- every commit before it. Readers read only up to max(position): never an
-- event a crash of the server could take back.
CREATE TABLE durable (
    writer   text   PRIMARY KEY,
    position bigint NOT NULL
);
INSERT INTO durable (writer, position) SELECT 'migration', position FROM sequencer;
"#,
    },
    Migration {
        version: 4,
        name: "durable horizon by index",
        sql: r#"
-- Herald's connections plan with sequential scans disabled (every hot
-- statement has an index to walk). The horizon, max(position) over this
-- table's few rows, then walks this index instead: a statement that reads the
-- horizon carries no sequential scan, whose penalty would drown the costs the
-- planner compares for the rest of the statement.
CREATE INDEX durable_position ON durable (position);
"#,
    },
];

fn backend(what: &str, e: tokio_postgres::Error) -> StoreError {
    crate::store::pg(what, e)
}

/// Applies every migration the database does not have yet, all in one
/// transaction under one advisory lock (instances starting together take
/// turns; a failure leaves the schema as it was). Refuses, under the lock and
/// before changing anything, a database that a newer herald migrated further,
/// or whose recorded migration names differ from these.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(|e| backend("migration: begin", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| backend("migration: advisory lock", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS herald_migrations (
            version    bigint      PRIMARY KEY,
            name       text        NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(|e| backend("migration: herald_migrations", e))?;
    let mut applied = std::collections::BTreeMap::new();
    for row in tx
        .query("SELECT version, name FROM herald_migrations", &[])
        .await
        .map_err(|e| backend("migration: read herald_migrations", e))?
    {
        let version: i64 = row
            .try_get(0)
            .map_err(|e| backend("migration: read herald_migrations", e))?;
        let name: String = row
            .try_get(1)
            .map_err(|e| backend("migration: read herald_migrations", e))?;
        applied.insert(version, name);
    }
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some((&newest, _)) = applied.last_key_value()
        && newest > latest
    {
        return Err(StoreError::Backend(format!(
            "the database has migration {newest}, newer than this herald knows ({latest}): upgrade herald"
        )));
    }
    for m in MIGRATIONS {
        match applied.get(&m.version) {
            Some(name) if name != m.name => {
                return Err(StoreError::Corrupt(format!(
                    "migration {} is recorded as {name:?}, but this herald knows it as {:?}",
                    m.version, m.name
                )));
            }
            Some(_) => {}
            None => {
                tx.batch_execute(m.sql)
                    .await
                    .map_err(|e| backend(&format!("migration {} ({})", m.version, m.name), e))?;
                tx.execute(
                    "INSERT INTO herald_migrations (version, name) VALUES ($1, $2)",
                    &[&m.version, &m.name],
                )
                .await
                .map_err(|e| backend("migration: record", e))?;
                tracing::info!(version = m.version, name = m.name, "applying a PostgreSQL migration");
            }
        }
    }
    tx.commit().await.map_err(|e| backend("migration: commit", e))?;
    Ok(())
}
