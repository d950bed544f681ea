//! Commands in from a Redis stream (API.md §10).
//!
//! Agents `XADD <prefix>:commands * credential NAME command JSON`; herald
//! reads the stream in the consumer group `herald` (created at the start of
//! the stream, so that entries added before herald first ran are read too),
//! each instance as a consumer of its own. An entry is `XACK`ed only once its
//! events are durable (or, for one that can never succeed, once its dead
//! letter is in `<prefix>:dead`); a redelivery finds the command's
//! `command_id` and appends nothing.
//!
//! What is not acknowledged stays in the group's pending list:
//! - an entry that may succeed later (the store unavailable, 429) is read
//!   again from this consumer's own pending entries after the pause the
//!   decision asked for; while [`MAX_DELAYED`] of them wait, nothing new is
//!   read (the backlog stays in Redis, not in memory);
//! - the entries of a consumer that stopped (a crash between the commit and
//!   the ack, an instance gone) are taken over with `XAUTOCLAIM` by any
//!   instance once they have been idle for [`CLAIM_IDLE`].
//!
//! Entries are decided one at a time, in the order of the stream. The task is
//! supervised like the NATS consumer: reconnect with a pause from 1 s to 30 s,
//! `/readyz` naming it meanwhile.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::{Settled, aggregate_of, by_aggregate, decide_in_order};
pub use crate::broker_config::RedisConfig;
use crate::error::ApiError;
use crate::state::AppState;

/// The name `/readyz` and the logs give this part.
pub use crate::broker_config::REDIS_CONSUMER as NAME;

/// The consumer group every instance reads in.
pub const GROUP: &str = "herald";

/// How often pending entries of stopped consumers are looked for, at most.
const CLAIM_EVERY: Duration = Duration::from_secs(5);

/// Entries read per round trip (and decided together).
const COUNT: usize = super::BATCH;

/// How long one read waits for new entries (then claims and retries run).
const BLOCK: Duration = Duration::from_secs(1);

/// Dead letters kept (about): the oldest go first.
const DEAD_MAXLEN: usize = 100_000;

/// Consumes commands until shutdown, reconnecting after any failure.
pub async fn run(state: AppState, config: Arc<RedisConfig>) {
    // One name for this process's life: what it leaves pending after a lost
    // connection it reads again itself, at once.
    let consumer = format!("herald-{}", uuid::Uuid::new_v4().simple());
    let url = redacted(&config.url);
    super::supervise(state.clone(), NAME, "redis", url, move || {
        consume(state.clone(), config.clone(), consumer.clone())
    })
    .await
}

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// What this consumer does next.
struct Reader {
    key: String,
    consumer: String,
    /// When pending entries of stopped consumers are looked for next.
    claim_at: tokio::time::Instant,
    /// Read its own pending entries first (after a reconnect, a claim).
    own_pending: bool,
}

async fn consume(state: AppState, config: Arc<RedisConfig>, consumer: String) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let client = redis::Client::open(config.url.as_str()).context("the --redis URL")?;
    let settings = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        // Longer than a blocking read waits.
        .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&settings)
        .await
        .with_context(|| format!("connecting to {}", redacted(&config.url)))?;
    let key = config.commands_key();
    let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&key, GROUP, "0").await;
    if let Err(e) = created
        && e.code() != Some("BUSYGROUP")
    {
        return Err(e).context("creating the consumer group");
    }
    state.consumer_health.set(NAME, None);
    tracing::info!(url = %redacted(&config.url), key = %key, consumer = %consumer, "consuming commands from Redis");
    let mut reader = Reader {
        key,
        consumer,
        claim_at: tokio::time::Instant::now(),
        own_pending: true,
    };
    loop {
        if state.live.shutdown.is_cancelled() {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= reader.claim_at {
            reader.claim_at = now + CLAIM_EVERY.min(config.claim_idle);
            if claim(&mut conn, &reader, config.claim_idle).await? > 0 {
                reader.own_pending = true;
            }
        }
        let entries = if std::mem::take(&mut reader.own_pending) {
            read(&mut conn, &reader, "0", None).await?
        } else {
            let wait = reader
                .claim_at
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), BLOCK);
            tokio::select! {
                _ = state.live.shutdown.cancelled() => return Ok(()),
                entries = read(&mut conn, &reader, ">", Some(wait)) => entries?,
            }
        };
        let entries = entries
            .into_iter()
            .map(|entry| {
                let aggregate = entry.get::<Vec<u8>>("command").and_then(|c| aggregate_of(&c));
                (aggregate, entry)
            })
            .collect();
        let key = reader.key.as_str();
        if !by_aggregate(entries, |entry| handle(&state, &config, conn.clone(), key, entry)).await? {
            return Ok(()); // shutting down: what was not decided stays pending
        }
    }
}

