//! The embedded account store: the rules the server relies on, checked directly.

use std::time::{Duration, Instant};

use herald_core::accounts::{
    AccountStore, FailureRecord, InviteRecord, RegistrationRefused, SessionRecord, StoredPasskey, User,
};
use herald_core::auth::Role;
use herald_core::envelope::Actor;
use herald_store::accounts::SqliteAccounts;

fn user(id: &str, name: &str) -> User {
    User {
        id: id.into(),
        username: name.into(),
        display_name: name.to_uppercase(),
        roles: vec![Role::Operator],
        created_at: "2026-11-30T00:00:00.000Z".into(),
        disabled_at: None,
    }
}

/// The sessions' ids, sorted.
fn sorted_ids(sessions: Vec<SessionRecord>) -> Vec<String> {
    let mut ids: Vec<String> = sessions.into_iter().map(|s| s.id).collect();
    ids.sort();
    ids
}

fn passkey(cred: &str, user_id: &str) -> StoredPasskey {
    StoredPasskey {
        credential_id: cred.into(),
        user_id: user_id.into(),
        passkey: "{}".into(),
        created_at: "2026-11-30T00:00:00.000Z".into(),
    }
}

fn invite(id: &str, expires_at: i64) -> InviteRecord {
    InviteRecord {
        id: id.into(),
        role: Role::Viewer,
        created_at: "2026-11-30T00:00:00.000Z".into(),
        created_by: Actor::system("test"),
        expires_at,
        used_by: None,
    }
}

/// Stores a user through an invite of their own (every registration needs one).
async fn insert_invited(store: &SqliteAccounts, u: &User, cred: &str, now: i64) {
    let hash = format!("hash-of-{}", u.id);
    store
        .insert_invite(&invite(&format!("inv-{}", u.id), now + 60_000), &hash)
        .await
        .expect("invite");
    store
        .insert_user(u, &passkey(cred, &u.id), Some(&hash), now)
        .await
        .expect("io")
        .expect("registered");
}

#[tokio::test]
async fn every_registration_needs_an_invite_and_an_invite_works_once() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteAccounts::open(dir.path()).expect("open");
    let now = 1_000_000;
    // Not even the first user registers without one.
    let refused = store
        .insert_user(&user("u1", "alice"), &passkey("c1", "u1"), None, now)
        .await
        .expect("io");
    assert!(matches!(refused, Err(RegistrationRefused::InviteRequired)));
    assert_eq!(store.count_users().await.expect("count"), 0);
    insert_invited(&store, &user("u1", "alice"), "c1", now).await;
    assert_eq!(store.count_users().await.expect("count"), 1);

    let refused = store
        .insert_user(&user("u2", "bob"), &passkey("c2", "u2"), None, now)
        .await
        .expect("io");
    assert!(matches!(refused, Err(RegistrationRefused::InviteRequired)));
    let refused = store
        .insert_user(&user("u2", "alice"), &passkey("c2", "u2"), Some("h1"), now)
        .await
        .expect("io");
    assert!(matches!(refused, Err(RegistrationRefused::UsernameTaken(_))));

    store
        .insert_invite(&invite("i1", now + 10), "h1")
        .await
        .expect("invite");
    store
        .insert_invite(&invite("i2", now - 1), "h2")
        .await
        .expect("expired invite");
    assert!(store.find_invite("h1", now).await.expect("find").is_some());
    assert!(store.find_invite("h2", now).await.expect("find").is_none(), "expired");
    let refused = store
        .insert_user(&user("u3", "carol"), &passkey("c3", "u3"), Some("h2"), now)
        .await
        .expect("io");
    assert!(matches!(refused, Err(RegistrationRefused::InviteUnusable)));

    store
        .insert_user(&user("u2", "bob"), &passkey("c2", "u2"), Some("h1"), now)
        .await
        .expect("io")
        .expect("bob");
    let again = store
        .insert_user(&user("u4", "dave"), &passkey("c4", "u4"), Some("h1"), now)
        .await
        .expect("io");
    assert!(matches!(again, Err(RegistrationRefused::InviteUnusable)), "used once");
    // A refused registration stored nothing.
    assert!(store.find_user("u4").await.expect("find").is_none());
    assert!(store.find_passkey("c4").await.expect("find").is_none());
    let invites = store.list_invites().await.expect("list");
    let used = invites.iter().find(|i| i.id == "i1").expect("i1");
    assert_eq!(used.used_by.as_deref(), Some("u2"));

    assert!(
        store
            .set_roles("u2", &[Role::Admin, Role::Viewer, Role::Admin])
            .await
            .expect("roles")
    );
    assert_eq!(
        store.find_user_by_name("bob").await.expect("find").expect("bob").roles,
        vec![Role::Viewer, Role::Admin]
    );
    assert!(!store.set_roles("nobody", &[Role::Admin]).await.expect("roles"));
}

