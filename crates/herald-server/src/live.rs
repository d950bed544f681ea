//! Server-Sent Events (API.md §6).
//!
//! Each event's frame was encoded once, when it was committed (or read); a live
//! subscriber writes the shared bytes — the whole batch's buffer when it wants
//! every event of it. Per subscriber there is only a cursor in the store's live
//! channel: a subscriber that falls more than the channel's capacity behind is
//! disconnected (it resumes with `Last-Event-ID`), never skipped.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use herald_core::subscription::{LagPolicy, Subscription, SubscriptionError};

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::state::{AppState, EndReason, StreamGuard};
use crate::wire::{EventQuery, concat_frames, parse_number};

pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";
const LAGGED: &[u8] = b": too far behind; reconnect with Last-Event-ID\n\n";
const SHUTDOWN: &[u8] = b": herald is shutting down; reconnect with Last-Event-ID\n\n";
pub const REVOKED: &[u8] = b": this stream's credential was revoked, logged out or expired\n\n";

/// `Last-Event-ID` as a position; 400 when it is not one.
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Last-Event-ID: must be a position".into()))?
                .trim();
            if v.is_empty() {
                return Ok(None);
            }
            parse_number("Last-Event-ID", v).map(Some)
        }
    }
}

/// Response headers of every event stream.
pub fn sse_response(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

pub async fn live_events(
    State(state): State<AppState>,
    Viewer(principal): Viewer,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query = EventQuery::parse(uri.query(), false)?;
    // The header wins over `?after=` (an EventSource's reconnect sends it).
    let resume = last_event_id(&headers)?.or(query.after);
    let guard = state.live.acquire(
        &principal.credential_id,
        &principal.ends_with,
        state.config.stream_limit,
        principal.stream_deadline(),
    )?;
    let head = state.store.head().await?.position;
    if let Some(after) = resume
        && after > head
    {
        // Waiting would hide a real problem (the store was replaced or restored
        // from an older copy): say so instead of silently skipping to later events.
        let field = if last_event_id(&headers)?.is_some() {
            "Last-Event-ID"
        } else {
            "after"
        };
        return Err(ApiError::BadRequest(format!(
            "{field}: position {after} is beyond the end of the log (head {head}); was the store replaced? \
             Reconnect without it to start at the head"
        )));
    }
    let mut preamble = format!("retry: {}\n\n", state.config.retry.as_millis());
    let start = match resume {
        Some(after) => after,
        None => {
            preamble.push_str(&format!("id: {head}\n\n"));
            head
        }
    };
    let subscription = Subscription::new(state.store.clone(), start, query.filter, LagPolicy::Disconnect);
    let body = event_stream(Bytes::from(preamble), subscription, state.config.keepalive, guard);
    let mut response = sse_response(Body::from_stream(body));
    if resume.is_none() {
        response.headers_mut().insert("last-event-id", HeaderValue::from(head));
    }
    Ok(response)
}

struct LiveBody {
    preamble: Option<Bytes>,
    subscription: Subscription,
    /// Resolves when the stream must end (shutdown, revocation, expiry); made
    /// once per stream, not once per chunk.
    ended: std::pin::Pin<Box<dyn std::future::Future<Output = EndReason> + Send>>,
    /// Ticks at half the keep-alive interval; a tick with nothing written since
    /// the previous one sends a comment, so an idle stream hears from herald at
    /// least every `keepalive` without a timer per chunk.
    tick: tokio::time::Interval,
    wrote: bool,
    done: bool,
    guard: StreamGuard,
    lag: metrics::Histogram,
    deliveries: metrics::Counter,
}

fn event_stream(
    preamble: Bytes,
    subscription: Subscription,
    keepalive: Duration,
    guard: StreamGuard,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let half = (keepalive / 2).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = LiveBody {
        preamble: Some(preamble),
        subscription,
        ended: Box::pin(guard.ending()),
        tick,
        wrote: true,
        done: false,
        guard,
        lag: metrics::histogram!("herald_subscriber_lag_events"),
        deliveries: metrics::counter!("herald_live_deliveries_total"),
    };
    futures_util::stream::unfold(body, |mut b| async move {
        if b.done {
            return None;
        }
        if let Some(p) = b.preamble.take() {
            return Some((Ok(p), b));
        }
        loop {
            let bytes = tokio::select! {
                biased;
                reason = b.ended.as_mut() => {
                    b.done = true;
                    Bytes::from_static(match reason {
                        EndReason::Shutdown => SHUTDOWN,
                        EndReason::Revoked | EndReason::Expired => REVOKED,
                    })
                }
                next = b.subscription.next_chunk() => match next {
                    Ok(Some(chunk)) => {
                        b.lag.record(b.guard.head().saturating_sub(chunk.examined) as f64);
                        b.deliveries.increment(chunk.events.len() as u64);
                        chunk.frames.unwrap_or_else(|| concat_frames(&chunk.events))
                    }
                    Ok(None) => return None,
                    Err(SubscriptionError::Lagged) => {
                        metrics::counter!("herald_live_lagged_disconnects_total").increment(1);
                        b.done = true;
                        Bytes::from_static(LAGGED)
                    }
                    Err(SubscriptionError::Store(e)) => {
                        tracing::warn!(error = %e, "live stream ended by a store error");
                        return None;
                    }
                },
                _ = b.tick.tick() => {
                    if std::mem::take(&mut b.wrote) {
                        continue;
                    }
                    Bytes::from_static(KEEPALIVE)
                }
            };
            b.wrote = true;
            return Some((Ok(bytes), b));
        }
    })
}
