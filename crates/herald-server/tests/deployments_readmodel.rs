//! The deployments read model (`domains::deployments::projection::Deployments`
//! kept by `herald_store::projection::ReadModel`) projected from the real
//! SQLite event store: its rows, its checkpoint (and the guard against another
//! process moving it), what `changed()` finds, rebuilds in every page size and
//! through both paths (byte-identical to the incremental model), a rebuild
//! while another process appends and projects, and a format change.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_core::aggregate::to_new_event;
use herald_core::envelope::{Actor, ActorKind, Envelope};
use herald_core::store::{AppendRequest, Committed, EventStore, ExpectedVersion, Filter, NewEvent};
use herald_server::domains::deployments::aggregate::{DeploymentEvent, DeploymentStatus};
use herald_server::domains::deployments::projection::{self as deployments, Deployments};
use herald_server::domains::deployments::view::DeploymentView;
use herald_server::sse::Sse;
use herald_store::projection::{
    AnyStore, ChangedPage, Consumer, READMODELS_DIR, ReadModel, RebuildSource, RowProjection, Step,
};
use herald_store::sqlite::SqliteStore;
use serde_json::json;
use tempfile::TempDir;

type Model = ReadModel<Deployments>;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn alice() -> Actor {
    Actor {
        kind: ActorKind::User,
        id: "u-alice".into(),
        name: "alice".into(),
    }
}

fn ci() -> Actor {
    Actor {
        kind: ActorKind::Token,
        id: "t-ci".into(),
        name: "ci".into(),
    }
}

fn started(service: &str) -> DeploymentEvent {
    DeploymentEvent::DeploymentStarted {
        service: service.into(),
        version: Some("1.4.2".into()),
        environment: Some("prod".into()),
    }
}

fn progressed(percent: u8, message: Option<&str>) -> DeploymentEvent {
    DeploymentEvent::DeploymentProgressed {
        percent,
        message: message.map(Into::into),
    }
}

fn succeeded() -> DeploymentEvent {
    DeploymentEvent::DeploymentSucceeded {}
}

fn failed(reason: &str) -> DeploymentEvent {
    DeploymentEvent::DeploymentFailed { reason: reason.into() }
}

fn cancelled(reason: Option<&str>) -> DeploymentEvent {
    DeploymentEvent::DeploymentCancelled {
        reason: reason.map(Into::into),
    }
}

async fn append_new(store: &SqliteStore, stream: &str, actor: Actor, events: Vec<NewEvent>) -> Committed {
    store
        .append(AppendRequest {
            stream: stream.into(),
            expected: ExpectedVersion::Any,
            events,
            actor,
            command_id: uuid::Uuid::new_v4().to_string(),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            idempotency_fingerprint: None,
        })
        .await
        .expect("append")
        .into_committed()
}

/// Appends deployment events to `deployment-{id}` as one command.
async fn deploy(store: &SqliteStore, id: &str, actor: Actor, events: &[DeploymentEvent]) -> Committed {
    let events = events.iter().map(to_new_event).collect();
    append_new(store, &format!("deployment-{id}"), actor, events).await
}

/// Appends one event of another category.
async fn post(store: &SqliteStore, id: &str) -> Committed {
    let event = NewEvent {
        event_type: "PostCreated".into(),
        schema: 1,
        data: json!({"title": "hello", "content": "world", "tags": []}),
    };
    append_new(store, &format!("post-{id}"), alice(), vec![event]).await
}

fn envelope_of(committed: &Committed, index: usize) -> Envelope {
    committed.events[index].envelope().expect("envelope parses")
}

fn open_model(dir: &Path) -> Arc<Model> {
    ReadModel::open(dir).expect("open read model")
}

fn parse(json: &str) -> DeploymentView {
    serde_json::from_str(json).expect("a stored view parses")
}

/// The stored views (most recently started first) and the checkpoint, read in
/// one transaction.
async fn list(model: &Model, status: Option<DeploymentStatus>, limit: usize) -> (Vec<DeploymentView>, u64) {
    let (views, checkpoint) = model
        .read(move |conn, checkpoint| Ok((deployments::list(conn, status, limit)?, checkpoint)))
        .await
        .expect("list");
    (views.iter().map(|v| parse(v)).collect(), checkpoint)
}

async fn get(model: &Model, id: &str) -> Option<DeploymentView> {
    let id = id.to_owned();
    model
        .read(move |conn, _| deployments::get(conn, &id))
        .await
        .expect("get")
        .map(|(json, _)| parse(&json))
}

/// Everything the model stores, every column, as text: two models with the
/// same dump are the same model, byte for byte.
async fn dump(model: &Model) -> String {
    model
        .read(|conn, checkpoint| {
            let mut out = format!("checkpoint {checkpoint}\n");
            conn.query(
                "SELECT id, status, started_position, updated_position, view FROM deployments ORDER BY id",
                &[],
                &mut |r| {
                    let (id, status, started, updated, view) =
                        (r.text(0)?, r.text(1)?, r.int(2)?, r.int(3)?, r.text(4)?);
                    out.push_str(&format!("{id}\t{status}\t{started}\t{updated}\t{view}\n"));
                    Ok(())
                },
            )?;
            Ok(out)
        })
        .await
        .expect("dump")
}

/// What `changed()` found, as (id, position of its last change).
fn changed_ids(changed: &ChangedPage) -> Vec<(&str, u64)> {
    changed
        .resources
        .iter()
        .map(|r| (r.key.as_str(), r.changed_at))
        .collect()
}

/// The views `changed()` found after `after`, in the order it gives them.
async fn changed_views(model: &Model, after: u64) -> Vec<DeploymentView> {
    let page = model.changed(after, 10_000).await.expect("changed");
    page.resources.iter().map(|r| parse(&r.json)).collect()
}

