//! Passkeys, sessions, roles and invitations (API.md §2, §7) over a real socket,
//! with `webauthn-authenticator-rs`'s software passkey playing the browser's
//! authenticator. The cookie jar is kept by hand so every test says exactly
//! which cookie and which CSRF headers a request carries.

use std::net::SocketAddr;
use std::time::Duration;

use herald_core::auth::Role;
use herald_server::{AppState, ServerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

const WAIT: Duration = Duration::from_secs(30);

struct Server {
    base: String,
    origin: String,
    state: AppState,
    client: reqwest::Client,
    dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        command_rate: 0,
        auth_rate: 0,
        keepalive: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

async fn start(mut config: ServerConfig) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    // Browsers reach it as localhost (the rp id); the socket is on 127.0.0.1.
    let origin = format!("http://localhost:{}", addr.port());
    config.public_origin = origin.clone();
    let state = AppState::open_sqlite(dir.path(), config).expect("open state");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(herald_server::run(state.clone(), listener, async move {
        let _ = rx.await;
    }));
    Server {
        base: format!("http://127.0.0.1:{}", addr.port()),
        origin,
        state,
        client: reqwest::Client::new(),
        dir,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

/// A person with a browser: an authenticator and a cookie.
struct Person {
    username: String,
    key: SoftPasskey,
    cookie: Option<String>,
}

impl Person {
    fn new(username: &str) -> Self {
        Person {
            username: username.into(),
            // `true`: the authenticator reports user verification (PIN/biometric).
            key: SoftPasskey::new(true),
            cookie: None,
        }
    }
}

fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("herald_session="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request as the console sends it: the cookie, and the browser's
    /// `Sec-Fetch-Site: same-origin` on writes.
    fn as_browser(&self, method: reqwest::Method, path: &str, who: &Person) -> reqwest::RequestBuilder {
        let mut rb = self.client.request(method.clone(), self.url(path));
        if let Some(c) = &who.cookie {
            rb = rb.header("cookie", c);
        }
        if method != reqwest::Method::GET {
            rb = rb.header("sec-fetch-site", "same-origin");
        }
        rb
    }

    async fn post_json(&self, path: &str, body: Value, who: Option<&Person>) -> reqwest::Response {
        let mut rb = self
            .client
            .post(self.url(path))
            .json(&body)
            .header("origin", &self.origin);
        if let Some(c) = who.and_then(|p| p.cookie.as_ref()) {
            rb = rb.header("cookie", c);
        }
        rb.send().await.expect("POST")
    }

    async fn register_start(&self, who: &Person, invite: Option<&str>) -> reqwest::Response {
        let mut body = json!({ "username": who.username, "display_name": format!("{} (test)", who.username) });
        if let Some(code) = invite {
            body["invite"] = json!(code);
        }
        self.post_json("/api/auth/register/start", body, None).await
    }

    /// The authenticator's answer to a registration challenge, made at `origin`.
    fn create_credential(who: &mut Person, origin: &str, start: &Value) -> Value {
        let options: CreationChallengeResponse =
            serde_json::from_value(start["options"].clone()).expect("creation options");
        let credential = who
            .key
            .do_registration(Url::parse(origin).expect("origin"), options)
            .expect("the authenticator registers");
        serde_json::to_value(credential).expect("credential JSON")
    }

    /// Registers `who` (optionally with an invite); returns the finish response.
    async fn register(&self, who: &mut Person, invite: Option<&str>) -> reqwest::Response {
        let r = self.register_start(who, invite).await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "register/start: {}",
            r.text().await.unwrap_or_default()
        );
        let start: Value = r.json().await.expect("start JSON");
        let credential = Self::create_credential(who, &self.origin, &start);
        let r = self
            .post_json(
                "/api/auth/register/finish",
                json!({ "ceremony": start["ceremony"], "credential": credential }),
                None,
            )
            .await;
        if let Some(c) = session_cookie(&r) {
            who.cookie = Some(c);
        }
        r
    }

    async fn login_start(&self, who: &Person) -> Value {
        let r = self
            .post_json("/api/auth/login/start", json!({ "username": who.username }), None)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("login start JSON")
    }

    fn assert_credential(who: &mut Person, origin: &str, start: &Value) -> Value {
        let options: RequestChallengeResponse =
            serde_json::from_value(start["options"].clone()).expect("request options");
        let credential = who
            .key
            .do_authentication(Url::parse(origin).expect("origin"), options)
            .expect("the authenticator signs");
        serde_json::to_value(credential).expect("credential JSON")
    }

    async fn login_finish(&self, who: &mut Person, ceremony: &Value, credential: Value) -> reqwest::Response {
        let r = self
            .post_json(
                "/api/auth/login/finish",
                json!({ "ceremony": ceremony, "credential": credential }),
                Some(who),
            )
            .await;
        if let Some(c) = session_cookie(&r) {
            who.cookie = Some(c);
        }
        r
    }

    async fn login(&self, who: &mut Person) -> reqwest::Response {
        let start = self.login_start(who).await;
        let credential = Self::assert_credential(who, &self.origin, &start);
        self.login_finish(who, &start["ceremony"], credential).await
    }

    async fn me(&self, who: &Person) -> reqwest::Response {
        self.as_browser(reqwest::Method::GET, "/api/me", who)
            .send()
            .await
            .expect("GET /api/me")
    }

    async fn command(&self, who: &Person, command_type: &str, id: &str, data: Value) -> reqwest::Response {
        self.as_browser(reqwest::Method::POST, "/api/commands", who)
            .json(&json!({ "type": command_type, "aggregate_id": id, "data": data }))
            .send()
            .await
            .expect("POST /api/commands")
    }

    async fn invite(&self, admin: &Person, role: &str) -> String {
        let r = self
            .as_browser(reqwest::Method::POST, "/api/invites", admin)
            .json(&json!({ "role": role }))
            .send()
            .await
            .expect("POST /api/invites");
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.expect("invite JSON");
        assert_eq!(body["role"], role);
        body["code"].as_str().expect("code").to_owned()
    }

    async fn events(&self) -> Vec<Value> {
        let page = self
            .state
            .store
            .read_all(0, &herald_core::Filter::default(), 1000)
            .await
            .expect("read the log");
        page.events
            .iter()
            .map(|e| serde_json::from_slice(e.json()).expect("envelope"))
            .collect()
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("herald.db")).expect("open herald.db")
    }
}

async fn problem(r: reqwest::Response) -> Value {
    assert_eq!(
        r.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    r.json().await.expect("problem JSON")
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

/// Reads until the stream ends; panics if it stays open past the bound.
async fn read_to_end(stream: &mut reqwest::Response, seen: &mut String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Err(_) => panic!("the stream was still open after {WAIT:?}"),
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) | Ok(Err(_)) => return,
        }
    }
}

