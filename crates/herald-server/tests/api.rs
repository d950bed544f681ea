//! In-process contract tests of herald's HTTP API (API.md §1–§5): the router
//! from `herald_server::app` driven request by request with
//! `tower::ServiceExt::oneshot`, each test on its own embedded store.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use bytes::Bytes;
use herald_core::Actor;
use herald_core::auth::Role;
use herald_core::store::{AppendRequest, ExpectedVersion, NewEvent};
use herald_server::{AppState, ServerConfig};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const LIMIT: usize = 64 * 1024;

/// A token minted for a test, with its secret.
struct Token {
    id: String,
    name: String,
    secret: String,
}

impl Token {
    /// The actor its events carry (API.md §3).
    fn actor(&self) -> Value {
        json!({ "kind": "token", "id": self.id, "name": self.name })
    }
}

/// One server on its own temporary store, with a token per role.
struct TestApp {
    state: AppState,
    router: Router,
    admin: Token,
    operator: Token,
    viewer: Token,
    _dir: tempfile::TempDir,
}

/// A response, read to the end.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {:?}", self.text()))
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn content_type(&self) -> &str {
        self.header(header::CONTENT_TYPE)
    }

    /// Asserts a 2xx JSON reply and returns its body.
    #[track_caller]
    fn ok_json(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.content_type(), "application/json", "body: {}", self.text());
        self.json()
    }
}

async fn mint(state: &AppState, name: &str, role: Role) -> Token {
    let minted =
        herald_server::auth::create_token(&*state.store, &*state.credentials, &Actor::system("test"), name, role)
            .await
            .expect("mint a token");
    Token {
        id: minted.record.id,
        name: name.to_owned(),
        secret: minted.secret,
    }
}

async fn setup() -> TestApp {
    setup_with(ServerConfig::default()).await
}

/// A fresh server; the log starts with the three `TokenCreated` events of its tokens.
async fn setup_with(config: ServerConfig) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let state = AppState::open_sqlite(dir.path(), config).expect("open the embedded store");
    let admin = mint(&state, "root-admin", Role::Admin).await;
    let operator = mint(&state, "ci-deployer", Role::Operator).await;
    let viewer = mint(&state, "dashboard", Role::Viewer).await;
    TestApp {
        router: herald_server::app(state.clone()),
        state,
        admin,
        operator,
        viewer,
        _dir: dir,
    }
}

fn request(method: Method, uri: &str, token: Option<&str>) -> axum::http::request::Builder {
    let builder = Request::builder().method(method).uri(uri);
    match token {
        Some(t) => builder.header(header::AUTHORIZATION, format!("Bearer {t}")),
        None => builder,
    }
}

fn json_request(method: Method, uri: &str, token: Option<&str>, body: &Value) -> Request<Body> {
    request(method, uri, token)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a valid request")
}

