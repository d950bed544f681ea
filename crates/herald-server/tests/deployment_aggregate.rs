//! Given-when-then tests for the Deployment aggregate (API.md §4). Pure: no store, no I/O.
//!
//! `given(events).when(command).then(expected_events)` replays `events` into a fresh
//! `Deployment`, runs `decide`, and compares what it produced; `.then_rejected(rule)`
//! expects a `Rejection` with that rule (the problem's `title` on the wire).

use std::fmt::Debug;

use herald_core::aggregate::{Aggregate, InvalidCommand, Rejection, SCHEMA, from_stored, to_new_event};
use herald_server::domains::deployments::aggregate::{
    COMMAND_TYPES, Deployment, DeploymentCommand, DeploymentEvent, DeploymentStatus,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Scenario helper
// ---------------------------------------------------------------------------

/// The history a scenario starts from.
struct Given<A: Aggregate> {
    history: Vec<A::Event>,
}

/// A history plus the command under test.
struct When<A: Aggregate> {
    history: Vec<A::Event>,
    command: A::Command,
}

impl<A> Given<A>
where
    A: Aggregate + Debug,
    A::Event: Clone + Debug + PartialEq,
    A::Command: Debug,
{
    fn new(history: impl IntoIterator<Item = A::Event>) -> Self {
        Given {
            history: history.into_iter().collect(),
        }
    }

    fn when(self, command: A::Command) -> When<A> {
        When {
            history: self.history,
            command,
        }
    }

    /// The command as it arrives on the wire: parsed with `parse_command` first.
    #[track_caller]
    fn when_wire(self, command_type: &str, data: Value) -> When<A> {
        let command = match A::parse_command(command_type, data) {
            Some(Ok(command)) => command,
            Some(Err(InvalidCommand(detail))) => panic!("{command_type} did not parse: {detail}"),
            None => panic!("{command_type} is not a command of {}", A::CATEGORY),
        };
        self.when(command)
    }
}

impl<A> When<A>
where
    A: Aggregate + Debug,
    A::Event: Clone + Debug + PartialEq,
    A::Command: Debug,
{
    fn decide(&self) -> (A, Result<Vec<A::Event>, Rejection>) {
        let state = A::replay(self.history.clone());
        let outcome = state.decide(&self.command);
        (state, outcome)
    }

    /// Asserts the command is accepted and produces exactly `expected`. Returns the
    /// full history afterwards (given + produced), to chain further scenarios or replay.
    #[track_caller]
    fn then(self, expected: Vec<A::Event>) -> Vec<A::Event> {
        let (_, outcome) = self.decide();
        let produced = match outcome {
            Ok(events) => events,
            Err(rejection) => panic!(
                "expected {expected:?} from {:?} after {:?}, got rejection {rejection:?}",
                self.command, self.history
            ),
        };
        assert_eq!(
            produced, expected,
            "events produced by {:?} after {:?}",
            self.command, self.history
        );
        let mut history = self.history;
        history.extend(produced);
        history
    }

    /// Asserts the command is refused by the rule titled `rule`. Returns the rejection.
    #[track_caller]
    fn then_rejected(self, rule: &str) -> Rejection {
        let (_, outcome) = self.decide();
        match outcome {
            Err(rejection) => {
                assert_eq!(
                    rejection.rule, rule,
                    "rule refusing {:?} after {:?} (detail: {})",
                    self.command, self.history, rejection.detail
                );
                assert!(!rejection.detail.trim().is_empty(), "rejection without detail");
                rejection
            }
            Ok(events) => panic!(
                "expected rejection {rule:?} of {:?} after {:?}, got events {events:?}",
                self.command, self.history
            ),
        }
    }
}

fn given(history: impl IntoIterator<Item = DeploymentEvent>) -> Given<Deployment> {
    Given::new(history)
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

const NOT_STARTED: &str = "Deployment not started";
const ALREADY_STARTED: &str = "Deployment already started";
const NOT_IN_PROGRESS: &str = "Deployment not in progress";

fn s(v: &str) -> String {
    v.to_owned()
}

fn started() -> DeploymentEvent {
    DeploymentEvent::DeploymentStarted {
        service: s("user-service"),
        version: Some(s("1.4.2")),
        environment: Some(s("prod")),
    }
}

fn progressed(percent: u8, message: Option<&str>) -> DeploymentEvent {
    DeploymentEvent::DeploymentProgressed {
        percent,
        message: message.map(s),
    }
}

fn succeeded() -> DeploymentEvent {
    DeploymentEvent::DeploymentSucceeded {}
}

fn failed(reason: &str) -> DeploymentEvent {
    DeploymentEvent::DeploymentFailed { reason: s(reason) }
}

fn cancelled(reason: Option<&str>) -> DeploymentEvent {
    DeploymentEvent::DeploymentCancelled { reason: reason.map(s) }
}

fn start_cmd() -> DeploymentCommand {
    DeploymentCommand::Start {
        service: s("user-service"),
        version: Some(s("1.4.2")),
        environment: Some(s("prod")),
    }
}

fn progress_cmd(percent: u8, message: Option<&str>) -> DeploymentCommand {
    DeploymentCommand::ReportProgress {
        percent,
        message: message.map(s),
    }
}

fn fail_cmd(reason: &str) -> DeploymentCommand {
    DeploymentCommand::Fail { reason: s(reason) }
}

fn cancel_cmd(reason: Option<&str>) -> DeploymentCommand {
    DeploymentCommand::Cancel { reason: reason.map(s) }
}

/// The four commands that need a deployment in progress, with the event each produces then.
fn in_progress_commands() -> Vec<(DeploymentCommand, DeploymentEvent)> {
    vec![
        (progress_cmd(40, Some("canary ok")), progressed(40, Some("canary ok"))),
        (DeploymentCommand::Succeed, succeeded()),
        (fail_cmd("health checks failing"), failed("health checks failing")),
        (
            cancel_cmd(Some("rolled back by hand")),
            cancelled(Some("rolled back by hand")),
        ),
    ]
}

/// Histories of a deployment that is in progress.
fn in_progress_histories() -> Vec<(&'static str, Vec<DeploymentEvent>)> {
    vec![
        ("just started", vec![started()]),
        ("progressed once", vec![started(), progressed(10, None)]),
        (
            "progressed to 100%",
            vec![
                started(),
                progressed(50, Some("half")),
                progressed(100, Some("all pods")),
            ],
        ),
    ]
}

/// Histories of a finished deployment, with the status each ends in.
fn finished_histories() -> Vec<(DeploymentStatus, Vec<DeploymentEvent>)> {
    vec![
        (DeploymentStatus::Succeeded, vec![started(), succeeded()]),
        (
            DeploymentStatus::Succeeded,
            vec![started(), progressed(100, None), succeeded()],
        ),
        (DeploymentStatus::Failed, vec![started(), failed("boom")]),
        (
            DeploymentStatus::Failed,
            vec![started(), progressed(30, None), failed("boom")],
        ),
        (DeploymentStatus::Cancelled, vec![started(), cancelled(None)]),
        (
            DeploymentStatus::Cancelled,
            vec![started(), progressed(70, None), cancelled(Some("freeze"))],
        ),
    ]
}

#[track_caller]
fn parse(command_type: &str, data: Value) -> Result<DeploymentCommand, InvalidCommand> {
    match Deployment::parse_command(command_type, data) {
        Some(result) => result,
        None => panic!("{command_type} should be a deployment command"),
    }
}

#[track_caller]
fn parse_ok(command_type: &str, data: Value) -> DeploymentCommand {
    match parse(command_type, data.clone()) {
        Ok(command) => command,
        Err(InvalidCommand(detail)) => panic!("{command_type} {data} should parse, got {detail:?}"),
    }
}

/// Asserts the command is invalid and the message names `field`; returns the message.
#[track_caller]
fn parse_err(command_type: &str, data: Value, field: &str) -> String {
    match parse(command_type, data.clone()) {
        Ok(command) => panic!("{command_type} {data} should be invalid, parsed as {command:?}"),
        Err(InvalidCommand(detail)) => {
            assert!(
                detail.contains(field),
                "error for {command_type} {data} should name {field:?}: {detail:?}"
            );
            detail
        }
    }
}

// ---------------------------------------------------------------------------
// decide / evolve: StartDeployment
// ---------------------------------------------------------------------------

#[test]
fn start_on_new_stream_emits_started_with_the_command_data() {
    given([]).when(start_cmd()).then(vec![started()]);
}

#[test]
fn start_with_only_service_emits_started_without_version_or_environment() {
    given([])
        .when(DeploymentCommand::Start {
            service: s("billing"),
            version: None,
            environment: None,
        })
        .then(vec![DeploymentEvent::DeploymentStarted {
            service: s("billing"),
            version: None,
            environment: None,
        }]);
}

#[test]
fn start_puts_the_deployment_in_progress() {
    let history = given([]).when(start_cmd()).then(vec![started()]);
    assert_eq!(Deployment::replay(history).status(), Some(DeploymentStatus::InProgress));
}

#[test]
fn start_is_rejected_while_in_progress() {
    for (label, history) in in_progress_histories() {
        let rejection = given(history).when(start_cmd()).then_rejected(ALREADY_STARTED);
        assert!(
            rejection.detail.contains("in_progress"),
            "{label}: detail should give the status: {:?}",
            rejection.detail
        );
    }
}

#[test]
fn start_is_rejected_after_the_deployment_finished() {
    for (status, history) in finished_histories() {
        let rejection = given(history).when(start_cmd()).then_rejected(ALREADY_STARTED);
        assert!(
            rejection.detail.contains(status.as_str()),
            "detail should give the status {}: {:?}",
            status.as_str(),
            rejection.detail
        );
    }
}

#[test]
fn start_is_rejected_even_with_different_data() {
    given([started()])
        .when(DeploymentCommand::Start {
            service: s("another-service"),
            version: None,
            environment: Some(s("staging")),
        })
        .then_rejected(ALREADY_STARTED);
}

// ---------------------------------------------------------------------------
// decide / evolve: commands that need a deployment in progress
// ---------------------------------------------------------------------------

#[test]
fn in_progress_commands_are_rejected_on_a_new_stream() {
    for (command, _) in in_progress_commands() {
        given([]).when(command).then_rejected(NOT_STARTED);
    }
}

#[test]
fn in_progress_commands_are_rejected_after_the_deployment_finished() {
    for (status, history) in finished_histories() {
        for (command, _) in in_progress_commands() {
            let rejection = given(history.clone()).when(command).then_rejected(NOT_IN_PROGRESS);
            assert!(
                rejection.detail.contains(status.as_str()),
                "detail should give the status {}: {:?}",
                status.as_str(),
                rejection.detail
            );
        }
    }
}

#[test]
fn in_progress_commands_are_accepted_in_every_in_progress_history() {
    for (_, history) in in_progress_histories() {
        for (command, event) in in_progress_commands() {
            given(history.clone()).when(command).then(vec![event]);
        }
    }
}

#[test]
fn progress_emits_progressed_with_percent_and_message() {
    given([started()])
        .when(progress_cmd(40, Some("canary at 40%")))
        .then(vec![progressed(40, Some("canary at 40%"))]);
}

#[test]
fn progress_without_message_emits_progressed_without_message() {
    given([started()])
        .when(progress_cmd(75, None))
        .then(vec![progressed(75, None)]);
}

#[test]
fn progress_accepts_the_bounds_0_and_100() {
    given([started()])
        .when(progress_cmd(0, None))
        .then(vec![progressed(0, None)]);
    given([started()])
        .when(progress_cmd(100, None))
        .then(vec![progressed(100, None)]);
}

#[test]
fn progress_keeps_the_deployment_in_progress() {
    let history = given([started()])
        .when(progress_cmd(100, Some("done rolling")))
        .then(vec![progressed(100, Some("done rolling"))]);
    assert_eq!(
        Deployment::replay(history.clone()).status(),
        Some(DeploymentStatus::InProgress)
    );
    // Still in progress: further progress, even going backwards, and then the end.
    let history = given(history)
        .when(progress_cmd(20, Some("retrying")))
        .then(vec![progressed(20, Some("retrying"))]);
    assert_eq!(
        Deployment::replay(history.clone()).status(),
        Some(DeploymentStatus::InProgress)
    );
    given(history).when(DeploymentCommand::Succeed).then(vec![succeeded()]);
}

#[test]
fn succeed_emits_succeeded_and_finishes_the_deployment() {
    let history = given([started(), progressed(100, None)])
        .when(DeploymentCommand::Succeed)
        .then(vec![succeeded()]);
    assert_eq!(Deployment::replay(history).status(), Some(DeploymentStatus::Succeeded));
}

#[test]
fn fail_emits_failed_with_the_reason_and_finishes_the_deployment() {
    let history = given([started()])
        .when(fail_cmd("image pull backoff"))
        .then(vec![failed("image pull backoff")]);
    assert_eq!(Deployment::replay(history).status(), Some(DeploymentStatus::Failed));
}

#[test]
fn cancel_emits_cancelled_with_the_reason_and_finishes_the_deployment() {
    let history = given([started()])
        .when(cancel_cmd(Some("change freeze")))
        .then(vec![cancelled(Some("change freeze"))]);
    assert_eq!(Deployment::replay(history).status(), Some(DeploymentStatus::Cancelled));
}

#[test]
fn cancel_without_reason_emits_cancelled_without_reason() {
    given([started(), progressed(60, None)])
        .when(cancel_cmd(None))
        .then(vec![cancelled(None)]);
}

#[test]
fn a_second_terminal_command_is_rejected() {
    let history = given([started()]).when(fail_cmd("boom")).then(vec![failed("boom")]);
    given(history.clone())
        .when(DeploymentCommand::Succeed)
        .then_rejected(NOT_IN_PROGRESS);
    given(history.clone())
        .when(fail_cmd("again"))
        .then_rejected(NOT_IN_PROGRESS);
    given(history).when(cancel_cmd(None)).then_rejected(NOT_IN_PROGRESS);
}

#[test]
fn replay_folds_the_status() {
    assert_eq!(Deployment::replay([]).status(), None);
    assert_eq!(Deployment::default().status(), None);
    for (label, history) in in_progress_histories() {
        assert_eq!(
            Deployment::replay(history).status(),
            Some(DeploymentStatus::InProgress),
            "{label}"
        );
    }
    for (status, history) in finished_histories() {
        assert_eq!(Deployment::replay(history).status(), Some(status));
    }
}

#[test]
fn evolve_one_event_at_a_time_matches_replay() {
    let history = vec![started(), progressed(30, None), progressed(90, None), cancelled(None)];
    let mut state = Deployment::default();
    let mut seen = Vec::new();
    let expected = [
        DeploymentStatus::InProgress,
        DeploymentStatus::InProgress,
        DeploymentStatus::InProgress,
        DeploymentStatus::Cancelled,
    ];
    for (event, status) in history.into_iter().zip(expected) {
        state.evolve(event.clone());
        seen.push(event);
        assert_eq!(state.status(), Some(status));
        assert_eq!(state, Deployment::replay(seen.clone()));
    }
}

#[test]
fn decide_does_not_depend_on_anything_but_the_history() {
    // Same history, same command: same outcome, and no hidden state between calls.
    let state = Deployment::replay([started()]);
    let first = state.decide(&progress_cmd(10, None));
    let second = state.decide(&progress_cmd(10, None));
    assert_eq!(first, Ok(vec![progressed(10, None)]));
    assert_eq!(first, second);
    assert_eq!(state.status(), Some(DeploymentStatus::InProgress));
}

#[test]
fn full_lifecycle_from_wire_commands() {
    let history = given([])
        .when_wire(
            "StartDeployment",
            json!({"service": "user-service", "version": "1.4.2", "environment": "prod"}),
        )
        .then(vec![started()]);
    let history = given(history)
        .when_wire("ReportDeploymentProgress", json!({"percent": 50, "message": "half"}))
        .then(vec![progressed(50, Some("half"))]);
    let history = given(history)
        .when_wire("SucceedDeployment", Value::Null)
        .then(vec![succeeded()]);
    assert_eq!(history, vec![started(), progressed(50, Some("half")), succeeded()]);
    given(history)
        .when_wire("CancelDeployment", json!({}))
        .then_rejected(NOT_IN_PROGRESS);
}

// ---------------------------------------------------------------------------
// parse_command
// ---------------------------------------------------------------------------

#[test]
fn unknown_command_types_are_none() {
    for command_type in [
        "",
        "CreatePost",
        "startDeployment",
        "StartDeployment ",
        "DeploymentStarted",
        "RestartDeployment",
    ] {
        assert!(
            Deployment::parse_command(command_type, json!({"service": "x"})).is_none(),
            "{command_type:?} should not be a deployment command"
        );
    }
}

#[test]
fn every_documented_command_type_is_known() {
    assert_eq!(
        COMMAND_TYPES,
        [
            "StartDeployment",
            "ReportDeploymentProgress",
            "SucceedDeployment",
            "FailDeployment",
            "CancelDeployment",
        ]
    );
    assert_eq!(Deployment::CATEGORY, "deployment");
    let valid = [
        json!({"service": "svc"}),
        json!({"percent": 1}),
        json!({}),
        json!({"reason": "r"}),
        json!({}),
    ];
    for (command_type, data) in COMMAND_TYPES.iter().zip(valid) {
        parse_ok(command_type, data);
    }
}

#[test]
fn start_parses_all_fields() {
    assert_eq!(
        parse_ok(
            "StartDeployment",
            json!({"service": "user-service", "version": "1.4.2", "environment": "prod"})
        ),
        start_cmd()
    );
}

#[test]
fn start_parses_with_optional_fields_absent_or_null() {
    let expected = DeploymentCommand::Start {
        service: s("svc"),
        version: None,
        environment: None,
    };
    assert_eq!(parse_ok("StartDeployment", json!({"service": "svc"})), expected);
    assert_eq!(
        parse_ok(
            "StartDeployment",
            json!({"service": "svc", "version": null, "environment": null})
        ),
        expected
    );
}

#[test]
fn progress_parses_percent_and_message() {
    assert_eq!(
        parse_ok("ReportDeploymentProgress", json!({"percent": 40, "message": "canary"})),
        progress_cmd(40, Some("canary"))
    );
    assert_eq!(
        parse_ok("ReportDeploymentProgress", json!({"percent": 0})),
        progress_cmd(0, None)
    );
    assert_eq!(
        parse_ok("ReportDeploymentProgress", json!({"percent": 100, "message": null})),
        progress_cmd(100, None)
    );
}

#[test]
fn fail_and_cancel_parse_their_reason() {
    assert_eq!(parse_ok("FailDeployment", json!({"reason": "oom"})), fail_cmd("oom"));
    assert_eq!(
        parse_ok("CancelDeployment", json!({"reason": "freeze"})),
        cancel_cmd(Some("freeze"))
    );
    assert_eq!(parse_ok("CancelDeployment", json!({})), cancel_cmd(None));
    assert_eq!(parse_ok("CancelDeployment", Value::Null), cancel_cmd(None));
    assert_eq!(parse_ok("CancelDeployment", json!({"reason": null})), cancel_cmd(None));
}

#[test]
fn succeed_accepts_null_and_empty_object() {
    assert_eq!(parse_ok("SucceedDeployment", Value::Null), DeploymentCommand::Succeed);
    assert_eq!(parse_ok("SucceedDeployment", json!({})), DeploymentCommand::Succeed);
}

#[test]
fn succeed_with_extra_fields_is_invalid() {
    parse_err("SucceedDeployment", json!({"reason": "all good"}), "reason");
    parse_err("SucceedDeployment", json!({"percent": 100}), "percent");
}

#[test]
fn missing_required_fields_are_named() {
    parse_err("StartDeployment", json!({}), "service");
    parse_err("StartDeployment", Value::Null, "service");
    parse_err(
        "StartDeployment",
        json!({"version": "1.0", "environment": "prod"}),
        "service",
    );
    parse_err("ReportDeploymentProgress", json!({}), "percent");
    parse_err("ReportDeploymentProgress", Value::Null, "percent");
    parse_err("ReportDeploymentProgress", json!({"message": "hi"}), "percent");
    parse_err("FailDeployment", json!({}), "reason");
    parse_err("FailDeployment", Value::Null, "reason");
}

#[test]
fn percent_of_the_wrong_type_or_range_is_named() {
    for bad in [
        json!("x"),
        json!("50"),
        json!(101),
        json!(255),
        json!(256),
        json!(-1),
        json!(3.5),
        json!(50.0),
        json!(null),
        json!(true),
        json!([50]),
        json!({"value": 50}),
    ] {
        parse_err("ReportDeploymentProgress", json!({"percent": bad}), "percent");
    }
}

#[test]
fn percent_over_100_says_the_range() {
    let detail = parse_err("ReportDeploymentProgress", json!({"percent": 101}), "percent");
    assert!(detail.contains("100"), "{detail:?}");
}

#[test]
fn strings_of_the_wrong_type_are_named() {
    parse_err("StartDeployment", json!({"service": 42}), "service");
    parse_err("StartDeployment", json!({"service": null}), "service");
    parse_err("StartDeployment", json!({"service": "svc", "version": 1.4}), "version");
    parse_err(
        "StartDeployment",
        json!({"service": "svc", "environment": ["prod"]}),
        "environment",
    );
    parse_err(
        "ReportDeploymentProgress",
        json!({"percent": 1, "message": false}),
        "message",
    );
    parse_err("FailDeployment", json!({"reason": 7}), "reason");
    parse_err("FailDeployment", json!({"reason": null}), "reason");
    parse_err("CancelDeployment", json!({"reason": {}}), "reason");
}

#[test]
fn unknown_fields_are_named() {
    parse_err("StartDeployment", json!({"service": "svc", "servce": "typo"}), "servce");
    parse_err("StartDeployment", json!({"service": "svc", "env": "prod"}), "env");
    parse_err(
        "ReportDeploymentProgress",
        json!({"percent": 5, "percentage": 5}),
        "percentage",
    );
    parse_err("FailDeployment", json!({"reason": "r", "code": 1}), "code");
    parse_err("CancelDeployment", json!({"why": "r"}), "why");
}

#[test]
fn empty_or_blank_required_text_is_invalid() {
    for blank in ["", " ", "   ", "\t", "\n \t"] {
        parse_err("StartDeployment", json!({"service": blank}), "service");
        parse_err("FailDeployment", json!({"reason": blank}), "reason");
    }
}

#[test]
fn data_that_is_not_an_object_is_invalid() {
    for bad in [json!("svc"), json!(42), json!(true)] {
        parse_err("StartDeployment", bad.clone(), "data");
        parse_err("SucceedDeployment", bad.clone(), "data");
        parse_err("CancelDeployment", bad, "data");
    }
}

#[test]
fn control_characters_are_invalid() {
    parse_err("StartDeployment", json!({"service": "svc\u{0}"}), "service");
    parse_err(
        "StartDeployment",
        json!({"service": "svc", "version": "1.0\u{1b}[31m"}),
        "version",
    );
    parse_err("FailDeployment", json!({"reason": "bad\u{7}"}), "reason");
    // Newlines and tabs are fine in free text.
    assert_eq!(
        parse_ok("FailDeployment", json!({"reason": "line 1\nline 2\tend"})),
        fail_cmd("line 1\nline 2\tend")
    );
}

#[test]
fn names_are_at_most_200_characters() {
    let ok = "s".repeat(200);
    let long = "s".repeat(201);
    assert_eq!(
        parse_ok(
            "StartDeployment",
            json!({"service": ok, "version": ok, "environment": ok})
        ),
        DeploymentCommand::Start {
            service: ok.clone(),
            version: Some(ok.clone()),
            environment: Some(ok.clone()),
        }
    );
    let detail = parse_err("StartDeployment", json!({"service": long}), "service");
    assert!(detail.contains("200"), "{detail:?}");
    parse_err("StartDeployment", json!({"service": "svc", "version": long}), "version");
    parse_err(
        "StartDeployment",
        json!({"service": "svc", "environment": long}),
        "environment",
    );
}

#[test]
fn lengths_count_characters_not_bytes() {
    let ok = "é".repeat(200); // 400 bytes, 200 characters
    assert_eq!(
        parse_ok("StartDeployment", json!({"service": ok})),
        DeploymentCommand::Start {
            service: ok.clone(),
            version: None,
            environment: None,
        }
    );
    parse_err("StartDeployment", json!({"service": "é".repeat(201)}), "service");
}

#[test]
fn free_text_is_at_most_2000_characters() {
    let ok = "m".repeat(2000);
    let long = "m".repeat(2001);
    assert_eq!(
        parse_ok("ReportDeploymentProgress", json!({"percent": 1, "message": ok})),
        progress_cmd(1, Some(&ok))
    );
    assert_eq!(parse_ok("FailDeployment", json!({"reason": ok})), fail_cmd(&ok));
    assert_eq!(
        parse_ok("CancelDeployment", json!({"reason": ok})),
        cancel_cmd(Some(&ok))
    );
    parse_err(
        "ReportDeploymentProgress",
        json!({"percent": 1, "message": long}),
        "message",
    );
    parse_err("FailDeployment", json!({"reason": long}), "reason");
    parse_err("CancelDeployment", json!({"reason": long}), "reason");
}

// ---------------------------------------------------------------------------
// Events to and from the store's shape
// ---------------------------------------------------------------------------

/// Every event variant, with the type and data the store must hold for it.
fn stored_shapes() -> Vec<(DeploymentEvent, &'static str, Value)> {
    vec![
        (
            started(),
            "DeploymentStarted",
            json!({"service": "user-service", "version": "1.4.2", "environment": "prod"}),
        ),
        (
            DeploymentEvent::DeploymentStarted {
                service: s("svc"),
                version: None,
                environment: None,
            },
            "DeploymentStarted",
            json!({"service": "svc"}),
        ),
        (
            DeploymentEvent::DeploymentStarted {
                service: s("svc"),
                version: None,
                environment: Some(s("staging")),
            },
            "DeploymentStarted",
            json!({"service": "svc", "environment": "staging"}),
        ),
        (
            progressed(40, Some("canary")),
            "DeploymentProgressed",
            json!({"percent": 40, "message": "canary"}),
        ),
        (progressed(0, None), "DeploymentProgressed", json!({"percent": 0})),
        (succeeded(), "DeploymentSucceeded", json!({})),
        (failed("oom"), "DeploymentFailed", json!({"reason": "oom"})),
        (
            cancelled(Some("freeze")),
            "DeploymentCancelled",
            json!({"reason": "freeze"}),
        ),
        (cancelled(None), "DeploymentCancelled", json!({})),
    ]
}

#[test]
fn to_new_event_gives_the_event_type_and_data() {
    for (event, event_type, data) in stored_shapes() {
        let new = to_new_event(&event);
        assert_eq!(new.event_type, event_type, "{event:?}");
        assert_eq!(new.schema, SCHEMA, "{event:?}");
        assert_eq!(new.schema, 1);
        assert_eq!(new.data, data, "{event:?}");
    }
}

#[test]
fn events_round_trip_through_the_store_shape() {
    for (event, _, _) in stored_shapes() {
        let new = to_new_event(&event);
        let back: DeploymentEvent = match from_stored(&new.event_type, new.data.clone()) {
            Ok(back) => back,
            Err(e) => panic!(
                "{event:?} stored as {} {} did not parse back: {e}",
                new.event_type, new.data
            ),
        };
        assert_eq!(back, event);
    }
}

#[test]
fn from_stored_reads_the_documented_shapes() {
    for (event, event_type, data) in stored_shapes() {
        match from_stored::<DeploymentEvent>(event_type, data.clone()) {
            Ok(parsed) => assert_eq!(parsed, event),
            Err(e) => panic!("{event_type} {data} did not parse: {e}"),
        }
    }
}

#[test]
fn from_stored_refuses_unknown_types_and_missing_fields() {
    assert!(from_stored::<DeploymentEvent>("PostCreated", json!({})).is_err());
    assert!(from_stored::<DeploymentEvent>("StartDeployment", json!({"service": "svc"})).is_err());
    assert!(from_stored::<DeploymentEvent>("DeploymentStarted", json!({})).is_err());
    assert!(from_stored::<DeploymentEvent>("DeploymentProgressed", json!({"percent": "x"})).is_err());
    assert!(from_stored::<DeploymentEvent>("DeploymentFailed", json!({})).is_err());
}

#[test]
fn decided_events_replay_identically_after_a_trip_through_the_store_shape() {
    let mut history = Vec::new();
    for (command, expected) in [
        (start_cmd(), started()),
        (progress_cmd(25, Some("one zone")), progressed(25, Some("one zone"))),
        (progress_cmd(100, None), progressed(100, None)),
        (fail_cmd("smoke test red"), failed("smoke test red")),
    ] {
        history = given(history).when(command).then(vec![expected]);
    }
    let stored: Vec<_> = history.iter().map(to_new_event).collect();
    let types: Vec<&str> = stored.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "DeploymentStarted",
            "DeploymentProgressed",
            "DeploymentProgressed",
            "DeploymentFailed"
        ]
    );
    let reloaded: Vec<DeploymentEvent> = stored
        .into_iter()
        .map(|e| match from_stored(&e.event_type, e.data) {
            Ok(event) => event,
            Err(err) => panic!("{}: {err}", e.event_type),
        })
        .collect();
    assert_eq!(reloaded, history);
    assert_eq!(Deployment::replay(reloaded).status(), Some(DeploymentStatus::Failed));
}

/// Derived `Deserialize` for structs also accepts sequences, so without a check
/// `["svc", "1.0", "prod"]` would parse positionally as service/version/environment.
#[test]
fn data_that_is_an_array_is_invalid() {
    parse_err("StartDeployment", json!(["svc", "1.0", "prod"]), "data");
    parse_err("ReportDeploymentProgress", json!([50]), "data");
    parse_err("FailDeployment", json!(["oom"]), "data");
    parse_err("CancelDeployment", json!(["freeze"]), "data");
    parse_err("SucceedDeployment", json!([]), "data");
}
