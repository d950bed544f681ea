//! The account conformance suite on PostgreSQL, a fresh database per test;
//! every open is a separate [`PgAccounts`] (its own pool: another process, as
//! far as the database can tell). And what is PostgreSQL's own: the
//! best-effort touch against a row another connection holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_conformance::AccountsHarness;
use herald_conformance::accounts::Stores;
use herald_core::accounts::{AccountStore, SessionRecord};
use herald_core::store::StoreError;
use herald_postgres::testing::TestDatabase;
use herald_postgres::{PgAccounts, PgConfig, PgStore};
use tokio_postgres::NoTls;

struct PgAccountsHarness {
    db: TestDatabase,
}

impl PgAccountsHarness {
    /// `None` when there is no PostgreSQL and this is not CI (a "skipped" line was printed).
    async fn new() -> Option<PgAccountsHarness> {
        Some(PgAccountsHarness {
            db: TestDatabase::create().await?,
        })
    }

    async fn accounts(&self) -> Arc<PgAccounts> {
        PgAccounts::open(self.db.url())
            .await
            .unwrap_or_else(|e| panic!("opening the accounts on {} failed: {e}", self.db.name()))
    }
}

#[async_trait]
impl AccountsHarness for PgAccountsHarness {
    async fn open(&self) -> Stores {
        let accounts = self.accounts().await;
        (accounts.clone(), accounts)
    }
}

mod conformance {
    use super::*;

    herald_conformance::account_conformance_tests!(match PgAccountsHarness::new().await {
        Some(harness) => harness,
        None => return,
    });
}

fn session(id: &str) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        user_id: "u1".into(),
        created_at: 0,
        last_seen_at: 0,
        expires_at: 1_000_000,
        verified_at: 0,
        user_agent: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_best_effort_touch_gives_up_quickly_while_another_connection_holds_the_row() {
    let Some(h) = PgAccountsHarness::new().await else {
        return;
    };
    let store = h.accounts().await;
    store.insert_session(&session("s1"), "h1").await.expect("session");
    let (other, connection) = tokio_postgres::connect(h.db.url(), NoTls).await.expect("connect");
    tokio::spawn(connection);
    let lock = "BEGIN; SELECT 1 FROM sessions WHERE id = 's1' FOR UPDATE";
    other.batch_execute(lock).await.expect("lock");
    let started = Instant::now();
    let touched = store.try_touch_session("s1", 500, Duration::from_millis(50)).await;
    match touched {
        Err(StoreError::Backend(why)) => assert!(why.contains("busy"), "{why}"),
        other => panic!("the row is locked: expected a busy error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Reads go on meanwhile.
    assert!(store.find_session("h1", 100).await.expect("find").is_some());
    other.batch_execute("COMMIT").await.expect("unlock");
    store
        .try_touch_session("s1", 600, Duration::from_millis(50))
        .await
        .expect("touch");
    assert_eq!(
        store
            .find_session("h1", 100)
            .await
            .expect("find")
            .expect("s1")
            .last_seen_at,
        600
    );
    // The limits were the transaction's own: a plain write waits out a lock.
    let lock = "BEGIN; SELECT 1 FROM sessions WHERE id = 's1' FOR UPDATE";
    other.batch_execute(lock).await.expect("lock");
    let unlock = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        other.batch_execute("COMMIT").await.expect("unlock");
    });
    for _ in 0..8 {
        store.touch_session("s1", 700, false).await.expect("waits for the lock");
    }
    unlock.await.expect("task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_store_and_the_accounts_share_one_database_either_opened_first() {
    let Some(h) = PgAccountsHarness::new().await else {
        return;
    };
    let accounts = h.accounts().await;
    accounts.put_ceremony("c", "login", "state", 100).await.expect("put");
    let store = PgStore::open(h.db.url(), Arc::new(herald_core::JsonLines), PgConfig::default())
        .await
        .expect("the event store opens on the migrated database");
    drop(store);
    assert_eq!(
        accounts.take_ceremony("c", "login", 0).await.expect("take").as_deref(),
        Some("state")
    );
}

#[tokio::test]
async fn errors_name_the_server_never_the_password() {
    let url = "postgres://herald:s3cret-pw@127.0.0.1:1/nowhere";
    let err = PgAccounts::open(url).await.expect_err("no server on port 1");
    let text = err.to_string();
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(text.contains("127.0.0.1:1/nowhere"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_event_log_alone_gets_the_accounts_on_open() {
    let Some(h) = PgAccountsHarness::new().await else {
        return;
    };
    // What a herald that knew only migration 1 left.
    let (admin, connection) = tokio_postgres::connect(h.db.url(), NoTls).await.expect("connect");
    tokio::spawn(connection);
    let first = herald_postgres::MIGRATIONS[0];
    assert_eq!(first.version, 1);
    admin
        .batch_execute(&format!(
            "CREATE TABLE herald_migrations (version bigint PRIMARY KEY, name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now()); {} \
             INSERT INTO herald_migrations (version, name) VALUES (1, '{}');",
            first.sql, first.name
        ))
        .await
        .expect("migration 1 alone");
    let accounts = h.accounts().await;
    assert_eq!(accounts.count_users().await.expect("count"), 0);
    let versions: Vec<i64> = admin
        .query("SELECT version FROM herald_migrations ORDER BY version", &[])
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let all: Vec<i64> = herald_postgres::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions, all);
    // Opening again applies nothing twice.
    drop(h.accounts().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_a_newer_herald_migrated_is_refused_before_anything_is_applied() {
    let Some(h) = PgAccountsHarness::new().await else {
        return;
    };
    let (admin, connection) = tokio_postgres::connect(h.db.url(), NoTls).await.expect("connect");
    tokio::spawn(connection);
    admin
        .batch_execute(
            "CREATE TABLE herald_migrations (version bigint PRIMARY KEY, name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO herald_migrations (version, name) VALUES (99, 'from the future');",
        )
        .await
        .expect("a newer herald's record");
    let err = PgStore::open(h.db.url(), Arc::new(herald_core::JsonLines), PgConfig::default())
        .await
        .expect_err("a newer schema is refused");
    assert!(
        err.to_string()
            .contains("the database has migration 99, newer than this herald knows"),
        "{err}"
    );
    // The check runs under the lock before any migration: nothing was created.
    let row = admin
        .query_one(
            "SELECT to_regclass('events') IS NULL AND to_regclass('users') IS NULL, \
             (SELECT count(*) FROM herald_migrations)",
            &[],
        )
        .await
        .expect("query");
    assert!(row.get::<_, bool>(0), "migrations were applied to a newer database");
    assert_eq!(row.get::<_, i64>(1), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_store_and_the_accounts_can_share_one_pool() {
    let Some(h) = PgAccountsHarness::new().await else {
        return;
    };
    let database = herald_postgres::Database::open(h.db.url(), 2).await.expect("connect");
    let store = PgStore::with_database(&database, Arc::new(herald_core::JsonLines), PgConfig::default())
        .await
        .expect("the store on the shared pool");
    let accounts = PgAccounts::with_database(&database);
    accounts.put_ceremony("c", "login", "state", 100).await.expect("put");
    let minted = herald_core::store::EventStore::head(&*store).await.expect("head");
    assert_eq!(minted.position, 0);
    assert_eq!(
        accounts.take_ceremony("c", "login", 0).await.expect("take").as_deref(),
        Some("state")
    );
}
