//! Command handling (`herald_core::command::handle`) against the real SQLite
//! store, where two processes write one log: each process decides from the
//! states it cached or guessed, and must still never act on a stale one.

use std::sync::Arc;

use herald_core::command::{CommandError, CommandRequest, StreamLocks, handle};
use herald_core::envelope::{Actor, ActorKind};
use herald_core::names::AggregateId;
use herald_core::store::{AppendOutcome, EventStore};
use herald_store::sqlite::SqliteStore;
use serde_json::{Value, json};

struct Process {
    store: Arc<SqliteStore>,
    locks: StreamLocks,
}

impl Process {
    fn open(dir: &std::path::Path) -> Process {
        Process {
            store: SqliteStore::open(dir).expect("open the store"),
            locks: StreamLocks::default(),
        }
    }

    async fn run(&self, command_type: &str, id: &str, expected: Option<u64>, data: Value) -> Result<u64, CommandError> {
        self.run_as(command_type, id, expected, data, true).await
    }

    async fn run_as(
        &self,
        command_type: &str,
        id: &str,
        expected: Option<u64>,
        data: Value,
        presence_verified: bool,
    ) -> Result<u64, CommandError> {
        let actor = Actor {
            kind: ActorKind::Token,
            id: "t1".into(),
            name: "tester".into(),
        };
        let request = CommandRequest {
            command_type: command_type.into(),
            aggregate_id: AggregateId::parse(id).expect("test setup"),
            expected_version: expected,
            command_id: None,
            correlation_id: None,
            data,
            presence_verified,
        };
        match handle(&*self.store, &self.locks, &actor, request).await? {
            AppendOutcome::Appended(c) => Ok(c.version),
            AppendOutcome::Duplicate(c) => panic!("no command_id was given, yet a duplicate of {c:?}"),
        }
    }
}

fn start() -> Value {
    json!({ "service": "api", "version": "1.0.0", "environment": "prod" })
}

/// The (expected, actual) versions of a conflict.
fn conflict(result: Result<u64, CommandError>) -> (u64, u64) {
    match result {
        Err(CommandError::Conflict { expected, actual, .. }) => (expected, actual),
        other => panic!("expected a version conflict, got {other:?}"),
    }
}

