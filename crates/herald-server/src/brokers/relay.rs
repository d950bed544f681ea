//! Every event out to NATS JetStream (API.md §10): the envelope as body, on
//! `<prefix>.events.<category>.<type>`, with `Nats-Msg-Id` = the event id.
//!
//! The relay is a consumer on the one runner (`consumers.rs`), beside the
//! read models: it wakes on every committed batch, reads the log after its
//! checkpoint, publishes the page in position order (pipelined on one
//! connection, which keeps the order), waits for every acknowledgement of
//! the stream `<PREFIX>_EVENTS` (created here), and only then moves its
//! checkpoint — kept like a read model's (`readmodels/nats_relay.db`, or the
//! schema `rm_nats_relay` on PostgreSQL, where one instance at a time leads
//! it, so that the order is one order). A crash between the publish and the
//! checkpoint publishes that page again after the restart: at least once,
//! and JetStream drops the duplicates by `Nats-Msg-Id` within the stream's
//! duplicate window (2 minutes by default).
//!
//! A broker that cannot be reached fails the step; the runner shows it on
//! `/readyz` and tries again every second, from the checkpoint: nothing is
//! skipped. `herald_projection_lag_events{projection="nats_relay"}` is how
//! far behind the log it is.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use herald_core::envelope::RecordedEvent;
use herald_core::event_ref::EventRef;
use herald_core::store::{EventStore, Filter, StoreError};
use herald_store::projection::{
    Changed, ChangedPage, Consumer, ReadModel, RebuildSource, RowProjection, Step, Storage,
};
use herald_store::sql::Db;

pub use crate::broker_config::NatsConfig;

/// The relay's name: its checkpoint's file or schema, its metrics label.
pub use crate::broker_config::RELAY as NAME;

/// How long a publish may wait for JetStream's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay's checkpoint, stored as a read model's with no rows.
pub struct Checkpoint;

impl RowProjection for Checkpoint {
    const NAME: &'static str = NAME;
    const CATEGORIES: &'static [&'static str] = &[];
    const VERSION: i64 = 1;
    const SCHEMA: &'static str = "";
    const POSTGRES_SCHEMA: &'static str = "";
    const TABLES: &'static [&'static str] = &[];
    type Row = ();
    type Write = ();

    fn key(_: &str) -> Option<&str> {
        None
    }

    fn fold(_: &mut Option<()>, _: &EventRef<'_>) -> bool {
        false
    }

    fn load(_: &dyn Db, _: &str) -> Result<Option<()>, StoreError> {
        Ok(None)
    }

    fn prepare(_: &str, _: &mut ()) -> Result<(), StoreError> {
        Ok(())
    }

    fn write(_: &dyn Db, _: &str, _: &()) -> Result<(), StoreError> {
        Ok(())
    }

    fn changed(_: &dyn Db, _: u64, until: u64, _: usize) -> Result<Changed, StoreError> {
        Ok(Changed {
            resources: Vec::new(),
            position: until,
        })
    }
}

/// Opens the relay's checkpoint in the data directory `dir`.
pub fn open_sqlite(dir: &std::path::Path, config: NatsConfig) -> Result<Arc<dyn Consumer>, StoreError> {
    let model = ReadModel::<Checkpoint>::open(dir)?;
    Ok(Arc::new(Relay::new(model, config)))
}

/// Opens the relay's checkpoint in its schema on PostgreSQL.
pub async fn open_postgres(
    at: &herald_postgres::PgModels,
    config: NatsConfig,
) -> Result<Arc<dyn Consumer>, StoreError> {
    let model = Arc::new(at.open::<Checkpoint>().await?);
    Ok(Arc::new(Relay::new(model, config)))
}

/// The relay, its checkpoint kept in `S`.
pub struct Relay<S: Storage> {
    checkpoint: Arc<ReadModel<Checkpoint, S>>,
    config: NatsConfig,
    /// The connection, made at the first step and dropped after a failure.
    js: tokio::sync::Mutex<Option<jetstream::Context>>,
}

impl<S: Storage> Relay<S> {
    pub fn new(checkpoint: Arc<ReadModel<Checkpoint, S>>, config: NatsConfig) -> Self {
        Relay {
            checkpoint,
            config,
            js: tokio::sync::Mutex::new(None),
        }
    }