struct Fixture {
    dir: TempDir,
    store: Arc<SqliteStore>,
    log: Arc<dyn EventStore>,
    model: Arc<Model>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path(), Arc::new(Sse)).expect("open event store");
        let model = open_model(dir.path());
        Fixture {
            dir,
            log: store.clone(),
            store,
            model,
        }
    }

    async fn step(&self, page: usize) -> Step {
        self.model.process_next(&self.log, page).await.expect("process_next")
    }

    /// Projects until caught up; returns every step.
    async fn catch_up(&self, page: usize) -> Vec<Step> {
        catch_up(&self.model, &self.log, page).await
    }

    async fn head(&self) -> u64 {
        self.store.head().await.expect("head").position
    }

    async fn list_all(&self) -> (Vec<DeploymentView>, u64) {
        list(&self.model, None, usize::MAX).await
    }

    async fn all(&self) -> Vec<DeploymentView> {
        self.list_all().await.0
    }
}

async fn catch_up(model: &Model, log: &Arc<dyn EventStore>, page: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    loop {
        let step = model.process_next(log, page).await.expect("process_next");
        let done = step.caught_up();
        steps.push(step);
        if done {
            return steps;
        }
        assert!(steps.len() < 100_000, "the model does not make progress");
    }
}

fn ids(views: &[DeploymentView]) -> Vec<&str> {
    views.iter().map(|v| v.id.as_str()).collect()
}

fn source(store: &Arc<SqliteStore>) -> Arc<dyn RebuildSource> {
    store.clone()
}

/// The same log seen only as an [`EventStore`] (the rebuild's generic path).
fn generic_source(store: &Arc<SqliteStore>) -> Arc<dyn RebuildSource> {
    let log: Arc<dyn EventStore> = store.clone();
    Arc::new(AnyStore(log))
}

fn deployment_events() -> Filter {
    Filter {
        categories: vec!["deployment".into()],
        ..Filter::default()
    }
}

// ---------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------

#[tokio::test]
async fn lifecycle_events_end_up_as_expected_views() {
    let f = Fixture::new();
    let ok_start = deploy(&f.store, "ok", alice(), &[started("user-service")]).await;
    let ok_end = deploy(
        &f.store,
        "ok",
        ci(),
        &[progressed(50, Some("canary healthy")), succeeded()],
    )
    .await;
    let bad_start = deploy(&f.store, "bad", ci(), &[started("billing")]).await;
    deploy(&f.store, "bad", ci(), &[progressed(20, None)]).await;
    let bad_end = deploy(&f.store, "bad", alice(), &[failed("health check failed")]).await;
    let stop = deploy(
        &f.store,
        "stop",
        alice(),
        &[started("search"), cancelled(Some("freeze"))],
    )
    .await;
    let run = deploy(
        &f.store,
        "run",
        alice(),
        &[
            DeploymentEvent::DeploymentStarted {
                service: "mailer".into(),
                version: None,
                environment: None,
            },
            progressed(10, Some("draining")),
            progressed(35, None),
        ],
    )
    .await;

    let steps = f.catch_up(100).await;
    assert_eq!(steps[0].read, 11);
    assert_eq!(f.model.checkpoint().await.unwrap(), f.head().await);

    let ok = get(&f.model, "ok").await.expect("ok is projected");
    assert_eq!(
        ok,
        DeploymentView {
            id: "ok".into(),
            service: "user-service".into(),
            version: Some("1.4.2".into()),
            environment: Some("prod".into()),
            status: DeploymentStatus::Succeeded,
            progress: 100,
            message: Some("canary healthy".into()),
            reason: None,
            started_by: alice(),
            started_at: envelope_of(&ok_start, 0).recorded_at,
            updated_at: envelope_of(&ok_end, 1).recorded_at,
            stream_version: 3,
        }
    );

    let bad = get(&f.model, "bad").await.expect("bad is projected");
    assert_eq!(
        bad,
        DeploymentView {
            id: "bad".into(),
            service: "billing".into(),
            version: Some("1.4.2".into()),
            environment: Some("prod".into()),
            status: DeploymentStatus::Failed,
            progress: 20,
            message: None,
            reason: Some("health check failed".into()),
            started_by: ci(),
            started_at: envelope_of(&bad_start, 0).recorded_at,
            updated_at: envelope_of(&bad_end, 0).recorded_at,
            stream_version: 3,
        }
    );

    let stop_view = get(&f.model, "stop").await.expect("stop is projected");
    assert_eq!(stop_view.status, DeploymentStatus::Cancelled);
    assert_eq!(stop_view.reason.as_deref(), Some("freeze"));
    assert_eq!(stop_view.progress, 0);
    assert_eq!(stop_view.stream_version, 2);
    assert_eq!(stop_view.updated_at, envelope_of(&stop, 1).recorded_at);

    let run_view = get(&f.model, "run").await.expect("run is projected");
    assert_eq!(
        run_view,
        DeploymentView {
            id: "run".into(),
            service: "mailer".into(),
            version: None,
            environment: None,
            status: DeploymentStatus::InProgress,
            progress: 35,
            message: None,
            reason: None,
            started_by: alice(),
            started_at: envelope_of(&run, 0).recorded_at,
            updated_at: envelope_of(&run, 2).recorded_at,
            stream_version: 3,
        }
    );
    // Optional fields are there as nulls on the wire (the stored JSON is what is served).
    let stored = f
        .model
        .read(|conn, _| deployments::get(conn, "run"))
        .await
        .unwrap()
        .expect("run is stored")
        .0;
    let wire: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(wire["version"], serde_json::Value::Null);
    assert!(wire.as_object().unwrap().contains_key("environment"));

    assert_eq!(get(&f.model, "nope").await, None);
}

