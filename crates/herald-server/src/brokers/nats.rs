//! Commands in from NATS JetStream (API.md §10).
//!
//! herald creates (or finds) the stream `<PREFIX>_COMMANDS` on the subjects
//! `<prefix>.commands.>` and `<PREFIX>_DEAD` on `<prefix>.dead.>`, and reads
//! the first through the durable pull consumer `herald` — one consumer that
//! every instance shares, so that each message goes to one of them. A message
//! is acknowledged only once its events are durable (or, for one that can
//! never succeed, once its dead letter is stored); a redelivery after a crash
//! between the commit and the ack finds the command's `command_id` and appends
//! nothing. A message that may succeed later is not acknowledged but nak'ed,
//! and JetStream delivers it again after the delay.
//!
//! Messages are decided one at a time, in the order of the stream: an agent's
//! start, progress and success of one deployment arrive in the order it sent
//! them.
//!
//! The task is supervised: a lost connection, a failed set-up or a panic is
//! logged, shown by `/readyz`, and retried with a growing pause (1 s to 30 s).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures_util::StreamExt;

use super::{Decision, decide};
pub use crate::broker_config::{NatsConfig, check_prefix};
use crate::state::AppState;

/// The name `/readyz` and the logs give this part.
pub use crate::broker_config::NATS_CONSUMER as NAME;

/// The durable consumer every instance shares.
pub const CONSUMER: &str = "herald";

/// How long JetStream waits for an acknowledgement before it delivers a
/// message again (to this instance or another).
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// Consumes commands until shutdown, reconnecting after any failure.
pub async fn run(state: AppState, config: Arc<NatsConfig>) {
    let shutdown = state.live.shutdown.clone();
    let mut pause = Duration::from_secs(1);
    loop {
        let task = tokio::spawn(consume(state.clone(), config.clone()));
        let cause = match task.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => format!("its task stopped ({e})"),
        };
        state.consumer_health.set(NAME, Some(cause.clone()));
        metrics::counter!("herald_broker_restarts_total", "broker" => "nats").increment(1);
        tracing::error!(url = %config.url, error = %cause, "the NATS command consumer failed; retrying in {pause:?}");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
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
    let consumer = commands
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                ..Default::default()
            },
        )
        .await
        .context("creating the durable consumer")?;
    let mut messages = consumer.messages().await.context("pulling messages")?;
    state.consumer_health.set(NAME, None);
    tracing::info!(url = %config.url, subjects = %config.commands_subjects(), "consuming commands from NATS");
    loop {
        let next = tokio::select! {
            _ = state.live.shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(anyhow::anyhow!("receiving a message: {e}")),
            None => anyhow::bail!("the server ended the message stream"),
        };
        handle(&state, &config, &js, message).await?;
    }
}

/// Decides one message and acknowledges it (or naks it, or dead-letters it
/// and then acknowledges it). An error is the broker's: the caller reconnects,
/// and whatever was not acknowledged is delivered again.
async fn handle(
    state: &AppState,
    config: &NatsConfig,
    js: &jetstream::Context,
    message: jetstream::Message,
) -> anyhow::Result<()> {
    let subject = message.subject.as_str().to_owned();
    let name = subject.rsplit('.').next().unwrap_or_default().to_owned();
    match decide(state, &config.credentials, &name, &message.payload).await {
        Decision::Done => {
            metrics::counter!("herald_broker_messages_total", "broker" => "nats", "outcome" => "ok").increment(1);
            message
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!("acknowledging a message: {e}"))?;
        }
        Decision::Later { retry, why } => {
            metrics::counter!("herald_broker_messages_total", "broker" => "nats", "outcome" => "later").increment(1);
            tracing::warn!(subject = %subject, error = %why, "a command from NATS is delayed; JetStream delivers it again in {retry:?}");
            message
                .ack_with(AckKind::Nak(Some(retry)))
                .await
                .map_err(|e| anyhow::anyhow!("delaying a message: {e}"))?;
        }
        Decision::Refused { status, problem } => {
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
    Ok(())
}