impl TestApp {
    async fn send(&self, req: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(req).await.expect("the router never fails");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read the response body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> Reply {
        self.send(
            request(Method::GET, uri, token)
                .body(Body::empty())
                .expect("a valid request"),
        )
        .await
    }

    async fn post_json(&self, uri: &str, token: Option<&str>, body: &Value) -> Reply {
        self.send(json_request(Method::POST, uri, token, body)).await
    }

    /// `POST /api/commands` as the operator, with raw bytes and a content type.
    async fn command_raw(&self, content_type: Option<&str>, body: impl Into<Body>) -> Reply {
        let mut builder = request(Method::POST, "/api/commands", Some(&self.operator.secret));
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        self.send(builder.body(body.into()).expect("a valid request")).await
    }

    /// `POST /api/commands` as the operator.
    async fn command(&self, body: &Value) -> Reply {
        self.post_json("/api/commands", Some(&self.operator.secret), body).await
    }

    /// `POST /api/commands` as the operator, expecting 200.
    async fn command_ok(&self, body: &Value) -> Value {
        let reply = self.command(body).await;
        assert_eq!(reply.status, StatusCode::OK, "command {body} failed: {}", reply.text());
        reply.json()
    }

    /// `GET /api/events?{query}` as the viewer, expecting 200.
    async fn events(&self, query: &str) -> Value {
        self.get(&format!("/api/events?{query}"), Some(&self.viewer.secret))
            .await
            .ok_json(StatusCode::OK)
    }

    /// The head of the log as `GET /api/events` reports it.
    async fn head(&self) -> u64 {
        self.events("limit=1").await["head"].as_u64().expect("head is a number")
    }

    /// Every event in the log, paging with `next_after`.
    async fn all_events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.events(&format!("after={after}&limit=1000")).await;
            let events = page["events"].as_array().expect("events").clone();
            let next = page["next_after"].as_u64().expect("next_after");
            if events.is_empty() {
                return out;
            }
            out.extend(events);
            after = next;
        }
    }

    /// Starts the consumer runner, which keeps the read models (`app()` does not).
    fn start_projector(&self) {
        tokio::spawn(herald_server::consumers::run(self.state.clone()));
    }

    /// `GET /api/deployments{query}` once the read model has caught up with `position`.
    async fn deployments_at(&self, query: &str, position: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = self
                .get(&format!("/api/deployments{query}"), Some(&self.viewer.secret))
                .await
                .ok_json(StatusCode::OK);
            let at = list["position"].as_u64().expect("position is a number");
            if at >= position {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "the read model stayed at position {at}, never reached {position}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Appends `n` events to `stream` directly through the store.
    async fn append_bulk(&self, stream: &str, n: usize) {
        let command_id = uuid::Uuid::now_v7().to_string();
        self.state
            .store
            .append(AppendRequest {
                stream: stream.to_owned(),
                expected: ExpectedVersion::Any,
                events: (0..n)
                    .map(|i| NewEvent {
                        event_type: "BulkWritten".into(),
                        schema: 1,
                        data: json!({ "i": i }),
                    })
                    .collect(),
                actor: Actor::system("test"),
                command_id: command_id.clone(),
                correlation_id: command_id,
                idempotency_fingerprint: None,
            })
            .await
            .expect("bulk append");
    }
}

/// Asserts an RFC 9457 problem and returns it.
#[track_caller]
fn assert_problem(reply: &Reply, status: StatusCode, kind: &str, title: &str, detail_mentions: &[&str]) -> Value {
    assert_eq!(reply.status, status, "body: {}", reply.text());
    assert_eq!(
        reply.content_type(),
        "application/problem+json",
        "a {status} must be a problem; body: {}",
        reply.text()
    );
    let problem = reply.json();
    assert_eq!(problem["type"], format!("/problems/{kind}"), "{problem}");
    assert_eq!(problem["title"], title, "{problem}");
    assert_eq!(problem["status"], status.as_u16(), "{problem}");
    let detail = problem["detail"].as_str().expect("detail is a string");
    for needle in detail_mentions {
        assert!(detail.contains(needle), "detail {detail:?} should mention {needle:?}");
    }
    problem
}

#[track_caller]
fn assert_bad_request(reply: &Reply, detail_mentions: &[&str]) -> Value {
    assert_problem(
        reply,
        StatusCode::BAD_REQUEST,
        "bad-request",
        "Bad request",
        detail_mentions,
    )
}

#[track_caller]
fn assert_unauthorized(reply: &Reply) {
    assert_problem(
        reply,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Authentication required",
        &[],
    );
    assert_eq!(reply.header(header::WWW_AUTHENTICATE), "Bearer realm=\"herald\"");
}

#[track_caller]
fn assert_rule(reply: &Reply, rule: &str) {
    assert_problem(reply, StatusCode::UNPROCESSABLE_ENTITY, "rule-violated", rule, &[]);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn is_rfc3339_utc_millis(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    b.len() == 24
        && digits.iter().all(|&i| b[i].is_ascii_digit())
        && [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ]
        .iter()
        .all(|&(i, c)| b[i] == c)
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Asserts every field of an envelope (API.md §3).
#[track_caller]
fn assert_envelope(e: &Value, stream: &str, version: u64, event_type: &str, actor: &Value) {
    assert_eq!(
        keys(e),
        set(&[
            "position",
            "id",
            "stream",
            "version",
            "type",
            "schema",
            "data",
            "actor",
            "command_id",
            "correlation_id",
            "recorded_at",
            "hash"
        ]),
        "{e}"
    );
    assert!(e["position"].as_u64().is_some_and(|p| p >= 1), "{e}");
    let id = e["id"].as_str().expect("id is a string");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "id {id:?} is not a UUID");
    assert_eq!(e["stream"], stream, "{e}");
    assert_eq!(e["version"], version, "{e}");
    assert_eq!(e["type"], event_type, "{e}");
    assert_eq!(e["schema"], 1, "{e}");
    assert!(e["data"].is_object(), "{e}");
    assert_eq!(&e["actor"], actor, "{e}");
    assert!(e["command_id"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    assert!(e["correlation_id"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    let recorded_at = e["recorded_at"].as_str().expect("recorded_at is a string");
    assert!(is_rfc3339_utc_millis(recorded_at), "recorded_at {recorded_at:?}");
    let hash = e["hash"].as_str().expect("hash is a string");
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "hash {hash:?}"
    );
}

/// RFC 8785-style canonical JSON, written independently of the server.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            let fields: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn start(id: &str) -> Value {
    json!({
        "type": "StartDeployment",
        "aggregate_id": id,
        "data": { "service": "user-service", "version": "1.4.2", "environment": "prod" },
    })
}

fn cmd(command_type: &str, id: &str, data: Value) -> Value {
    json!({ "type": command_type, "aggregate_id": id, "data": data })
}

fn with(mut command: Value, field: &str, value: Value) -> Value {
    command[field] = value;
    command
}

fn types_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_owned())
        .collect()
}

fn positions_of(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["position"].as_u64().expect("position"))
        .collect()
}

// ---------------------------------------------------------------------------
// POST /api/commands: success
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_command_returns_the_committed_events_as_envelopes() {
    let app = setup().await;
    let head_before = app.head().await;
    let req = request(Method::POST, "/api/commands", Some(&app.operator.secret))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-correlation-id", "corr-42")
        .body(Body::from(
            with(
                with(start("7f3a"), "expected_version", json!(0)),
                "command_id",
                json!("c0ffee-1"),
            )
            .to_string(),
        ))
        .unwrap();
    let body = app.send(req).await.ok_json(StatusCode::OK);

    assert_eq!(keys(&body), set(&["stream", "version", "position", "events"]), "{body}");
    assert_eq!(body["stream"], "deployment-7f3a");
    assert_eq!(body["version"], 1);
    assert_eq!(body["position"], head_before + 1);
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_envelope(e, "deployment-7f3a", 1, "DeploymentStarted", &app.operator.actor());
    assert_eq!(e["position"], head_before + 1);
    assert_eq!(
        e["data"],
        json!({ "service": "user-service", "version": "1.4.2", "environment": "prod" })
    );
    assert_eq!(e["command_id"], "c0ffee-1");
    assert_eq!(e["correlation_id"], "corr-42");

    // Durable and readable: the log serves the very same envelope.
    let page = app.events(&format!("after={head_before}")).await;
    assert_eq!(page["events"], json!([e]));
    assert_eq!(page["head"], head_before + 1);

    // Without command_id the server picks one, and the correlation id defaults to it.
    let body = app
        .command_ok(&cmd("ReportDeploymentProgress", "7f3a", json!({ "percent": 40 })))
        .await;
    assert_eq!(body["version"], 2);
    assert_eq!(body["position"], head_before + 2);
    let e = &body["events"][0];
    assert_envelope(e, "deployment-7f3a", 2, "DeploymentProgressed", &app.operator.actor());
    assert_eq!(e["data"], json!({ "percent": 40 }));
    assert_ne!(e["command_id"], "c0ffee-1");
    assert_eq!(e["correlation_id"], e["command_id"]);
}

#[tokio::test]
async fn the_actor_comes_from_the_credential_never_the_body() {
    let app = setup().await;
    let head = app.head().await;
    let forged = json!({ "kind": "user", "id": "u-1", "name": "alice" });

    let reply = app.command(&with(start("forged"), "actor", forged.clone())).await;
    assert_bad_request(&reply, &["actor"]);
    let mut in_data = start("forged");
    in_data["data"]["actor"] = forged;
    let reply = app.command(&in_data).await;
    assert_bad_request(&reply, &["actor"]);
    assert_eq!(app.head().await, head, "a refused command appended something");

    // Another token's commands carry that token's name.
    let other = mint(&app.state, "release-bot", Role::Operator).await;
    let body = app
        .post_json("/api/commands", Some(&other.secret), &start("by-bot"))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(body["events"][0]["actor"], other.actor());
    assert_eq!(body["events"][0]["actor"]["name"], "release-bot");
}

#[tokio::test]
async fn the_full_deployment_lifecycle() {
    let app = setup().await;
    let ops = app.operator.actor();
    let first = app.command_ok(&with(start("d1"), "expected_version", json!(0))).await;
    let p1 = first["position"].as_u64().unwrap();

    let steps = [
        (
            cmd(
                "ReportDeploymentProgress",
                "d1",
                json!({ "percent": 0, "message": "pulling images" }),
            ),
            "DeploymentProgressed",
        ),
        (
            cmd("ReportDeploymentProgress", "d1", json!({ "percent": 100 })),
            "DeploymentProgressed",
        ),
        (cmd("SucceedDeployment", "d1", json!({})), "DeploymentSucceeded"),
    ];
    for (i, (command, event_type)) in steps.iter().enumerate() {
        let version = i as u64 + 2;
        let body = app
            .command_ok(&with(command.clone(), "expected_version", json!(version - 1)))
            .await;
        assert_eq!(body["version"], version);
        assert_eq!(body["position"], p1 + version - 1);
        assert_envelope(&body["events"][0], "deployment-d1", version, event_type, &ops);
    }
    // Finished: no more progress, no second start.
    assert_rule(
        &app.command(&cmd("ReportDeploymentProgress", "d1", json!({ "percent": 5 })))
            .await,
        "Deployment not in progress",
    );
    assert_rule(&app.command(&start("d1")).await, "Deployment already started");

    // Failing and cancelling end a deployment too; their data is kept.
    app.command_ok(&start("d2")).await;
    let failed = app
        .command_ok(&cmd("FailDeployment", "d2", json!({ "reason": "health check failed" })))
        .await;
    assert_envelope(&failed["events"][0], "deployment-d2", 2, "DeploymentFailed", &ops);
    assert_eq!(failed["events"][0]["data"], json!({ "reason": "health check failed" }));
    assert_rule(
        &app.command(&cmd("CancelDeployment", "d2", json!({}))).await,
        "Deployment not in progress",
    );

    app.command_ok(&start("d3")).await;
    let cancelled = app.command_ok(&cmd("CancelDeployment", "d3", json!({}))).await;
    assert_envelope(&cancelled["events"][0], "deployment-d3", 2, "DeploymentCancelled", &ops);
    assert_rule(
        &app.command(&cmd("SucceedDeployment", "d3", json!({}))).await,
        "Deployment not in progress",
    );

    // The stream holds exactly the lifecycle, versions 1..=4 without gaps.
    let stream = app
        .get("/api/streams/deployment-d1", Some(&app.viewer.secret))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(stream["version"], 4);
    let events = stream["events"].as_array().unwrap();
    assert_eq!(
        types_of(events),
        [
            "DeploymentStarted",
            "DeploymentProgressed",
            "DeploymentProgressed",
            "DeploymentSucceeded"
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["version"], i as u64 + 1);
    }
}

// ---------------------------------------------------------------------------
// POST /api/commands: refusals
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_version_conflict_is_409_with_both_versions() {
    let app = setup().await;
    app.command_ok(&start("c1")).await;
    let head = app.head().await;

    let reply = app.command(&with(start("c1"), "expected_version", json!(0))).await;
    let problem = assert_problem(
        &reply,
        StatusCode::CONFLICT,
        "version-conflict",
        "Version conflict",
        &["deployment-c1"],
    );
    assert_eq!(problem["expected_version"], 0);
    assert_eq!(problem["actual_version"], 1);

    let reply = app
        .command(&with(
            cmd("ReportDeploymentProgress", "c1", json!({ "percent": 10 })),
            "expected_version",
            json!(5),
        ))
        .await;
    let problem = assert_problem(
        &reply,
        StatusCode::CONFLICT,
        "version-conflict",
        "Version conflict",
        &[],
    );
    assert_eq!(problem["expected_version"], 5);
    assert_eq!(problem["actual_version"], 1);
    assert_eq!(app.head().await, head, "a conflicting command appended something");

    // The right expected version goes through.
    let body = app
        .command_ok(&with(
            cmd("ReportDeploymentProgress", "c1", json!({ "percent": 10 })),
            "expected_version",
            json!(1),
        ))
        .await;
    assert_eq!(body["version"], 2);
}

#[tokio::test]
async fn a_business_rule_refusal_is_422_titled_by_the_rule() {
    let app = setup().await;
    let head = app.head().await;
    let reply = app.command(&cmd("SucceedDeployment", "never-started", json!({}))).await;
    assert_rule(&reply, "Deployment not started");
    assert!(!reply.json()["detail"].as_str().unwrap().is_empty());
    assert_rule(
        &app.command(&cmd("FailDeployment", "never-started", json!({ "reason": "x" })))
            .await,
        "Deployment not started",
    );
    assert_eq!(app.head().await, head);

    app.command_ok(&start("r1")).await;
    assert_rule(&app.command(&start("r1")).await, "Deployment already started");
}

#[tokio::test]
async fn an_unknown_command_type_is_400_listing_the_known_types() {
    let app = setup().await;
    let reply = app.command(&cmd("LaunchRocket", "x1", json!({}))).await;
    assert_bad_request(
        &reply,
        &[
            "type",
            "LaunchRocket",
            "StartDeployment",
            "ReportDeploymentProgress",
            "SucceedDeployment",
            "FailDeployment",
            "CancelDeployment",
        ],
    );
    let reply = app.command(&json!({ "aggregate_id": "x1", "data": {} })).await;
    assert_bad_request(&reply, &["type"]);
    let reply = app.command(&cmd("", "x1", json!({}))).await;
    assert_bad_request(&reply, &["type"]);
}

#[tokio::test]
async fn the_aggregate_id_is_validated() {
    let app = setup().await;
    let head = app.head().await;
    let mut missing = start("x");
    missing.as_object_mut().unwrap().remove("aggregate_id");
    assert_bad_request(&app.command(&missing).await, &["aggregate_id"]);
    for bad in [
        json!("a/b"),
        json!("a".repeat(65)),
        json!(""),
        json!("a b"),
        json!("é"),
        json!("../etc"),
        json!(123),
        json!(null),
    ] {
        let reply = app.command(&with(start("x"), "aggregate_id", bad.clone())).await;
        assert_bad_request(&reply, &["aggregate_id"]);
    }
    assert_eq!(app.head().await, head);
    // The longest id allowed, with every allowed kind of character.
    let longest = format!("{}Az09_-", "a".repeat(58));
    let body = app.command_ok(&start(&longest)).await;
    assert_eq!(body["stream"], format!("deployment-{longest}"));
}

#[tokio::test]
async fn command_data_is_validated_naming_the_field() {
    let app = setup().await;
    app.command_ok(&start("v1")).await;
    let head = app.head().await;
    let cases: Vec<(Value, &str)> = vec![
        (cmd("StartDeployment", "v2", json!({})), "service"),
        (
            json!({ "type": "StartDeployment", "aggregate_id": "v2", "data": null }),
            "service",
        ),
        (json!({ "type": "StartDeployment", "aggregate_id": "v2" }), "service"),
        (cmd("StartDeployment", "v2", json!({ "service": 7 })), "data.service"),
        (cmd("StartDeployment", "v2", json!({ "service": "  " })), "data.service"),
        (
            cmd("StartDeployment", "v2", json!({ "service": "s", "version": ["1"] })),
            "data.version",
        ),
        (
            cmd("StartDeployment", "v2", json!({ "service": "s", "colour": "red" })),
            "colour",
        ),
        (cmd("StartDeployment", "v2", json!([])), "data"),
        (cmd("StartDeployment", "v2", json!("service")), "data"),
        (cmd("ReportDeploymentProgress", "v1", json!({})), "percent"),
        (
            cmd("ReportDeploymentProgress", "v1", json!({ "percent": "50" })),
            "data.percent",
        ),
        (
            cmd("ReportDeploymentProgress", "v1", json!({ "percent": 101 })),
            "data.percent",
        ),
        (
            cmd("ReportDeploymentProgress", "v1", json!({ "percent": 300 })),
            "data.percent",
        ),
        (
            cmd("ReportDeploymentProgress", "v1", json!({ "percent": -1 })),
            "data.percent",
        ),
        (
            cmd("ReportDeploymentProgress", "v1", json!({ "percent": 12.5 })),
            "data.percent",
        ),
        (
            cmd("ReportDeploymentProgress", "v1", json!({ "percent": null })),
            "data.percent",
        ),
        (cmd("FailDeployment", "v1", json!({})), "reason"),
        (cmd("FailDeployment", "v1", json!({ "reason": false })), "data.reason"),
        (cmd("SucceedDeployment", "v1", json!({ "extra": 1 })), "extra"),
    ];
    for (command, field) in cases {
        let reply = app.command(&command).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{command}: {}", reply.text());
        assert_bad_request(&reply, &[field]);
    }
    assert_eq!(app.head().await, head, "an invalid command appended something");
    // The bounds themselves are fine.
    app.command_ok(&cmd("ReportDeploymentProgress", "v1", json!({ "percent": 0 })))
        .await;
    app.command_ok(&cmd("ReportDeploymentProgress", "v1", json!({ "percent": 100 })))
        .await;
}

#[tokio::test]
async fn a_control_character_in_a_name_field_is_400() {
    // A one-line field (service) may hold no control characters.
    let app = setup().await;
    let reply = app
        .command(&cmd("StartDeployment", "cc", json!({ "service": "a\u{7}b" })))
        .await;
    assert_bad_request(&reply, &["data.service"]);
}

#[tokio::test]
async fn malformed_command_bodies_are_400() {
    let app = setup().await;
    let head = app.head().await;
    let valid = start("m1").to_string();
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (vec![0xff, 0xfe, 0x00, 0x9c, 0x80], &["JSON"]),
        (b"not json at all".to_vec(), &["JSON"]),
        (valid.as_bytes()[..valid.len() - 7].to_vec(), &["truncated"]),
        (b"".to_vec(), &["empty"]),
        (b" \n\t ".to_vec(), &["empty"]),
        (format!("{valid} garbage").into_bytes(), &["trailing"]),
        (format!("{valid}{valid}").into_bytes(), &["trailing"]),
        (b"[]".to_vec(), &[]),
        (b"\"x\"".to_vec(), &[]),
        (b"null".to_vec(), &[]),
        (b"42".to_vec(), &[]),
        (b"{}".to_vec(), &["type"]),
        (
            format!(
                r#"{{"type":"StartDeployment","aggregate_id":"m1","data":{{"service":"s","version":{}{}}}}}"#,
                "[".repeat(20_000),
                "]".repeat(20_000)
            )
            .into_bytes(),
            &[],
        ),
        (
            br#"{"type":"StartDeployment","aggregate_id":"m1","data":{"service":"\ud800"}}"#.to_vec(),
            &[],
        ),
        (
            b"\xef\xbb\xbf{\"type\":\"StartDeployment\",\"aggregate_id\":\"m1\",\"data\":{\"service\":\"s\"}}".to_vec(),
            &[],
        ),
        (
            with(start("m1"), "colour", json!("red")).to_string().into_bytes(),
            &["colour"],
        ),
        (
            br#"{"type":"StartDeployment","type":"CancelDeployment","aggregate_id":"m1","data":{"service":"s"}}"#
                .to_vec(),
            &["type"],
        ),
        (
            with(start("m1"), "expected_version", json!("0"))
                .to_string()
                .into_bytes(),
            &["expected_version"],
        ),
        (
            with(start("m1"), "expected_version", json!(-1))
                .to_string()
                .into_bytes(),
            &["expected_version"],
        ),
        (
            with(start("m1"), "command_id", json!("")).to_string().into_bytes(),
            &["command_id"],
        ),
        (
            with(start("m1"), "command_id", json!("c".repeat(129)))
                .to_string()
                .into_bytes(),
            &["command_id"],
        ),
        (
            with(start("m1"), "command_id", json!(12)).to_string().into_bytes(),
            &["command_id"],
        ),
    ];
    for (body, mentions) in cases {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let reply = app.command_raw(Some("application/json"), body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{shown:?}: {}", reply.text());
        assert_bad_request(&reply, mentions);
    }
    // A bad correlation header is a bad request too.
    let req = request(Method::POST, "/api/commands", Some(&app.operator.secret))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-correlation-id", "has space")
        .body(Body::from(valid.clone()))
        .unwrap();
    assert_bad_request(&app.send(req).await, &["X-Correlation-Id"]);
    assert_eq!(app.head().await, head, "a malformed command appended something");
}

#[tokio::test]
async fn a_positional_array_body_is_not_a_command() {
    let app = setup().await;
    let head = app.head().await;
    let body = json!(["StartDeployment", "arr1", null, null, { "service": "s" }]);
    let reply = app.command(&body).await;
    assert_bad_request(&reply, &[]);
    assert_eq!(app.head().await, head, "an array body appended an event");
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let app = setup().await;
    let head = app.head().await;
    let padded = |len: usize| {
        let mut body = start("big").to_string().into_bytes();
        body.resize(len, b' ');
        body
    };
    let too_big = padded(LIMIT + 1);

    // A truthful Content-Length.
    let req = request(Method::POST, "/api/commands", Some(&app.operator.secret))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, too_big.len())
        .body(Body::from(too_big.clone()))
        .unwrap();
    let check = |reply: &Reply| {
        assert_problem(
            reply,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            &["65536"],
        );
    };
    check(&app.send(req).await);
    // A huge announced length is refused up front.
    let req = request(Method::POST, "/api/commands", Some(&app.operator.secret))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, 10 * 1024 * 1024)
        .body(Body::from(too_big.clone()))
        .unwrap();
    check(&app.send(req).await);
    // No Content-Length at all.
    check(&app.command_raw(Some("application/json"), too_big.clone()).await);
    // Chunked: a stream of small chunks, no length known in advance.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        too_big.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let reply = app
        .command_raw(
            Some("application/json"),
            Body::from_stream(futures_util::stream::iter(chunks)),
        )
        .await;
    check(&reply);
    // A Content-Length that understates the body.
    let req = request(Method::POST, "/api/commands", Some(&app.operator.secret))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, 100)
        .body(Body::from(too_big))
        .unwrap();
    check(&app.send(req).await);
    assert_eq!(app.head().await, head, "an oversized command appended something");

    // Exactly 64 KiB is within the limit.
    let exact = padded(LIMIT);
    let req = request(Method::POST, "/api/commands", Some(&app.operator.secret))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, exact.len())
        .body(Body::from(exact))
        .unwrap();
    let body = app.send(req).await.ok_json(StatusCode::OK);
    assert_eq!(body["stream"], "deployment-big");
}

