//! Resource streams (API.md §6): a resource's current state first, then its
//! state again after each change, resumable with `Last-Event-ID`.
//!
//! The consumer runner (`consumers.rs`) publishes, per projection, the
//! resources that changed between two of its checkpoints as one
//! [`ResourceBatch`]: every frame encoded once, shared by every subscriber.
//!
//! Every resource stream is opened by [`open_resource`], whatever its domain:
//! the stream limit, the credential check, `Last-Event-ID`, the subscription
//! (taken before the first state is read, so no change falls between), the
//! `retry:` preamble, the first state (the domain's), then from each batch the
//! entries the stream follows that changed after what the client has, as
//! slices of the batch's shared buffer. Per subscriber and batch that is a
//! binary search (by kind and change, or by kind and key for one resource)
//! and a reference count: no JSON (a stream with a class filter that sees a
//! resource leave the class writes its removal from slices too, see
//! [`Removal::push`]; those pieces queue in the stream's reused `pending`).
//!
//! Routes: a domain registers a [`LiveRoute`] (`Registry::live`); it is
//! served on the router ([`serve_route`], outside the request timeout and the
//! trace layer) and on the fast live path of `serve.rs` ([`match_route`]), by
//! the same `open`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::auth::{Principal, Viewer};
use crate::error::ApiError;
use crate::live::{self, Ending, KEEPALIVE, LAGGED, Opened};
use crate::state::{AppState, StreamGuard};
use crate::state::{LiveRequest, LiveRoute};

pub use crate::changes::{ResourceBatch, ResourceEntry};

// ---------------------------------------------------------------------------
// Opening a stream
// ---------------------------------------------------------------------------

/// What a resource stream follows.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The kind of resource ([`ResourceEntry::kind`]).
    pub kind: &'static str,
    /// One resource of that kind (its key), or `None`: all of them.
    pub key: Option<String>,
    /// Only resources of a class; a changed one of another class comes as a removal.
    pub filter: Option<ClassFilter>,
}

/// A stream's class filter (`/api/deployments/live?status=S`).
#[derive(Debug, Clone, Copy)]
pub struct ClassFilter {
    /// The class the stream follows ([`ResourceEntry::class`]).
    pub class: &'static str,
    /// The SSE event a changed resource of another class comes as, with data
    /// `{"id": key}` (`deployment_removed`): the client drops it if it has it.
    pub removed_event: &'static str,
}

/// What a stream sends before it goes live, from its domain.
#[derive(Debug, Default)]
pub struct Initial {
    /// Whole SSE messages (possibly none), each with its `id:`.
    pub frames: Vec<u8>,
    /// What the client is up to date with once it has them: every change at or
    /// before it. Changes after it follow, each once.
    pub position: u64,
}

impl Initial {
    /// A single resource's first message: its state when the client has
    /// nothing (`resume` is `None`) or when it changed after `resume`; nothing
    /// otherwise (its next change comes when it happens).
    pub fn single(resume: Option<u64>, event: &str, json: &[u8], changed_at: u64, checkpoint: u64) -> Initial {
        match resume {
            Some(after) if changed_at <= after => Initial {
                frames: Vec::new(),
                position: after.max(checkpoint),
            },
            _ => {
                let mut frames = Vec::with_capacity(json.len() + event.len() + 32);
                push_frame(&mut frames, checkpoint, event, json);
                Initial {
                    frames,
                    position: checkpoint,
                }
            }
        }
    }
}

/// [`open_resource`] for one resource (`kind`, `key`) sent as `event: {kind}`:
/// `read` gives its state as `(json, changed_at, checkpoint)`, and
/// [`Initial::single`] applies the resume rule.
pub async fn open_single<F, Fut>(
    req: &LiveRequest<'_>,
    kind: &'static str,
    key: String,
    read: F,
) -> Result<Opened, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(String, u64, u64), ApiError>>,
{
    let resource = Resource {
        kind,
        key: Some(key),
        filter: None,
    };
    open_resource(req, resource, |resume| async move {
        let (json, changed_at, checkpoint) = read().await?;
        Ok(Initial::single(resume, kind, json.as_bytes(), changed_at, checkpoint))
    })
    .await
}