fn rule(result: Result<u64, CommandError>) -> &'static str {
    match result {
        Err(CommandError::Rejected(r)) => r.rule,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_state_cached_by_one_process_is_checked_against_what_another_appended() {
    let dir = tempfile::tempdir().expect("test setup");
    let one = Process::open(dir.path());
    let two = Process::open(dir.path());

    // `one` starts d1 and caches its state (in progress, version 1).
    assert_eq!(
        one.run("StartDeployment", "d1", None, start())
            .await
            .expect("test setup"),
        1
    );
    assert_eq!(
        one.run("ReportDeploymentProgress", "d1", None, json!({"percent": 10}))
            .await
            .expect("test setup"),
        2
    );
    // `two` finishes it behind `one`'s back.
    assert_eq!(
        two.run("SucceedDeployment", "d1", None, json!({}))
            .await
            .expect("test setup"),
        3
    );

    // On its cached state `one` would accept progress and a failure; the log says no.
    assert_eq!(
        rule(
            one.run("ReportDeploymentProgress", "d1", None, json!({"percent": 50}))
                .await
        ),
        "Deployment not in progress"
    );
    assert_eq!(
        rule(one.run("FailDeployment", "d1", None, json!({"reason": "x"})).await),
        "Deployment not in progress"
    );

    // `two` starts d2; `one` guesses d2 is new, and the log says it is not.
    assert_eq!(
        two.run("StartDeployment", "d2", None, start())
            .await
            .expect("test setup"),
        1
    );
    assert_eq!(
        rule(one.run("StartDeployment", "d2", None, start()).await),
        "Deployment already started"
    );
    assert_eq!(
        conflict(one.run("StartDeployment", "d2", Some(0), start()).await),
        (0, 1)
    );
    // …and `one` goes on from the stored state, at the next version.
    assert_eq!(
        one.run("ReportDeploymentProgress", "d2", Some(1), json!({"percent": 5}))
            .await
            .expect("test setup"),
        2
    );
    // A cached version that another process moved on conflicts when it is expected.
    assert_eq!(
        two.run("ReportDeploymentProgress", "d2", None, json!({"percent": 6}))
            .await
            .expect("test setup"),
        3
    );
    assert_eq!(
        conflict(
            one.run("ReportDeploymentProgress", "d2", Some(2), json!({"percent": 7}))
                .await
        ),
        (2, 3)
    );
    assert_eq!(
        one.run("ReportDeploymentProgress", "d2", None, json!({"percent": 8}))
            .await
            .expect("test setup"),
        4
    );

    // Every stream's versions are 1..=n, once each.
    for (stream, n) in [("deployment-d1", 3), ("deployment-d2", 4)] {
        let slice = one.store.read_stream(stream, 1, 100).await.expect("test setup");
        let versions: Vec<u64> = slice.events.iter().map(|e| e.version()).collect();
        assert_eq!(versions, (1..=n).collect::<Vec<_>>(), "{stream}");
    }
}

#[tokio::test]
async fn many_streams_overflow_the_state_cache_without_changing_an_answer() {
    let dir = tempfile::tempdir().expect("test setup");
    let one = Process::open(dir.path());
    // More aggregates than the cache keeps: the oldest are read from the store again.
    let ids: Vec<String> = (0..20_000).map(|i| format!("m{i}")).collect();
    for chunk in ids.chunks(2_000) {
        let runs = chunk.iter().map(|id| one.run("StartDeployment", id, None, start()));
        for result in futures_util::future::join_all(runs).await {
            assert_eq!(result.expect("test setup"), 1);
        }
    }
    for id in [&ids[0], &ids[9_999], &ids[19_999]] {
        assert_eq!(
            one.run("ReportDeploymentProgress", id, None, json!({"percent": 1}))
                .await
                .expect("test setup"),
            2
        );
        assert_eq!(
            rule(one.run("StartDeployment", id, None, start()).await),
            "Deployment already started"
        );
        assert_eq!(
            one.run("SucceedDeployment", id, Some(2), json!({}))
                .await
                .expect("test setup"),
            3
        );
    }
    assert_eq!(one.store.head().await.expect("test setup").position, 20_000 + 3 * 2);
}

#[tokio::test]
async fn the_domain_says_which_commands_need_a_recent_passkey_verification() {
    let dir = tempfile::tempdir().expect("test setup");
    let p = Process::open(dir.path());
    // Starting a deployment is risky: refused without a recent verification,
    // and nothing is appended.
    match p.run_as("StartDeployment", "d1", None, start(), false).await {
        Err(CommandError::StepUpRequired(t)) => assert_eq!(t, "StartDeployment"),
        other => panic!("expected StepUpRequired, got {other:?}"),
    }
    assert_eq!(p.store.head().await.expect("head").position, 0);
    // Bad data is still a 400 first (nothing to verify for).
    assert!(matches!(
        p.run_as("StartDeployment", "d1", None, json!({}), false).await,
        Err(CommandError::Invalid(_))
    ));
    assert_eq!(
        p.run_as("StartDeployment", "d1", None, start(), true)
            .await
            .expect("verified"),
        1
    );
    // Reporting on a running deployment is not risky.
    assert_eq!(
        p.run_as("ReportDeploymentProgress", "d1", None, json!({ "percent": 50 }), false)
            .await
            .expect("progress needs no step-up"),
        2
    );
    assert_eq!(
        p.run_as("SucceedDeployment", "d1", None, json!({}), false)
            .await
            .expect("finishing needs no step-up"),
        3
    );
}
