//! Server-Sent Events (API.md §6).
//!
//! Each event's frame was encoded once, when it was committed (or read); a live
//! subscriber writes the shared bytes — the whole batch's buffer when it wants
//! every event of it. Per subscriber there is only a cursor in the store's live
//! channel: a subscriber that falls more than the channel's capacity behind is
//! disconnected (it resumes with `Last-Event-ID`), never skipped.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use futures_util::task::AtomicWaker;
use herald_core::subscription::{LagPolicy, Subscription, SubscriptionError};

use crate::auth::{Principal, Viewer};
use crate::error::ApiError;
use crate::state::{AppState, EndReason, StreamGuard};
use crate::wire::{EventQuery, concat_frames, parse_number};

pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";
pub const LAGGED: &[u8] = b": too far behind; reconnect with Last-Event-ID\n\n";
pub const SHUTDOWN: &[u8] = b": herald is shutting down; reconnect with Last-Event-ID\n\n";
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

/// Response headers of every event stream. herald ends streams itself
/// (shutdown, revocation, expiry, falling behind), so the connection is not
/// left for reuse: `Connection: close`.
pub fn sse_response(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Ends a stream whose credential was revoked (or whose session ended) after
/// the request authenticated: checked from the store, not the token cache,
/// after [`crate::state::LiveRegistry::acquire`]. A revocation that comes after
/// this check finds the stream registered and ends it; one that came before
/// is seen here.
pub async fn check_still_valid(state: &AppState, principal: &Principal, headers: &HeaderMap) -> Result<(), ApiError> {
    match &principal.session {
        Some(session) => {
            let live = match crate::sessions::cookie_secret(state, headers) {
                Some(secret) => state
                    .accounts
                    .find_session(&crate::auth::hash_secret(secret), crate::sessions::now_millis())
                    .await?
                    .is_some_and(|s| s.id == session.id),
                None => false,
            };
            if !live {
                return Err(ApiError::Unauthorized("the session has ended; log in again"));
            }
        }
        None => {
            let token = crate::auth::bearer(headers).ok().flatten();
            let live = match token {
                Some(token) => state
                    .credentials
                    .find_token(&crate::auth::hash_secret(token))
                    .await?
                    .is_some_and(|t| crate::auth::token_credential(&t.id) == principal.ends_with),
                None => false,
            };
            if !live {
                return Err(ApiError::Unauthorized("the token is unknown or revoked"));
            }
        }
    }
    Ok(())
}

pub use crate::sse::{LiveStream, Opened};

/// `GET /api/events/live` when the connection is served by hyper (see
/// [`crate::serve`] for the connections herald writes itself).
pub async fn live_events(
    State(state): State<AppState>,
    Viewer(principal): Viewer,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let opened = open(&state, &principal, &headers, &uri).await?;
    Ok(opened_response(opened))
}

/// The response of an opened stream served by hyper (`Last-Event-ID` when the
/// stream says where it starts).
pub fn opened_response(opened: Opened) -> Response {
    let mut response = sse_response(Body::from_stream(opened.body));
    if let Some(head) = opened.head {
        response.headers_mut().insert("last-event-id", HeaderValue::from(head));
    }
    response
}

/// The comment a stream ends with when herald ends it.
pub fn end_comment(reason: EndReason) -> &'static [u8] {
    match reason {
        EndReason::Shutdown => SHUTDOWN,
        EndReason::Revoked | EndReason::Expired => REVOKED,
    }
}

/// Checks a live-stream request of an authenticated caller and opens it.
pub async fn open(state: &AppState, principal: &Principal, headers: &HeaderMap, uri: &Uri) -> Result<Opened, ApiError> {
    let query = EventQuery::parse(uri.query(), false)?;
    // The header wins over `?after=` (an EventSource's reconnect sends it).
    let header = last_event_id(headers)?;
    let resume = header.or(query.after);
    let guard = state.live.acquire(
        &principal.credential_id,
        &principal.ends_with,
        state.config.stream_limit,
        principal.stream_deadline(),
    )?;
    check_still_valid(state, principal, headers).await?;
    let head = state.store.head().await?.position;
    let resume = match resume {
        Some(after) if after > head => {
            // The store was replaced or restored from an older copy. A 400 would
            // strand an EventSource (it never retries one): start at the head
            // and say so, as on a fresh connect.
            tracing::warn!(
                requested = after,
                head,
                "a live stream asked to resume beyond the end of the log; starting at the head \
                 (was the store replaced or restored?)"
            );
            None
        }
        resume => resume,
    };
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
    Ok(Opened {
        head: resume.is_none().then_some(head),
        body: Box::pin(body),
    })
}

