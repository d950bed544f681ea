//! Two herald processes on one data directory (two `AppState`s opened on the
//! same files, each with its own store, writer thread and read-model
//! connection): the deployments resource stream of each sees every change to
//! the read model, whichever process's projector applied it (issue 9, item 13).

mod support;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use herald_core::aggregate::to_new_event;
use herald_core::auth::Role;
use herald_core::deployment::DeploymentEvent;
use herald_core::envelope::Actor;
use herald_core::store::{
    AppendOutcome, AppendRequest, Committed, EventStore, ExpectedVersion, Filter, Head, LiveReceiver, Page, StoreError,
    StreamSlice,
};
use herald_server::projector::Publisher;
use herald_server::{AppState, ServerConfig};
use herald_store::readmodel::{Projector, SqliteDeployments};
use herald_store::sqlite::SqliteStore;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::Running;
use tempfile::TempDir;
use tower::ServiceExt;

/// The bound on one wait: generous, it only bounds "it happens at all".
const WAIT: Duration = Duration::from_secs(10);

fn config() -> ServerConfig {
    ServerConfig {
        command_rate: 0,
        keepalive: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

/// One "process": every store opened anew on `dir`.
fn open_state(dir: &Path, store: Option<Arc<dyn EventStore>>) -> AppState {
    let store = match store {
        Some(store) => store,
        None => SqliteStore::open(dir).expect("open store"),
    };
    AppState::new(
        store,
        herald_store::credentials::SqliteCredentials::open(dir).expect("open credentials"),
        herald_store::accounts::SqliteAccounts::open(dir).expect("open accounts"),
        SqliteDeployments::open(dir).expect("open read model"),
        config(),
    )
    .expect("state")
}

/// A process serving `state` through `herald_server::run` (projector included).
struct Node {
    base: String,
    _running: Running,
}

async fn serve(state: AppState) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    Node {
        base: format!("http://{addr}"),
        _running: Running::spawn(state, listener),
    }
}

async fn mint(state: &AppState) -> String {
    support::mint(state, "shared-store-tests", "operator", Role::Operator)
        .await
        .secret
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

async fn command(node: &Node, token: &str, command_type: &str, id: &str, data: Value) -> u64 {
    let body = json!({ "type": command_type, "aggregate_id": id, "data": data });
    let r = client()
        .post(format!("{}/api/commands", node.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("POST /api/commands");
    assert_eq!(r.status(), 200, "{command_type} {id}");
    let answer: Value = r.json().await.expect("answer");
    answer["position"].as_u64().expect("position")
}

/// One SSE message: (id, event, data).
type Frame = (Option<String>, Option<String>, Option<String>);

/// Reads SSE frames from any byte source (comments skipped).
struct Sse<S> {
    source: S,
    buf: Vec<u8>,
    frames: VecDeque<Frame>,
}

impl<S, F> Sse<S>
where
    S: FnMut() -> F,
    F: std::future::Future<Output = Option<Vec<u8>>>,
{
    fn new(source: S) -> Self {
        Sse {
            source,
            buf: Vec::new(),
            frames: VecDeque::new(),
        }
    }

    /// The next frame with an `event:` field within `wait`, or `None`.
    async fn next_within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(frame) = self.frames.pop_front() {
                if frame.1.is_some() {
                    return Some(frame);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, (self.source)()).await.ok()??;
            self.buf.extend_from_slice(&chunk);
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                let mut frame: Frame = (None, None, None);
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        frame.0 = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        frame.1 = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        frame.2 = Some(v.to_owned());
                    }
                }
                self.frames.push_back(frame);
            }
        }
    }

    async fn next(&mut self) -> Frame {
        self.next_within(WAIT).await.expect("a frame arrives in time")
    }
}

