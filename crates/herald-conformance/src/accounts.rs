//! The conformance suite every account and credential backend passes: the
//! [`AccountStore`] (users, passkeys, sessions, invites, ceremonies, login
//! attempt windows) and the [`CredentialStore`] (API tokens) of
//! `herald_core`.
//!
//! Each property is one public `async fn(&dyn AccountsHarness)`; a backend's
//! test file is an [`AccountsHarness`] and one call of
//! [`account_conformance_tests!`](crate::account_conformance_tests), which
//! expands to one `#[tokio::test]` per property (the calling crate needs
//! `tokio` with the `macros` and `rt-multi-thread` features):
//!
//! ```ignore
//! use herald_conformance::AccountsTempDirHarness;
//!
//! herald_conformance::account_conformance_tests!(AccountsTempDirHarness::new(|dir| {
//!     Ok((SqliteAccounts::open(dir)?, SqliteCredentials::open(dir)?))
//! }));
//! ```
//!
//! The harness expression is evaluated once per test inside the async test
//! body, so it may `.await` (e.g. to create a fresh PostgreSQL database) or
//! `return` (to skip).
//!
//! Times are plain numbers (`Millis`) the suite passes in; nothing sleeps.

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::accounts::{
    AccessChangeRefused, AccountStore, FailureRecord, InviteRecord, PasskeyInfo, RegistrationRefused,
    SETUP_INVITE_PREFIX, SessionRecord, StoredPasskey, User,
};
use herald_core::auth::{CredentialStore, Role, TokenRecord};
use herald_core::envelope::{Actor, ActorKind};
use herald_core::store::StoreError;

/// Upper bound for one conformance test (a deadlock fails instead of hanging).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The stores under test: accounts and API tokens.
pub type Stores = (Arc<dyn AccountStore>, Arc<dyn CredentialStore>);

/// Opens the stores under test.
#[async_trait]
pub trait AccountsHarness: Send + Sync {
    /// Opens (or re-opens) this harness's stores: every call on one harness
    /// reaches the same data (one temp dir, one database), and stores opened
    /// by two calls may be alive at once (two processes).
    async fn open(&self) -> Stores;
}

/// An [`AccountsHarness`] over a fresh temporary directory, for file-based backends.
pub struct AccountsTempDirHarness<F> {
    dir: tempfile::TempDir,
    open: F,
}

impl<F> AccountsTempDirHarness<F>
where
    F: Fn(&Path) -> Result<Stores, StoreError> + Send + Sync,
{
    /// `open` opens the backend's stores in the given directory.
    pub fn new(open: F) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        AccountsTempDirHarness { dir, open }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[async_trait]
impl<F> AccountsHarness for AccountsTempDirHarness<F>
where
    F: Fn(&Path) -> Result<Stores, StoreError> + Send + Sync,
{
    async fn open(&self) -> Stores {
        (self.open)(self.dir.path())
            .unwrap_or_else(|e| panic!("opening the stores in {} failed: {e:?}", self.dir.path().display()))
    }
}

/// Expands to one `#[tokio::test]` per account conformance property, each
/// running on a fresh harness made by the given expression.
#[macro_export]
macro_rules! account_conformance_tests {
    ($harness:expr) => {
        $crate::account_conformance_tests!(@tests $harness;
            empty_stores,
            every_registration_needs_an_invite_and_an_invite_works_once,
            a_user_is_stored_whole_and_found_by_id_and_name,
            users_are_listed_oldest_first,
            a_taken_username_is_refused_and_consumes_no_invite,
            concurrent_registrations_consume_an_invite_once,
            concurrent_registrations_of_one_username_have_one_winner,
            a_user_is_disabled_and_enabled_and_the_flag_persists,
            an_invite_is_found_only_unused_and_unexpired,
            invites_are_listed_newest_first,
            unused_invites_expire_by_id_prefix,
            a_passkey_is_found_updated_and_listed,
            a_passkey_is_removed_only_from_its_own_user_and_sessions_of_a_user_go_together,
            sessions_expire_and_are_found_by_their_secret_hash_only,
            a_session_is_stored_whole_and_touched,
            live_sessions_are_listed_newest_first,
            sessions_are_purged_when_idle_or_expired,
            a_secret_hash_in_use_is_refused,
            a_ceremony_is_taken_once_of_its_kind_before_it_expires,
            a_ceremony_is_taken_by_one_of_concurrent_takers,
            login_attempts_are_counted_per_account_in_windows,
            a_login_window_ends_exactly_window_ms_after_it_began,
            concurrent_login_attempts_are_each_counted,
            one_failure_per_account_and_window_is_to_be_recorded_the_rest_counted,
            concurrent_failures_record_one_per_window,
            tokens_are_stored_found_by_hash_revoked_once_and_listed,
            two_opens_share_accounts_and_tokens,
            the_last_enabled_admin_is_neither_demoted_nor_disabled,
            two_admins_demoting_each_other_at_once_leave_one_admin,
            two_admins_disabling_each_other_at_once_leave_one_enabled_admin,
            a_setup_invite_works_only_while_no_admin_exists,
            concurrent_first_admin_registrations_make_one_admin,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                $crate::accounts::run(stringify!($name), $crate::accounts::$name(&harness)).await;
            }
        )*
    };
}

/// Runs one property with [`TEST_TIMEOUT`] as an upper bound.
#[doc(hidden)]
pub async fn run(name: &str, test: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_TIMEOUT, test).await.is_err() {
        panic!("account conformance test {name} did not finish within {TEST_TIMEOUT:?} (deadlock?)");
    }
}

/// `expect` with the error's debug form, for results and options.
trait Must<T> {
    fn must(self, what: &str) -> T;
}

impl<T, E: Debug> Must<T> for Result<T, E> {
    fn must(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e:?}"))
    }
}

