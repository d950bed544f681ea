//! The deployments read model: `GET /api/deployments[/{id}]` and the
//! `GET /api/deployments/live` resource stream (API.md §5, §6).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use herald_core::deployment::DeploymentStatus;
use herald_core::names::AggregateId;
use tokio::sync::broadcast::error::RecvError;

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::live::{KEEPALIVE, check_still_valid, last_event_id, sse_response};
use crate::state::AppState;
use crate::wire::{PathParam, json_response, parse_number, write_field};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

struct ListQuery {
    status: Option<DeploymentStatus>,
    limit: usize,
}

fn list_query(uri: &Uri) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        status: None,
        limit: DEFAULT_LIMIT,
    };
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*key {
            "status" => {
                q.status = Some(DeploymentStatus::parse(&value).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "status: {value:?} is not one of in_progress, succeeded, failed, cancelled"
                    ))
                })?)
            }
            "limit" => {
                let n: usize = parse_number("limit", &value)?;
                if n == 0 {
                    return Err(ApiError::BadRequest("limit: must be at least 1".into()));
                }
                q.limit = n.min(MAX_LIMIT);
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{other}: unknown query parameter (known: status, limit)"
                )));
            }
        }
    }
    Ok(q)
}

async fn list_json(state: &AppState, q: &ListQuery) -> Result<(Vec<u8>, u64), ApiError> {
    let (deployments, position) = state.deployments.list(q.status, q.limit).await?;
    let mut out = Vec::with_capacity(256 * deployments.len() + 64);
    out.push(b'{');
    write_field(&mut out, "deployments", &deployments);
    out.push(b',');
    write_field(&mut out, "position", &position);
    out.push(b'}');
    Ok((out, position))
}

pub async fn list(State(state): State<AppState>, Viewer(_): Viewer, uri: Uri) -> Result<Response, ApiError> {
    let q = list_query(&uri)?;
    let (out, _) = list_json(&state, &q).await?;
    Ok(json_response(StatusCode::OK, out))
}

pub async fn get(
    State(state): State<AppState>,
    Viewer(_): Viewer,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let id = AggregateId::parse(&id).map_err(|e| ApiError::BadRequest(format!("id: {e}")))?;
    let view = state
        .deployments
        .get(id.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("there is no deployment {id}")))?;
    let body = serde_json::to_vec(&view).map_err(ApiError::internal)?;
    Ok(json_response(StatusCode::OK, body))
}

/// The current list first (`event: snapshot`), then `event: deployment` per change.
pub async fn live(
    State(state): State<AppState>,
    Viewer(principal): Viewer,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q = list_query(&uri)?;
    let resume = last_event_id(&headers)?;
    let guard = state.live.acquire(
        &principal.credential_id,
        &principal.ends_with,
        state.config.stream_limit,
        principal.stream_deadline(),
    )?;
    // Revoked between authentication and `acquire`: end here (see `check_still_valid`).
    check_still_valid(&state, &principal, &headers).await?;
    // Subscribe before reading the snapshot so no change falls between.
    let changes = state.live.deployment_changes.subscribe();
    let (snapshot, position) = list_json(&state, &q).await?;
    // A position beyond the log (a store restored from an older copy): the
    // snapshot below is the state at `position`; say where the stream starts.
    let beyond = match resume {
        Some(after) => {
            let head = state.store.head().await?.position;
            if after > head {
                tracing::warn!(
                    requested = after,
                    head,
                    position,
                    "a deployments stream asked to resume beyond the end of the log; starting at the current state \
                     (was the store replaced or restored?)"
                );
            }
            after > head
        }
        None => false,
    };
    let mut first = Vec::with_capacity(snapshot.len() + 64);
    first.extend_from_slice(
        format!(
            "retry: {}\n\nid: {position}\nevent: snapshot\ndata: ",
            state.config.retry.as_millis()
        )
        .as_bytes(),
    );
    first.extend_from_slice(&snapshot);
    first.extend_from_slice(b"\n\n");
    let keepalive = state.config.keepalive;
    let status = q.status;
    let stream = futures_util::stream::unfold(
        (Some(Bytes::from(first)), changes, false, guard),
        move |(first, mut rx, done, guard)| {
            async move {
                if done {
                    return None;
                }
                if let Some(first) = first {
                    return Some((Ok::<_, std::convert::Infallible>(first), (None, rx, false, guard)));
                }
                loop {
                    let next = tokio::select! {
                        biased;
                        _ = guard.ended() => return None,
                        next = tokio::time::timeout(keepalive, rx.recv()) => next,
                    };
                    match next {
                        Err(_idle) => return Some((Ok(Bytes::from_static(KEEPALIVE)), (None, rx, false, guard))),
                        Ok(Ok(change)) => {
                            // Only deployments changed after the snapshot.
                            let Some(frames) = change.after(position) else {
                                continue;
                            };
                            // A status filter sends only deployments that now have it.
                            let frames = match status {
                                None => frames,
                                Some(s) => filter_frames(&frames, s),
                            };
                            if frames.is_empty() {
                                continue;
                            }
                            return Some((Ok(frames), (None, rx, false, guard)));
                        }
                        Ok(Err(RecvError::Lagged(_))) => {
                            return Some((
                                Ok(Bytes::from_static(b": too far behind; reconnect\n\n")),
                                (None, rx, true, guard),
                            ));
                        }
                        Ok(Err(RecvError::Closed)) => return None,
                    }
                }
            }
        },
    );
    let mut response = sse_response(Body::from_stream(stream));
    if beyond {
        response
            .headers_mut()
            .insert("last-event-id", HeaderValue::from(position));
    }
    Ok(response)
}

/// Keeps the frames whose deployment has `status` (frames are `…data: {json}\n\n`).
fn filter_frames(frames: &Bytes, status: DeploymentStatus) -> Bytes {
    let needle = format!("\"status\":\"{}\"", status.as_str());
    let mut out = Vec::new();
    for frame in frames.split(|b| *b == b'\n').collect::<Vec<_>>().chunks(4) {
        // id, event, data, "" (blank line)
        if let Some(data) = frame.get(2)
            && data.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            for line in frame.iter().take(3) {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}
