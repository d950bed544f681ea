//! Resource streams (API.md §6) over a real socket, on both of herald's
//! paths: a fresh connection whose first request is the stream is written by
//! herald itself (`serve.rs`), a reused keep-alive connection by hyper and the
//! router. Changes are driven by real commands; every wait is bounded, and no
//! test asserts on timing: "nothing was sent" is checked by making the next
//! change and seeing that it is what comes first.

mod support;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::auth::Role;
use herald_core::envelope::Actor;
use herald_core::store::{AppendRequest, ExpectedVersion, NewEvent};
use herald_server::ServerConfig;
use herald_server::resources::ResourceBatch;
use herald_store::projection::{ChangedPage, ChangedResource};
use serde_json::{Value, json};
use support::{Person, Server, WAIT};

// ---------------------------------------------------------------------------
// The server and its clients
// ---------------------------------------------------------------------------

struct Harness {
    server: Server,
    addr: SocketAddr,
    /// An operator token.
    token: String,
}

async fn start(config: ServerConfig) -> Harness {
    let server = support::start(config).await;
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse().expect("addr");
    let token = support::mint(&server.state, "resource-tests", "operator", Role::Operator)
        .await
        .secret;
    let h = Harness { server, addr, token };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = h.server.client.get(h.server.url("/healthz")).send().await;
        if matches!(r, Ok(r) if r.status() == 200) {
            return h;
        }
        assert!(tokio::time::Instant::now() < deadline, "the server never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config() -> ServerConfig {
    support::config()
}

impl Harness {
    /// Sends a command, asserting 200, and waits until the deployments read
    /// model reflects it (so a stream opened next starts from it); returns its position.
    async fn command(&self, command_type: &str, id: &str, data: Value) -> u64 {
        let p = self.command_nowait(command_type, id, data).await;
        let listed = self
            .get_json(&format!("/api/deployments?limit=1&min_position={p}"))
            .await;
        assert!(
            listed["position"].as_u64() >= Some(p),
            "the read model reached {p}: {listed}"
        );
        p
    }

    /// Sends a command, asserting 200; returns its position.
    async fn command_nowait(&self, command_type: &str, id: &str, data: Value) -> u64 {
        let r = self
            .server
            .client
            .post(self.server.url("/api/commands"))
            .bearer_auth(&self.token)
            .json(&json!({ "type": command_type, "aggregate_id": id, "data": data }))
            .send()
            .await
            .expect("POST /api/commands");
        let status = r.status();
        let body: Value = r.json().await.expect("command answer");
        assert_eq!(status, 200, "{command_type} {id}: {body}");
        body["position"].as_u64().expect("position")
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = self
            .server
            .client
            .get(self.server.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.expect("JSON")
    }

    async fn head(&self) -> u64 {
        self.get_json("/api/events?limit=1").await["head"]
            .as_u64()
            .expect("head")
    }

    /// Opens `path` on a new connection (`reuse`: after a first request on it,
    /// so hyper serves the stream), as `auth` (a header line) with `extra` headers.
    async fn open_as(&self, path: &str, auth: &str, extra: &str, reuse: bool) -> Opened {
        let (opened, served_by_hyper) = self.open_raw(path, auth, extra, reuse).await;
        assert_eq!(
            served_by_hyper, reuse,
            "{path}: served by the path under test ({:?})",
            opened.headers
        );
        opened
    }

    /// [`Self::open_as`], and whether hyper answered (it adds `date`; herald's
    /// own writer does not).
    async fn open_raw(&self, path: &str, auth: &str, extra: &str, reuse: bool) -> (Opened, bool) {
        let stream = tokio::net::TcpStream::connect(self.addr).await.expect("connect");
        if reuse {
            let health = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
            write_all(&stream, health.as_bytes()).await.expect("write");
            let (status, headers, rest) = read_head(&stream).await;
            assert_eq!(status, 200);
            let length: usize = header(&headers, "content-length")
                .expect("length")
                .parse()
                .expect("a number");
            let mut have = rest.len();
            let mut buf = [0u8; 1024];
            while have < length {
                have += read_some(&stream, &mut buf).await.expect("read");
            }
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}{extra}Accept: text/event-stream\r\n\r\n",
            self.addr
        );
        write_all(&stream, request.as_bytes()).await.expect("write");
        let (status, headers, rest) = read_head(&stream).await;
        let served_by_hyper = header(&headers, "date").is_some();
        let opened = Opened {
            status,
            headers,
            raw: RawStream::new(stream, &rest),
        };
        (opened, served_by_hyper)
    }

    /// [`Self::open_as`] with the operator token and an optional `Last-Event-ID`.
    async fn open(&self, path: &str, last_event_id: Option<u64>, reuse: bool) -> Opened {
        let auth = format!("Authorization: Bearer {}\r\n", self.token);
        let extra = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        self.open_as(path, &auth, &extra, reuse).await
    }

    /// [`Self::open`], asserting 200 and the stream's headers; past its `retry:`.
    async fn subscribe(&self, path: &str, last_event_id: Option<u64>, reuse: bool) -> RawStream {
        let mut opened = self.open(path, last_event_id, reuse).await;
        let problem = opened.problem().await;
        assert_eq!(opened.status, 200, "GET {path}: {problem}");
        opened.assert_sse_headers();
        opened.raw.expect_retry().await;
        opened.raw
    }
}

struct Opened {
    status: u16,
    headers: Vec<(String, String)>,
    raw: RawStream,
}

impl Opened {
    fn assert_sse_headers(&self) {
        assert_eq!(header(&self.headers, "content-type"), Some("text/event-stream"));
        assert_eq!(header(&self.headers, "cache-control"), Some("no-cache, no-transform"));
        assert_eq!(header(&self.headers, "connection"), Some("close"));
        assert_eq!(header(&self.headers, "transfer-encoding"), Some("chunked"));
    }

    /// The problem+json body of a refusal (read until the connection closes).
    async fn problem(&mut self) -> Value {
        if self.status == 200 {
            return Value::Null;
        }
        assert!(
            header(&self.headers, "content-type").is_some_and(|v| v.starts_with("application/problem+json")),
            "{:?}",
            self.headers
        );
        let length: usize = header(&self.headers, "content-length")
            .expect("a length")
            .parse()
            .expect("a number");
        let mut body = std::mem::take(&mut self.raw.body.buf);
        let mut buf = [0u8; 4096];
        while body.len() < length {
            let n = tokio::time::timeout(WAIT, read_some(&self.raw.stream, &mut buf))
                .await
                .expect("the body arrives")
                .unwrap_or(0);
            assert!(n > 0, "the connection closed before the body");
            body.extend_from_slice(&buf[..n]);
        }
        serde_json::from_slice(&body).expect("problem JSON")
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP and SSE
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    retry: Option<String>,
}

impl Frame {
    fn id(&self) -> u64 {
        self.id
            .as_deref()
            .unwrap_or_else(|| panic!("a message with an id: {self:?}"))
            .parse()
            .expect("a numeric id")
    }

    fn event(&self) -> &str {
        self.event.as_deref().unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data")).expect("data is JSON")
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Frame(Frame),
    Comment(String),
}

#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    current: Frame,
    has_field: bool,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<Item>) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let line = std::str::from_utf8(&self.buf[start..start + nl]).expect("SSE is UTF-8");
            start += nl + 1;
            if line.is_empty() {
                if self.has_field {
                    out.push_back(Item::Frame(std::mem::take(&mut self.current)));
                    self.has_field = false;
                }
                continue;
            }
            if let Some(comment) = line.strip_prefix(':') {
                out.push_back(Item::Comment(comment.trim().to_owned()));
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            let value = Some(value.to_owned());
            match field {
                "id" => self.current.id = value,
                "event" => self.current.event = value,
                "retry" => self.current.retry = value,
                "data" => {
                    assert!(self.current.data.is_none(), "one data line per message: {line:?}");
                    self.current.data = value;
                }
                other => panic!("unexpected SSE field {other:?} in {line:?}"),
            }
            self.has_field = true;
        }
        self.buf.drain(..start);
    }
}