struct LiveBody {
    preamble: Option<Bytes>,
    subscription: Subscription,
    /// Resolves when the stream must end (shutdown, revocation, expiry); made
    /// once per stream, and polled only when it has woken the stream.
    ended: Ending,
    /// Ticks at half the keep-alive interval; a tick with nothing written since
    /// the previous one sends a comment, so an idle stream hears from herald at
    /// least every `keepalive` without a timer per chunk.
    tick: tokio::time::Interval,
    wrote: bool,
    done: bool,
    guard: StreamGuard,
    lag: metrics::Histogram,
    deliveries: metrics::Counter,
    /// Deliveries not yet added to `deliveries` (added every
    /// [`METRICS_EVERY`] chunks and when the stream ends).
    uncounted: u64,
    chunks: u64,
}

/// A stream's metrics are updated once per this many chunks: the lag
/// histogram gets every such chunk's lag (a uniform sample), the deliveries
/// counter the sum. Per chunk they cost as much as the rest of the delivery.
const METRICS_EVERY: u64 = 8;

impl Drop for LiveBody {
    fn drop(&mut self) {
        self.deliveries.increment(self.uncounted);
    }
}

/// Polls `inner` only on the first poll and after `inner` itself woke the task.
///
/// A live stream's task is woken for every batch; its end future (a
/// cancellation token and a timer, behind locks) would otherwise be polled
/// again on every wake-up for nothing. `inner` gets a waker of its own that
/// notes it fired and wakes the task.
pub(crate) struct WhenWoken<F> {
    inner: F,
    signal: Arc<Signal>,
    waker: Waker,
    polled: bool,
}

#[derive(Default)]
struct Signal {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> WhenWoken<F> {
    pub(crate) fn new(inner: F) -> Self {
        let signal = Arc::new(Signal::default());
        WhenWoken {
            inner,
            waker: Waker::from(signal.clone()),
            signal,
            polled: false,
        }
    }
}

impl<F: Future + Unpin> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.signal.task.register(cx.waker());
        if this.polled && !this.signal.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.polled = true;
        std::pin::Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

/// Ticks at half the keep-alive interval, the first after half of it; a
/// stream sends a comment at a tick when it wrote nothing since the previous one.
pub(crate) fn keepalive_ticks(keepalive: Duration) -> tokio::time::Interval {
    let half = (keepalive / 2).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// The end future of a stream, made once (see [`WhenWoken`]).
pub(crate) type Ending = WhenWoken<std::pin::Pin<Box<dyn std::future::Future<Output = EndReason> + Send>>>;

pub(crate) fn ending(guard: &StreamGuard) -> Ending {
    WhenWoken::new(Box::pin(guard.ending()))
}

fn event_stream(
    preamble: Bytes,
    subscription: Subscription,
    keepalive: Duration,
    guard: StreamGuard,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let body = LiveBody {
        preamble: Some(preamble),
        subscription,
        ended: ending(&guard),
        tick: keepalive_ticks(keepalive),
        wrote: true,
        done: false,
        guard,
        lag: metrics::histogram!("herald_subscriber_lag_events"),
        deliveries: metrics::counter!("herald_live_deliveries_total"),
        uncounted: 0,
        chunks: 0,
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
                reason = &mut b.ended => {
                    b.done = true;
                    Bytes::from_static(end_comment(reason))
                }
                next = b.subscription.next_chunk() => match next {
                    Ok(Some(chunk)) => {
                        b.chunks += 1;
                        b.uncounted += chunk.events.len() as u64;
                        if b.chunks % METRICS_EVERY == 0 {
                            b.lag.record(b.guard.head().saturating_sub(chunk.examined) as f64);
                            b.deliveries.increment(std::mem::take(&mut b.uncounted));
                        }
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn when_woken_polls_its_future_again_only_after_that_future_woke_the_task() {
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<EndReason>();
        let counted = {
            let polls = polls.clone();
            std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                Pin::new(&mut rx).poll(cx).map(|r| r.expect("test setup"))
            })
        };
        let mut end = WhenWoken::new(Box::pin(counted));
        let task = Arc::new(CountingWaker::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..5 {
            assert!(Pin::new(&mut end).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled again without having woken");
        tx.send(EndReason::Revoked).expect("test setup");
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was not woken");
        assert_eq!(Pin::new(&mut end).poll(&mut cx), Poll::Ready(EndReason::Revoked));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
