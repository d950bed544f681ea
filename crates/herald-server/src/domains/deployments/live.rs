//! The deployments resource streams (API.md §6), on [`open_resource`]:
//!
//! - `GET /api/deployments/live[?status=S]`: `event: snapshot` (the list, as
//!   `GET /api/deployments` answers it), then `event: deployment` per change;
//!   with `?status`, a changed deployment of another status comes as
//!   `event: deployment_removed`. Resumed (`Last-Event-ID: P`): every
//!   deployment changed after P, once, then live; a snapshot instead when
//!   more than [`RESUME_LIMIT`] changed.
//! - `GET /api/deployments/{id}/live`: `event: deployment` on connect (unless
//!   the client resumes and it did not change since) and after each change.

use herald_core::names::AggregateId;
use herald_store::projection::Consumer;

use super::projection::{Deployments, KIND};
use super::routes::{ListQuery, list_json, list_query, one_json};
use crate::consumers::resume_id;
use crate::error::ApiError;
use crate::live::Opened;
use crate::resources::{ClassFilter, Initial, Resource, open_resource, open_single, push_frame, push_removed};
use crate::state::AppState;
use crate::state::{LiveFuture, LiveRequest, LiveRoute, model_at};

/// A resumed list stream sends at most this many changed deployments; more: a snapshot.
pub const RESUME_LIMIT: usize = 1000;

/// The event a deployment that left a `?status` filter comes as.
pub const REMOVED: &str = "deployment_removed";

pub const LIST: LiveRoute = LiveRoute {
    pattern: "/api/deployments/live",
    open: open_list,
};

pub const ONE: LiveRoute = LiveRoute {
    pattern: "/api/deployments/{id}/live",
    open: open_one,
};

fn open_list(req: LiveRequest<'_>) -> LiveFuture<'_> {
    Box::pin(list(req))
}

fn open_one(req: LiveRequest<'_>) -> LiveFuture<'_> {
    Box::pin(one(req))
}

async fn list(req: LiveRequest<'_>) -> Result<Opened, ApiError> {
    let q = list_query(req.uri)?;
    let state = req.state;
    let resource = Resource {
        kind: KIND,
        key: None,
        filter: q.status.map(|s| ClassFilter {
            class: s.as_str(),
            removed_event: REMOVED,
        }),
    };
    open_resource(&req, resource, |resume| async move {
        if let Some(after) = resume
            && let Some(changed) = changed_since(state, &q, after).await?
        {
            return Ok(changed);
        }
        let (snapshot, position) = list_json(state, &q).await?;
        let mut frames = Vec::with_capacity(snapshot.len() + 48);
        push_frame(&mut frames, position, "snapshot", &snapshot);
        Ok(Initial { frames, position })
    })
    .await
}

/// Every deployment changed after `after`, in its current state (a removal
/// when it does not have the filter's status); `None` when more than
/// [`RESUME_LIMIT`] did (the caller sends a snapshot).
async fn changed_since(state: &AppState, q: &ListQuery, after: u64) -> Result<Option<Initial>, ApiError> {
    let model = model_at::<Deployments>(state, q.min_position).await?;
    // What the runner publishes, read the same way (nothing when the model is not past `after`).
    let changed = Consumer::changed(&*model, after, RESUME_LIMIT + 1).await?;
    let checkpoint = changed.checkpoint;
    if changed.resources.len() > RESUME_LIMIT {
        return Ok(None);
    }
    let status = q.status.map(|s| s.as_str());
    let mut frames = Vec::with_capacity(changed.resources.iter().map(|r| r.json.len() + 48).sum());
    // Sorted by the position of their change, each with its own: a client cut
    // off part-way resumes with the rest.
    for (i, r) in changed.resources.iter().enumerate() {
        let id = resume_id(r.changed_at, changed.resources.get(i + 1).map(|next| next.changed_at));
        match status {
            Some(s) if r.class != Some(s) => push_removed(&mut frames, id, REMOVED, &r.key),
            _ => push_frame(&mut frames, id, r.event, r.json.as_bytes()),
        }
    }
    Ok(Some(Initial {
        frames,
        position: checkpoint.max(after),
    }))
}

async fn one(req: LiveRequest<'_>) -> Result<Opened, ApiError> {
    let min_position = crate::wire::min_position_query(req.uri)?;
    let raw = req.params.first().map(String::as_str).unwrap_or_default();
    let id = AggregateId::parse(raw).map_err(|e| ApiError::BadRequest(format!("id: {e}")))?;
    let state = req.state;
    open_single(&req, KIND, id.as_str().to_owned(), || {
        one_json(state, id.as_str(), min_position)
    })
    .await
}