/// `GET /api/deployments/live` on a running node.
async fn subscribe_http(
    node: &Node,
    token: &str,
) -> Sse<impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<u8>>> + Send>>> {
    let r = client()
        .get(format!("{}/api/deployments/live", node.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /api/deployments/live");
    assert_eq!(r.status(), 200);
    let r = Arc::new(tokio::sync::Mutex::new(r));
    Sse::new(move || {
        let r = r.clone();
        Box::pin(async move { r.lock().await.chunk().await.ok().flatten().map(|b| b.to_vec()) })
            as std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<u8>>> + Send>>
    })
}

fn view_of(frame: &Frame) -> Value {
    assert_eq!(frame.1.as_deref(), Some("deployment"), "{frame:?}");
    serde_json::from_str(frame.2.as_deref().expect("data")).expect("view JSON")
}

fn id_of(frame: &Frame) -> u64 {
    frame.0.as_deref().expect("id").parse().expect("numeric id")
}

/// A log that shows nothing new to its reader: a process whose projector can
/// never be the one that applies an event (everything else is the real store).
struct NothingNew(Arc<SqliteStore>);

#[async_trait::async_trait]
impl EventStore for NothingNew {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.0.append(request).await
    }
    async fn find_command(&self, command_id: &str) -> Result<Option<(String, Committed)>, StoreError> {
        self.0.find_command(command_id).await
    }
    async fn read_stream(&self, stream: &str, from_version: u64, limit: usize) -> Result<StreamSlice, StoreError> {
        self.0.read_stream(stream, from_version, limit).await
    }
    async fn read_all(&self, after: u64, _filter: &Filter, _limit: usize) -> Result<Page, StoreError> {
        Ok(Page {
            events: Vec::new(),
            next_after: after,
            head: after,
        })
    }
    async fn head(&self) -> Result<Head, StoreError> {
        self.0.head().await
    }
    fn live(&self) -> LiveReceiver {
        self.0.live()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_sent_to_one_process_reaches_the_deployment_streams_of_the_other() {
    let dir = TempDir::new().expect("temp dir");
    let a = open_state(dir.path(), None);
    let b = open_state(dir.path(), None);
    let token = mint(&a).await;
    let (node_a, node_b) = (serve(a).await, serve(b).await);

    let mut on_b = subscribe_http(&node_b, &token).await;
    let snapshot = on_b.next().await;
    assert_eq!(snapshot.1.as_deref(), Some("snapshot"));

    let p = command(&node_a, &token, "StartDeployment", "web", json!({ "service": "web" })).await;
    let change = on_b.next().await;
    assert_eq!(view_of(&change)["id"], "web");
    assert!(id_of(&change) >= p, "{change:?} reflects {p}");

    let p = command(
        &node_a,
        &token,
        "ReportDeploymentProgress",
        "web",
        json!({ "percent": 30 }),
    )
    .await;
    let change = on_b.next().await;
    assert_eq!(view_of(&change)["progress"], 30);
    assert!(id_of(&change) >= p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_another_process_applied_reaches_this_process_deployment_streams() {
    let dir = TempDir::new().expect("temp dir");
    let a = open_state(dir.path(), None);
    // B's projector runs, but its log never shows it anything to apply: every
    // change is applied by A's projector.
    let b_store = SqliteStore::open(dir.path()).expect("open store");
    let b = open_state(dir.path(), Some(Arc::new(NothingNew(b_store))));
    let token = mint(&a).await;
    let (node_a, node_b) = (serve(a).await, serve(b).await);

    let mut on_b = subscribe_http(&node_b, &token).await;
    assert_eq!(on_b.next().await.1.as_deref(), Some("snapshot"));

    let p = command(&node_a, &token, "StartDeployment", "api", json!({ "service": "api" })).await;
    let change = on_b.next().await;
    let view = view_of(&change);
    assert_eq!(view["id"], "api");
    assert_eq!(view["status"], "in_progress");
    assert!(id_of(&change) >= p);

    command(&node_a, &token, "SucceedDeployment", "api", json!({})).await;
    let change = on_b.next().await;
    assert_eq!(view_of(&change)["status"], "succeeded");
    // Each change once.
    assert_eq!(on_b.next_within(Duration::from_millis(1500)).await, None);
}

async fn deploy(store: &SqliteStore, id: &str, event: DeploymentEvent) -> u64 {
    store
        .append(AppendRequest {
            stream: format!("deployment-{id}"),
            expected: ExpectedVersion::Any,
            events: vec![to_new_event(&event)],
            actor: Actor::system("shared-store-tests"),
            command_id: uuid::Uuid::new_v4().to_string(),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            idempotency_fingerprint: None,
        })
        .await
        .expect("append")
        .into_committed()
        .events[0]
        .position()
}

fn started(service: &str) -> DeploymentEvent {
    DeploymentEvent::DeploymentStarted {
        service: service.into(),
        version: None,
        environment: None,
    }
}

/// B publishes less often than A applies (it can always be behind): a
/// subscriber whose snapshot reflects a checkpoint B never published gets the
/// changes after it, and not again the ones its snapshot holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_between_two_published_positions_gets_each_change_once() {
    let dir = TempDir::new().expect("temp dir");
    // A: a log and a projector, driven step by step.
    let a_store = SqliteStore::open(dir.path()).expect("open store");
    let a_model = SqliteDeployments::open(dir.path()).expect("open read model");
    let mut a_projector = Projector::new(a_store.clone(), a_model);
    // B: the HTTP app without its projector task; its publisher is driven by hand.
    let b = open_state(dir.path(), None);
    let token = mint(&b).await;
    let mut publisher = Publisher::start(&b).await.expect("publisher");
    while !a_projector.process_next(100).await.expect("step").caught_up() {}
    assert_eq!(
        publisher.publish(&b).await.expect("publish"),
        0,
        "no deployment changed yet"
    );

    let p1 = deploy(&a_store, "one", started("one")).await;
    while !a_projector.process_next(100).await.expect("step").caught_up() {}

    let response = herald_server::app(b.clone())
        .oneshot(
            Request::get("/api/deployments/live")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let body = Arc::new(tokio::sync::Mutex::new(response.into_body()));
    let mut sse = Sse::new(move || {
        let body = body.clone();
        async move {
            loop {
                match body.lock().await.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Some(data.to_vec());
                        }
                    }
                    _ => return None,
                }
            }
        }
    });
    let snapshot = sse.next().await;
    assert_eq!(snapshot.1.as_deref(), Some("snapshot"));
    let listed: Value = serde_json::from_str(snapshot.2.as_deref().expect("data")).expect("JSON");
    assert_eq!(listed["deployments"][0]["id"], "one", "{listed}");
    assert!(id_of(&snapshot) >= p1);

    let p2 = deploy(&a_store, "two", started("two")).await;
    while !a_projector.process_next(100).await.expect("step").caught_up() {}
    // B publishes both changes at once: "one" (in the snapshot) and "two".
    assert_eq!(publisher.publish(&b).await.expect("publish"), 1);
    assert!(publisher.published() >= p2);
    let change = sse.next().await;
    assert_eq!(view_of(&change)["id"], "two");
    assert!(id_of(&change) >= p2);
    assert_eq!(
        sse.next_within(Duration::from_millis(500)).await,
        None,
        "\"one\" is not sent again"
    );
    // Nothing new: nothing published.
    assert_eq!(publisher.publish(&b).await.expect("publish"), 0);
}
