//! The revocation follower: takes access away in *this* process when the log
//! says it was taken away, whichever instance did it.
//!
//! Several herald instances may serve one store. The instance that revokes a
//! token, ends a session, disables a person or changes their roles ends its own
//! streams and forgets its own cached token at once; every instance (that one
//! too: the work is idempotent) follows the log from its head at start and, for
//! each such event, does the same for itself:
//!
//! | event | data read | what ends here |
//! |---|---|---|
//! | `TokenRevoked` | `token_id` | the token's cache entry and its streams |
//! | `LoggedOut`, `SessionRevoked` | `session_id` | the session's streams |
//! | `LoginSucceeded` (a step-up) | `replaces_session_id` | the replaced session's streams |
//! | `UserDisabled`, `RolesChanged` | `user_id` | the streams of every session of the user |
//!
//! Requests need nothing from here: sessions and users are read from the
//! account store on every request, and a token found in the cache is checked
//! again after at most its TTL (a backstop: the follower forgets it first).
//! How soon: the store's live channel publishes another process's commits
//! after the SQLite writer's idle poll (100 ms) or PostgreSQL's notification or
//! poll (250 ms), well within the 2 s this is meant to take.
//!
//! Supervised like the read models' tasks (`consumers.rs`): restarted a second
//! after a panic, resuming at the last position it handled; `/readyz` is 503
//! while it is down or cannot read the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_core::envelope::RecordedEvent;
use herald_core::store::Filter;
use herald_core::subscription::{LagPolicy, Subscription};
use serde::Deserialize;

use crate::auth::{token_credential, user_credential};
use crate::sessions::session_credential;
use crate::state::AppState;

/// Its name in `/readyz` and the metrics.
pub const NAME: &str = "revocation follower";

/// The event types that take access away.
pub const EVENT_TYPES: [&str; 6] = [
    "TokenRevoked",
    "LoggedOut",
    "SessionRevoked",
    "LoginSucceeded",
    "UserDisabled",
    "RolesChanged",
];

/// What one event ends in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A token: its cache entry and its streams.
    Token(String),
    /// A session's streams.
    Session(String),
    /// The streams of every session of a user.
    User(String),
}

#[derive(Deserialize)]
struct Envelope {
    data: Ids,
}

/// The ids the events carry (never secrets); the rest of `data` is ignored.
#[derive(Deserialize)]
struct Ids {
    #[serde(default)]
    token_id: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    replaces_session_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

/// What `event` (one of [`EVENT_TYPES`], as stored) ends; `Err` when its data
/// lacks the id its type needs.
pub fn ending(event_type: &str, json: &[u8]) -> Result<Option<Ending>, String> {
    let ids = serde_json::from_slice::<Envelope>(json)
        .map_err(|e| format!("{event_type}: {e}"))?
        .data;
    let need = |id: Option<String>, field: &str| id.ok_or_else(|| format!("{event_type}: data.{field} is missing"));
    Ok(match event_type {
        "TokenRevoked" => Some(Ending::Token(need(ids.token_id, "token_id")?)),
        "LoggedOut" | "SessionRevoked" => Some(Ending::Session(need(ids.session_id, "session_id")?)),
        // A login that replaced no session ends nothing.
        "LoginSucceeded" => ids.replaces_session_id.map(Ending::Session),
        "UserDisabled" | "RolesChanged" => Some(Ending::User(need(ids.user_id, "user_id")?)),
        _ => None,
    })
}

/// Applies `ending` to this process; returns how many streams it ended.
pub fn apply(state: &AppState, ending: &Ending) -> usize {
    match ending {
        Ending::Token(id) => {
            state.token_cache.forget(id);
            state.live.end_credential(&token_credential(id))
        }
        Ending::Session(id) => state.live.end_credential(&session_credential(id)),
        Ending::User(id) => state.live.end_limit_key(&user_credential(id)),
    }
}

fn handle(state: &AppState, event: &RecordedEvent) {
    match ending(event.event_type(), event.json()) {
        Ok(Some(ending)) => {
            let ended = apply(state, &ending);
            if ended > 0 {
                tracing::info!(
                    position = event.position(),
                    ?ending,
                    ended,
                    "streams ended by a revocation in the log"
                );
            }
        }
        Ok(None) => {}
        // Every event herald records has its id; one that has not cannot be
        // acted on, and must not stop the ones after it.
        Err(e) => tracing::warn!(position = event.position(), error = %e, "a revocation event names nothing to end"),
    }
}

/// Where the follower starts: the head now. Taken before the process serves
/// anything, so every stream it opens and every token it caches comes after
/// it; what was revoked before, the account store already refuses. When the
/// head cannot be read, from the start of the log (the work is idempotent).
pub async fn start_position(state: &AppState) -> u64 {
    match state.store.head().await {
        Ok(head) => head.position,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the log's head; the revocation follower reads the log from its start");
            0
        }
    }
}

