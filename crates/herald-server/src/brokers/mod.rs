//! Commands in from the brokers a team already runs (API.md §10): NATS
//! JetStream (`nats.rs`) and Redis streams (`redis.rs`); and events out to
//! NATS (`relay.rs`, a consumer on the runner beside the read models). A broker's message is decided exactly as
//! `POST /api/commands` decides a request — the same token gives the same
//! actor and role, the same limits, the same problem+json — through
//! [`crate::routes::commands::execute`]; only how it is acknowledged differs.

pub mod nats;
pub mod redis;
pub mod relay;

pub use crate::broker_config::{Credentials, DEFAULT_PREFIX};

use axum::response::IntoResponse;
use herald_core::store::AppendOutcome;

use crate::auth::token_principal;
use crate::error::ApiError;
use crate::routes::commands::{COMMAND_BODY_LIMIT, CommandBody, execute};
use crate::state::AppState;

/// Runs a broker's consumer (a fresh `consume()` task each time) until
/// shutdown: a failure or a panic is logged, counted, shown by `/readyz`
/// under `name`, and followed by a new attempt after a pause that grows from
/// 1 s to 30 s. `url` is for the logs (no password).
pub async fn supervise<F, Fut>(state: AppState, name: &'static str, broker: &'static str, url: String, consume: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let shutdown = state.live.shutdown.clone();
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        let cause = match tokio::spawn(consume()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => format!("its task stopped ({e})"),
        };
        state.consumer_health.set(name, Some(cause.clone()));
        metrics::counter!("herald_broker_restarts_total", "broker" => broker).increment(1);
        tracing::error!(url = %url, error = %cause, "the {name} failed; retrying in {pause:?}");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(std::time::Duration::from_secs(30));
    }
}

/// What became of one message.
#[derive(Debug)]
pub enum Decision {
    /// Its events are durable (or were already: a redelivery): acknowledge.
    Done,
    /// It can never succeed as it is: dead-letter it with this status and
    /// problem+json, then acknowledge.
    Refused { status: u16, problem: Vec<u8> },
    /// It may succeed later (the store is unavailable, a rate limit): decide
    /// it again after `retry` ([`decide_in_order`]).
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
            let (status, problem) = refusal(e).await;
            Decision::Refused { status, problem }
        }
    }
}

/// What became of a message in the end ([`decide_in_order`]).
#[derive(Debug)]
pub enum Settled {
    /// Its events are durable: acknowledge.
    Done,
    /// Dead-letter it with this status and problem+json, then acknowledge.
    Refused { status: u16, problem: Vec<u8> },
}

/// [`decide`], retrying a [`Decision::Later`] in place after the pause it
/// asks for (calling `waiting` before each retry: a broker may need to hear
/// that the message is still being worked on), so that the messages after
/// it wait: one consumer decides them in the order they came, and an agent's
/// progress never overtakes its start. `None` when herald shuts down first
/// (leave the message unacknowledged: the broker delivers it again).
pub async fn decide_in_order<F, Fut>(
    state: &AppState,
    credentials: &Credentials,
    name: &str,
    payload: &[u8],
    broker: &'static str,
    mut waiting: F,
) -> Option<Settled>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        match decide(state, credentials, name, payload).await {
            Decision::Later { retry, why } => {
                metrics::counter!("herald_broker_messages_total", "broker" => broker, "outcome" => "later")
                    .increment(1);
                tracing::warn!(broker, credential = name, error = %why, "a command from a broker is delayed; trying it again in {retry:?} (the messages after it wait)");
                tokio::select! {
                    _ = state.live.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(retry) => {}
                }
                waiting().await;
            }
            Decision::Done => return Some(Settled::Done),
            Decision::Refused { status, problem } => return Some(Settled::Refused { status, problem }),
        }
    }
}

/// Messages read together, the most decided at once: one batch's commits go
/// to the writer together (group commit) instead of one round trip each.
pub const BATCH: usize = 100;

/// The aggregate a command message names, when it can be read: messages of
/// one aggregate are decided in the order they came, others side by side.
pub fn aggregate_of(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        aggregate_id: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Named<'_>>(payload)
        .ok()?
        .aggregate_id
        .map(std::borrow::Cow::into_owned)
}

/// Runs `run` on every item: those with the same key one after another, in
/// their order, the groups side by side (an item without a key is a group of
/// its own). `Ok(false)` when a run said to stop (shutdown); the first error
/// otherwise, once every group has stopped.
pub async fn by_aggregate<T, F, Fut>(items: Vec<(Option<String>, T)>, run: F) -> anyhow::Result<bool>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (key, item) in items {
        match key {
            Some(key) => {
                let i = *index.entry(key).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[i].push(item);
            }
            None => groups.push(vec![item]),
        }
    }
    let run = &run;
    let outcomes = futures_util::future::join_all(groups.into_iter().map(|group| async move {
        for item in group {
            if !run(item).await? {
                return Ok(false);
            }
        }
        Ok::<_, anyhow::Error>(true)
    }))
    .await;
    outcomes
        .into_iter()
        .try_fold(true, |all, outcome| outcome.map(|ok| all && ok))
}

/// The dead letter of a message refused with `e`: the status and
/// problem+json HTTP would have answered.
pub async fn refusal(e: ApiError) -> (u16, Vec<u8>) {
    let response = e.into_response();
    let status = response.status().as_u16();
    let problem = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    (status, problem)
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