/// An incremental decoder of a chunked body.
#[derive(Default)]
struct Chunked {
    buf: Vec<u8>,
    left: Option<usize>,
    in_trailer: bool,
    done: bool,
}

impl Chunked {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.buf.extend_from_slice(bytes);
        let mut i = 0;
        while !self.done {
            if self.in_trailer {
                let Some(nl) = find_crlf(&self.buf[i..]) else { break };
                self.done = nl == 0;
                i += nl + 2;
                continue;
            }
            match self.left {
                None => {
                    let Some(nl) = find_crlf(&self.buf[i..]) else { break };
                    let line = std::str::from_utf8(&self.buf[i..i + nl]).expect("chunk size line");
                    let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
                    i += nl + 2;
                    if size == 0 {
                        self.in_trailer = true;
                    } else {
                        self.left = Some(size);
                    }
                }
                Some(0) => {
                    if self.buf.len() - i < 2 {
                        break;
                    }
                    assert_eq!(&self.buf[i..i + 2], b"\r\n");
                    i += 2;
                    self.left = None;
                }
                Some(n) => {
                    let take = n.min(self.buf.len() - i);
                    if take == 0 {
                        break;
                    }
                    out.extend_from_slice(&self.buf[i..i + take]);
                    i += take;
                    self.left = Some(n - take);
                }
            }
        }
        self.buf.drain(..i);
    }
}

