//! The posts resource streams (API.md §6), on [`open_resource`]:
//!
//! - `GET /api/posts/{id}/live`: `event: post` (the post view);
//! - `GET /api/feeds/live`: `event: feeds` (the `GET /api/feeds` body);
//! - `GET /api/feeds/{tag}/live`: `event: feed` (the `GET /api/feeds/{tag}`
//!   body with its newest [`FEED_POSTS`] posts; a feed whose last post left
//!   comes as `post_count: 0, posts: []` and the stream goes on; so does a
//!   feed no post has yet, on connect).
//!
//! Each sends its state on connect (a post stream answers 404 when there is
//! no such post, before the stream starts) and after each change; resumed with `Last-Event-ID: P`,
//! its state first only when it changed after P. `?min_position` waits for
//! the read model before the first state is read.

use herald_core::names::AggregateId;

use super::projection::{FEED, FEED_POSTS, FEEDS, POST};
use super::reads;
use crate::error::ApiError;
use crate::live::Opened;
use crate::resources::open_single;
use crate::state::{LiveFuture, LiveRequest, LiveRoute};

pub const POST_LIVE: LiveRoute = LiveRoute {
    pattern: "/api/posts/{id}/live",
    open: open_post,
};

pub const FEEDS_LIVE: LiveRoute = LiveRoute {
    pattern: "/api/feeds/live",
    open: open_feeds,
};

pub const FEED_LIVE: LiveRoute = LiveRoute {
    pattern: "/api/feeds/{tag}/live",
    open: open_feed,
};

fn open_post(req: LiveRequest<'_>) -> LiveFuture<'_> {
    Box::pin(post(req))
}

fn open_feeds(req: LiveRequest<'_>) -> LiveFuture<'_> {
    Box::pin(feeds(req))
}

fn open_feed(req: LiveRequest<'_>) -> LiveFuture<'_> {
    Box::pin(feed(req))
}

fn param(req: &LiveRequest<'_>) -> String {
    req.params.first().cloned().unwrap_or_default()
}

async fn post(req: LiveRequest<'_>) -> Result<Opened, ApiError> {
    let min_position = crate::wire::min_position_query(req.uri)?;
    let id = AggregateId::parse(&param(&req)).map_err(|e| ApiError::BadRequest(format!("id: {e}")))?;
    let state = req.state;
    open_single(&req, POST, id.as_str().to_owned(), || {
        reads::post(state, id.as_str(), min_position)
    })
    .await
}

async fn feeds(req: LiveRequest<'_>) -> Result<Opened, ApiError> {
    let min_position = crate::wire::min_position_query(req.uri)?;
    let state = req.state;
    open_single(&req, FEEDS, String::new(), || reads::feeds(state, min_position)).await
}

async fn feed(req: LiveRequest<'_>) -> Result<Opened, ApiError> {
    let min_position = feed_query(req.uri)?;
    // The key batches carry: the tag as commands normalise it (400 for one that is not a tag).
    let tag = super::tags::parse_path_tag(&param(&req)).map_err(ApiError::BadRequest)?;
    let state = req.state;
    open_single(&req, FEED, tag.clone(), || {
        reads::feed_or_empty(state, &tag, FEED_POSTS, min_position)
    })
    .await
}

/// `?min_position` only; `?limit` is the GET's, not the stream's.
fn feed_query(uri: &axum::http::Uri) -> Result<u64, ApiError> {
    let limited = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).any(|(k, _)| k == "limit");
    if limited {
        return Err(ApiError::BadRequest(format!(
            "limit: not accepted on the stream (its state carries the newest {FEED_POSTS} posts; known: min_position)"
        )));
    }
    crate::wire::min_position_query(uri)
}