    /// The JetStream context, connecting (and creating the events stream)
    /// when there is none.
    async fn context(&self) -> Result<jetstream::Context, StoreError> {
        let mut js = self.js.lock().await;
        if let Some(js) = &*js {
            return Ok(js.clone());
        }
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("the NATS event relay: {what} ({}): {e}", self.config.url))
        };
        let client = async_nats::ConnectOptions::new()
            .name("herald relay")
            .connection_timeout(Duration::from_secs(5))
            .connect(self.config.url.as_str())
            .await
            .map_err(|e| unavailable("connecting", &e))?;
        let context = jetstream::ContextBuilder::new().timeout(ACK_TIMEOUT).build(client);
        context
            .get_or_create_stream(stream::Config {
                name: self.config.stream_name("EVENTS"),
                subjects: vec![format!("{}.events.>", self.config.prefix)],
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("creating the events stream", &e))?;
        tracing::info!(url = %self.config.url, subjects = %format!("{}.events.>", self.config.prefix), "relaying events to NATS");
        *js = Some(context.clone());
        Ok(context)
    }

    /// Publishes `events` in order and waits for every acknowledgement.
    async fn publish(&self, events: &[Arc<RecordedEvent>]) -> Result<(), StoreError> {
        let js = self.context().await?;
        let failed = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("the NATS event relay: {e}"));
        let mut acks = Vec::with_capacity(events.len());
        let outcome: Result<(), StoreError> = async {
            for event in events {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", event_id(event)?.as_str());
                let subject = subject(&self.config.prefix, event.category(), event.event_type());
                acks.push(
                    js.publish_with_headers(subject, headers, event.json_bytes())
                        .await
                        .map_err(|e| failed(&e))?,
                );
            }
            for ack in acks {
                ack.await.map_err(|e| failed(&e))?;
            }
            Ok(())
        }
        .await;
        if outcome.is_err() {
            // Reconnect next time: a half-broken connection is not reused.
            *self.js.lock().await = None;
        }
        outcome
    }
}

/// The event's id, read from its envelope.
fn event_id(event: &RecordedEvent) -> Result<String, StoreError> {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Id<'_>>(event.json())
        .map(|id| id.id.into_owned())
        .map_err(|e| StoreError::Corrupt(format!("event at position {}: no id ({e})", event.position())))
}

/// `<prefix>.events.<category>.<type>`, each token kept to what a subject
/// token may hold.
pub fn subject(prefix: &str, category: &str, event_type: &str) -> String {
    let token = |s: &str| -> String {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return s.to_owned();
        }
        let cleaned: String = s
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        if cleaned.is_empty() { "_".into() } else { cleaned }
    };
    format!("{prefix}.events.{}.{}", token(category), token(event_type))
}

#[async_trait]
impl<S: Storage> Consumer for Relay<S> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn categories(&self) -> &'static [&'static str] {
        &[]
    }

    fn note_unrelated(&self, _: u64, _: u64) -> bool {
        // Every event is the relay's.
        false
    }

    async fn checkpoint(&self) -> Result<u64, StoreError> {
        self.checkpoint.checkpoint().await
    }

    async fn lead(&self) -> Result<bool, StoreError> {
        self.checkpoint.storage().lead().await
    }

    async fn process_next(&self, store: &Arc<dyn EventStore>, page: usize) -> Result<Step, StoreError> {
        let stored = self.checkpoint.storage().stored_checkpoint().await?;
        let found = store.read_all(stored, &Filter::default(), page).await?;
        if found.events.is_empty() {
            return Ok(Step {
                read: 0,
                checkpoint: stored,
                head: found.head,
            });
        }
        self.publish(&found.events).await?;
        let read = found.events.len();
        metrics::counter!("herald_relay_events_total", "broker" => "nats").increment(read as u64);
        // Another leader's move (after a lost lock) changes nothing here: its
        // page was the same events, deduplicated by JetStream.
        let next = if self.checkpoint.apply(stored, found.next_after, Vec::new()).await? {
            found.next_after
        } else {
            self.checkpoint.storage().stored_checkpoint().await?
        };
        Ok(Step {
            read,
            checkpoint: next,
            head: found.head,
        })
    }

    async fn observe(&self, store: &Arc<dyn EventStore>, _: usize) -> Result<Step, StoreError> {
        let checkpoint = self.checkpoint.storage().stored_checkpoint().await?;
        Ok(Step {
            read: 0,
            checkpoint,
            head: store.head().await?.position,
        })
    }

    async fn changed(&self, after: u64, _: usize) -> Result<ChangedPage, StoreError> {
        Ok(ChangedPage {
            resources: Vec::new(),
            position: after,
            checkpoint: after,
        })
    }

    async fn rebuild(
        &self,
        _: Arc<dyn RebuildSource>,
        _: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<u64, StoreError> {
        Err(StoreError::Backend(
            "the NATS event relay is not rebuilt: it resumes from its checkpoint".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::subject;

    #[test]
    fn subjects_keep_to_subject_tokens() {
        assert_eq!(
            subject("herald", "deployment", "DeploymentStarted"),
            "herald.events.deployment.DeploymentStarted"
        );
        assert_eq!(subject("t1", "a.b", "x y*>"), "t1.events.a_b.x_y__");
        assert_eq!(subject("p", "", "T"), "p.events._.T");
    }
}