async fn read_some(stream: &tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

async fn write_all(stream: &tokio::net::TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

async fn read_head(stream: &tokio::net::TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = tokio::time::timeout(WAIT, read_some(stream, &mut chunk))
            .await
            .expect("the response head arrives")
            .expect("read");
        assert!(n > 0, "the connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..end]).expect("head is text").to_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, buf[end + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A stream read from a raw socket, after its response head.
struct RawStream {
    stream: tokio::net::TcpStream,
    body: Chunked,
    parser: SseParser,
    items: VecDeque<Item>,
}

impl RawStream {
    fn new(stream: tokio::net::TcpStream, rest: &[u8]) -> Self {
        let mut raw = RawStream {
            stream,
            body: Chunked::default(),
            parser: SseParser::default(),
            items: VecDeque::new(),
        };
        raw.feed(rest);
        raw
    }

    fn feed(&mut self, bytes: &[u8]) {
        let mut decoded = Vec::new();
        self.body.feed(bytes, &mut decoded);
        self.parser.feed(&decoded, &mut self.items);
    }

    /// The next item; `None` when the body ended or the connection closed.
    async fn next(&mut self) -> Option<Item> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(item) = self.items.pop_front() {
                return Some(item);
            }
            if self.body.done {
                return None;
            }
            let n = tokio::time::timeout(WAIT, read_some(&self.stream, &mut buf))
                .await
                .expect("the stream goes on or ends in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.feed(&buf[..n]);
        }
    }

    async fn expect_retry(&mut self) {
        match self.next().await {
            Some(Item::Frame(f)) => assert!(f.retry.is_some() && f.data.is_none(), "retry first: {f:?}"),
            other => panic!("expected retry first, got {other:?}"),
        }
    }

    /// The next message (keep-alive comments skipped); panics when none comes
    /// within [`WAIT`].
    async fn frame(&mut self) -> Frame {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no message within {WAIT:?} (only keep-alives)"
            );
            match self.next().await {
                Some(Item::Frame(f)) => return f,
                Some(Item::Comment(c)) => assert_eq!(c, "keep-alive", "a comment before a frame"),
                None => panic!("the stream ended while a message was expected"),
            }
        }
    }

    /// Reads to the end: asserts no message comes first, and returns the
    /// comments (the last is why herald ended it); the body must end with its
    /// last chunk and the connection close.
    async fn end(&mut self) -> Vec<String> {
        let mut comments = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Some(item) = self.next().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream did not end within {WAIT:?}: {comments:?}"
            );
            match item {
                Item::Comment(c) => comments.push(c),
                Item::Frame(f) => panic!("a message while the stream was to end: {f:?}"),
            }
        }
        assert!(self.body.done, "the body ended with its last chunk");
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, read_some(&self.stream, &mut buf))
            .await
            .expect("the connection closes")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing after the last chunk; the connection closes");
        comments
    }
}

