//! The harness the herald-server test binaries share: `herald_server::run` in
//! a task ([`Running`]), tokens minted in process ([`mint`]), and (for
//! tests/passkeys.rs and tests/access.rs) herald on a real socket with people
//! with `webauthn-authenticator-rs`'s software passkey as
//! their authenticator and a cookie jar kept by hand, so every test says
//! exactly which cookie and which CSRF headers a request carries.
//!
//! A module of each test binary (`mod support;`), not a test binary itself;
//! each uses only part of it.
#![allow(dead_code)]

pub mod brokers;

use std::net::SocketAddr;
use std::time::Duration;

use herald_core::auth::Role;
use herald_core::envelope::Actor;
use herald_server::auth::MintedToken;
use herald_server::{AppState, ServerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

pub const WAIT: Duration = Duration::from_secs(30);

/// `herald_server::run` serving a state on a listener, in a task: shut down
/// (and the task aborted) when dropped, or by hand through its fields.
pub struct Running {
    pub shutdown: Option<oneshot::Sender<()>>,
    pub handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    pub fn spawn(state: AppState, listener: tokio::net::TcpListener) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(herald_server::run(state, listener, async move {
            let _ = rx.await;
        }));
        Running {
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping the sender resolves the shutdown future too.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// A session made directly in `state`'s account store for `user_id`, last
/// seen `idle_for` ago (verified at its creation: fresh for a step-up);
/// returns the cookie.
pub async fn session_in(state: &AppState, user_id: &str, idle_for: Duration) -> String {
    let now = herald_server::sessions::now_millis();
    let (mut session, secret) =
        herald_server::sessions::new_session(user_id, now, 24 * 3600 * 1000, &Default::default());
    session.last_seen_at = now - i64::try_from(idle_for.as_millis()).expect("ms");
    state
        .accounts
        .insert_session(&session, &herald_server::auth::hash_secret(&secret))
        .await
        .expect("insert session");
    format!("herald_session={secret}")
}

/// A user made directly in `state`'s account store (through an invite, as
/// herald does), with a fresh session (their cookie); no passkey ceremony.
pub async fn person_in(state: &AppState, username: &str, role: Role) -> Person {
    let accounts = &state.accounts;
    let id = format!(
        "{:0>32}",
        username.bytes().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let now = herald_server::sessions::now_millis();
    let code_hash = herald_server::auth::hash_secret(&format!("code-{username}"));
    accounts
        .insert_invite(
            &herald_core::accounts::InviteRecord {
                id: format!("inv-{username}"),
                role,
                created_at: "2026-12-01T00:00:00.000Z".into(),
                created_by: Actor::system("test"),
                expires_at: now + 60_000,
                used_by: None,
            },
            &code_hash,
        )
        .await
        .expect("invite");
    let user = herald_core::accounts::User {
        id: id.clone(),
        username: username.into(),
        display_name: username.into(),
        roles: vec![role],
        created_at: "2026-12-01T00:00:00.000Z".into(),
        disabled_at: None,
    };
    let passkey = herald_core::accounts::StoredPasskey {
        credential_id: format!("cred-{username}"),
        user_id: id.clone(),
        passkey: "{}".into(),
        created_at: "2026-12-01T00:00:00.000Z".into(),
    };
    accounts
        .insert_user(&user, &passkey, Some(&code_hash), now)
        .await
        .expect("io")
        .expect("inserted");
    let mut person = Person::new(username);
    person.id = id.clone();
    person.cookie = Some(session_in(state, &id, Duration::ZERO).await);
    person
}

/// A token minted in process, by the system actor `by`.
pub async fn mint(state: &AppState, by: &str, name: &str, role: Role) -> MintedToken {
    herald_server::auth::create_token(&*state.store, &*state.credentials, &Actor::system(by), name, role)
        .await
        .expect("create token")
}

pub struct Server {
    pub base: String,
    pub origin: String,
    pub state: AppState,
    pub client: reqwest::Client,
    pub dir: TempDir,
    pub running: Running,
}

pub fn config() -> ServerConfig {
    ServerConfig {
        command_rate: 0,
        auth_rate: 0,
        keepalive: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

pub async fn start(config: ServerConfig) -> Server {
    serve(tempfile::tempdir().expect("temp dir"), config).await
}

/// herald on the data directory `dir` (a restart, when it has been used).
pub async fn serve(dir: TempDir, mut config: ServerConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    // Browsers reach it as localhost (the rp id); the socket is on 127.0.0.1.
    let origin = format!("http://localhost:{}", addr.port());
    config.public_origin = origin.clone();
    let state = AppState::open_sqlite(dir.path(), config).expect("open state");
    let running = Running::spawn(state.clone(), listener);
    Server {
        base: format!("http://127.0.0.1:{}", addr.port()),
        origin,
        state,
        client: reqwest::Client::new(),
        dir,
        running,
    }
}

/// A person with a browser: an authenticator (when they registered with a
/// passkey) and a cookie.
pub struct Person {
    pub username: String,
    /// The account's id, once known (`register_ok`, or made in the store).
    pub id: String,
    pub key: SoftPasskey,
    pub cookie: Option<String>,
    /// What a discoverable (resident) passkey remembers: its credential id and
    /// the user handle it was made for. herald's login challenges list no
    /// credentials; the software authenticator needs to be told which to use,
    /// and does not return the user handle itself, so the test plays that part.
    pub credential_ids: Vec<Value>,
    pub user_handle: Option<Value>,
}

impl Person {
    pub fn new(username: &str) -> Self {
        Person {
            username: username.into(),
            id: String::new(),
            // `true`: the authenticator reports user verification (PIN/biometric).
            key: SoftPasskey::new(true),
            cookie: None,
            credential_ids: Vec::new(),
            user_handle: None,
        }
    }
}

pub fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("herald_session="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

pub async fn problem(r: reqwest::Response) -> Value {
    assert_eq!(
        r.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    r.json().await.expect("problem JSON")
}

/// Reads until the stream ends; panics if it stays open past the bound.
pub async fn read_to_end(stream: &mut reqwest::Response, seen: &mut String) {
    read_to_end_within(stream, seen, WAIT).await;
}

/// Reads until the stream ends; panics if it stays open longer than `bound`.
pub async fn read_to_end_within(stream: &mut reqwest::Response, seen: &mut String, bound: Duration) {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Err(_) => panic!("the stream was still open after {bound:?}"),
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) | Ok(Err(_)) => return,
        }
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request as the console sends it: the cookie, and the browser's
    /// `Sec-Fetch-Site: same-origin` on writes.
    pub fn as_browser(&self, method: reqwest::Method, path: &str, who: &Person) -> reqwest::RequestBuilder {
        let mut rb = self.client.request(method.clone(), self.url(path));
        if let Some(c) = &who.cookie {
            rb = rb.header("cookie", c);
        }
        if method != reqwest::Method::GET {
            rb = rb.header("sec-fetch-site", "same-origin");
        }
        rb
    }

    /// `as_browser` sent, with no body.
    pub async fn send_as(&self, method: reqwest::Method, path: &str, who: &Person) -> reqwest::Response {
        self.as_browser(method.clone(), path, who)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// `GET /api/users` from `who`'s browser: asserts 200, returns the JSON.
    pub async fn users(&self, who: &Person) -> Value {
        let r = self.send_as(reqwest::Method::GET, "/api/users", who).await;
        assert_eq!(r.status(), StatusCode::OK, "GET /api/users");
        r.json().await.expect("users JSON")
    }

    /// register/finish for the ceremony `start` began, with `credential`.
    pub async fn register_finish(&self, start: &Value, credential: Value) -> reqwest::Response {
        self.post_json(
            "/api/auth/register/finish",
            json!({ "ceremony": start["ceremony"], "credential": credential }),
            None,
        )
        .await
    }

    /// How many events of type `kind` the log holds.
    pub async fn count_events(&self, kind: &str) -> usize {
        self.events().await.iter().filter(|e| e["type"] == kind).count()
    }

    pub async fn post_json(&self, path: &str, body: Value, who: Option<&Person>) -> reqwest::Response {
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

    pub async fn register_start(&self, who: &Person, invite: Option<&str>) -> reqwest::Response {
        let mut body = json!({ "username": who.username, "display_name": format!("{} (test)", who.username) });
        if let Some(code) = invite {
            body["invite"] = json!(code);
        }
        self.post_json("/api/auth/register/start", body, None).await
    }

    /// The authenticator's answer to a registration challenge, made at `origin`.
    pub fn create_credential(who: &mut Person, origin: &str, start: &Value) -> Value {
        let options: CreationChallengeResponse =
            serde_json::from_value(start["options"].clone()).expect("creation options");
        let credential = who
            .key
            .do_registration(Url::parse(origin).expect("origin"), options)
            .expect("the authenticator registers");
        let credential = serde_json::to_value(credential).expect("credential JSON");
        who.credential_ids.push(credential["id"].clone());
        who.user_handle = Some(start["options"]["publicKey"]["user"]["id"].clone());
        credential
    }

    /// The one-time setup code `herald serve` prints while there is no admin.
    pub async fn setup_code(&self) -> String {
        herald_server::passkeys::issue_setup_code(&*self.state.store, &*self.state.accounts)
            .await
            .expect("issue a setup code")
            .expect("no admin yet: a setup code")
            .code
    }

    /// Registers `who` (optionally with an invite); returns the finish response.
    pub async fn register(&self, who: &mut Person, invite: Option<&str>) -> reqwest::Response {
        let r = self.register_start(who, invite).await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "register/start: {}",
            r.text().await.unwrap_or_default()
        );
        let start: Value = r.json().await.expect("start JSON");
        let credential = Self::create_credential(who, &self.origin, &start);
        let r = self.register_finish(&start, credential).await;
        if let Some(c) = session_cookie(&r) {
            who.cookie = Some(c);
        }
        r
    }

    /// Registers `who` with their passkey, with `invite` or else (the first
    /// admin) the setup code `herald serve` would print; asserts it worked and
    /// fills in `who.id`.
    pub async fn register_ok(&self, who: &mut Person, invite: Option<&str>) {
        let code = match invite {
            Some(code) => code.to_owned(),
            None => self.setup_code().await,
        };
        let r = self.register(who, Some(&code)).await;
        assert_eq!(r.status(), StatusCode::CREATED, "register/finish");
        who.cookie = session_cookie(&r);
        let body: Value = r.json().await.expect("user JSON");
        who.id = body["user"]["id"].as_str().expect("id").to_owned();
    }

    /// login/start naming `who`; returns the start JSON.
    pub async fn login_start(&self, who: &Person) -> Value {
        let r = self
            .post_json("/api/auth/login/start", json!({ "username": who.username }), None)
            .await;
        assert_eq!(r.status(), StatusCode::OK, "login/start");
        r.json().await.expect("login start JSON")
    }

    /// The authenticator's signed answer to a login challenge, made at `origin`,
    /// as a discoverable passkey gives it.
    pub fn assert_credential(who: &mut Person, origin: &str, start: &Value) -> Value {
        let mut options = start["options"].clone();
        assert!(
            options["publicKey"]["allowCredentials"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "a login challenge names no credentials (it would tell who has an account): {options}"
        );
        // The authenticator finds its own resident credential for this rp
        // (the software authenticator signs only for a challenge that lists it).
        options["publicKey"]["allowCredentials"] = who
            .credential_ids
            .iter()
            .map(|id| json!({ "type": "public-key", "id": id }))
            .collect();
        let options: RequestChallengeResponse = serde_json::from_value(options).expect("request options");
        let credential = who
            .key
            .do_authentication(Url::parse(origin).expect("origin"), options)
            .expect("the authenticator signs");
        let mut credential = serde_json::to_value(credential).expect("credential JSON");
        credential["response"]["userHandle"] = who.user_handle.clone().unwrap_or(Value::Null);
        credential
    }

    /// login/start naming `who`, and the authenticator's signed answer:
    /// `(ceremony, credential)`.
    pub async fn login_signed(&self, who: &mut Person) -> (Value, Value) {
        let start = self.login_start(who).await;
        let credential = Self::assert_credential(who, &self.origin, &start);
        (start["ceremony"].clone(), credential)
    }

    /// login/finish from `who`'s browser (with their cookie, if any: a
    /// step-up); takes the new cookie when there is one.
    pub async fn login_finish(&self, who: &mut Person, ceremony: &Value, credential: Value) -> reqwest::Response {
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

    /// A full passkey login from `who`'s browser (see `login_finish`).
    pub async fn login(&self, who: &mut Person) -> reqwest::Response {
        let (ceremony, credential) = self.login_signed(who).await;
        self.login_finish(who, &ceremony, credential).await
    }

    pub async fn me(&self, who: &Person) -> reqwest::Response {
        self.as_browser(reqwest::Method::GET, "/api/me", who)
            .send()
            .await
            .expect("GET /api/me")
    }

    pub async fn invite(&self, admin: &Person, role: &str) -> String {
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

    pub async fn events(&self) -> Vec<Value> {
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
}

/// The embedded store, but: reads filtered by event type (the revocation
/// follower's) fail while `failing` is set, appends of `refused_type` fail,
/// and every append fails while `appends_failing` is set (the store
/// unavailable); everything else is the real store.
pub struct Faulty {
    pub inner: std::sync::Arc<herald_store::sqlite::SqliteStore>,
    pub failing: std::sync::atomic::AtomicBool,
    pub refused_type: Option<&'static str>,
    pub appends_failing: std::sync::atomic::AtomicBool,
}

impl Faulty {
    pub fn open(dir: &std::path::Path, failing: bool, refused_type: Option<&'static str>) -> std::sync::Arc<Faulty> {
        std::sync::Arc::new(Faulty {
            inner: herald_store::sqlite::SqliteStore::open(dir, std::sync::Arc::new(herald_server::sse::Sse))
                .expect("open store"),
            failing: std::sync::atomic::AtomicBool::new(failing),
            refused_type,
            appends_failing: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

#[async_trait::async_trait]
impl herald_core::store::EventStore for Faulty {
    async fn append(
        &self,
        request: herald_core::store::AppendRequest,
    ) -> Result<herald_core::store::AppendOutcome, herald_core::store::StoreError> {
        use std::sync::atomic::Ordering;
        if self.appends_failing.load(Ordering::SeqCst)
            || request
                .events
                .iter()
                .any(|e| Some(e.event_type.as_str()) == self.refused_type)
        {
            return Err(herald_core::store::StoreError::Unavailable(
                "the test refuses this append".into(),
            ));
        }
        self.inner.append(request).await
    }
    async fn find_command(
        &self,
        command_id: &str,
    ) -> Result<Option<(String, herald_core::store::Committed)>, herald_core::store::StoreError> {
        self.inner.find_command(command_id).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<herald_core::store::StreamSlice, herald_core::store::StoreError> {
        self.inner.read_stream(stream, from_version, limit).await
    }
    async fn read_all(
        &self,
        after: u64,
        filter: &herald_core::store::Filter,
        limit: usize,
    ) -> Result<herald_core::store::Page, herald_core::store::StoreError> {
        if !filter.types.is_empty() && self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(herald_core::store::StoreError::Unavailable("the test says so".into()));
        }
        self.inner.read_all(after, filter, limit).await
    }
    async fn head(&self) -> Result<herald_core::store::Head, herald_core::store::StoreError> {
        self.inner.head().await
    }
    fn live(&self) -> herald_core::store::LiveReceiver {
        self.inner.live()
    }
}
