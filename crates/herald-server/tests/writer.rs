//! The write path as the API shows it (`/readyz`, commands) when the event
//! store's writer panics, and the audit endpoints: `GET /api/audit/head`,
//! `?expect=` and the verification rate limits. The router is driven in
//! process, each test on its own embedded store.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use herald_core::auth::Role;
use herald_server::sse::Sse;
use herald_server::{AppState, ServerConfig};
use herald_store::accounts::SqliteAccounts;
use herald_store::credentials::SqliteCredentials;
use herald_store::sqlite::{SqliteConfig, SqliteStore, WriterFatal};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::mint;
use tower::ServiceExt;

struct App {
    store: Arc<SqliteStore>,
    state: AppState,
    router: Router,
    operator: String,
    viewer: String,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    content_type: String,
    retry_after: Option<String>,
    body: Value,
}

async fn setup_with(config: SqliteConfig) -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open_with(dir.path(), Arc::new(Sse), config).expect("open the store");
    let state = AppState::new(
        store.clone(),
        SqliteCredentials::open(dir.path()).expect("credentials"),
        SqliteAccounts::open(dir.path()).expect("accounts"),
        dir.path(),
        ServerConfig::default(),
    )
    .expect("state");
    let operator = mint(&state, "test", "ci", Role::Operator).await.secret;
    let viewer = mint(&state, "test", "dashboard", Role::Viewer).await.secret;
    App {
        router: herald_server::app(state.clone()),
        store,
        state,
        operator,
        viewer,
        _dir: dir,
    }
}

async fn setup() -> App {
    setup_with(SqliteConfig::default()).await
}

impl App {
    async fn send(&self, req: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(req).await.expect("the router never fails");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        Reply {
            status: parts.status,
            content_type: header(header::CONTENT_TYPE).unwrap_or_default(),
            retry_after: header(header::RETRY_AFTER),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> Reply {
        let mut req = Request::get(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        self.send(req.body(Body::empty()).expect("request")).await
    }

    async fn start(&self, id: &str) -> Reply {
        let body = json!({
            "type": "StartDeployment",
            "aggregate_id": id,
            "data": { "service": "api", "version": "1.0.0", "environment": "prod" },
        });
        self.send(
            Request::post("/api/commands")
                .header(header::AUTHORIZATION, format!("Bearer {}", self.operator))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
    }
}

#[tokio::test]
async fn a_writer_panic_fails_its_command_with_503_and_readyz_until_the_next_commit() {
    let app = setup().await;
    assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK);
    assert_eq!(app.start("d1").await.status, StatusCode::OK);

    app.store.inject_writer_panic();
    let failed = app.start("d2").await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE, "{}", failed.body);
    assert_eq!(failed.content_type, "application/problem+json");
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.body);
    assert_eq!(ready.content_type, "application/problem+json");
    assert!(
        ready.body["detail"].as_str().unwrap_or("").contains("panicked"),
        "readyz names the cause: {}",
        ready.body
    );

    let ok = app.start("d2").await;
    assert_eq!(ok.status, StatusCode::OK, "the next command succeeds: {}", ok.body);
    assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK);

    // Two tokens, d1, d2: gapless, and the chain verifies.
    let events = app.get("/api/events?limit=100", Some(&app.viewer)).await.body;
    let positions: Vec<u64> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["position"].as_u64().expect("position"))
        .collect();
    assert_eq!(positions, vec![1, 2, 3, 4]);
    let report = app.get("/api/audit/verify", Some(&app.viewer)).await;
    assert_eq!(report.status, StatusCode::OK);
    assert_eq!(report.body["ok"], true, "{}", report.body);
    assert_eq!(report.body["checked"], 4);
}

#[tokio::test]
async fn a_writer_that_keeps_panicking_stops_and_readyz_says_it_is_down() {
    let fatal: Arc<Mutex<u32>> = Arc::default();
    let count = fatal.clone();
    let app = setup_with(SqliteConfig {
        writer_panic_limit: 2,
        on_writer_fatal: WriterFatal(Arc::new(move |_| *count.lock().unwrap() += 1)),
        ..SqliteConfig::default()
    })
    .await;
    app.store.inject_writer_panics(u32::MAX);
    for id in ["d1", "d2"] {
        let r = app.start(id).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while *fatal.lock().unwrap() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*fatal.lock().unwrap(), 1, "the exit path ran once");
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        ready.body["detail"].as_str().unwrap_or("").contains("down"),
        "{}",
        ready.body
    );
    let r = app.start("d3").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
}

#[tokio::test]
async fn audit_head_is_an_anchor_that_verify_checks() {
    let app = setup().await;
    let head = app.get("/api/audit/head", Some(&app.viewer)).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.body["position"], 2);
    let hash = head.body["hash"].as_str().expect("hash").to_owned();
    assert_eq!(hash.len(), 64);
    assert!(head.body["recorded_at"].as_str().is_some(), "{}", head.body);
    assert_eq!(app.get("/api/audit/head", None).await.status, StatusCode::UNAUTHORIZED);

    assert_eq!(app.start("d1").await.status, StatusCode::OK);
    let ok = app
        .get(&format!("/api/audit/verify?expect=2:{hash}"), Some(&app.viewer))
        .await;
    assert_eq!(ok.body["ok"], true, "later events are fine: {}", ok.body);

    let wrong = format!("2:{}", "ab".repeat(32));
    let bad = app
        .get(&format!("/api/audit/verify?expect={wrong}"), Some(&app.operator))
        .await;
    assert_eq!(bad.status, StatusCode::OK);
    assert_eq!(bad.body["ok"], false);
    assert_eq!(bad.body["first_bad_position"], 2);
    assert!(
        bad.body["problem"].as_str().unwrap_or("").contains("expected"),
        "{}",
        bad.body
    );

    let third = mint(&app.state, "test", "third", Role::Viewer).await.secret;
    let malformed = app.get("/api/audit/verify?expect=2", Some(&third)).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.content_type, "application/problem+json");
}

#[tokio::test]
async fn audit_verify_runs_once_at_a_time_and_once_per_credential_every_10_s() {
    let app = setup().await;
    let first = app.get("/api/audit/verify", Some(&app.viewer)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let again = app.get("/api/audit/verify", Some(&app.viewer)).await;
    assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS, "{}", again.body);
    assert_eq!(again.content_type, "application/problem+json");
    let retry: u64 = again.retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=10).contains(&retry), "{retry}");

    // Another credential while one verification runs: 429 too.
    let running = app.state.audit.begin("someone-else").expect("a free slot");
    let busy = app.get("/api/audit/verify", Some(&app.operator)).await;
    assert_eq!(busy.status, StatusCode::TOO_MANY_REQUESTS, "{}", busy.body);
    assert!(busy.retry_after.is_some());
    drop(running);
    // Refused while busy did not count against it.
    let free = app.get("/api/audit/verify", Some(&app.operator)).await;
    assert_eq!(free.status, StatusCode::OK, "{}", free.body);
}