#[tokio::test]
async fn list_filters_by_status_orders_by_start_newest_first_and_honours_limit() {
    let f = Fixture::new();
    // Started in this order: a, b, c, d, e.
    for id in ["a", "b", "c", "d", "e"] {
        deploy(&f.store, id, alice(), &[started(&format!("svc-{id}"))]).await;
    }
    // Finished in another order, so "last updated" differs from "last started".
    deploy(&f.store, "d", alice(), &[succeeded()]).await;
    deploy(&f.store, "b", alice(), &[succeeded()]).await;
    deploy(&f.store, "c", alice(), &[failed("boom")]).await;
    deploy(&f.store, "a", alice(), &[progressed(90, None)]).await;
    f.catch_up(100).await;
    let head = f.head().await;

    let (all, position) = list(&f.model, None, 100).await;
    assert_eq!(ids(&all), ["e", "d", "c", "b", "a"]);
    assert_eq!(position, head);

    let (done, position) = list(&f.model, Some(DeploymentStatus::Succeeded), 100).await;
    assert_eq!(ids(&done), ["d", "b"]);
    assert!(done.iter().all(|v| v.status == DeploymentStatus::Succeeded));
    assert_eq!(position, head);

    let (running, _) = list(&f.model, Some(DeploymentStatus::InProgress), 100).await;
    assert_eq!(ids(&running), ["e", "a"]);
    assert_eq!(running[1].progress, 90);

    let (bad, _) = list(&f.model, Some(DeploymentStatus::Failed), 100).await;
    assert_eq!(ids(&bad), ["c"]);
    let (none, _) = list(&f.model, Some(DeploymentStatus::Cancelled), 100).await;
    assert!(none.is_empty());

    let (two, _) = list(&f.model, None, 2).await;
    assert_eq!(ids(&two), ["e", "d"]);
    let (one, _) = list(&f.model, Some(DeploymentStatus::InProgress), 1).await;
    assert_eq!(ids(&one), ["e"]);
    let (zero, _) = list(&f.model, None, 0).await;
    assert!(zero.is_empty());
}

// ---------------------------------------------------------------------------
// The checkpoint
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_checkpoint_moves_with_the_rows_and_a_wrong_expectation_changes_nothing() {
    let f = Fixture::new();
    deploy(&f.store, "a", alice(), &[started("api"), progressed(10, None)]).await;
    deploy(&f.store, "b", alice(), &[started("web")]).await;
    deploy(&f.store, "a", alice(), &[progressed(70, Some("almost"))]).await;
    let page = f.store.read_all(0, &Filter::default(), 100).await.unwrap();
    assert_eq!(page.events.len(), 4);
    assert_eq!(f.model.checkpoint().await.unwrap(), 0);

    // Wrong expectation: nothing is written, neither rows nor checkpoint.
    let applied = f.model.apply(3, page.next_after, page.events.clone()).await.unwrap();
    assert!(!applied);
    assert_eq!(f.model.checkpoint().await.unwrap(), 0);
    assert_eq!(list(&f.model, None, 10).await, (vec![], 0));
    assert_eq!(dump(&f.model).await, "checkpoint 0\n");

    // The right one: rows and checkpoint together.
    assert!(f.model.apply(0, page.next_after, page.events.clone()).await.unwrap());
    // One entry per changed deployment, by the position of its last change, in its final state.
    let changed = changed_views(&f.model, 0).await;
    assert_eq!(ids(&changed), ["b", "a"]);
    assert_eq!(changed[1].progress, 70);
    assert_eq!(changed[1].message.as_deref(), Some("almost"));
    assert_eq!(changed[1].stream_version, 3);
    assert_eq!(changed[0].stream_version, 1);
    let (rows, position) = list(&f.model, None, 10).await;
    assert_eq!(position, 4);
    assert_eq!(rows.len(), 2);
    assert_eq!(get(&f.model, "a").await.as_ref(), Some(&changed[1]));

    // Replaying the same events with the stale expectation is refused too.
    let before = dump(&f.model).await;
    assert!(!f.model.apply(0, 4, page.events.clone()).await.unwrap());
    assert_eq!(dump(&f.model).await, before);

    // Moving on from the right checkpoint with more events.
    let more = deploy(&f.store, "b", ci(), &[cancelled(None)]).await;
    assert!(f.model.apply(4, 5, more.events.clone()).await.unwrap());
    let changed = changed_views(&f.model, 4).await;
    assert_eq!(ids(&changed), ["b"]);
    assert_eq!(changed[0].status, DeploymentStatus::Cancelled);
    assert_eq!(f.model.checkpoint().await.unwrap(), 5);

    // An apply that changes no row still moves the checkpoint.
    assert!(f.model.apply(5, 9, vec![]).await.unwrap());
    assert_eq!(f.model.checkpoint().await.unwrap(), 9);
    let nothing = f.model.changed(5, 100).await.unwrap();
    assert!(nothing.resources.is_empty());
    assert_eq!((nothing.position, nothing.checkpoint), (9, 9));

    // Reset: no rows, checkpoint 0, in one go.
    f.model.reset().await.unwrap();
    assert_eq!(list(&f.model, None, 10).await, (vec![], 0));
    assert_eq!(get(&f.model, "a").await, None);
    assert_eq!(dump(&f.model).await, "checkpoint 0\n");
}

#[tokio::test]
async fn process_next_pages_until_caught_up_and_then_follows_new_events() {
    let f = Fixture::new();
    for i in 0..5 {
        let id = format!("d{i}");
        deploy(&f.store, &id, alice(), &[started("svc")]).await;
        for p in 1..=4u8 {
            deploy(&f.store, &id, alice(), &[progressed(p * 20, None)]).await;
        }
    }
    assert_eq!(f.head().await, 25);

    let first = f.step(10).await;
    assert_eq!((first.read, first.checkpoint, first.head), (10, 10, 25));
    assert!(!first.caught_up());
    // d0 and d1 got all five of their events.
    let changed = changed_views(&f.model, 0).await;
    assert_eq!(ids(&changed), ["d0", "d1"]);
    assert!(changed.iter().all(|v| v.progress == 80 && v.stream_version == 5));
    assert_eq!(f.model.checkpoint().await.unwrap(), 10);

    let second = f.step(10).await;
    assert_eq!((second.read, second.checkpoint, second.head), (10, 20, 25));
    assert_eq!(ids(&changed_views(&f.model, 10).await), ["d2", "d3"]);

    let third = f.step(10).await;
    assert_eq!((third.read, third.checkpoint, third.head), (5, 25, 25));
    assert!(third.caught_up());
    assert_eq!(ids(&changed_views(&f.model, 20).await), ["d4"]);

    let idle = f.step(10).await;
    assert_eq!((idle.read, idle.checkpoint, idle.head), (0, 25, 25));
    assert!(changed_views(&f.model, 25).await.is_empty());
    assert_eq!(f.all().await.len(), 5);

    // New events are picked up on the next step, and only the changed deployment is reported.
    deploy(&f.store, "d2", ci(), &[succeeded()]).await;
    let next = f.step(10).await;
    assert_eq!((next.read, next.checkpoint, next.head), (1, 26, 26));
    let changed = changed_views(&f.model, 25).await;
    assert_eq!(ids(&changed), ["d2"]);
    assert_eq!(changed[0].status, DeploymentStatus::Succeeded);
    assert_eq!(changed[0].progress, 100);
    assert_eq!(
        get(&f.model, "d2").await.map(|v| v.status),
        Some(DeploymentStatus::Succeeded)
    );

    // Another process's model on the same file resumes from the stored
    // checkpoint, and this one then finds nothing left to apply.
    deploy(&f.store, "d5", ci(), &[started("late")]).await;
    let other = open_model(f.dir.path());
    let step = other.process_next(&f.log, 10).await.unwrap();
    assert_eq!((step.read, step.checkpoint), (1, 27));
    assert_eq!(ids(&changed_views(&f.model, 26).await), ["d5"]);
    let stale = f.step(10).await;
    assert_eq!((stale.read, stale.checkpoint), (0, 27));
}

