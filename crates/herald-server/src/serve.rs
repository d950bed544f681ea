//! herald's accept loop.
//!
//! Every connection is served by hyper (HTTP/1.1) and the axum router — except
//! one whose first request is a plain `GET /api/events/live`. herald answers
//! that one itself: it authenticates and opens the stream with the same code as
//! the router ([`live::open`]), writes the response head, then writes each
//! chunk of SSE frames straight to the socket until the stream ends, and closes
//! the connection. Such a connection costs a task, the socket and the stream's
//! cursor (a few KiB) instead of a hyper connection's read and write buffers
//! (8 KiB each, kept for the connection's life): tens of thousands of
//! subscribers are mostly that.
//!
//! Anything else (another path or method, a body, HTTP/1.0, an upgrade, a
//! second request pipelined behind the first, a head that does not parse) goes
//! to hyper with the bytes already read, so its answers are hyper's and the
//! router's. A live stream on a connection that served other requests first
//! goes through the router (`live::live_events`), same stream, same rules.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, Request, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::auth::Viewer;
use crate::live::{self, Opened};
use crate::state::AppState;

/// How the request line herald serves without hyper on a fresh connection starts
/// (then a space or `?`).
const LIVE_REQUEST: &[u8] = b"GET /api/events/live";
/// The most a request head may take before it is handed to hyper (which has its own limits).
const HEAD_LIMIT: usize = 16 * 1024;
/// How long a new connection may take to send its first request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one chunk may take to leave: a client that stops reading is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most headers parsed in a live request (more: hyper takes it).
const MAX_HEADERS: usize = 64;

/// Serves `router` on `listener` until `shutdown` resolves; then stops
/// accepting, lets hyper connections finish what they are doing, and waits for
/// every connection (live streams end through `state.live.shutdown`, which the
/// caller cancels).
pub async fn serve(
    state: AppState,
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let stopping = CancellationToken::new();
    // Every connection holds a sender; `closed` resolves when the last is gone.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<Infallible>(1);
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
            _ = &mut shutdown => break,
        };
        let connection = Connection {
            state: state.clone(),
            router: router.clone(),
            stopping: stopping.clone(),
            _open: open_tx.clone(),
        };
        tokio::spawn(connection.run(stream, peer));
    }
    drop(listener);
    stopping.cancel();
    drop(open_tx);
    // `recv` returns `None` once every connection has dropped its sender.
    let _ = open_rx.recv().await;
    Ok(())
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
    _open: tokio::sync::mpsc::Sender<Infallible>,
}

/// What the first request of a connection is.
enum First {
    Live(Box<Parts>),
    Other,
}

impl Connection {
    async fn run(self, mut stream: TcpStream, peer: SocketAddr) {
        // Events and answers are small writes that must leave at once; Nagle
        // would hold one back until the peer acknowledges the one before.
        let _ = stream.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(1024);
        let first = tokio::select! {
            first = tokio::time::timeout(HEAD_TIMEOUT, first_request(&mut stream, &mut buf)) => match first {
                Ok(Ok(Some(first))) => first,
                // Closed, failed or silent before a whole head: nothing to answer.
                _ => return,
            },
            _ = self.stopping.cancelled() => return,
        };
        match first {
            First::Live(mut parts) => {
                drop(buf);
                parts.extensions.insert(ConnectInfo(peer));
                self.live(stream, *parts).await;
            }
            First::Other => self.hyper(stream, buf.freeze(), peer).await,
        }
    }

    /// The connection through hyper and the router, `prefix` first.
    async fn hyper(self, stream: TcpStream, prefix: Bytes, peer: SocketAddr) {
        let router = self.router;
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let io = TokioIo::new(Rewind { prefix, stream });
        let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
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

    /// `GET /api/events/live` written by herald: the same checks as the
    /// router's handler, then the stream straight to the socket.
    async fn live(self, mut stream: TcpStream, mut parts: Parts) {
        let opened = async {
            let Viewer(principal) = Viewer::from_request_parts(&mut parts, &self.state).await?;
            live::open(&self.state, &principal, &parts.headers, &parts.uri).await
        }
        .await;
        drop(parts);
        match opened {
            Ok(opened) => stream_to(stream, opened).await,
            Err(e) => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, write_response(&mut stream, e.into_response())).await;
            }
        }
    }
}

/// Reads until the first request can be told apart; `None` when the peer
/// closed or failed first.
async fn first_request(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Option<First>> {
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
        if let Some(first) = classify(buf) {
            return Ok(Some(first));
        }
    }
}

/// `None`: more bytes are needed to tell.
fn classify(buf: &[u8]) -> Option<First> {
    // Decide on the request line as soon as it can be told not to be ours.
    let n = buf.len().min(LIVE_REQUEST.len());
    if buf[..n] != LIVE_REQUEST[..n] || buf.get(LIVE_REQUEST.len()).is_some_and(|b| !matches!(b, b' ' | b'?')) {
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
    let path = request.path.unwrap_or_default(); // the request line was checked above
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(path)
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
        Ok(request) => Some(First::Live(Box::new(request.into_parts().0))),
        Err(_) => Some(First::Other),
    }
}

/// Writes an opened stream: the head, then each chunk as it comes, until the
/// stream ends (then the last chunk), the peer goes away, or a write stalls.
async fn stream_to(mut stream: TcpStream, opened: Opened) {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache, no-transform\r\n\
         x-accel-buffering: no\r\n",
    );
    if let Some(position) = opened.head {
        head.push_str(&format!("last-event-id: {position}\r\n"));
    }
    head.push_str("transfer-encoding: chunked\r\n\r\n");
    if write_all(&mut stream, head.as_bytes()).await.is_err() {
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
                let written = write_chunks(&mut stream, &chunks).await;
                chunks.clear();
                if written.is_err() {
                    return;
                }
            }
            Next::End => {
                let _ = write_chunks(&mut stream, &chunks).await;
                let _ = write_all(&mut stream, b"0\r\n\r\n").await;
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

enum Next {
    Write,
    End,
    Peer,
}

/// `chunks` in chunked transfer coding, in one vectored write when the socket
/// takes it all (a timer is armed only when it does not).
async fn write_chunks(stream: &mut TcpStream, chunks: &[Bytes]) -> io::Result<()> {
    if chunks.is_empty() {
        return Ok(());
    }
    let mut sizes = [[0u8; 18]; MAX_CHUNKS_PER_WRITE];
    let mut lengths = [0usize; MAX_CHUNKS_PER_WRITE];
    for ((chunk, size), length) in chunks.iter().zip(sizes.iter_mut()).zip(lengths.iter_mut()) {
        use std::io::Write;
        let mut cursor = std::io::Cursor::new(&mut size[..]);
        write!(cursor, "{:x}\r\n", chunk.len())?;
        *length = cursor.position() as usize;
    }
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(chunks.len() * 3);
    for ((chunk, size), length) in chunks.iter().zip(sizes.iter()).zip(lengths.iter()) {
        slices.push(IoSlice::new(&size[..*length]));
        slices.push(IoSlice::new(chunk));
        slices.push(IoSlice::new(b"\r\n"));
    }
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    let written = match stream.try_write_vectored(rest) {
        Ok(written) => written,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written == total {
        return Ok(());
    }
    IoSlice::advance_slices(&mut rest, written);
    tokio::time::timeout(WRITE_TIMEOUT, async {
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

async fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes))
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
        match classify(head.as_bytes()) {
            None => "more",
            Some(First::Other) => "hyper",
            Some(First::Live(_)) => "live",
        }
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
}
