//! Two herald processes on one data directory (two `AppState`s opened on the
//! same files, each with its own store, writer thread and read-model
//! connections): each process's consumer runner publishes every change to the
//! read model on its `state.live.resources` (what its resource streams are
//! served from), whichever process applied it (issue 9, item 13; issue 10).
//!
//! The resource streams themselves (`/api/deployments/live` and the others)
//! are served from these batches; their HTTP side is tested in
//! tests/resources.rs. Here the batches are read as a stream reads them.

mod support;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use herald_core::aggregate::to_new_event;
use herald_core::auth::Role;
use herald_core::envelope::Actor;
use herald_core::store::{
    AppendOutcome, AppendRequest, Committed, EventStore, ExpectedVersion, Filter, Head, LiveReceiver, Page, StoreError,
    StreamSlice,
};
use herald_server::consumers::{CHANGED_PAGE, Publisher, encode};
use herald_server::domains::deployments::aggregate::DeploymentEvent;
use herald_server::domains::deployments::projection::Deployments;
use herald_server::resources::ResourceBatch;
use herald_server::sse::Sse;
use herald_server::{AppState, ServerConfig};
use herald_store::projection::{ChangedPage, ChangedResource, Consumer, ReadModel};
use herald_store::sqlite::SqliteStore;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::Running;
use tempfile::TempDir;
use tokio::sync::broadcast;
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
        None => SqliteStore::open(dir, Arc::new(Sse)).expect("open store"),
    };
    AppState::new(
        store,
        herald_store::credentials::SqliteCredentials::open(dir).expect("open credentials"),
        herald_store::accounts::SqliteAccounts::open(dir).expect("open accounts"),
        dir,
        config(),
    )
    .expect("state")
}

/// A process serving `state` through `herald_server::run` (consumer runner included).
struct Node {
    base: String,
    state: AppState,
    _running: Running,
}

async fn serve(state: AppState) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let node = Node {
        base: format!("http://{addr}"),
        state: state.clone(),
        _running: Running::spawn(state, listener),
    };
    // `run` serves once every read model's task knows where it publishes from:
    // a change after this reaches what a test subscribed to.
    let deadline = tokio::time::Instant::now() + WAIT;
    while client().get(format!("{}/healthz", node.base)).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the node never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node
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

/// Parses SSE frames (`id:`, `event:`, `data:` up to a blank line).
fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
    let text = std::str::from_utf8(bytes).expect("SSE is UTF-8");
    assert!(text.is_empty() || text.ends_with("\n\n"), "whole frames: {text:?}");
    text.split_terminator("\n\n")
        .map(|block| {
            let mut frame: Frame = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    frame.0 = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    frame.1 = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    assert!(frame.2.is_none(), "one data line: {block:?}");
                    frame.2 = Some(v.to_owned());
                } else {
                    panic!("unexpected line {line:?} in {block:?}");
                }
            }
            frame
        })
        .collect()
}

/// A process's published resource batches, read as a resource stream reads
/// them: the deployment frames, one by one.
struct Published {
    rx: broadcast::Receiver<Arc<ResourceBatch>>,
    frames: VecDeque<Frame>,
}

impl Published {
    /// Subscribes to `state`'s batches (a stream subscribes before it reads its state).
    fn subscribe(state: &AppState) -> Self {
        Published {
            rx: state.live.resources.subscribe("deployment"),
            frames: VecDeque::new(),
        }
    }

    /// The next deployment frame within `wait`, or `None`.
    async fn next_within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Some(frame);
            }
            let batch = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return None,
                Ok(Ok(batch)) => batch,
                Ok(Err(e)) => panic!("the resource batches: {e}"),
            };
            assert_eq!(batch.projection, "deployments");
            for entry in batch.entries.iter().filter(|e| e.kind == "deployment") {
                let frames = parse_frames(&batch.frame(entry));
                assert_eq!(frames.len(), 1, "one frame per entry");
                self.frames.extend(frames);
            }
        }
    }

    async fn next(&mut self) -> Frame {
        self.next_within(WAIT).await.expect("a frame arrives in time")
    }
}

