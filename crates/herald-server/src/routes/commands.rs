//! `POST /api/commands` (API.md §4).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use herald_core::command::CommandRequest;
use herald_core::names::AggregateId;
use herald_core::store::AppendOutcome;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{Operator, step_up_error};
use crate::error::ApiError;
use crate::principal::Principal;
use crate::state::AppState;
use crate::wire::{json_response, read_json_body, write_events, write_field};

/// Commands are small; anything bigger is a mistake or an attack.
pub const COMMAND_BODY_LIMIT: usize = 64 * 1024;

/// A command as `POST /api/commands` takes it, over any transport (HTTP, or a
/// broker's message: `crate::brokers`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    #[serde(rename = "type")]
    pub command_type: String,
    pub aggregate_id: String,
    #[serde(default)]
    pub expected_version: Option<u64>,
    #[serde(default)]
    pub command_id: Option<String>,
    #[serde(default)]
    pub data: Value,
}

fn check_key(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(format!(
            "{field}: 1 to 128 visible ASCII characters (a UUID is typical)"
        )));
    }
    Ok(())
}

pub async fn post_command(
    State(state): State<AppState>,
    Operator(principal): Operator,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.limits.command(&principal.credential_id)?;
    let body: CommandBody = read_json_body(&headers, body, COMMAND_BODY_LIMIT).await?;
    let correlation_id = match headers.get("x-correlation-id") {
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("X-Correlation-Id: must be visible ASCII".into()))?;
            check_key("X-Correlation-Id", v)?;
            Some(v.to_owned())
        }
        None => None,
    };
    let outcome = execute(&state, &principal, body, correlation_id).await?;
    let committed = outcome.into_committed();
    let mut out = Vec::with_capacity(256 + committed.events.iter().map(|e| e.json().len() + 1).sum::<usize>());
    out.push(b'{');
    write_field(&mut out, "stream", &committed.stream);
    out.push(b',');
    write_field(&mut out, "version", &committed.version);
    out.push(b',');
    write_field(&mut out, "position", &committed.last_position());
    out.push(b',');
    write_events(&mut out, "events", &committed.events);
    out.push(b'}');
    Ok(json_response(StatusCode::OK, out))
}

/// Decides a command for `principal` (whose role the caller has checked) and
/// appends its events: returns once they are durable. The one path of every
/// transport's commands.
pub async fn execute(
    state: &AppState,
    principal: &Principal,
    body: CommandBody,
    correlation_id: Option<String>,
) -> Result<AppendOutcome, ApiError> {
    let aggregate_id =
        AggregateId::parse(&body.aggregate_id).map_err(|e| ApiError::BadRequest(format!("aggregate_id: {e}")))?;
    if let Some(id) = &body.command_id {
        check_key("command_id", id)?;
    }
    let command_type = body.command_type.clone();
    let request = CommandRequest {
        command_type: body.command_type,
        aggregate_id,
        expected_version: body.expected_version,
        command_id: body.command_id,
        correlation_id,
        data: body.data,
        // Which commands need it is the domain's to say (`Aggregate::needs_step_up`).
        presence_verified: principal.presence_verified(state.config.step_up),
    };
    let result = state
        .registry
        .commands()
        .handle(&*state.store, &state.stream_locks, &principal.actor, request)
        .await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(herald_core::command::CommandError::Conflict { .. }) => "conflict",
        Err(herald_core::command::CommandError::Rejected(_)) => "rejected",
        Err(_) => "error",
    };
    metrics::counter!("herald_commands_total", "outcome" => outcome).increment(1);
    let outcome = result.map_err(|e| {
        tracing::debug!(command = %command_type, error = %e, "command refused");
        match e {
            herald_core::command::CommandError::StepUpRequired(t) => step_up_error(state, principal, &t),
            e => ApiError::from(e),
        }
    })?;
    if let AppendOutcome::Appended(c) = &outcome {
        metrics::counter!("herald_events_appended_total").increment(c.events.len() as u64);
    }
    Ok(outcome)
}