#[tokio::test]
async fn a_ceremony_is_taken_once_of_its_kind_before_it_expires() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteAccounts::open(dir.path()).expect("open");
    store.put_ceremony("a", "login", "state-a", 100).await.expect("put");
    assert_eq!(
        store.take_ceremony("a", "login", 99).await.expect("take").as_deref(),
        Some("state-a")
    );
    assert_eq!(
        store.take_ceremony("a", "login", 99).await.expect("take"),
        None,
        "single use"
    );
    store.put_ceremony("b", "register", "state-b", 100).await.expect("put");
    assert_eq!(
        store.take_ceremony("b", "login", 99).await.expect("take"),
        None,
        "wrong kind"
    );
    assert_eq!(
        store.take_ceremony("b", "register", 99).await.expect("take"),
        None,
        "and it is gone"
    );
    store.put_ceremony("c", "login", "state-c", 100).await.expect("put");
    assert_eq!(
        store.take_ceremony("c", "login", 100).await.expect("take"),
        None,
        "expired"
    );
}

#[tokio::test]
async fn sessions_expire_and_are_found_by_their_secret_hash_only() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteAccounts::open(dir.path()).expect("open");
    let s = |id: &str, last_seen_at: i64, expires_at: i64| SessionRecord {
        id: id.into(),
        user_id: "u1".into(),
        created_at: 0,
        last_seen_at,
        expires_at,
        verified_at: 0,
        user_agent: None,
    };
    store.insert_session(&s("s1", 50, 1000), "hash1").await.expect("insert");
    store.insert_session(&s("s2", 10, 1000), "hash2").await.expect("insert");
    store.insert_session(&s("s3", 50, 60), "hash3").await.expect("insert");
    assert_eq!(
        store
            .find_session("hash1", 100)
            .await
            .expect("find")
            .map(|s| s.id)
            .as_deref(),
        Some("s1")
    );
    assert!(
        store.find_session("s1", 100).await.expect("find").is_none(),
        "the public id is no secret"
    );
    assert!(
        store.find_session("hash3", 100).await.expect("find").is_none(),
        "past absolute expiry"
    );
    assert_eq!(store.list_sessions(Some("u1"), 100).await.expect("list").len(), 2);
    store.touch_session("s1", 200, true).await.expect("touch");
    let s1 = store.find_session("hash1", 200).await.expect("find").expect("s1");
    assert_eq!((s1.last_seen_at, s1.verified_at), (200, 200));
    // Idle since before 20, or expired: s2 and s3 go, s1 stays.
    let gone = sorted_ids(store.purge_sessions(100, 20).await.expect("purge"));
    assert_eq!(gone, vec!["s2", "s3"]);
    assert_eq!(
        store
            .delete_session("s1")
            .await
            .expect("delete")
            .map(|s| s.id)
            .as_deref(),
        Some("s1")
    );
    assert!(store.delete_session("s1").await.expect("delete").is_none());
}

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
async fn a_user_is_disabled_and_enabled_and_the_flag_persists() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteAccounts::open(dir.path()).expect("open");
    insert_invited(&store, &user("u1", "alice"), "c1", 0).await;
    assert_eq!(
        store.find_user("u1").await.expect("find").expect("u1").disabled_at,
        None
    );
    let at = "2026-12-01T10:00:00.000Z";
    assert!(store.set_disabled("u1", Some(at)).await.expect("disable"));
    assert!(!store.set_disabled("nobody", Some(at)).await.expect("disable"));
    drop(store);
    let store = SqliteAccounts::open(dir.path()).expect("reopen");
    let alice = store.find_user_by_name("alice").await.expect("find").expect("alice");
    assert_eq!(alice.disabled_at.as_deref(), Some(at));
    assert!(alice.is_disabled());
    assert_eq!(
        store.list_users().await.expect("list")[0].disabled_at.as_deref(),
        Some(at)
    );
    assert!(store.set_disabled("u1", None).await.expect("enable"));
    assert!(!store.find_user("u1").await.expect("find").expect("u1").is_disabled());
}

#[tokio::test]
async fn an_older_database_gets_the_disabled_at_column_on_open() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let conn = rusqlite::Connection::open(dir.path().join("herald.db")).expect("open");
        conn.execute_batch(
            "CREATE TABLE users (id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, display_name TEXT NOT NULL, \
             roles TEXT NOT NULL, created_at TEXT NOT NULL) STRICT; \
             INSERT INTO users VALUES ('u1', 'alice', 'Alice', '[\"admin\"]', '2026-01-01T00:00:00.000Z');",
        )
        .expect("old schema");
    }
    let store = SqliteAccounts::open(dir.path()).expect("open migrates");
    let alice = store.find_user("u1").await.expect("find").expect("alice");
    assert_eq!(alice.disabled_at, None);
    assert!(
        store
            .set_disabled("u1", Some("2026-12-01T00:00:00.000Z"))
            .await
            .expect("disable")
    );
    drop(store);
    // Opening again (column present) is fine too.
    let store = SqliteAccounts::open(dir.path()).expect("reopen");
    assert!(store.find_user("u1").await.expect("find").expect("alice").is_disabled());
}

