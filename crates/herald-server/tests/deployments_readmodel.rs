//! The deployments read model (`herald_store::readmodel`) projected from the real
//! SQLite event store.

use std::path::Path;
use std::sync::Arc;

use herald_core::aggregate::to_new_event;
use herald_core::deployment::{DeploymentEvent, DeploymentStatus};
use herald_core::deployment_view::DeploymentView;
use herald_core::envelope::{Actor, ActorKind, Envelope};
use herald_core::store::{AppendRequest, Committed, EventStore, ExpectedVersion, Filter, NewEvent};
use herald_store::readmodel::{Projector, READMODELS_FILE, SqliteDeployments, Step, rebuild, rebuild_with_page};
use herald_store::sqlite::SqliteStore;
use serde_json::json;
use tempfile::TempDir;

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

struct Fixture {
    dir: TempDir,
    store: Arc<SqliteStore>,
    model: Arc<SqliteDeployments>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path()).expect("open event store");
        let model = SqliteDeployments::open(dir.path()).expect("open read model");
        Fixture { dir, store, model }
    }

    fn projector(&self) -> Projector {
        Projector::new(self.store.clone(), self.model.clone())
    }

    /// Projects until caught up; returns every step.
    async fn catch_up(&self, page: usize) -> Vec<Step> {
        let mut projector = self.projector();
        let mut steps = Vec::new();
        loop {
            let step = projector.process_next(page).await.expect("process_next");
            let done = step.checkpoint >= step.head;
            steps.push(step);
            if done {
                return steps;
            }
            assert!(steps.len() < 10_000, "the projector does not make progress");
        }
    }

    async fn head(&self) -> u64 {
        self.store.head().await.expect("head").position
    }

    async fn list_all(&self) -> (Vec<DeploymentView>, u64) {
        self.model.list(None, usize::MAX).await.expect("list")
    }

    async fn all(&self) -> Vec<DeploymentView> {
        self.model.list(None, usize::MAX).await.expect("list").0
    }
}

fn ids(views: &[DeploymentView]) -> Vec<&str> {
    views.iter().map(|v| v.id.as_str()).collect()
}

