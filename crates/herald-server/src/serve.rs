//! herald's accept loop.
//!
//! Every connection is served by hyper (HTTP/1.1) and the axum router — except
//! one whose first request is a plain `GET` of a live stream: `/api/events/live`
//! or a resource stream a domain registered (`Registry::live`, matched by its
//! pattern, `/api/deployments/{id}/live`). herald answers that one itself: it
//! authenticates and opens the stream with the same code as the router
//! ([`live::open`], [`resources::open_route`]), writes the response head, then
//! writes each chunk of SSE frames straight to the socket until the stream
//! ends, and closes the connection. Such a connection costs a task, the socket
//! and the stream's cursor (a few KiB) instead of a hyper connection's read and
//! write buffers (8 KiB each, kept for the connection's life): tens of
//! thousands of subscribers are mostly that.
//!
//! Anything else (another path or method, a body, HTTP/1.0, an upgrade, a
//! second request pipelined behind the first, a head that does not parse) goes
//! to hyper with the bytes already read, so its answers are hyper's and the
//! router's. A live stream on a connection that served other requests first
//! goes through the router (`live::live_events`, `resources::serve_route`),
//! same stream, same rules.
//!
//! Every connection is bounded (`ServerConfig`): its first head must be whole
//! within `header_timeout` of the accept (this sniffing included), a later head
//! within `header_timeout` of its first byte, an idle keep-alive wait lasts at
//! most `idle_timeout`, a request body must arrive within `body_timeout` (408),
//! and a write that makes no progress for `write_timeout` drops the client with
//! a reset. Live responses say `Connection: close` and close when they end.
//! Connections are capped in all and per client address (a static 503 and a
//! close beyond, counted in `herald_connections_refused_total`), and shutdown
//! waits at most `shutdown_grace` before closing what is still open.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, Request, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::auth::Viewer;
use crate::live::{self, Opened};
use crate::resources;
use crate::state::AppState;
use crate::state::LiveRoute;

/// How every request line herald serves without hyper on a fresh connection starts.
const GET: &[u8] = b"GET /";
/// The log's live stream (the other streams are the registry's).
const EVENTS_LIVE: &str = "/api/events/live";
/// The most a request head may take before it is handed to hyper (which has its own limits).
const HEAD_LIMIT: usize = 16 * 1024;
/// Most headers parsed in a live request (more: hyper takes it).
const MAX_HEADERS: usize = 64;

/// Serves `router` on `listener` until `shutdown` resolves; then stops
/// accepting, lets hyper connections finish what they are doing for up to
/// `shutdown_grace` (live streams end through `state.live.shutdown`, which the
/// caller cancels), closes whatever is still open, and returns.
///
/// Connections beyond `max_connections`, or beyond
/// `max_connections_per_address` from one client address, are answered with a
/// static 503 (best effort, nothing read or buffered) and closed at once.
pub async fn serve(
    state: AppState,
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let stopping = CancellationToken::new();
    let limits = Arc::new(Limits::new(
        state.config.max_connections,
        state.config.max_connections_per_address,
    ));
    let grace = state.config.shutdown_grace;
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or the like: wait instead of spinning.
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            // Reap finished connections so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = &mut shutdown => break,
        };
        let Some(slot) = limits.admit(peer.ip()) else {
            refuse(stream);
            continue;
        };
        let connection = Connection {
            state: state.clone(),
            router: router.clone(),
            stopping: stopping.clone(),
            _slot: slot,
        };
        connections.spawn(connection.run(stream, peer));
    }
    drop(listener);
    stopping.cancel();
    let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            grace_seconds = grace.as_secs_f64(),
            "closing the connections still open after the shutdown grace period"
        );
        // Aborts every connection task (its socket closes) and waits for them.
        connections.shutdown().await;
    }
    Ok(())
}

/// The API's runtime: requests (commands, reads, logins) are read and
/// answered on threads of their own, so that a command is not queued behind
/// the thousands of live-stream tasks one committed batch wakes on the main
/// runtime (with a few publishers, that wait bounded the fan-out: each
/// command's answer, and the next command, waited for a whole burst). The
/// operating system shares the cores between both. One per process, with
/// the `threads` of the first server that asks (`--api-threads`); `None` for
/// 0 threads or when it cannot be started: then everything runs on the
/// caller's runtime.
fn api_runtime(threads: usize) -> Option<&'static tokio::runtime::Runtime> {
    static API: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    if threads == 0 {
        return None;
    }
    API.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("herald-api")
            .enable_all()
            .build()
            .map_err(|e| tracing::error!(error = %e, "cannot start the API's runtime; serving everything on one"))
            .ok()
    })
    .as_ref()
}