#[tokio::test]
async fn the_first_admin_invites_an_operator_who_deploys_live_until_logging_out() {
    let server = start(config()).await;
    let mut admin = Person::new("alice");
    let r = server.register(&mut admin, None).await;
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

    // After the first account, registering needs an invite.
    let mut bob = Person::new("bob");
    let r = server.register_start(&bob, None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
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
    let mut stream = server
        .as_browser(reqwest::Method::GET, "/api/events/live", &bob)
        .send()
        .await
        .expect("open the stream");
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
    let r = server
        .as_browser(reqwest::Method::POST, "/api/auth/logout", &bob)
        .send()
        .await
        .expect("logout");
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
    assert_eq!(server.register(&mut alice, None).await.status(), StatusCode::CREATED);

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
    let r = server
        .post_json(
            "/api/auth/register/finish",
            json!({ "ceremony": start["ceremony"], "credential": credential }),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Failed logins are in the log: both named no account, so one event for
    // the window (the other is counted; see tests/access.rs).
    let failures = server
        .events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "LoginFailed")
        .count();
    assert_eq!(failures, 1);
}

#[tokio::test]
async fn a_passkey_used_at_another_origin_or_unknown_here_is_refused() {
    let server = start(config()).await;
    let mut alice = Person::new("alice");

    // Registration made at another origin (a phishing site on another port).
    let r = server.register_start(&alice, None).await;
    let start: Value = r.json().await.expect("start");
    let elsewhere = "http://localhost:1";
    let credential = Server::create_credential(&mut alice, elsewhere, &start);
    let r = server
        .post_json(
            "/api/auth/register/finish",
            json!({ "ceremony": start["ceremony"], "credential": credential }),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "wrong origin at registration");

    let mut alice = Person::new("alice");
    assert_eq!(server.register(&mut alice, None).await.status(), StatusCode::CREATED);
    alice.cookie = None;
    let start = server.login_start(&alice).await;
    let credential = Server::assert_credential(&mut alice, elsewhere, &start);
    let r = server.login_finish(&mut alice, &start["ceremony"], credential).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "wrong origin at login");
    assert!(alice.cookie.is_none());

    // A passkey registered at another herald: the options are rewritten to
    // allow it, as an attacker could, and it signs; herald does not know it.
    let other = start_other().await;
    let mut mallory = Person::new("mallory");
    assert_eq!(other.register(&mut mallory, None).await.status(), StatusCode::CREATED);
    let foreign = other.login_start(&mallory).await;
    let mut start = server.login_start(&alice).await;
    start["options"]["publicKey"]["allowCredentials"] = foreign["options"]["publicKey"]["allowCredentials"].clone();
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
    assert_eq!(server.register(&mut alice, None).await.status(), StatusCode::CREATED);
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
    assert_eq!(server.register(&mut alice, None).await.status(), StatusCode::CREATED);
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
    assert_eq!(server.register(&mut admin, None).await.status(), StatusCode::CREATED);
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
            .as_browser(reqwest::Method::GET, "/api/events", &viewer)
            .send()
            .await
            .expect("GET")
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
    let users: Value = server
        .as_browser(reqwest::Method::GET, "/api/users", &admin)
        .send()
        .await
        .expect("users")
        .json()
        .await
        .expect("users JSON");
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
    assert_eq!(server.register(&mut alice, None).await.status(), StatusCode::CREATED);
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
    // Less risky commands go on.
    let r = server
        .command(&alice, "CreatePost", "p1", json!({ "title": "t", "content": "c" }))
        .await;
    assert_ne!(r.status(), StatusCode::FORBIDDEN);

    // Verify again with the passkey: the same session, now fresh.
    let cookie = alice.cookie.clone();
    let r = server.login(&mut alice).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(alice.cookie, cookie, "a step-up keeps the session");
    let r = server
        .command(&alice, "StartDeployment", "d1", json!({ "service": "api" }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let step_up = server
        .events()
        .await
        .into_iter()
        .find(|e| e["type"] == "LoginSucceeded")
        .expect("LoginSucceeded");
    assert_eq!(step_up["data"]["step_up"], true);
}

#[tokio::test]
async fn an_admin_revoking_a_session_ends_it_and_its_stream() {
    let server = start(config()).await;
    let mut admin = Person::new("alice");
    assert_eq!(server.register(&mut admin, None).await.status(), StatusCode::CREATED);
    let code = server.invite(&admin, "operator").await;
    let mut bob = Person::new("bob");
    assert_eq!(
        server.register(&mut bob, Some(&code)).await.status(),
        StatusCode::CREATED
    );
    let mut stream = server
        .as_browser(reqwest::Method::GET, "/api/events/live", &bob)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), StatusCode::OK);

    let sessions: Value = server
        .as_browser(reqwest::Method::GET, "/api/sessions", &admin)
        .send()
        .await
        .expect("sessions")
        .json()
        .await
        .expect("sessions JSON");
    let list = sessions["sessions"].as_array().expect("sessions");
    assert_eq!(list.len(), 2);
    let bobs = list.iter().find(|s| s["username"] == "bob").expect("bob's session");
    // Bob sees only his own.
    let own: Value = server
        .as_browser(reqwest::Method::GET, "/api/sessions", &bob)
        .send()
        .await
        .expect("sessions")
        .json()
        .await
        .expect("JSON");
    assert_eq!(own["sessions"].as_array().map(Vec::len), Some(1));
    assert_eq!(own["sessions"][0]["current"], true);

    let r = server
        .as_browser(
            reqwest::Method::DELETE,
            &format!("/api/sessions/{}", bobs["id"].as_str().expect("id")),
            &admin,
        )
        .send()
        .await
        .expect("DELETE session");
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
    assert_eq!(server.register(&mut alice, None).await.status(), StatusCode::CREATED);
    // Restart on the same data directory.
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().expect("temp"));
    drop(server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut cfg = config();
    cfg.public_origin = format!("http://localhost:{port}");
    let state = AppState::open_sqlite(dir.path(), cfg).expect("reopen");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(herald_server::run(state.clone(), listener, async move {
        let _ = rx.await;
    }));
    let server = Server {
        base: format!("http://127.0.0.1:{port}"),
        origin: format!("http://localhost:{port}"),
        state,
        client: reqwest::Client::new(),
        dir,
        shutdown: Some(tx),
        handle: Some(handle),
    };
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
