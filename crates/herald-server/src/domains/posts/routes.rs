//! `GET /api/posts/{id}`, `GET /api/feeds`, `GET /api/feeds/{tag}` (issue 10),
//! read from the `feeds` read model.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;

use super::projection::FEED_POSTS;
use super::reads;
use crate::auth::Viewer;
use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::{PathParam, json_response, parse_number};

/// The most posts `GET /api/feeds/{tag}` returns.
pub const MAX_LIMIT: usize = 1000;

pub fn routes(router: axum::Router<AppState>) -> axum::Router<AppState> {
    router
        .route("/api/posts/{id}", get(one_post))
        .route("/api/feeds", get(list_feeds))
        .route("/api/feeds/{tag}", get(one_feed))
}

/// `?limit=&min_position=` of `GET /api/feeds/{tag}`: (limit, min_position).
pub fn feed_query(uri: &Uri) -> Result<(usize, u64), ApiError> {
    let (mut limit, mut min_position) = (FEED_POSTS, 0);
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*key {
            "limit" => {
                let n: usize = parse_number("limit", &value)?;
                if n == 0 {
                    return Err(ApiError::BadRequest("limit: must be at least 1".into()));
                }
                limit = n.min(MAX_LIMIT);
            }
            "min_position" => min_position = parse_number("min_position", &value)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{other}: unknown query parameter (known: limit, min_position)"
                )));
            }
        }
    }
    Ok((limit, min_position))
}

async fn one_post(
    State(state): State<AppState>,
    Viewer(_): Viewer,
    PathParam(id): PathParam<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let min_position = crate::wire::min_position_query(&uri)?;
    let (body, _, _) = reads::post(&state, &id, min_position).await?;
    Ok(json_response(StatusCode::OK, body.into_bytes()))
}

async fn list_feeds(State(state): State<AppState>, Viewer(_): Viewer, uri: Uri) -> Result<Response, ApiError> {
    let min_position = crate::wire::min_position_query(&uri)?;
    let (body, _, _) = reads::feeds(&state, min_position).await?;
    Ok(json_response(StatusCode::OK, body.into_bytes()))
}

async fn one_feed(
    State(state): State<AppState>,
    Viewer(_): Viewer,
    PathParam(tag): PathParam<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (limit, min_position) = feed_query(&uri)?;
    let (body, _, _) = reads::feed(&state, &tag, limit, min_position).await?;
    Ok(json_response(StatusCode::OK, body.into_bytes()))
}
