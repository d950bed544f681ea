//! Commands in from NATS JetStream (API.md §10).
//!
//! herald creates (or finds) the stream `<PREFIX>_COMMANDS` on the subjects
//! `<prefix>.commands.>` and `<PREFIX>_DEAD` on `<prefix>.dead.>`, and reads
//! the first through the durable pull consumer `herald` — one consumer that
//! every instance shares, so that each message goes to one of them. A message
//! is acknowledged only once its events are durable (or, for one that can
//! never succeed, once its dead letter is stored); a redelivery after a crash
//! between the commit and the ack finds the command's `command_id` and appends
//! nothing.
//!
//! The messages already received are decided together (up to [`BATCH`]):
//! those of one aggregate one after another, in the order of the stream —
//! an agent's start, progress and success of one deployment are decided in
//! the order it sent them —, the others side by side, so that their commits
//! share the writer's batches. A message that may succeed later (the store
//! unavailable, 429) is decided again in place after a pause, JetStream told
//! it is in progress, and the ones of its aggregate after it wait. (Several
//! instances share the consumer: each decides its share so.)
//!
//! The task is supervised: a lost connection, a failed set-up or a panic is
//! logged, shown by `/readyz`, and retried with a growing pause (1 s to 30 s).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures_util::{FutureExt as _, StreamExt};

use super::{BATCH, Settled, aggregate_of, by_aggregate, decide_in_order};
pub use crate::broker_config::{NatsConfig, check_prefix};
use crate::state::AppState;

/// The name `/readyz` and the logs give this part.
pub use crate::broker_config::NATS_CONSUMER as NAME;

/// The durable consumer every instance shares.
pub const CONSUMER: &str = "herald";

/// Consumes commands until shutdown, reconnecting after any failure.
pub async fn run(state: AppState, config: Arc<NatsConfig>) {
    let url = config.url.clone();
    super::supervise(state.clone(), NAME, "nats", url, move || {
        consume(state.clone(), config.clone())
    })
    .await
}

/// Creates (or finds) the commands and dead-letter streams and the durable
/// consumer every instance reads the commands through.
pub async fn set_up(js: &jetstream::Context, config: &NatsConfig) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    use anyhow::Context as _;
    let commands = js
        .get_or_create_stream(stream::Config {
            name: config.stream_name("COMMANDS"),
            subjects: vec![config.commands_subjects()],
            ..Default::default()
        })
        .await
        .context("creating the commands stream")?;
    js.get_or_create_stream(stream::Config {
        name: config.stream_name("DEAD"),
        subjects: vec![format!("{}.dead.>", config.prefix)],
        ..Default::default()
    })
    .await
    .context("creating the dead-letter stream")?;
    commands
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                ..Default::default()
            },
        )
        .await
        .context("creating the durable consumer")
}

/// Sets up the streams and the consumer, then decides messages until
/// shutdown (`Ok`) or a failure (`Err`: the caller reconnects).
async fn consume(state: AppState, config: Arc<NatsConfig>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let client = async_nats::ConnectOptions::new()
        .name("herald")
        .connection_timeout(Duration::from_secs(5))
        .connect(config.url.as_str())
        .await
        .with_context(|| format!("connecting to {}", config.url))?;
    let js = jetstream::new(client);
    let consumer = set_up(&js, &config).await?;
    let mut messages = consumer.messages().await.context("pulling messages")?;
    state.consumer_health.set(NAME, None);
    tracing::info!(url = %config.url, subjects = %config.commands_subjects(), "consuming commands from NATS");
    loop {
        let next = tokio::select! {
            _ = state.live.shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        // The first message, and every one already here behind it.
        let mut batch = vec![received(next)?];
        while batch.len() < BATCH {
            match messages.next().now_or_never() {
                Some(next) => batch.push(received(next)?),
                None => break,
            }
        }
        let batch = batch
            .into_iter()
            .map(|message| (aggregate_of(&message.payload), message))
            .collect();
        if !by_aggregate(batch, |message| handle(&state, &config, &js, message)).await? {
            return Ok(());
        }
    }
}

fn received(
    next: Option<Result<jetstream::Message, async_nats::jetstream::consumer::pull::MessagesError>>,
) -> anyhow::Result<jetstream::Message> {
    match next {
        Some(Ok(message)) => Ok(message),
        Some(Err(e)) => Err(anyhow::anyhow!("receiving a message: {e}")),
        None => anyhow::bail!("the server ended the message stream"),
    }
}

/// Decides one message and acknowledges it (or dead-letters it and then
/// acknowledges it); `false` when herald shuts down first. An error is the
/// broker's: the caller reconnects, and whatever was not acknowledged is
/// delivered again.
async fn handle(
    state: &AppState,
    config: &NatsConfig,
    js: &jetstream::Context,
    message: jetstream::Message,
) -> anyhow::Result<bool> {
    let subject = message.subject.as_str().to_owned();
    let name = subject.rsplit('.').next().unwrap_or_default().to_owned();
    // While a delayed message waits, JetStream hears it is in progress (it
    // is not delivered to another instance meanwhile).
    let decided = decide_in_order(state, &config.credentials, &name, &message.payload, "nats", || async {
        if let Err(e) = message.ack_with(AckKind::Progress).await {
            tracing::warn!(subject = %subject, error = %e, "telling NATS a delayed message is in progress failed");
        }
    })
    .await;
    let Some(decided) = decided else {
        return Ok(false); // shutting down: JetStream delivers it again
    };
    match decided {
        Settled::Done => {
            metrics::counter!("herald_broker_messages_total", "broker" => "nats", "outcome" => "ok").increment(1);
            message
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!("acknowledging a message: {e}"))?;
        }
        Settled::Refused { status, problem } => {
            metrics::counter!("herald_broker_messages_total", "broker" => "nats", "outcome" => "dead").increment(1);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Herald-Status", status.to_string().as_str());
            headers.insert("Herald-Subject", subject.as_str());
            if let Ok(info) = message.info() {
                headers.insert("Herald-Sequence", info.stream_sequence.to_string().as_str());
            }
            headers.insert("Content-Type", "application/problem+json");
            let dead = config.dead_subject(&name);
            tracing::info!(subject = %subject, status, dead = %dead, "a command from NATS was refused; dead-lettered");
            // Stored before the original is acknowledged: a crash in between
            // delivers the original again, never loses it.
            js.publish_with_headers(dead, headers, problem.into())
                .await
                .map_err(|e| anyhow::anyhow!("publishing a dead letter: {e}"))?
                .await
                .map_err(|e| anyhow::anyhow!("storing a dead letter: {e}"))?;
            message
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!("acknowledging a message: {e}"))?;
        }
    }
    Ok(true)
}