#[tokio::test]
async fn events_of_other_categories_are_skipped_but_the_checkpoint_advances() {
    let f = Fixture::new();
    post(&f.store, "p1").await;
    deploy(&f.store, "a", alice(), &[started("api")]).await;
    post(&f.store, "p2").await;
    post(&f.store, "deployment").await; // a post whose id looks like a category
    deploy(&f.store, "a", alice(), &[progressed(40, None)]).await;
    post(&f.store, "p3").await;
    post(&f.store, "p4").await;
    let head = f.head().await;
    assert_eq!(head, 7);

    // Through process_next (category-filtered reads).
    let steps = f.catch_up(100).await;
    assert_eq!(steps.iter().map(|s| s.read).sum::<usize>(), 2);
    assert_eq!(f.model.checkpoint().await.unwrap(), head);
    let all = f.all().await;
    assert_eq!(ids(&all), ["a"]);
    assert_eq!(all[0].progress, 40);

    // Through apply with an unfiltered page: the same rows, the checkpoint at the end.
    let other_dir = tempfile::tempdir().unwrap();
    let other = open_model(other_dir.path());
    let page = f.store.read_all(0, &Filter::default(), 100).await.unwrap();
    assert_eq!(page.events.len(), 7);
    assert!(other.apply(0, page.next_after, page.events).await.unwrap());
    assert_eq!(ids(&changed_views(&other, 0).await), ["a"]);
    assert_eq!(other.checkpoint().await.unwrap(), 7);
    assert_eq!(list(&other, None, 10).await.0, all);
    assert_eq!(dump(&other).await, dump(&f.model).await);

    // Only other categories after the checkpoint: the model still moves to the head.
    post(&f.store, "p5").await;
    post(&f.store, "p6").await;
    let step = f.step(100).await;
    assert_eq!((step.read, step.checkpoint, step.head), (0, 9, 9));
    let changed = f.model.changed(7, 100).await.unwrap();
    assert!(changed.resources.is_empty());
    assert_eq!(changed.position, 9);
    assert_eq!(f.model.checkpoint().await.unwrap(), 9);
}