/// Appends `id: {id}\nevent: {event}\ndata: {data}\n\n` (`data` is one line of JSON).
pub fn push_frame(out: &mut Vec<u8>, id: u64, event: &str, data: &[u8]) {
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b"\nevent: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// Appends the removal of `key`: `event: {event}`, data `{"id": key}`.
pub fn push_removed(out: &mut Vec<u8>, id: u64, event: &str, key: &str) {
    let mut data = b"{\"id\":".to_vec();
    // A string always serializes.
    let _ = serde_json::to_writer(&mut data, key);
    data.push(b'}');
    push_frame(out, id, event, &data);
}

/// Opens a resource stream for `req`: the one implementation behind every
/// resource stream.
///
/// 429 beyond the caller's stream limit, 401 when its credential ended since
/// it authenticated, 400 for a `Last-Event-ID` that is not a position; then
/// the `retry:` hint, what `initial` returns (it gets the position the client
/// resumes from: `None` without `Last-Event-ID`, or when that is beyond the
/// log's end), and live: each change of `resource` after
/// [`Initial::position`], once, as the state it is in, with a keep-alive
/// comment when idle, and a comment line before herald ends the stream
/// (shutdown, revocation, logout, expiry, falling behind). An error from
/// `initial` (a 404) is the answer, before the stream starts.
pub async fn open_resource<F, Fut>(req: &LiveRequest<'_>, resource: Resource, initial: F) -> Result<Opened, ApiError>
where
    F: FnOnce(Option<u64>) -> Fut,
    Fut: Future<Output = Result<Initial, ApiError>>,
{
    let state = req.state;
    let principal = req.principal;
    let resume = live::last_event_id(req.headers)?;
    let guard = state.live.acquire(
        &principal.credential_id,
        &principal.ends_with,
        state.config.stream_limit,
        principal.stream_deadline(),
    )?;
    // Revoked between authentication and `acquire`: end here (see `check_still_valid`).
    live::check_still_valid(state, principal, req.headers).await?;
    let resume = match resume {
        Some(after) => {
            let head = state.store.head().await?.position;
            if after > head {
                // The store was replaced or restored from an older copy; a 400
                // would strand an EventSource (it never retries one).
                tracing::warn!(
                    requested = after,
                    head,
                    kind = resource.kind,
                    "a resource stream asked to resume beyond the end of the log; sending the current state \
                     (was the store replaced or restored?)"
                );
                None
            } else {
                Some(after)
            }
        }
        None => None,
    };
    // Subscribe before reading the state, so no change falls between.
    let changes = state.live.resources.subscribe(resource.kind);
    let first = initial(resume).await?;
    let follow = Follow {
        kind: resource.kind,
        key: resource.key.map(String::into_boxed_str),
        filter: resource.filter.map(|f| Removal {
            class: f.class,
            head: Bytes::from(format!("event: {}\ndata: {{\"id\":", f.removed_event)),
            event: f.removed_event,
        }),
        position: first.position,
    };
    let body = ResourceBody {
        preamble: Some(Bytes::from(format!("retry: {}\n\n", state.config.retry.as_millis()))),
        first: (!first.frames.is_empty()).then(|| Bytes::from(first.frames)),
        changes,
        follow,
        pending: VecDeque::new(),
        ended: live::ending(&guard),
        tick: live::keepalive_ticks(state.config.keepalive),
        wrote: true,
        done: false,
        _guard: guard,
    };
    Ok(Opened {
        // Where the stream starts, when the client gave no position it could use.
        head: resume.is_none().then_some(first.position),
        body: Box::pin(resource_stream(body)),
    })
}

// ---------------------------------------------------------------------------
// The live part
// ---------------------------------------------------------------------------

struct ResourceBody {
    preamble: Option<Bytes>,
    first: Option<Bytes>,
    changes: broadcast::Receiver<Arc<ResourceBatch>>,
    follow: Follow,
    /// Pieces of a batch not sent yet (only a filtered stream has more than
    /// one per batch); kept, with its capacity, for the stream's life.
    pending: VecDeque<Bytes>,
    ended: Ending,
    /// See `live::keepalive_ticks`.
    tick: tokio::time::Interval,
    wrote: bool,
    done: bool,
    _guard: StreamGuard,
}

/// What a stream follows, and how far its client is.
struct Follow {
    kind: &'static str,
    key: Option<Box<str>>,
    filter: Option<Removal>,
    /// Every change at or before it has been sent (or was in the first state).
    position: u64,
}

struct Removal {
    class: &'static str,
    event: &'static str,
    /// `event: {event}\ndata: {"id":`, made once per stream.
    head: Bytes,
}

/// The first piece a batch gives a stream; the others are queued.
struct Pieces<'a> {
    first: Option<Bytes>,
    rest: &'a mut VecDeque<Bytes>,
}

impl Pieces<'_> {
    fn push(&mut self, piece: Bytes) {
        if self.first.is_none() {
            self.first = Some(piece);
        } else {
            self.rest.push_back(piece);
        }
    }
}

