//! Taking access away and keeping abuse bounded (audit issue 9, items 6, 7, 9):
//! login limits per account and per client address (`X-Forwarded-For` only
//! from trusted proxies), failed logins that cannot grow the log without bound,
//! disabling people and removing passkeys, and requests that neither wait on
//! another process's write lock nor run forever.
//!
//! Over a real socket, with `webauthn-authenticator-rs`'s software passkey as
//! the authenticator where a login is needed; other people and sessions are
//! made directly in the account store (no browser).

mod support;

use std::time::{Duration, Instant};

use herald_core::auth::Role;
use herald_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::*;

impl Server {
    /// login/finish with no cookie (a login from a browser holding none).
    async fn login_finish_without_cookie(&self, ceremony: &Value, credential: &Value) -> reqwest::Response {
        self.post_json(
            "/api/auth/login/finish",
            json!({ "ceremony": ceremony, "credential": credential }),
            None,
        )
        .await
    }

    /// A full passkey login sending no cookie; sets `who`'s cookie when it works.
    async fn login_without_cookie(&self, who: &mut Person) -> reqwest::Response {
        let (ceremony, credential) = self.login_signed(who).await;
        let r = self.login_finish_without_cookie(&ceremony, &credential).await;
        if let Some(c) = session_cookie(&r) {
            who.cookie = Some(c);
        }
        r
    }

    async fn head(&self) -> usize {
        self.events().await.len()
    }

    /// A session made directly in the store for `user_id`, last seen
    /// `idle_for` ago; returns the cookie.
    async fn session_for(&self, user_id: &str, idle_for: Duration) -> String {
        session_in(&self.state, user_id, idle_for).await
    }

    /// A user made directly in the store (see `support::person_in`).
    async fn user(&self, username: &str, role: Role) -> Person {
        person_in(&self.state, username, role).await
    }

    async fn token(&self, name: &str, role: Role) -> String {
        mint(&self.state, "test", name, role).await.secret
    }
}

// ---------------------------------------------------------------------------
// Item 6: login abuse

#[tokio::test]
async fn a_thousand_failed_logins_add_a_handful_of_events_to_the_log() {
    let server = start(ServerConfig {
        login_limit: 0,
        ..config()
    })
    .await;
    let mut alice = Person::new("alice");
    server.register_ok(&mut alice, None).await;
    // One signed answer of alice's, to replay against later ceremonies.
    let (ceremony, stale) = server.login_signed(&mut alice).await;
    assert_eq!(
        server.login_finish_without_cookie(&ceremony, &stale).await.status(),
        StatusCode::OK
    );
    let before = server.head().await;

    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let r = if i % 2 == 0 {
            // No such ceremony: a failure that names no account.
            server
                .login_finish_without_cookie(&json!(format!("nope-{i}")), &stale)
                .await
        } else {
            // A fresh ceremony, answered with a replayed signature: alice's failure.
            let r = server.post_json("/api/auth/login/start", json!({}), None).await;
            let start: Value = r.json().await.expect("start");
            server.login_finish_without_cookie(&start["ceremony"], &stale).await
        };
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(401, 1000)].into_iter().collect(), "every attempt failed");

    let events = server.events().await;
    let added = &events[before..];
    assert!(added.len() <= 2, "{} events added: {added:?}", added.len());
    let anonymous = added
        .iter()
        .find(|e| e["stream"] == "login-failures")
        .expect("one record of failures naming no account");
    assert_eq!(anonymous["type"], "LoginFailed");
    assert!(
        anonymous["data"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("ceremony")
    );
    for field in ["window_start", "window_end"] {
        assert!(anonymous["data"][field].is_string(), "{field}: {anonymous}");
    }
    let hers = added
        .iter()
        .find(|e| e["stream"] == format!("user-{}", alice.id))
        .expect("one record of alice's failures");
    assert_eq!(hers["type"], "LoginFailed");
    assert_eq!(hers["data"]["username"], "alice");
    assert_eq!(hers["data"]["unrecorded_failures"], 0);
}

#[tokio::test]
async fn failures_after_the_first_of_a_window_are_counted_and_carried_by_the_next_record() {
    let server = start(ServerConfig {
        login_limit: 0,
        login_window: Duration::from_millis(1500),
        ..config()
    })
    .await;
    let mut alice = Person::new("alice");
    server.register_ok(&mut alice, None).await;
    let (_, stale) = server.login_signed(&mut alice).await;
    for i in 0..4 {
        let r = server
            .login_finish_without_cookie(&json!(format!("nope-{i}")), &stale)
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = server.login_finish_without_cookie(&json!("nope-late"), &stale).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let failed: Vec<Value> = server
        .events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "LoginFailed")
        .collect();
    assert_eq!(failed.len(), 2, "one per window: {failed:?}");
    assert_eq!(failed[0]["data"]["unrecorded_failures"], 0);
    assert_eq!(
        failed[1]["data"]["unrecorded_failures"], 3,
        "the 3 failures after the first of the window before"
    );
    assert_ne!(failed[0]["data"]["window_start"], failed[1]["data"]["window_start"]);
}