#[tokio::test]
async fn a_non_json_content_type_is_415() {
    let app = setup().await;
    let head = app.head().await;
    let body = start("ct1").to_string();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        None,
    ] {
        let reply = app.command_raw(ct, body.clone()).await;
        assert_problem(
            &reply,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            &["application/json"],
        );
    }
    assert_eq!(app.head().await, head);
    let reply = app.command_raw(Some("application/json; charset=utf-8"), body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn missing_or_invalid_credentials_are_401() {
    let app = setup().await;
    let head = app.head().await;
    let body = start("auth1").to_string();
    let authorizations: Vec<Option<HeaderValue>> = vec![
        None,
        Some(HeaderValue::from_static(
            "Bearer hrld_0000000000000000000000000000000000000000",
        )),
        Some(HeaderValue::from_str(&format!("Bearer {}x", app.operator.secret)).unwrap()),
        Some(HeaderValue::from_str(&format!("Basic {}", app.operator.secret)).unwrap()),
        Some(HeaderValue::from_str(&app.operator.secret).unwrap()),
        Some(HeaderValue::from_static("Bearer")),
        Some(HeaderValue::from_static("Bearer    ")),
        Some(HeaderValue::from_static("")),
        Some(HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap()),
    ];
    for auth in authorizations {
        for (method, uri) in [(Method::POST, "/api/commands"), (Method::GET, "/api/events")] {
            let mut builder = Request::builder()
                .method(method.clone())
                .uri(uri)
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(value) = &auth {
                builder = builder.header(header::AUTHORIZATION, value.clone());
            }
            let reply = app.send(builder.body(Body::from(body.clone())).unwrap()).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {uri} with {auth:?}");
            assert_unauthorized(&reply);
        }
    }
    for uri in ["/api/deployments", "/api/streams/deployment-x", "/api/audit/verify"] {
        assert_unauthorized(&app.get(uri, None).await);
    }
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn a_viewer_cannot_send_commands() {
    let app = setup().await;
    let head = app.head().await;
    let reply = app
        .post_json("/api/commands", Some(&app.viewer.secret), &start("v403"))
        .await;
    assert_problem(&reply, StatusCode::FORBIDDEN, "forbidden", "Forbidden", &["operator"]);
    assert_eq!(app.head().await, head);
    // An admin is an operator too.
    let body = app
        .post_json("/api/commands", Some(&app.admin.secret), &start("by-admin"))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(body["events"][0]["actor"], app.admin.actor());
}

#[tokio::test]
async fn a_credential_in_the_query_string_is_400() {
    let app = setup().await;
    let head = app.head().await;
    let secret = app.operator.secret.clone();
    for param in ["access_token", "token", "api_key", "ACCESS_TOKEN"] {
        // Alone…
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("/api/commands?{param}={secret}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(start("q1").to_string()))
            .unwrap();
        assert_bad_request(&app.send(req).await, &[param]);
        // …or next to a valid header.
        let req = json_request(
            Method::POST,
            &format!("/api/commands?{param}={secret}"),
            Some(&secret),
            &start("q1"),
        );
        assert_bad_request(&app.send(req).await, &[param]);
        let reply = app.get(&format!("/api/events?{param}={secret}"), None).await;
        assert_bad_request(&reply, &[param]);
    }
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn commands_beyond_the_rate_limit_are_429() {
    let app = setup_with(ServerConfig {
        command_rate: 1,
        ..ServerConfig::default()
    })
    .await;
    // A burst of twice the rate, then 429 with Retry-After.
    app.command_ok(&start("rl1")).await;
    app.command_ok(&start("rl2")).await;
    let reply = app.command(&start("rl3")).await;
    assert_problem(
        &reply,
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-requests",
        "Too many requests",
        &[],
    );
    let retry_after: u64 = reply
        .header(header::RETRY_AFTER)
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    // The limit is per credential.
    let other = mint(&app.state, "other-operator", Role::Operator).await;
    let reply = app.post_json("/api/commands", Some(&other.secret), &start("rl4")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

// ---------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_retried_command_id_returns_the_first_result_and_appends_nothing() {
    let app = setup().await;
    let command = with(
        with(start("i1"), "expected_version", json!(0)),
        "command_id",
        json!("retry-1"),
    );
    let first = app.command_ok(&command).await;
    let head = app.head().await;

    // Same body, key order changed: the same command.
    let reordered: Value = serde_json::from_str(
        r#"{"data":{"environment":"prod","version":"1.4.2","service":"user-service"},
            "command_id":"retry-1","expected_version":0,"aggregate_id":"i1","type":"StartDeployment"}"#,
    )
    .unwrap();
    for retry in [&command, &reordered] {
        let again = app.command_ok(retry).await;
        assert_eq!(again, first, "a retry must return the first result");
        assert_eq!(app.head().await, head, "a retry appended something");
    }

    // Still the first result after the stream has moved on.
    app.command_ok(&cmd("ReportDeploymentProgress", "i1", json!({ "percent": 50 })))
        .await;
    let again = app.command_ok(&command).await;
    assert_eq!(again, first);
    assert_eq!(again["version"], 1);
    assert_eq!(app.head().await, head + 1);
    let log = app.events(&format!("after={}", head - 1)).await;
    assert_eq!(
        types_of(log["events"].as_array().unwrap()),
        ["DeploymentStarted", "DeploymentProgressed"]
    );

    // A retry by another credential is the same retry.
    let other = mint(&app.state, "second-operator", Role::Operator).await;
    let head = app.head().await;
    let again = app
        .post_json("/api/commands", Some(&other.secret), &command)
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(again, first);
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn reusing_a_command_id_for_a_different_command_is_422() {
    let app = setup().await;
    app.command_ok(&with(start("u1"), "command_id", json!("reuse-1"))).await;
    let head = app.head().await;
    let mut different_data = with(start("u1"), "command_id", json!("reuse-1"));
    different_data["data"]["version"] = json!("9.9.9");
    let different_type = with(
        cmd("ReportDeploymentProgress", "u1", json!({ "percent": 5 })),
        "command_id",
        json!("reuse-1"),
    );
    let different_aggregate = with(start("u2"), "command_id", json!("reuse-1"));
    for command in [&different_data, &different_type, &different_aggregate] {
        let reply = app.command(command).await;
        assert_rule(&reply, "command_id reused");
        assert!(reply.json()["detail"].as_str().unwrap().contains("reuse-1"));
    }
    assert_eq!(app.head().await, head, "a reused command_id appended something");
    let missing = app.get("/api/streams/deployment-u2", Some(&app.viewer.secret)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_refused_command_id_is_not_remembered() {
    let app = setup().await;
    // 422: progress before start; the same command later succeeds.
    let progress = with(
        cmd("ReportDeploymentProgress", "n1", json!({ "percent": 10 })),
        "command_id",
        json!("refused-1"),
    );
    assert_rule(&app.command(&progress).await, "Deployment not started");
    app.command_ok(&start("n1")).await;
    let body = app.command_ok(&progress).await;
    assert_eq!(body["events"][0]["command_id"], "refused-1");
    assert_eq!(body["events"][0]["type"], "DeploymentProgressed");

    // 422, then a different valid command with that id is decided afresh.
    let succeed = with(
        cmd("SucceedDeployment", "n2", json!({})),
        "command_id",
        json!("refused-2"),
    );
    assert_rule(&app.command(&succeed).await, "Deployment not started");
    let body = app
        .command_ok(&with(start("n2"), "command_id", json!("refused-2")))
        .await;
    assert_eq!(body["events"][0]["command_id"], "refused-2");
    assert_eq!(body["events"][0]["type"], "DeploymentStarted");

    // 409 and 400 are not remembered either.
    let conflicting = with(
        with(start("n1"), "expected_version", json!(7)),
        "command_id",
        json!("refused-3"),
    );
    assert_eq!(app.command(&conflicting).await.status, StatusCode::CONFLICT);
    let invalid = with(
        cmd("StartDeployment", "n3", json!({})),
        "command_id",
        json!("refused-4"),
    );
    assert_eq!(app.command(&invalid).await.status, StatusCode::BAD_REQUEST);
    let body = app
        .command_ok(&with(start("n3"), "command_id", json!("refused-3")))
        .await;
    assert_eq!(body["events"][0]["command_id"], "refused-3");
    let body = app
        .command_ok(&with(start("n4"), "command_id", json!("refused-4")))
        .await;
    assert_eq!(body["events"][0]["command_id"], "refused-4");
}

// ---------------------------------------------------------------------------
// GET /api/events
// ---------------------------------------------------------------------------

#[tokio::test]
async fn events_page_with_after_limit_next_after_and_head() {
    let app = setup().await;
    // 3 TokenCreated events, then 1 050 more.
    app.append_bulk("bulk-a", 600).await;
    app.append_bulk("bulk-b", 450).await;
    let head = 1053;

    let page = app.events("").await;
    assert_eq!(keys(&page), set(&["events", "next_after", "head"]));
    assert_eq!(
        positions_of(&page),
        (1..=100).collect::<Vec<_>>(),
        "default limit is 100"
    );
    assert_eq!(page["next_after"], 100);
    assert_eq!(page["head"], head);

    let page = app.events("after=100&limit=5").await;
    assert_eq!(positions_of(&page), [101, 102, 103, 104, 105]);
    assert_eq!(page["next_after"], 105);

    let page = app.events("limit=1000").await;
    assert_eq!(positions_of(&page), (1..=1000).collect::<Vec<_>>());
    assert_eq!(page["next_after"], 1000);
    for over in ["1001", "5000", "18446744073709551615"] {
        let page = app.events(&format!("limit={over}")).await;
        assert_eq!(positions_of(&page).len(), 1000, "limit={over} is capped at 1000");
    }

    // The last page ends at the head; past the head there is nothing, and the reader stays put.
    let page = app.events("after=1000&limit=1000").await;
    assert_eq!(positions_of(&page), (1001..=head).collect::<Vec<_>>());
    assert_eq!(page["next_after"], head);
    let page = app.events(&format!("after={head}")).await;
    assert_eq!(page["events"], json!([]));
    assert_eq!(page["next_after"], head);
    assert_eq!(page["head"], head);

    // Paging with next_after visits every position once, in order.
    let all = app.all_events().await;
    let positions: Vec<u64> = all.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=head).collect::<Vec<_>>());
}

#[tokio::test]
async fn event_filters_are_or_within_a_name_and_across_names() {
    let app = setup().await;
    for id in ["fa", "fb", "fc"] {
        app.command_ok(&start(id)).await;
    }
    app.command_ok(&cmd("SucceedDeployment", "fa", json!({}))).await;
    app.command_ok(&cmd("FailDeployment", "fb", json!({ "reason": "boom" })))
        .await;
    app.append_bulk("bulk-x", 2).await;
    // Log: 1-3 TokenCreated, 4 fa Started, 5 fb Started, 6 fc Started, 7 fa Succeeded, 8 fb Failed, 9-10 bulk.

    let cases: [(&str, &[u64]); 10] = [
        ("stream=deployment-fa", &[4, 7]),
        ("stream=deployment-fa&stream=deployment-fc", &[4, 6, 7]),
        ("category=deployment", &[4, 5, 6, 7, 8]),
        ("category=token&category=bulk", &[1, 2, 3, 9, 10]),
        ("type=DeploymentStarted", &[4, 5, 6]),
        ("type=DeploymentSucceeded&type=DeploymentFailed", &[7, 8]),
        ("category=deployment&type=DeploymentFailed", &[8]),
        ("stream=deployment-fa&type=DeploymentFailed", &[]),
        (
            "stream=deployment-fa&stream=deployment-fb&type=DeploymentStarted&type=DeploymentFailed",
            &[4, 5, 8],
        ),
        ("stream=deployment-nobody", &[]),
    ];
    for (query, expected) in cases {
        let page = app.events(query).await;
        assert_eq!(positions_of(&page), expected, "{query}");
        assert_eq!(page["head"], 10, "{query}");
        assert_eq!(page["next_after"], 10, "{query}: the whole log was examined");
    }
    // With a limit, next_after is the last position examined; paging on finds the rest.
    let page = app.events("type=DeploymentStarted&limit=2").await;
    assert_eq!(positions_of(&page), [4, 5]);
    assert_eq!(page["next_after"], 5);
    let page = app.events("type=DeploymentStarted&limit=2&after=5").await;
    assert_eq!(positions_of(&page), [6]);
    assert_eq!(page["next_after"], 10);
}

#[tokio::test]
async fn event_queries_are_validated() {
    let app = setup().await;
    let cases = [
        ("after=-1", "after"),
        ("after=abc", "after"),
        ("after=1.5", "after"),
        ("after=", "after"),
        ("limit=0", "limit"),
        ("limit=-5", "limit"),
        ("limit=ten", "limit"),
        ("stream=Deployment-x", "stream"),
        ("stream=deployment", "stream"),
        ("stream=deployment-a%2Fb", "stream"),
        ("stream=", "stream"),
        ("category=Deployment", "category"),
        ("category=deploy-ment", "category"),
        ("category=", "category"),
        ("type=Deployment-Started", "type"),
        ("type=", "type"),
        ("foo=1", "foo"),
        ("from_version=1", "from_version"),
        ("status=failed", "status"),
    ];
    for (query, field) in cases {
        let reply = app.get(&format!("/api/events?{query}"), Some(&app.viewer.secret)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}: {}", reply.text());
        assert_bad_request(&reply, &[field]);
    }
    // At most 100 filter values in all.
    let many: Vec<String> = (0..101).map(|i| format!("stream=deployment-{i}")).collect();
    let reply = app
        .get(&format!("/api/events?{}", many.join("&")), Some(&app.viewer.secret))
        .await;
    assert_bad_request(&reply, &["100"]);
    let reply = app
        .get(
            &format!("/api/events?{}", many[..100].join("&")),
            Some(&app.viewer.secret),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

// ---------------------------------------------------------------------------
// GET /api/streams/{stream}
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_stream_reads_from_a_version_with_a_limit() {
    let app = setup().await;
    app.command_ok(&start("s1")).await;
    for percent in [10, 20, 30] {
        app.command_ok(&cmd("ReportDeploymentProgress", "s1", json!({ "percent": percent })))
            .await;
    }
    app.command_ok(&start("s2")).await;
    let viewer = Some(app.viewer.secret.as_str());
    let versions = |body: &Value| -> Vec<u64> {
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect()
    };

    let body = app
        .get("/api/streams/deployment-s1", viewer)
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(keys(&body), set(&["stream", "version", "events"]));
    assert_eq!(body["stream"], "deployment-s1");
    assert_eq!(body["version"], 4);
    assert_eq!(versions(&body), [1, 2, 3, 4]);
    for e in body["events"].as_array().unwrap() {
        assert_eq!(e["stream"], "deployment-s1");
        assert_envelope(
            e,
            "deployment-s1",
            e["version"].as_u64().unwrap(),
            e["type"].as_str().unwrap(),
            &app.operator.actor(),
        );
    }

    let body = app
        .get("/api/streams/deployment-s1?from_version=2&limit=2", viewer)
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(versions(&body), [2, 3]);
    assert_eq!(body["version"], 4, "version is the stream's, not the page's");
    assert_eq!(body["events"][0]["data"], json!({ "percent": 10 }));
    let body = app
        .get("/api/streams/deployment-s1?from_version=4", viewer)
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(versions(&body), [4]);
    let body = app
        .get("/api/streams/deployment-s1?from_version=9", viewer)
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["version"], 4);

    let body = app
        .get("/api/streams/deployment-s1?from_version=9223372036854775807", viewer)
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(body["events"], json!([]));
    assert_problem(
        &app.get("/api/streams/deployment-nope", viewer).await,
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        &["deployment-nope"],
    );
    for bad in [
        "Deployment-s1",
        "deployment",
        "deployment-",
        "-s1",
        "deployment-a.b",
        "deploy1-x",
    ] {
        let reply = app.get(&format!("/api/streams/{bad}"), viewer).await;
        assert_bad_request(&reply, &["stream"]);
    }
    for (query, field) in [
        ("from_version=x", "from_version"),
        ("from_version=-1", "from_version"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("after=1", "after"),
    ] {
        let reply = app.get(&format!("/api/streams/deployment-s1?{query}"), viewer).await;
        assert_bad_request(&reply, &[field]);
    }
}

#[tokio::test]
async fn a_from_version_past_i64_reads_nothing() {
    let app = setup().await;
    app.command_ok(&start("s1")).await;
    app.command_ok(&cmd("SucceedDeployment", "s1", json!({}))).await;
    for huge in ["9223372036854775808", "18446744073709551615"] {
        let body = app
            .get(
                &format!("/api/streams/deployment-s1?from_version={huge}"),
                Some(&app.viewer.secret),
            )
            .await
            .ok_json(StatusCode::OK);
        assert_eq!(body["version"], 2);
        assert_eq!(body["events"], json!([]), "from_version={huge} returned events");
    }
}

#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_is_a_problem() {
    let app = setup().await;
    for (method, uri, token) in [
        (Method::GET, "/api/streams/deployment-%FF", &app.viewer.secret),
        (Method::GET, "/api/deployments/%FF%FE", &app.viewer.secret),
        (Method::DELETE, "/api/tokens/%FF", &app.admin.secret),
    ] {
        let reply = app
            .send(request(method.clone(), uri, Some(token)).body(Body::empty()).unwrap())
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{method} {uri}");
        assert_bad_request(&reply, &[]);
    }
}

// ---------------------------------------------------------------------------
// GET /api/deployments
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_deployments_read_model_serves_every_field() {
    let app = setup().await;
    app.start_projector();
    let ops = app.operator.actor();

    app.command_ok(&start("dp-ok")).await;
    app.command_ok(&cmd(
        "ReportDeploymentProgress",
        "dp-ok",
        json!({ "percent": 60, "message": "canary healthy" }),
    ))
    .await;
    app.command_ok(&cmd("SucceedDeployment", "dp-ok", json!({}))).await;
    app.command_ok(&cmd("StartDeployment", "dp-fail", json!({ "service": "billing" })))
        .await;
    app.command_ok(&cmd(
        "FailDeployment",
        "dp-fail",
        json!({ "reason": "migrations failed" }),
    ))
    .await;
    app.command_ok(&start("dp-cancel")).await;
    app.command_ok(&cmd(
        "CancelDeployment",
        "dp-cancel",
        json!({ "reason": "wrong build" }),
    ))
    .await;
    app.command_ok(&start("dp-run")).await;
    let last = app
        .command_ok(&cmd(
            "ReportDeploymentProgress",
            "dp-run",
            json!({ "percent": 25, "message": "rolling" }),
        ))
        .await;
    let position = last["position"].as_u64().unwrap();

    let list = app.deployments_at("", position).await;
    assert_eq!(keys(&list), set(&["deployments", "position"]));
    assert_eq!(list["position"], position);
    let deployments = list["deployments"].as_array().unwrap();
    let ids: Vec<&str> = deployments.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["dp-run", "dp-cancel", "dp-fail", "dp-ok"],
        "most recently started first"
    );
    for d in deployments {
        assert_eq!(
            keys(d),
            set(&[
                "id",
                "service",
                "version",
                "environment",
                "status",
                "progress",
                "message",
                "reason",
                "started_by",
                "started_at",
                "updated_at",
                "stream_version"
            ]),
            "{d}"
        );
        assert_eq!(d["started_by"], ops);
        for field in ["started_at", "updated_at"] {
            let t = d[field].as_str().unwrap();
            assert!(is_rfc3339_utc_millis(t), "{field} {t:?}");
        }
        assert!(d["updated_at"].as_str().unwrap() >= d["started_at"].as_str().unwrap());
    }

    // Each deployment, by id, is the same as in the list.
    let by_id = |id: &str| {
        let d = deployments.iter().find(|d| d["id"] == id).unwrap().clone();
        (id.to_owned(), d)
    };
    for (id, in_list) in ["dp-ok", "dp-fail", "dp-cancel", "dp-run"].map(by_id) {
        let one = app
            .get(&format!("/api/deployments/{id}"), Some(&app.viewer.secret))
            .await
            .ok_json(StatusCode::OK);
        assert_eq!(one, in_list);
    }
    let (_, ok) = by_id("dp-ok");
    assert_eq!(ok["service"], "user-service");
    assert_eq!(ok["version"], "1.4.2");
    assert_eq!(ok["environment"], "prod");
    assert_eq!(ok["status"], "succeeded");
    assert_eq!(ok["progress"], 100);
    assert_eq!(ok["message"], "canary healthy");
    assert_eq!(ok["reason"], Value::Null);
    assert_eq!(ok["stream_version"], 3);

    let (_, failed) = by_id("dp-fail");
    assert_eq!(failed["service"], "billing");
    assert_eq!(failed["version"], Value::Null);
    assert_eq!(failed["environment"], Value::Null);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["progress"], 0);
    assert_eq!(failed["message"], Value::Null);
    assert_eq!(failed["reason"], "migrations failed");
    assert_eq!(failed["stream_version"], 2);

    let (_, cancelled) = by_id("dp-cancel");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["reason"], "wrong build");
    assert_eq!(cancelled["stream_version"], 2);

    let (_, running) = by_id("dp-run");
    assert_eq!(running["status"], "in_progress");
    assert_eq!(running["progress"], 25);
    assert_eq!(running["message"], "rolling");
    assert_eq!(running["reason"], Value::Null);
    assert_eq!(running["stream_version"], 2);
    let recorded = last["events"][0]["recorded_at"].clone();
    assert_eq!(running["updated_at"], recorded);

    // ?status= filters.
    for (status, expected) in [
        ("in_progress", vec!["dp-run"]),
        ("succeeded", vec!["dp-ok"]),
        ("failed", vec!["dp-fail"]),
        ("cancelled", vec!["dp-cancel"]),
    ] {
        let list = app.deployments_at(&format!("?status={status}"), position).await;
        let ids: Vec<&str> = list["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, expected, "status={status}");
        assert_eq!(list["position"], position);
    }
    let viewer = Some(app.viewer.secret.as_str());
    for (query, field) in [
        ("status=done", "status"),
        ("status=IN_PROGRESS", "status"),
        ("status=", "status"),
        ("colour=red", "colour"),
        ("limit=0", "limit"),
    ] {
        let reply = app.get(&format!("/api/deployments?{query}"), viewer).await;
        assert_bad_request(&reply, &[field]);
    }

    // A later change shows up once the read model has caught up with it.
    let done = app.command_ok(&cmd("SucceedDeployment", "dp-run", json!({}))).await;
    let list = app
        .deployments_at("?status=succeeded", done["position"].as_u64().unwrap())
        .await;
    let ids: Vec<&str> = list["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dp-run", "dp-ok"]);

    assert_problem(
        &app.get("/api/deployments/no-such-deployment", viewer).await,
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        &["no-such-deployment"],
    );
    assert_bad_request(&app.get("/api/deployments/a.b", viewer).await, &["id"]);
    assert_unauthorized(&app.get("/api/deployments/dp-ok", None).await);
}

// ---------------------------------------------------------------------------
// Audit, health, metrics
// ---------------------------------------------------------------------------

#[tokio::test]
async fn audit_verify_reports_an_intact_chain_anyone_can_recompute() {
    let app = setup().await;
    app.command_ok(&start("a1")).await;
    app.command_ok(&cmd(
        "ReportDeploymentProgress",
        "a1",
        json!({ "percent": 5, "message": "a/b \"quoted\" é ✓ </script>" }),
    ))
    .await;
    app.command_ok(&cmd("FailDeployment", "a1", json!({ "reason": "line\nbreak\ttab" })))
        .await;

    let report = app
        .get("/api/audit/verify", Some(&app.viewer.secret))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(
        keys(&report),
        set(&["ok", "checked", "head_position", "head_hash", "first_bad_position"])
    );
    let all = app.all_events().await;
    let last = all.last().unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["checked"], all.len());
    assert_eq!(report["head_position"], last["position"]);
    assert_eq!(report["head_hash"], last["hash"]);
    assert_eq!(report["first_bad_position"], Value::Null);

    // The chain recomputes from what the API serves (API.md §3).
    let mut prev = "0".repeat(64);
    for e in &all {
        let mut without = e.clone();
        without.as_object_mut().unwrap().remove("hash");
        let recomputed = sha256_hex(format!("{prev}\n{}", canonical(&without)).as_bytes());
        assert_eq!(e["hash"], recomputed, "position {}", e["position"]);
        prev = recomputed;
    }
}

#[tokio::test]
async fn health_readiness_and_metrics_need_no_credential() {
    let app = setup().await;
    let health = app.get("/healthz", None).await.ok_json(StatusCode::OK);
    assert_eq!(health["status"], "ok");
    let ready = app.get("/readyz", None).await.ok_json(StatusCode::OK);
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["head"], 3);

    app.command_ok(&start("metrics-1")).await;
    let metrics = app.get("/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.content_type().starts_with("text/plain"),
        "{}",
        metrics.content_type()
    );
    let text = metrics.text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("herald_commands_total{") && l.contains("outcome=\"ok\"")),
        "no herald_commands_total{{outcome=\"ok\"}} sample in:\n{text}"
    );
    assert!(text.contains("# TYPE herald_commands_total counter"), "{text}");
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