impl Follow {
    /// What of `batch` the client gets: the frames of the followed resources
    /// changed after [`Self::position`] (which then moves to the batch's).
    fn take(&mut self, batch: &ResourceBatch, rest: &mut VecDeque<Bytes>) -> Option<Bytes> {
        let after = self.position;
        self.position = self.position.max(batch.position);
        let mut out = Pieces { first: None, rest };
        if let Some(key) = &self.key {
            // One resource: its entry by binary search, if it changed after `after`.
            let entry = batch.find(self.kind, key).filter(|e| e.changed_at > after)?;
            // Alone in this stream, a resource is as of its own change, also
            // when one event changed several (`ResourceEntry::alone_id`):
            // resuming from it, nothing is sent again.
            match (&self.filter, &entry.alone_id) {
                (Some(removal), alone_id) if entry.class != Some(removal.class) => {
                    removal.push(batch, entry, alone_id.as_ref(), &mut out)
                }
                (_, Some(alone_id)) => {
                    out.push(alone_id.clone());
                    out.push(batch.frame_after_id(entry));
                }
                (_, None) => out.push(batch.frame(entry)),
            }
            return out.first;
        }
        let entries = &batch.entries;
        // Sorted by kind, then by the position of the change.
        let lo = entries.partition_point(|e| e.kind < self.kind);
        let hi = lo + entries[lo..].partition_point(|e| e.kind == self.kind);
        let of_kind = &entries[lo..hi];
        let new = &of_kind[of_kind.partition_point(|e| e.changed_at <= after)..];
        let (first, last) = (new.first()?, new.last()?);
        match &self.filter {
            // Back to back in the batch's buffer: one slice.
            None => out.push(batch.frames.slice(first.range.start..last.range.end)),
            Some(removal) => {
                let mut run: Option<Range<usize>> = None;
                for entry in new {
                    if entry.class == Some(removal.class) {
                        run = Some(match run.take() {
                            Some(r) if r.end == entry.range.start => r.start..entry.range.end,
                            Some(r) => {
                                out.push(batch.frames.slice(r));
                                entry.range.clone()
                            }
                            None => entry.range.clone(),
                        });
                    } else {
                        if let Some(r) = run.take() {
                            out.push(batch.frames.slice(r));
                        }
                        removal.push(batch, entry, None, &mut out);
                    }
                }
                if let Some(r) = run {
                    out.push(batch.frames.slice(r));
                }
            }
        }
        out.first
    }
}

impl Removal {
    /// The removal of `entry`: `id: {its id}\nevent: {event}\ndata: {"id":KEY}\n\n`.
    ///
    /// Made of slices: the `id:` line of the entry's own frame, the stream's
    /// `event:`/`data:` head, the key as the entry's JSON starts with it
    /// (`{"id":"KEY"`, as views are written), and a static end; only a frame
    /// of another shape is written anew. `alone_id`: the `id:` line to send
    /// instead of the frame's (a stream of this resource alone).
    fn push(&self, batch: &ResourceBatch, entry: &ResourceEntry, alone_id: Option<&Bytes>, out: &mut Pieces<'_>) {
        let start = entry.range.start;
        match removal_slices(&batch.frames[entry.range.clone()], &entry.key) {
            Some((id_line, key)) => {
                out.push(
                    alone_id
                        .cloned()
                        .unwrap_or_else(|| batch.frames.slice(start..start + id_line)),
                );
                out.push(self.head.clone());
                out.push(batch.frames.slice(start + key.start..start + key.end));
                out.push(Bytes::from_static(b"}\n\n"));
            }
            None => {
                let mut frame = Vec::with_capacity(entry.key.len() + 64);
                let id = if alone_id.is_some() { entry.changed_at } else { entry.id };
                push_removed(&mut frame, id, self.event, &entry.key);
                out.push(Bytes::from(frame));
            }
        }
    }
}