#[tokio::test]
async fn the_per_account_login_limit_answers_429_with_retry_after() {
    let server = start(ServerConfig {
        login_limit: 4,
        ..config()
    })
    .await;
    let mut alice = Person::new("alice");
    server.register_ok(&mut alice, None).await;
    // A successful login (2 attempts: start and finish) starts the count over,
    // so alice logs in as often as she likes.
    for _ in 0..4 {
        assert_eq!(server.login_without_cookie(&mut alice).await.status(), StatusCode::OK);
    }
    // Someone else asking for alice: 4 attempts, then 429.
    let (_, signed) = server.login_signed(&mut alice).await;
    for _ in 0..3 {
        let r = server
            .post_json("/api/auth/login/start", json!({ "username": "alice" }), None)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = server
        .post_json("/api/auth/login/start", json!({ "username": "alice" }), None)
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=15 * 60).contains(&retry), "Retry-After {retry}");
    assert!(
        problem(r).await["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("this account")
    );
    // Presenting alice's passkey counts against alice too (even without naming her).
    let r = server.post_json("/api/auth/login/start", json!({}), None).await;
    assert_eq!(r.status(), StatusCode::OK, "a ceremony that names nobody");
    let start: Value = r.json().await.expect("start");
    let r = server.login_finish_without_cookie(&start["ceremony"], &signed).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "refused before verifying");
    // Other names, known or not, have their own count.
    for name in ["bob", "nobody"] {
        let r = server
            .post_json("/api/auth/login/start", json!({ "username": name }), None)
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{name}");
    }
    // The count is in herald.db, where other herald processes see it.
    let db = rusqlite::Connection::open(server.dir.path().join("herald.db")).expect("db");
    let attempts: i64 = db
        .query_row("SELECT attempts FROM login_attempts WHERE account = 'alice'", [], |r| {
            r.get(0)
        })
        .expect("alice's row");
    assert!(attempts > 4, "{attempts}");
}

async fn burst_until_limited(server: &Server, forwarded_for: impl Fn(usize) -> String) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    for i in 0..30 {
        let r = server
            .client
            .post(server.url("/api/auth/login/start"))
            .header("x-forwarded-for", forwarded_for(i))
            .json(&json!({}))
            .send()
            .await
            .expect("POST");
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }
    statuses
}

#[tokio::test]
async fn forwarded_for_is_believed_from_trusted_proxies_only() {
    // auth_rate 1: bursts of 5 per address.
    let untrusted = start(ServerConfig {
        auth_rate: 1,
        ..config()
    })
    .await;
    let statuses = burst_until_limited(&untrusted, |i| format!("198.51.100.{i}")).await;
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "made-up addresses do not escape the limit of the peer: {statuses:?}"
    );

    let proxied = start(ServerConfig {
        auth_rate: 1,
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("cidr")],
        ..config()
    })
    .await;
    let statuses = burst_until_limited(&proxied, |i| format!("198.51.100.{i}")).await;
    assert_eq!(statuses.len(), 30, "one attempt per forwarded client: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    // One client behind the proxy is limited on its own address, whatever it
    // puts in front of it.
    let statuses = burst_until_limited(&proxied, |i| format!("10.9.9.{i}, 203.0.113.5")).await;
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    assert!(statuses.len() > 1, "{statuses:?}");
}

// ---------------------------------------------------------------------------
// Item 7: disabling people, removing passkeys

