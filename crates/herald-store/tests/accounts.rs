//! What is SQLite's own in the embedded account store (the rules every
//! backend keeps are herald-conformance's account suite, run on SQLite in
//! accounts_conformance.rs).

use std::time::{Duration, Instant};

use herald_core::accounts::{AccountStore, SessionRecord};
use herald_store::accounts::SqliteAccounts;

fn session(id: &str, user_id: &str) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        user_id: user_id.into(),
        created_at: 0,
        last_seen_at: 0,
        expires_at: 1_000_000,
        verified_at: 0,
        user_agent: None,
    }
}

#[tokio::test]
async fn an_older_database_gets_the_disabled_at_column_on_open() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let conn = rusqlite::Connection::open(dir.path().join("herald.db")).expect("open");
        conn.execute_batch(
            "CREATE TABLE users (id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, display_name TEXT NOT NULL, \
             roles TEXT NOT NULL, created_at TEXT NOT NULL) STRICT; \
             INSERT INTO users VALUES ('u1', 'alice', 'Alice', '[\"viewer\"]', '2026-01-01T00:00:00.000Z');",
        )
        .expect("old schema");
    }
    let store = SqliteAccounts::open(dir.path()).expect("open migrates");
    let alice = store.find_user("u1").await.expect("find").expect("alice");
    assert_eq!(alice.disabled_at, None);
    store
        .set_disabled("u1", Some("2026-12-01T00:00:00.000Z"))
        .await
        .expect("disable")
        .expect("not the last admin");
    drop(store);
    // Opening again (column present) is fine too.
    let store = SqliteAccounts::open(dir.path()).expect("reopen");
    assert!(store.find_user("u1").await.expect("find").expect("alice").is_disabled());
}

#[tokio::test]
async fn a_best_effort_touch_gives_up_quickly_while_another_connection_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteAccounts::open(dir.path()).expect("open");
    store.insert_session(&session("s1", "u1"), "h1").await.expect("session");
    let other = rusqlite::Connection::open(dir.path().join("herald.db")).expect("open");
    other.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let started = Instant::now();
    let touched = store.try_touch_session("s1", 500, Duration::from_millis(50)).await;
    assert!(touched.is_err(), "the database is locked");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Reads go on meanwhile (WAL).
    assert!(store.find_session("h1", 100).await.expect("find").is_some());
    other.execute_batch("COMMIT").expect("unlock");
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
    // The pooled connection has its usual patience back: a plain write waits
    // out a short lock instead of failing.
    other.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let unlock = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        other.execute_batch("COMMIT").expect("unlock");
    });
    for _ in 0..4 {
        store.touch_session("s1", 700, false).await.expect("waits for the lock");
    }
    unlock.join().expect("thread");
}