impl<T> Must<T> for Option<T> {
    fn must(self, what: &str) -> T {
        self.unwrap_or_else(|| panic!("{what}: none"))
    }
}

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
async fn insert_invited(store: &dyn AccountStore, u: &User, cred: &str, now: i64) {
    let hash = format!("hash-of-{}", u.id);
    store
        .insert_invite(&invite(&format!("inv-{}", u.id), now + 60_000), &hash)
        .await
        .must("invite");
    store
        .insert_user(u, &passkey(cred, &u.id), Some(&hash), now)
        .await
        .must("io")
        .must("registered");
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

pub async fn every_registration_needs_an_invite_and_an_invite_works_once(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    let now = 1_000_000;
    // Not even the first user registers without one.
    let refused = store
        .insert_user(&user("u1", "alice"), &passkey("c1", "u1"), None, now)
        .await
        .must("io");
    assert!(matches!(refused, Err(RegistrationRefused::InviteRequired)));
    assert_eq!(store.count_users().await.must("count"), 0);
    insert_invited(store, &user("u1", "alice"), "c1", now).await;
    assert_eq!(store.count_users().await.must("count"), 1);

    let refused = store
        .insert_user(&user("u2", "bob"), &passkey("c2", "u2"), None, now)
        .await
        .must("io");
    assert!(matches!(refused, Err(RegistrationRefused::InviteRequired)));
    let refused = store
        .insert_user(&user("u2", "alice"), &passkey("c2", "u2"), Some("h1"), now)
        .await
        .must("io");
    assert!(matches!(refused, Err(RegistrationRefused::UsernameTaken(_))));

    store.insert_invite(&invite("i1", now + 10), "h1").await.must("invite");
    store
        .insert_invite(&invite("i2", now - 1), "h2")
        .await
        .must("expired invite");
    assert!(store.find_invite("h1", now).await.must("find").is_some());
    assert!(store.find_invite("h2", now).await.must("find").is_none(), "expired");
    let refused = store
        .insert_user(&user("u3", "carol"), &passkey("c3", "u3"), Some("h2"), now)
        .await
        .must("io");
    assert!(matches!(refused, Err(RegistrationRefused::InviteUnusable)));

    store
        .insert_user(&user("u2", "bob"), &passkey("c2", "u2"), Some("h1"), now)
        .await
        .must("io")
        .must("bob");
    let again = store
        .insert_user(&user("u4", "dave"), &passkey("c4", "u4"), Some("h1"), now)
        .await
        .must("io");
    assert!(matches!(again, Err(RegistrationRefused::InviteUnusable)), "used once");
    // A refused registration stored nothing.
    assert!(store.find_user("u4").await.must("find").is_none());
    assert!(store.find_passkey("c4").await.must("find").is_none());
    let invites = store.list_invites().await.must("list");
    let used = invites.iter().find(|i| i.id == "i1").must("i1");
    assert_eq!(used.used_by.as_deref(), Some("u2"));

    let before = store
        .set_roles("u2", &[Role::Admin, Role::Viewer, Role::Admin])
        .await
        .must("io")
        .must("roles");
    assert_eq!(before.roles, vec![Role::Operator], "the user as they were");
    assert_eq!(
        store.find_user_by_name("bob").await.must("find").must("bob").roles,
        vec![Role::Viewer, Role::Admin]
    );
    assert_eq!(
        store.set_roles("nobody", &[Role::Admin]).await.must("io").err(),
        Some(AccessChangeRefused::NoSuchUser)
    );
}

pub async fn a_ceremony_is_taken_once_of_its_kind_before_it_expires(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    store.put_ceremony("a", "login", "state-a", 100).await.must("put");
    assert_eq!(
        store.take_ceremony("a", "login", 99).await.must("take").as_deref(),
        Some("state-a")
    );
    assert_eq!(
        store.take_ceremony("a", "login", 99).await.must("take"),
        None,
        "single use"
    );
    store.put_ceremony("b", "register", "state-b", 100).await.must("put");
    assert_eq!(
        store.take_ceremony("b", "login", 99).await.must("take"),
        None,
        "wrong kind"
    );
    assert_eq!(
        store.take_ceremony("b", "register", 99).await.must("take"),
        None,
        "and it is gone"
    );
    store.put_ceremony("c", "login", "state-c", 100).await.must("put");
    assert_eq!(
        store.take_ceremony("c", "login", 100).await.must("take"),
        None,
        "expired"
    );
}

pub async fn sessions_expire_and_are_found_by_their_secret_hash_only(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    let s = |id: &str, last_seen_at: i64, expires_at: i64| SessionRecord {
        id: id.into(),
        user_id: "u1".into(),
        created_at: 0,
        last_seen_at,
        expires_at,
        verified_at: 0,
        user_agent: None,
    };
    store.insert_session(&s("s1", 50, 1000), "hash1").await.must("insert");
    store.insert_session(&s("s2", 10, 1000), "hash2").await.must("insert");
    store.insert_session(&s("s3", 50, 60), "hash3").await.must("insert");
    assert_eq!(
        store
            .find_session("hash1", 100)
            .await
            .must("find")
            .map(|s| s.id)
            .as_deref(),
        Some("s1")
    );
    assert!(
        store.find_session("s1", 100).await.must("find").is_none(),
        "the public id is no secret"
    );
    assert!(
        store.find_session("hash3", 100).await.must("find").is_none(),
        "past absolute expiry"
    );
    assert_eq!(store.list_sessions(Some("u1"), 100).await.must("list").len(), 2);
    store.touch_session("s1", 200, true).await.must("touch");
    let s1 = store.find_session("hash1", 200).await.must("find").must("s1");
    assert_eq!((s1.last_seen_at, s1.verified_at), (200, 200));
    // Idle since before 20, or expired: s2 and s3 go, s1 stays.
    let gone = sorted_ids(store.purge_sessions(100, 20).await.must("purge"));
    assert_eq!(gone, vec!["s2", "s3"]);
    assert_eq!(
        store.delete_session("s1").await.must("delete").map(|s| s.id).as_deref(),
        Some("s1")
    );
    assert!(store.delete_session("s1").await.must("delete").is_none());
}

pub async fn a_user_is_disabled_and_enabled_and_the_flag_persists(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    insert_invited(store, &user("u1", "alice"), "c1", 0).await;
    assert_eq!(store.find_user("u1").await.must("find").must("u1").disabled_at, None);
    let at = "2026-12-01T10:00:00.000Z";
    let before = store.set_disabled("u1", Some(at)).await.must("io").must("disable");
    assert!(!before.is_disabled(), "the user as they were");
    assert_eq!(
        store.set_disabled("nobody", Some(at)).await.must("io").err(),
        Some(AccessChangeRefused::NoSuchUser)
    );
    // Disabled again: the first time stays.
    let again = store
        .set_disabled("u1", Some("2026-12-02T00:00:00.000Z"))
        .await
        .must("io")
        .must("again");
    assert_eq!(again.disabled_at.as_deref(), Some(at));
    // Another open of the same data sees it.
    let (store, _) = h.open().await;
    let alice = store.find_user_by_name("alice").await.must("find").must("alice");
    assert_eq!(alice.disabled_at.as_deref(), Some(at));
    assert!(alice.is_disabled());
    assert_eq!(
        store.list_users().await.must("list")[0].disabled_at.as_deref(),
        Some(at)
    );
    let before = store.set_disabled("u1", None).await.must("io").must("enable");
    assert_eq!(before.disabled_at.as_deref(), Some(at));
    assert!(!store.find_user("u1").await.must("find").must("u1").is_disabled());
}

pub async fn a_passkey_is_removed_only_from_its_own_user_and_sessions_of_a_user_go_together(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    insert_invited(store, &user("u1", "alice"), "c1", 0).await;
    store.insert_invite(&invite("i1", 100), "h1").await.must("invite");
    store
        .insert_user(&user("u2", "bob"), &passkey("c2", "u2"), Some("h1"), 0)
        .await
        .must("io")
        .must("bob");
    store
        .update_passkey("c2", "{}", "2026-12-01T00:00:00.000Z")
        .await
        .must("use");
    let all = store.list_passkeys().await.must("list");
    assert_eq!(all.len(), 2);
    let c2 = all.iter().find(|p| p.credential_id == "c2").must("c2");
    assert_eq!(c2.user_id, "u2");
    assert_eq!(c2.last_used_at.as_deref(), Some("2026-12-01T00:00:00.000Z"));

    assert!(!store.remove_passkey("u1", "c2").await.must("remove"), "not alice's");
    assert!(!store.remove_passkey("u2", "nope").await.must("remove"));
    assert!(store.remove_passkey("u2", "c2").await.must("remove"));
    assert!(store.find_passkey("c2").await.must("find").is_none());
    assert!(!store.remove_passkey("u2", "c2").await.must("remove"), "once");

    for (id, user_id, hash) in [("s1", "u1", "h-s1"), ("s2", "u2", "h-s2"), ("s3", "u2", "h-s3")] {
        store.insert_session(&session(id, user_id), hash).await.must("session");
    }
    let gone = sorted_ids(store.delete_sessions_of("u2").await.must("delete"));
    assert_eq!(gone, vec!["s2", "s3"]);
    assert_eq!(
        store.list_sessions(None, 0).await.must("list").len(),
        1,
        "alice's stays"
    );
}

pub async fn login_attempts_are_counted_per_account_in_windows(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    let window = 1000;
    for n in 1..=3 {
        let w = store.count_login_attempt("alice", 100 + n, window).await.must("count");
        assert_eq!((w.started_at, w.attempts), (101, n.unsigned_abs()));
    }
    let bob = store.count_login_attempt("bob", 150, window).await.must("count");
    assert_eq!(bob.attempts, 1, "per account");
    // The window is over: counting starts again.
    let w = store.count_login_attempt("alice", 1101, window).await.must("count");
    assert_eq!((w.started_at, w.attempts), (1101, 1));
    store.count_login_attempt("alice", 1102, window).await.must("count");
    store.clear_login_attempts("alice").await.must("clear");
    assert_eq!(
        store
            .count_login_attempt("alice", 1103, window)
            .await
            .must("count")
            .attempts,
        1
    );
}

pub async fn one_failure_per_account_and_window_is_to_be_recorded_the_rest_counted(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    let window = 1000;
    store.count_login_attempt("alice", 100, window).await.must("attempt");
    assert_eq!(
        store.count_login_failure(Some("alice"), 100, window).await.must("fail"),
        FailureRecord::Record {
            window_start: 100,
            unrecorded: 0
        }
    );
    for t in 101..=105 {
        assert_eq!(
            store.count_login_failure(Some("alice"), t, window).await.must("fail"),
            FailureRecord::Counted
        );
    }
    // Failures that name no account have a window of their own.
    assert!(matches!(
        store.count_login_failure(None, 105, window).await.must("fail"),
        FailureRecord::Record { unrecorded: 0, .. }
    ));
    assert_eq!(
        store.count_login_failure(None, 106, window).await.must("fail"),
        FailureRecord::Counted
    );
    // The attempt window still counts what came before the failures.
    assert_eq!(
        store
            .count_login_attempt("alice", 107, window)
            .await
            .must("attempt")
            .attempts,
        2
    );
    // Old windows are pruned, but not while they hold unrecorded failures.
    store.count_login_attempt("zed", 108, window).await.must("attempt");
    store.count_login_attempt("other", 5000, window).await.must("prune");
    assert_eq!(
        store
            .count_login_attempt("zed", 5001, window)
            .await
            .must("attempt")
            .attempts,
        1
    );
    // A new window: recorded again, with the 5 failures no event recorded.
    assert_eq!(
        store
            .count_login_failure(Some("alice"), 5002, window)
            .await
            .must("fail"),
        FailureRecord::Record {
            window_start: 5002,
            unrecorded: 5
        }
    );
    assert_eq!(
        store
            .count_login_failure(Some("alice"), 5003, window)
            .await
            .must("fail"),
        FailureRecord::Counted
    );
}

fn a_user(id: &str, name: &str) -> Actor {
    Actor {
        kind: ActorKind::User,
        id: id.into(),
        name: name.into(),
    }
}

fn token(id: &str, created_at: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        name: format!("token {id}"),
        role: Role::Operator,
        created_at: created_at.into(),
        created_by: Actor::system("test"),
        revoked_at: None,
    }
}

