//! Passkeys, sessions, roles and invitations (API.md §2, §7) over a real socket,
//! with `webauthn-authenticator-rs`'s software passkey playing the browser's
//! authenticator. The cookie jar is kept by hand so every test says exactly
//! which cookie and which CSRF headers a request carries.

mod support;

use herald_core::auth::Role;
use herald_server::{AppState, ServerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::*;

impl Server {
    /// Registers the first admin with the setup code.
    async fn register_admin(&self, who: &mut Person) -> reqwest::Response {
        let code = self.setup_code().await;
        self.register(who, Some(&code)).await
    }

    async fn command(&self, who: &Person, command_type: &str, id: &str, data: Value) -> reqwest::Response {
        self.as_browser(reqwest::Method::POST, "/api/commands", who)
            .json(&json!({ "type": command_type, "aggregate_id": id, "data": data }))
            .send()
            .await
            .expect("POST /api/commands")
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("herald.db")).expect("open herald.db")
    }
}

/// Reads a live stream until `needle` appears (true) or the stream ends (false).
async fn read_until(stream: &mut reqwest::Response, seen: &mut String, needle: &str) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Err(_) => panic!("no {needle:?} within {WAIT:?}; got {seen:?}"),
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) | Ok(Err(_)) => return false,
        }
    }
    true
}

#[tokio::test]
async fn the_first_admin_invites_an_operator_who_deploys_live_until_logging_out() {
    let server = start(config()).await;
    let mut admin = Person::new("alice");
    let r = server.register_admin(&mut admin).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie_attrs = r.headers()["set-cookie"].to_str().expect("cookie").to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie_attrs.contains(attr), "{attr} missing from {cookie_attrs}");
    }
    assert!(!cookie_attrs.contains("Secure"), "no Secure on an http origin");
    let body: Value = r.json().await.expect("user JSON");
    assert_eq!(body["user"]["username"], "alice");
    assert_eq!(body["user"]["roles"], json!(["admin"]), "the first account is admin");
    let me: Value = server.me(&admin).await.json().await.expect("me");
    assert_eq!(me["via"], "session");
    assert_eq!(me["user"]["username"], "alice");

    // After the first account, registering still needs an invite.
    let mut bob = Person::new("bob");
    let r = server.register_start(&bob, None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        problem(r).await["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("invite")
    );

    let code = server.invite(&admin, "operator").await;
    let r = server.register(&mut bob, Some(&code)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.expect("user JSON");
    assert_eq!(body["user"]["roles"], json!(["operator"]));
    let registration_cookie = bob.cookie.clone();

    // An invite works once.
    let carol = Person::new("carol");
    let r = server.register_start(&carol, Some(&code)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a used invite is refused");

    // Bob logs in with his passkey alone: a new session id.
    bob.cookie = None;
    let r = server.login(&mut bob).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(bob.cookie.is_some());
    assert_ne!(bob.cookie, registration_cookie, "a new session id at every login");

    // His live stream, with the cookie.
    let mut stream = server.send_as(reqwest::Method::GET, "/api/events/live", &bob).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut seen = String::new();

    let r = server
        .command(&bob, "StartDeployment", "web-1", json!({ "service": "web" }))
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap_or_default());
    assert!(read_until(&mut stream, &mut seen, "event: DeploymentStarted").await);
    let line = seen
        .lines()
        .find(|l| l.starts_with("data: ") && l.contains("DeploymentStarted"))
        .expect("the event's data line");
    let envelope: Value = serde_json::from_str(&line["data: ".len()..]).expect("envelope");
    assert_eq!(envelope["actor"]["kind"], "user");
    assert_eq!(envelope["actor"]["name"], "bob");

    // Logging out ends the session and, at once, its stream.
    let r = server.send_as(reqwest::Method::POST, "/api/auth/logout", &bob).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap_or_default()
            .contains("Max-Age=0"),
        "the cookie is cleared"
    );
    read_to_end(&mut stream, &mut seen).await;
    assert_eq!(server.me(&bob).await.status(), StatusCode::UNAUTHORIZED);

    // The log says who did what.
    let events = server.events().await;
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or(""),
                e["actor"]["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for expected in [
        ("UserRegistered", "alice"),
        ("InviteCreated", "alice"),
        ("UserRegistered", "bob"),
        ("LoginSucceeded", "bob"),
        ("DeploymentStarted", "bob"),
        ("LoggedOut", "bob"),
    ] {
        assert!(kinds.contains(&expected), "{expected:?} not in {kinds:?}");
    }
    let registered = events
        .iter()
        .find(|e| e["type"] == "UserRegistered" && e["actor"]["name"] == "bob")
        .expect("bob's registration");
    assert_eq!(
        registered["stream"],
        format!("user-{}", registered["actor"]["id"].as_str().unwrap_or(""))
    );
    assert!(
        registered["data"]["invite_id"].is_string(),
        "the invite used is recorded"
    );
    let text = serde_json::to_string(&events).expect("events");
    assert!(!text.contains(&code), "invite codes never enter the log");
}