// ---------------------------------------------------------------------------
// State first, then each change
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_sends_the_state_with_its_position_then_each_change() {
    let h = start(config()).await;
    for reuse in [false, true] {
        let id = format!("web-{reuse}");
        let p = h.command("StartDeployment", &id, json!({ "service": "web" })).await;
        let view = h.get_json(&format!("/api/deployments/{id}?min_position={p}")).await;

        let mut one = h.subscribe(&format!("/api/deployments/{id}/live"), None, reuse).await;
        let first = one.frame().await;
        assert_eq!(first.event(), "deployment");
        assert!(
            first.id() >= p,
            "the id {} is the position the state reflects (≥ {p})",
            first.id()
        );
        assert_eq!(first.json(), view);

        let mut list = h.subscribe("/api/deployments/live", None, reuse).await;
        let snapshot = list.frame().await;
        assert_eq!(snapshot.event(), "snapshot");
        let body = snapshot.json();
        assert_eq!(snapshot.id(), body["position"].as_u64().expect("position"));
        assert!(body["deployments"].as_array().expect("list").contains(&view));
        assert_eq!(
            body,
            h.get_json(&format!("/api/deployments?min_position={}", snapshot.id()))
                .await,
            "the snapshot is the list"
        );

        let p = h
            .command(
                "ReportDeploymentProgress",
                &id,
                json!({ "percent": 40, "message": "half" }),
            )
            .await;
        for stream in [&mut one, &mut list] {
            let f = stream.frame().await;
            assert_eq!(f.event(), "deployment", "{f:?}");
            assert!(f.id() >= p, "{f:?}");
            let state = f.json();
            assert_eq!((&state["id"], &state["progress"]), (&json!(id), &json!(40)));
            assert_eq!(
                state,
                h.get_json(&format!("/api/deployments/{id}?min_position={p}")).await
            );
        }
        // `?min_position`: the first state reflects at least that position
        // (a deployment started just now is there, not a 404).
        let fresh = format!("new-{reuse}");
        let p = h
            .command_nowait("StartDeployment", &fresh, json!({ "service": "s" }))
            .await;
        let mut waited = h
            .subscribe(&format!("/api/deployments/{fresh}/live?min_position={p}"), None, reuse)
            .await;
        let f = waited.frame().await;
        assert!(f.id() >= p, "{f:?}");
        assert_eq!(f.json()["id"], fresh);
        drop(waited);
        let f = list.frame().await;
        assert_eq!(f.json()["id"], fresh, "the list hears of it");
        // Another deployment's change reaches the list, not the other stream:
        // the next message of the single stream is its own next change.
        let other = format!("other-{reuse}");
        h.command("StartDeployment", &other, json!({ "service": "api" })).await;
        let f = list.frame().await;
        assert_eq!(f.json()["id"], other);
        h.command("SucceedDeployment", &id, json!({})).await;
        let f = one.frame().await;
        assert_eq!(
            (f.json()["id"].clone(), f.json()["status"].clone()),
            (json!(id), json!("succeeded"))
        );
        let f = list.frame().await;
        assert_eq!(f.json()["status"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_is_refused_before_it_starts() {
    let h = start(config()).await;
    h.command("StartDeployment", "here", json!({ "service": "s" })).await;
    for reuse in [false, true] {
        for (path, last_event_id, status) in [
            ("/api/deployments/nope/live", None, 404),
            ("/api/deployments/not%20an%20id/live", None, 400),
            ("/api/deployments/%ff/live", None, 400),
            ("/api/deployments/here/live?limit=3", None, 400),
            ("/api/deployments/live?status=bogus", None, 400),
            ("/api/deployments/live?what=1", None, 400),
            ("/api/deployments/here/live", Some("abc"), 400),
            ("/api/deployments/live", Some("-1"), 400),
        ] {
            let auth = format!("Authorization: Bearer {}\r\n", h.token);
            let extra = last_event_id
                .map(|id| format!("Last-Event-ID: {id}\r\n"))
                .unwrap_or_default();
            // `%ff` is not UTF-8 once decoded: the fast path hands it to the router.
            let (mut opened, by_hyper) = h.open_raw(path, &auth, &extra, reuse).await;
            assert_eq!(
                by_hyper,
                reuse || path.contains("%ff"),
                "{path}: answered by the path under test"
            );
            assert_eq!(opened.status, status, "{path} (reuse {reuse})");
            assert_eq!(opened.problem().await["status"], status, "{path}");
        }
        let mut opened = h.open_as("/api/deployments/here/live", "", "", reuse).await;
        assert_eq!(opened.status, 401, "no credential");
        assert_eq!(opened.problem().await["status"], 401);
    }
}

// ---------------------------------------------------------------------------
// Resume: the current state once if it changed, nothing if not, never twice
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_single_resource_sends_its_state_once_if_it_changed_and_nothing_if_not() {
    let h = start(config()).await;
    for reuse in [false, true] {
        let id = format!("d-{reuse}");
        let path = format!("/api/deployments/{id}/live");
        h.command("StartDeployment", &id, json!({ "service": "s" })).await;
        let mut s = h.subscribe(&path, None, reuse).await;
        let seen = s.frame().await.id();
        drop(s);

        // Unchanged since: nothing until its next change, which comes first.
        let mut s = h.subscribe(&path, Some(seen), reuse).await;
        let p = h
            .command("ReportDeploymentProgress", &id, json!({ "percent": 10 }))
            .await;
        let f = s.frame().await;
        assert_eq!(f.json()["progress"], 10, "the change is the first message: {f:?}");
        assert!(f.id() >= p);
        let seen = f.id();
        drop(s);

        // Changed while away: its current state first, once, then live.
        h.command("ReportDeploymentProgress", &id, json!({ "percent": 20 }))
            .await;
        let p = h
            .command("ReportDeploymentProgress", &id, json!({ "percent": 30 }))
            .await;
        h.get_json(&format!("/api/deployments/{id}?min_position={p}")).await;
        let mut s = h.subscribe(&path, Some(seen), reuse).await;
        let f = s.frame().await;
        assert_eq!(f.json()["progress"], 30, "the current state, not each change: {f:?}");
        assert!(f.id() >= p);
        let p = h
            .command("ReportDeploymentProgress", &id, json!({ "percent": 50 }))
            .await;
        let f = s.frame().await;
        assert_eq!(f.json()["progress"], 50, "the state is not sent twice: {f:?}");
        assert!(f.id() >= p);
        drop(s);

        // Resumed beyond the log's end (a restored store): the state, and where it starts.
        let beyond = h.head().await + 1000;
        let mut opened = h.open(&path, Some(beyond), reuse).await;
        assert_eq!(opened.status, 200);
        opened.raw.expect_retry().await;
        let f = opened.raw.frame().await;
        assert_eq!(f.json()["progress"], 50);
        assert_eq!(
            header(&opened.headers, "last-event-id"),
            Some(f.id().to_string().as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_list_sends_what_changed_since_once_then_live() {
    let h = start(config()).await;
    for reuse in [false, true] {
        let (a, b) = (format!("a-{reuse}"), format!("b-{reuse}"));
        h.command("StartDeployment", &a, json!({ "service": "s" })).await;
        h.command("StartDeployment", &b, json!({ "service": "s" })).await;
        let mut s = h.subscribe("/api/deployments/live", None, reuse).await;
        let snapshot = s.frame().await;
        assert_eq!(snapshot.event(), "snapshot");
        let seen = snapshot.id();
        drop(s);

        // Nothing changed: no snapshot, nothing; the next change comes first.
        let mut s = h.subscribe("/api/deployments/live", Some(seen), reuse).await;
        let p = h.command("ReportDeploymentProgress", &b, json!({ "percent": 5 })).await;
        let f = s.frame().await;
        assert_eq!((f.event(), f.json()["id"].clone()), ("deployment", json!(b)), "{f:?}");
        assert!(f.id() >= p);
        let seen = f.id();
        drop(s);

        // Changed while away: each changed deployment once, in its current state.
        h.command("ReportDeploymentProgress", &a, json!({ "percent": 7 })).await;
        let pa = h.command("ReportDeploymentProgress", &a, json!({ "percent": 8 })).await;
        let p = h.command("ReportDeploymentProgress", &b, json!({ "percent": 9 })).await;
        h.get_json(&format!("/api/deployments?min_position={p}")).await;
        let mut s = h.subscribe("/api/deployments/live", Some(seen), reuse).await;
        let mut got = HashMap::new();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let f = s.frame().await;
            assert_eq!(f.event(), "deployment", "{f:?}");
            ids.push(f.id());
            let view = f.json();
            let previous = got.insert(view["id"].as_str().expect("id").to_owned(), view["progress"].clone());
            assert_eq!(previous, None, "a deployment came twice: {view}");
        }
        assert_eq!(got, HashMap::from([(a.clone(), json!(8)), (b.clone(), json!(9))]));
        // Each with the position of its own last change, in that order: a
        // client cut off after the first resumes with the second.
        assert_eq!(ids, [pa, p]);
        let p = h
            .command("ReportDeploymentProgress", &a, json!({ "percent": 60 }))
            .await;
        let f = s.frame().await;
        assert_eq!(
            (f.json()["id"].clone(), f.json()["progress"].clone()),
            (json!(a), json!(60)),
            "{f:?}"
        );
        assert!(f.id() >= p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_opened_while_changes_flow_never_get_a_state_twice() {
    let h = Arc::new(start(config()).await);
    const CHANGES: u64 = 40;
    let mut before = 0;
    for id in ["flow-a", "flow-b"] {
        before = h.command("StartDeployment", id, json!({ "service": "s" })).await;
    }
    let writer = {
        let h = h.clone();
        tokio::spawn(async move {
            for percent in 1..=CHANGES {
                for id in ["flow-a", "flow-b"] {
                    h.command_nowait("ReportDeploymentProgress", id, json!({ "percent": percent }))
                        .await;
                }
            }
        })
    };
    // Streams opened at different moments, fresh and resumed (from before the
    // changes: there is always something to send first), on both paths; each
    // reads until it has seen the last change of what it follows.
    let mut readers = Vec::new();
    for i in 0..12u64 {
        let reuse = i % 2 == 1;
        let list = i % 4 < 2;
        let resume = (i % 3 == 0).then_some(before);
        let path = if list {
            "/api/deployments/live"
        } else {
            "/api/deployments/flow-a/live"
        };
        let mut s = h.subscribe(path, resume, reuse).await;
        let first = s.frame().await;
        readers.push(tokio::spawn(async move {
            let mut progress: HashMap<String, u64> = HashMap::new();
            let mut last_id = 0;
            let mut frame = Some(first);
            loop {
                let f = match frame.take() {
                    Some(f) => f,
                    None => s.frame().await,
                };
                assert!(f.id() >= last_id, "{path}: ids go back: {f:?}");
                last_id = f.id();
                let views = match f.event() {
                    "snapshot" => f.json()["deployments"].as_array().expect("list").clone(),
                    "deployment" => vec![f.json()],
                    other => panic!("{path}: unexpected {other}"),
                };
                for view in views {
                    let id = view["id"].as_str().expect("id").to_owned();
                    let p = view["progress"].as_u64().expect("progress");
                    if let Some(before) = progress.insert(id.clone(), p) {
                        assert!(
                            p > before,
                            "{path}: {id} at {p} after {before}: a state twice or out of order"
                        );
                    }
                }
                let want = if list { 2 } else { 1 };
                if progress.values().filter(|p| **p == CHANGES).count() == want {
                    return;
                }
            }
        }));
    }
    writer.await.expect("writer");
    for r in readers {
        r.await.expect("a reader saw every state once, in order");
    }
}

/// The race the subscription closes: a batch published after a stream
/// subscribed may hold changes its first state already has. Such batches are
/// made here (encoded as the runner encodes them), so the race is not left to
/// chance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_the_first_state_already_has_is_not_sent_again() {
    let h = start(config()).await;
    for reuse in [false, true] {
        let id = format!("dup-{reuse}");
        let started = h.command("StartDeployment", &id, json!({ "service": "s" })).await;
        let mut streams = Vec::new();
        let mut position = 0;
        for path in [
            format!("/api/deployments/{id}/live"),
            "/api/deployments/live".to_owned(),
        ] {
            let mut s = h.subscribe(&path, None, reuse).await;
            let first = s.frame().await;
            assert!(first.id() >= started);
            position = position.max(first.id());
            streams.push(s);
        }
        let batch = |changed_at: u64, at: u64, what: &str| {
            herald_server::consumers::encode(
                "deployments",
                &ChangedPage {
                    resources: vec![ChangedResource {
                        kind: "deployment",
                        key: id.clone(),
                        changed_at,
                        event: "deployment",
                        json: format!("{{\"id\":\"{id}\",\"what\":\"{what}\"}}"),
                        class: Some("in_progress"),
                    }],
                    position: at,
                    checkpoint: at,
                },
            )
        };
        let live = &h.server.state.live.resources;
        // Already in every first state (changed at or before its position)…
        live.send("deployment", Arc::new(batch(started, position, "stale")))
            .expect("subscribers");
        // …and a change after it.
        live.send("deployment", Arc::new(batch(position + 1, position + 1, "fresh")))
            .expect("subscribers");
        for s in &mut streams {
            let f = s.frame().await;
            assert_eq!(f.json()["what"], "fresh", "a change the state had came again: {f:?}");
            assert_eq!(f.id(), position + 1);
        }
    }
}

// ---------------------------------------------------------------------------
// The status filter
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filtered_list_sends_a_removal_when_a_deployment_leaves_the_status() {
    let h = start(config()).await;
    for reuse in [false, true] {
        let (x, y) = (format!("x-{reuse}"), format!("y-{reuse}"));
        h.command("StartDeployment", &x, json!({ "service": "s" })).await;
        let done = format!("done-{reuse}");
        h.command("StartDeployment", &done, json!({ "service": "s" })).await;
        h.command("SucceedDeployment", &done, json!({})).await;
        let mut s = h
            .subscribe("/api/deployments/live?status=in_progress", None, reuse)
            .await;
        let snapshot = s.frame().await;
        assert_eq!(snapshot.event(), "snapshot");
        let listed = snapshot.json();
        assert_eq!(
            listed,
            h.get_json(&format!(
                "/api/deployments?status=in_progress&min_position={}",
                snapshot.id()
            ))
            .await
        );
        let ids: Vec<&str> = listed["deployments"]
            .as_array()
            .expect("list")
            .iter()
            .map(|v| v["id"].as_str().expect("id"))
            .collect();
        assert!(ids.contains(&x.as_str()) && !ids.contains(&done.as_str()), "{ids:?}");

        h.command("StartDeployment", &y, json!({ "service": "s" })).await;
        let f = s.frame().await;
        assert_eq!((f.event(), f.json()["id"].clone()), ("deployment", json!(y)));
        let seen = f.id();
        let p = h.command("FailDeployment", &x, json!({ "reason": "boom" })).await;
        let f = s.frame().await;
        assert_eq!(f.event(), "deployment_removed", "{f:?}");
        assert_eq!(f.data.as_deref(), Some(format!("{{\"id\":\"{x}\"}}").as_str()));
        assert!(f.id() >= p);
        // Still in the status: a plain change.
        h.command("ReportDeploymentProgress", &y, json!({ "percent": 3 })).await;
        let f = s.frame().await;
        assert_eq!((f.event(), f.json()["progress"].clone()), ("deployment", json!(3)));
        drop(s);

        // Resumed from before the failure: the removal, and y's current state.
        let mut s = h
            .subscribe("/api/deployments/live?status=in_progress", Some(seen), reuse)
            .await;
        let mut got = HashMap::new();
        for _ in 0..2 {
            let f = s.frame().await;
            let key = match f.event() {
                "deployment_removed" => format!("removed {}", f.json()["id"].as_str().expect("id")),
                "deployment" => format!("{} at {}", f.json()["id"].as_str().expect("id"), f.json()["progress"]),
                other => panic!("unexpected {other}"),
            };
            got.insert(key, f.id());
        }
        let mut keys: Vec<_> = got.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, vec![format!("removed {x}"), format!("{y} at 3")]);
        // And with another status, the other way round.
        let mut failed = h
            .subscribe("/api/deployments/live?status=failed", Some(seen), reuse)
            .await;
        let mut events = Vec::new();
        for _ in 0..2 {
            let f = failed.frame().await;
            events.push((f.event().to_owned(), f.json()["id"].as_str().expect("id").to_owned()));
        }
        events.sort();
        assert_eq!(
            events,
            vec![
                ("deployment".to_owned(), x.clone()),
                ("deployment_removed".to_owned(), y.clone())
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_list_resumed_after_more_than_a_thousand_changes_gets_a_snapshot() {
    let h = start(config()).await;
    h.command("StartDeployment", "first", json!({ "service": "s" })).await;
    let mut s = h.subscribe("/api/deployments/live", None, false).await;
    let seen = s.frame().await.id();
    drop(s);
    for i in 0..1001 {
        h.server
            .state
            .store
            .append(AppendRequest {
                stream: format!("deployment-many-{i}"),
                expected: ExpectedVersion::NoStream,
                events: vec![NewEvent {
                    event_type: "DeploymentStarted".into(),
                    schema: 1,
                    data: json!({ "service": "s" }),
                }],
                actor: Actor::system("resource-tests"),
                command_id: format!("many-{i}"),
                correlation_id: format!("many-{i}"),
                idempotency_fingerprint: None,
            })
            .await
            .expect("append");
    }
    let head = h.head().await;
    h.get_json(&format!("/api/deployments?min_position={head}")).await;
    for reuse in [false, true] {
        let mut s = h.subscribe("/api/deployments/live", Some(seen), reuse).await;
        let f = s.frame().await;
        assert_eq!(
            f.event(),
            "snapshot",
            "more than 1000 changed: a snapshot, not each of them"
        );
        assert_eq!(f.json()["position"].as_u64(), Some(f.id()));
        assert!(f.id() >= head);
    }
}

// ---------------------------------------------------------------------------
// Limits and endings
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resource_streams_count_against_the_stream_limit() {
    let h = start(ServerConfig {
        stream_limit: 2,
        ..config()
    })
    .await;
    h.command("StartDeployment", "limited", json!({ "service": "s" })).await;
    let a = h.subscribe("/api/deployments/limited/live", None, false).await;
    let b = h.subscribe("/api/events/live", None, true).await;
    for reuse in [false, true] {
        for path in ["/api/deployments/live", "/api/deployments/limited/live"] {
            let mut opened = h.open(path, None, reuse).await;
            assert_eq!(opened.status, 429, "{path}, reuse {reuse}");
            assert_eq!(opened.problem().await["status"], 429);
        }
    }
    // A closed stream frees its slot.
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let opened = h.open("/api/deployments/live", None, false).await;
        if opened.status == 200 {
            break;
        }
        assert_eq!(opened.status, 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed stream kept its slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_the_token_ends_its_resource_streams_with_a_comment() {
    let h = start(config()).await;
    h.command("StartDeployment", "r", json!({ "service": "s" })).await;
    let admin = support::mint(&h.server.state, "resource-tests", "admin", Role::Admin)
        .await
        .secret;
    for reuse in [false, true] {
        let viewer = support::mint(&h.server.state, "resource-tests", &format!("v-{reuse}"), Role::Viewer).await;
        let auth = format!("Authorization: Bearer {}\r\n", viewer.secret);
        let mut streams = Vec::new();
        for path in ["/api/deployments/live", "/api/deployments/r/live"] {
            let mut opened = h.open_as(path, &auth, "", reuse).await;
            assert_eq!(opened.status, 200);
            opened.raw.expect_retry().await;
            opened.raw.frame().await;
            streams.push(opened.raw);
        }
        let r = h
            .server
            .client
            .delete(h.server.url(&format!("/api/tokens/{}", viewer.record.id)))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("DELETE token");
        assert_eq!(r.status(), 204);
        for s in &mut streams {
            let comments = s.end().await;
            assert!(comments.last().is_some_and(|c| c.contains("revoked")), "{comments:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logging_out_ends_the_sessions_resource_streams_with_a_comment() {
    let h = start(config()).await;
    h.command("StartDeployment", "s", json!({ "service": "s" })).await;
    let mut alice = Person::new("alice");
    h.server.register_ok(&mut alice, None).await;
    for reuse in [false, true] {
        if reuse {
            let r = h.server.login(&mut alice).await;
            assert_eq!(r.status(), 200, "logged in again");
        }
        let cookie = format!("Cookie: {}\r\n", alice.cookie.as_deref().expect("a session"));
        let mut opened = h.open_as("/api/deployments/s/live", &cookie, "", reuse).await;
        let problem = opened.problem().await;
        assert_eq!(opened.status, 200, "{problem}");
        opened.raw.expect_retry().await;
        assert_eq!(opened.raw.frame().await.event(), "deployment");
        let r = h
            .server
            .send_as(reqwest::Method::POST, "/api/auth/logout", &alice)
            .await;
        assert_eq!(r.status(), 204);
        let comments = opened.raw.end().await;
        assert!(
            comments.last().is_some_and(|c| c.contains("logged out")),
            "{comments:?}"
        );
    }
}

/// One thread: the test's loop below runs with no stream task in between
/// (so the API's own threads are off: they would read meanwhile).
#[tokio::test]
async fn a_stream_that_falls_behind_is_ended_with_a_comment() {
    let h = start(ServerConfig {
        api_threads: 0,
        ..config()
    })
    .await;
    h.command("StartDeployment", "lag", json!({ "service": "s" })).await;
    let mut streams = Vec::new();
    for reuse in [false, true] {
        let mut s = h.subscribe("/api/deployments/live", None, reuse).await;
        assert_eq!(s.frame().await.event(), "snapshot");
        streams.push(s);
    }
    // More batches than the channel holds, before any stream reads one.
    for _ in 0..2000 {
        let _ = h.server.state.live.resources.send(
            "deployment",
            Arc::new(ResourceBatch::new(
                "deployments",
                u64::MAX - 1,
                Bytes::new(),
                Vec::new(),
            )),
        );
    }
    for s in &mut streams {
        let comments = s.end().await;
        assert!(
            comments.last().is_some_and(|c| c.contains("too far behind")),
            "{comments:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The posts domain's streams, through the same implementation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posts_and_feeds_stream_their_state_and_an_edit_that_drops_a_tag_leaves_that_feed() {
    let h = start(config()).await;
    for reuse in [false, true] {
        let id = format!("p-{reuse}");
        let tag = if reuse { "release-b" } else { "release-a" };
        // A feed no post has yet: an empty state, and the stream goes on.
        let mut feed = h.subscribe(&format!("/api/feeds/{tag}/live"), None, reuse).await;
        let f = feed.frame().await;
        assert_eq!(f.event(), "feed", "{f:?}");
        assert_eq!(f.json()["post_count"], 0, "{f:?}");
        let mut feeds = h.subscribe("/api/feeds/live", None, reuse).await;
        assert_eq!(feeds.frame().await.event(), "feeds");

        let created = h
            .command_nowait(
                "CreatePost",
                &id,
                json!({"title": "Friday release", "content": "We shipped.", "tags": [tag.to_uppercase(), "ops"]}),
            )
            .await;
        let f = feed.frame().await;
        assert_eq!(f.event(), "feed");
        assert!(f.id() >= created, "{f:?}");
        assert_eq!(f.json()["post_count"], 1, "{f:?}");
        assert_eq!(f.json()["posts"][0]["id"], id.as_str(), "{f:?}");
        assert_eq!(f.json()["position"], f.id(), "the state says the position it reflects");
        let f = feeds.frame().await;
        assert_eq!(f.event(), "feeds");
        let list = f.json();
        let listed: Vec<&str> = list["feeds"]
            .as_array()
            .expect("feeds")
            .iter()
            .filter_map(|f| f["tag"].as_str())
            .collect();
        assert!(listed.contains(&tag) && listed.contains(&"ops"), "{listed:?}");

        let post_path = format!("/api/posts/{id}/live");
        let mut post = h
            .subscribe(&format!("{post_path}?min_position={created}"), None, reuse)
            .await;
        let f = post.frame().await;
        assert_eq!(f.event(), "post");
        assert_eq!(f.json()["tags"], json!([tag, "ops"]));
        let seen = f.id();

        // The edit takes the tag away: the feed's next state no longer has the post.
        let edited = h.command_nowait("UpdatePost", &id, json!({"tags": ["ops"]})).await;
        let f = feed.frame().await;
        assert!(f.id() >= edited, "{f:?}");
        assert_eq!(f.json()["post_count"], 0, "{f:?}");
        assert_eq!(f.json()["posts"], json!([]), "{f:?}");
        let f = post.frame().await;
        assert_eq!(f.json()["tags"], json!(["ops"]), "{f:?}");
        let after_edit = f.id();
        drop(post);

        // Resumed where it was: nothing until the next change, which comes once.
        let mut post = h.subscribe(&post_path, Some(after_edit), reuse).await;
        let retitled = h
            .command_nowait("UpdatePost", &id, json!({"title": "Friday release, take two"}))
            .await;
        let f = post.frame().await;
        assert!(f.id() >= retitled && f.id() > seen, "{f:?}");
        assert_eq!(
            f.json()["title"],
            "Friday release, take two",
            "the change is the first message: {f:?}"
        );
        drop(post);

        // Resumed from before the edits: the current state, once.
        let mut post = h.subscribe(&post_path, Some(seen), reuse).await;
        let f = post.frame().await;
        assert_eq!(f.json()["title"], "Friday release, take two", "{f:?}");
        assert_eq!(f.json()["tags"], json!(["ops"]), "{f:?}");
    }
}