fn view_of(frame: &Frame) -> Value {
    assert_eq!(frame.1.as_deref(), Some("deployment"), "{frame:?}");
    serde_json::from_str(frame.2.as_deref().expect("data")).expect("view JSON")
}

fn id_of(frame: &Frame) -> u64 {
    frame.0.as_deref().expect("id").parse().expect("numeric id")
}

/// A log that shows nothing new to its reader: a process whose consumer runner
/// can never be the one that applies an event (everything else is the real store).
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
async fn a_command_sent_to_one_process_reaches_the_resource_batches_of_the_other() {
    let dir = TempDir::new().expect("temp dir");
    let a = open_state(dir.path(), None);
    let b = open_state(dir.path(), None);
    let token = mint(&a).await;
    let (node_a, node_b) = (serve(a).await, serve(b).await);
    let mut on_b = Published::subscribe(&node_b.state);

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
    assert_eq!(
        on_b.next_within(Duration::from_millis(1500)).await,
        None,
        "each change once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_another_process_applied_reaches_this_process_resource_batches() {
    let dir = TempDir::new().expect("temp dir");
    let a = open_state(dir.path(), None);
    // B's consumer runner runs, but its log never shows it anything to apply:
    // every change is applied by A's.
    let b_store = SqliteStore::open(dir.path(), Arc::new(Sse)).expect("open store");
    let b = open_state(dir.path(), Some(Arc::new(NothingNew(b_store))));
    let token = mint(&a).await;
    let (node_a, node_b) = (serve(a).await, serve(b).await);
    let mut on_b = Published::subscribe(&node_b.state);

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

/// Another process: a log and the deployments read model, driven step by step.
struct Other {
    store: Arc<SqliteStore>,
    log: Arc<dyn EventStore>,
    model: Arc<ReadModel<Deployments>>,
}

impl Other {
    fn open(dir: &Path) -> Other {
        let store = SqliteStore::open(dir, Arc::new(Sse)).expect("open store");
        Other {
            log: store.clone(),
            store,
            model: ReadModel::open(dir).expect("open read model"),
        }
    }

    async fn catch_up(&self) {
        while !self.model.process_next(&self.log, 100).await.expect("step").caught_up() {}
    }
}

fn deployments_of(state: &AppState) -> Arc<dyn Consumer> {
    state.models.consumer("deployments").expect("registered").clone()
}

/// The entries of a batch as (key, changed_at).
fn entries(batch: &ResourceBatch) -> Vec<(&str, u64)> {
    batch.entries.iter().map(|e| (&*e.key, e.changed_at)).collect()
}

/// B publishes less often than A applies (it can always be behind): a
/// batch may hold changes a subscriber's snapshot already holds, each with the
/// position of its change, so the subscriber (keeping what changed after its
/// snapshot's position) gets each change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_between_two_published_positions_gets_each_change_once() {
    let dir = TempDir::new().expect("temp dir");
    let a = Other::open(dir.path());
    // B: the HTTP app without its consumer runner; its publisher is driven by hand.
    let b = open_state(dir.path(), None);
    let token = mint(&b).await;
    let consumer = deployments_of(&b);
    let mut rx = b.live.resources.subscribe("deployment");
    let mut publisher = Publisher::start(&*consumer).await.expect("publisher");
    a.catch_up().await;
    assert_eq!(
        publisher.publish(&b, &*consumer).await.expect("publish"),
        0,
        "no deployment changed yet"
    );
    // The mark is the model's checkpoint. (A does not write one for pages
    // without a deployment event — here the token's — it only remembers them;
    // B, whose own runner would do the same, sees the stored one.)
    assert_eq!(publisher.published(), consumer.checkpoint().await.expect("checkpoint"));

    let p1 = deploy(&a.store, "one", started("one")).await;
    a.catch_up().await;

    // A subscriber's snapshot, read from B's model (what a stream starts with).
    let response = herald_server::app(b.clone())
        .oneshot(
            Request::get("/api/deployments")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    let listed: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(listed["deployments"][0]["id"], "one", "{listed}");
    let snapshot = listed["position"].as_u64().expect("position");
    assert!(snapshot >= p1);

    let p2 = deploy(&a.store, "two", started("two")).await;
    a.catch_up().await;
    // B publishes both changes at once: "one" (in the snapshot) and "two".
    assert_eq!(publisher.publish(&b, &*consumer).await.expect("publish"), 1);
    assert!(publisher.published() >= p2);
    let batch = rx.try_recv().expect("a batch was sent");
    assert_eq!(entries(&batch), [("one", p1), ("two", p2)]);
    assert!(batch.position >= p2);
    let after_snapshot: Vec<_> = batch.entries.iter().filter(|e| e.changed_at > snapshot).collect();
    assert_eq!(after_snapshot.len(), 1, "\"one\" is not sent again");
    let frames = parse_frames(&batch.frame(after_snapshot[0]));
    assert_eq!(view_of(&frames[0])["id"], "two");
    assert_eq!(id_of(&frames[0]), batch.position);
    // Nothing new: nothing published.
    assert_eq!(publisher.publish(&b, &*consumer).await.expect("publish"), 0);
    assert!(rx.try_recv().is_err());
}

/// More changed resources than one read takes: a batch per page, each
/// resource once, every batch's position covering its own and the earlier
/// ones, the last at the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_changes_are_published_a_page_at_a_time_each_once() {
    let dir = TempDir::new().expect("temp dir");
    let a = Other::open(dir.path());
    let b = open_state(dir.path(), None);
    let consumer = deployments_of(&b);
    let mut rx = b.live.resources.subscribe("deployment");
    let mut publisher = Publisher::start(&*consumer).await.expect("publisher");
    let n = CHANGED_PAGE + 7;
    let appends = (0..n).map(|i| {
        let store = a.store.clone();
        async move { deploy(&store, &format!("d{i:05}"), started("bulk")).await }
    });
    futures_util::future::join_all(appends).await;
    a.catch_up().await;
    let checkpoint = a.model.checkpoint().await.unwrap();

    let sent = publisher.publish(&b, &*consumer).await.expect("publish");
    assert_eq!(sent, 2);
    assert_eq!(publisher.published(), checkpoint);
    let first = rx.try_recv().expect("the first page");
    let second = rx.try_recv().expect("the second page");
    assert!(rx.try_recv().is_err());
    assert_eq!(first.entries.len(), CHANGED_PAGE);
    assert_eq!(second.entries.len(), 7);
    assert!(first.entries.iter().all(|e| e.changed_at <= first.position));
    assert!(second.entries.iter().all(|e| e.changed_at > first.position));
    assert!(first.position < second.position);
    assert_eq!(second.position, checkpoint);
    let mut keys: Vec<&str> = first.entries.iter().chain(&second.entries).map(|e| &*e.key).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), n, "every deployment once");
}