/// Two processes keep one model (two `herald serve`s on one data directory)
/// while commands keep coming: the checkpoint guard has each event applied by
/// exactly one of them, and the model ends as a rebuild makes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_keeping_one_model_apply_every_event_exactly_once() {
    let f = Fixture::new();
    varied_history(&f.store, 20).await;
    let one = f.model.clone();
    let two = open_model(f.dir.path());
    let keep = |model: Arc<Model>, log: Arc<dyn EventStore>, done: Arc<std::sync::atomic::AtomicBool>| {
        tokio::spawn(async move {
            let mut read = 0usize;
            let mut checkpoints = Vec::new();
            loop {
                // Read the flag first: after it is set, one more catch-up reaches the final head.
                let last = done.load(std::sync::atomic::Ordering::SeqCst);
                for step in catch_up(&model, &log, 3).await {
                    read += step.read;
                    checkpoints.push(step.checkpoint);
                }
                if last {
                    return (read, checkpoints);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a = keep(one.clone(), f.log.clone(), done.clone());
    let b = keep(two.clone(), f.log.clone(), done.clone());
    for i in 0..40 {
        let id = format!("live-{i:02}");
        deploy(&f.store, &id, ci(), &[started("live")]).await;
        deploy(&f.store, &id, ci(), &[progressed(50, None), succeeded()]).await;
        post(&f.store, &id).await;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (read_a, checkpoints_a) = a.await.unwrap();
    let (read_b, checkpoints_b) = b.await.unwrap();

    let total = f
        .store
        .read_all(0, &deployment_events(), 100_000)
        .await
        .unwrap()
        .events
        .len();
    assert_eq!(read_a + read_b, total, "each event applied once, by one of the two");
    assert!(read_a > 0 || read_b > 0);
    for checkpoints in [&checkpoints_a, &checkpoints_b] {
        assert!(
            checkpoints.windows(2).all(|w| w[0] <= w[1]),
            "the checkpoint never goes back: {checkpoints:?}"
        );
    }
    let head = f.head().await;
    assert_eq!(one.checkpoint().await.unwrap(), head);
    assert_eq!(two.checkpoint().await.unwrap(), head);

    let rebuilt_dir = tempfile::tempdir().unwrap();
    let rebuilt = open_model(rebuilt_dir.path());
    rebuilt.rebuild(source(&f.store), &mut |_, _| {}).await.unwrap();
    assert_eq!(dump(&one).await, dump(&rebuilt).await);
    assert_eq!(dump(&two).await, dump(&rebuilt).await);
}

#[tokio::test]
async fn wait_for_returns_once_the_model_reaches_the_position_or_the_limit_passes() {
    let f = Fixture::new();
    deploy(&f.store, "a", alice(), &[started("api")]).await;
    deploy(&f.store, "a", alice(), &[succeeded()]).await;
    // Not reached: after the limit, the checkpoint it saw (below the position asked for).
    assert_eq!(f.model.wait_for(2, Duration::from_millis(50)).await.unwrap(), 0);
    // Reached by another task while it waits.
    let model = f.model.clone();
    let waiting = tokio::spawn(async move { model.wait_for(2, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    f.catch_up(1).await;
    assert_eq!(waiting.await.unwrap().unwrap(), 2);
    // Already reached (or nothing asked for).
    assert_eq!(f.model.wait_for(1, Duration::ZERO).await.unwrap(), 2);
    assert_eq!(f.model.wait_for(0, Duration::ZERO).await.unwrap(), 2);
}

// ---------------------------------------------------------------------------
// Rebuilds
// ---------------------------------------------------------------------------

/// A varied history: starts, progress, every ending, several deployments per
/// command interleaved with posts.
async fn varied_history(store: &SqliteStore, deployments: usize) {
    for i in 0..deployments {
        let id = format!("dep-{i:03}");
        let actor = if i % 2 == 0 { alice() } else { ci() };
        deploy(store, &id, actor, &[started(&format!("svc-{}", i % 7))]).await;
        if i % 5 == 0 {
            post(store, &format!("post-{i}")).await;
        }
    }
    for i in 0..deployments {
        let id = format!("dep-{i:03}");
        let events = match i % 4 {
            0 => vec![progressed(30, Some("rolling")), succeeded()],
            1 => vec![progressed(60, None), failed("probe")],
            2 => vec![cancelled(Some("rollback"))],
            _ => vec![progressed((i % 100) as u8, Some("still going"))],
        };
        deploy(store, &id, alice(), &events).await;
    }
}

#[tokio::test]
async fn rebuild_gives_the_same_rows_as_incremental_projection() {
    let f = Fixture::new();
    varied_history(&f.store, 60).await;
    let head = f.head().await;
    // Incremental, in small pages.
    let steps = f.catch_up(7).await;
    assert!(steps.len() > 10);
    let incremental = f.all().await;
    assert_eq!(incremental.len(), 60);

    // A second model, first filled with rows from another log (which a rebuild must drop).
    let rebuilt_dir = tempfile::tempdir().unwrap();
    let rebuilt = open_model(rebuilt_dir.path());
    {
        let ghosts = Fixture::new();
        deploy(&ghosts.store, "ghost", alice(), &[started("ghost")]).await;
        deploy(&ghosts.store, "dep-000", alice(), &[started("not this one")]).await;
        let page = ghosts.store.read_all(0, &Filter::default(), 10).await.unwrap();
        assert!(rebuilt.apply(0, 1000, page.events).await.unwrap());
        assert_eq!(list(&rebuilt, None, 10).await.0.len(), 2);
    }

    let mut calls = Vec::new();
    let applied = rebuilt
        .rebuild_with_page(source(&f.store), 50, &mut |checkpoint, head| {
            calls.push((checkpoint, head))
        })
        .await
        .unwrap();
    let deployment_events = f
        .store
        .read_all(0, &deployment_events(), 10_000)
        .await
        .unwrap()
        .events
        .len();
    assert_eq!(applied, deployment_events as u64);
    assert_eq!(calls.last(), Some(&(head, head)));
    assert!(calls.len() >= deployment_events / 50, "{calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");

    let (rows, position) = list(&rebuilt, None, usize::MAX).await;
    assert_eq!(position, head);
    assert_eq!(rows, incremental);
    for status in [
        DeploymentStatus::InProgress,
        DeploymentStatus::Succeeded,
        DeploymentStatus::Failed,
        DeploymentStatus::Cancelled,
    ] {
        let a = list(&f.model, Some(status), usize::MAX).await;
        let b = list(&rebuilt, Some(status), usize::MAX).await;
        assert_eq!(a, b, "{status:?}");
        assert_eq!(a.0.len(), 15, "{status:?}");
    }
    assert_eq!(get(&rebuilt, "ghost").await, None);
    assert_eq!(dump(&rebuilt).await, dump(&f.model).await, "byte-identical");

    // The default rebuild (large pages) over the incrementally built model itself.
    let before = dump(&f.model).await;
    let mut pages = 0;
    let applied_again = f.model.rebuild(source(&f.store), &mut |_, _| pages += 1).await.unwrap();
    assert_eq!(applied_again, applied);
    assert_eq!(pages, 1);
    assert_eq!(f.all().await, incremental);
    assert_eq!(f.model.checkpoint().await.unwrap(), head);
    assert_eq!(dump(&f.model).await, before);
}

/// Many deployments whose events interleave and span pages: some end within a
/// page, some run across many (their later events come long after the start),
/// one is started twice in a row of commands, and some streams of other
/// categories sit in between.
async fn interleaved_history(store: &SqliteStore) {
    for round in 0..6u8 {
        for i in 0..25usize {
            let id = format!("long-{i:02}");
            let event = match round {
                0 => started(&format!("svc-{}", i % 3)),
                1..=4 => progressed(round * 20 + i as u8, (i % 2 == 0).then_some("step")),
                _ => match i % 3 {
                    0 => succeeded(),
                    1 => failed("timeout"),
                    _ => cancelled(None),
                },
            };
            deploy(store, &id, if i % 2 == 0 { alice() } else { ci() }, &[event]).await;
            if i % 4 == round as usize % 4 {
                // A short one, started and finished in one command.
                let short = format!("short-{round}-{i:02}");
                deploy(
                    store,
                    &short,
                    ci(),
                    &[started("batch"), progressed(50, None), succeeded()],
                )
                .await;
                post(store, &format!("post-{round}-{i}")).await;
            }
        }
    }
    // Events that change nothing: a second start, progress before any start.
    deploy(store, "long-00", alice(), &[started("again")]).await;
    deploy(store, "never-started", alice(), &[progressed(10, None)]).await;
}

#[tokio::test]
async fn rebuild_in_any_page_size_and_either_path_gives_the_incremental_model_byte_for_byte() {
    let f = Fixture::new();
    interleaved_history(&f.store).await;
    let head = f.head().await;
    f.catch_up(13).await;
    let projected = f.list_all().await;
    assert_eq!(projected.0.len(), 25 + 38); // "never-started" has no row
    assert_eq!(projected.1, head);
    let expected = dump(&f.model).await;
    for page in [1, 2, 7, 30, 64, 1000, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let rebuilt = open_model(dir.path());
        let mut calls = Vec::new();
        rebuilt
            .rebuild_with_page(source(&f.store), page, &mut |c, h| calls.push((c, h)))
            .await
            .unwrap();
        assert_eq!(calls.last(), Some(&(head, head)), "page {page}");
        assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "page {page}: {calls:?}");
        assert_eq!(list(&rebuilt, None, usize::MAX).await, projected, "page {page}");
        for view in &projected.0 {
            assert_eq!(get(&rebuilt, &view.id).await.as_ref(), Some(view), "page {page}");
        }
        assert_eq!(dump(&rebuilt).await, expected, "page {page}");

        // A rebuild through the generic (any event store) path, over the rows
        // just written, gives the same model.
        let mut calls = Vec::new();
        rebuilt
            .rebuild_with_page(generic_source(&f.store), page, &mut |c, h| calls.push((c, h)))
            .await
            .unwrap();
        assert_eq!(calls.last(), Some(&(head, head)), "generic, page {page}");
        assert!(
            calls.windows(2).all(|w| w[0].0 < w[1].0),
            "generic, page {page}: {calls:?}"
        );
        assert_eq!(dump(&rebuilt).await, expected, "generic, page {page}");
    }
}

#[tokio::test]
async fn rebuild_of_an_empty_log_leaves_an_empty_model() {
    for generic in [false, true] {
        let f = Fixture::new();
        let ghosts = Fixture::new();
        deploy(&ghosts.store, "ghost", alice(), &[started("ghost")]).await;
        let page = ghosts.store.read_all(0, &Filter::default(), 10).await.unwrap();
        assert!(f.model.apply(0, 1, page.events).await.unwrap());

        let mut calls = Vec::new();
        let from = if generic {
            generic_source(&f.store)
        } else {
            source(&f.store)
        };
        let applied = f.model.rebuild(from, &mut |c, h| calls.push((c, h))).await.unwrap();
        assert_eq!(applied, 0, "generic {generic}");
        assert_eq!(calls, [(0, 0)], "generic {generic}");
        assert_eq!(list(&f.model, None, 10).await, (vec![], 0), "generic {generic}");
        assert_eq!(dump(&f.model).await, "checkpoint 0\n", "generic {generic}");
    }
}

/// `herald projections rebuild` while `herald serve` runs: commands keep
/// being appended and the server keeps projecting into the same file. The
/// rebuild finishes at (or past) the head it started with, and once everyone
/// has caught up the model is the one a rebuild of the final log makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_while_another_process_appends_and_projects_ends_with_the_same_model() {
    for generic in [false, true] {
        let f = Fixture::new();
        varied_history(&f.store, 80).await;
        f.catch_up(1000).await;
        let head_at_start = f.head().await;

        // The other process: appending, and keeping its own handle of the model.
        let serving = open_model(f.dir.path());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let appender = {
            let store = f.store.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) || i < 30 {
                    let id = format!("during-{i:03}");
                    deploy(&store, &id, ci(), &[started("during")]).await;
                    deploy(&store, &format!("dep-{:03}", i % 80), ci(), &[succeeded()]).await;
                    post(&store, &id).await;
                    i += 1;
                }
                i
            })
        };
        let projector = {
            let (serving, log, done) = (serving.clone(), f.log.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    catch_up(&serving, &log, 5).await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };

        let mut last = (0, 0);
        let from = if generic {
            generic_source(&f.store)
        } else {
            source(&f.store)
        };
        f.model
            .rebuild_with_page(from, 16, &mut |c, h| last = (c, h))
            .await
            .unwrap();
        assert!(last.0 >= head_at_start, "generic {generic}: {last:?}");
        assert!(
            f.model.checkpoint().await.unwrap() >= head_at_start,
            "generic {generic}"
        );
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let appended = appender.await.unwrap();
        assert!(appended >= 30);
        projector.await.unwrap();

        f.catch_up(1000).await;
        let head = f.head().await;
        assert_eq!(f.model.checkpoint().await.unwrap(), head);
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = open_model(fresh_dir.path());
        fresh.rebuild(source(&f.store), &mut |_, _| {}).await.unwrap();
        let expected = dump(&fresh).await;
        assert_eq!(dump(&f.model).await, expected, "generic {generic}");
        assert_eq!(dump(&serving).await, expected, "generic {generic}");
        assert_eq!(list(&f.model, None, usize::MAX).await.0.len(), 80 + appended);
    }
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

fn model_file(dir: &Path) -> std::path::PathBuf {
    dir.join(READMODELS_DIR).join(format!("{}.db", Deployments::NAME))
}

#[tokio::test]
async fn data_survives_reopening_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let (before, head, dumped) = {
        let store = SqliteStore::open(dir.path(), Arc::new(Sse)).unwrap();
        let model = open_model(dir.path());
        varied_history(&store, 12).await;
        let log: Arc<dyn EventStore> = store.clone();
        catch_up(&model, &log, 5).await;
        let head = store.head().await.unwrap().position;
        (list(&model, None, 100).await, head, dump(&model).await)
    };
    assert_eq!(before.0.len(), 12);
    assert_eq!(before.1, head);
    assert!(model_file(dir.path()).exists());

    let store = SqliteStore::open(dir.path(), Arc::new(Sse)).unwrap();
    let log: Arc<dyn EventStore> = store.clone();
    let model = open_model(dir.path());
    assert_eq!(model.checkpoint().await.unwrap(), head);
    assert_eq!(list(&model, None, 100).await, before);
    assert_eq!(dump(&model).await, dumped);
    assert_eq!(get(&model, "dep-003").await.as_ref(), Some(&before.0[8]));

    // It carries on from the stored checkpoint: nothing is applied twice.
    let step = model.process_next(&log, 100).await.unwrap();
    assert_eq!((step.read, step.checkpoint), (0, head));
    deploy(&store, "dep-003", alice(), &[succeeded()]).await;
    let step = model.process_next(&log, 100).await.unwrap();
    assert_eq!(step.read, 1);
    let changed = changed_views(&model, head).await;
    assert_eq!(ids(&changed), ["dep-003"]);
    assert_eq!(changed[0].stream_version, 3);
    assert_eq!(changed[0].status, DeploymentStatus::Succeeded);
}

#[tokio::test]
async fn the_read_model_lives_in_its_own_file() {
    let f = Fixture::new();
    deploy(&f.store, "a", alice(), &[started("api")]).await;
    f.catch_up(10).await;
    let path = f.model.path().to_owned();
    assert_eq!(path, f.dir.path().join("readmodels").join("deployments.db"));
    assert_eq!(path, model_file(f.dir.path()));
    assert_ne!(path, f.store.path());
    assert!(Path::new(&path).exists());
    // The event store's file holds no read model table.
    let conn = rusqlite::Connection::open(f.store.path()).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'
             AND name IN ('deployments', 'checkpoint', 'checkpoints')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
    // Nor is the file of the read models before issue 10 made or read.
    assert!(!f.dir.path().join("readmodels.db").exists());
}

/// A model file of another format (an older `VERSION`, here with rows and a
/// checkpoint that no longer mean what they did) is emptied to checkpoint 0
/// when opened, in the current format, and catching up from the log makes it
/// the model a fresh one is.
#[tokio::test]
async fn a_file_of_another_format_is_emptied_on_open_and_rebuilt_from_the_log() {
    let f = Fixture::new();
    deploy(&f.store, "old", alice(), &[started("old"), progressed(10, Some("x"))]).await;
    post(&f.store, "p").await;
    deploy(&f.store, "new", ci(), &[started("new")]).await;
    f.catch_up(100).await;
    let head = f.head().await;
    let expected = dump(&f.model).await;

    for old_version in [1, 2, Deployments::VERSION + 1] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(READMODELS_DIR)).unwrap();
        {
            // Tables as an older herald left them: another shape, a stale row, a checkpoint at the head.
            let conn = rusqlite::Connection::open(model_file(dir.path())).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE deployments (
                     id TEXT PRIMARY KEY, status TEXT NOT NULL, started_position INTEGER NOT NULL, view TEXT NOT NULL
                 ) STRICT, WITHOUT ROWID;
                 CREATE INDEX deployments_status ON deployments (status, started_position);
                 INSERT INTO deployments VALUES ('ghost', 'in_progress', 1, '{{\"id\":\"ghost\"}}');
                 CREATE TABLE checkpoint (id INTEGER PRIMARY KEY, position INTEGER NOT NULL);
                 INSERT INTO checkpoint VALUES (1, {head});
                 PRAGMA user_version = {old_version};"
            ))
            .unwrap();
        }

        let model = open_model(dir.path());
        assert_eq!(
            model.checkpoint().await.unwrap(),
            0,
            "v{old_version}: replayed from the start"
        );
        assert_eq!(
            dump(&model).await,
            "checkpoint 0\n",
            "v{old_version}: the old rows are gone"
        );
        {
            let conn = rusqlite::Connection::open(model_file(dir.path())).unwrap();
            let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
            assert_eq!(version, Deployments::VERSION, "v{old_version}");
            let indexed: i64 = conn
                .query_row(
                    "SELECT count(*) FROM pragma_index_list('deployments') WHERE name = 'deployments_updated'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(indexed, 1, "v{old_version}: the current schema");
        }

        // The consumer runner catches it up from the log, like any model at 0.
        let log: Arc<dyn EventStore> = f.store.clone();
        catch_up(&model, &log, 100).await;
        assert_eq!(dump(&model).await, expected, "v{old_version}");
        drop(model);
        // Reopened in the current format: kept as it is.
        let model = open_model(dir.path());
        assert_eq!(dump(&model).await, expected, "v{old_version}: reopened");
    }
}

// ---------------------------------------------------------------------------
// Changed rows: what any process can publish from the checkpoint
// ---------------------------------------------------------------------------

#[tokio::test]
async fn changed_finds_rows_by_the_position_of_their_last_change() {
    let f = Fixture::new();
    let a = deploy(&f.store, "a", alice(), &[started("a")]).await.events[0].position();
    let b = deploy(&f.store, "b", alice(), &[started("b")]).await.events[0].position();
    let a2 = deploy(&f.store, "a", ci(), &[progressed(50, None)]).await.events[0].position();
    let b2 = deploy(&f.store, "b", ci(), &[failed("probe")]).await.events[0].position();
    let c = deploy(&f.store, "c", ci(), &[started("c")]).await.events[0].position();
    f.catch_up(100).await;
    let checkpoint = f.head().await;
    assert!(a < b && b < a2 && a2 < b2 && b2 < c);

    // Every row once, by its last change, oldest first; the state as stored now.
    let all = f.model.changed(0, 100).await.unwrap();
    assert_eq!(changed_ids(&all), vec![("a", a2), ("b", b2), ("c", c)]);
    assert_eq!((all.position, all.checkpoint), (checkpoint, checkpoint));
    assert_eq!(Some(parse(&all.resources[0].json)), get(&f.model, "a").await);
    assert_eq!(parse(&all.resources[0].json).progress, 50);
    // Rendered as the deployment resource, with its status to filter on.
    for r in &all.resources {
        assert_eq!((r.kind, r.event), ("deployment", "deployment"));
        assert!(!r.json.contains('\n'), "one line of JSON: {}", r.json);
    }
    let classes: Vec<_> = all.resources.iter().map(|r| r.class).collect();
    assert_eq!(classes, [Some("in_progress"), Some("failed"), Some("in_progress")]);

    // After a position: only what changed after it.
    let after_a2 = f.model.changed(a2, 100).await.unwrap();
    assert_eq!(changed_ids(&after_a2), vec![("b", b2), ("c", c)]);
    let after_b = f.model.changed(b, 100).await.unwrap();
    assert_eq!(changed_ids(&after_b), vec![("a", a2), ("b", b2), ("c", c)]);

    // Caught up, or a checkpoint behind the position asked for: nothing.
    for after in [checkpoint, checkpoint + 10] {
        let none = f.model.changed(after, 100).await.unwrap();
        assert!(none.resources.is_empty());
        assert_eq!(none.position, after);
        assert_eq!(none.checkpoint, checkpoint);
    }

    // Pages: the position is the last row's, and the rest follows from there.
    for limit in [0, 1] {
        let first = f.model.changed(0, limit).await.unwrap();
        assert_eq!(changed_ids(&first), vec![("a", a2)], "limit {limit}");
        assert_eq!(first.position, a2);
        let second = f.model.changed(first.position, limit).await.unwrap();
        assert_eq!(changed_ids(&second), vec![("b", b2)]);
        let third = f.model.changed(second.position, limit).await.unwrap();
        assert_eq!(changed_ids(&third), vec![("c", c)]);
        // The last page may say it holds everything up to the checkpoint.
        let end = f.model.changed(third.position, limit).await.unwrap();
        assert!(end.resources.is_empty());
        assert_eq!(end.position, checkpoint);
    }
    let two = f.model.changed(0, 2).await.unwrap();
    assert_eq!(changed_ids(&two), vec![("a", a2), ("b", b2)]);
    assert_eq!(two.position, b2);
    let rest = f.model.changed(two.position, 2).await.unwrap();
    assert_eq!(changed_ids(&rest), vec![("c", c)]);
    assert_eq!(rest.position, checkpoint);

    // Events of other categories move the checkpoint, change no row.
    post(&f.store, "p").await;
    f.catch_up(100).await;
    let later = f.model.changed(checkpoint, 100).await.unwrap();
    assert!(later.resources.is_empty());
    assert_eq!(later.position, f.head().await);
}

#[tokio::test]
async fn a_rebuild_records_the_same_last_change_positions_as_incremental_projection() {
    let f = Fixture::new();
    varied_history(&f.store, 40).await;
    f.catch_up(7).await;
    let incremental = f.model.changed(0, 10_000).await.unwrap();
    assert_eq!(incremental.resources.len(), 40);
    assert!(
        incremental
            .resources
            .windows(2)
            .all(|w| w[0].changed_at < w[1].changed_at)
    );
    for page in [1, 13, 10_000] {
        for from in [source(&f.store), generic_source(&f.store)] {
            let dir = tempfile::tempdir().unwrap();
            let rebuilt = open_model(dir.path());
            rebuilt.rebuild_with_page(from, page, &mut |_, _| {}).await.unwrap();
            assert_eq!(rebuilt.changed(0, 10_000).await.unwrap(), incremental, "page {page}");
        }
    }
    // Each row's position is the one of its stream's last event.
    for row in &incremental.resources {
        let stream = f
            .store
            .read_stream(&format!("deployment-{}", row.key), 1, 10_000)
            .await
            .unwrap();
        let last = stream.events.last().unwrap().position();
        assert_eq!(row.changed_at, last, "{}", row.key);
    }
}

/// The checkpoint as stored in the model's file (what another process sees).
fn stored_checkpoint(dir: &Path) -> u64 {
    let conn = rusqlite::Connection::open(dir.join("readmodels/deployments.db")).expect("open the file");
    conn.query_row("SELECT position FROM checkpoint WHERE id = 1", [], |r| {
        r.get::<_, i64>(0)
    })
    .expect("checkpoint") as u64
}

/// Pages with no deployment event are not written (a commit per wake-up for
/// nothing), yet the model reflects them: reads, `wait_for` and the step say
/// it reached them; the stored checkpoint moves with the next deployment
/// event, or once it would lag by 10,000 positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_without_an_event_of_the_model_are_remembered_not_written() {
    let dir = TempDir::new().expect("temp dir");
    let store = SqliteStore::open(dir.path(), Arc::new(Sse)).expect("open store");
    let log: Arc<dyn EventStore> = store.clone();
    let model = open_model(dir.path());
    for i in 0..5 {
        post(&store, &format!("p{i}")).await;
    }
    let step = model.process_next(&log, 100).await.expect("step");
    assert_eq!((step.read, step.checkpoint, step.head), (0, 5, 5));
    assert_eq!(stored_checkpoint(dir.path()), 0, "nothing written for posts");
    assert_eq!(model.checkpoint().await.expect("checkpoint"), 5);
    assert_eq!(list(&model, None, 10).await.1, 5, "a read reflects position 5");
    assert_eq!(model.wait_for(5, Duration::ZERO).await.expect("wait"), 5);
    assert!(model.process_next(&log, 100).await.expect("step").caught_up());

    // A deployment event: written, with the checkpoint past everything read.
    let d = deploy(&store, "d1", alice(), &[started("api")]).await;
    model.process_next(&log, 100).await.expect("step");
    assert_eq!(stored_checkpoint(dir.path()), d.events[0].position());
    assert_eq!(get(&model, "d1").await.map(|v| v.service), Some("api".into()));

    // A reset forgets what was skipped.
    post(&store, "p-last").await;
    model.process_next(&log, 100).await.expect("step");
    model.reset().await.expect("reset");
    assert_eq!(model.checkpoint().await.expect("checkpoint"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_without_an_event_of_the_model_still_moves_the_stored_checkpoint() {
    let dir = TempDir::new().expect("temp dir");
    let store = SqliteStore::open(dir.path(), Arc::new(Sse)).expect("open store");
    let log: Arc<dyn EventStore> = store.clone();
    let model = open_model(dir.path());
    // 10,001 post events in a few appends.
    for chunk in 0..11 {
        let n = if chunk == 10 { 1 } else { 1000 };
        let events = (0..n)
            .map(|_| NewEvent {
                event_type: "PostCreated".into(),
                schema: 1,
                data: json!({"title": "t", "content": "c", "tags": []}),
            })
            .collect();
        append_new(&store, &format!("post-bulk{chunk}"), alice(), events).await;
    }
    while !model.process_next(&log, 1000).await.expect("step").caught_up() {}
    let stored = stored_checkpoint(dir.path());
    assert!(stored >= 10_000, "the stored checkpoint moved: {stored}");
    assert_eq!(model.checkpoint().await.expect("checkpoint"), 10_001);
}
