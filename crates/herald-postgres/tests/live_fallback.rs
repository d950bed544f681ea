//! Live delivery of other processes' commits does not depend on NOTIFY: with
//! notifications ignored, the poll delivers them (late by at most about a
//! poll interval); with the poll practically off, NOTIFY does; a listener
//! whose connection is killed reconnects and delivers again.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{PgHarness, request};
use herald_core::store::LiveReceiver;
use herald_core::{EventStore, JsonLines};
use herald_postgres::{LISTENER_NAME, PgConfig};

/// Receives until position `until`; asserts every position once, in order,
/// from `after + 1`. Returns how long it took.
async fn receive_until(rx: &mut LiveReceiver, after: u64, until: u64, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    let mut last = after;
    while last < until {
        let batch = match tokio::time::timeout(within.saturating_sub(started.elapsed()), rx.recv()).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => panic!("{what}: live receiver: {e:?}"),
            Err(_) => panic!("{what}: position {until} did not arrive within {within:?} (last: {last})"),
        };
        for e in &batch.events {
            assert_eq!(e.position(), last + 1, "{what}: live positions out of order");
            last = e.position();
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_notifications_are_made_up_by_the_poll() {
    let Some(h) = PgHarness::new(Arc::new(JsonLines)).await else {
        return;
    };
    let poll = Duration::from_millis(250);
    let deaf = h
        .open_with(PgConfig {
            listen: false,
            poll,
            ..PgConfig::default()
        })
        .await;
    let writer = h.open_with(PgConfig::default()).await;
    let mut rx = deaf.live();
    let mut last = 0;
    let mut slowest = Duration::ZERO;
    for round in 0..8 {
        let committed = writer
            .append(request("post-poll", 1 + round % 3))
            .await
            .expect("append")
            .into_committed();
        let took = receive_until(
            &mut rx,
            last,
            committed.last_position(),
            Duration::from_secs(10),
            &format!("round {round}"),
        )
        .await;
        slowest = slowest.max(took);
        last = committed.last_position();
    }
    println!("slowest delivery by poll alone: {slowest:?} (poll {poll:?})");
    // The bound: a poll interval, plus the time to read (generous for a busy machine).
    assert!(
        slowest < poll + Duration::from_secs(2),
        "delivery by the poll took {slowest:?}, more than a poll interval ({poll:?}) and slack"
    );
    // And its own appends are published directly, in order with the others'.
    let own = deaf
        .append(request("post-own", 2))
        .await
        .expect("append")
        .into_committed();
    receive_until(
        &mut rx,
        last,
        own.last_position(),
        Duration::from_secs(10),
        "own append",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_deliver_without_the_poll_and_survive_a_killed_listener() {
    let Some(h) = PgHarness::new(Arc::new(JsonLines)).await else {
        return;
    };
    // A poll that never comes within the test: only NOTIFY (and the wake-up
    // after a reconnect) can deliver.
    let listening = h
        .open_with(PgConfig {
            poll: Duration::from_secs(3600),
            ..PgConfig::default()
        })
        .await;
    let writer = h.open_with(PgConfig::default()).await;
    let mut rx = listening.live();
    // The listener may still be connecting: its first LISTEN wakes the
    // follower, so the first append arrives either way.
    let first = writer
        .append(request("post-n", 1))
        .await
        .expect("append")
        .into_committed();
    receive_until(&mut rx, 0, first.last_position(), Duration::from_secs(10), "first").await;
    let second = writer
        .append(request("post-n", 3))
        .await
        .expect("append")
        .into_committed();
    receive_until(
        &mut rx,
        first.last_position(),
        second.last_position(),
        Duration::from_secs(10),
        "by NOTIFY",
    )
    .await;

    // Kill the listener's connection: it reconnects (a second later at most)
    // and catches up on what was committed meanwhile.
    let (admin, connection) = tokio_postgres::connect(h.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()",
            &[&LISTENER_NAME],
        )
        .await
        .expect("terminate the listener");
    assert_eq!(killed.len(), 2, "both stores have one LISTEN connection each");
    let third = writer
        .append(request("post-n", 2))
        .await
        .expect("append")
        .into_committed();
    receive_until(
        &mut rx,
        second.last_position(),
        third.last_position(),
        Duration::from_secs(10),
        "after the kill",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fourth = writer
        .append(request("post-n", 1))
        .await
        .expect("append")
        .into_committed();
    receive_until(
        &mut rx,
        third.last_position(),
        fourth.last_position(),
        Duration::from_secs(10),
        "after reconnecting",
    )
    .await;
}