#[tokio::test]
async fn disabling_a_user_ends_their_streams_refuses_their_cookie_and_login_and_is_recorded() {
    let server = start(config()).await;
    let mut alice = Person::new("alice");
    server.register_ok(&mut alice, None).await;
    let code = server.invite(&alice, "operator").await;
    let mut bob = Person::new("bob");
    server.register_ok(&mut bob, Some(&code)).await;
    let mut stream = server.send_as(reqwest::Method::GET, "/api/events/live", &bob).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let second_cookie = server.session_for(&bob.id, Duration::ZERO).await;

    let r = server
        .send_as(reqwest::Method::POST, &format!("/api/users/{}/disable", bob.id), &alice)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("user JSON");
    assert_eq!(body["user"]["username"], "bob");
    assert!(body["user"]["disabled_at"].is_string(), "{body}");

    read_to_end(&mut stream, &mut String::new()).await;
    assert_eq!(server.me(&bob).await.status(), StatusCode::UNAUTHORIZED);
    let mut other = Person::new("bob");
    other.cookie = Some(second_cookie);
    assert_eq!(
        server.me(&other).await.status(),
        StatusCode::UNAUTHORIZED,
        "every session"
    );
    assert!(
        server
            .state
            .accounts
            .list_sessions(Some(&bob.id), 0)
            .await
            .expect("list")
            .is_empty(),
        "the sessions are deleted"
    );
    // A session that appears anyway (another process) does not work either.
    other.cookie = Some(server.session_for(&bob.id, Duration::ZERO).await);
    let r = server.me(&other).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem(r).await["detail"], "this account is disabled");
    // Nor does his passkey.
    bob.cookie = None;
    let r = server.login_without_cookie(&mut bob).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        problem(r).await["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("this account is disabled")
    );
    assert!(bob.cookie.is_none());

    let users: Value = server.users(&alice).await;
    let listed = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "bob")
        .expect("bob")
        .clone();
    assert!(listed["disabled_at"].is_string());
    let keys = listed["passkeys"].as_array().expect("passkeys");
    assert_eq!(keys.len(), 1);
    assert!(keys[0]["credential_id"].is_string() && keys[0]["created_at"].is_string());
    assert!(keys[0].get("last_used_at").is_some());
    // `[0]["disabled_at"]` would be null for a missing user or field too: find
    // alice, and her field, before saying it is null.
    let alice_listed = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "alice")
        .expect("alice");
    assert_eq!(
        alice_listed.get("disabled_at"),
        Some(&Value::Null),
        "alice: {alice_listed}"
    );

    let r = server
        .send_as(reqwest::Method::POST, &format!("/api/users/{}/enable", bob.id), &alice)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("user JSON");
    assert_eq!(body["user"]["username"], "bob", "{body}");
    assert_eq!(body["user"].get("disabled_at"), Some(&Value::Null), "{body}");
    assert_eq!(
        server.login_without_cookie(&mut bob).await.status(),
        StatusCode::OK,
        "bob is back"
    );
    assert_eq!(server.me(&bob).await.status(), StatusCode::OK);

    let events = server.events().await;
    for kind in ["UserDisabled", "UserEnabled"] {
        let e = events
            .iter()
            .find(|e| e["type"] == kind)
            .unwrap_or_else(|| panic!("{kind}"));
        assert_eq!(e["stream"], format!("user-{}", bob.id));
        assert_eq!(e["data"], json!({ "user_id": bob.id, "username": "bob" }));
        assert_eq!(e["actor"]["name"], "alice");
    }
    let unknown = server
        .send_as(reqwest::Method::POST, "/api/users/nobody/disable", &alice)
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    // Only admins.
    let r = server
        .send_as(reqwest::Method::POST, &format!("/api/users/{}/disable", alice.id), &bob)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_last_enabled_admin_and_oneself_cannot_be_disabled() {
    let server = start(config()).await;
    let mut alice = Person::new("alice");
    server.register_ok(&mut alice, None).await;
    let bob = server.user("bob", Role::Operator).await;
    let token = server.token("robot", Role::Admin).await;
    let post = |path: String| server.client.post(server.url(&path)).bearer_auth(&token).send();

    let r = server
        .send_as(
            reqwest::Method::POST,
            &format!("/api/users/{}/disable", alice.id),
            &alice,
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem(r).await["title"], "cannot disable yourself");

    let r = post(format!("/api/users/{}/disable", alice.id)).await.expect("disable");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = problem(r).await;
    assert_eq!(p["title"], "last admin");
    assert!(p["detail"].as_str().unwrap_or_default().contains("alice"), "{p}");

    // With a second admin, alice can be disabled...
    let r = server
        .client
        .put(server.url(&format!("/api/users/{}/roles", bob.id)))
        .bearer_auth(&token)
        .json(&json!({ "roles": ["admin"] }))
        .send()
        .await
        .expect("roles");
    assert_eq!(r.status(), StatusCode::OK);
    let r = post(format!("/api/users/{}/disable", alice.id)).await.expect("disable");
    assert_eq!(r.status(), StatusCode::OK);
    // ...and then bob is the last enabled admin: not disabled, not demoted.
    let r = post(format!("/api/users/{}/disable", bob.id)).await.expect("disable");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = server
        .client
        .put(server.url(&format!("/api/users/{}/roles", bob.id)))
        .bearer_auth(&token)
        .json(&json!({ "roles": ["viewer"] }))
        .send()
        .await
        .expect("roles");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem(r).await["title"], "last admin");
    // Disabling twice changes nothing and records nothing more.
    let r = post(format!("/api/users/{}/disable", alice.id)).await.expect("disable");
    assert_eq!(r.status(), StatusCode::OK);
    let disabled = server.count_events("UserDisabled").await;
    assert_eq!(disabled, 1);
}