// ---------------------------------------------------------------------------
// Users and registration
// ---------------------------------------------------------------------------

/// Empty stores: no users, passkeys, sessions, invites or tokens.
pub async fn empty_stores(h: &dyn AccountsHarness) {
    let (store, tokens) = h.open().await;
    assert_eq!(store.count_users().await.must("count"), 0);
    assert!(store.list_users().await.must("users").is_empty());
    assert!(store.find_user("u1").await.must("find").is_none());
    assert!(store.find_user_by_name("alice").await.must("find").is_none());
    assert!(store.passkeys_of("u1").await.must("passkeys").is_empty());
    assert!(store.list_passkeys().await.must("passkeys").is_empty());
    assert!(store.find_passkey("c1").await.must("passkey").is_none());
    assert!(store.list_sessions(None, 0).await.must("sessions").is_empty());
    assert!(store.find_session("h", 0).await.must("session").is_none());
    assert!(store.delete_session("s1").await.must("delete").is_none());
    assert!(store.delete_sessions_of("u1").await.must("delete").is_empty());
    assert!(store.purge_sessions(0, 0).await.must("purge").is_empty());
    assert!(store.list_invites().await.must("invites").is_empty());
    assert!(store.find_invite("h", 0).await.must("invite").is_none());
    assert_eq!(store.expire_unused_invites("", 0).await.must("expire"), 0);
    assert_eq!(store.take_ceremony("c", "login", 0).await.must("take"), None);
    store.clear_login_attempts("nobody").await.must("clear");
    assert_eq!(
        store.set_roles("u1", &[Role::Admin]).await.must("io").err(),
        Some(AccessChangeRefused::NoSuchUser)
    );
    assert_eq!(
        store
            .set_disabled("u1", Some("2026-12-01T00:00:00.000Z"))
            .await
            .must("io")
            .err(),
        Some(AccessChangeRefused::NoSuchUser)
    );
    assert!(!store.remove_passkey("u1", "c1").await.must("remove"));
    store
        .touch_session("s1", 5, true)
        .await
        .must("touching no session is no error");
    store
        .update_passkey("c1", "{}", "2026-12-01T00:00:00.000Z")
        .await
        .must("updating no passkey is no error");
    assert!(tokens.list_tokens().await.must("tokens").is_empty());
    assert!(tokens.find_token("h").await.must("token").is_none());
    assert!(
        !tokens
            .revoke_token("t1", "2026-12-01T00:00:00.000Z")
            .await
            .must("revoke")
    );
}

