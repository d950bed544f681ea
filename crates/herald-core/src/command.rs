//! Command handling: idempotency, load, decide, append with optimistic concurrency.
//!
//! `handle` is the one path every command takes, whatever the transport (the
//! server's API, the command line, message subjects).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::aggregate::{Aggregate, InvalidCommand, Rejection, from_stored, to_new_event};
use crate::envelope::Actor;
use crate::jcs;
use crate::names::{AggregateId, StreamName};
use crate::store::{
    AppendOutcome, AppendRequest, Committed, EventStore, ExpectedVersion, StoreError, fingerprints_match,
};

/// A command as it arrives, after the transport has checked its shape.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    pub command_type: String,
    pub aggregate_id: AggregateId,
    /// `None`: whatever the current version is; `Some(0)`: the stream must not exist.
    pub expected_version: Option<u64>,
    /// Idempotency key chosen by the client.
    pub command_id: Option<String>,
    pub correlation_id: Option<String>,
    pub data: Value,
    /// The caller proved presence recently enough for a risky command: a
    /// machine credential (tokens have no step-up), or a person whose last
    /// passkey verification is within the step-up window.
    pub presence_verified: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No registered aggregate has this command type; `known` lists those that exist.
    #[error("unknown command type {command_type:?}")]
    UnknownType {
        command_type: String,
        known: Vec<&'static str>,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidCommand),
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("version conflict on {stream}: expected {expected}, actual {actual}")]
    Conflict { stream: String, expected: u64, actual: u64 },
    #[error("command_id {0} was already used for a different command")]
    CommandIdReused(String),
    /// The domain marks this command risky and the caller's last passkey
    /// verification is too old (the caller must verify again, then retry).
    #[error("{0} needs a recent passkey verification")]
    StepUpRequired(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::CommandIdReused { command_id } => CommandError::CommandIdReused(command_id),
            other => CommandError::Store(other),
        }
    }
}

/// The command types of the registered aggregates, and how to run each: the
/// one place that knows which aggregate a command belongs to. Domains register
/// their aggregates; every transport calls [`Commands::handle`].
#[derive(Default)]
pub struct Commands {
    by_type: std::collections::HashMap<&'static str, Handler>,
    types: Vec<&'static str>,
}

type HandlerFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<AppendOutcome, CommandError>> + Send + 'a>>;

type Handler = for<'a> fn(&'a dyn EventStore, &'a StreamLocks, &'a Actor, CommandRequest) -> HandlerFuture<'a>;

impl Commands {
    /// Accepts `A`'s commands. Panics when a command type is taken already:
    /// two aggregates cannot share one (a programming error, found at start).
    pub fn register<A: Aggregate>(&mut self) -> &mut Self {
        for &command_type in A::COMMAND_TYPES {
            assert!(
                !self.by_type.contains_key(command_type),
                "command type {command_type} is registered twice"
            );
            self.by_type.insert(command_type, |store, locks, actor, request| {
                Box::pin(handle_for::<A>(store, locks, actor, request))
            });
            self.types.push(command_type);
        }
        self
    }

    /// Every command type, in registration order.
    pub fn types(&self) -> &[&'static str] {
        &self.types
    }

    /// Executes a command for `actor`. Returns what was committed, or, for a
    /// retry of an earlier `command_id`, [`AppendOutcome::Duplicate`] with what
    /// was committed the first time.
    pub async fn handle(
        &self,
        store: &dyn EventStore,
        locks: &StreamLocks,
        actor: &Actor,
        request: CommandRequest,
    ) -> Result<AppendOutcome, CommandError> {
        match self.by_type.get(request.command_type.as_str()) {
            Some(handler) => handler(store, locks, actor, request).await,
            None => Err(CommandError::UnknownType {
                command_type: request.command_type,
                known: self.types.clone(),
            }),
        }
    }
}

/// How many times a command without `expected_version` is decided again after
/// losing a race to a writer in another process (this process's own writers
/// queue on [`StreamLocks`] instead of racing).
const MAX_ATTEMPTS: usize = 5;