#[tokio::test]
async fn removing_a_passkey_is_recorded_and_it_no_longer_logs_in() {
    let server = start(config()).await;
    let mut alice = Person::new("alice");
    server.register_ok(&mut alice, None).await;
    let code = server.invite(&alice, "viewer").await;
    let mut bob = Person::new("bob");
    server.register_ok(&mut bob, Some(&code)).await;
    let users: Value = server.users(&alice).await;
    let credential_id = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "bob")
        .and_then(|u| u["passkeys"][0]["credential_id"].as_str())
        .expect("bob's passkey")
        .to_owned();

    // Signed before the removal, presented after it.
    let (ceremony, signed) = server.login_signed(&mut bob).await;
    let path = format!("/api/users/{}/passkeys/{credential_id}", bob.id);
    let r = server.send_as(reqwest::Method::DELETE, &path, &bob).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "admins only");
    let r = server.send_as(reqwest::Method::DELETE, &path, &alice).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for unknown in [
        path.clone(),
        format!("/api/users/{}/passkeys/{credential_id}", alice.id),
        format!("/api/users/nobody/passkeys/{credential_id}"),
    ] {
        let r = server.send_as(reqwest::Method::DELETE, &unknown, &alice).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{unknown}");
        assert!(problem(r).await["detail"].is_string());
    }
    let r = server.login_finish_without_cookie(&ceremony, &signed).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the passkey is gone");
    assert!(
        problem(r).await["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not registered")
    );

    let removed = server
        .events()
        .await
        .into_iter()
        .find(|e| e["type"] == "PasskeyRemoved")
        .expect("PasskeyRemoved");
    assert_eq!(removed["stream"], format!("user-{}", bob.id));
    assert_eq!(
        removed["data"],
        json!({ "user_id": bob.id, "username": "bob", "credential_id": credential_id })
    );
    assert_eq!(removed["actor"]["name"], "alice");
}

// ---------------------------------------------------------------------------
// Item 9: the session touch is best effort; requests have a deadline

#[tokio::test]
async fn a_cookie_get_answers_while_another_process_holds_the_write_lock() {
    let server = start(config()).await;
    let mut alice = Person::new("alice");
    server.register_ok(&mut alice, None).await;
    // Last seen 5 minutes ago: this request is due to refresh it.
    alice.cookie = Some(server.session_for(&alice.id, Duration::from_secs(300)).await);
    let other = rusqlite::Connection::open(server.dir.path().join("herald.db")).expect("open");
    other.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");

    let started = Instant::now();
    let r = server.me(&alice).await;
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap_or_default());
    assert!(
        took < Duration::from_secs(5),
        "the request waited {took:?} for the lock"
    );
    other.execute_batch("COMMIT").expect("release");

    // The refresh is retried by a later request once the database is free.
    let deadline = Instant::now() + WAIT;
    loop {
        assert_eq!(server.me(&alice).await.status(), StatusCode::OK);
        let sessions = server
            .state
            .accounts
            .list_sessions(Some(&alice.id), 0)
            .await
            .expect("sessions");
        let now = herald_server::sessions::now_millis();
        if sessions.iter().any(|s| now - s.last_seen_at < 60_000) {
            break;
        }
        assert!(Instant::now() < deadline, "the session was never refreshed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_request_that_runs_past_the_timeout_answers_503() {
    let server = start(ServerConfig {
        request_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let token = server.token("deployer", Role::Operator).await;
    let other = rusqlite::Connection::open(server.dir.path().join("herald.db")).expect("open");
    other.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let started = Instant::now();
    let r = server
        .client
        .post(server.url("/api/commands"))
        .bearer_auth(&token)
        .json(&json!({ "type": "StartDeployment", "aggregate_id": "web-1", "data": { "service": "web" } }))
        .send()
        .await
        .expect("POST");
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(took < Duration::from_secs(5), "{took:?}");
    let p = problem(r).await;
    assert!(p["detail"].as_str().unwrap_or_default().contains("took longer"), "{p}");
    other.execute_batch("COMMIT").expect("release");
    // Quick requests are untouched.
    let r = server
        .client
        .get(server.url("/api/deployments"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn sessions_idle_past_the_limit_are_not_listed_even_before_the_purge() {
    let server = start(config()).await;
    let admin = server.user("root", Role::Admin).await;
    let bob = server.user("bob", Role::Viewer).await;
    // A session of bob's that has been idle 13 hours (the limit is 12): over,
    // though the minute's purge has not removed its row yet.
    server.session_for(&bob.id, Duration::from_secs(13 * 3600)).await;
    let r = server.send_as(reqwest::Method::GET, "/api/sessions", &admin).await;
    assert_eq!(r.status(), StatusCode::OK);
    let listed: Value = r.json().await.expect("JSON");
    let bobs: Vec<&Value> = listed["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s["user_id"] == bob.id.as_str())
        .collect();
    assert_eq!(bobs.len(), 1, "only bob's live session: {listed}");
}