/// A rebuild by another process starts the model over: the publisher (its
/// mark past the new checkpoint) publishes nothing that it published before,
/// only what changes after its mark once the model is back past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_starting_over_publishes_nothing_twice() {
    let dir = TempDir::new().expect("temp dir");
    let a = Other::open(dir.path());
    let b = open_state(dir.path(), None);
    let consumer = deployments_of(&b);
    let mut rx = b.live.resources.subscribe("deployment");
    let mut publisher = Publisher::start(&*consumer).await.expect("publisher");
    for id in ["x", "y", "z"] {
        deploy(&a.store, id, started(id)).await;
    }
    a.catch_up().await;
    assert_eq!(publisher.publish(&b, &*consumer).await.expect("publish"), 1);
    let mark = publisher.published();
    assert_eq!(entries(&rx.try_recv().expect("a batch")).len(), 3);

    // Another process resets the model and replays part of the log.
    a.model.reset().await.unwrap();
    assert_eq!(publisher.publish(&b, &*consumer).await.expect("publish"), 0);
    while a.model.process_next(&a.log, 1).await.unwrap().checkpoint < 2 {}
    assert_eq!(publisher.publish(&b, &*consumer).await.expect("publish"), 0);
    assert_eq!(publisher.published(), mark);
    a.catch_up().await;
    assert_eq!(publisher.publish(&b, &*consumer).await.expect("publish"), 0);
    assert!(rx.try_recv().is_err(), "what was published is not published again");

    // A change after the mark is published, once.
    let p = deploy(&a.store, "y", DeploymentEvent::DeploymentSucceeded {}).await;
    a.catch_up().await;
    assert_eq!(publisher.publish(&b, &*consumer).await.expect("publish"), 1);
    assert_eq!(entries(&rx.try_recv().expect("a batch")), [("y", p)]);
}

