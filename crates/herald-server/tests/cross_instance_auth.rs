//! Several herald instances on one store (issue 11, point 4): access taken
//! away on instance A — a token revoked, a logout, a session ended by an
//! admin, a person disabled, a role changed — ends the affected live streams
//! on instance B and refuses (or re-roles) B's next request within 2 s.
//!
//! The two instances are two `AppState`s, each with stores of its own (two
//! processes: their own writer, live channel, token cache and live registry),
//! each served by `herald_server::run` on a socket; every case runs twice:
//! on one SQLite data directory, and on one fresh PostgreSQL database
//! (`PgStore` + `PgAccounts`; each instance's read models in a directory of
//! its own; skipped without a server unless `CI=true`). Nothing of A's
//! reaches B but the shared storage: B learns of A's changes through the log
//! (its revocation follower) and the account store. People and sessions are
//! made directly in the account store (no passkey ceremony).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_core::auth::Role;
use herald_core::store::EventStore;
use herald_postgres::testing::TestDatabase;
use herald_postgres::{PgAccounts, PgConfig, PgStore};
use herald_server::sse::Sse;
use herald_server::{AppState, ServerConfig};
use herald_store::sqlite::SqliteStore;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Faulty, Person, Running, mint, person_in, read_to_end_within, session_in};
use tempfile::TempDir;

/// What the rule allows: from the change on A to its effect on B.
const WITHIN: Duration = Duration::from_secs(2);

fn config() -> ServerConfig {
    ServerConfig {
        command_rate: 0,
        auth_rate: 0,
        keepalive: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

/// One instance: its own stores on `dir`, served on a socket.
struct Instance {
    base: String,
    state: AppState,
    client: reqwest::Client,
    _running: Running,
}

/// Serves `state` on a socket of its own.
async fn serve(state: AppState) -> Instance {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    Instance {
        base: format!("http://{addr}"),
        state: state.clone(),
        client: reqwest::Client::builder().no_proxy().build().expect("client"),
        _running: Running::spawn(state, listener),
    }
}

/// An instance with stores of its own on the data directory `dir`.
async fn sqlite_instance(dir: &Path) -> Instance {
    let store: Arc<dyn EventStore> = SqliteStore::open(dir, Arc::new(Sse)).expect("open store");
    let state = AppState::new(
        store,
        herald_store::credentials::SqliteCredentials::open(dir).expect("open credentials"),
        herald_store::accounts::SqliteAccounts::open(dir).expect("open accounts"),
        dir,
        config(),
    )
    .expect("state");
    serve(state).await
}

/// An instance with connections of its own to the database at `url`, its read
/// models in `models`.
async fn postgres_instance(url: &str, models: &Path) -> Instance {
    let store = PgStore::open(url, Arc::new(Sse), PgConfig::default())
        .await
        .expect("open the PostgreSQL store");
    let accounts = PgAccounts::open(url).await.expect("open the PostgreSQL accounts");
    let state = AppState::new(store, accounts.clone(), accounts, models, config()).expect("state");
    serve(state).await
}

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Two instances on one store, and what must outlive them (directories, the
/// test database; dropped after the instances).
struct Pair {
    a: Instance,
    b: Instance,
    _dirs: (TempDir, TempDir),
    _db: Option<TestDatabase>,
}

/// Two instances sharing one fresh store; `None` when the backend is not
/// available here (PostgreSQL without a server, outside CI).
async fn two_instances(backend: Backend) -> Option<Pair> {
    let dirs = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    match backend {
        Backend::Sqlite => Some(Pair {
            a: sqlite_instance(dirs.0.path()).await,
            b: sqlite_instance(dirs.0.path()).await,
            _dirs: dirs,
            _db: None,
        }),
        Backend::Postgres => {
            let db = TestDatabase::create().await?;
            Some(Pair {
                a: postgres_instance(db.url(), dirs.0.path()).await,
                b: postgres_instance(db.url(), dirs.1.path()).await,
                _dirs: dirs,
                _db: Some(db),
            })
        }
    }
}

/// One `#[tokio::test]` per backend for the case `$name(a, b)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let pair = super::two_instances(super::Backend::Sqlite).await.expect("SQLite is always there");
                    super::$name(&pair.a, &pair.b).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(pair) = super::two_instances(super::Backend::Postgres).await else {
                        return;
                    };
                    super::$name(&pair.a, &pair.b).await;
                }
            }
        )*
    };
}