#[tokio::test]
async fn a_ceremony_works_once_and_not_after_five_minutes() {
    let server = start(config()).await;
    let mut alice = Person::new("alice");
    assert_eq!(server.register_admin(&mut alice).await.status(), StatusCode::CREATED);

    // Replay: the same ceremony and signed answer a second time.
    let start = server.login_start(&alice).await;
    let credential = Server::assert_credential(&mut alice, &server.origin, &start);
    let r = server
        .login_finish(&mut alice, &start["ceremony"], credential.clone())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut thief = Person::new("alice");
    let r = server.login_finish(&mut thief, &start["ceremony"], credential).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "a replayed ceremony is refused");
    assert!(thief.cookie.is_none());

    // Expired: the ceremony's clock is moved past its 5 minutes.
    let start = server.login_start(&alice).await;
    let credential = Server::assert_credential(&mut alice, &server.origin, &start);
    let moved = server
        .db()
        .execute(
            "UPDATE ceremonies SET expires_at = expires_at - 5 * 60 * 1000 - 1 WHERE id = ?1",
            [start["ceremony"].as_str().expect("ceremony")],
        )
        .expect("age the ceremony");
    assert_eq!(moved, 1);
    let r = server.login_finish(&mut alice, &start["ceremony"], credential).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "an expired ceremony is refused");
    let body = problem(r).await;
    assert!(
        body["detail"].as_str().unwrap_or_default().contains("expired"),
        "{body}"
    );

    // An expired registration ceremony too.
    let mut bob = Person::new("bob");
    let code = server.invite(&alice, "viewer").await;
    let r = server.register_start(&bob, Some(&code)).await;
    let start: Value = r.json().await.expect("start");
    let credential = Server::create_credential(&mut bob, &server.origin, &start);
    server
        .db()
        .execute(
            "UPDATE ceremonies SET expires_at = 0 WHERE id = ?1",
            [start["ceremony"].as_str().expect("id")],
        )
        .expect("age the ceremony");
    let r = server.register_finish(&start, credential).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Failed logins are in the log: both named no account, so one event for
    // the window (the other is counted; see tests/access.rs).
    let failures = server.count_events("LoginFailed").await;
    assert_eq!(failures, 1);
}

#[tokio::test]
async fn a_passkey_used_at_another_origin_or_unknown_here_is_refused() {
    let server = start(config()).await;
    let mut alice = Person::new("alice");

    // Registration made at another origin (a phishing site on another port).
    let code = server.setup_code().await;
    let r = server.register_start(&alice, Some(&code)).await;
    let start: Value = r.json().await.expect("start");
    let elsewhere = "http://localhost:1";
    let credential = Server::create_credential(&mut alice, elsewhere, &start);
    let r = server.register_finish(&start, credential).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "wrong origin at registration");

    let mut alice = Person::new("alice");
    assert_eq!(server.register_admin(&mut alice).await.status(), StatusCode::CREATED);
    alice.cookie = None;
    let start = server.login_start(&alice).await;
    let credential = Server::assert_credential(&mut alice, elsewhere, &start);
    let r = server.login_finish(&mut alice, &start["ceremony"], credential).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "wrong origin at login");
    assert!(alice.cookie.is_none());

    // A passkey registered at another herald signs this herald's challenge
    // (for the same rp id); herald does not know it.
    let other = start_other().await;
    let mut mallory = Person::new("mallory");
    assert_eq!(other.register_admin(&mut mallory).await.status(), StatusCode::CREATED);
    let start = server.login_start(&alice).await;
    let credential = Server::assert_credential(&mut mallory, &server.origin, &start);
    let r = server.login_finish(&mut mallory, &start["ceremony"], credential).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "unknown credential");
    assert!(
        problem(r).await["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not registered")
    );
}

