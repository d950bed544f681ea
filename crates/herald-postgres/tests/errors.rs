//! Errors are precise and never carry the database password; input that
//! PostgreSQL cannot store is refused alone, not with its batch.

mod common;

use std::sync::Arc;

use common::PgHarness;
use herald_conformance::Harness as _;
use herald_core::JsonLines;
use herald_core::envelope::Actor;
use herald_core::store::{AppendRequest, ExpectedVersion, NewEvent, StoreError};
use herald_postgres::{PgConfig, PgStore};

#[tokio::test]
async fn connection_errors_do_not_show_the_password() {
    for url in [
        // Nothing listens on port 1.
        "postgres://herald:s3cretpw@127.0.0.1:1/herald",
        "postgres://herald:s3cretpw@127.0.0.1:notaport/herald",
        "host=127.0.0.1 port=1 user=herald password=s3cretpw dbname=herald",
    ] {
        let err = PgStore::open(url, Arc::new(JsonLines), PgConfig::default())
            .await
            .expect_err(url);
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("s3cretpw"), "{url}: the password shows in {shown}");
        assert!(matches!(err, StoreError::Backend(_)), "{url}: {err:?}");
        if url.contains(":1/") || url.contains("port=1 ") {
            assert!(shown.contains("127.0.0.1:1/herald"), "{url}: where? {shown}");
        }
    }
}

fn request(stream: &str, event_type: &str) -> AppendRequest {
    AppendRequest {
        stream: stream.to_owned(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_type: event_type.to_owned(),
            schema: 1,
            data: serde_json::json!({ "nul": "a\u{0}b" }),
        }],
        actor: Actor::system("te\u{0}st"),
        command_id: uuid::Uuid::new_v4().to_string(),
        correlation_id: "c\u{0}".into(),
        idempotency_fingerprint: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_fail_only_their_append() {
    let Some(h) = PgHarness::new(Arc::new(JsonLines)).await else {
        return;
    };
    let store = h.open().await;
    let mut fingerprinted = request("post-x", "Ok");
    fingerprinted.command_id = "cmd\u{0}".into();
    fingerprinted.idempotency_fingerprint = Some("fp".into());
    let (bad_type, good, bad_command) = tokio::join!(
        store.append(request("post-x", "Bad\u{0}Type")),
        store.append(request("post-x", "Ok")),
        store.append(fingerprinted),
    );
    assert!(matches!(bad_type, Err(StoreError::InvalidAppend(_))), "{bad_type:?}");
    assert!(
        matches!(bad_command, Err(StoreError::InvalidAppend(_))),
        "{bad_command:?}"
    );
    // NUL inside JSON strings is escaped in the envelope and stored.
    let good = good.expect("an append with NUL only inside its JSON").into_committed();
    let env = good.events[0].envelope().expect("envelope");
    assert_eq!(env.data["nul"], "a\u{0}b");
    assert_eq!(env.actor.name, "te\u{0}st");
    let report = store.verify(None).await.expect("verify");
    assert!(report.ok, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_recovers_when_its_connections_are_killed() {
    let Some(h) = PgHarness::new(Arc::new(JsonLines)).await else {
        return;
    };
    let store = h.open().await;
    let mut rx = store.live();
    store.append(request("post-k", "Before")).await.expect("append");
    let (admin, connection) = tokio_postgres::connect(h.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'herald' AND datname = current_database()",
            &[],
        )
        .await
        .expect("terminate the pool's connections");
    assert!(!killed.is_empty(), "the pool had no connection to kill");
    // The next appends may fail (a dead connection is found when used), but
    // the writer goes on and the pool reconnects.
    let mut committed = None;
    for _ in 0..5 {
        match store.append(request("post-k", "After")).await {
            Ok(outcome) => {
                committed = Some(outcome.into_committed());
                break;
            }
            Err(e) => {
                assert!(
                    matches!(e, StoreError::Backend(_) | StoreError::Unavailable(_)),
                    "{e:?}"
                );
                assert!(
                    !matches!(store.write_health(), herald_core::store::WriteHealth::Ok),
                    "a failed commit left write_health Ok"
                );
            }
        }
    }
    let committed = committed.expect("no append succeeded after the connections were killed");
    assert_eq!(committed.last_position(), 2);
    assert_eq!(store.write_health(), herald_core::store::WriteHealth::Ok);
    // Live carried both, once, in order.
    let mut positions = Vec::new();
    while positions.len() < 2 {
        let batch = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("live batch in time")
            .expect("live batch");
        positions.extend(batch.events.iter().map(|e| e.position()));
    }
    assert_eq!(positions, [1, 2]);
}