#[tokio::test]
async fn a_passkey_is_removed_only_from_its_own_user_and_sessions_of_a_user_go_together() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteAccounts::open(dir.path()).expect("open");
    insert_invited(&store, &user("u1", "alice"), "c1", 0).await;
    store.insert_invite(&invite("i1", 100), "h1").await.expect("invite");
    store
        .insert_user(&user("u2", "bob"), &passkey("c2", "u2"), Some("h1"), 0)
        .await
        .expect("io")
        .expect("bob");
    store
        .update_passkey("c2", "{}", "2026-12-01T00:00:00.000Z")
        .await
        .expect("use");
    let all = store.list_passkeys().await.expect("list");
    assert_eq!(all.len(), 2);
    let c2 = all.iter().find(|p| p.credential_id == "c2").expect("c2");
    assert_eq!(c2.user_id, "u2");
    assert_eq!(c2.last_used_at.as_deref(), Some("2026-12-01T00:00:00.000Z"));

    assert!(!store.remove_passkey("u1", "c2").await.expect("remove"), "not alice's");
    assert!(!store.remove_passkey("u2", "nope").await.expect("remove"));
    assert!(store.remove_passkey("u2", "c2").await.expect("remove"));
    assert!(store.find_passkey("c2").await.expect("find").is_none());
    assert!(!store.remove_passkey("u2", "c2").await.expect("remove"), "once");

    for (id, user_id, hash) in [("s1", "u1", "h-s1"), ("s2", "u2", "h-s2"), ("s3", "u2", "h-s3")] {
        store
            .insert_session(&session(id, user_id), hash)
            .await
            .expect("session");
    }
    let gone = sorted_ids(store.delete_sessions_of("u2").await.expect("delete"));
    assert_eq!(gone, vec!["s2", "s3"]);
    assert_eq!(
        store.list_sessions(None, 0).await.expect("list").len(),
        1,
        "alice's stays"
    );
}

#[tokio::test]
async fn login_attempts_are_counted_per_account_in_windows() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteAccounts::open(dir.path()).expect("open");
    let window = 1000;
    for n in 1..=3 {
        let w = store
            .count_login_attempt("alice", 100 + n, window)
            .await
            .expect("count");
        assert_eq!((w.started_at, w.attempts), (101, n.unsigned_abs()));
    }
    let bob = store.count_login_attempt("bob", 150, window).await.expect("count");
    assert_eq!(bob.attempts, 1, "per account");
    // The window is over: counting starts again.
    let w = store.count_login_attempt("alice", 1101, window).await.expect("count");
    assert_eq!((w.started_at, w.attempts), (1101, 1));
    store.count_login_attempt("alice", 1102, window).await.expect("count");
    store.clear_login_attempts("alice").await.expect("clear");
    assert_eq!(
        store
            .count_login_attempt("alice", 1103, window)
            .await
            .expect("count")
            .attempts,
        1
    );
}

#[tokio::test]
async fn one_failure_per_account_and_window_is_to_be_recorded_the_rest_counted() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteAccounts::open(dir.path()).expect("open");
    let window = 1000;
    store.count_login_attempt("alice", 100, window).await.expect("attempt");
    assert_eq!(
        store
            .count_login_failure(Some("alice"), 100, window)
            .await
            .expect("fail"),
        FailureRecord::Record {
            window_start: 100,
            unrecorded: 0
        }
    );
    for t in 101..=105 {
        assert_eq!(
            store.count_login_failure(Some("alice"), t, window).await.expect("fail"),
            FailureRecord::Counted
        );
    }
    // Failures that name no account have a window of their own.
    assert!(matches!(
        store.count_login_failure(None, 105, window).await.expect("fail"),
        FailureRecord::Record { unrecorded: 0, .. }
    ));
    assert_eq!(
        store.count_login_failure(None, 106, window).await.expect("fail"),
        FailureRecord::Counted
    );
    // The attempt window still counts what came before the failures.
    assert_eq!(
        store
            .count_login_attempt("alice", 107, window)
            .await
            .expect("attempt")
            .attempts,
        2
    );
    // Old windows are pruned, but not while they hold unrecorded failures.
    store.count_login_attempt("zed", 108, window).await.expect("attempt");
    store.count_login_attempt("other", 5000, window).await.expect("prune");
    assert_eq!(
        store
            .count_login_attempt("zed", 5001, window)
            .await
            .expect("attempt")
            .attempts,
        1
    );
    // A new window: recorded again, with the 5 failures no event recorded.
    assert_eq!(
        store
            .count_login_failure(Some("alice"), 5002, window)
            .await
            .expect("fail"),
        FailureRecord::Record {
            window_start: 5002,
            unrecorded: 5
        }
    );
    assert_eq!(
        store
            .count_login_failure(Some("alice"), 5003, window)
            .await
            .expect("fail"),
        FailureRecord::Counted
    );
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