async fn start_other() -> Server {
    start(config()).await
}

#[tokio::test]
async fn a_signature_counter_that_goes_back_is_refused() {
    let server = start(config()).await;
    let mut alice = Person::new("alice");
    assert_eq!(server.register_admin(&mut alice).await.status(), StatusCode::CREATED);
    assert_eq!(server.login(&mut alice).await.status(), StatusCode::OK);
    // Pretend the stored counter is ahead of the authenticator (a cloned key).
    let db = server.db();
    let stored: String = db
        .query_row("SELECT passkey FROM passkeys", [], |r| r.get(0))
        .expect("stored passkey");
    let mut passkey: Value = serde_json::from_str(&stored).expect("passkey JSON");
    let counter = passkey["cred"]["counter"].as_u64().expect("counter");
    assert!(counter >= 1, "logins advance the stored counter");
    passkey["cred"]["counter"] = json!(counter + 100);
    db.execute("UPDATE passkeys SET passkey = ?1", [passkey.to_string()])
        .expect("move the counter");
    let r = server.login(&mut alice).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "counter regression");
}

#[tokio::test]
async fn cookie_writes_need_same_origin_and_credentials_never_come_from_a_query() {
    let server = start(config()).await;
    let mut alice = Person::new("alice");
    assert_eq!(server.register_admin(&mut alice).await.status(), StatusCode::CREATED);
    let cookie = alice.cookie.clone().expect("cookie");
    let body = json!({ "type": "StartDeployment", "aggregate_id": "d1", "data": { "service": "api" } });

    // No Sec-Fetch-Site, no Origin: refused.
    let r = server
        .client
        .post(server.url("/api/commands"))
        .header("cookie", &cookie)
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "missing CSRF header");
    assert!(
        problem(r).await["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("cross-site")
    );
    // A cross-site request.
    let r = server
        .client
        .post(server.url("/api/commands"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .header("origin", "https://evil.example")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The configured origin is enough.
    let r = server
        .client
        .post(server.url("/api/commands"))
        .header("cookie", &cookie)
        .header("origin", &server.origin)
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::OK);
    // Reads need no CSRF header.
    assert_eq!(server.me(&alice).await.status(), StatusCode::OK);

    // A session id or token in the query string is refused, even a valid one.
    let secret = cookie.trim_start_matches("herald_session=");
    for query in [
        format!("session={secret}"),
        format!("token={secret}"),
        "access_token=x".to_owned(),
    ] {
        let r = server
            .client
            .get(server.url(&format!("/api/events/live?{query}")))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
        assert!(
            problem(r).await["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("query string")
        );
    }
}

#[tokio::test]
async fn roles_are_enforced_and_changed_by_admins_only() {
    let server = start(config()).await;
    let mut admin = Person::new("alice");
    assert_eq!(server.register_admin(&mut admin).await.status(), StatusCode::CREATED);
    let code = server.invite(&admin, "viewer").await;
    let mut viewer = Person::new("victor");
    assert_eq!(
        server.register(&mut viewer, Some(&code)).await.status(),
        StatusCode::CREATED
    );

    // A viewer reads and subscribes but sends no command.
    let r = server
        .command(&viewer, "StartDeployment", "d1", json!({ "service": "x" }))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "viewer sending a command");
    assert_eq!(
        server
            .send_as(reqwest::Method::GET, "/api/events", &viewer)
            .await
            .status(),
        StatusCode::OK
    );
    for (method, path) in [
        (reqwest::Method::GET, "/api/users"),
        (reqwest::Method::POST, "/api/invites"),
        (reqwest::Method::GET, "/api/tokens"),
    ] {
        let r = server
            .as_browser(method.clone(), path, &viewer)
            .json(&json!({ "role": "admin" }))
            .send()
            .await
            .expect("admin endpoint");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {path}");
    }

    // The admin makes them operator; it takes effect on the next request.
    let users: Value = server.users(&admin).await;
    let id = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "victor")
        .expect("victor")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = server
        .as_browser(reqwest::Method::PUT, &format!("/api/users/{id}/roles"), &admin)
        .json(&json!({ "roles": ["operator"] }))
        .send()
        .await
        .expect("PUT roles");
    assert_eq!(r.status(), StatusCode::OK);
    let r = server
        .command(&viewer, "StartDeployment", "d1", json!({ "service": "x" }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // The last admin cannot be demoted.
    let me: Value = server.me(&admin).await.json().await.expect("me");
    let r = server
        .as_browser(
            reqwest::Method::PUT,
            &format!("/api/users/{}/roles", me["user"]["id"].as_str().expect("id")),
            &admin,
        )
        .json(&json!({ "roles": ["viewer"] }))
        .send()
        .await
        .expect("PUT roles");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let changed = server
        .events()
        .await
        .into_iter()
        .find(|e| e["type"] == "RolesChanged")
        .expect("RolesChanged");
    assert_eq!(changed["actor"]["name"], "alice");
    assert_eq!(changed["data"]["roles"], json!(["operator"]));
    assert_eq!(changed["data"]["previous"], json!(["viewer"]));
}

#[tokio::test]
async fn a_risky_command_needs_a_recent_passkey_verification() {
    let server = start(config()).await;
    let mut alice = Person::new("alice");
    assert_eq!(server.register_admin(&mut alice).await.status(), StatusCode::CREATED);
    // A deployment started while the verification is fresh, to report on later.
    let r = server
        .command(&alice, "StartDeployment", "d0", json!({ "service": "api" }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // The last verification is 16 minutes old.
    let aged = server
        .db()
        .execute("UPDATE sessions SET verified_at = verified_at - 16 * 60 * 1000", [])
        .expect("age the verification");
    assert_eq!(aged, 1);
    let r = server
        .command(&alice, "StartDeployment", "d1", json!({ "service": "api" }))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "stale step-up");
    let body = problem(r).await;
    assert_eq!(body["reauth_required"], true, "{body}");
    // Commands the domain does not mark risky go on (a known command, answered 200).
    let r = server
        .command(&alice, "ReportDeploymentProgress", "d0", json!({ "percent": 40 }))
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap_or_default());

    // Verify again with the passkey: a new session (new id, new cookie), fresh.
    let cookie = alice.cookie.clone();
    let old_id = server.me(&alice).await.json::<Value>().await.expect("me")["session"]["id"].clone();
    let r = server.login(&mut alice).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_ne!(alice.cookie, cookie, "a step-up issues a new session id");
    let me: Value = server.me(&alice).await.json().await.expect("me");
    assert_ne!(me["session"]["id"], old_id);
    let stale = Person {
        cookie: cookie.clone(),
        ..Person::new("alice")
    };
    assert_eq!(
        server.me(&stale).await.status(),
        StatusCode::UNAUTHORIZED,
        "the session a step-up replaced is over"
    );
    let r = server
        .command(&alice, "StartDeployment", "d1", json!({ "service": "api" }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let step_up = server
        .events()
        .await
        .into_iter()
        .rfind(|e| e["type"] == "LoginSucceeded")
        .expect("LoginSucceeded");
    assert_eq!(step_up["data"]["step_up"], true);
    assert_eq!(step_up["data"]["replaces_session_id"], old_id);
}

#[tokio::test]
async fn every_risky_admin_action_needs_a_recent_passkey_verification() {
    let server = start(config()).await;
    let mut admin = Person::new("alice");
    assert_eq!(server.register_admin(&mut admin).await.status(), StatusCode::CREATED);
    let code = server.invite(&admin, "viewer").await;
    let mut bob = Person::new("bob");
    assert_eq!(
        server.register(&mut bob, Some(&code)).await.status(),
        StatusCode::CREATED
    );
    let bob_id = server.me(&bob).await.json::<Value>().await.expect("me")["user"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let bob_session = server.me(&bob).await.json::<Value>().await.expect("me")["session"]["id"]
        .as_str()
        .expect("session id")
        .to_owned();
    let aged = server
        .db()
        .execute("UPDATE sessions SET verified_at = verified_at - 16 * 60 * 1000", [])
        .expect("age the verifications");
    assert_eq!(aged, 2);
    let before = server.events().await.len();

    let risky: [(reqwest::Method, String, Value); 7] = [
        (
            reqwest::Method::POST,
            "/api/tokens".into(),
            json!({ "name": "ci", "role": "admin" }),
        ),
        (reqwest::Method::POST, "/api/invites".into(), json!({ "role": "admin" })),
        (
            reqwest::Method::PUT,
            format!("/api/users/{bob_id}/roles"),
            json!({ "roles": ["admin"] }),
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/sessions/{bob_session}"),
            Value::Null,
        ),
        (
            reqwest::Method::POST,
            format!("/api/users/{bob_id}/disable"),
            Value::Null,
        ),
        (
            reqwest::Method::POST,
            format!("/api/users/{bob_id}/enable"),
            Value::Null,
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/users/{bob_id}/passkeys/0123abcd"),
            Value::Null,
        ),
    ];
    for (method, path, body) in &risky {
        let mut rb = server.as_browser(method.clone(), path, &admin);
        if !body.is_null() {
            rb = rb.json(body);
        }
        let r = rb.send().await.expect("request");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {path} needs a step-up");
        assert_eq!(problem(r).await["reauth_required"], true, "{method} {path}");
    }
    assert_eq!(server.events().await.len(), before, "nothing was done or recorded");
    assert_eq!(server.me(&bob).await.status(), StatusCode::OK, "bob's session lives on");

    // Less risky: a viewer invite, and ending one's own session, need none.
    let r = server
        .as_browser(reqwest::Method::POST, "/api/invites", &admin)
        .json(&json!({ "role": "viewer" }))
        .send()
        .await
        .expect("invite");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = server
        .send_as(reqwest::Method::DELETE, &format!("/api/sessions/{bob_session}"), &bob)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // After a step-up every one of them works (bob ended his own session
    // above): mint, invite, roles, disable, enable.
    assert_eq!(server.login(&mut admin).await.status(), StatusCode::OK);
    for (method, path, body) in risky.iter().take(3).chain(risky.iter().skip(4).take(2)) {
        let mut rb = server.as_browser(method.clone(), path, &admin);
        if !body.is_null() {
            rb = rb.json(body);
        }
        let r = rb.send().await.expect("request");
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
    }
    // A token has no step-up (machines): it may do what its role allows.
    let minted = mint(&server.state, "test", "admin-bot", Role::Admin).await;
    let r = server
        .client
        .post(server.url("/api/tokens"))
        .bearer_auth(&minted.secret)
        .json(&json!({ "name": "ci-2", "role": "viewer" }))
        .send()
        .await
        .expect("token mint");
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn an_admin_revoking_a_session_ends_it_and_its_stream() {
    let server = start(config()).await;
    let mut admin = Person::new("alice");
    assert_eq!(server.register_admin(&mut admin).await.status(), StatusCode::CREATED);
    let code = server.invite(&admin, "operator").await;
    let mut bob = Person::new("bob");
    assert_eq!(
        server.register(&mut bob, Some(&code)).await.status(),
        StatusCode::CREATED
    );
    let mut stream = server.send_as(reqwest::Method::GET, "/api/events/live", &bob).await;
    assert_eq!(stream.status(), StatusCode::OK);

    let sessions: Value = server
        .send_as(reqwest::Method::GET, "/api/sessions", &admin)
        .await
        .json()
        .await
        .expect("sessions JSON");
    let list = sessions["sessions"].as_array().expect("sessions");
    assert_eq!(list.len(), 2);
    let bobs = list.iter().find(|s| s["username"] == "bob").expect("bob's session");
    // Bob sees only his own.
    let own: Value = server
        .send_as(reqwest::Method::GET, "/api/sessions", &bob)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(own["sessions"].as_array().map(Vec::len), Some(1));
    assert_eq!(own["sessions"][0]["current"], true);

    let r = server
        .send_as(
            reqwest::Method::DELETE,
            &format!("/api/sessions/{}", bobs["id"].as_str().expect("id")),
            &admin,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let mut seen = String::new();
    read_to_end(&mut stream, &mut seen).await;
    assert_eq!(server.me(&bob).await.status(), StatusCode::UNAUTHORIZED);
    let revoked = server
        .events()
        .await
        .into_iter()
        .find(|e| e["type"] == "SessionRevoked")
        .expect("SessionRevoked");
    assert_eq!(revoked["actor"]["name"], "alice");
}

#[tokio::test]
async fn sessions_survive_a_restart_and_expire_when_idle() {
    let mut server = start(config()).await;
    let mut alice = Person::new("alice");
    assert_eq!(server.register_admin(&mut alice).await.status(), StatusCode::CREATED);
    // Restart on the same data directory.
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().expect("temp"));
    drop(server);
    let server = serve(dir, config()).await;
    assert_eq!(server.me(&alice).await.status(), StatusCode::OK, "the session survived");
    // Idle for 13 hours: gone.
    server
        .db()
        .execute("UPDATE sessions SET last_seen_at = last_seen_at - 13 * 3600 * 1000", [])
        .expect("age the session");
    assert_eq!(server.me(&alice).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_auth_endpoints_are_rate_limited_per_address() {
    let server = start(ServerConfig {
        auth_rate: 1,
        ..config()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = server
            .post_json("/api/auth/login/start", json!({ "username": "nobody" }), None)
            .await;
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    assert!(statuses.len() > 1, "a burst is allowed first");
}

#[tokio::test]
async fn bad_ceremony_input_gets_a_precise_400() {
    let server = start(config()).await;
    for (path, body, field) in [
        ("/api/auth/register/start", json!({}), "username"),
        (
            "/api/auth/register/start",
            json!({ "username": "Not Valid" }),
            "username",
        ),
        (
            "/api/auth/register/start",
            json!({ "username": "ok", "extra": 1 }),
            "extra",
        ),
        ("/api/auth/register/finish", json!({ "ceremony": "x" }), "credential"),
        (
            "/api/auth/register/finish",
            json!({ "ceremony": "x", "credential": { "id": 5 } }),
            "credential",
        ),
        (
            "/api/auth/login/finish",
            json!({ "ceremony": "x", "credential": "nope" }),
            "credential",
        ),
        ("/api/auth/login/start", json!({ "username": 7 }), "username"),
    ] {
        let r = server.post_json(path, body.clone(), None).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        let p = problem(r).await;
        assert!(
            p["detail"].as_str().unwrap_or_default().contains(field),
            "{path} {body}: {p}"
        );
    }
    let _ = Role::Viewer;
}

#[tokio::test]
async fn every_registration_needs_an_invite_and_the_first_admin_uses_the_setup_code() {
    let server = start(config()).await;
    let setup = |r: Value| r["setup_required"].clone();
    let status: Value = server
        .client
        .get(server.url("/api/auth/setup"))
        .send()
        .await
        .expect("setup status")
        .json()
        .await
        .expect("JSON");
    assert_eq!(setup(status), true);

    // An empty store hands out nothing: whoever reaches the port first does
    // not become admin.
    let eve = Person::new("eve");
    let r = server.register_start(&eve, None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        problem(r).await["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("invite")
    );
    let r = server.register_start(&eve, Some("hinv_guessed")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // An admin token existing changes nothing either.
    mint(&server.state, "test", "root-bot", Role::Admin).await;
    assert_eq!(
        server.register_start(&eve, None).await.status(),
        StatusCode::BAD_REQUEST
    );

    // A second setup code (herald restarted) retires the first.
    let first = server.setup_code().await;
    let second = server.setup_code().await;
    assert_eq!(
        server.register_start(&eve, Some(&first)).await.status(),
        StatusCode::FORBIDDEN,
        "a superseded setup code is refused"
    );
    let mut alice = Person::new("alice");
    let r = server.register(&mut alice, Some(&second)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.expect("user");
    assert_eq!(body["user"]["roles"], json!(["admin"]));
    // The code works once; no more setup once an admin exists.
    assert_eq!(
        server.register_start(&eve, Some(&second)).await.status(),
        StatusCode::FORBIDDEN
    );
    let status: Value = server
        .client
        .get(server.url("/api/auth/setup"))
        .send()
        .await
        .expect("setup status")
        .json()
        .await
        .expect("JSON");
    assert_eq!(setup(status), false);
    assert!(
        herald_server::passkeys::issue_setup_code(&*server.state.store, &*server.state.accounts)
            .await
            .expect("setup")
            .is_none(),
        "no setup code once an admin exists"
    );
    // Issuing setup codes adds nothing to the log (restarts would grow it); the
    // registration that used one names it.
    let events = server.events().await;
    assert!(events.iter().all(|e| e["type"] != "InviteCreated"));
    let registered = events
        .iter()
        .find(|e| e["type"] == "UserRegistered")
        .expect("UserRegistered");
    assert!(
        registered["data"]["invite_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("setup-")),
        "{registered}"
    );
}

#[tokio::test]
async fn a_request_for_a_host_that_is_not_heralds_gets_421() {
    let server = start(ServerConfig {
        allowed_hosts: vec!["herald.internal".into()],
        ..config()
    })
    .await;
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let get = |host: String| {
        let client = server.client.clone();
        let url = server.url("/api/auth/setup");
        async move { client.get(url).header("host", host).send().await.expect("GET") }
    };
    // A DNS-rebinding page: the attacker's name, herald's address.
    let r = get(format!("rebind.evil.example:{port}")).await;
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    assert!(
        problem(r).await["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("--allowed-host")
    );
    // Also for live streams (on a fresh connection herald writes them itself,
    // without the router: a client that keeps no connection) and the console.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    for path in ["/api/events/live", "/", "/api/me"] {
        let r = fresh
            .get(server.url(path))
            .header("host", "rebind.evil.example")
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST, "{path}");
    }
    for ok in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "herald.internal".to_owned(),
        format!("herald.internal:{port}"),
    ] {
        assert_eq!(get(ok.clone()).await.status(), StatusCode::OK, "{ok}");
    }
}

#[tokio::test]
async fn login_start_tells_nothing_about_which_usernames_exist() {
    let server = start(config()).await;
    let mut alice = Person::new("alice");
    assert_eq!(server.register_admin(&mut alice).await.status(), StatusCode::CREATED);
    let shape = |v: &Value| {
        let mut keys: Vec<String> = v["options"]["publicKey"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        (keys, v["options"]["publicKey"]["allowCredentials"].clone())
    };
    let known = server.login_start(&alice).await;
    let unknown = server.login_start(&Person::new("nobody-here")).await;
    let anonymous: Value = server
        .post_json("/api/auth/login/start", json!({}), None)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(shape(&known), shape(&unknown));
    assert_eq!(shape(&known), shape(&anonymous));
    assert!(
        known["options"]["publicKey"]["allowCredentials"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
}

#[tokio::test]
async fn an_https_origin_uses_a_host_prefixed_cookie() {
    // On an https origin the cookie is `__Host-` prefixed (Secure, Path=/, no Domain).
    let dir = tempfile::tempdir().expect("dir");
    let state = AppState::open_sqlite(
        dir.path(),
        ServerConfig {
            public_origin: "https://localhost".into(),
            ..config()
        },
    )
    .expect("state");
    let (session, secret) = herald_server::sessions::new_session(
        "u1",
        herald_server::sessions::now_millis(),
        60_000,
        &axum::http::HeaderMap::new(),
    );
    let cookie = herald_server::sessions::set_cookie(&state, &secret, &session);
    let cookie = cookie.to_str().expect("ascii");
    assert!(cookie.starts_with("__Host-herald_session="), "{cookie}");
    for attr in ["Secure", "Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    assert!(!cookie.contains("Domain"));
}

#[tokio::test]
async fn a_setup_code_is_void_once_an_admin_registered_another_way() {
    let server = start(config()).await;
    let setup = server.setup_code().await;
    let invite = herald_server::passkeys::create_invite_in(
        &*server.state.store,
        &*server.state.accounts,
        &herald_core::envelope::Actor::system("cli"),
        Role::Admin,
    )
    .await
    .expect("admin invite");
    let mut bob = Person::new("bob");
    assert_eq!(
        server.register(&mut bob, Some(&invite.code)).await.status(),
        StatusCode::CREATED
    );
    let r = server.register_start(&Person::new("eve"), Some(&setup)).await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "herald has an admin: the setup code is void"
    );
    // And it is no open invite any more (the admin's registration expired it).
    let invites = server.state.accounts.list_invites().await.expect("invites");
    let setup_invite = invites
        .iter()
        .find(|i| i.id.starts_with("setup-"))
        .expect("the setup invite");
    assert!(setup_invite.used_by.is_none());
    assert!(setup_invite.expires_at <= herald_server::sessions::now_millis());
}