/// Every field of a user comes back as stored (roles sorted, without
/// duplicates), by id and by username; the first passkey is theirs.
pub async fn a_user_is_stored_whole_and_found_by_id_and_name(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    let mut u = user("u1", "alice.smith");
    u.display_name = "Alice Smith — Zoë 🚀".into();
    u.roles = vec![Role::Operator, Role::Viewer, Role::Operator];
    insert_invited(store, &u, "c1", 0).await;
    let expected = User {
        roles: vec![Role::Viewer, Role::Operator],
        ..u.clone()
    };
    assert_eq!(store.find_user("u1").await.must("find"), Some(expected.clone()));
    assert_eq!(
        store.find_user_by_name("alice.smith").await.must("find"),
        Some(expected.clone())
    );
    assert_eq!(
        store.find_user_by_name("Alice.Smith").await.must("find"),
        None,
        "names are exact"
    );
    assert_eq!(
        store.find_user("alice.smith").await.must("find"),
        None,
        "a name is no id"
    );
    assert_eq!(store.list_users().await.must("list"), vec![expected]);
    assert_eq!(
        store.passkeys_of("u1").await.must("passkeys"),
        vec![passkey("c1", "u1")]
    );
    store.set_roles("u1", &[]).await.must("io").must("roles");
    let alice = store.find_user("u1").await.must("find").must("alice");
    assert!(alice.roles.is_empty());
    assert_eq!(alice.role(), Role::Viewer);
}

/// Users are listed by creation time, then id.
pub async fn users_are_listed_oldest_first(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    for (id, name, at) in [
        ("u3", "carol", "2026-11-30T00:00:02.000Z"),
        ("u2", "bob", "2026-11-30T00:00:01.000Z"),
        ("u1", "alice", "2026-11-30T00:00:02.000Z"),
    ] {
        let mut u = user(id, name);
        u.created_at = at.into();
        insert_invited(store, &u, &format!("c-{id}"), 0).await;
    }
    let ids: Vec<String> = store
        .list_users()
        .await
        .must("list")
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(ids, vec!["u2", "u1", "u3"]);
    assert_eq!(store.count_users().await.must("count"), 3);
}

/// A taken username refuses the registration and leaves its invite usable
/// (and stores neither user nor passkey).
pub async fn a_taken_username_is_refused_and_consumes_no_invite(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    insert_invited(store, &user("u1", "alice"), "c1", 0).await;
    store.insert_invite(&invite("i2", 100), "h2").await.must("invite");
    let refused = store
        .insert_user(&user("u2", "alice"), &passkey("c2", "u2"), Some("h2"), 0)
        .await
        .must("io");
    match refused {
        Err(RegistrationRefused::UsernameTaken(name)) => assert_eq!(name, "alice"),
        other => panic!("expected UsernameTaken, got {other:?}"),
    }
    assert!(store.find_user("u2").await.must("find").is_none());
    assert!(store.find_passkey("c2").await.must("find").is_none());
    let i2 = store.find_invite("h2", 0).await.must("find").must("still usable");
    assert_eq!(i2.used_by, None);
    store
        .insert_user(&user("u2", "bob"), &passkey("c2", "u2"), Some("h2"), 0)
        .await
        .must("io")
        .must("bob, with the same invite");
    assert_eq!(store.count_users().await.must("count"), 2);
}

/// Registrations racing for one invite: exactly one is stored.
pub async fn concurrent_registrations_consume_an_invite_once(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    store.insert_invite(&invite("i1", 100), "h1").await.must("invite");
    let mut tasks = Vec::new();
    for n in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("u{n}");
            store
                .insert_user(
                    &user(&id, &format!("user{n}")),
                    &passkey(&format!("c{n}"), &id),
                    Some("h1"),
                    0,
                )
                .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.must("task").must("io") {
            Ok(()) => won += 1,
            Err(RegistrationRefused::InviteUnusable) => {}
            Err(other) => panic!("expected InviteUnusable, got {other:?}"),
        }
    }
    assert_eq!(won, 1, "one registration per invite");
    assert_eq!(store.count_users().await.must("count"), 1);
    assert_eq!(store.list_passkeys().await.must("passkeys").len(), 1);
}

/// Registrations racing for one username (each with its own invite): exactly
/// one is stored, the others are told the name is taken and keep their invites.
pub async fn concurrent_registrations_of_one_username_have_one_winner(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    for n in 0..8 {
        store
            .insert_invite(&invite(&format!("i{n}"), 100), &format!("h{n}"))
            .await
            .must("invite");
    }
    let mut tasks = Vec::new();
    for n in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("u{n}");
            let hash = format!("h{n}");
            store
                .insert_user(&user(&id, "alice"), &passkey(&format!("c{n}"), &id), Some(&hash), 0)
                .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.must("task").must("io") {
            Ok(()) => won += 1,
            Err(RegistrationRefused::UsernameTaken(_)) => {}
            Err(other) => panic!("expected UsernameTaken, got {other:?}"),
        }
    }
    assert_eq!(won, 1, "one user per name");
    assert_eq!(store.count_users().await.must("count"), 1);
    let used = store
        .list_invites()
        .await
        .must("invites")
        .into_iter()
        .filter(|i| i.used_by.is_some())
        .count();
    assert_eq!(used, 1, "the refused kept their invites");
}

// ---------------------------------------------------------------------------
// Invites
// ---------------------------------------------------------------------------

/// An invite is found by its code hash, whole, while unused and before its
/// expiry (`expires_at` itself is too late); never by its id.
pub async fn an_invite_is_found_only_unused_and_unexpired(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    let mut i1 = invite("i1", 1000);
    i1.role = Role::Admin;
    i1.created_by = a_user("u0", "root");
    store.insert_invite(&i1, "h1").await.must("invite");
    assert_eq!(store.find_invite("h1", 999).await.must("find"), Some(i1.clone()));
    assert_eq!(
        store.find_invite("h1", 1000).await.must("find"),
        None,
        "expired at expires_at"
    );
    assert_eq!(store.find_invite("i1", 0).await.must("find"), None, "the id is no code");
    store
        .insert_user(&user("u1", "alice"), &passkey("c1", "u1"), Some("h1"), 500)
        .await
        .must("io")
        .must("alice");
    assert_eq!(store.find_invite("h1", 500).await.must("find"), None, "used");
    let listed = store.list_invites().await.must("list");
    assert_eq!(
        listed,
        vec![InviteRecord {
            used_by: Some("u1".into()),
            ..i1
        }]
    );
    // An expired invite does not register either.
    store.insert_invite(&invite("i2", 1000), "h2").await.must("invite");
    let refused = store
        .insert_user(&user("u2", "bob"), &passkey("c2", "u2"), Some("h2"), 1000)
        .await
        .must("io");
    assert!(
        matches!(refused, Err(RegistrationRefused::InviteUnusable)),
        "{refused:?}"
    );
    let refused = store
        .insert_user(&user("u2", "bob"), &passkey("c2", "u2"), Some("unknown"), 0)
        .await
        .must("io");
    assert!(
        matches!(refused, Err(RegistrationRefused::InviteUnusable)),
        "{refused:?}"
    );
}