/// Follows the log after `from` until shutdown, restarting the follower a
/// second after a panic (at the last position it handled).
pub async fn run(state: AppState, from: u64) {
    let shutdown = state.live.shutdown.clone();
    let position = Arc::new(AtomicU64::new(from));
    loop {
        let task = tokio::spawn(follow(state.clone(), position.clone()));
        match task.await {
            Ok(()) => return,
            Err(e) => {
                state
                    .consumer_health
                    .set(NAME, Some(format!("its task stopped ({e}); restarting")));
                metrics::counter!("herald_revocation_follower_restarts_total").increment(1);
                tracing::error!(error = %e, "the revocation follower panicked; restarting it in 1 s");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Waits a second (or for shutdown: `false`).
async fn pause(state: &AppState) -> bool {
    tokio::select! {
        _ = state.live.shutdown.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_secs(1)) => true,
    }
}

async fn follow(state: AppState, position: Arc<AtomicU64>) {
    let filter = Filter {
        types: EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
        ..Filter::default()
    };
    let subscribe = || {
        Subscription::new(
            state.store.clone(),
            position.load(Ordering::Acquire),
            filter.clone(),
            LagPolicy::CatchUp,
        )
    };
    // Healthy again after a restart (the first read that fails says otherwise).
    state.consumer_health.set(NAME, None);
    let mut subscription = subscribe();
    loop {
        let next = tokio::select! {
            _ = state.live.shutdown.cancelled() => return,
            next = subscription.next_chunk() => next,
        };
        match next {
            Ok(Some(chunk)) => {
                for event in &chunk.events {
                    handle(&state, event);
                }
                position.store(chunk.examined, Ordering::Release);
            }
            // The store shut down.
            Ok(None) => return,
            Err(e) => {
                state
                    .consumer_health
                    .set(NAME, Some(format!("cannot read the log: {e}")));
                tracing::error!(error = %e, "the revocation follower cannot read the log; retrying in 1 s");
                // Until the store answers again; then on from the last position handled.
                loop {
                    if !pause(&state).await {
                        return;
                    }
                    if state.store.head().await.is_ok() {
                        break;
                    }
                }
                state.consumer_health.set(NAME, None);
                subscription = subscribe();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "type": "x", "data": data, "position": 1 })).unwrap()
    }

    #[test]
    fn each_event_names_what_it_ends() {
        let cases = [
            (
                "TokenRevoked",
                serde_json::json!({ "token_id": "t1" }),
                Some(Ending::Token("t1".into())),
            ),
            (
                "LoggedOut",
                serde_json::json!({ "user_id": "u", "session_id": "s1" }),
                Some(Ending::Session("s1".into())),
            ),
            (
                "SessionRevoked",
                serde_json::json!({ "user_id": "u", "session_id": "s2" }),
                Some(Ending::Session("s2".into())),
            ),
            (
                "LoginSucceeded",
                serde_json::json!({ "user_id": "u", "session_id": "new", "replaces_session_id": "old" }),
                Some(Ending::Session("old".into())),
            ),
            (
                "LoginSucceeded",
                serde_json::json!({ "user_id": "u", "session_id": "new", "replaces_session_id": null }),
                None,
            ),
            (
                "UserDisabled",
                serde_json::json!({ "user_id": "u", "username": "bob" }),
                Some(Ending::User("u".into())),
            ),
            (
                "RolesChanged",
                serde_json::json!({ "user_id": "u", "roles": ["viewer"], "previous": ["admin"] }),
                Some(Ending::User("u".into())),
            ),
        ];
        for (kind, data, expected) in cases {
            assert_eq!(ending(kind, &envelope(data.clone())), Ok(expected), "{kind} {data}");
        }
    }

    #[test]
    fn an_event_without_its_id_is_an_error_not_a_panic() {
        let e = ending("TokenRevoked", &envelope(serde_json::json!({}))).unwrap_err();
        assert!(e.contains("data.token_id"), "{e}");
        assert!(ending("UserDisabled", b"not json").is_err());
        assert!(ending("RolesChanged", &envelope(serde_json::json!({ "user_id": 7 }))).is_err());
    }
}
