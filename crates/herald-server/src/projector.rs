//! Keeps the deployments read model up to date and feeds
//! `/api/deployments/live`: wakes on every committed batch, runs
//! `Projector::process_next` until caught up, publishes what changed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use herald_store::readmodel::Projector;
use tokio::sync::broadcast::error::RecvError;

use crate::state::{AppState, DeploymentChanges};

const PAGE: usize = 1000;

pub async fn run(state: AppState) {
    let mut projector = Projector::new(state.store.clone(), state.deployments.clone());
    let mut live = state.store.live();
    let shutdown = state.live.shutdown.clone();
    loop {
        // Catch up with everything committed so far.
        loop {
            match projector.process_next(PAGE).await {
                Ok(step) => {
                    state.live.head.fetch_max(step.head, Ordering::Relaxed);
                    metrics::gauge!("herald_head_position").set(step.head as f64);
                    metrics::gauge!("herald_projection_position").set(step.checkpoint as f64);
                    if !step.changed.is_empty() {
                        publish(&state, step.checkpoint, &step.changed);
                    }
                    if step.checkpoint >= step.head {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "deployments projection step failed; retrying in 1 s");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = live.recv() => match batch {
                Ok(batch) => { state.live.head.fetch_max(batch.last_position(), Ordering::Relaxed); }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}

fn publish(state: &AppState, position: u64, changed: &[herald_core::deployment_view::DeploymentView]) {
    let mut buf = BytesMut::new();
    for view in changed {
        let Ok(json) = serde_json::to_vec(view) else { continue };
        buf.put_slice(format!("id: {position}\nevent: deployment\ndata: ").as_bytes());
        buf.put_slice(&json);
        buf.put_slice(b"\n\n");
    }
    let _ = state.live.deployment_changes.send(Arc::new(DeploymentChanges {
        position,
        frames: buf.freeze(),
    }));
}