// ---------------------------------------------------------------------------
// Tests
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

    let ok = f.model.get("ok").await.unwrap().expect("ok is projected");
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

    let bad = f.model.get("bad").await.unwrap().expect("bad is projected");
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

    let stop_view = f.model.get("stop").await.unwrap().expect("stop is projected");
    assert_eq!(stop_view.status, DeploymentStatus::Cancelled);
    assert_eq!(stop_view.reason.as_deref(), Some("freeze"));
    assert_eq!(stop_view.progress, 0);
    assert_eq!(stop_view.stream_version, 2);
    assert_eq!(stop_view.updated_at, envelope_of(&stop, 1).recorded_at);

    let run_view = f.model.get("run").await.unwrap().expect("run is projected");
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
    // Optional fields are there as nulls on the wire.
    let wire = serde_json::to_value(&run_view).unwrap();
    assert_eq!(wire["version"], serde_json::Value::Null);
    assert!(wire.as_object().unwrap().contains_key("environment"));

    assert_eq!(f.model.get("nope").await.unwrap(), None);
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

    let (all, position) = f.model.list(None, 100).await.unwrap();
    assert_eq!(ids(&all), ["e", "d", "c", "b", "a"]);
    assert_eq!(position, head);

    let (done, position) = f.model.list(Some(DeploymentStatus::Succeeded), 100).await.unwrap();
    assert_eq!(ids(&done), ["d", "b"]);
    assert!(done.iter().all(|v| v.status == DeploymentStatus::Succeeded));
    assert_eq!(position, head);

    let (running, _) = f.model.list(Some(DeploymentStatus::InProgress), 100).await.unwrap();
    assert_eq!(ids(&running), ["e", "a"]);
    assert_eq!(running[1].progress, 90);

    let (bad, _) = f.model.list(Some(DeploymentStatus::Failed), 100).await.unwrap();
    assert_eq!(ids(&bad), ["c"]);
    let (none, _) = f.model.list(Some(DeploymentStatus::Cancelled), 100).await.unwrap();
    assert!(none.is_empty());

    let (two, _) = f.model.list(None, 2).await.unwrap();
    assert_eq!(ids(&two), ["e", "d"]);
    let (one, _) = f.model.list(Some(DeploymentStatus::InProgress), 1).await.unwrap();
    assert_eq!(ids(&one), ["e"]);
    let (zero, _) = f.model.list(None, 0).await.unwrap();
    assert!(zero.is_empty());
}

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
    let refused = f.model.apply(3, page.next_after, page.events.clone()).await.unwrap();
    assert_eq!(refused, None);
    assert_eq!(f.model.checkpoint().await.unwrap(), 0);
    assert_eq!(f.model.list(None, 10).await.unwrap(), (vec![], 0));

    // The right one: rows and checkpoint together; one entry per changed
    // deployment, in the order of first change, in its final state.
    let changed = f
        .model
        .apply(0, page.next_after, page.events.clone())
        .await
        .unwrap()
        .expect("applied");
    assert_eq!(ids(&changed), ["a", "b"]);
    assert_eq!(changed[0].progress, 70);
    assert_eq!(changed[0].message.as_deref(), Some("almost"));
    assert_eq!(changed[0].stream_version, 3);
    assert_eq!(changed[1].stream_version, 1);
    let (rows, position) = f.model.list(None, 10).await.unwrap();
    assert_eq!(position, 4);
    assert_eq!(rows.len(), 2);
    assert_eq!(f.model.get("a").await.unwrap().as_ref(), Some(&changed[0]));

    // Replaying the same events with the stale expectation is refused too.
    let before = f.model.list(None, 10).await.unwrap();
    assert_eq!(f.model.apply(0, 4, page.events.clone()).await.unwrap(), None);
    assert_eq!(f.model.list(None, 10).await.unwrap(), before);

    // Moving on from the right checkpoint with more events.
    let more = deploy(&f.store, "b", ci(), &[cancelled(None)]).await;
    let changed = f
        .model
        .apply(4, 5, more.events.clone())
        .await
        .unwrap()
        .expect("applied");
    assert_eq!(ids(&changed), ["b"]);
    assert_eq!(changed[0].status, DeploymentStatus::Cancelled);
    assert_eq!(f.model.checkpoint().await.unwrap(), 5);

    // An apply that changes no row still moves the checkpoint.
    assert_eq!(f.model.apply(5, 9, vec![]).await.unwrap(), Some(vec![]));
    assert_eq!(f.model.checkpoint().await.unwrap(), 9);

    // Reset: no rows, checkpoint 0, in one go.
    f.model.reset().await.unwrap();
    assert_eq!(f.model.list(None, 10).await.unwrap(), (vec![], 0));
    assert_eq!(f.model.get("a").await.unwrap(), None);
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

    let mut projector = f.projector();
    let first = projector.process_next(10).await.unwrap();
    assert_eq!((first.read, first.checkpoint, first.head), (10, 10, 25));
    // d0 and d1 got all five of their events.
    assert_eq!(ids(&first.changed), ["d0", "d1"]);
    assert!(first.changed.iter().all(|v| v.progress == 80 && v.stream_version == 5));
    assert_eq!(f.model.checkpoint().await.unwrap(), 10);

    let second = projector.process_next(10).await.unwrap();
    assert_eq!((second.read, second.checkpoint, second.head), (10, 20, 25));
    assert_eq!(ids(&second.changed), ["d2", "d3"]);

    let third = projector.process_next(10).await.unwrap();
    assert_eq!((third.read, third.checkpoint, third.head), (5, 25, 25));
    assert!(third.caught_up());
    assert_eq!(ids(&third.changed), ["d4"]);

    let idle = projector.process_next(10).await.unwrap();
    assert_eq!((idle.read, idle.checkpoint, idle.head), (0, 25, 25));
    assert!(idle.changed.is_empty());
    assert_eq!(f.all().await.len(), 5);

    // New events are picked up on the next step, and only the changed deployment is reported.
    deploy(&f.store, "d2", ci(), &[succeeded()]).await;
    let next = projector.process_next(10).await.unwrap();
    assert_eq!((next.read, next.checkpoint, next.head), (1, 26, 26));
    assert_eq!(ids(&next.changed), ["d2"]);
    assert_eq!(next.changed[0].status, DeploymentStatus::Succeeded);
    assert_eq!(next.changed[0].progress, 100);
    assert_eq!(
        f.model.get("d2").await.unwrap().map(|v| v.status),
        Some(DeploymentStatus::Succeeded)
    );

    // A second projector (another process, say) resumes from the stored checkpoint.
    deploy(&f.store, "d5", ci(), &[started("late")]).await;
    let mut other = f.projector();
    let step = other.process_next(10).await.unwrap();
    assert_eq!((step.read, step.checkpoint), (1, 27));
    assert_eq!(ids(&step.changed), ["d5"]);
    let stale = projector.process_next(10).await.unwrap();
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

    // Through the projector (category-filtered reads).
    let steps = f.catch_up(100).await;
    assert_eq!(steps.iter().map(|s| s.read).sum::<usize>(), 2);
    assert_eq!(f.model.checkpoint().await.unwrap(), head);
    let all = f.all().await;
    assert_eq!(ids(&all), ["a"]);
    assert_eq!(all[0].progress, 40);

    // Through apply with an unfiltered page: the same rows, the checkpoint at the end.
    let other_dir = tempfile::tempdir().unwrap();
    let other = SqliteDeployments::open(other_dir.path()).unwrap();
    let page = f.store.read_all(0, &Filter::default(), 100).await.unwrap();
    assert_eq!(page.events.len(), 7);
    let changed = other
        .apply(0, page.next_after, page.events)
        .await
        .unwrap()
        .expect("applied");
    assert_eq!(ids(&changed), ["a"]);
    assert_eq!(other.checkpoint().await.unwrap(), 7);
    assert_eq!(other.list(None, 10).await.unwrap().0, all);

    // Only other categories after the checkpoint: the projector still moves to the head.
    post(&f.store, "p5").await;
    post(&f.store, "p6").await;
    let step = f.projector().process_next(100).await.unwrap();
    assert_eq!((step.read, step.checkpoint, step.head), (0, 9, 9));
    assert!(step.changed.is_empty());
    assert_eq!(f.model.checkpoint().await.unwrap(), 9);
}

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
    let rebuilt = SqliteDeployments::open(rebuilt_dir.path()).unwrap();
    {
        let ghosts = Fixture::new();
        deploy(&ghosts.store, "ghost", alice(), &[started("ghost")]).await;
        deploy(&ghosts.store, "dep-000", alice(), &[started("not this one")]).await;
        let page = ghosts.store.read_all(0, &Filter::default(), 10).await.unwrap();
        rebuilt.apply(0, 1000, page.events).await.unwrap().expect("applied");
        assert_eq!(rebuilt.list(None, 10).await.unwrap().0.len(), 2);
    }

    let mut calls = Vec::new();
    let applied = rebuild_with_page(f.store.clone(), rebuilt.clone(), 50, |checkpoint, head| {
        calls.push((checkpoint, head))
    })
    .await
    .unwrap();
    let deployment_events = f
        .store
        .read_all(
            0,
            &Filter {
                categories: vec!["deployment".into()],
                ..Filter::default()
            },
            10_000,
        )
        .await
        .unwrap()
        .events
        .len();
    assert_eq!(applied, deployment_events as u64);
    assert_eq!(calls.last(), Some(&(head, head)));
    assert!(calls.len() >= deployment_events / 50, "{calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");

    let (rows, position) = rebuilt.list(None, usize::MAX).await.unwrap();
    assert_eq!(position, head);
    assert_eq!(rows, incremental);
    for status in [
        DeploymentStatus::InProgress,
        DeploymentStatus::Succeeded,
        DeploymentStatus::Failed,
        DeploymentStatus::Cancelled,
    ] {
        let a = f.model.list(Some(status), usize::MAX).await.unwrap();
        let b = rebuilt.list(Some(status), usize::MAX).await.unwrap();
        assert_eq!(a, b, "{status:?}");
        assert_eq!(a.0.len(), 15, "{status:?}");
    }
    assert_eq!(rebuilt.get("ghost").await.unwrap(), None);

    // The default rebuild (large pages) over the incrementally built model itself.
    let mut pages = 0;
    let applied_again = rebuild(f.store.clone(), f.model.clone(), |_, _| pages += 1)
        .await
        .unwrap();
    assert_eq!(applied_again, applied);
    assert_eq!(pages, 1);
    assert_eq!(f.all().await, incremental);
    assert_eq!(f.model.checkpoint().await.unwrap(), head);
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
async fn rebuild_in_any_page_size_gives_the_projectors_rows() {
    let f = Fixture::new();
    interleaved_history(&f.store).await;
    let head = f.head().await;
    f.catch_up(13).await;
    let projected = f.list_all().await;
    assert_eq!(projected.0.len(), 25 + 38); // "never-started" has no row
    assert_eq!(projected.1, head);
    for page in [1, 2, 7, 30, 64, 1000, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let rebuilt = SqliteDeployments::open(dir.path()).unwrap();
        let mut calls = Vec::new();
        rebuild_with_page(f.store.clone(), rebuilt.clone(), page, |c, h| calls.push((c, h)))
            .await
            .unwrap();
        assert_eq!(calls.last(), Some(&(head, head)), "page {page}");
        assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "page {page}: {calls:?}");
        let rows = rebuilt.list(None, usize::MAX).await.unwrap();
        assert_eq!(rows, projected, "page {page}");
        for view in &projected.0 {
            assert_eq!(rebuilt.get(&view.id).await.unwrap().as_ref(), Some(view), "page {page}");
        }
        // A rebuild through the generic (any event store) path gives the same rows.
        let store: Arc<dyn EventStore> = f.store.clone();
        rebuild_with_page(store, rebuilt.clone(), page, |_, _| {})
            .await
            .unwrap();
        assert_eq!(rebuilt.list(None, usize::MAX).await.unwrap(), projected, "page {page}");
    }
}