#[tokio::test]
async fn admins_create_and_revoke_tokens() {
    let app = setup().await;
    let head = app.head().await;
    let created = app
        .post_json(
            "/api/tokens",
            Some(&app.admin.secret),
            &json!({ "name": "nightly ci", "role": "operator" }),
        )
        .await
        .ok_json(StatusCode::CREATED);
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["token"].as_str().unwrap().to_owned();
    assert!(!id.is_empty() && secret.len() >= 32, "{created}");
    let minted = Token {
        id: id.clone(),
        name: "nightly ci".into(),
        secret: secret.clone(),
    };

    // The token works, with its role and name.
    let body = app
        .post_json("/api/commands", Some(&secret), &start("tok-1"))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(body["events"][0]["actor"], minted.actor());

    // TokenCreated, by the admin, without the secret or its hash.
    let log = app.events(&format!("after={head}&type=TokenCreated")).await;
    let events = log["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{log}");
    let e = &events[0];
    assert_envelope(e, &format!("token-{id}"), 1, "TokenCreated", &app.admin.actor());
    assert_eq!(e["data"]["name"], "nightly ci");
    assert_eq!(e["data"]["role"], "operator");
    let raw = e.to_string();
    assert!(!raw.contains(&secret), "the secret is in the log: {raw}");
    assert!(
        !raw.contains(&sha256_hex(secret.as_bytes())),
        "the secret's hash is in the log: {raw}"
    );
    assert!(!raw.contains("hrld_"), "{raw}");
    for key in keys(&e["data"]) {
        assert!(
            !key.contains("secret") && !key.contains("hash") && key != "token",
            "{raw}"
        );
    }

    // Only an admin mints tokens.
    let head = app.head().await;
    for token in [&app.operator.secret, &app.viewer.secret] {
        let reply = app
            .post_json(
                "/api/tokens",
                Some(token),
                &json!({ "name": "sneaky", "role": "admin" }),
            )
            .await;
        assert_problem(&reply, StatusCode::FORBIDDEN, "forbidden", "Forbidden", &["admin"]);
    }
    assert_unauthorized(
        &app.post_json("/api/tokens", None, &json!({ "name": "anon", "role": "viewer" }))
            .await,
    );
    for (body, field) in [
        (json!({ "role": "viewer" }), "name"),
        (json!({ "name": "x" }), "role"),
        (json!({ "name": "x", "role": "superuser" }), "role"),
        (json!({ "name": "", "role": "viewer" }), "name"),
        (json!({ "name": "bad/name", "role": "viewer" }), "name"),
        (json!({ "name": "x", "role": "viewer", "secret": "mine" }), "secret"),
    ] {
        let reply = app.post_json("/api/tokens", Some(&app.admin.secret), &body).await;
        assert_bad_request(&reply, &[field]);
    }
    assert_eq!(app.head().await, head, "a refused token request appended something");

    // Revoking: 204, then the token stops working; again or unknown: 404.
    let revoke = |token_id: &str, by: &str| {
        request(Method::DELETE, &format!("/api/tokens/{token_id}"), Some(by))
            .body(Body::empty())
            .unwrap()
    };
    let reply = app.send(revoke(&id, &app.operator.secret)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = app.send(revoke(&id, &app.admin.secret)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert!(reply.body.is_empty());
    assert_unauthorized(&app.post_json("/api/commands", Some(&secret), &start("tok-2")).await);
    assert_unauthorized(&app.get("/api/events", Some(&secret)).await);
    for unknown in [id.as_str(), "0000000000000000", "nope"] {
        assert_problem(
            &app.send(revoke(unknown, &app.admin.secret)).await,
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            &[unknown],
        );
    }
    let log = app.events(&format!("stream=token-{id}")).await;
    let events = log["events"].as_array().unwrap();
    assert_eq!(types_of(events), ["TokenCreated", "TokenRevoked"]);
    assert_envelope(
        &events[1],
        &format!("token-{id}"),
        2,
        "TokenRevoked",
        &app.admin.actor(),
    );
    assert!(!events[1].to_string().contains(&secret));
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let app = setup().await;
    for uri in ["/api/nope", "/api/events/", "/api/streams/", "/api"] {
        let reply = app.get(uri, Some(&app.viewer.secret)).await;
        assert_problem(&reply, StatusCode::NOT_FOUND, "not-found", "Not found", &[uri]);
        assert_eq!(app.get(uri, None).await.status, StatusCode::NOT_FOUND);
    }
    // Outside /api/ a path is the console's (a client-side route): HTML, never
    // a problem; 200 with the console built, 404 with how to build it otherwise.
    let reply = app.get("/deployments/d-1", None).await;
    assert!(
        matches!(reply.status, StatusCode::OK | StatusCode::NOT_FOUND),
        "{}",
        reply.status
    );
    assert!(
        reply.content_type().starts_with("text/html"),
        "{}",
        reply.content_type()
    );
}

#[tokio::test]
async fn a_wrong_method_is_405() {
    let app = setup().await;
    for (method, uri) in [
        (Method::GET, "/api/commands"),
        (Method::PUT, "/api/commands"),
        (Method::POST, "/api/events"),
        (Method::DELETE, "/api/deployments/x"),
        (Method::POST, "/healthz"),
        (Method::GET, "/api/tokens/x"),
    ] {
        let reply = app
            .send(
                request(method.clone(), uri, Some(&app.admin.secret))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {}",
            reply.text()
        );
        assert_eq!(reply.content_type(), "application/problem+json", "{method} {uri}");
        let problem = reply.json();
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(method.as_str()) && detail.contains(uri), "{detail}");
        assert!(
            !reply.header(header::ALLOW).is_empty(),
            "{method} {uri}: a 405 names the allowed methods"
        );
    }
}

#[tokio::test]
async fn a_405_problem_says_405() {
    let app = setup().await;
    let reply = app
        .send(
            request(Method::GET, "/api/commands", Some(&app.admin.secret))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let problem = reply.json();
    assert_eq!(
        problem["status"], 405,
        "the problem's status differs from the response's: {problem}"
    );
    assert_ne!(problem["type"], "/problems/bad-request", "{problem}");
    assert_ne!(problem["title"], "Bad request", "{problem}");
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_of_one_command_id_all_get_the_first_result() {
    let app = setup().await;
    // Several rounds, so that a race that is lost once in a while is still caught.
    for round in 0..8 {
        let head = app.head().await;
        let command = with(
            with(start(&format!("cc{round}")), "expected_version", json!(0)),
            "command_id",
            json!(format!("same-{round}")),
        );
        let replies = futures_util::future::join_all((0..16).map(|_| app.command(&command))).await;
        let first = replies[0].ok_json(StatusCode::OK);
        for reply in &replies {
            assert_eq!(reply.ok_json(StatusCode::OK), first, "round {round}");
        }
        assert_eq!(app.head().await, head + 1, "round {round}: a retry appended something");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_without_expected_version_all_succeed() {
    let app = setup().await;
    app.command_ok(&start("cc2")).await;
    let commands: Vec<Value> = (0..50)
        .map(|i| cmd("ReportDeploymentProgress", "cc2", json!({ "percent": i })))
        .collect();
    let replies = futures_util::future::join_all(commands.iter().map(|c| app.command(c))).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(!reply.json()["events"][0]["position"].is_null());
    }
    let stream = app
        .get("/api/streams/deployment-cc2", Some(&app.viewer.secret))
        .await
        .ok_json(StatusCode::OK);
    assert_eq!(stream["version"], 51);
}
