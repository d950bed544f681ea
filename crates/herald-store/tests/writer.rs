//! The writer thread under failure: a panic in a batch fails only that batch's
//! callers, the loop goes on with its queue, the live channel carries every
//! committed position once, and a writer that keeps panicking gives up through
//! its fatal hook. Also: `Scanner::verify` on a store that is intact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::JsonLines;
use herald_core::envelope::Actor;
use herald_core::store::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreError, WriteHealth};
use herald_store::scan::Scanner;
use herald_store::sqlite::{SqliteConfig, SqliteStore, WriterFatal};
use serde_json::json;

fn request(stream: &str) -> AppendRequest {
    AppendRequest {
        stream: stream.into(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_type: "Happened".into(),
            schema: 1,
            data: json!({ "n": 1 }),
        }],
        actor: Actor::system("test"),
        command_id: uuid::Uuid::now_v7().to_string(),
        correlation_id: "c".into(),
        idempotency_fingerprint: None,
    }
}

/// Every position on the live channel so far (waits up to 5 s for `want`).
async fn live_positions(rx: &mut herald_core::store::LiveReceiver, want: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.len() < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(batch)) => seen.extend(batch.events.iter().map(|e| e.position())),
            Ok(Err(e)) => panic!("live channel: {e}"),
            Err(_) => break,
        }
    }
    // Nothing more (e.g. a duplicate) arrives in the next moments.
    if let Ok(Ok(batch)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        seen.extend(batch.events.iter().map(|e| e.position()));
    }
    seen
}

/// A store whose writer gives up after `panic_limit` panics, and the reasons
/// its fatal hook was called with.
fn open_giving_up_after(panic_limit: u32) -> (tempfile::TempDir, Arc<SqliteStore>, Arc<Mutex<Vec<String>>>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let called: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = called.clone();
    let store = SqliteStore::open_with(
        dir.path(),
        Arc::new(JsonLines),
        SqliteConfig {
            writer_panic_limit: panic_limit,
            on_writer_fatal: WriterFatal(Arc::new(move |why: &str| {
                record.lock().expect("the hook's lock").push(why.to_owned())
            })),
            ..SqliteConfig::default()
        },
    )
    .expect("open");
    (dir, store, called)
}

#[tokio::test]
async fn a_panic_fails_only_its_batch_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path(), Arc::new(JsonLines)).expect("open");
    let mut live = store.live();
    store.append(request("thing-a")).await.expect("first append");
    assert_eq!(store.write_health(), WriteHealth::Ok);

    store.inject_writer_panic();
    match store.append(request("thing-b")).await {
        Err(StoreError::Unavailable(detail)) => assert!(detail.contains("panicked"), "{detail}"),
        other => panic!("the panicking batch's append must fail as unavailable, got {other:?}"),
    }
    match store.write_health() {
        WriteHealth::Failing(cause) => assert!(cause.contains("panicked"), "{cause}"),
        other => panic!("after a panic the write path is failing, got {other:?}"),
    }

    // The writer runs on: the next append commits at the next position.
    let next = store.append(request("thing-c")).await.expect("append after the panic");
    assert_eq!(
        next.committed().first_position(),
        2,
        "nothing of the failed batch was written"
    );
    assert_eq!(store.write_health(), WriteHealth::Ok, "a commit makes it healthy again");
    assert_eq!(live_positions(&mut live, 2).await, vec![1, 2]);

    let report = store.verify(None).await.expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checked, 2);
}

#[tokio::test]
async fn rows_committed_before_a_panic_are_published_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path(), Arc::new(JsonLines)).expect("open");
    let mut live = store.live();
    store.append(request("thing-a")).await.expect("first append");

    // The batch commits, then the writer panics before it publishes or answers.
    store.inject_writer_panic_after_commit();
    match store.append(request("thing-b")).await {
        Err(StoreError::Unavailable(detail)) => assert!(detail.contains("may have been committed"), "{detail}"),
        other => panic!("unavailable, got {other:?}"),
    }
    let next = store.append(request("thing-c")).await.expect("append after the panic");
    assert_eq!(next.committed().first_position(), 3, "the committed row is kept");
    assert_eq!(
        live_positions(&mut live, 3).await,
        vec![1, 2, 3],
        "every committed position is published once, in order"
    );
    let page = store.read_all(0, &Default::default(), 10).await.expect("read");
    assert_eq!(page.events.len(), 3);
    assert!(store.verify(None).await.expect("verify").ok);
}

#[tokio::test]
async fn a_writer_that_keeps_panicking_gives_up_through_its_fatal_hook() {
    let (_dir, store, called) = open_giving_up_after(3);
    store.inject_writer_panics(u32::MAX);
    for i in 0..3 {
        let r = store.append(request("thing-a")).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "append {i}: {r:?}");
        if i < 2 {
            assert!(called.lock().unwrap().is_empty(), "no exit before the limit");
        }
    }
    // The callers are answered first; the hook runs right after.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while called.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = called.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "the fatal hook runs once: {calls:?}");
    assert!(calls[0].contains("3 panics in a row"), "{}", calls[0]);
    match store.write_health() {
        WriteHealth::Down(cause) => assert!(cause.contains("stopped"), "{cause}"),
        other => panic!("a writer that gave up is down, got {other:?}"),
    }
    // Later appends fail at once rather than hang.
    let r = tokio::time::timeout(Duration::from_secs(5), store.append(request("thing-b")))
        .await
        .expect("an append to a stopped writer returns");
    match r {
        Err(StoreError::Unavailable(cause)) => assert!(cause.contains("stopped"), "{cause}"),
        other => panic!("an append to a stopped writer is unavailable, got {other:?}"),
    }
    assert_eq!(store.head().await.expect("head").position, 0, "nothing was written");
}

#[tokio::test]
async fn scanner_verify_passes_an_intact_log_and_checks_the_anchor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path(), Arc::new(JsonLines)).expect("open");
    for s in ["thing-a", "thing-b", "other-c"] {
        store.append(request(s)).await.expect("append");
    }
    let head = store.head().await.expect("head");
    let scanner = Scanner::open_read_only(dir.path()).expect("read-only");
    let report = scanner.verify(None, |_, _| {}).expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!((report.checked, report.head_position), (3, 3));
    let anchor = format!("2:{}", {
        let page = store.read_all(1, &Default::default(), 1).await.expect("read");
        serde_json::from_slice::<serde_json::Value>(page.events[0].json()).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    assert!(scanner.verify(Some(anchor.parse().unwrap()), |_, _| {}).unwrap().ok);
    let wrong = format!("2:{}", head.hash);
    let report = scanner.verify(Some(wrong.parse().unwrap()), |_, _| {}).unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad_position, Some(2), "{report:?}");
    assert!(Scanner::open_read_only(&dir.path().join("nowhere")).is_err());
}

#[tokio::test]
async fn panics_with_commits_between_them_still_give_up_when_they_come_within_a_minute() {
    let (_dir, store, called) = open_giving_up_after(3);
    for round in 0..3 {
        store.inject_writer_panic();
        assert!(store.append(request("thing-a")).await.is_err(), "round {round}");
        if round < 2 {
            store
                .append(request("thing-a"))
                .await
                .expect("a commit between the panics");
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while called.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = called.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].contains("3 panics within a minute"), "{}", calls[0]);
    assert_eq!(
        store.head().await.expect("head").position,
        2,
        "the two commits between stay"
    );
}