/// Serializes command handling per stream within one process, so concurrent
/// commands on one aggregate take turns instead of burning optimistic retries.
/// Entries are weak and swept as the map grows, so it stays bounded by the
/// streams in use.
///
/// It also remembers the state of the aggregates it handled lately (a bounded
/// cache), so a command on a stream this process wrote recently decides without
/// reading the stream. A cached state is only ever a guess: the append says
/// `Exact(version)`, so a state another process moved on conflicts, and every
/// refusal decided on a guess is decided again on the stream as stored.
#[derive(Default)]
pub struct StreamLocks {
    inner: std::sync::Mutex<LockMap>,
    states: std::sync::Mutex<StateCache>,
}

#[derive(Default)]
struct LockMap {
    locks: std::collections::HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>,
    sweep_at: usize,
}

/// Streams whose state is kept: two generations of half as many each; a hit in
/// the older one moves the entry to the newer, a full newer one replaces the older.
const CACHED_STATES: usize = 16_384;

#[derive(Default)]
struct StateCache {
    current: std::collections::HashMap<String, CachedState>,
    previous: std::collections::HashMap<String, CachedState>,
}

struct CachedState {
    version: u64,
    state: Box<dyn std::any::Any + Send + Sync>,
}

impl StreamLocks {
    pub async fn lock(&self, stream: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if map.locks.len() >= map.sweep_at {
                map.locks.retain(|_, weak| weak.strong_count() > 0);
                map.sweep_at = (map.locks.len() * 2).max(1024);
            }
            match map.locks.get(stream).and_then(std::sync::Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                    map.locks.insert(stream.to_owned(), std::sync::Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    fn cached<A: Aggregate>(&self, stream: &str) -> Option<(A, u64)> {
        let mut cache = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if !cache.current.contains_key(stream) {
            let entry = cache.previous.remove(stream)?;
            cache.insert(stream.to_owned(), entry);
        }
        let entry = cache.current.get(stream)?;
        let state = entry.state.downcast_ref::<A>()?;
        Some((state.clone(), entry.version))
    }

    fn remember<A: Aggregate>(&self, stream: &str, state: A, version: u64) {
        let mut cache = self.states.lock().unwrap_or_else(|p| p.into_inner());
        cache.previous.remove(stream);
        cache.insert(
            stream.to_owned(),
            CachedState {
                version,
                state: Box::new(state),
            },
        );
    }

    fn forget(&self, stream: &str) {
        let mut cache = self.states.lock().unwrap_or_else(|p| p.into_inner());
        cache.current.remove(stream);
        cache.previous.remove(stream);
    }
}

impl StateCache {
    fn insert(&mut self, stream: String, entry: CachedState) {
        if self.current.len() >= CACHED_STATES / 2 && !self.current.contains_key(&stream) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(stream, entry);
    }
}

/// [`Commands::handle`] of a command of `A`'s.
async fn handle_for<A: Aggregate>(
    store: &dyn EventStore,
    locks: &StreamLocks,
    actor: &Actor,
    request: CommandRequest,
) -> Result<AppendOutcome, CommandError> {
    let data = request.data.clone();
    match A::parse_command(&request.command_type, data) {
        Some(command) => {
            let command = command?;
            if !request.presence_verified && A::needs_step_up(&command) {
                return Err(CommandError::StepUpRequired(request.command_type));
            }
            execute::<A>(store, locks, actor, &request, command).await
        }
        None => Err(CommandError::UnknownType {
            command_type: request.command_type,
            known: A::COMMAND_TYPES.to_vec(),
        }),
    }
}

/// A stable digest of what a command asks for, to tell a retry from a reuse of its id.
pub fn fingerprint(request: &CommandRequest) -> String {
    // The canonical text of {"aggregate_id", "data", "expected_version",
    // "type"} (members in their sorted order), written without building it.
    let mut text = String::with_capacity(128);
    text.push_str("{\"aggregate_id\":");
    jcs::write_str(&mut text, request.aggregate_id.as_str());
    text.push_str(",\"data\":");
    // Absent, null and {} data mean the same command.
    if request.data.is_null() {
        text.push_str("{}");
    } else {
        jcs::write_value(&mut text, &request.data);
    }
    text.push_str(",\"expected_version\":");
    match request.expected_version {
        Some(v) => jcs::write_u64(&mut text, v),
        None => text.push_str("null"),
    }
    text.push_str(",\"type\":");
    jcs::write_str(&mut text, &request.command_type);
    text.push('}');
    hex::encode(Sha256::digest(text.as_bytes()))
}

async fn execute<A: Aggregate>(
    store: &dyn EventStore,
    locks: &StreamLocks,
    actor: &Actor,
    request: &CommandRequest,
    command: A::Command,
) -> Result<AppendOutcome, CommandError> {
    // No lookup of an earlier use of `command_id` up front (a read per command):
    // a retry either decides to append again, and the store answers with what the
    // first attempt committed (it checks the id in the write transaction), or is
    // rejected or conflicts, and then the lookup below finds the first attempt.
    let fingerprint = request.command_id.as_ref().map(|_| fingerprint(request));
    let stream = StreamName::new(A::CATEGORY, &request.aggregate_id);
    let command_id = request
        .command_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let correlation_id = request.correlation_id.clone().unwrap_or_else(|| command_id.clone());
    let _turn = locks.lock(stream.as_str()).await;

    // First from what this process knows (the cached state, or else a guess
    // that the stream is new); anything but a successful append decided that
    // way is decided again on the stored stream.
    let mut fast = true;
    let mut attempt = 0;
    loop {
        let (mut state, version, guessed) = match fast.then(|| quick_state::<A>(locks, &stream, request)) {
            Some(Some((state, version))) => (state, version, true),
            _ => {
                attempt += 1;
                let (state, version) = load::<A>(store, &stream).await?;
                (state, version, false)
            }
        };
        if let Some(expected) = request.expected_version
            && expected != version
        {
            if guessed {
                fast = false;
                continue;
            }
            // A concurrent retry of this very command may have just won.
            if let Some(result) = earlier_result(store, request, fingerprint.as_deref()).await? {
                return Ok(AppendOutcome::Duplicate(result));
            }
            return Err(CommandError::Conflict {
                stream: stream.to_string(),
                expected,
                actual: version,
            });
        }
        let events = match state.decide(&command) {
            Ok(events) => events,
            Err(rejection) => {
                if guessed {
                    fast = false;
                    continue;
                }
                // A concurrent retry of this very command may have just won.
                if let Some(result) = earlier_result(store, request, fingerprint.as_deref()).await? {
                    return Ok(AppendOutcome::Duplicate(result));
                }
                return Err(rejection.into());
            }
        };
        let append = AppendRequest {
            stream: stream.to_string(),
            expected: ExpectedVersion::Exact(version),
            events: events.iter().map(to_new_event).collect(),
            actor: actor.clone(),
            command_id: command_id.clone(),
            correlation_id: correlation_id.clone(),
            idempotency_fingerprint: fingerprint.clone(),
        };
        match store.append(append).await {
            Ok(AppendOutcome::Appended(committed)) => {
                for event in events {
                    state.evolve(event);
                }
                locks.remember(stream.as_str(), state, committed.version);
                return Ok(AppendOutcome::Appended(committed));
            }
            Ok(duplicate) => {
                locks.forget(stream.as_str());
                return Ok(duplicate);
            }
            Err(StoreError::Conflict { actual, .. }) => {
                locks.forget(stream.as_str());
                if guessed {
                    fast = false;
                    continue;
                }
                if request.expected_version.is_none() && attempt < MAX_ATTEMPTS {
                    continue; // decide again on the newer state
                }
                if let Some(result) = earlier_result(store, request, fingerprint.as_deref()).await? {
                    return Ok(AppendOutcome::Duplicate(result));
                }
                return Err(CommandError::Conflict {
                    stream: stream.to_string(),
                    expected: request.expected_version.unwrap_or(version),
                    actual,
                });
            }
            Err(e) => {
                locks.forget(stream.as_str());
                return Err(e.into());
            }
        }
    }
}

/// The state to decide on without reading the stream: the cached one, or an
/// empty stream when the caller does not expect a version other than 0 (a
/// wrong guess costs a `decide`: only a command that starts an aggregate is
/// accepted on an empty stream, and anything else is decided again on the
/// stored one). `None`: read the stream.
fn quick_state<A: Aggregate>(locks: &StreamLocks, stream: &StreamName, request: &CommandRequest) -> Option<(A, u64)> {
    if let Some(cached) = locks.cached::<A>(stream.as_str()) {
        return Some(cached);
    }
    (request.expected_version.unwrap_or(0) == 0).then(|| (A::default(), 0))
}

async fn earlier_result(
    store: &dyn EventStore,
    request: &CommandRequest,
    fingerprint: Option<&str>,
) -> Result<Option<Committed>, CommandError> {
    let (Some(command_id), Some(fingerprint)) = (&request.command_id, fingerprint) else {
        return Ok(None);
    };
    match store.find_command(command_id).await? {
        Some((seen, committed)) if fingerprints_match(&seen, fingerprint) => Ok(Some(committed)),
        Some(_) => Err(CommandError::CommandIdReused(command_id.clone())),
        None => Ok(None),
    }
}

const LOAD_PAGE: usize = 1000;

/// Folds a stream into its aggregate state; returns the state and the stream's version.
pub async fn load<A: Aggregate>(store: &dyn EventStore, stream: &StreamName) -> Result<(A, u64), CommandError> {
    let mut state = A::default();
    let mut from = 1;
    loop {
        let slice = store.read_stream(stream.as_str(), from, LOAD_PAGE).await?;
        for event in &slice.events {
            let envelope = event
                .envelope()
                .map_err(|e| StoreError::Corrupt(format!("event {}: {e}", event.position())))?;
            let domain = from_stored::<A::Event>(&envelope.event_type, envelope.data)
                .map_err(|e| StoreError::Corrupt(format!("event {} of {stream}: {e}", event.position())))?;
            state.evolve(domain);
        }
        let read_to = slice.events.last().map_or(from - 1, |e| e.version());
        if read_to >= slice.version || slice.events.is_empty() {
            return Ok((state, slice.version));
        }
        from = read_to + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(data: Value) -> CommandRequest {
        CommandRequest {
            command_type: "SucceedDeployment".into(),
            aggregate_id: AggregateId::parse("d1").unwrap(),
            expected_version: None,
            command_id: Some("c1".into()),
            correlation_id: None,
            data,
            presence_verified: true,
        }
    }

    #[test]
    fn fingerprint_treats_absent_null_and_empty_data_alike() {
        let empty = fingerprint(&request(serde_json::json!({})));
        assert_eq!(fingerprint(&request(Value::Null)), empty);
        assert_ne!(fingerprint(&request(serde_json::json!({"reason": "x"}))), empty);
        let mut other = request(serde_json::json!({}));
        other.aggregate_id = AggregateId::parse("d2").unwrap();
        assert_ne!(fingerprint(&other), empty);
    }

    #[test]
    fn fingerprint_is_the_digest_it_always_was() {
        // As first written: serde_jcs of the JSON object, so that a retry
        // after an upgrade still matches its first attempt.
        fn before(request: &CommandRequest) -> String {
            let empty = serde_json::json!({});
            let value = serde_json::json!({
                "type": request.command_type,
                "aggregate_id": request.aggregate_id.as_str(),
                "expected_version": request.expected_version,
                "data": if request.data.is_null() { &empty } else { &request.data },
            });
            hex::encode(Sha256::digest(serde_jcs::to_string(&value).unwrap().as_bytes()))
        }
        for (data, expected_version) in [
            (Value::Null, None),
            (
                serde_json::json!({"reason": "x\"/\u{1}é😀", "b": [1.5, -0.0, 1e21], "\u{10000}": {}, "\u{e000}": null}),
                Some(7),
            ),
            (serde_json::json!([]), Some(9_007_199_254_740_993)),
        ] {
            let mut r = request(data);
            r.expected_version = expected_version;
            r.command_type = "Odd \"type\"\n".into();
            assert_eq!(fingerprint(&r), before(&r), "{r:?}");
        }
    }

    #[tokio::test]
    async fn stream_locks_serialize_one_stream_and_not_others() {
        let locks = StreamLocks::default();
        let held = locks.lock("deployment-a").await;
        // Another stream is free while `a` is held.
        let _b = locks.lock("deployment-b").await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("deployment-a")).await;
        assert!(waiting.is_err(), "a second lock on the same stream must wait");
        drop(held);
        let _again = locks.lock("deployment-a").await;
    }
}