/// Invites are listed newest first (by creation time, then id), used and
/// expired ones included.
pub async fn invites_are_listed_newest_first(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    for (id, at, expires_at) in [
        ("i1", "2026-11-30T00:00:01.000Z", 10),
        ("i3", "2026-11-30T00:00:02.000Z", 1000),
        ("i2", "2026-11-30T00:00:02.000Z", 1000),
    ] {
        let mut i = invite(id, expires_at);
        i.created_at = at.into();
        store.insert_invite(&i, &format!("hash-{id}")).await.must("invite");
    }
    let ids: Vec<String> = store
        .list_invites()
        .await
        .must("list")
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, vec!["i2", "i3", "i1"]);
}

/// `expire_unused_invites` ends the unused, unexpired invites whose id starts
/// with the prefix, and counts them; used, expired and other invites stay.
pub async fn unused_invites_expire_by_id_prefix(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    for (id, expires_at) in [
        ("setup-1", 1000),
        ("setup-2", 1000),
        ("setup-3", 50),
        ("setup-4", 1000),
        ("other", 1000),
    ] {
        store
            .insert_invite(&invite(id, expires_at), &format!("hash-{id}"))
            .await
            .must("invite");
    }
    store
        .insert_user(&user("u1", "alice"), &passkey("c1", "u1"), Some("hash-setup-4"), 10)
        .await
        .must("io")
        .must("alice");
    // `%` and `_` are not patterns.
    assert_eq!(store.expire_unused_invites("setup%", 100).await.must("expire"), 0);
    assert_eq!(store.expire_unused_invites("setup_", 100).await.must("expire"), 0);
    assert_eq!(store.expire_unused_invites("setup-", 100).await.must("expire"), 2);
    assert_eq!(
        store.expire_unused_invites("setup-", 100).await.must("expire"),
        0,
        "once"
    );
    assert!(store.find_invite("hash-setup-1", 100).await.must("find").is_none());
    assert!(store.find_invite("hash-setup-2", 100).await.must("find").is_none());
    assert!(store.find_invite("hash-other", 100).await.must("find").is_some());
    let invites = store.list_invites().await.must("list");
    let expiry = |id: &str| invites.iter().find(|i| i.id == id).must(id).expires_at;
    assert_eq!((expiry("setup-1"), expiry("setup-2")), (100, 100));
    assert_eq!(
        (expiry("setup-3"), expiry("setup-4"), expiry("other")),
        (50, 1000, 1000)
    );
}

// ---------------------------------------------------------------------------
// Passkeys
// ---------------------------------------------------------------------------

/// A passkey is found by its credential id; an update replaces the stored
/// credential and records its use; the admin's list is oldest first.
pub async fn a_passkey_is_found_updated_and_listed(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    let mut later = user("u2", "bob");
    later.created_at = "2026-11-30T00:00:05.000Z".into();
    let mut c2 = passkey("c2", "u2");
    c2.created_at = "2026-11-30T00:00:05.000Z".into();
    c2.passkey = r#"{"counter":1}"#.into();
    store.insert_invite(&invite("i2", 100), "h2").await.must("invite");
    store
        .insert_user(&later, &c2, Some("h2"), 0)
        .await
        .must("io")
        .must("bob");
    insert_invited(store, &user("u1", "alice"), "c1", 0).await;
    assert_eq!(store.find_passkey("c2").await.must("find"), Some(c2.clone()));
    assert_eq!(store.passkeys_of("u2").await.must("of"), vec![c2.clone()]);
    assert_eq!(
        store.list_passkeys().await.must("list"),
        vec![
            PasskeyInfo {
                credential_id: "c1".into(),
                user_id: "u1".into(),
                created_at: "2026-11-30T00:00:00.000Z".into(),
                last_used_at: None,
            },
            PasskeyInfo {
                credential_id: "c2".into(),
                user_id: "u2".into(),
                created_at: "2026-11-30T00:00:05.000Z".into(),
                last_used_at: None,
            },
        ]
    );
    store
        .update_passkey("c2", r#"{"counter":2}"#, "2026-12-01T00:00:00.000Z")
        .await
        .must("update");
    let updated = store.find_passkey("c2").await.must("find").must("c2");
    assert_eq!(updated.passkey, r#"{"counter":2}"#);
    assert_eq!(updated.created_at, c2.created_at, "created_at stays");
    let listed = store.list_passkeys().await.must("list");
    assert_eq!(listed[1].last_used_at.as_deref(), Some("2026-12-01T00:00:00.000Z"));
    assert_eq!(listed[0].last_used_at, None, "only c2 was used");
}

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

/// A session comes back whole; a touch records activity (and, verified, a
/// fresh verification); a best-effort touch without contention succeeds.
pub async fn a_session_is_stored_whole_and_touched(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let s = SessionRecord {
        id: "s1".into(),
        user_id: "u1".into(),
        created_at: 10,
        last_seen_at: 11,
        expires_at: 10_000,
        verified_at: 12,
        user_agent: Some("Mozilla/5.0 (X11; Linux) «test»".into()),
    };
    store.insert_session(&s, "h1").await.must("insert");
    assert_eq!(store.find_session("h1", 100).await.must("find"), Some(s.clone()));
    assert_eq!(
        store.find_session("h1", 10_000).await.must("find"),
        None,
        "expired at expires_at"
    );
    store.touch_session("s1", 200, false).await.must("touch");
    let t = store.find_session("h1", 200).await.must("find").must("s1");
    assert_eq!(
        (t.last_seen_at, t.verified_at, t.created_at, t.expires_at),
        (200, 12, 10, 10_000)
    );
    store.touch_session("s1", 300, true).await.must("touch");
    let t = store.find_session("h1", 300).await.must("find").must("s1");
    assert_eq!((t.last_seen_at, t.verified_at), (300, 300));
    store
        .try_touch_session("s1", 400, Duration::from_millis(500))
        .await
        .must("best-effort touch");
    let t = store.find_session("h1", 400).await.must("find").must("s1");
    assert_eq!((t.last_seen_at, t.verified_at), (400, 300));
    store
        .try_touch_session("nope", 400, Duration::from_millis(500))
        .await
        .must("touching no session is no error");
    assert_eq!(store.delete_session("s1").await.must("delete"), Some(t));
}

/// Live sessions are listed newest first (creation time, then id), of one
/// user or of all; expired ones are not listed.
pub async fn live_sessions_are_listed_newest_first(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    for (id, user_id, created_at, expires_at) in [
        ("s1", "u1", 10, 1000),
        ("s2", "u2", 30, 1000),
        ("s4", "u1", 20, 1000),
        ("s3", "u1", 20, 1000),
        ("s5", "u1", 40, 100),
    ] {
        let s = SessionRecord {
            created_at,
            expires_at,
            ..session(id, user_id)
        };
        store.insert_session(&s, &format!("hash-{id}")).await.must("insert");
    }
    let ids = |v: Vec<SessionRecord>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_sessions(None, 100).await.must("list")),
        vec!["s2", "s3", "s4", "s1"]
    );
    assert_eq!(
        ids(store.list_sessions(Some("u1"), 100).await.must("list")),
        vec!["s3", "s4", "s1"]
    );
    assert_eq!(
        ids(store.list_sessions(Some("u1"), 99).await.must("list")),
        vec!["s5", "s3", "s4", "s1"]
    );
    assert!(store.list_sessions(Some("u9"), 0).await.must("list").is_empty());
    assert!(
        store.list_sessions(None, 1000).await.must("list").is_empty(),
        "all expired"
    );
}

