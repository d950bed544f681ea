//! The one consumer runner: keeps every registered read model up to date and
//! feeds the resource streams.
//!
//! Per read model a task wakes on every committed batch (and every [`POLL`]),
//! runs `process_next` until caught up, then publishes what changed
//! **according to the model's checkpoint**, not to what this process applied:
//! when several processes share the store, any of them may be the one that
//! applies an event, and every one's subscribers must hear of it.
//!
//! Each task keeps the last position it published. Whenever the checkpoint is
//! ahead of it, it asks the model for the resources changed in (published,
//! checkpoint] (by index: work per change, not per row), publishes them
//! pre-encoded with the position they reflect, and moves its mark. Its own
//! applies are published by the same path, so nothing is published twice.
//!
//! On a store several instances share (PostgreSQL) only the instance that
//! leads a model applies the log to it (`Consumer::lead`: an advisory lock per
//! model); the others observe it — read how far it is, note stretches of the
//! log with nothing of the model's — and publish its changes all the same.
//!
//! A task that panics is restarted after a second (and counted); its model's
//! checkpoint is where it goes on from.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::store::StoreError;
use herald_store::projection::{ChangedPage, Consumer};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::resources::{ResourceBatch, ResourceEntry};
use crate::state::AppState;

const PAGE: usize = 1000;

/// Resources read per publish at most.
pub const CHANGED_PAGE: usize = 1000;

/// How often a task looks at its model without being woken: another process
/// may have moved its checkpoint without this one's log noticing yet.
pub const POLL: Duration = Duration::from_millis(500);

/// The least time between the starts of two steps of a model woken by
/// commits: a step that comes sooner waits out the rest, and then covers every
/// commit made meanwhile. Under load that is group commit for the read model:
/// one transaction (its pages written once, one read of the log, one publish)
/// for many of the writer's; a commit that comes after a quiet spell is
/// applied at once.
pub const STEP_INTERVAL: Duration = Duration::from_millis(20);

/// Runs every registered read model's task until shutdown.
pub async fn run(state: AppState) {
    let (started, _) = tokio::sync::mpsc::channel(1);
    run_telling(state, started).await
}

/// [`run`], sending one `()` on `started` for each model once its task has
/// read the checkpoint it publishes from (a resource stream opened after
/// that misses no change).
pub async fn run_telling(state: AppState, started: tokio::sync::mpsc::Sender<()>) {
    let tasks: Vec<_> = state
        .models
        .consumers()
        .iter()
        .chain(state.models.sinks())
        .map(|consumer| tokio::spawn(supervise(state.clone(), consumer.clone(), started.clone())))
        .collect();
    drop(started);
    for task in tasks {
        let _ = task.await;
    }
}

