//! The durable horizon (docs/adr/0009-postgres-sequencer.md): a batch commits
//! without waiting for the WAL flush and is made durable right after, outside
//! the sequencer lock; readers read only up to the horizon. A batch whose
//! writer stops between the two (killed) is invisible to readers until some
//! instance's follower, finding the horizon stuck behind the sequencer, makes
//! it durable itself.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::PgHarness;
use herald_core::store::{Filter, StoreError};
use herald_core::{EventStore, JsonLines};
use herald_postgres::PgConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_left_unflushed_is_hidden_until_a_follower_flushes_it() {
    let Some(h) = PgHarness::new(Arc::new(JsonLines)).await else {
        return;
    };
    let poll = Duration::from_millis(200);
    // The writer's process: its batch commits, then it "dies" before the flush.
    let writer = h
        .open_with(PgConfig {
            poll: Duration::from_secs(3600),
            listen: false,
            ..PgConfig::default()
        })
        .await;
    writer
        .append(common::request("thing-a", 1))
        .await
        .expect("a durable first append");
    writer.lose_writer_flushes(1);
    match writer.append(common::request("thing-b", 1)).await {
        Err(StoreError::Unavailable(detail)) => assert!(detail.contains("may have been committed"), "{detail}"),
        other => panic!("an append whose flush was lost must say it may have been committed, got {other:?}"),
    }

    // Committed (the sequencer is at 2) but not durable: no reader sees it.
    let (client, connection) = tokio_postgres::connect(h.url(), tokio_postgres::NoTls)
        .await
        .expect("a connection of the test's own");
    tokio::spawn(connection);
    let sequencer: i64 = client
        .query_one("SELECT position FROM sequencer", &[])
        .await
        .expect("the sequencer")
        .get(0);
    assert_eq!(sequencer, 2, "the batch committed");
    let page = writer.read_all(0, &Filter::default(), 10).await.expect("read_all");
    assert_eq!(page.head, 1, "the head is the durable horizon");
    assert_eq!(page.events.len(), 1, "an event past the horizon is not read");
    let slice = writer.read_stream("thing-b", 1, 10).await.expect("read_stream");
    assert_eq!((slice.version, slice.events.len()), (0, 0), "nor read from its stream");

    // Another instance, polling: it sees the horizon stuck on two polls in a
    // row and flushes it; then both see the event.
    let other = h
        .open_with(PgConfig {
            poll,
            listen: false,
            ..PgConfig::default()
        })
        .await;
    let mut live = other.live();
    let started = Instant::now();
    loop {
        let head = other.head().await.expect("head").position;
        if head == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the follower did not flush the stuck horizon (head {head})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let batch = tokio::time::timeout(Duration::from_secs(5), live.recv())
        .await
        .expect("the event reaches the other instance's live channel")
        .expect("live");
    assert_eq!(batch.events.last().map(|e| e.position()), Some(2));
    let slice = writer.read_stream("thing-b", 1, 10).await.expect("read_stream");
    assert_eq!(slice.version, 1, "now durable, the stream has it");

    // The writer goes on after the horizon, with no gap.
    let next = writer
        .append(common::request("thing-c", 1))
        .await
        .expect("append after the lost flush");
    assert_eq!(next.committed().first_position(), 3);
    let verified = writer.verify(None).await.expect("verify");
    assert!(verified.ok, "{verified:?}");
}