/// A purge deletes the sessions past their absolute expiry (at `now`
/// included) or last seen before `idle_before` (not at it), and returns them.
pub async fn sessions_are_purged_when_idle_or_expired(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    for (id, last_seen_at, expires_at) in [("s1", 50, 100), ("s2", 19, 1000), ("s3", 20, 1000), ("s4", 50, 101)] {
        let s = SessionRecord {
            last_seen_at,
            expires_at,
            ..session(id, "u1")
        };
        store.insert_session(&s, &format!("hash-{id}")).await.must("insert");
    }
    let gone = store.purge_sessions(100, 20).await.must("purge");
    let s2 = gone.iter().find(|s| s.id == "s2").must("s2 returned").clone();
    assert_eq!((s2.last_seen_at, s2.expires_at, s2.user_id.as_str()), (19, 1000, "u1"));
    assert_eq!(sorted_ids(gone), vec!["s1", "s2"]);
    assert_eq!(
        sorted_ids(store.list_sessions(None, 0).await.must("list")),
        vec!["s3", "s4"]
    );
    assert!(store.purge_sessions(100, 20).await.must("purge").is_empty(), "once");
}

/// Secret hashes are unique: a second session or token with one in use is an
/// error, and the first stays as it was.
pub async fn a_secret_hash_in_use_is_refused(h: &dyn AccountsHarness) {
    let (store, tokens) = h.open().await;
    store.insert_session(&session("s1", "u1"), "h1").await.must("insert");
    assert!(
        store.insert_session(&session("s2", "u2"), "h1").await.is_err(),
        "session hash reused"
    );
    assert!(
        store.insert_session(&session("s1", "u2"), "h2").await.is_err(),
        "session id reused"
    );
    assert_eq!(store.find_session("h1", 0).await.must("find").must("s1").user_id, "u1");
    assert_eq!(store.list_sessions(None, 0).await.must("list").len(), 1);
    tokens
        .insert_token(&token("t1", "2026-11-30T00:00:00.000Z"), "th1")
        .await
        .must("token");
    assert!(
        tokens
            .insert_token(&token("t2", "2026-11-30T00:00:00.000Z"), "th1")
            .await
            .is_err(),
        "token hash reused"
    );
    assert!(
        tokens
            .insert_token(&token("t1", "2026-11-30T00:00:00.000Z"), "th2")
            .await
            .is_err(),
        "token id reused"
    );
    assert_eq!(tokens.list_tokens().await.must("list").len(), 1);
    store.insert_invite(&invite("i1", 100), "ih1").await.must("invite");
    assert!(
        store.insert_invite(&invite("i2", 100), "ih1").await.is_err(),
        "invite hash reused"
    );
    assert!(
        store
            .find_invite("ih1", 0)
            .await
            .must("find")
            .is_some_and(|i| i.id == "i1")
    );
}

// ---------------------------------------------------------------------------
// Ceremonies
// ---------------------------------------------------------------------------

/// Takers racing for one ceremony: exactly one gets its state.
pub async fn a_ceremony_is_taken_by_one_of_concurrent_takers(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    store.put_ceremony("c1", "login", "state", 1000).await.must("put");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(
            async move { store.take_ceremony("c1", "login", 10).await },
        ));
    }
    let mut got = Vec::new();
    for task in tasks {
        if let Some(state) = task.await.must("task").must("take") {
            got.push(state);
        }
    }
    assert_eq!(got, vec!["state".to_owned()], "single use");
}

// ---------------------------------------------------------------------------
// Login attempt windows
// ---------------------------------------------------------------------------

/// A window lasts `window_ms`: an attempt `window_ms - 1` after its start
/// still counts in it; one `window_ms` after starts a new one.
pub async fn a_login_window_ends_exactly_window_ms_after_it_began(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let w = store.count_login_attempt("alice", 1000, 100).await.must("count");
    assert_eq!((w.started_at, w.attempts), (1000, 1));
    let w = store.count_login_attempt("alice", 1099, 100).await.must("count");
    assert_eq!((w.started_at, w.attempts), (1000, 2));
    let w = store.count_login_attempt("alice", 1100, 100).await.must("count");
    assert_eq!((w.started_at, w.attempts), (1100, 1));
    // Failures follow the same windows.
    assert_eq!(
        store.count_login_failure(Some("bob"), 1000, 100).await.must("fail"),
        FailureRecord::Record {
            window_start: 1000,
            unrecorded: 0
        }
    );
    assert_eq!(
        store.count_login_failure(Some("bob"), 1099, 100).await.must("fail"),
        FailureRecord::Counted
    );
    assert_eq!(
        store.count_login_failure(Some("bob"), 1100, 100).await.must("fail"),
        FailureRecord::Record {
            window_start: 1100,
            unrecorded: 1
        }
    );
}

/// Attempts racing on one account are each counted once.
pub async fn concurrent_login_attempts_are_each_counted(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.count_login_attempt("alice", 100, 1000).await
        }));
    }
    let mut counts = HashSet::new();
    for task in tasks {
        let w = task.await.must("task").must("count");
        assert_eq!(w.started_at, 100);
        assert!(counts.insert(w.attempts), "attempt count {} given twice", w.attempts);
    }
    assert_eq!(counts, (1..=16).collect::<HashSet<u64>>());
}

/// Failures racing on one account: exactly one is to be recorded.
pub async fn concurrent_failures_record_one_per_window(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.count_login_failure(Some("alice"), 100, 1000).await
        }));
    }
    let mut recorded = 0;
    for task in tasks {
        if let FailureRecord::Record { .. } = task.await.must("task").must("fail") {
            recorded += 1;
        }
    }
    assert_eq!(recorded, 1);
    // The 15 counted ones are reported with the next window's record.
    assert_eq!(
        store.count_login_failure(Some("alice"), 1100, 1000).await.must("fail"),
        FailureRecord::Record {
            window_start: 1100,
            unrecorded: 15
        }
    );
}