#[tokio::test]
async fn rebuild_of_an_empty_log_leaves_an_empty_model() {
    let f = Fixture::new();
    let ghosts = Fixture::new();
    deploy(&ghosts.store, "ghost", alice(), &[started("ghost")]).await;
    let page = ghosts.store.read_all(0, &Filter::default(), 10).await.unwrap();
    f.model.apply(0, 1, page.events).await.unwrap().expect("applied");

    let mut calls = Vec::new();
    let applied = rebuild(f.store.clone(), f.model.clone(), |c, h| calls.push((c, h)))
        .await
        .unwrap();
    assert_eq!(applied, 0);
    assert_eq!(calls, [(0, 0)]);
    assert_eq!(f.model.list(None, 10).await.unwrap(), (vec![], 0));
}

#[tokio::test]
async fn data_survives_reopening_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let (before, head) = {
        let store = SqliteStore::open(dir.path()).unwrap();
        let model = SqliteDeployments::open(dir.path()).unwrap();
        varied_history(&store, 12).await;
        let mut projector = Projector::new(store.clone(), model.clone());
        while !projector.process_next(5).await.unwrap().caught_up() {}
        let head = store.head().await.unwrap().position;
        (model.list(None, 100).await.unwrap(), head)
    };
    assert_eq!(before.0.len(), 12);
    assert_eq!(before.1, head);
    assert!(dir.path().join(READMODELS_FILE).exists());

    let store = SqliteStore::open(dir.path()).unwrap();
    let model = SqliteDeployments::open(dir.path()).unwrap();
    assert_eq!(model.checkpoint().await.unwrap(), head);
    assert_eq!(model.list(None, 100).await.unwrap(), before);
    assert_eq!(model.get("dep-003").await.unwrap().as_ref(), Some(&before.0[8]));

    // The projector carries on from the stored checkpoint: nothing is applied twice.
    let mut projector = Projector::new(store.clone(), model.clone());
    let step = projector.process_next(100).await.unwrap();
    assert_eq!((step.read, step.checkpoint), (0, head));
    deploy(&store, "dep-003", alice(), &[succeeded()]).await;
    let step = projector.process_next(100).await.unwrap();
    assert_eq!(step.read, 1);
    assert_eq!(ids(&step.changed), ["dep-003"]);
    assert_eq!(step.changed[0].stream_version, 3);
    assert_eq!(step.changed[0].status, DeploymentStatus::Succeeded);
}