/// What a connection beyond a limit gets before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
retry-after: 5\r\nconnection: close\r\ncontent-length: 164\r\n\r\n\
{\"type\":\"/problems/unavailable\",\"title\":\"Service unavailable\",\"status\":503,\
\"detail\":\"too many open connections (from this address or in all); close some and retry\"}";

/// Closes a connection beyond a limit: one non-blocking try at the static
/// 503, nothing read, nothing kept.
fn refuse(stream: TcpStream) {
    metrics::counter!("herald_connections_refused_total").increment(1);
    let _ = stream.try_write(REFUSED);
}

/// Open connections, in all and per client address.
struct Limits {
    max: usize,
    per_address: usize,
    open: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

impl Limits {
    fn new(max: usize, per_address: usize) -> Self {
        Limits {
            max,
            per_address,
            open: AtomicUsize::new(0),
            by_address: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `ip`, or `None` beyond a limit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        // One task accepts: a load then a store cannot overshoot.
        if self.max > 0 && self.open.load(Ordering::Relaxed) >= self.max {
            return None;
        }
        let ip = ip.to_canonical();
        if self.per_address > 0 {
            let mut by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
            let n = by_address.entry(ip).or_insert(0);
            if *n >= self.per_address {
                return None;
            }
            *n += 1;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            limits: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; released when dropped.
struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
        if self.limits.per_address > 0 {
            let mut by_address = self.limits.by_address.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = by_address.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    by_address.remove(&self.ip);
                }
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

struct Connection {
    state: AppState,
    router: Router,
    stopping: CancellationToken,
    _slot: Slot,
}

/// What the first request of a connection is.
enum First {
    Live(Box<Parts>, Target),
    Other,
}

/// Which live stream.
enum Target {
    /// `GET /api/events/live`.
    Events,
    /// A registered resource stream, with its path parameters.
    Resource(LiveRoute, Vec<String>),
}

/// A live stream ready to be written: all its connection keeps for its life.
struct Streaming {
    stream: TcpStream,
    opened: Opened,
    write_timeout: Duration,
    _slot: Slot,
}

impl Connection {
    /// A connection's task, in two parts: a boxed one that sniffs the first
    /// request and serves it (hyper's connection, or a live stream's opening
    /// and refusals), then, for a live stream, its writing. A task is as
    /// large as its largest state for as long as it lives, and most
    /// connections are long-lived streams: with the first part boxed (freed
    /// when done), a stream's task keeps only [`Streaming`] and
    /// [`stream_to`]'s state.
    async fn run(self, stream: TcpStream, peer: SocketAddr) {
        let serving = Box::pin(self.serve_first(stream, peer));
        if let Some(Streaming {
            stream,
            opened,
            write_timeout,
            _slot,
        }) = serving.await
        {
            stream_to(stream, opened, write_timeout).await;
        }
    }

    /// Serves the connection up to a live stream's first write: `Some` with
    /// the stream to write, `None` when the connection was served otherwise.
    async fn serve_first(self, mut stream: TcpStream, peer: SocketAddr) -> Option<Streaming> {
        // Events and answers are small writes that must leave at once; Nagle
        // would hold one back until the peer acknowledges the one before.
        let _ = stream.set_nodelay(true);
        // The first head must be whole within the header timeout of the
        // accept, whoever reads it (this sniffing, then hyper).
        let head_deadline = Instant::now() + self.state.config.header_timeout;
        let mut buf = BytesMut::with_capacity(1024);
        let first = tokio::select! {
            first = tokio::time::timeout_at(head_deadline, first_request(&mut stream, &mut buf, self.state.registry.live_routes())) => match first {
                Ok(Ok(Some(first))) => first,
                // Closed, failed or silent before a whole head: nothing to answer.
                _ => return None,
            },
            _ = self.stopping.cancelled() => return None,
        };
        match first {
            First::Live(mut parts, target) => {
                drop(buf);
                parts.extensions.insert(ConnectInfo(peer));
                self.live(stream, *parts, target).await
            }
            First::Other => {
                self.other(stream, buf.freeze(), peer, head_deadline).await;
                None
            }
        }
    }

    /// A connection that is not a live stream: to hyper, on the API's runtime.
    async fn other(self, stream: TcpStream, prefix: Bytes, peer: SocketAddr, head_deadline: Instant) {
        match (api_runtime(self.state.config.api_threads), stream.into_std()) {
            // On the API's own threads, the socket registered with its
            // reactor (a socket's readiness comes from the runtime it is
            // registered with).
            (Some(api), Ok(std_stream)) => {
                let task = api.spawn(async move {
                    match TcpStream::from_std(std_stream) {
                        Ok(stream) => self.hyper(stream, prefix, peer, head_deadline).await,
                        Err(e) => tracing::warn!(error = %e, "moving a connection to the API threads failed"),
                    }
                });
                // Aborted with this task (a shutdown past its grace).
                struct AbortOnDrop(tokio::task::AbortHandle);
                impl Drop for AbortOnDrop {
                    fn drop(&mut self) {
                        self.0.abort();
                    }
                }
                let _abort = AbortOnDrop(task.abort_handle());
                let _ = task.await;
            }
            (None, Ok(std_stream)) => match TcpStream::from_std(std_stream) {
                Ok(stream) => self.hyper(stream, prefix, peer, head_deadline).await,
                Err(e) => tracing::warn!(error = %e, "a connection could not be served"),
            },
            (_, Err(e)) => tracing::warn!(error = %e, "a connection could not be served"),
        }
    }

    /// The connection through hyper and the router, `prefix` first.
    async fn hyper(self, stream: TcpStream, prefix: Bytes, peer: SocketAddr, head_deadline: Instant) {
        let config = self.state.config.clone();
        let phase = Arc::new(AtomicU8::new(HEAD));
        let router = self.router;
        let service_phase = phase.clone();
        let body_timeout = config.body_timeout;
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            service_phase.store(BUSY, Ordering::Relaxed);
            let timed_out = (!request.body().is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
            let mut request = match &timed_out {
                None => request.map(Body::new),
                Some(flag) => request.map(|body| {
                    Body::new(TimedBody {
                        inner: body,
                        sleep: Box::pin(tokio::time::sleep(body_timeout)),
                        timed_out: flag.clone(),
                    })
                }),
            };
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = router.clone().oneshot(request);
            let phase = service_phase.clone();
            async move {
                let response = response.await?;
                if timed_out.is_some_and(|flag| flag.load(Ordering::Relaxed)) {
                    return Ok(request_timeout());
                }
                if closes(&response) {
                    // No next request on this connection (a live stream, say):
                    // its body is handed to hyper as it is.
                    return Ok(response);
                }
                Ok::<_, Infallible>(response.map(|body| Body::new(KeepAliveBody { inner: body, phase })))
            }
        });
        let io = TokioIo::new(Guarded {
            io: Rewind { prefix, stream },
            phase: phase.clone(),
            seen: HEAD,
            read_sleep: Some(Box::pin(tokio::time::sleep_until(head_deadline))),
            read_armed: true,
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            write_sleep: None,
            write_armed: false,
            write_timeout: config.write_timeout,
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // A backstop: hyper's clock starts when it waits for a head, so it
            // bounds the idle wait and the head together (the finer rules are
            // `Guarded`'s).
            .header_read_timeout(config.idle_timeout.saturating_add(config.header_timeout))
            .serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = self.stopping.cancelled() => connection.as_mut().graceful_shutdown(),
        }
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    /// A live stream opened by herald: the same checks and the same opening
    /// as the router's handler; `None` when it was refused (the answer
    /// written here).
    async fn live(self, mut stream: TcpStream, mut parts: Parts, target: Target) -> Option<Streaming> {
        let opened = async {
            // The router's first layer (`hosts::check_host`), here too.
            self.state
                .hosts
                .check(parts.headers.get(header::HOST).map(|h| h.as_bytes()))?;
            let Viewer(principal) = Viewer::from_request_parts(&mut parts, &self.state).await?;
            match target {
                Target::Events => live::open(&self.state, &principal, &parts.headers, &parts.uri).await,
                Target::Resource(route, params) => {
                    resources::open_route(&self.state, route, &principal, &parts.headers, &parts.uri, params).await
                }
            }
        }
        .await;
        drop(parts);
        let write_timeout = self.state.config.write_timeout;
        match opened {
            Ok(opened) => Some(Streaming {
                stream,
                opened,
                write_timeout,
                _slot: self._slot,
            }),
            Err(e) => {
                let _ = tokio::time::timeout(write_timeout, write_response(&mut stream, e.into_response())).await;
                None
            }
        }
    }
}

/// Whether a response ends its connection (`Connection: close`).
fn closes(response: &Response) -> bool {
    response.headers().get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    })
}

/// 408 for a request whose body did not arrive in time; the connection closes.
fn request_timeout() -> Response {
    let body = r#"{"type":"/problems/request-timeout","title":"Request timeout","status":408,"detail":"the request body did not arrive in time"}"#;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = axum::http::StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Where a hyper connection is (shared by its service and its IO): waiting for
/// a request ([`IDLE`]), reading a head ([`HEAD`]), or serving one ([`BUSY`]).
const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// A request body that must arrive whole before its deadline.
struct TimedBody {
    inner: hyper::body::Incoming,
    sleep: Pin<Box<Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_ready() {
                    this.timed_out.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err("the request body did not arrive in time".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body on a connection that stays open: when hyper is done with
/// it, the connection waits for its next request.
struct KeepAliveBody {
    inner: Body,
    phase: Arc<AtomicU8>,
}

impl HttpBody for KeepAliveBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for KeepAliveBody {
    fn drop(&mut self) {
        self.phase.store(IDLE, Ordering::Relaxed);
    }
}

/// A hyper connection's socket with its clocks:
/// - reading: a head must be whole within `header_timeout` of its first byte
///   (of the accept, for the first), and an idle connection gets
///   `idle_timeout` to start its next request; serving a request has no read
///   clock (its body has its own, [`TimedBody`]);
/// - writing: a write that makes no progress for `write_timeout` fails the
///   connection, and the socket is then reset rather than closed, so the
///   kernel drops what it still holds for a reader that stopped reading.
///
/// A timer is armed only when a read or a write would wait.
struct Guarded {
    io: Rewind,
    phase: Arc<AtomicU8>,
    /// The phase the read clock was last set for.
    seen: u8,
    read_sleep: Option<Pin<Box<Sleep>>>,
    read_armed: bool,
    header_timeout: Duration,
    idle_timeout: Duration,
    write_sleep: Option<Pin<Box<Sleep>>>,
    write_armed: bool,
    write_timeout: Duration,
}

impl Guarded {
    fn arm_read(&mut self, deadline: Instant) {
        match &mut self.read_sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.read_sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.read_armed = true;
    }

    /// A write would wait: arms the write clock, or fails when it ran out.
    fn write_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.write_armed {
            let deadline = Instant::now() + self.write_timeout;
            match &mut self.write_sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.write_sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.write_armed = true;
        }
        let expired = self
            .write_sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        let _ = self.io.stream.set_zero_linger();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading",
        )))
    }

    fn wrote<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.write_stalled(cx),
            ready => {
                self.write_armed = false;
                ready
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let phase = this.phase.load(Ordering::Relaxed);
        if phase != this.seen {
            this.seen = phase;
            match phase {
                IDLE => this.arm_read(Instant::now() + this.idle_timeout),
                BUSY => this.read_armed = false,
                _ => {}
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.seen == IDLE && buf.filled().len() > before {
                    // The next request has begun: its head gets the header timeout.
                    this.seen = HEAD;
                    this.phase.store(HEAD, Ordering::Relaxed);
                    this.arm_read(Instant::now() + this.header_timeout);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.read_armed
                    && let Some(sleep) = &mut this.read_sleep
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    let why = if this.seen == IDLE {
                        "the connection was idle too long"
                    } else {
                        "the request head did not arrive in time"
                    };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_shutdown(cx);
        self.wrote(cx, result)
    }
}

/// Reads until the first request can be told apart; `None` when the peer
/// closed or failed first.
async fn first_request(stream: &mut TcpStream, buf: &mut BytesMut, routes: &[LiveRoute]) -> io::Result<Option<First>> {
    loop {
        if buf.len() >= HEAD_LIMIT {
            return Ok(Some(First::Other));
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(buf.capacity().max(1024));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
        if let Some(first) = classify(buf, routes) {
            return Ok(Some(first));
        }
    }
}

/// `None`: more bytes are needed to tell.
fn classify(buf: &[u8], routes: &[LiveRoute]) -> Option<First> {
    // Decide on the request line as soon as it can be told not to be ours.
    let n = buf.len().min(GET.len());
    if buf[..n] != GET[..n] {
        return Some(First::Other);
    }
    // The request target, from its `/`, once its end is there.
    let line = buf.get(GET.len() - 1..).filter(|_| n == GET.len())?;
    let end = line.iter().position(|b| matches!(b, b' ' | b'\r' | b'\n'))?;
    let path = &line[..end];
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let Ok(path) = std::str::from_utf8(path) else {
        return Some(First::Other);
    };
    let events = path == EVENTS_LIVE;
    if line[end] != b' ' || !events && resources::route_for(routes, path).is_none() {
        return Some(First::Other);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(First::Other), // too many headers, or not HTTP: hyper answers
    };
    if length != buf.len() || request.version != Some(1) {
        return Some(First::Other); // pipelined bytes (a body, or a second request), or HTTP/1.0
    }
    let target = if events {
        Target::Events
    } else {
        // A parameter that is not UTF-8 once decoded: the router's handler answers.
        match resources::match_route(routes, path) {
            Some((route, params)) => Target::Resource(route, params),
            None => return Some(First::Other),
        }
    };
    let uri = request.path.unwrap_or_default(); // the request line was checked above
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .version(Version::HTTP_11);
    for h in request.headers.iter() {
        let name = match HeaderName::from_bytes(h.name.as_bytes()) {
            Ok(name) => name,
            Err(_) => return Some(First::Other),
        };
        // Anything that makes this more than a plain GET is hyper's to handle.
        if name == header::CONTENT_LENGTH && h.value != b"0"
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
        {
            return Some(First::Other);
        }
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Some(First::Other);
        };
        builder = builder.header(name, value);
    }
    match builder.body(()) {
        Ok(request) => Some(First::Live(Box::new(request.into_parts().0), target)),
        Err(_) => Some(First::Other),
    }
}

/// Writes an opened stream: the head, then each chunk as it comes, until the
/// stream ends (then the last chunk), the peer goes away, or a write stalls
/// for `timeout` (then the socket is reset: the kernel drops what it holds).
async fn stream_to(mut stream: TcpStream, opened: Opened, timeout: Duration) {
    let stalled = |stream: &TcpStream, e: &io::Error| {
        if e.kind() == io::ErrorKind::TimedOut {
            let _ = stream.set_zero_linger();
        }
    };
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache, no-transform\r\n\
         x-accel-buffering: no\r\nconnection: close\r\n",
    );
    if let Some(position) = opened.head {
        head.push_str(&format!("last-event-id: {position}\r\n"));
    }
    head.push_str("transfer-encoding: chunked\r\n\r\n");
    if let Err(e) = write_all(&mut stream, head.as_bytes(), timeout).await {
        stalled(&stream, &e);
        return;
    }
    drop(head);
    let mut body = opened.body;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut probe = [0u8; 1];
    loop {
        // Whatever the stream has ready (up to a bound) goes out in one write;
        // otherwise wait for the stream or for the peer (which may only close
        // or fail: a second request is not served on this connection).
        let ended = std::future::poll_fn(|cx| {
            while chunks.len() < MAX_CHUNKS_PER_WRITE {
                match body.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(bytes))) => {
                        if !bytes.is_empty() {
                            chunks.push(bytes);
                        }
                    }
                    Poll::Ready(None) => return Poll::Ready(Next::End),
                    Poll::Pending => break,
                }
            }
            if !chunks.is_empty() {
                return Poll::Ready(Next::Write);
            }
            match stream.poll_read_ready(cx) {
                Poll::Ready(_) => Poll::Ready(Next::Peer),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match ended {
            Next::Write => {
                let written = write_chunks(&mut stream, &chunks, timeout).await;
                chunks.clear();
                // A burst may have grown it; an idle stream keeps a few slots.
                chunks.shrink_to(IDLE_CHUNKS);
                if let Err(e) = written {
                    stalled(&stream, &e);
                    return;
                }
            }
            Next::End => {
                let mut written = write_chunks(&mut stream, &chunks, timeout).await;
                if written.is_ok() {
                    written = write_all(&mut stream, b"0\r\n\r\n", timeout).await;
                }
                if let Err(e) = written {
                    stalled(&stream, &e);
                }
                return;
            }
            Next::Peer => match stream.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed, failed, or sending what this connection does not serve.
                _ => return,
            },
        }
    }
}

/// Most chunks gathered into one write.
const MAX_CHUNKS_PER_WRITE: usize = 16;
/// Chunk slots a stream keeps between writes.
const IDLE_CHUNKS: usize = 4;

enum Next {
    Write,
    End,
    Peer,
}

/// `chunks` in chunked transfer coding, in one vectored write when the socket
/// takes it all. What it does not take (a slow reader) is written by a boxed
/// future with a timer: between writes a stream's task keeps neither the
/// write's buffers nor a timer.
async fn write_chunks(stream: &mut TcpStream, chunks: &[Bytes], timeout: Duration) -> io::Result<()> {
    // (`stream_to` gathers at most one write's worth.)
    for chunks in chunks.chunks(MAX_CHUNKS_PER_WRITE) {
        if let Some(rest) = try_write_chunks(stream, chunks)? {
            Box::pin(write_rest(stream, rest, timeout)).await?;
        }
    }
    Ok(())
}

/// One non-blocking vectored write of `chunks` (at most
/// [`MAX_CHUNKS_PER_WRITE`]) in chunked transfer coding; `Some` with what the
/// socket did not take, as owned pieces in order.
fn try_write_chunks(stream: &TcpStream, chunks: &[Bytes]) -> io::Result<Option<Vec<Bytes>>> {
    const CRLF: &[u8] = b"\r\n";
    assert!(chunks.len() <= MAX_CHUNKS_PER_WRITE, "write_chunks splits longer lists");
    if chunks.is_empty() {
        return Ok(None);
    }
    let mut sizes = [[0u8; 18]; MAX_CHUNKS_PER_WRITE];
    let mut lengths = [0usize; MAX_CHUNKS_PER_WRITE];
    for (i, chunk) in chunks.iter().enumerate() {
        lengths[i] = size_line(&mut sizes[i], chunk.len());
    }
    let mut slices = [IoSlice::new(&[]); 3 * MAX_CHUNKS_PER_WRITE];
    for (i, chunk) in chunks.iter().enumerate() {
        slices[3 * i] = IoSlice::new(&sizes[i][..lengths[i]]);
        slices[3 * i + 1] = IoSlice::new(chunk);
        slices[3 * i + 2] = IoSlice::new(CRLF);
    }
    let slices = &slices[..3 * chunks.len()];
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut skip = match stream.try_write_vectored(slices) {
        Ok(written) => written,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if skip == total {
        return Ok(None);
    }
    let mut rest = Vec::with_capacity(slices.len());
    for (i, slice) in slices.iter().enumerate() {
        if skip >= slice.len() {
            skip -= slice.len();
            continue;
        }
        rest.push(match i % 3 {
            0 => Bytes::copy_from_slice(&slice[skip..]),
            1 => chunks[i / 3].slice(skip..),
            _ => Bytes::from_static(&CRLF[skip..]),
        });
        skip = 0;
    }
    Ok(Some(rest))
}

/// A chunk's size line (`<hex>\r\n`) into `out`; its length.
fn size_line(out: &mut [u8; 18], len: usize) -> usize {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut out[..]);
    // 16 hex digits and CRLF fit: this cannot fail.
    let _ = write!(cursor, "{len:x}\r\n");
    cursor.position() as usize
}

/// Writes `rest` whole, failing when the socket takes nothing for `timeout`.
async fn write_rest(stream: &mut TcpStream, pieces: Vec<Bytes>, timeout: Duration) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    tokio::time::timeout(timeout, async {
        while !rest.is_empty() {
            let written = stream.write_vectored(rest).await?;
            if written == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            IoSlice::advance_slices(&mut rest, written);
        }
        Ok(())
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))?
}

/// Writes `bytes` whole (a stream's head, its last chunk), with a timer;
/// boxed, so that a stream's task is not sized for it.
async fn write_all(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    Box::pin(tokio::time::timeout(timeout, stream.write_all(bytes)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))?
}

/// Writes a whole (error) response and closes the connection.
async fn write_response(stream: &mut TcpStream, response: Response) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// A socket whose first bytes were already read: they are read again first.
struct Rewind {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(head: &str) -> &'static str {
        let registry = crate::domains::registry();
        match classify(head.as_bytes(), registry.live_routes()) {
            None => "more",
            Some(First::Other) => "hyper",
            Some(First::Live(_, Target::Events)) => "live",
            Some(First::Live(_, Target::Resource(..))) => "resource",
        }
    }

    #[test]
    fn a_plain_get_of_a_registered_stream_is_served_without_hyper() {
        let registry = crate::domains::registry();
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\nlast-event-id: 3\r\n\r\n");
        for path in [
            "/api/deployments/live",
            "/api/deployments/live?status=failed",
            "/api/deployments/web-1/live",
            "/api/deployments/web-1/live?min_position=4",
        ] {
            assert_eq!(kind(&get(path)), "resource", "{path}");
        }
        match classify(get("/api/deployments/w%65b/live").as_bytes(), registry.live_routes()) {
            Some(First::Live(parts, Target::Resource(route, params))) => {
                assert_eq!(route.pattern, "/api/deployments/{id}/live");
                assert_eq!(params, ["web"]);
                assert_eq!(parts.uri, "/api/deployments/w%65b/live");
                assert_eq!(parts.headers["last-event-id"], "3");
            }
            _ => panic!("not the resource stream"),
        }
        for other in [
            "/api/deployments",
            "/api/deployments/web-1",
            "/api/deployments/live/",
            "/api/deployments//live",
            "/api/deployments/web-1/live/more",
            // Not UTF-8 once decoded: the router's handler answers (400).
            "/api/deployments/%ff/live",
        ] {
            assert_eq!(kind(&get(other)), "hyper", "{other}");
        }
        assert_eq!(kind("GET /api/deployments/li"), "more");
        assert_eq!(kind("GET /api/deployments/live HTTP/1.1\r\n"), "more");
        assert_eq!(
            kind("POST /api/deployments/live HTTP/1.1\r\ncontent-length: 0\r\n\r\n"),
            "hyper"
        );
        assert_eq!(kind("GET /api/deployments/live HTTP/1.0\r\n\r\n"), "hyper");
    }

    #[test]
    fn only_a_plain_live_get_is_served_without_hyper() {
        let live = "GET /api/events/live?stream=a HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\n\r\n";
        assert_eq!(kind(live), "live");
        assert_eq!(kind("GET /api/events/live HTTP/1.1\r\nhost: x\r\n\r\n"), "live");
        // Not enough yet.
        assert_eq!(kind("GET /api/ev"), "more");
        assert_eq!(kind("GET /api/events/live HTTP/1.1\r\nhost: x\r\n"), "more");
        // Told apart from the request line alone.
        assert_eq!(kind("POST /api/commands HTTP/1.1\r\n"), "hyper");
        assert_eq!(kind("GET /api/events?after=1 HTTP/1.1\r\n"), "hyper");
        assert_eq!(kind("GET /api/events/livex HTTP/1.1\r\n"), "hyper");
        assert_eq!(kind("GE"), "more");
        assert_eq!(kind("PUT "), "hyper");
        // Anything more than a plain GET goes to hyper.
        for other in [
            "GET /api/events/live HTTP/1.0\r\n\r\n",
            "GET /api/events/live HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            "GET /api/events/live HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /api/events/live HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            "GET /api/events/live HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
            "GET /api/events/live HTTP/1.1\r\n\r\nGET /api/events HTTP/1.1\r\n\r\n",
            "GET /api/events/live HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert_eq!(kind(other), "hyper", "{other:?}");
        }
    }

    #[test]
    fn the_refusal_is_a_whole_problem_response() {
        let text = std::str::from_utf8(REFUSED).expect("text");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(
            format!("{head}\r\n").contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{head}"
        );
        let problem: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(problem["status"], 503);
    }

    #[test]
    fn connections_are_limited_in_all_and_per_address() {
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let limits = Arc::new(Limits::new(3, 2));
        let a1 = limits.admit(a).expect("first");
        let _a2 = limits.admit(a).expect("second");
        assert!(limits.admit(a).is_none(), "per address");
        // The same address written as IPv4-mapped IPv6 counts as the same.
        assert!(limits.admit("::ffff:10.0.0.1".parse().expect("ip")).is_none());
        let _b1 = limits.admit(b).expect("another address");
        assert!(limits.admit(b).is_none(), "in all");
        drop(a1);
        assert!(limits.admit(a).is_some(), "a closed connection frees its slot");
        // 0 per address: only the global limit.
        let open = Arc::new(Limits::new(2, 0));
        let _x = open.admit(a).expect("one");
        let _y = open.admit(a).expect("two");
        assert!(open.admit(a).is_none());
        // 0 in all: no limit.
        let unlimited = Arc::new(Limits::new(0, 0));
        let kept: Vec<Slot> = (0..100).map(|_| unlimited.admit(a).expect("no limit")).collect();
        assert_eq!(kept.len(), 100);
    }

    #[tokio::test]
    async fn rewind_reads_the_prefix_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("test setup");
        let addr = listener.local_addr().expect("test setup");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("test setup");
            c.write_all(b" world").await.expect("test setup");
        });
        let (stream, _) = listener.accept().await.expect("test setup");
        client.await.expect("test setup");
        let mut rewind = Rewind {
            prefix: Bytes::from_static(b"hello"),
            stream,
        };
        let mut all = Vec::new();
        rewind.read_to_end(&mut all).await.expect("test setup");
        assert_eq!(all, b"hello world");
    }

    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("test setup");
        let addr = listener.local_addr().expect("test setup");
        let client = TcpStream::connect(addr).await.expect("test setup");
        let (server, _) = listener.accept().await.expect("test setup");
        (server, client)
    }

    /// Decodes a chunked body (up to its last chunk).
    fn dechunk(mut wire: &[u8]) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        loop {
            let line = wire.iter().position(|b| *b == b'\n').expect("a size line");
            let size = usize::from_str_radix(std::str::from_utf8(&wire[..line - 1]).expect("hex"), 16).expect("hex");
            wire = &wire[line + 1..];
            if size == 0 {
                assert_eq!(wire, b"\r\n", "the last chunk ends the body");
                return chunks;
            }
            chunks.push(wire[..size].to_vec());
            assert_eq!(&wire[size..size + 2], b"\r\n");
            wire = &wire[size + 2..];
        }
    }

    #[tokio::test]
    async fn chunks_the_socket_takes_only_in_part_are_written_whole_and_in_order() {
        let (mut server, mut client) = socket_pair().await;
        // More than the socket's buffers take at once, in sizes that do not
        // line up with them: the first write stops inside some chunk.
        let chunks: Vec<Bytes> = (0..MAX_CHUNKS_PER_WRITE)
            .map(|i| Bytes::from(vec![b'a' + i as u8; 300 * 1024 + 7 * i]))
            .collect();
        let rest = try_write_chunks(&server, &chunks)
            .expect("the write")
            .expect("the socket took everything at once; the test needs a partial write");
        assert!(!rest.is_empty());
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.expect("test setup");
            all
        });
        write_rest(&mut server, rest, Duration::from_secs(30))
            .await
            .expect("the rest");
        write_all(&mut server, b"0\r\n\r\n", Duration::from_secs(30))
            .await
            .expect("the end");
        drop(server);
        let got = dechunk(&reader.await.expect("test setup"));
        let want: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the chunks arrived altered");
    }

    #[tokio::test]
    async fn more_chunks_than_one_write_takes_are_all_written() {
        let (mut server, mut client) = socket_pair().await;
        let chunks: Vec<Bytes> = (0..MAX_CHUNKS_PER_WRITE + 3)
            .map(|i| Bytes::from(format!("chunk {i}")))
            .collect();
        write_chunks(&mut server, &chunks, Duration::from_secs(30))
            .await
            .expect("the write");
        write_all(&mut server, b"0\r\n\r\n", Duration::from_secs(30))
            .await
            .expect("the end");
        drop(server);
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.expect("test setup");
        let want: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        assert_eq!(dechunk(&all), want);
    }

    #[tokio::test]
    async fn a_live_streams_writing_state_stays_small() {
        // A stream's task holds this for the stream's life (with the
        // connection's slot): 10,000 idle streams are mostly it. Timers and
        // buffers of a write that waits are boxed, not part of it.
        let (server, _client) = socket_pair().await;
        let opened = Opened {
            head: None,
            body: Box::pin(futures_util::stream::empty()),
        };
        let writing = stream_to(server, opened, Duration::from_secs(1));
        let size = std::mem::size_of_val(&writing);
        assert!(size <= 512, "stream_to's future takes {size} bytes");
    }
}