// ---------------------------------------------------------------------------
// API tokens
// ---------------------------------------------------------------------------

/// A token is found whole by its secret's hash while live; revoked once (then
/// no longer found, but listed with its revocation); listed oldest first.
pub async fn tokens_are_stored_found_by_hash_revoked_once_and_listed(h: &dyn AccountsHarness) {
    let (_, tokens) = h.open().await;
    let mut t2 = token("t2", "2026-11-30T00:00:02.000Z");
    t2.role = Role::Admin;
    t2.created_by = a_user("u1", "alice");
    let t1 = token("t1", "2026-11-30T00:00:02.000Z");
    let t3 = TokenRecord {
        role: Role::Viewer,
        ..token("t3", "2026-11-30T00:00:01.000Z")
    };
    tokens.insert_token(&t2, "h2").await.must("insert");
    tokens.insert_token(&t1, "h1").await.must("insert");
    tokens.insert_token(&t3, "h3").await.must("insert");
    assert_eq!(tokens.find_token("h2").await.must("find"), Some(t2.clone()));
    assert_eq!(tokens.find_token("t2").await.must("find"), None, "the id is no secret");
    assert_eq!(
        tokens.list_tokens().await.must("list"),
        vec![t3.clone(), t1.clone(), t2.clone()]
    );
    let at = "2026-12-01T00:00:00.000Z";
    assert!(tokens.revoke_token("t2", at).await.must("revoke"));
    assert!(
        !tokens
            .revoke_token("t2", "2026-12-02T00:00:00.000Z")
            .await
            .must("revoke"),
        "once"
    );
    assert!(!tokens.revoke_token("nope", at).await.must("revoke"));
    assert_eq!(tokens.find_token("h2").await.must("find"), None, "revoked");
    assert_eq!(tokens.find_token("h1").await.must("find"), Some(t1.clone()));
    let revoked = TokenRecord {
        revoked_at: Some(at.into()),
        ..t2
    };
    assert_eq!(tokens.list_tokens().await.must("list"), vec![t3, t1, revoked]);
}

/// Two opens of one harness reach the same data, both ways, while both are alive.
pub async fn two_opens_share_accounts_and_tokens(h: &dyn AccountsHarness) {
    let (a, a_tokens) = h.open().await;
    let (b, b_tokens) = h.open().await;
    insert_invited(&*a, &user("u1", "alice"), "c1", 0).await;
    assert!(b.find_user_by_name("alice").await.must("find").is_some());
    b.set_roles("u1", &[Role::Admin]).await.must("io").must("roles");
    assert_eq!(a.find_user("u1").await.must("find").must("u1").roles, vec![Role::Admin]);
    b.insert_session(&session("s1", "u1"), "sh1").await.must("session");
    assert!(a.find_session("sh1", 0).await.must("find").is_some());
    a.put_ceremony("c", "login", "state", 100).await.must("put");
    assert_eq!(
        b.take_ceremony("c", "login", 0).await.must("take").as_deref(),
        Some("state")
    );
    assert_eq!(a.take_ceremony("c", "login", 0).await.must("take"), None);
    a.count_login_attempt("alice", 10, 1000).await.must("count");
    assert_eq!(
        b.count_login_attempt("alice", 11, 1000).await.must("count").attempts,
        2,
        "counted together"
    );
    a_tokens
        .insert_token(&token("t1", "2026-11-30T00:00:00.000Z"), "th1")
        .await
        .must("token");
    assert!(
        b_tokens
            .revoke_token("t1", "2026-12-01T00:00:00.000Z")
            .await
            .must("revoke")
    );
    assert!(a_tokens.find_token("th1").await.must("find").is_none());
}

// ---------------------------------------------------------------------------
// Who is an admin: decided by the store, atomically (several instances share it)
// ---------------------------------------------------------------------------

fn admin(id: &str, name: &str) -> User {
    User {
        roles: vec![Role::Admin],
        ..user(id, name)
    }
}

/// How many users are admins and not disabled, as stored.
async fn enabled_admins(store: &dyn AccountStore) -> usize {
    store
        .list_users()
        .await
        .must("users")
        .iter()
        .filter(|u| u.roles.contains(&Role::Admin) && !u.is_disabled())
        .count()
}

/// Demoting or disabling the only enabled admin is refused (a disabled admin
/// does not count) and changes nothing; with another enabled admin it works.
pub async fn the_last_enabled_admin_is_neither_demoted_nor_disabled(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    insert_invited(store, &admin("a", "alice"), "ca", 0).await;
    insert_invited(store, &admin("b", "bob"), "cb", 0).await;
    insert_invited(store, &user("c", "carol"), "cc", 0).await;
    let at = "2026-12-01T00:00:00.000Z";
    store
        .set_disabled("b", Some(at))
        .await
        .must("io")
        .must("bob, one of two");
    assert_eq!(
        store.set_roles("a", &[Role::Operator]).await.must("io").err(),
        Some(AccessChangeRefused::LastAdmin),
        "bob is disabled: alice is the last enabled admin"
    );
    assert_eq!(
        store.set_disabled("a", Some(at)).await.must("io").err(),
        Some(AccessChangeRefused::LastAdmin)
    );
    let alice = store.find_user("a").await.must("find").must("alice");
    assert_eq!((alice.roles, alice.disabled_at), (vec![Role::Admin], None), "unchanged");
    // Roles that keep admin, other people, and the disabled admin are no loss.
    store
        .set_roles("a", &[Role::Viewer, Role::Admin])
        .await
        .must("io")
        .must("still admin");
    store.set_disabled("c", Some(at)).await.must("io").must("carol");
    store
        .set_roles("b", &[Role::Viewer])
        .await
        .must("io")
        .must("disabled bob");
    // Another enabled admin: alice may go.
    store.set_roles("c", &[Role::Admin]).await.must("io").must("promote");
    store.set_disabled("c", None).await.must("io").must("enable carol");
    store
        .set_disabled("a", Some(at))
        .await
        .must("io")
        .must("alice, one of two");
    assert_eq!(enabled_admins(store).await, 1);
    assert_eq!(
        store.set_roles("c", &[Role::Viewer]).await.must("io").err(),
        Some(AccessChangeRefused::LastAdmin)
    );
}

/// Runs `a` and `b` at once (both started before either is polled to the end).
async fn race<A, B, FA, FB>(a: A, b: B) -> (FA::Output, FB::Output)
where
    A: FnOnce() -> FA,
    B: FnOnce() -> FB,
    FA: Future + Send + 'static,
    FB: Future + Send + 'static,
    FA::Output: Send + 'static,
    FB::Output: Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let (fa, fb) = (a(), b());
    let (ba, bb) = (barrier.clone(), barrier);
    let ta = tokio::spawn(async move {
        ba.wait().await;
        fa.await
    });
    let tb = tokio::spawn(async move {
        bb.wait().await;
        fb.await
    });
    (ta.await.must("task a"), tb.await.must("task b"))
}