/// In a frame `id: …\nevent: …\ndata: {"id":"KEY"…`: the length of its `id:`
/// line (with its line break) and where the JSON string `"KEY"` is, when the
/// data starts with `key` as its `id` and `key` needs no escaping.
fn removal_slices(frame: &[u8], key: &str) -> Option<(usize, Range<usize>)> {
    if key.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        return None;
    }
    let id_line = frame.iter().position(|b| *b == b'\n')? + 1;
    if !frame.starts_with(b"id: ") {
        return None;
    }
    let event_line = id_line + frame[id_line..].iter().position(|b| *b == b'\n')? + 1;
    let data = event_line + b"data: ".len();
    let json = frame.get(data..)?;
    let rest = json.strip_prefix(b"{\"id\":\"")?;
    if !frame[event_line..].starts_with(b"data: ")
        || !rest.starts_with(key.as_bytes())
        || rest.get(key.len()) != Some(&b'"')
    {
        return None;
    }
    let string = data + "{\"id\":".len();
    Some((id_line, string..string + key.len() + 2))
}

fn resource_stream(body: ResourceBody) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    futures_util::stream::unfold(body, |mut b| async move {
        if b.done {
            return None;
        }
        if let Some(p) = b.preamble.take() {
            return Some((Ok(p), b));
        }
        if let Some(first) = b.first.take() {
            return Some((Ok(first), b));
        }
        if let Some(piece) = b.pending.pop_front() {
            b.wrote = true;
            return Some((Ok(piece), b));
        }
        loop {
            let bytes = tokio::select! {
                biased;
                reason = &mut b.ended => {
                    b.done = true;
                    Bytes::from_static(live::end_comment(reason))
                }
                next = b.changes.recv() => match next {
                    Ok(batch) => match b.follow.take(&batch, &mut b.pending) {
                        Some(bytes) => bytes,
                        None => continue,
                    },
                    Err(RecvError::Lagged(_)) => {
                        metrics::counter!("herald_live_lagged_disconnects_total").increment(1);
                        b.done = true;
                        Bytes::from_static(LAGGED)
                    }
                    Err(RecvError::Closed) => return None,
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

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

/// `GET {route.pattern}` on a connection served by hyper: the router's handler
/// of every registered resource stream.
pub async fn serve_route(
    route: LiveRoute,
    State(state): State<AppState>,
    Viewer(principal): Viewer,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = match_pattern(route.pattern, uri.path())
        .ok_or_else(|| ApiError::BadRequest("the path's parameters are not valid UTF-8".into()))?;
    let opened = open_route(&state, route, &principal, &headers, &uri, params).await?;
    Ok(live::opened_response(opened))
}

/// Opens `route`'s stream for an authenticated viewer (both paths).
pub async fn open_route(
    state: &AppState,
    route: LiveRoute,
    principal: &Principal,
    headers: &HeaderMap,
    uri: &Uri,
    params: Vec<String>,
) -> Result<Opened, ApiError> {
    (route.open)(LiveRequest {
        state,
        principal,
        headers,
        uri,
        params,
    })
    .await
}

/// The registered stream `path` is, and its parameters (percent-decoded, in
/// the pattern's order). Where several patterns match, the one with a fixed
/// segment where the other has a parameter wins (as on the router).
pub fn match_route(routes: &[LiveRoute], path: &str) -> Option<(LiveRoute, Vec<String>)> {
    let route = route_for(routes, path)?;
    Some((route, match_pattern(route.pattern, path)?))
}

/// The registered stream whose pattern `path` matches (see [`match_route`]),
/// without decoding its parameters.
pub fn route_for(routes: &[LiveRoute], path: &str) -> Option<LiveRoute> {
    let mut best: Option<LiveRoute> = None;
    for route in routes {
        if matches(route.pattern, path) && best.is_none_or(|b| more_specific(route.pattern, b.pattern)) {
            best = Some(*route);
        }
    }
    best
}

fn param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

fn matches(pattern: &str, path: &str) -> bool {
    let mut pattern = pattern.split('/');
    let mut path = path.split('/');
    loop {
        match (pattern.next(), path.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if param(p) && !s.is_empty() => {}
            (Some(p), Some(s)) if p == s && !param(p) => {}
            _ => return false,
        }
    }
}

/// Whether `a` has a fixed segment where `b` first has a parameter.
fn more_specific(a: &str, b: &str) -> bool {
    for (x, y) in a.split('/').zip(b.split('/')) {
        match (param(x), param(y)) {
            (false, true) => return true,
            (true, false) => return false,
            _ => {}
        }
    }
    false
}

/// `path`'s parameters when it matches `pattern` (`/api/posts/{id}/live`):
/// non-empty segments, percent-decoded; `None` when it does not match or a
/// parameter is not UTF-8 once decoded.
pub fn match_pattern(pattern: &str, path: &str) -> Option<Vec<String>> {
    if !matches(pattern, path) {
        return None;
    }
    pattern
        .split('/')
        .zip(path.split('/'))
        .filter(|(p, _)| param(p))
        .map(|(_, s)| percent_decode(s))
        .collect()
}

/// `%XX` decoded (other `%` kept, as the router does); `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(_: LiveRequest<'_>) -> crate::state::LiveFuture<'_> {
        Box::pin(async { Err(ApiError::Internal("not in this test".into())) })
    }

    const ROUTES: &[LiveRoute] = &[
        LiveRoute {
            pattern: "/api/deployments/live",
            open,
        },
        LiveRoute {
            pattern: "/api/deployments/{id}/live",
            open,
        },
        LiveRoute {
            pattern: "/api/x/{a}/{b}",
            open,
        },
        LiveRoute {
            pattern: "/api/x/fixed/{b}",
            open,
        },
    ];

    fn matched(path: &str) -> Option<(&'static str, Vec<String>)> {
        match_route(ROUTES, path).map(|(r, p)| (r.pattern, p))
    }

    #[test]
    fn patterns_match_whole_segments_and_decode_parameters() {
        assert_eq!(
            matched("/api/deployments/live"),
            Some(("/api/deployments/live", vec![]))
        );
        assert_eq!(
            matched("/api/deployments/web-1/live"),
            Some(("/api/deployments/{id}/live", vec!["web-1".to_owned()]))
        );
        // `live` as an id is an id.
        assert_eq!(
            matched("/api/deployments/live/live"),
            Some(("/api/deployments/{id}/live", vec!["live".to_owned()]))
        );
        assert_eq!(
            matched("/api/deployments/R%75st/live"),
            Some(("/api/deployments/{id}/live", vec!["Rust".to_owned()]))
        );
        // An encoded slash stays in its segment (and the route's parsing refuses it).
        assert_eq!(
            matched("/api/deployments/a%2Fb/live"),
            Some(("/api/deployments/{id}/live", vec!["a/b".to_owned()]))
        );
        // A `%` that encodes nothing is kept.
        assert_eq!(
            matched("/api/deployments/100%/live").map(|m| m.1),
            Some(vec!["100%".to_owned()])
        );
        for other in [
            "/api/deployments",
            "/api/deployments/",
            "/api/deployments/live/",
            "/api/deployments//live",
            "/api/deployments/web/live/x",
            "/api/deployments/web",
            "/api/events/live",
            "/api/deployments/%ff/live",
        ] {
            assert_eq!(matched(other), None, "{other}");
        }
    }

    #[test]
    fn a_fixed_segment_wins_over_a_parameter() {
        assert_eq!(
            matched("/api/x/fixed/2"),
            Some(("/api/x/fixed/{b}", vec!["2".to_owned()]))
        );
        assert_eq!(
            matched("/api/x/other/2"),
            Some(("/api/x/{a}/{b}", vec!["other".to_owned(), "2".to_owned()]))
        );
    }

    /// A batch as the runner encodes it.
    fn batch(position: u64, entries: &[(&'static str, &str, u64, Option<&'static str>)]) -> ResourceBatch {
        let resources = entries
            .iter()
            .map(
                |&(kind, key, changed_at, class)| herald_store::projection::ChangedResource {
                    kind,
                    key: key.to_owned(),
                    changed_at,
                    event: kind,
                    json: format!("{{\"id\":\"{key}\",\"changed\":{changed_at}}}"),
                    class,
                },
            )
            .collect();
        let page = herald_store::projection::ChangedPage {
            resources,
            position,
            checkpoint: position,
        };
        crate::consumers::encode("test", &page)
    }

    fn follow(kind: &'static str, key: Option<&str>, class: Option<&'static str>, position: u64) -> Follow {
        Follow {
            kind,
            key: key.map(Into::into),
            filter: class.map(|class| Removal {
                class,
                event: "gone",
                head: Bytes::from_static(b"event: gone\ndata: {\"id\":"),
            }),
            position,
        }
    }

    /// Everything `batch` gives `f`, as text.
    fn take(f: &mut Follow, batch: &ResourceBatch) -> String {
        let mut rest = VecDeque::new();
        let mut text = String::new();
        if let Some(first) = f.take(batch, &mut rest) {
            text.push_str(std::str::from_utf8(&first).expect("text"));
        }
        for piece in rest {
            text.push_str(std::str::from_utf8(&piece).expect("text"));
        }
        text
    }

    #[test]
    fn a_stream_gets_its_kind_changed_after_its_position_as_one_shared_slice() {
        let b = batch(
            20,
            &[
                ("a", "x", 11, None),
                ("d", "one", 12, None),
                ("d", "two", 15, None),
                ("d", "three", 19, None),
                ("z", "y", 20, None),
            ],
        );
        let mut f = follow("d", None, None, 12);
        let mut rest = VecDeque::new();
        let got = f.take(&b, &mut rest).expect("frames");
        assert!(rest.is_empty(), "one piece");
        assert_eq!(
            &got[..],
            b"id: 15\nevent: d\ndata: {\"id\":\"two\",\"changed\":15}\n\n\
              id: 19\nevent: d\ndata: {\"id\":\"three\",\"changed\":19}\n\n"
        );
        // A slice of the batch's buffer, not a copy.
        assert_eq!(got.as_ptr(), b.frames[b.entries[2].range.start..].as_ptr());
        assert_eq!(f.position, 20);
        // The same batch again (or an older one) gives nothing: never a change twice.
        assert_eq!(take(&mut f, &b), "");
        assert_eq!(take(&mut follow("q", None, None, 0), &b), "", "another kind");
    }

    /// The SSE messages of `text`: (id, key) each.
    fn messages(text: &str) -> Vec<(u64, String)> {
        text.split_terminator("\n\n")
            .map(|m| {
                let id = m
                    .strip_prefix("id: ")
                    .and_then(|r| r.split('\n').next())
                    .expect("an id line");
                let key = m
                    .split("{\"id\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .expect("a key");
                (id.parse().expect("a position"), key.to_owned())
            })
            .collect()
    }

    #[test]
    fn a_client_cut_off_after_any_state_resumes_with_every_state_it_did_not_get() {
        // Three feeds one event changed (position 24), changes before and
        // after it, and another kind changed by the same event.
        let b = batch(
            30,
            &[
                ("f", "a", 21, None),
                ("f", "b", 24, None),
                ("f", "c", 24, None),
                ("f", "d", 24, None),
                ("f", "e", 28, None),
                ("g", "x", 24, None),
            ],
        );
        let sent = messages(&take(&mut follow("f", None, None, 20), &b));
        let keys: Vec<&str> = sent.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c", "d", "e"]);
        assert_eq!(
            sent.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [21, 23, 23, 24, 28],
            "each its change's position; of one event's, all but the last the position before"
        );
        // A stream of one of them gets it as of its own change.
        for key in ["b", "c", "d"] {
            let got = messages(&take(&mut follow("f", Some(key), None, 20), &b));
            assert_eq!(got, [(24, key.to_owned())]);
        }
        for cut in 0..=sent.len() {
            // What the client resumes with: the id of the last message it got.
            let last = if cut == 0 { 20 } else { sent[cut - 1].0 };
            let resumed = messages(&take(&mut follow("f", None, None, last), &b));
            let mut got: Vec<&str> = sent[..cut].iter().map(|(_, k)| k.as_str()).collect();
            got.extend(resumed.iter().map(|(_, k)| k.as_str()));
            for key in ["a", "b", "c", "d", "e"] {
                let n = got.iter().filter(|k| **k == key).count();
                assert!(n >= 1, "cut after {cut}: {key} was missed ({got:?})");
                // Only the states of one event, cut between, come twice.
                assert!(
                    n == 1 || ["b", "c"].contains(&key),
                    "cut after {cut}: {key} came {n} times"
                );
            }
        }
    }

    #[test]
    fn a_single_resource_stream_gets_its_key_only() {
        let b = batch(30, &[("d", "one", 21, None), ("d", "two", 25, None)]);
        let mut f = follow("d", Some("two"), None, 20);
        assert_eq!(
            take(&mut f, &b),
            "id: 25\nevent: d\ndata: {\"id\":\"two\",\"changed\":25}\n\n"
        );
        assert_eq!(take(&mut follow("d", Some("tw"), None, 20), &b), "");
        assert_eq!(take(&mut follow("d", Some("two"), None, 25), &b), "", "already had it");
        // Its position moves with every batch, whether it got something or not.
        let mut f = follow("d", Some("three"), None, 20);
        assert_eq!(take(&mut f, &b), "");
        assert_eq!(f.position, 30);
    }

    #[test]
    fn a_filtered_stream_gets_matching_runs_and_removals_of_the_others() {
        let b = batch(
            40,
            &[
                ("d", "a", 31, Some("on")),
                ("d", "b", 32, Some("on")),
                ("d", "c", 33, Some("off")),
                ("d", "d", 34, Some("on")),
                ("d", "e\"", 35, Some("off")),
            ],
        );
        let mut f = follow("d", None, Some("on"), 30);
        let mut rest = VecDeque::new();
        let first = f.take(&b, &mut rest).expect("frames");
        let frame = |k: &str, at: u64| format!("id: {at}\nevent: d\ndata: {{\"id\":\"{k}\",\"changed\":{at}}}\n\n");
        assert_eq!(
            std::str::from_utf8(&first).expect("text"),
            frame("a", 31) + &frame("b", 32)
        );
        let rest: String = rest
            .iter()
            .map(|p| std::str::from_utf8(p).expect("text").to_owned())
            .collect();
        assert_eq!(
            rest,
            "id: 33\nevent: gone\ndata: {\"id\":\"c\"}\n\n".to_owned()
                + &frame("d", 34)
                + "id: 35\nevent: gone\ndata: {\"id\":\"e\\\"\"}\n\n"
        );
        // A single resource with a filter.
        let mut f = follow("d", Some("c"), Some("on"), 0);
        assert_eq!(take(&mut f, &b), "id: 33\nevent: gone\ndata: {\"id\":\"c\"}\n\n");
    }

    #[test]
    fn a_removal_is_made_of_slices_only_when_the_frame_starts_with_the_key() {
        let frame = b"id: 7\nevent: d\ndata: {\"id\":\"web\",\"x\":1}\n\n";
        let (id, key) = removal_slices(frame, "web").expect("slices");
        assert_eq!(&frame[..id], b"id: 7\n");
        assert_eq!(&frame[key], b"\"web\"");
        assert_eq!(removal_slices(frame, "we"), None);
        assert_eq!(removal_slices(frame, "webx"), None);
        assert_eq!(
            removal_slices(b"id: 7\nevent: d\ndata: {\"x\":\"web\"}\n\n", "web"),
            None
        );
        assert_eq!(
            removal_slices(b"id: 7\nevent: d\ndata: {\"id\":\"a\\\"\"}\n\n", "a\\"),
            None
        );
    }

    #[test]
    fn a_single_resource_starts_with_its_state_unless_the_client_has_it() {
        let fresh = Initial::single(None, "post", b"{}", 5, 9);
        assert_eq!(fresh.frames, b"id: 9\nevent: post\ndata: {}\n\n");
        assert_eq!(fresh.position, 9);
        let changed = Initial::single(Some(4), "post", b"{}", 5, 9);
        assert_eq!(changed.frames, fresh.frames);
        let unchanged = Initial::single(Some(5), "post", b"{}", 5, 9);
        assert!(unchanged.frames.is_empty());
        assert_eq!(unchanged.position, 9);
        // The client is further than this read model: it keeps its position.
        assert_eq!(Initial::single(Some(12), "post", b"{}", 5, 9).position, 12);
    }
}
