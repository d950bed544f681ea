//! The reads of the `feeds` read model, as the routes and the resource
//! streams serve them: each returns the body (with `"position"`: the model's
//! checkpoint), the position of the resource's last change, and the checkpoint.

use herald_core::names::AggregateId;

use super::projection::{self, Feeds};
use super::tags::parse_path_tag;
use crate::error::ApiError;
use crate::state::AppState;
use crate::state::model_at;

/// GET /api/posts/{id} body (with "position": checkpoint), position of the post's last change, checkpoint.
pub async fn post(state: &AppState, id: &str, min_position: u64) -> Result<(String, u64, u64), ApiError> {
    let id = AggregateId::parse(id).map_err(|e| ApiError::BadRequest(format!("id: {e}")))?;
    let model = model_at::<Feeds>(state, min_position).await?;
    let key = id.as_str().to_owned();
    let found = model
        .read(move |conn, checkpoint| {
            Ok(projection::post(conn, &key)?
                .map(|(view, changed)| (projection::with_position(&view, checkpoint), changed, checkpoint)))
        })
        .await?;
    found.ok_or_else(|| ApiError::NotFound(format!("there is no post {id}")))
}

/// GET /api/feeds body, position of the latest change to any feed (0: none), checkpoint.
pub async fn feeds(state: &AppState, min_position: u64) -> Result<(String, u64, u64), ApiError> {
    let model = model_at::<Feeds>(state, min_position).await?;
    let found = model
        .read(move |conn, checkpoint| {
            let (body, latest) = projection::feeds_json(conn, checkpoint)?;
            Ok((body, latest, checkpoint))
        })
        .await?;
    Ok(found)
}

/// GET /api/feeds/{tag} body with `limit` posts, position of the feed's last change, checkpoint.
/// 404 when no post has the tag (count 0 included), 400 for a tag that is not one.
pub async fn feed(
    state: &AppState,
    tag: &str,
    limit: usize,
    min_position: u64,
) -> Result<(String, u64, u64), ApiError> {
    let tag = parse_path_tag(tag).map_err(ApiError::BadRequest)?;
    let model = model_at::<Feeds>(state, min_position).await?;
    let key = tag.clone();
    let found = model
        .read(move |conn, checkpoint| {
            let Some(feed) = projection::feed(conn, &key)?.filter(|f| f.post_count > 0) else {
                return Ok(None);
            };
            let body = projection::feed_json(conn, &key, &feed, limit, checkpoint)?;
            Ok(Some((body, feed.updated_position, checkpoint)))
        })
        .await?;
    found.ok_or_else(|| ApiError::NotFound(format!("no post is tagged {tag}")))
}

/// [`feed`] for a resource stream: a feed no post has (yet, or any more) is
/// an empty state (`post_count: 0`, `posts: []`; `updated_at` null when no
/// post ever had the tag) rather than a 404, so a page opened on it follows
/// it until its first post arrives. 400 for a tag that is not one.
pub async fn feed_or_empty(
    state: &AppState,
    tag: &str,
    limit: usize,
    min_position: u64,
) -> Result<(String, u64, u64), ApiError> {
    let tag = parse_path_tag(tag).map_err(ApiError::BadRequest)?;
    let model = model_at::<Feeds>(state, min_position).await?;
    let key = tag.clone();
    let found = model
        .read(move |conn, checkpoint| match projection::feed(conn, &key)? {
            Some(feed) => {
                let body = projection::feed_json(conn, &key, &feed, limit, checkpoint)?;
                Ok((body, feed.updated_position, checkpoint))
            }
            None => {
                let tag = serde_json::to_string(&key).unwrap_or_else(|_| "\"\"".into());
                let body = format!(
                    "{{\"tag\":{tag},\"post_count\":0,\"updated_at\":null,\"posts\":[],\"position\":{checkpoint}}}"
                );
                Ok((body, 0, checkpoint))
            }
        })
        .await?;
    Ok(found)
}
