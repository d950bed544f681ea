//! `GET /api/events` and `GET /api/streams/{stream}` (API.md §5).

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use herald_core::names::StreamName;

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::{EventQuery, PathParam, json_response, parse_number, write_events, write_field};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub async fn list_events(State(state): State<AppState>, Viewer(_): Viewer, uri: Uri) -> Result<Response, ApiError> {
    let q = EventQuery::parse(uri.query(), true)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    let page = state.store.read_all(q.after.unwrap_or(0), &q.filter, limit).await?;
    let mut out = Vec::with_capacity(64 + page.events.iter().map(|e| e.json().len() + 1).sum::<usize>());
    out.push(b'{');
    write_events(&mut out, "events", &page.events);
    out.push(b',');
    write_field(&mut out, "next_after", &page.next_after);
    out.push(b',');
    write_field(&mut out, "head", &page.head);
    out.push(b'}');
    Ok(json_response(StatusCode::OK, out))
}

pub async fn read_stream(
    State(state): State<AppState>,
    Viewer(_): Viewer,
    PathParam(stream): PathParam<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let stream = StreamName::parse(&stream)
        .map_err(|e| ApiError::BadRequest(format!("stream: {stream:?} is not a stream name: {e}")))?;
    let mut from_version = 1u64;
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*key {
            "from_version" => from_version = parse_number("from_version", &value)?,
            "limit" => {
                let n: usize = parse_number("limit", &value)?;
                if n == 0 {
                    return Err(ApiError::BadRequest("limit: must be at least 1".into()));
                }
                limit = n.min(MAX_LIMIT);
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{other}: unknown query parameter (known: from_version, limit)"
                )));
            }
        }
    }
    let slice = state
        .store
        .read_stream(stream.as_str(), from_version.max(1), limit)
        .await?;
    if slice.version == 0 {
        return Err(ApiError::NotFound(format!("there is no stream {stream}")));
    }
    let mut out = Vec::with_capacity(64 + slice.events.iter().map(|e| e.json().len() + 1).sum::<usize>());
    out.push(b'{');
    write_field(&mut out, "stream", &stream.as_str());
    out.push(b',');
    write_field(&mut out, "version", &slice.version);
    out.push(b',');
    write_events(&mut out, "events", &slice.events);
    out.push(b'}');
    Ok(json_response(StatusCode::OK, out))
}