fn resource(kind: &'static str, key: &str, changed_at: u64, json: &str) -> ChangedResource {
    ChangedResource {
        kind,
        key: key.into(),
        changed_at,
        event: kind,
        json: json.into(),
        class: (kind == "deployment").then_some("in_progress"),
    }
}

#[test]
fn a_batch_is_each_resource_encoded_once_as_a_frame_sorted_by_kind_then_change() {
    let page = ChangedPage {
        resources: vec![
            resource("post", "p1", 9, r#"{"id":"p1"}"#),
            resource("feed", "rust", 9, r#"{"tag":"rust"}"#),
            resource("post", "p0", 4, r#"{"id":"p0"}"#),
            resource("feeds", "", 9, r#"{"feeds":[]}"#),
            resource("feed", "ops", 7, r#"{"tag":"ops"}"#),
            resource("feed", "web", 9, r#"{"tag":"web"}"#),
        ],
        position: 12,
        checkpoint: 15,
    };
    let batch = encode("posts", &page);
    assert_eq!(batch.projection, "posts");
    assert_eq!(batch.position, 12);
    let order: Vec<(&str, &str, u64)> = batch.entries.iter().map(|e| (e.kind, &*e.key, e.changed_at)).collect();
    assert_eq!(
        order,
        [
            ("feed", "ops", 7),
            ("feed", "rust", 9),
            ("feed", "web", 9),
            ("feeds", "", 9),
            ("post", "p0", 4),
            ("post", "p1", 9)
        ]
    );
    assert_eq!(
        std::str::from_utf8(&batch.frames).unwrap(),
        concat!(
            // Each its change's position; of one kind's changed by one event
            // (rust, web), all but the last the position before.
            "id: 7\nevent: feed\ndata: {\"tag\":\"ops\"}\n\n",
            "id: 8\nevent: feed\ndata: {\"tag\":\"rust\"}\n\n",
            "id: 9\nevent: feed\ndata: {\"tag\":\"web\"}\n\n",
            "id: 9\nevent: feeds\ndata: {\"feeds\":[]}\n\n",
            "id: 4\nevent: post\ndata: {\"id\":\"p0\"}\n\n",
            "id: 9\nevent: post\ndata: {\"id\":\"p1\"}\n\n",
        )
    );
    // Each entry's range is its frame, back to back.
    let mut end = 0;
    for e in &batch.entries {
        assert_eq!(e.range.start, end);
        end = e.range.end;
        let frame = batch.frame(e);
        let parsed = parse_frames(&frame);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].1.as_deref(), Some(e.kind));
        assert!(parsed[0].2.as_deref().unwrap().contains(&*e.key));
    }
    assert_eq!(end, batch.frames.len());
    let classes: Vec<_> = batch.entries.iter().map(|e| e.class).collect();
    assert_eq!(classes, [None; 6]);

    let deployments = encode(
        "deployments",
        &ChangedPage {
            resources: vec![resource("deployment", "d", 3, "{}")],
            position: 3,
            checkpoint: 3,
        },
    );
    assert_eq!(deployments.entries[0].class, Some("in_progress"));
    let empty = encode("deployments", &ChangedPage::default());
    assert!(empty.entries.is_empty() && empty.frames.is_empty());
}
