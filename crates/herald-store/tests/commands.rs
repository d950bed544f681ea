//! Command handling (`herald_core::command::Commands::handle`) against the
//! real SQLite store, where two processes write one log: each process decides
//! from the states it cached or guessed, and must still never act on a stale
//! one.
//!
//! The domains live in herald-server; this crate's tests register an
//! aggregate of their own with the same shape of rules as a deployment's
//! (start once, report while running, finish once), so what is tested is the
//! command path, not one domain.

use std::sync::Arc;

use herald_core::JsonLines;
use herald_core::aggregate::{Aggregate, InvalidCommand, Rejection, parse_data};
use herald_core::command::{CommandError, CommandRequest, Commands, StreamLocks};
use herald_core::envelope::{Actor, ActorKind};
use herald_core::names::AggregateId;
use herald_core::store::{AppendOutcome, EventStore};
use herald_store::sqlite::SqliteStore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// A test aggregate: a job is started once, reports progress while it runs,
// and succeeds or fails once.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Job {
    running: Option<bool>,
}

#[derive(Debug)]
enum JobCommand {
    Start(String),
    Progress(u8),
    Succeed,
    Fail(String),
}

// The variants are the event types, which name their aggregate.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum JobEvent {
    JobStarted { service: String },
    JobProgressed { percent: u8 },
    JobSucceeded {},
    JobFailed { reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartData {
    service: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressData {
    percent: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailData {
    reason: String,
}

const JOB_COMMANDS: &[&str] = &["StartJob", "ReportJobProgress", "SucceedJob", "FailJob"];

impl Aggregate for Job {
    const CATEGORY: &'static str = "job";
    const COMMAND_TYPES: &'static [&'static str] = JOB_COMMANDS;
    type Command = JobCommand;
    type Event = JobEvent;

    fn parse_command(command_type: &str, data: Value) -> Option<Result<JobCommand, InvalidCommand>> {
        let parsed = match command_type {
            "StartJob" => parse_data::<StartData>(command_type, data).map(|d| JobCommand::Start(d.service)),
            "ReportJobProgress" => {
                parse_data::<ProgressData>(command_type, data).map(|d| JobCommand::Progress(d.percent))
            }
            "SucceedJob" => Ok(JobCommand::Succeed),
            "FailJob" => parse_data::<FailData>(command_type, data).map(|d| JobCommand::Fail(d.reason)),
            _ => return None,
        };
        Some(parsed)
    }

    /// Starting a job is the risky command.
    fn needs_step_up(command: &JobCommand) -> bool {
        matches!(command, JobCommand::Start(_))
    }

    fn decide(&self, command: &JobCommand) -> Result<Vec<JobEvent>, Rejection> {
        let refuse = |rule| {
            Err(Rejection {
                rule,
                detail: String::new(),
            })
        };
        match (self.running, command) {
            (None, JobCommand::Start(service)) => Ok(vec![JobEvent::JobStarted {
                service: service.clone(),
            }]),
            (Some(_), JobCommand::Start(_)) => refuse("Job already started"),
            (None, _) => refuse("Job not started"),
            (Some(false), _) => refuse("Job not running"),
            (Some(true), JobCommand::Progress(percent)) => Ok(vec![JobEvent::JobProgressed { percent: *percent }]),
            (Some(true), JobCommand::Succeed) => Ok(vec![JobEvent::JobSucceeded {}]),
            (Some(true), JobCommand::Fail(reason)) => Ok(vec![JobEvent::JobFailed { reason: reason.clone() }]),
        }
    }

    fn evolve(&mut self, event: JobEvent) {
        self.running = Some(matches!(
            event,
            JobEvent::JobStarted { .. } | JobEvent::JobProgressed { .. }
        ));
    }
}

fn commands() -> Commands {
    let mut commands = Commands::default();
    commands.register::<Job>();
    commands
}

struct Process {
    store: Arc<SqliteStore>,
    locks: StreamLocks,
    commands: Commands,
}

impl Process {
    fn open(dir: &std::path::Path) -> Process {
        Process {
            store: SqliteStore::open(dir, Arc::new(JsonLines)).expect("open the store"),
            locks: StreamLocks::default(),
            commands: commands(),
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
        match self.commands.handle(&*self.store, &self.locks, &actor, request).await? {
            AppendOutcome::Appended(c) => Ok(c.version),
            AppendOutcome::Duplicate(c) => panic!("no command_id was given, yet a duplicate of {c:?}"),
        }
    }
}

fn start() -> Value {
    json!({ "service": "api" })
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
    assert_eq!(one.run("StartJob", "d1", None, start()).await.expect("test setup"), 1);
    assert_eq!(
        one.run("ReportJobProgress", "d1", None, json!({"percent": 10}))
            .await
            .expect("test setup"),
        2
    );
    // `two` finishes it behind `one`'s back.
    assert_eq!(
        two.run("SucceedJob", "d1", None, json!({})).await.expect("test setup"),
        3
    );

    // On its cached state `one` would accept progress and a failure; the log says no.
    assert_eq!(
        rule(one.run("ReportJobProgress", "d1", None, json!({"percent": 50})).await),
        "Job not running"
    );
    assert_eq!(
        rule(one.run("FailJob", "d1", None, json!({"reason": "x"})).await),
        "Job not running"
    );

    // `two` starts d2; `one` guesses d2 is new, and the log says it is not.
    assert_eq!(two.run("StartJob", "d2", None, start()).await.expect("test setup"), 1);
    assert_eq!(
        rule(one.run("StartJob", "d2", None, start()).await),
        "Job already started"
    );
    assert_eq!(conflict(one.run("StartJob", "d2", Some(0), start()).await), (0, 1));
    // …and `one` goes on from the stored state, at the next version.
    assert_eq!(
        one.run("ReportJobProgress", "d2", Some(1), json!({"percent": 5}))
            .await
            .expect("test setup"),
        2
    );
    // A cached version that another process moved on conflicts when it is expected.
    assert_eq!(
        two.run("ReportJobProgress", "d2", None, json!({"percent": 6}))
            .await
            .expect("test setup"),
        3
    );
    assert_eq!(
        conflict(one.run("ReportJobProgress", "d2", Some(2), json!({"percent": 7})).await),
        (2, 3)
    );
    assert_eq!(
        one.run("ReportJobProgress", "d2", None, json!({"percent": 8}))
            .await
            .expect("test setup"),
        4
    );

    // Every stream's versions are 1..=n, once each.
    for (stream, n) in [("job-d1", 3), ("job-d2", 4)] {
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
        let runs = chunk.iter().map(|id| one.run("StartJob", id, None, start()));
        for result in futures_util::future::join_all(runs).await {
            assert_eq!(result.expect("test setup"), 1);
        }
    }
    for id in [&ids[0], &ids[9_999], &ids[19_999]] {
        assert_eq!(
            one.run("ReportJobProgress", id, None, json!({"percent": 1}))
                .await
                .expect("test setup"),
            2
        );
        assert_eq!(
            rule(one.run("StartJob", id, None, start()).await),
            "Job already started"
        );
        assert_eq!(
            one.run("SucceedJob", id, Some(2), json!({})).await.expect("test setup"),
            3
        );
    }
    assert_eq!(one.store.head().await.expect("test setup").position, 20_000 + 3 * 2);
}

#[tokio::test]
async fn the_domain_says_which_commands_need_a_recent_passkey_verification() {
    let dir = tempfile::tempdir().expect("test setup");
    let p = Process::open(dir.path());
    // Starting a job is risky: refused without a recent verification,
    // and nothing is appended.
    match p.run_as("StartJob", "d1", None, start(), false).await {
        Err(CommandError::StepUpRequired(t)) => assert_eq!(t, "StartJob"),
        other => panic!("expected StepUpRequired, got {other:?}"),
    }
    assert_eq!(p.store.head().await.expect("head").position, 0);
    // Bad data is still a 400 first (nothing to verify for).
    assert!(matches!(
        p.run_as("StartJob", "d1", None, json!({}), false).await,
        Err(CommandError::Invalid(_))
    ));
    assert_eq!(
        p.run_as("StartJob", "d1", None, start(), true).await.expect("verified"),
        1
    );
    // Reporting on a running job is not risky.
    assert_eq!(
        p.run_as("ReportJobProgress", "d1", None, json!({ "percent": 50 }), false)
            .await
            .expect("progress needs no step-up"),
        2
    );
    assert_eq!(
        p.run_as("SucceedJob", "d1", None, json!({}), false)
            .await
            .expect("finishing needs no step-up"),
        3
    );
}

#[tokio::test]
async fn a_command_type_no_aggregate_registered_is_unknown_and_the_error_names_the_known_ones() {
    let dir = tempfile::tempdir().expect("test setup");
    let p = Process::open(dir.path());
    match p.run("StartDeployment", "d1", None, json!({ "service": "api" })).await {
        Err(CommandError::UnknownType { command_type, known }) => {
            assert_eq!(command_type, "StartDeployment");
            assert_eq!(known, JOB_COMMANDS);
        }
        other => panic!("expected UnknownType, got {other:?}"),
    }
    assert_eq!(p.commands.types(), JOB_COMMANDS);
    assert_eq!(p.store.head().await.expect("head").position, 0, "nothing appended");
}

#[test]
#[should_panic(expected = "registered twice")]
fn two_aggregates_cannot_share_a_command_type() {
    let mut commands = commands();
    commands.register::<Job>();
}