#[tokio::test]
async fn the_read_model_lives_in_its_own_file() {
    let f = Fixture::new();
    deploy(&f.store, "a", alice(), &[started("api")]).await;
    f.catch_up(10).await;
    let path = f.model.path().to_owned();
    assert_eq!(path, f.dir.path().join(READMODELS_FILE));
    assert_ne!(path, f.store.path());
    assert!(Path::new(&path).exists());
    // The event store's file holds no read model table.
    let conn = rusqlite::Connection::open(f.store.path()).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('deployments', 'checkpoints')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
}

// ---------------------------------------------------------------------------
// Changed rows: what any process can publish from the checkpoint
// ---------------------------------------------------------------------------

fn changed_ids(changed: &herald_store::readmodel::Changed) -> Vec<(&str, u64)> {
    changed
        .rows
        .iter()
        .map(|r| (r.id.as_str(), r.updated_position))
        .collect()
}

#[tokio::test]
async fn changed_finds_rows_by_the_position_of_their_last_change() {
    let f = Fixture::new();
    let a = deploy(&f.store, "a", alice(), &[started("a")]).await.events[0].position();
    let b = deploy(&f.store, "b", alice(), &[started("b")]).await.events[0].position();
    let a2 = deploy(&f.store, "a", ci(), &[progressed(50, None)]).await.events[0].position();
    f.catch_up(100).await;
    let checkpoint = f.head().await;
    assert!(a < b && b < a2);

    // Every row once, by its last change, oldest first; the state as stored now.
    let all = f.model.changed(0, 100).await.unwrap();
    assert_eq!(changed_ids(&all), vec![("b", b), ("a", a2)]);
    assert_eq!((all.position, all.checkpoint), (checkpoint, checkpoint));
    assert_eq!(all.rows[1].parse().unwrap(), f.model.get("a").await.unwrap().unwrap());
    assert_eq!(all.rows[1].parse().unwrap().progress, 50);

    // After a position: only what changed after it.
    let after_b = f.model.changed(b, 100).await.unwrap();
    assert_eq!(changed_ids(&after_b), vec![("a", a2)]);
    let after_a = f.model.changed(a, 100).await.unwrap();
    assert_eq!(changed_ids(&after_a), vec![("b", b), ("a", a2)]);

    // Caught up, or a checkpoint behind the position asked for: nothing.
    for after in [checkpoint, checkpoint + 10] {
        let none = f.model.changed(after, 100).await.unwrap();
        assert!(none.rows.is_empty());
        assert_eq!(none.position, after);
        assert_eq!(none.checkpoint, checkpoint);
    }

    // A limit: the position is the last row's, and the rest follows from there.
    let first = f.model.changed(0, 1).await.unwrap();
    assert_eq!(changed_ids(&first), vec![("b", b)]);
    assert_eq!(first.position, b);
    let rest = f.model.changed(first.position, 1).await.unwrap();
    assert_eq!(changed_ids(&rest), vec![("a", a2)]);
    let end = f.model.changed(rest.position, 1).await.unwrap();
    assert!(end.rows.is_empty());
    assert_eq!(end.position, checkpoint);

    // Events of other categories move the checkpoint, change no row.
    post(&f.store, "p").await;
    f.catch_up(100).await;
    let later = f.model.changed(checkpoint, 100).await.unwrap();
    assert!(later.rows.is_empty());
    assert_eq!(later.position, f.head().await);
}