const ROUNDS: usize = 20;

/// Two admins, the only two, demote each other at the same moment (over two
/// opens of the store: two processes): one change wins, the other is refused
/// as the last admin's, and one admin is left — every time.
pub async fn two_admins_demoting_each_other_at_once_leave_one_admin(h: &dyn AccountsHarness) {
    let (a, _) = h.open().await;
    let (b, _) = h.open().await;
    insert_invited(&*a, &admin("a", "alice"), "ca", 0).await;
    insert_invited(&*a, &admin("b", "bob"), "cb", 0).await;
    for round in 0..ROUNDS {
        let (sa, sb) = (a.clone(), b.clone());
        let (ra, rb) = race(
            move || async move { sa.set_roles("b", &[Role::Viewer]).await },
            move || async move { sb.set_roles("a", &[Role::Operator]).await },
        )
        .await;
        let (ra, rb) = (ra.must("io"), rb.must("io"));
        assert_eq!(
            usize::from(ra.is_ok()) + usize::from(rb.is_ok()),
            1,
            "round {round}: one wins ({ra:?}, {rb:?})"
        );
        for refused in [ra.err(), rb.err()].into_iter().flatten() {
            assert_eq!(refused, AccessChangeRefused::LastAdmin, "round {round}");
        }
        assert_eq!(enabled_admins(&*a).await, 1, "round {round}: one admin left");
        for id in ["a", "b"] {
            a.set_roles(id, &[Role::Admin]).await.must("io").must("admin again");
        }
    }
}

/// The same with disabling, and with one disabling while the other demotes.
pub async fn two_admins_disabling_each_other_at_once_leave_one_enabled_admin(h: &dyn AccountsHarness) {
    let (a, _) = h.open().await;
    let (b, _) = h.open().await;
    insert_invited(&*a, &admin("a", "alice"), "ca", 0).await;
    insert_invited(&*a, &admin("b", "bob"), "cb", 0).await;
    let at = "2026-12-01T00:00:00.000Z";
    for round in 0..ROUNDS {
        let (sa, sb) = (a.clone(), b.clone());
        let demote = round % 2 == 1;
        let (ra, rb) = race(
            move || async move { sa.set_disabled("b", Some(at)).await },
            move || async move {
                if demote {
                    sb.set_roles("a", &[Role::Viewer]).await
                } else {
                    sb.set_disabled("a", Some(at)).await
                }
            },
        )
        .await;
        let (ra, rb) = (ra.must("io"), rb.must("io"));
        assert_eq!(
            usize::from(ra.is_ok()) + usize::from(rb.is_ok()),
            1,
            "round {round}: one wins ({ra:?}, {rb:?})"
        );
        assert_eq!(enabled_admins(&*a).await, 1, "round {round}: one enabled admin left");
        for id in ["a", "b"] {
            a.set_roles(id, &[Role::Admin]).await.must("io").must("admin again");
            a.set_disabled(id, None).await.must("io").must("enabled again");
        }
    }
}

fn setup_invite(n: usize) -> InviteRecord {
    InviteRecord {
        role: Role::Admin,
        ..invite(&format!("{SETUP_INVITE_PREFIX}{n}"), 1_000_000)
    }
}

/// A setup invite registers only while nobody holds the admin role; an admin's registration, by any invite, makes every unused setup
/// invite expire; a refused one keeps its invite unused.
pub async fn a_setup_invite_works_only_while_no_admin_exists(h: &dyn AccountsHarness) {
    let (store, _) = h.open().await;
    let store = &*store;
    let now = 1000;
    store.insert_invite(&setup_invite(1), "setup-h1").await.must("invite");
    // Someone who is not an admin changes nothing about that.
    insert_invited(store, &user("v", "victor"), "cv", now).await;
    assert!(store.find_invite("setup-h1", now).await.must("find").is_some());
    // An admin invite that is no setup code, then the admin's registration.
    store
        .insert_invite(
            &InviteRecord {
                role: Role::Admin,
                ..invite("cli-1", 1_000_000)
            },
            "cli-h1",
        )
        .await
        .must("invite");
    store
        .insert_user(&admin("a", "alice"), &passkey("ca", "a"), Some("cli-h1"), now)
        .await
        .must("io")
        .must("alice");
    assert!(
        store.find_invite("setup-h1", now).await.must("find").is_none(),
        "an admin's registration expires the setup codes"
    );
    let listed = store.list_invites().await.must("invites");
    let expired = listed.iter().find(|i| i.id == "setup-1").must("setup-1");
    assert_eq!((expired.expires_at, expired.used_by.clone()), (now, None));
    // A setup code issued anyway (another instance, at the same time) is refused.
    store.insert_invite(&setup_invite(2), "setup-h2").await.must("invite");
    let refused = store
        .insert_user(&admin("e", "eve"), &passkey("ce", "e"), Some("setup-h2"), now)
        .await
        .must("io");
    assert!(matches!(refused, Err(RegistrationRefused::SetupDone)), "{refused:?}");
    assert!(store.find_user("e").await.must("find").is_none());
    assert!(
        store.find_invite("setup-h2", now).await.must("find").is_some(),
        "the refused registration did not use it"
    );
}

/// Registrations of the first admin with several setup invites at once (herald
/// instances starting together each issued one): exactly one admin, the
/// others refused, and no setup invite usable afterwards.
pub async fn concurrent_first_admin_registrations_make_one_admin(h: &dyn AccountsHarness) {
    let (a, _) = h.open().await;
    let (b, _) = h.open().await;
    let now = 1000;
    const N: usize = 8;
    for n in 0..N {
        a.insert_invite(&setup_invite(n), &format!("setup-h{n}"))
            .await
            .must("invite");
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for n in 0..N {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("u{n}");
            barrier.wait().await;
            store
                .insert_user(
                    &admin(&id, &format!("admin{n}")),
                    &passkey(&format!("c{n}"), &id),
                    Some(&format!("setup-h{n}")),
                    now,
                )
                .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.must("task").must("io") {
            Ok(()) => won += 1,
            Err(RegistrationRefused::SetupDone | RegistrationRefused::InviteUnusable) => {}
            Err(other) => panic!("expected SetupDone, got {other:?}"),
        }
    }
    assert_eq!(won, 1, "one first admin");
    assert_eq!(a.count_users().await.must("count"), 1);
    assert_eq!(enabled_admins(&*a).await, 1);
    for n in 0..N {
        assert!(
            b.find_invite(&format!("setup-h{n}"), now).await.must("find").is_none(),
            "setup-{n} is used or expired"
        );
    }
}