/// Runs one model's task, restarting it when it panics.
async fn supervise(state: AppState, consumer: Arc<dyn Consumer>, started: tokio::sync::mpsc::Sender<()>) {
    let shutdown = state.live.shutdown.clone();
    let mut started = Some(started);
    loop {
        let task = tokio::spawn(run_one(state.clone(), consumer.clone(), started.take()));
        match task.await {
            Ok(()) => return,
            Err(e) => {
                state
                    .consumer_health
                    .set(consumer.name(), Some(format!("its task stopped ({e}); restarting")));
                metrics::counter!("herald_projection_restarts_total", "projection" => consumer.name()).increment(1);
                tracing::error!(projection = consumer.name(), error = %e, "a projection task panicked; restarting it in 1 s");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn run_one(state: AppState, consumer: Arc<dyn Consumer>, started: Option<tokio::sync::mpsc::Sender<()>>) {
    let name = consumer.name();
    let mut live = state.store.live();
    let shutdown = state.live.shutdown.clone();
    let lag = metrics::gauge!("herald_projection_lag_events", "projection" => name);
    let position = metrics::gauge!("herald_projection_position", "projection" => name);
    // Nothing before the checkpoint found at start is published: no stream of
    // this process was open then (each starts with the state it reads).
    let mut publisher = loop {
        match Publisher::start(&*consumer).await {
            Ok(publisher) => {
                if let Some(started) = &started {
                    let _ = started.try_send(());
                }
                break publisher;
            }
            Err(e) => {
                tracing::error!(projection = name, error = %e, "reading the checkpoint failed; retrying in 1 s");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let categories = consumer.categories();
    let mut caught_up = false;
    let mut last_step: Option<tokio::time::Instant> = None;
    loop {
        // Catch up with everything committed so far, publishing as it goes
        // (unless the last batch seen held nothing of this model's and it was
        // caught up before it).
        let mut failed = false;
        // On a store several instances share, one applies (leads) at a time;
        // the others follow the model it writes and publish its changes.
        let leading = match consumer.lead().await {
            Ok(leading) => leading,
            Err(e) => {
                tracing::warn!(projection = name, error = %e, "cannot tell whether this instance leads the read model");
                false
            }
        };
        while !std::mem::take(&mut caught_up) {
            last_step = Some(tokio::time::Instant::now());
            let step = if leading {
                consumer.process_next(&state.store, PAGE).await
            } else {
                // One event is enough to tell: the leader has it to apply.
                consumer.observe(&state.store, 1).await
            };
            match step {
                Ok(step) => {
                    state.consumer_health.set(name, None);
                    state.live.head.fetch_max(step.head, Ordering::Relaxed);
                    metrics::gauge!("herald_head_position").set(step.head as f64);
                    position.set(step.checkpoint as f64);
                    lag.set(step.head.saturating_sub(step.checkpoint) as f64);
                    publisher.publish_or_skip(&state, &*consumer, step.checkpoint).await;
                    if step.caught_up() || !leading {
                        break;
                    }
                }
                Err(e) => {
                    state.consumer_health.set(name, Some(e.to_string()));
                    tracing::error!(projection = name, error = %e, "projection step failed; retrying in 1 s");
                    // Another process may still be moving the model.
                    publisher.publish_logged(&state, &*consumer).await;
                    failed = true;
                    break;
                }
            }
        }
        let wait = if failed { Duration::from_secs(1) } else { POLL };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            batch = live.recv(), if !failed => match batch {
                Ok(batch) => {
                    // Every batch already waiting too, and those that come
                    // while a wake-up sooner than STEP_INTERVAL after the last
                    // step waits out the rest: under load one step covers many
                    // commits (it reads from the checkpoint to the head)
                    // instead of one step, and its reads, per commit.
                    let mut needs_step = false;
                    let mut next = Some(batch);
                    loop {
                        if let Some(b) = next.take() {
                            let last = b.last_position();
                            state.live.head.fetch_max(last, Ordering::Relaxed);
                            // A batch with nothing of this model's, right after what it
                            // reflects: nothing to read, apply or publish.
                            let unrelated = !b
                                .events
                                .iter()
                                .any(|e| categories.contains(&herald_core::envelope::category_of(e.stream())));
                            if !needs_step && unrelated && consumer.note_unrelated(b.first_position().saturating_sub(1), last) {
                                position.set(last as f64);
                                lag.set(0.0);
                            } else {
                                needs_step = true;
                            }
                        }
                        next = match live.try_recv() {
                            Ok(b) => Some(b),
                            Err(TryRecvError::Closed) => return,
                            // Lagged: the step reads from the checkpoint anyway.
                            Err(TryRecvError::Lagged(_)) => {
                                needs_step = true;
                                None
                            }
                            Err(TryRecvError::Empty) => None,
                        };
                        if next.is_some() {
                            continue;
                        }
                        let Some(wait) = pacing(last_step).filter(|_| needs_step) else {
                            break;
                        };
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    caught_up = !needs_step;
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// What is left of [`STEP_INTERVAL`] since the step that started at `last`
/// (none when it has passed, or there was none).
fn pacing(last: Option<tokio::time::Instant>) -> Option<Duration> {
    let wait = (last? + STEP_INTERVAL).checked_duration_since(tokio::time::Instant::now())?;
    (!wait.is_zero()).then_some(wait)
}

/// Publishes a read model's changes past the last position it published.
#[derive(Debug)]
pub struct Publisher {
    published: u64,
}

impl Publisher {
    /// A publisher whose mark is the model's checkpoint now.
    pub async fn start(consumer: &dyn Consumer) -> Result<Publisher, StoreError> {
        Ok(Publisher {
            published: consumer.checkpoint().await?,
        })
    }

    /// The last position published (every change at or before it is).
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Publishes every resource changed after the mark up to the checkpoint
    /// (a batch per [`CHANGED_PAGE`] resources); returns the batches sent. A
    /// checkpoint below the mark (a rebuild starting over) publishes nothing
    /// until the model is past the mark again: what it rewrites up to there is
    /// what was published.
    pub async fn publish(&mut self, state: &AppState, consumer: &dyn Consumer) -> Result<usize, StoreError> {
        let mut batches = 0;
        loop {
            let changed = consumer.changed(self.published, CHANGED_PAGE).await?;
            if changed.position <= self.published {
                return Ok(batches);
            }
            // A batch per resource kind, each on its kind's channel.
            let mut by_kind: std::collections::BTreeMap<&'static str, Vec<_>> = Default::default();
            for resource in changed.resources {
                by_kind.entry(resource.kind).or_default().push(resource);
            }
            for (kind, resources) in by_kind {
                let page = ChangedPage {
                    resources,
                    position: changed.position,
                    checkpoint: changed.checkpoint,
                };
                let _ = state
                    .live
                    .resources
                    .send(kind, Arc::new(encode(consumer.name(), &page)));
                batches += 1;
            }
            self.published = changed.position;
            if changed.position >= changed.checkpoint {
                return Ok(batches);
            }
        }
    }

    /// [`Self::publish`], unless no resource stream of this process is open:
    /// then there is nobody to read the rows for, and the mark moves to
    /// `checkpoint` (read before the check) at no cost. A stream that opens
    /// later subscribes before it reads its state, so that state holds every
    /// change up to a checkpoint at least this one.
    async fn publish_or_skip(&mut self, state: &AppState, consumer: &dyn Consumer, checkpoint: u64) {
        if !state.live.resources.has_subscribers() {
            self.published = self.published.max(checkpoint);
            return;
        }
        self.publish_logged(state, consumer).await;
    }

    async fn publish_logged(&mut self, state: &AppState, consumer: &dyn Consumer) {
        if let Err(e) = self.publish(state, consumer).await {
            tracing::error!(projection = consumer.name(), error = %e, "reading the changed resources failed; trying again at the next wake-up");
        }
    }
}

/// The `id` of a changed resource's state in a stream of several, sorted by
/// the position of their change (`next`: the one after it): that position, so
/// that a client cut off after it resumes with the states it did not get
/// (those changed after it). Several resources one event changed share a
/// position: all but the last of them carry the position before, so that a
/// client cut off between them gets them all again rather than miss some.
pub fn resume_id(changed_at: u64, next: Option<u64>) -> u64 {
    if next == Some(changed_at) {
        changed_at.saturating_sub(1)
    } else {
        changed_at
    }
}

/// One batch: each resource's frame encoded once, sorted by kind, then by the
/// position of its change, with the `id` [`resume_id`] gives it.
pub fn encode(projection: &'static str, changed: &ChangedPage) -> ResourceBatch {
    let mut order: Vec<usize> = (0..changed.resources.len()).collect();
    order.sort_by_key(|&i| (changed.resources[i].kind, changed.resources[i].changed_at));
    let mut frames = BytesMut::with_capacity(
        changed
            .resources
            .iter()
            .map(|r| 24 + r.event.len() + r.json.len() + 16)
            .sum(),
    );
    let mut entries = Vec::with_capacity(order.len());
    for (n, &i) in order.iter().enumerate() {
        let r = &changed.resources[i];
        let next = order
            .get(n + 1)
            .map(|&j| &changed.resources[j])
            .filter(|next| next.kind == r.kind)
            .map(|next| next.changed_at);
        let id = resume_id(r.changed_at, next);
        let start = frames.len();
        frames.put_slice(b"id: ");
        frames.put_slice(id.to_string().as_bytes());
        frames.put_slice(b"\nevent: ");
        frames.put_slice(r.event.as_bytes());
        frames.put_slice(b"\ndata: ");
        // One line of JSON (serde_json never writes a raw line break).
        frames.put_slice(r.json.as_bytes());
        frames.put_slice(b"\n\n");
        entries.push(ResourceEntry {
            kind: r.kind,
            key: r.key.as_str().into(),
            changed_at: r.changed_at,
            id,
            alone_id: (id != r.changed_at).then(|| Bytes::from(format!("id: {}\n", r.changed_at))),
            class: r.class,
            range: start..frames.len(),
        });
    }
    ResourceBatch::new(projection, changed.position, frames.freeze(), entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_waits_out_what_is_left_of_the_interval_since_the_last_step() {
        assert_eq!(pacing(None), None, "no step yet: nothing to wait for");
        let step = tokio::time::Instant::now();
        assert_eq!(pacing(Some(step)), Some(STEP_INTERVAL));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(pacing(Some(step)), Some(STEP_INTERVAL - Duration::from_millis(2)));
        tokio::time::advance(STEP_INTERVAL - Duration::from_millis(2)).await;
        assert_eq!(pacing(Some(step)), None, "the interval is over");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pacing(Some(step)), None);
    }
}