#[tokio::test]
async fn a_rebuild_records_the_same_last_change_positions_as_the_projector() {
    let f = Fixture::new();
    varied_history(&f.store, 40).await;
    f.catch_up(7).await;
    let incremental = f.model.changed(0, 10_000).await.unwrap();
    assert_eq!(incremental.rows.len(), 40);
    assert!(
        incremental
            .rows
            .windows(2)
            .all(|w| w[0].updated_position < w[1].updated_position)
    );
    for page in [1, 13, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let rebuilt = SqliteDeployments::open(dir.path()).unwrap();
        rebuild_with_page(f.store.clone(), rebuilt.clone(), page, |_, _| {})
            .await
            .unwrap();
        assert_eq!(rebuilt.changed(0, 10_000).await.unwrap(), incremental, "page {page}");
    }
    // Each row's position is the one of its stream's last event.
    for row in &incremental.rows {
        let stream = f
            .store
            .read_stream(&format!("deployment-{}", row.id), 1, 10_000)
            .await
            .unwrap();
        let last = stream.events.last().unwrap().position();
        assert_eq!(row.updated_position, last, "{}", row.id);
    }
}

#[tokio::test]
async fn a_version_1_file_is_migrated_on_open_and_keeps_its_rows() {
    let f = Fixture::new();
    deploy(&f.store, "old", alice(), &[started("old"), progressed(10, Some("x"))]).await;
    post(&f.store, "p").await;
    f.catch_up(100).await;
    let checkpoint = f.head().await;
    let view = f.model.get("old").await.unwrap().unwrap();
    drop(f.model);

    // The same data as a version 1 file: the tables as they were, no updated_position.
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join(READMODELS_FILE)).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE deployments (
                 id TEXT PRIMARY KEY, status TEXT NOT NULL, started_position INTEGER NOT NULL, view TEXT NOT NULL
             ) STRICT, WITHOUT ROWID;
             CREATE INDEX deployments_status ON deployments (status, started_position);
             CREATE INDEX deployments_started ON deployments (started_position);
             CREATE TABLE checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL) STRICT, WITHOUT ROWID;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO deployments (id, status, started_position, view) VALUES ('old', 'in_progress', 1, ?1)",
            [serde_json::to_string(&view).unwrap()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO checkpoints (name, position) VALUES ('deployments', ?1)",
            [checkpoint as i64],
        )
        .unwrap();
    }

    let model = SqliteDeployments::open(dir.path()).unwrap();
    assert_eq!(model.checkpoint().await.unwrap(), checkpoint, "nothing to replay");
    assert_eq!(model.get("old").await.unwrap(), Some(view.clone()));
    // Old rows changed at or before the checkpoint: found from before it, not after.
    let before = model.changed(0, 100).await.unwrap();
    assert_eq!(changed_ids(&before), vec![("old", checkpoint)]);
    assert!(model.changed(checkpoint, 100).await.unwrap().rows.is_empty());
    {
        let conn = rusqlite::Connection::open(dir.path().join(READMODELS_FILE)).unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, herald_store::readmodel::MODEL_VERSION);
        let indexed: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_index_list('deployments') WHERE name = 'deployments_updated'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexed, 1, "updated_position is indexed");
    }
    drop(model);

    // Reopening a migrated file changes nothing; new events are recorded as before.
    let model = SqliteDeployments::open(dir.path()).unwrap();
    assert_eq!(model.get("old").await.unwrap(), Some(view));
    let next = deploy(&f.store, "old", ci(), &[succeeded()]).await.events[0].position();
    let mut projector = Projector::new(f.store.clone(), model.clone());
    while !projector.process_next(100).await.unwrap().caught_up() {}
    let after = model.changed(checkpoint, 100).await.unwrap();
    assert_eq!(changed_ids(&after), vec![("old", next)]);
    assert_eq!(after.rows[0].parse().unwrap().status, DeploymentStatus::Succeeded);
    assert_eq!(model.list(None, 10).await.unwrap().0.len(), 1);
}
