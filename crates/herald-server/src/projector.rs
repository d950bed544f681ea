//! Keeps the deployments read model up to date and feeds
//! `/api/deployments/live`: wakes on every committed batch (and every
//! [`POLL`]), runs `Projector::process_next` until caught up, then publishes
//! what changed **according to the read model's checkpoint**, not to what this
//! process applied: when several processes share the store, any of them may be
//! the one that applies an event, and every one's subscribers must hear of it.
//!
//! The task keeps the last position it published. Whenever the checkpoint is
//! ahead of it, it reads the rows whose `updated_position` is in
//! (published, checkpoint] (by index: work per change, not per row), publishes
//! them pre-encoded with the position they reflect, and moves its mark. Its own
//! applies are published by the same path, so nothing is published twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use herald_core::store::StoreError;
use herald_store::readmodel::{CHANGED_PAGE, ChangedRow, Projector};
use tokio::sync::broadcast::error::RecvError;

use crate::state::{AppState, DeploymentChanges};

const PAGE: usize = 1000;

/// How often the task looks at the read model without being woken: another
/// process may have moved its checkpoint without this one's log noticing yet.
pub const POLL: Duration = Duration::from_millis(500);

pub async fn run(state: AppState) {
    let mut projector = Projector::new(state.store.clone(), state.deployments.clone());
    let mut live = state.store.live();
    let shutdown = state.live.shutdown.clone();
    // Nothing before the checkpoint found at start is published: no stream of
    // this process was open then (each starts with the state it reads).
    let mut publisher = loop {
        match Publisher::start(&state).await {
            Ok(publisher) => break publisher,
            Err(e) => {
                tracing::error!(error = %e, "reading the deployments checkpoint failed; retrying in 1 s");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    loop {
        // Catch up with everything committed so far, publishing as it goes.
        let mut failed = false;
        loop {
            match projector.process_next(PAGE).await {
                Ok(step) => {
                    state.live.head.fetch_max(step.head, Ordering::Relaxed);
                    metrics::gauge!("herald_head_position").set(step.head as f64);
                    metrics::gauge!("herald_projection_position").set(step.checkpoint as f64);
                    publisher.publish_or_skip(&state, step.checkpoint).await;
                    if step.caught_up() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "deployments projection step failed; retrying in 1 s");
                    // Another process may still be moving the model.
                    publisher.publish_logged(&state).await;
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
                Ok(batch) => { state.live.head.fetch_max(batch.last_position(), Ordering::Relaxed); }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Publishes the read model's changes past the last position it published.
#[derive(Debug)]
pub struct Publisher {
    published: u64,
}

impl Publisher {
    /// A publisher whose mark is the read model's checkpoint now.
    pub async fn start(state: &AppState) -> Result<Publisher, StoreError> {
        Ok(Publisher {
            published: state.deployments.checkpoint().await?,
        })
    }

    /// The last position published (every change at or before it is).
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Publishes every deployment changed after the mark up to the checkpoint
    /// (a batch per [`CHANGED_PAGE`] rows); returns the batches sent. A
    /// checkpoint below the mark (a rebuild starting over) publishes nothing
    /// until the model is past the mark again: what it rewrites up to there is
    /// what was published.
    pub async fn publish(&mut self, state: &AppState) -> Result<usize, StoreError> {
        let mut batches = 0;
        loop {
            let changed = state.deployments.changed(self.published, CHANGED_PAGE).await?;
            if changed.position <= self.published {
                return Ok(batches);
            }
            if !changed.rows.is_empty() {
                send(state, changed.position, &changed.rows);
                batches += 1;
            }
            self.published = changed.position;
            if changed.position >= changed.checkpoint {
                return Ok(batches);
            }
        }
    }

    /// [`Self::publish`], unless no `/api/deployments/live` stream of this
    /// process is open: then there is nobody to read the rows for, and the mark
    /// moves to `checkpoint` (read before the check) at no cost. A stream that
    /// opens later subscribes before it reads its snapshot, so that snapshot
    /// holds every change up to a checkpoint at least this one.
    async fn publish_or_skip(&mut self, state: &AppState, checkpoint: u64) {
        if state.live.deployment_changes.receiver_count() == 0 {
            self.published = self.published.max(checkpoint);
            return;
        }
        self.publish_logged(state).await;
    }

    async fn publish_logged(&mut self, state: &AppState) {
        if let Err(e) = self.publish(state).await {
            tracing::error!(error = %e, "reading the changed deployments failed; trying again at the next wake-up");
        }
    }
}

fn send(state: &AppState, position: u64, rows: &[ChangedRow]) {
    let id = format!("id: {position}\nevent: deployment\ndata: ");
    let mut buf = BytesMut::with_capacity(rows.iter().map(|r| id.len() + r.view.len() + 2).sum());
    let mut starts = Vec::with_capacity(rows.len());
    for row in rows {
        starts.push((row.updated_position, buf.len()));
        buf.put_slice(id.as_bytes());
        // The stored view is its `serde_json::to_string`: one line of JSON.
        buf.put_slice(row.view.as_bytes());
        buf.put_slice(b"\n\n");
    }
    let _ = state.live.deployment_changes.send(Arc::new(DeploymentChanges {
        position,
        frames: buf.freeze(),
        starts,
    }));
}
