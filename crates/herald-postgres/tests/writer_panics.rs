//! The PostgreSQL writer under panics, as the embedded one
//! (docs/adr/0006-writer-supervision.md): a panic fails only its batch and the
//! writer goes on (the transaction rolled back, the sequencer released); one
//! that keeps panicking gives up through its fatal hook.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::PgHarness;
use herald_core::JsonLines;
use herald_core::store::{EventStore, StoreError, WriteHealth};
use herald_core::supervise::WriterFatal;
use herald_postgres::PgConfig;

/// A config whose writer gives up after `limit` panics, and the reasons its
/// fatal hook was called with.
fn giving_up_after(limit: u32) -> (PgConfig, Arc<Mutex<Vec<String>>>) {
    let called: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = called.clone();
    let config = PgConfig {
        writer_panic_limit: limit,
        on_writer_fatal: WriterFatal(Arc::new(move |why: &str| {
            record.lock().expect("the hook's lock").push(why.to_owned())
        })),
        ..PgConfig::default()
    };
    (config, called)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_only_its_batch_and_the_writer_goes_on() {
    let Some(h) = PgHarness::new(Arc::new(JsonLines)).await else {
        return;
    };
    let (config, called) = giving_up_after(3);
    let store = h.open_with(config).await;
    store.append(common::request("thing-a", 1)).await.expect("first append");

    store.inject_writer_panics(1);
    match store.append(common::request("thing-b", 1)).await {
        Err(StoreError::Unavailable(detail)) => {
            assert!(
                detail.contains("panicked") && detail.contains("was not committed"),
                "{detail}"
            )
        }
        other => panic!("the panicking batch's append must fail as unavailable, got {other:?}"),
    }
    match store.write_health() {
        WriteHealth::Failing(cause) => assert!(cause.contains("panicked"), "{cause}"),
        other => panic!("after a panic the write path is failing, got {other:?}"),
    }

    // The next append commits at the next position: the panicking batch's
    // transaction was rolled back and the sequencer released.
    let next = tokio::time::timeout(Duration::from_secs(10), store.append(common::request("thing-c", 1)))
        .await
        .expect("the sequencer is not left locked")
        .expect("append after the panic");
    assert_eq!(
        next.committed().first_position(),
        2,
        "nothing of the failed batch was written"
    );
    assert_eq!(store.write_health(), WriteHealth::Ok);
    // Another store on the database is not blocked either.
    let other = h.open_with(PgConfig::default()).await;
    let third = tokio::time::timeout(Duration::from_secs(10), other.append(common::request("thing-d", 1)))
        .await
        .expect("another process can lock the sequencer")
        .expect("append from another store");
    assert_eq!(third.committed().first_position(), 3);
    assert!(store.verify(None).await.expect("verify").ok);
    assert!(called.lock().unwrap().is_empty(), "one panic is survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_keeps_panicking_gives_up_through_its_fatal_hook() {
    let Some(h) = PgHarness::new(Arc::new(JsonLines)).await else {
        return;
    };
    let (config, called) = giving_up_after(3);
    let store = h.open_with(config).await;
    store.inject_writer_panics(u32::MAX);
    for i in 0..3 {
        let r = store.append(common::request("thing-a", 1)).await;
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
    let r = tokio::time::timeout(Duration::from_secs(5), store.append(common::request("thing-b", 1)))
        .await
        .expect("an append to a stopped writer returns");
    match r {
        Err(StoreError::Unavailable(cause)) => assert!(cause.contains("stopped"), "{cause}"),
        other => panic!("an append to a stopped writer is unavailable, got {other:?}"),
    }
    assert_eq!(store.head().await.expect("head").position, 0, "nothing was written");
}
