//! The embedded account store: the rules the server relies on, checked directly.

use herald_core::accounts::{AccountStore, InviteRecord, RegistrationRefused, SessionRecord, StoredPasskey, User};
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
    }
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

#[tokio::test]
async fn only_the_first_user_needs_no_invite_and_an_invite_works_once() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteAccounts::open(dir.path()).expect("open");
    let now = 1_000_000;
    store
        .insert_user(&user("u1", "alice"), &passkey("c1", "u1"), None, now)
        .await
        .expect("io")
        .expect("first");
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
    let mut gone: Vec<String> = store
        .purge_sessions(100, 20)
        .await
        .expect("purge")
        .into_iter()
        .map(|s| s.id)
        .collect();
    gone.sort();
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