on_both_backends!(
    a_token_revoked_on_one_instance_ends_its_streams_and_requests_on_the_other,
    logging_out_on_one_instance_ends_the_session_streams_on_the_other,
    a_session_an_admin_ends_on_one_instance_ends_on_the_other,
    disabling_a_person_on_one_instance_ends_all_their_streams_on_the_other,
    a_role_change_on_one_instance_ends_the_streams_and_takes_effect_on_the_other,
);

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Who<'a> {
    Token(&'a str),
    /// A browser: its cookie, and `Sec-Fetch-Site: same-origin` on writes.
    Browser(&'a Person),
}

impl Instance {
    fn request(&self, method: Method, path: &str, who: Who<'_>) -> reqwest::RequestBuilder {
        let rb = self.client.request(method.clone(), format!("{}{path}", self.base));
        match who {
            Who::Token(token) => rb.bearer_auth(token),
            Who::Browser(person) => {
                let rb = rb.header("cookie", person.cookie.as_deref().expect("a cookie"));
                if method == Method::GET {
                    rb
                } else {
                    rb.header("sec-fetch-site", "same-origin")
                }
            }
        }
    }

    async fn send(&self, method: Method, path: &str, who: Who<'_>) -> reqwest::Response {
        self.request(method.clone(), path, who)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// `GET /api/events/live`, open (200).
    async fn live(&self, who: Who<'_>) -> reqwest::Response {
        let r = self.send(Method::GET, "/api/events/live", who).await;
        assert_eq!(r.status(), StatusCode::OK, "the live stream opens");
        r
    }

    /// Sends `GET path` until it answers `status`, for at most [`WITHIN`];
    /// returns that response.
    async fn until_status(&self, path: &str, who: Who<'_>, status: StatusCode) -> reqwest::Response {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let r = self.send(Method::GET, path, who).await;
            if r.status() == status {
                return r;
            }
            let last = r.status();
            assert!(
                tokio::time::Instant::now() < deadline,
                "GET {path} on instance B still answered {last} (not {status}) {WITHIN:?} after the change on A"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The stream ends within [`WITHIN`], as a revoked credential's does.
async fn ends_within(stream: &mut reqwest::Response, what: &str) {
    let mut seen = String::new();
    read_to_end_within(stream, &mut seen, WITHIN).await;
    assert!(
        seen.contains(std::str::from_utf8(herald_server::live::REVOKED).expect("text").trim()),
        "{what}: ended as revoked: {seen:?}"
    );
}

/// The stream is still open: an event appended now (a token minted on `a`)
/// arrives on it.
async fn still_open(stream: &mut reqwest::Response, a: &Instance, what: &str) {
    let name = format!("probe-{}", uuid_like());
    mint(&a.state, "test", &name, Role::Viewer).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains(&name) {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Err(_) => panic!("{what}: the new event did not arrive within 10 s: {seen:?}"),
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) | Ok(Err(_)) => panic!("{what}: the stream ended: {seen:?}"),
        }
    }
}

/// A fresh name.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

async fn a_token_revoked_on_one_instance_ends_its_streams_and_requests_on_the_other(a: &Instance, b: &Instance) {
    let admin = mint(&a.state, "test", "root", Role::Admin).await.secret;
    let robot = mint(&a.state, "test", "robot", Role::Viewer).await;
    let other = mint(&a.state, "test", "other", Role::Viewer).await.secret;
    let mut stream = b.live(Who::Token(&robot.secret)).await;
    let mut untouched = b.live(Who::Token(&other)).await;
    // B has the token in its cache now (for 5 s: longer than the 2 s allowed).
    assert_eq!(
        b.send(Method::GET, "/api/me", Who::Token(&robot.secret)).await.status(),
        StatusCode::OK
    );

    let r = a
        .send(
            Method::DELETE,
            &format!("/api/tokens/{}", robot.record.id),
            Who::Token(&admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    ends_within(&mut stream, "the revoked token's stream").await;
    let r = b
        .until_status("/api/me", Who::Token(&robot.secret), StatusCode::UNAUTHORIZED)
        .await;
    assert_eq!(support::problem(r).await["detail"], "the token is unknown or revoked");
    still_open(&mut untouched, a, "another token's stream").await;
}

async fn logging_out_on_one_instance_ends_the_session_streams_on_the_other(a: &Instance, b: &Instance) {
    let bob = person_in(&a.state, "bob", Role::Viewer).await;
    let mut other_session = Person::new("bob");
    other_session.cookie = Some(session_in(&a.state, &bob.id, Duration::ZERO).await);
    let mut stream = b.live(Who::Browser(&bob)).await;
    let mut kept = b.live(Who::Browser(&other_session)).await;

    let r = a.send(Method::POST, "/api/auth/logout", Who::Browser(&bob)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    ends_within(&mut stream, "the logged-out session's stream").await;
    b.until_status("/api/me", Who::Browser(&bob), StatusCode::UNAUTHORIZED)
        .await;
    // Bob's other session, and its stream, are not that session.
    assert_eq!(
        b.send(Method::GET, "/api/me", Who::Browser(&other_session))
            .await
            .status(),
        StatusCode::OK
    );
    still_open(&mut kept, a, "the other session's stream").await;
}

async fn a_session_an_admin_ends_on_one_instance_ends_on_the_other(a: &Instance, b: &Instance) {
    let root = person_in(&a.state, "root", Role::Admin).await;
    let bob = person_in(&a.state, "bob", Role::Operator).await;
    let mut stream = b.live(Who::Browser(&bob)).await;
    let sessions = a
        .state
        .accounts
        .list_sessions(Some(&bob.id), 0)
        .await
        .expect("bob's sessions");
    assert_eq!(sessions.len(), 1);

    let r = a
        .send(
            Method::DELETE,
            &format!("/api/sessions/{}", sessions[0].id),
            Who::Browser(&root),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    ends_within(&mut stream, "the ended session's stream").await;
    b.until_status("/api/me", Who::Browser(&bob), StatusCode::UNAUTHORIZED)
        .await;
}

async fn disabling_a_person_on_one_instance_ends_all_their_streams_on_the_other(a: &Instance, b: &Instance) {
    let root = person_in(&a.state, "root", Role::Admin).await;
    let bob = person_in(&a.state, "bob", Role::Operator).await;
    let mut second = Person::new("bob");
    second.cookie = Some(session_in(&a.state, &bob.id, Duration::ZERO).await);
    let carol = person_in(&a.state, "carol", Role::Viewer).await;
    let mut first_stream = b.live(Who::Browser(&bob)).await;
    let mut second_stream = b.live(Who::Browser(&second)).await;
    let mut carols = b.live(Who::Browser(&carol)).await;

    let r = a
        .send(
            Method::POST,
            &format!("/api/users/{}/disable", bob.id),
            Who::Browser(&root),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    ends_within(&mut first_stream, "bob's first session's stream").await;
    ends_within(&mut second_stream, "bob's second session's stream").await;
    for session in [&bob, &second] {
        b.until_status("/api/me", Who::Browser(session), StatusCode::UNAUTHORIZED)
            .await;
    }
    still_open(&mut carols, a, "someone else's stream").await;
}

async fn a_role_change_on_one_instance_ends_the_streams_and_takes_effect_on_the_other(a: &Instance, b: &Instance) {
    let root = person_in(&a.state, "root", Role::Admin).await;
    let bob = person_in(&a.state, "bob", Role::Operator).await;
    let mut stream = b.live(Who::Browser(&bob)).await;
    let me: Value = b
        .send(Method::GET, "/api/me", Who::Browser(&bob))
        .await
        .json()
        .await
        .expect("me");
    assert_eq!(me["user"]["roles"], json!(["operator"]));

    let r = a
        .request(
            Method::PUT,
            &format!("/api/users/{}/roles", bob.id),
            Who::Browser(&root),
        )
        .json(&json!({ "roles": ["viewer"] }))
        .send()
        .await
        .expect("PUT roles");
    assert_eq!(r.status(), StatusCode::OK);

    ends_within(&mut stream, "the stream opened with the old role").await;
    // The next request on B sees the new role: an operator's route is refused.
    let r = b
        .request(Method::POST, "/api/commands", Who::Browser(&bob))
        .json(&json!({ "type": "StartDeployment", "aggregate_id": "d1", "data": { "service": "x" } }))
        .send()
        .await
        .expect("POST /api/commands");
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "bob is a viewer now");
    let me: Value = b
        .send(Method::GET, "/api/me", Who::Browser(&bob))
        .await
        .json()
        .await
        .expect("me");
    assert_eq!(me["user"]["roles"], json!(["viewer"]));
    // And a stream opened again (the console does) stays open.
    let mut again = b.live(Who::Browser(&bob)).await;
    still_open(&mut again, a, "the stream opened with the new role").await;
}

/// An instance on `dir` with `store` (the other stores its own).
async fn serve_faulty(store: &Arc<Faulty>, dir: &Path) -> Instance {
    let state = AppState::new(
        store.clone(),
        herald_store::credentials::SqliteCredentials::open(dir).expect("open credentials"),
        herald_store::accounts::SqliteAccounts::open(dir).expect("open accounts"),
        dir,
        config(),
    )
    .expect("state");
    serve(state).await
}

/// `GET /readyz` until it answers `status` (at most 10 s); its body.
async fn readyz_until(instance: &Instance, status: StatusCode) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = instance
            .client
            .get(format!("{}/readyz", instance.base))
            .send()
            .await
            .expect("GET /readyz");
        if r.status() == status {
            return r.json().await.expect("readyz JSON");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still answered {} (not {status}) after 10 s",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An instance whose follower cannot read the log is not ready (and says
/// why); once it can, it is ready again and catches up: a token revoked on
/// another instance meanwhile has its stream ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_follower_cannot_read_the_log_is_not_ready_and_catches_up_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = sqlite_instance(dir.path()).await;
    let store = Faulty::open(dir.path(), true, None);
    let b = serve_faulty(&store, dir.path()).await;
    let admin = mint(&a.state, "test", "root", Role::Admin).await.secret;
    let robot = mint(&a.state, "test", "robot", Role::Viewer).await;
    let mut stream = b.live(Who::Token(&robot.secret)).await;

    let problem = readyz_until(&b, StatusCode::SERVICE_UNAVAILABLE).await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(herald_server::revocations::NAME) && detail.contains("the test says so"),
        "{problem}"
    );
    let r = a
        .send(
            Method::DELETE,
            &format!("/api/tokens/{}", robot.record.id),
            Who::Token(&admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    store.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    readyz_until(&b, StatusCode::OK).await;
    let mut seen = String::new();
    read_to_end_within(&mut stream, &mut seen, Duration::from_secs(10)).await;
    assert!(
        seen.contains(std::str::from_utf8(herald_server::live::REVOKED).expect("text").trim()),
        "ended as revoked: {seen:?}"
    );
}

/// A role change takes effect in the store first: when its `RolesChanged`
/// cannot be recorded, a grant is undone (nobody gains a role without its
/// record) and a demotion stands (like a revocation), its streams ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_grant_that_cannot_be_recorded_is_undone_and_a_demotion_stands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let instance = serve_faulty(&Faulty::open(dir.path(), false, Some("RolesChanged")), dir.path()).await;
    let root = person_in(&instance.state, "root", Role::Admin).await;
    let bob = person_in(&instance.state, "bob", Role::Viewer).await;
    let carol = person_in(&instance.state, "carol", Role::Operator).await;
    let mut carols = instance.live(Who::Browser(&carol)).await;
    let put_roles = |who: &Person, roles: Value| {
        instance
            .request(
                Method::PUT,
                &format!("/api/users/{}/roles", who.id),
                Who::Browser(&root),
            )
            .json(&json!({ "roles": roles }))
            .send()
    };
    let roles_of = |who: &Person| {
        let id = who.id.clone();
        let accounts = instance.state.accounts.clone();
        async move { accounts.find_user(&id).await.expect("find").expect("the user").roles }
    };

    let r = put_roles(&bob, json!(["admin"])).await.expect("PUT roles");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(roles_of(&bob).await, vec![Role::Viewer], "the grant is undone");

    let r = put_roles(&carol, json!(["viewer"])).await.expect("PUT roles");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(roles_of(&carol).await, vec![Role::Viewer], "the demotion stands");
    ends_within(&mut carols, "the demoted person's stream").await;
}
