//! Commands in from the brokers a team already runs (API.md §10): NATS
//! JetStream (`nats.rs`). A broker's message is decided exactly as
//! `POST /api/commands` decides a request — the same token gives the same
//! actor and role, the same limits, the same problem+json — through
//! [`crate::routes::commands::execute`]; only how it is acknowledged differs.

pub mod nats;

pub use crate::broker_config::{Credentials, DEFAULT_PREFIX};

use axum::response::IntoResponse;
use herald_core::store::AppendOutcome;

use crate::auth::token_principal;
use crate::error::ApiError;
use crate::routes::commands::{COMMAND_BODY_LIMIT, CommandBody, execute};
use crate::state::AppState;

/// What became of one message.
#[derive(Debug)]
pub enum Decision {
    /// Its events are durable (or were already: a redelivery): acknowledge.
    Done,
    /// It can never succeed as it is: dead-letter it with this status and
    /// problem+json, then acknowledge.
    Refused { status: u16, problem: Vec<u8> },
    /// It may succeed later (the store is unavailable, a rate limit): do not
    /// acknowledge; the broker redelivers it after `retry`.
    Later { retry: std::time::Duration, why: String },
}

/// Decides one message from credential `name`: the same checks, in the same
/// order, as the HTTP path, plus `command_id`, which a redelivered message
/// needs to change nothing.
pub async fn decide(state: &AppState, credentials: &Credentials, name: &str, payload: &[u8]) -> Decision {
    match try_decide(state, credentials, name, payload).await {
        Ok(_) => Decision::Done,
        Err(ApiError::TooManyRequests {
            retry_after_secs,
            detail,
        }) => Decision::Later {
            retry: std::time::Duration::from_secs(retry_after_secs.max(1)),
            why: detail,
        },
        Err(e @ (ApiError::Unavailable(_) | ApiError::Internal(_))) => Decision::Later {
            retry: std::time::Duration::from_secs(1),
            why: e.to_string(),
        },
        Err(e) => {
            let response = e.into_response();
            let status = response.status().as_u16();
            let problem = axum::body::to_bytes(response.into_body(), 64 * 1024)
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            Decision::Refused { status, problem }
        }
    }
}

async fn try_decide(
    state: &AppState,
    credentials: &Credentials,
    name: &str,
    payload: &[u8],
) -> Result<AppendOutcome, ApiError> {
    let token = credentials.token(name).ok_or_else(|| {
        ApiError::AuthFailed(format!(
            "no credential named {name:?} is configured here (--nats-credential {name}=TOKEN)"
        ))
    })?;
    let principal = token_principal(state, token).await?;
    if principal.role < herald_core::auth::Role::Operator {
        return Err(ApiError::Forbidden(format!(
            "this needs the operator role; {} has {}",
            principal.actor.name, principal.role
        )));
    }
    state.limits.command(&principal.credential_id)?;
    if payload.len() > COMMAND_BODY_LIMIT {
        return Err(ApiError::PayloadTooLarge {
            limit: COMMAND_BODY_LIMIT,
        });
    }
    let body: CommandBody = crate::wire::parse_json(payload)?;
    if body.command_id.is_none() {
        return Err(ApiError::BadRequest(
            "command_id: required for commands from a broker (a redelivery must change nothing)".into(),
        ));
    }
    execute(state, &principal, body, None).await
}