/// `XREADGROUP` from `id` (`>`: new entries; `0`: this consumer's pending ones).
async fn read(
    conn: &mut MultiplexedConnection,
    reader: &Reader,
    id: &str,
    block: Option<Duration>,
) -> anyhow::Result<Vec<StreamId>> {
    let mut options = redis::streams::StreamReadOptions::default()
        .group(GROUP, &reader.consumer)
        .count(COUNT);
    if let Some(block) = block {
        options = options.block(block.as_millis() as usize);
    }
    let reply: Option<StreamReadReply> = conn
        .xread_options(&[&reader.key], &[id], &options)
        .await
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", reader.key))?;
    Ok(reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default())
}

/// Takes over the entries other consumers left pending for `idle`;
/// returns how many. They are then read as this consumer's own.
async fn claim(conn: &mut MultiplexedConnection, reader: &Reader, idle: Duration) -> anyhow::Result<usize> {
    let mut start = "0-0".to_owned();
    let mut claimed = 0;
    loop {
        let options = redis::streams::StreamAutoClaimOptions::default()
            .count(COUNT)
            .with_justid();
        let reply: StreamAutoClaimReply = conn
            .xautoclaim_options(
                &reader.key,
                GROUP,
                &reader.consumer,
                idle.as_millis() as u64,
                &start,
                options,
            )
            .await
            .map_err(|e| anyhow::anyhow!("claiming idle entries: {e}"))?;
        claimed += reply.claimed.len();
        if !reply.claimed.is_empty() {
            tracing::info!(
                count = reply.claimed.len(),
                "took over commands another Redis consumer left unacknowledged"
            );
        }
        if reply.next_stream_id == "0-0" || reply.next_stream_id.is_empty() {
            return Ok(claimed);
        }
        start = reply.next_stream_id;
    }
}

/// Decides one entry and acknowledges it (or dead-letters it and then
/// acknowledges it). `false`: herald is shutting down and it stays pending.
async fn handle(
    state: &AppState,
    config: &RedisConfig,
    mut conn: MultiplexedConnection,
    key: &str,
    entry: StreamId,
) -> anyhow::Result<bool> {
    let name: Option<String> = entry.get("credential");
    let command: Option<Vec<u8>> = entry.get("command");
    let settled = match (&name, &command) {
        (Some(name), Some(command)) => {
            decide_in_order(state, &config.credentials, name, command, "redis", || async {}).await
        }
        _ => {
            let (status, problem) = super::refusal(ApiError::BadRequest(missing_fields(&entry))).await;
            Some(Settled::Refused { status, problem })
        }
    };
    let Some(settled) = settled else {
        return Ok(false);
    };
    match settled {
        Settled::Done => {
            metrics::counter!("herald_broker_messages_total", "broker" => "redis", "outcome" => "ok").increment(1);
        }
        Settled::Refused { status, problem } => {
            metrics::counter!("herald_broker_messages_total", "broker" => "redis", "outcome" => "dead").increment(1);
            let dead = config.dead_key();
            tracing::info!(entry = %entry.id, status, dead = %dead, "a command from Redis was refused; dead-lettered");
            let status = status.to_string();
            let fields: [(&str, &[u8]); 5] = [
                ("credential", name.as_deref().unwrap_or_default().as_bytes()),
                ("command", command.as_deref().unwrap_or_default()),
                ("problem", &problem),
                ("status", status.as_bytes()),
                ("entry", entry.id.as_bytes()),
            ];
            // Stored before the original is acknowledged: a crash in between
            // delivers the original again, never loses it.
            let _: Option<String> = conn
                .xadd_maxlen(&dead, redis::streams::StreamMaxlen::Approx(DEAD_MAXLEN), "*", &fields)
                .await
                .map_err(|e| anyhow::anyhow!("storing a dead letter: {e}"))?;
        }
    }
    let _: usize = conn
        .xack(key, GROUP, &[&entry.id])
        .await
        .map_err(|e| anyhow::anyhow!("acknowledging {}: {e}", entry.id))?;
    Ok(true)
}

/// Why an entry without its two text fields (or one deleted from the
/// stream while it was pending) cannot be decided.
fn missing_fields(entry: &StreamId) -> String {
    let missing: Vec<&str> = ["credential", "command"]
        .into_iter()
        .filter(|f| entry.get::<Vec<u8>>(f).is_none())
        .collect();
    format!(
        "entry {}: the fields credential (a configured name) and command (the JSON of POST /api/commands) are \
         required; missing: {}",
        entry.id,
        missing.join(", ")
    )
}
