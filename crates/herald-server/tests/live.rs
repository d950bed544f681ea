//! Real-socket tests of the live streams (API.md §6) and of commands under
//! concurrency (§4): the server runs in process on `127.0.0.1:0` through
//! `herald_server::run`, clients talk HTTP over TCP (`reqwest`, or a raw
//! `TcpStream` where the test must control reading).
//!
//! No test sleeps for correctness: every wait is a bounded poll or a bounded
//! read, and no test asserts on timing.

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_core::auth::Role;
use herald_core::envelope::Actor;
use herald_core::store::{AppendRequest, ExpectedVersion, NewEvent};
use herald_server::sse::Sse as SseFraming;
use herald_server::{AppState, ServerConfig};
use herald_store::credentials::SqliteCredentials;
use herald_store::sqlite::{SqliteConfig, SqliteStore};
use serde_json::{Value, json};
use support::Running;
use tempfile::TempDir;

/// The bound on any single wait (a read, a poll).
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

struct TestServer {
    addr: SocketAddr,
    base: String,
    state: AppState,
    client: reqwest::Client,
    /// An operator token.
    token: String,
    running: Running,
    _dir: TempDir,
}

fn config() -> ServerConfig {
    ServerConfig {
        command_rate: 0,
        keepalive: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

async fn start(config: ServerConfig, live_capacity: usize) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open_with(
        dir.path(),
        Arc::new(SseFraming),
        SqliteConfig {
            live_capacity,
            ..SqliteConfig::default()
        },
    )
    .expect("open store");
    let state = AppState::new(
        store,
        SqliteCredentials::open(dir.path()).expect("open credentials"),
        herald_store::accounts::SqliteAccounts::open(dir.path()).expect("open accounts"),
        dir.path(),
        config,
    )
    .expect("state");
    let (_, token) = mint(&state, "operator-1", Role::Operator).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let running = Running::spawn(state.clone(), listener);
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let server = TestServer {
        addr,
        base: format!("http://{addr}"),
        state,
        client,
        token,
        running,
        _dir: dir,
    };
    poll_until("the server answers /healthz", || async {
        matches!(server.client.get(server.url("/healthz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    server
}

/// Mints a token in process; returns (id, secret).
async fn mint(state: &AppState, name: &str, role: Role) -> (String, String) {
    let minted = support::mint(state, "live-tests", name, role).await;
    (minted.record.id, minted.secret)
}

/// Polls `check` (every 20 ms) until it holds; panics after [`WAIT`].
async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestServer {
    /// `count` large `LoadGenerated` events in one append to the new stream
    /// `stream` (also its command and correlation id), straight to the store.
    async fn append_load(&self, stream: &str, count: usize, blob: &str) {
        self.state
            .store
            .append(AppendRequest {
                stream: stream.to_owned(),
                expected: ExpectedVersion::NoStream,
                events: (0..count)
                    .map(|i| NewEvent {
                        event_type: "LoadGenerated".into(),
                        schema: 1,
                        data: json!({ "i": i, "blob": blob }),
                    })
                    .collect(),
                actor: Actor::system("load"),
                command_id: stream.to_owned(),
                correlation_id: stream.to_owned(),
                idempotency_fingerprint: None,
            })
            .await
            .expect("append");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn try_command_as(&self, token: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url("/api/commands"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST /api/commands");
        let status = r.status().as_u16();
        let text = r.text().await.expect("command body");
        (status, serde_json::from_str(&text).expect("command answer is JSON"))
    }

    /// Sends a command, asserting 200; returns the answer.
    async fn command(&self, command_type: &str, aggregate_id: &str, data: Value) -> Value {
        let body = json!({ "type": command_type, "aggregate_id": aggregate_id, "data": data });
        let (status, answer) = self.try_command_as(&self.token, &body).await;
        assert_eq!(status, 200, "{command_type} {aggregate_id}: {answer}");
        answer
    }

    /// The position an acknowledged command's answer reports.
    async fn command_position(&self, command_type: &str, aggregate_id: &str, data: Value) -> u64 {
        self.command(command_type, aggregate_id, data).await["position"]
            .as_u64()
            .expect("position")
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.expect("JSON body")
    }

    async fn head(&self) -> u64 {
        self.get_json("/api/events?limit=1").await["head"]
            .as_u64()
            .expect("head")
    }

    /// Every envelope `GET /api/events?<query>` pages through, as raw JSON text.
    async fn events(&self, query: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let r = self
                .client
                .get(self.url(&format!("/api/events?after={after}&limit=1000{query}")))
                .bearer_auth(&self.token)
                .send()
                .await
                .expect("GET /api/events");
            assert_eq!(r.status(), 200);
            let text = r.text().await.expect("events body");
            let page: Value = serde_json::from_str(&text).expect("events page is JSON");
            out.extend(raw_elements(&text, "events"));
            let next = page["next_after"].as_u64().expect("next_after");
            let head = page["head"].as_u64().expect("head");
            if next >= head {
                return out;
            }
            assert!(next > after, "paging made no progress at {after}");
            after = next;
        }
    }

    /// Opens an event stream; the caller checks the status.
    async fn open(&self, path: &str, token: Option<&str>, last_event_id: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(self.url(path)).header("accept", "text/event-stream");
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        tokio::time::timeout(WAIT, req.send())
            .await
            .expect("the stream's response head arrives")
            .expect("GET stream")
    }

    /// Opens an event stream with the operator token, asserting 200.
    async fn subscribe(&self, path: &str, last_event_id: Option<&str>) -> Sse {
        let r = self.open(path, Some(&self.token), last_event_id).await;
        assert_eq!(r.status(), 200, "GET {path}");
        Sse::new(r)
    }
}

// ---------------------------------------------------------------------------
// Server-Sent Events parsing
// ---------------------------------------------------------------------------

/// One SSE message block (fields up to a blank line).
#[derive(Debug, Default, Clone, PartialEq)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    retry: Option<String>,
}

impl Frame {
    fn is_retry_only(&self) -> bool {
        self.retry.is_some() && self.id.is_none() && self.event.is_none() && self.data.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Frame(Frame),
    /// A line starting with `:`, without the colon.
    Comment(String),
}

/// An incremental SSE parser: frames may be split anywhere across chunks.
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
            let mut line = &self.buf[start..start + nl];
            start += nl + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = std::str::from_utf8(line).expect("SSE is UTF-8");
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
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = Some(value.to_owned()),
                "retry" => self.current.retry = Some(value.to_owned()),
                "data" => match &mut self.current.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.current.data = Some(value.to_owned()),
                },
                other => panic!("unexpected SSE field {other:?} in line {line:?}"),
            }
            self.has_field = true;
        }
        self.buf.drain(..start);
    }
}

/// One event of `/api/events/live`.
#[derive(Debug, Clone)]
struct Event {
    position: u64,
    event_type: String,
    /// The `data:` line: the envelope as served.
    raw: String,
    envelope: Value,
}

fn event_of(frame: &Frame) -> Event {
    let raw = frame
        .data
        .clone()
        .unwrap_or_else(|| panic!("an event frame has data: {frame:?}"));
    let envelope: Value = serde_json::from_str(&raw).expect("data is an envelope");
    let position = envelope["position"].as_u64().expect("position");
    let id = frame
        .id
        .as_deref()
        .unwrap_or_else(|| panic!("an event frame has an id: {frame:?}"));
    assert_eq!(id, position.to_string(), "the id is the envelope's position");
    let event_type = envelope["type"].as_str().expect("type").to_owned();
    assert_eq!(frame.event.as_deref(), Some(event_type.as_str()), "event: is the type");
    Event {
        position,
        event_type,
        raw,
        envelope,
    }
}

/// A live stream read over `reqwest`.
struct Sse {
    response: reqwest::Response,
    parser: SseParser,
    items: VecDeque<Item>,
}

impl Sse {
    fn new(response: reqwest::Response) -> Self {
        Sse {
            response,
            parser: SseParser::default(),
            items: VecDeque::new(),
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("header text").to_owned())
    }

    /// The next item; `Ok(None)` when the body ended cleanly, `Err` when it broke off.
    async fn try_next(&mut self) -> Result<Option<Item>, reqwest::Error> {
        loop {
            if let Some(item) = self.items.pop_front() {
                return Ok(Some(item));
            }
            match self.response.chunk().await? {
                Some(bytes) => self.parser.feed(&bytes, &mut self.items),
                None => return Ok(None),
            }
        }
    }

    /// The next item, `None` at a clean end; panics on an error or after [`WAIT`].
    async fn next(&mut self) -> Option<Item> {
        tokio::time::timeout(WAIT, self.try_next())
            .await
            .expect("no SSE item arrived in time")
            .expect("the stream broke off")
    }

    /// The next frame that is more than a `retry:` (comments skipped).
    async fn next_frame(&mut self) -> Frame {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            // Keep-alives alone must not keep a test waiting forever.
            assert!(
                tokio::time::Instant::now() < deadline,
                "no frame within {WAIT:?} (only comments)"
            );
            match self.next().await {
                Some(Item::Frame(f)) if f.is_retry_only() => {}
                Some(Item::Frame(f)) => return f,
                Some(Item::Comment(_)) => {}
                None => panic!("the stream ended while a frame was expected"),
            }
        }
    }

    async fn next_event(&mut self) -> Event {
        event_of(&self.next_frame().await)
    }
}

// ---------------------------------------------------------------------------
// Raw JSON and raw HTTP helpers
// ---------------------------------------------------------------------------

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The index just past the JSON value starting at `i`.
fn end_of_value(b: &[u8], i: usize) -> usize {
    match b[i] {
        b'"' => {
            let mut j = i + 1;
            while b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            j + 1
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b[j] {
                    b'"' => {
                        j = end_of_value(b, j);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace() {
                j += 1;
            }
            j
        }
    }
}

/// The raw text of every element of the array under `key` of a JSON object.
fn raw_elements(body: &str, key: &str) -> Vec<String> {
    let b = body.as_bytes();
    let mut i = skip_ws(b, 0);
    assert_eq!(b[i], b'{', "a JSON object: {body}");
    i += 1;
    loop {
        i = skip_ws(b, i);
        assert_ne!(b[i], b'}', "no {key:?} in {body}");
        let key_end = end_of_value(b, i);
        let name: String = serde_json::from_str(&body[i..key_end]).expect("a key");
        i = skip_ws(b, key_end);
        assert_eq!(b[i], b':');
        i = skip_ws(b, i + 1);
        let value_end = end_of_value(b, i);
        if name == key {
            let mut out = Vec::new();
            let mut j = i + 1;
            loop {
                j = skip_ws(b, j);
                if b[j] == b']' {
                    return out;
                }
                let end = end_of_value(b, j);
                out.push(body[j..end].to_owned());
                j = skip_ws(b, end);
                if b[j] == b',' {
                    j += 1;
                }
            }
        }
        i = skip_ws(b, value_end);
        if b[i] == b',' {
            i += 1;
        }
    }
}

/// An incremental decoder of an HTTP/1.1 chunked body.
#[derive(Default)]
struct Chunked {
    buf: Vec<u8>,
    /// Bytes left in the current chunk; `None` while a size line is expected.
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
                    let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                        .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
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
                    assert_eq!(&self.buf[i..i + 2], b"\r\n", "a chunk ends with CRLF");
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

/// Reads what is there (at least one byte, 0 at EOF); the tokio build has no `io-util`.
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

/// A response head: status, lowercase headers, and the bytes read past it.
type Head = (u16, Vec<(String, String)>, Vec<u8>);

/// Reads a response head from a raw socket.
async fn read_head(stream: &tokio::net::TcpStream) -> Head {
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
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, buf[end + 4..].to_vec())
}

fn is_problem_json(r: &reqwest::Response) -> bool {
    r.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"))
}

// ---------------------------------------------------------------------------
// 1. Resume across repeated cuts while commands keep arriving
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_cut_off_repeatedly_sees_every_position_exactly_once() {
    let server = Arc::new(start(config(), 1024).await);
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 80;
    // The highest acknowledged position once every writer is done (0 before).
    let final_head = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let server = server.clone();
            tokio::spawn(async move {
                let mut highest = 0;
                let mut id = String::new();
                for j in 0..PER_WRITER {
                    let position = match j % 6 {
                        0 => {
                            id = format!("w{w}-{j}");
                            server
                                .command_position("StartDeployment", &id, json!({ "service": "svc" }))
                                .await
                        }
                        5 => server.command_position("SucceedDeployment", &id, json!({})).await,
                        k => {
                            server
                                .command_position("ReportDeploymentProgress", &id, json!({ "percent": k * 10 }))
                                .await
                        }
                    };
                    highest = highest.max(position);
                }
                highest
            })
        })
        .collect();
    let done = {
        let final_head = final_head.clone();
        tokio::spawn(async move {
            let mut highest = 0;
            for w in writers {
                highest = highest.max(w.await.expect("writer"));
            }
            final_head.store(highest, Ordering::SeqCst);
        })
    };

    // Frames read before each cut (0: cut before any event arrives).
    let cuts = [0usize, 1, 3, 7, 2, 13, 25, 1, 40, 5];
    let mut seen: Vec<Event> = Vec::new();
    let mut last = 0u64;
    let mut connects = 0usize;
    let read_all = async {
        'connect: loop {
            let mut sse = if connects == 0 {
                server.subscribe("/api/events/live?after=0", None).await
            } else {
                server.subscribe("/api/events/live", Some(&last.to_string())).await
            };
            let quota = cuts[connects % cuts.len()];
            connects += 1;
            let mut got = 0;
            loop {
                let end = final_head.load(Ordering::SeqCst);
                if end > 0 && last >= end {
                    break 'connect;
                }
                if got >= quota && connects < 60 {
                    continue 'connect; // drops `sse`: the subscriber is cut off
                }
                match sse.next().await {
                    Some(Item::Frame(f)) if f.is_retry_only() => {}
                    Some(Item::Frame(f)) => {
                        let e = event_of(&f);
                        assert_eq!(
                            e.position,
                            last + 1,
                            "after resuming from {last} (connect {connects}) the next event must be {}",
                            last + 1
                        );
                        last = e.position;
                        seen.push(e);
                        got += 1;
                    }
                    Some(Item::Comment(_)) => {}
                    None => panic!("the stream ended by itself at {last}"),
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(300), read_all)
        .await
        .expect("the subscriber caught up");
    done.await.expect("writers");
    assert!(
        connects > 5,
        "the subscriber was cut off several times ({connects} connects)"
    );

    let head = server.head().await;
    assert_eq!(head, final_head.load(Ordering::SeqCst));
    assert_eq!(
        head as usize,
        1 + WRITERS * PER_WRITER,
        "the token and every command's event"
    );
    let stored = server.events("").await;
    assert_eq!(seen.len(), stored.len(), "every position exactly once");
    for (i, (e, raw)) in seen.iter().zip(&stored).enumerate() {
        assert_eq!(e.position, i as u64 + 1);
        assert_eq!(&e.raw, raw, "the live envelope at {} equals /api/events'", e.position);
    }
}

// ---------------------------------------------------------------------------
// 2. Where a stream starts
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_starts_at_the_head_or_where_the_client_says() {
    let server = start(config(), 1024).await;
    server
        .command("StartDeployment", "d1", json!({ "service": "api" }))
        .await;
    server
        .command("ReportDeploymentProgress", "d1", json!({ "percent": 10 }))
        .await;
    server
        .command("ReportDeploymentProgress", "d1", json!({ "percent": 20 }))
        .await;
    let head = server.head().await;
    assert_eq!(head, 4);
    let stored = server.events("").await;

    // Neither header nor ?after=: the head, said twice, then only newer events.
    let mut sse = server.subscribe("/api/events/live", None).await;
    assert_eq!(
        sse.header("last-event-id").as_deref(),
        Some("4"),
        "Last-Event-ID response header"
    );
    assert!(
        sse.header("content-type")
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "content type {:?}",
        sse.header("content-type")
    );
    let first = sse.next_frame().await;
    assert_eq!(
        first,
        Frame {
            id: Some("4".into()),
            ..Frame::default()
        },
        "the first message is only `id: <head>`"
    );
    let p = server
        .command_position("ReportDeploymentProgress", "d1", json!({ "percent": 30 }))
        .await;
    let e = sse.next_event().await;
    assert_eq!(e.position, p);
    assert_eq!(p, 5);
    assert_eq!(e.event_type, "DeploymentProgressed");
    assert_eq!(e.envelope["data"]["percent"], 30);
    drop(sse);

    // ?after=P replays from P.
    let mut sse = server.subscribe("/api/events/live?after=1", None).await;
    for expected in 2..=5u64 {
        let e = sse.next_event().await;
        assert_eq!(e.position, expected);
        if expected <= 4 {
            assert_eq!(e.raw, stored[expected as usize - 1]);
        }
    }
    drop(sse);

    // Both: the header wins.
    let mut sse = server.subscribe("/api/events/live?after=1", Some("3")).await;
    assert_eq!(sse.next_event().await.position, 4, "Last-Event-ID: 3 beats ?after=1");
    assert_eq!(sse.next_event().await.position, 5);
    drop(sse);

    // A bad Last-Event-ID is a 400 problem.
    for bad in ["abc", "-1", "1.5", "99999999999999999999999"] {
        let r = server.open("/api/events/live", Some(&server.token), Some(bad)).await;
        assert_eq!(r.status(), 400, "Last-Event-ID: {bad}");
        assert!(is_problem_json(&r), "problem+json for Last-Event-ID: {bad}");
        let body: Value = r.json().await.expect("problem body");
        assert_eq!(body["status"], 400);
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

// ---------------------------------------------------------------------------
// 3. Filters
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filtered_streams_deliver_only_matching_events_and_resume() {
    let server = Arc::new(start(config(), 1024).await);
    // (query, whether an envelope matches it); `{n}` is the case number.
    type Matcher = fn(&Value, &str) -> bool;
    let cases: Vec<(&str, Matcher)> = vec![
        ("stream=deployment-a{n}", |e, n| {
            e["stream"] == format!("deployment-a{n}")
        }),
        ("stream=deployment-a{n}&stream=deployment-b{n}", |e, n| {
            e["stream"] == format!("deployment-a{n}") || e["stream"] == format!("deployment-b{n}")
        }),
        ("category=deployment", |e, _| {
            e["stream"].as_str().is_some_and(|s| s.starts_with("deployment-"))
        }),
        ("category=token", |e, _| {
            e["stream"].as_str().is_some_and(|s| s.starts_with("token-"))
        }),
        ("type=DeploymentStarted&type=DeploymentSucceeded", |e, _| {
            e["type"] == "DeploymentStarted" || e["type"] == "DeploymentSucceeded"
        }),
        ("category=deployment&type=DeploymentProgressed", |e, _| {
            e["type"] == "DeploymentProgressed"
        }),
    ];
    for (n, (query, matches)) in cases.into_iter().enumerate() {
        let query = query.replace("{n}", &n.to_string());
        let start = server.head().await;
        let mut sse = server
            .subscribe(&format!("/api/events/live?after={start}&{query}"), None)
            .await;
        // Commands of every kind and token events, ending with a sentinel event
        // this case's filter matches.
        let writer = {
            let server = server.clone();
            let query = query.clone();
            tokio::spawn(async move {
                let a = format!("a{n}");
                let b = format!("b{n}");
                let c = format!("c{n}");
                server.command("StartDeployment", &a, json!({ "service": "a" })).await;
                server.command("StartDeployment", &b, json!({ "service": "b" })).await;
                server
                    .command("ReportDeploymentProgress", &a, json!({ "percent": 10 }))
                    .await;
                mint(&server.state, &format!("t{n}-1"), Role::Viewer).await;
                server
                    .command("ReportDeploymentProgress", &b, json!({ "percent": 20 }))
                    .await;
                server.command("StartDeployment", &c, json!({ "service": "c" })).await;
                server.command("SucceedDeployment", &b, json!({})).await;
                server
                    .command("ReportDeploymentProgress", &c, json!({ "percent": 30 }))
                    .await;
                mint(&server.state, &format!("t{n}-2"), Role::Viewer).await;
                server
                    .command("ReportDeploymentProgress", &a, json!({ "percent": 40 }))
                    .await;
                // The sentinel: the last event of the case, matched by its filter.
                if query.starts_with("category=token") {
                    mint(&server.state, &format!("t{n}-3"), Role::Viewer).await;
                    server.head().await
                } else if query.contains("DeploymentProgressed") {
                    server
                        .command_position("ReportDeploymentProgress", &a, json!({ "percent": 90 }))
                        .await
                } else {
                    server.command_position("SucceedDeployment", &a, json!({})).await
                }
            })
        };
        let check = |got: &[Event], e: &Event| {
            assert!(
                matches(&e.envelope, &n.to_string()),
                "{query}: delivered a non-matching event {}",
                e.raw
            );
            assert!(
                e.position > got.last().map_or(start, |p| p.position),
                "{query}: in order, no duplicate"
            );
        };
        // Two events while the writer runs, then a cut and a resume from the
        // last delivered id with the same filter.
        let mut got: Vec<Event> = Vec::new();
        while got.len() < 2 {
            let e = sse.next_event().await;
            check(&got, &e);
            got.push(e);
        }
        drop(sse);
        let mut sse = server
            .subscribe(&format!("/api/events/live?{query}"), Some(&got[1].position.to_string()))
            .await;
        let sentinel = writer.await.expect("writer");
        while got.last().map(|e| e.position) != Some(sentinel) {
            let e = sse.next_event().await;
            check(&got, &e);
            assert!(e.position <= sentinel, "{query}: passed the sentinel {sentinel}");
            got.push(e);
        }
        // Exactly what /api/events gives: all matching events after `start` up to the sentinel.
        let expected: Vec<String> = server
            .events("")
            .await
            .into_iter()
            .filter(|raw| {
                let v: Value = serde_json::from_str(raw).expect("envelope");
                let p = v["position"].as_u64().expect("position");
                p > start && p <= sentinel && matches(&v, &n.to_string())
            })
            .collect();
        let delivered: Vec<String> = got.iter().map(|e| e.raw.clone()).collect();
        assert_eq!(delivered, expected, "{query}");
        assert!(expected.len() >= 3, "{query}: the case delivers several events");
        let server_side: Vec<String> = server
            .events(&format!("&{query}"))
            .await
            .into_iter()
            .filter(|raw| {
                let v: Value = serde_json::from_str(raw).expect("envelope");
                let p = v["position"].as_u64().expect("position");
                p > start && p <= sentinel
            })
            .collect();
        assert_eq!(delivered, server_side, "{query}: the same filter on /api/events");
    }
}

// ---------------------------------------------------------------------------
// 4. retry: and keep-alive comments
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_is_sent_once_and_an_idle_stream_gets_comments() {
    let server = start(
        ServerConfig {
            command_rate: 0,
            keepalive: Duration::from_millis(100),
            retry: Duration::from_millis(1234),
            ..ServerConfig::default()
        },
        1024,
    )
    .await;
    let mut sse = server.subscribe("/api/events/live", None).await;
    let mut items = Vec::new();
    // Idle: comments keep coming.
    while items.iter().filter(|i| matches!(i, Item::Comment(_))).count() < 3 {
        items.push(sse.next().await.expect("the stream goes on"));
    }
    // An event, then idle again.
    let p = server
        .command_position("StartDeployment", "k1", json!({ "service": "s" }))
        .await;
    let mut after_event = 0;
    let mut saw_event = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while after_event < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the event did not arrive");
        let item = sse.next().await.expect("the stream goes on");
        match &item {
            Item::Frame(f) if f.data.is_some() => {
                assert_eq!(event_of(f).position, p);
                saw_event = true;
            }
            Item::Comment(_) if saw_event => after_event += 1,
            _ => {}
        }
        items.push(item);
    }
    let retries: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i, Item::Frame(f) if f.retry.is_some()))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(retries, vec![0], "exactly one retry:, first: {items:?}");
    let Item::Frame(first) = &items[0] else { unreachable!() };
    assert_eq!(first.retry.as_deref(), Some("1234"), "the configured retry in ms");
}

// ---------------------------------------------------------------------------
// 5. Credentials and the per-credential stream limit
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_need_a_credential_and_are_limited_per_credential() {
    let server = start(
        ServerConfig {
            stream_limit: 2,
            ..config()
        },
        1024,
    )
    .await;
    for path in ["/api/events/live", "/api/deployments/live"] {
        let r = server.open(path, None, None).await;
        assert_eq!(r.status(), 401, "{path} without a credential");
        assert!(is_problem_json(&r));
        let r = server.open(path, Some("hrld_not-a-token"), None).await;
        assert_eq!(r.status(), 401, "{path} with an unknown token");
        // Never a credential in the query string.
        let r = server
            .open(&format!("{path}?access_token={}", server.token), None, None)
            .await;
        assert!(
            r.status() == 400 || r.status() == 401,
            "{path}?access_token= gives {}",
            r.status()
        );
    }

    let a1 = server.subscribe("/api/events/live", None).await;
    let a2 = server.subscribe("/api/deployments/live", None).await;
    for path in ["/api/events/live", "/api/deployments/live"] {
        let r = server.open(path, Some(&server.token), None).await;
        assert_eq!(r.status(), 429, "a third stream on {path}");
        assert!(is_problem_json(&r));
        let body: Value = r.json().await.expect("problem body");
        assert_eq!(body["status"], 429);
    }
    // Another credential has its own budget.
    let (_, other) = mint(&server.state, "other", Role::Viewer).await;
    let r = server.open("/api/events/live", Some(&other), None).await;
    assert_eq!(r.status(), 200, "another credential");
    drop(r);

    // Closing a stream frees its slot (once the server notices the close).
    drop(a1);
    let deadline = tokio::time::Instant::now() + WAIT;
    let freed = loop {
        let r = server.open("/api/events/live", Some(&server.token), None).await;
        if r.status() == 200 {
            break Sse::new(r);
        }
        assert_eq!(r.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed stream never freed its slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // And the limit holds again with two open.
    let r = server.open("/api/events/live", Some(&server.token), None).await;
    assert_eq!(r.status(), 429, "two open again: a third is refused");
    drop((a2, freed));
}

// ---------------------------------------------------------------------------
// 6. A subscriber that cannot keep up is disconnected, never skipped
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_subscriber_is_disconnected_never_skipped_and_resumes() {
    let server = start(config(), 4).await;
    // A raw socket with a tiny receive buffer, so the kernel cannot hold the backlog.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(server.addr).await.expect("connect");
    let request = live_request(&server, Some(&server.token));
    write_all(&stream, request.as_bytes()).await.expect("write request");
    let (status, headers, rest) = read_head(&stream).await;
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")),
        "a streamed body: {headers:?}"
    );
    let mut body = Chunked::default();
    let mut parser = SseParser::default();
    let mut items = VecDeque::new();
    let mut decoded = Vec::new();
    body.feed(&rest, &mut decoded);
    parser.feed(&decoded, &mut items);
    let mut buf = vec![0u8; 64 * 1024];
    // Read until one live event arrived (the subscription is live), then stop reading.
    let start = server.head().await;
    let first = server
        .command_position("StartDeployment", "slow", json!({ "service": "s" }))
        .await;
    let mut delivered: Vec<u64> = Vec::new();
    let mut start_id = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while delivered.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the first event did not arrive");
        while let Some(item) = items.pop_front() {
            if let Item::Frame(f) = item {
                if f.data.is_some() {
                    delivered.push(event_of(&f).position);
                } else if f.id.is_some() {
                    start_id = f.id.clone();
                }
            }
        }
        if !delivered.is_empty() {
            break;
        }
        let n = tokio::time::timeout(WAIT, read_some(&stream, &mut buf))
            .await
            .expect("the first event arrives")
            .expect("read");
        assert!(n > 0, "the stream closed early");
        decoded.clear();
        body.feed(&buf[..n], &mut decoded);
        parser.feed(&decoded, &mut items);
    }
    assert_eq!(
        start_id.as_deref(),
        Some(start.to_string().as_str()),
        "the id-only first message"
    );
    assert_eq!(delivered, vec![first]);

    // Many large events in multi-event batches while the subscriber reads nothing.
    const EVENTS: usize = 20_000;
    const PER_APPEND: usize = 100;
    let blob = "x".repeat(1000);
    for a in 0..EVENTS / PER_APPEND {
        server.append_load(&format!("load-{a}"), PER_APPEND, &blob).await;
    }
    let head = server.head().await;
    assert_eq!(head, first + EVENTS as u64);

    // Now read everything: the stream must end, every delivered position contiguous.
    let mut ended_with = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow stream neither ended nor reached the head"
        );
        while let Some(item) = items.pop_front() {
            match item {
                Item::Frame(f) => {
                    let e = event_of(&f);
                    let expected = delivered.last().map_or(start + 1, |p| p + 1);
                    assert_eq!(e.position, expected, "a slow subscriber is never skipped");
                    delivered.push(e.position);
                    ended_with = None;
                }
                Item::Comment(c) => ended_with = Some(c),
            }
        }
        // Done when the body ended; a stream that delivered everything never
        // fell behind (and would only send keep-alives from here on).
        if body.done || delivered.last() == Some(&head) {
            break;
        }
        let n = tokio::time::timeout(WAIT, read_some(&stream, &mut buf))
            .await
            .expect("the slow stream goes on or ends")
            .expect("read");
        assert!(n > 0, "the connection closed without ending the chunked body");
        decoded.clear();
        body.feed(&buf[..n], &mut decoded);
        parser.feed(&decoded, &mut items);
    }
    let last = *delivered.last().expect("delivered");
    assert!(
        last < head,
        "the subscriber fell behind and was disconnected before the head ({last} of {head})"
    );
    let comment = ended_with.expect("the stream ends with a comment");
    assert!(comment.contains("too far behind"), "the last comment: {comment:?}");

    // A reconnect with Last-Event-ID delivers the rest exactly once.
    let mut sse = server.subscribe("/api/events/live", Some(&last.to_string())).await;
    let mut next = last + 1;
    while next <= head {
        let e = sse.next_event().await;
        assert_eq!(e.position, next, "the resumed stream continues at {next}");
        next += 1;
    }
}

// ---------------------------------------------------------------------------
// 7. Graceful shutdown
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_ends_every_stream_cleanly_and_run_returns() {
    let mut server = start(
        ServerConfig {
            keepalive: Duration::from_secs(60),
            ..config()
        },
        1024,
    )
    .await;
    server.command("StartDeployment", "s1", json!({ "service": "s" })).await;
    let mut streams = vec![
        server.subscribe("/api/events/live", None).await,
        server.subscribe("/api/events/live?after=0", None).await,
        server
            .subscribe("/api/events/live?category=deployment", Some("1"))
            .await,
        server.subscribe("/api/deployments/live", None).await,
    ];
    for sse in &mut streams {
        sse.next_frame().await; // connected and streaming
    }
    server
        .running
        .shutdown
        .take()
        .expect("sender")
        .send(())
        .expect("the server is running");
    for (i, sse) in streams.iter_mut().enumerate() {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stream {i} still open after shutdown"
            );
            match tokio::time::timeout(WAIT, sse.try_next())
                .await
                .unwrap_or_else(|_| panic!("stream {i} did not end after shutdown"))
            {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("stream {i} broke off instead of ending cleanly: {e}"),
            }
        }
    }
    let handle = server.running.handle.take().expect("handle");
    let result = tokio::time::timeout(WAIT, handle)
        .await
        .expect("run returns after shutdown")
        .expect("run did not panic");
    result.expect("run returns Ok");
}

// ---------------------------------------------------------------------------
// 8. Concurrent commands on one aggregate
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_starts_of_one_deployment_append_exactly_one_event() {
    let server = Arc::new(start(config(), 1024).await);
    const N: usize = 50;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let server = server.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut body = json!({
                    "type": "StartDeployment",
                    "aggregate_id": "contended",
                    "data": { "service": format!("svc-{i}") },
                });
                if i % 2 == 0 {
                    body["expected_version"] = json!(0);
                }
                barrier.wait().await;
                let (status, answer) = server.try_command_as(&server.token, &body).await;
                (i, status, answer)
            })
        })
        .collect();
    let mut ok = Vec::new();
    for t in tasks {
        let (i, status, answer) = t.await.expect("task");
        match status {
            200 => ok.push((i, answer)),
            409 => {
                assert_eq!(answer["status"], 409);
                assert_eq!(answer["actual_version"], 1, "{answer}");
                assert!(answer.get("expected_version").is_some(), "{answer}");
            }
            422 => assert_eq!(answer["status"], 422),
            other => panic!("command {i}: unexpected {other}: {answer}"),
        }
    }
    assert_eq!(ok.len(), 1, "exactly one start wins: {ok:?}");
    let stream = server.get_json("/api/streams/deployment-contended").await;
    assert_eq!(stream["version"], 1);
    let events = stream["events"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[0]["type"], "DeploymentStarted");
    assert_eq!(
        events[0], ok[0].1["events"][0],
        "the stored event is the acknowledged one"
    );
}

// ---------------------------------------------------------------------------
// 9. The deployments resource stream
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployments_live_sends_a_snapshot_then_each_change() {
    let server = start(config(), 1024).await;
    let p = server
        .command_position(
            "StartDeployment",
            "web",
            json!({ "service": "web", "version": "1.0.0", "environment": "prod" }),
        )
        .await;
    poll_until("the read model reflects the start", || async {
        server.get_json("/api/deployments").await["position"].as_u64() >= Some(p)
    })
    .await;
    let listed = server.get_json("/api/deployments").await;

    let mut sse = server.subscribe("/api/deployments/live", None).await;
    let snapshot = sse.next_frame().await;
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    let data: Value = serde_json::from_str(snapshot.data.as_deref().expect("data")).expect("snapshot JSON");
    assert_eq!(data, listed, "the snapshot is the list");
    assert_eq!(
        snapshot.id,
        Some(listed["position"].to_string()),
        "id is the position the state reflects"
    );

    let mut last_id = listed["position"].as_u64().expect("position");
    let mut expect_change = async |sse: &mut Sse, position: u64, id: &str| -> Value {
        let f = sse.next_frame().await;
        assert_eq!(f.event.as_deref(), Some("deployment"), "{f:?}");
        let frame_id: u64 = f.id.as_deref().expect("id").parse().expect("numeric id");
        assert!(
            frame_id >= position,
            "the change's id {frame_id} reflects position {position}"
        );
        assert!(frame_id > last_id, "ids increase");
        last_id = frame_id;
        let view: Value = serde_json::from_str(f.data.as_deref().expect("data")).expect("view JSON");
        assert_eq!(view["id"], id, "{view}");
        view
    };
    let p = server
        .command_position(
            "ReportDeploymentProgress",
            "web",
            json!({ "percent": 40, "message": "half" }),
        )
        .await;
    let view = expect_change(&mut sse, p, "web").await;
    assert_eq!(view["status"], "in_progress");
    assert_eq!(view["progress"], 40);
    assert_eq!(view["message"], "half");

    // An event of another category changes no deployment.
    mint(&server.state, "not-a-deployment", Role::Viewer).await;
    let p = server
        .command_position("StartDeployment", "api", json!({ "service": "api" }))
        .await;
    let view = expect_change(&mut sse, p, "api").await;
    assert_eq!(view["status"], "in_progress");
    assert_eq!(view["service"], "api");

    let p = server.command_position("SucceedDeployment", "web", json!({})).await;
    let view = expect_change(&mut sse, p, "web").await;
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view, server.get_json("/api/deployments/web").await);
}

// ---------------------------------------------------------------------------
// Revocation ends the stream (API.md §6)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_a_token_ends_its_live_streams() {
    let server = start(config(), 1024).await;
    let (_, admin) = mint(&server.state, "admin", Role::Admin).await;
    let (id, viewer) = mint(&server.state, "to-revoke", Role::Viewer).await;
    let r = server.open("/api/events/live", Some(&viewer), None).await;
    assert_eq!(r.status(), 200);
    let mut sse = Sse::new(r);
    sse.next_frame().await;
    let r = server
        .client
        .delete(server.url(&format!("/api/tokens/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("DELETE token");
    assert_eq!(r.status(), 204);
    let r = server.open("/api/events/live", Some(&viewer), None).await;
    assert_eq!(r.status(), 401, "the revoked token no longer opens streams");
    // The open stream must end (keep-alives may come first; events may not).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revoked token's stream was still open after {WAIT:?}"
        );
        match sse.next().await {
            None => break,
            Some(Item::Comment(_)) => {}
            Some(Item::Frame(f)) => {
                // The TokenRevoked event itself may still be delivered.
                assert_eq!(event_of(&f).event_type, "TokenRevoked", "{f:?}");
            }
        }
    }
}

#[tokio::test]
async fn resuming_beyond_the_end_of_the_log_starts_at_the_head_and_says_so() {
    // A store restored from an older copy: an EventSource's Last-Event-ID is
    // beyond the head. A 400 would strand it (EventSource never retries one).
    let server = start(config(), 1024).await;
    let token = server.token.clone();
    for by_header in [true, false] {
        let head = server.head().await;
        let (path, last_event_id) = if by_header {
            ("/api/events/live".to_owned(), Some((head + 10).to_string()))
        } else {
            (format!("/api/events/live?after={}", head + 1), None)
        };
        let r = server.open(&path, Some(&token), last_event_id.as_deref()).await;
        assert_eq!(r.status(), 200, "{path}");
        let mut sse = Sse::new(r);
        assert_eq!(sse.header("last-event-id"), Some(head.to_string()), "{path}");
        // The fresh-connect rule: retry, then a message that is only `id: <head>`.
        match sse.next().await {
            Some(Item::Frame(f)) => assert!(f.is_retry_only(), "{f:?}"),
            other => panic!("expected retry first, got {other:?}"),
        }
        let first = sse.next_frame().await;
        assert_eq!(
            first,
            Frame {
                id: Some(head.to_string()),
                ..Frame::default()
            },
            "{path}"
        );
        let position = server
            .command_position(
                "StartDeployment",
                &format!("beyond-{by_header}"),
                json!({ "service": "s" }),
            )
            .await;
        assert_eq!(
            sse.next_event().await.position,
            position,
            "{path}: live from the head on"
        );
    }
    // At the head exactly is a plain resume: no header, no id-only message.
    let head = server.head().await;
    let r = server
        .open("/api/events/live", Some(&token), Some(&head.to_string()))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("last-event-id"), None);
}

#[tokio::test]
async fn the_deployments_stream_resumed_beyond_the_log_says_where_it_starts() {
    let server = start(config(), 1024).await;
    server.command("StartDeployment", "d1", json!({ "service": "s" })).await;
    let head = server.head().await;
    let r = server
        .open(
            "/api/deployments/live",
            Some(&server.token),
            Some(&(head + 100).to_string()),
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut sse = Sse::new(r);
    let said = sse
        .header("last-event-id")
        .expect("the response says where the stream starts");
    let snapshot = sse.next_frame().await;
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    assert_eq!(snapshot.id, Some(said), "the header is the snapshot's position");
}

// ---------------------------------------------------------------------------
// Fresh connections are written by herald itself (serve.rs), reused ones by
// hyper: the same stream either way
// ---------------------------------------------------------------------------

/// A live stream read from a raw socket, after its response head.
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
                return None; // the body ended (hyper may keep the connection for another request)
            }
            let n = tokio::time::timeout(WAIT, read_some(&self.stream, &mut buf))
                .await
                .expect("the stream goes on or ends")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.feed(&buf[..n]);
        }
    }

    async fn next_event(&mut self) -> Event {
        loop {
            match self.next().await.expect("an event before the end") {
                Item::Frame(f) if f.data.is_some() => return event_of(&f),
                _ => {}
            }
        }
    }
}

fn live_request(server: &TestServer, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /api/events/live HTTP/1.1\r\nHost: {}\r\n{auth}Accept: text/event-stream\r\n\r\n",
        server.addr
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Opens a live stream on a new connection; with `reuse`, after a first
/// request on the same connection (so hyper serves it).
async fn open_raw(server: &TestServer, token: Option<&str>, reuse: bool) -> (u16, Vec<(String, String)>, RawStream) {
    let stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    if reuse {
        let health = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
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
    write_all(&stream, live_request(server, token).as_bytes())
        .await
        .expect("write");
    let (status, headers, rest) = read_head(&stream).await;
    (status, headers, RawStream::new(stream, &rest))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_stream_is_the_same_on_a_fresh_and_on_a_reused_connection() {
    let server = start(config(), 1024).await;
    let head = server.head().await;
    let (s1, fresh_headers, mut fresh) = open_raw(&server, Some(&server.token), false).await;
    let (s2, reused_headers, mut reused) = open_raw(&server, Some(&server.token), true).await;
    assert_eq!((s1, s2), (200, 200));
    for headers in [&fresh_headers, &reused_headers] {
        assert_eq!(
            header(headers, "content-type"),
            Some("text/event-stream"),
            "{headers:?}"
        );
        assert_eq!(header(headers, "cache-control"), Some("no-cache, no-transform"));
        assert_eq!(header(headers, "x-accel-buffering"), Some("no"));
        assert_eq!(header(headers, "transfer-encoding"), Some("chunked"));
        assert_eq!(header(headers, "last-event-id"), Some(head.to_string().as_str()));
    }
    // Which path served which (hyper adds `date`; herald's own writer does not).
    assert_eq!(header(&fresh_headers, "date"), None, "a fresh connection is herald's");
    assert!(
        header(&reused_headers, "date").is_some(),
        "a reused connection is hyper's"
    );
    // The same messages, in the same order: retry, the starting id, then events.
    for stream in [&mut fresh, &mut reused] {
        match stream.next().await {
            Some(Item::Frame(f)) => assert!(f.is_retry_only(), "{f:?}"),
            other => panic!("expected retry first, got {other:?}"),
        }
        match stream.next().await {
            Some(Item::Frame(f)) => assert_eq!(f.id, Some(head.to_string())),
            other => panic!("expected the id-only message, got {other:?}"),
        }
    }
    let position = server
        .command_position("StartDeployment", "both-paths", json!({ "service": "s" }))
        .await;
    let a = fresh.next_event().await;
    let b = reused.next_event().await;
    assert_eq!((a.position, b.position), (position, position));
    assert_eq!(a.raw, b.raw);
    // Shutdown ends both with the terminating chunk.
    server.state.live.shutdown.cancel();
    for stream in [&mut fresh, &mut reused] {
        let mut comments = Vec::new();
        while let Some(item) = stream.next().await {
            if let Item::Comment(c) = item {
                comments.push(c);
            }
        }
        assert!(comments.iter().any(|c| c.contains("shutting down")), "{comments:?}");
        assert!(stream.body.done, "the body ended with its last chunk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_live_request_on_a_fresh_connection_gets_a_whole_problem_and_a_close() {
    let server = start(config(), 1024).await;
    for (token, status) in [(None, 401), (Some("not-a-token"), 401)] {
        let (got, headers, mut raw) = open_raw(&server, token, false).await;
        assert_eq!(got, status);
        assert!(
            header(&headers, "content-type").is_some_and(|v| v.starts_with("application/problem+json")),
            "{headers:?}"
        );
        let length: usize = header(&headers, "content-length")
            .expect("a length")
            .parse()
            .expect("a number");
        let mut body = std::mem::take(&mut raw.body.buf);
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(WAIT, read_some(&raw.stream, &mut buf))
                .await
                .expect("the connection closes")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        assert_eq!(body.len(), length);
        let problem: Value = serde_json::from_slice(&body).expect("problem json");
        assert_eq!(problem["status"], status);
    }
    // A resume position beyond the log: the stream starts at the head.
    let head = server.head().await;
    let stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "GET /api/events/live HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nLast-Event-ID: 999999\r\n\r\n",
        server.addr, server.token
    );
    write_all(&stream, request.as_bytes()).await.expect("write");
    let (status, headers, _) = read_head(&stream).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "last-event-id"), Some(head.to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_hangs_up_frees_its_stream_slot() {
    let server = start(
        ServerConfig {
            stream_limit: 1,
            ..config()
        },
        1024,
    )
    .await;
    let (status, _, raw) = open_raw(&server, Some(&server.token), false).await;
    assert_eq!(status, 200);
    let (status, _, _) = open_raw(&server, Some(&server.token), false).await;
    assert_eq!(status, 429, "the limit is 1");
    drop(raw);
    // The server notices the close without writing anything to the stream.
    poll_until("the slot is free again", || async {
        open_raw(&server, Some(&server.token), false).await.0 == 200
    })
    .await;
}

// ---------------------------------------------------------------------------
// Streams herald ends close their connection; stalled readers are dropped
// ---------------------------------------------------------------------------

/// Reads a raw socket until it closes; `Ok(())` at EOF, the error otherwise.
async fn read_until_closed(stream: &tokio::net::TcpStream, within: Duration) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = tokio::time::timeout_at(deadline, read_some(stream, &mut buf))
            .await
            .expect("the connection was closed in time")?;
        if n == 0 {
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_responses_say_connection_close_and_close_when_herald_ends_them() {
    let server = start(config(), 1024).await;
    for reuse in [false, true] {
        let (id, viewer) = mint(&server.state, &format!("closing-{reuse}"), Role::Viewer).await;
        let (status, headers, mut raw) = open_raw(&server, Some(&viewer), reuse).await;
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "connection"),
            Some("close"),
            "reuse {reuse}: {headers:?}"
        );
        match raw.next().await {
            Some(Item::Frame(f)) => assert!(f.is_retry_only(), "{f:?}"),
            other => panic!("expected retry first, got {other:?}"),
        }
        // herald ends the stream (as on revocation): the body ends, then the connection.
        server
            .state
            .live
            .end_credential(&herald_server::auth::token_credential(&id));
        while raw.next().await.is_some() {}
        assert!(raw.body.done, "reuse {reuse}: the body ended with its last chunk");
        read_until_closed(&raw.stream, WAIT)
            .await
            .unwrap_or_else(|e| panic!("reuse {reuse}: the connection broke instead of closing: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_reader_that_stops_reading_is_dropped_and_reset_on_either_path() {
    let server = start(
        ServerConfig {
            stream_limit: 1,
            write_timeout: Duration::from_millis(500),
            ..config()
        },
        1024,
    )
    .await;
    let blob = "x".repeat(1000);
    for reuse in [true, false] {
        let (_, viewer) = mint(&server.state, &format!("stalled-{reuse}"), Role::Viewer).await;
        // A tiny receive buffer, so the kernel cannot hold the backlog.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(server.addr).await.expect("connect");
        if reuse {
            // One plain request first, so hyper serves the live request.
            let health = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
            write_all(&stream, health.as_bytes()).await.expect("write");
            let (status, headers, rest) = read_head(&stream).await;
            assert_eq!(status, 200);
            let length: usize = header(&headers, "content-length").expect("length").parse().expect("n");
            let mut have = rest.len();
            let mut buf = [0u8; 1024];
            while have < length {
                have += read_some(&stream, &mut buf).await.expect("read");
            }
        }
        write_all(&stream, live_request(&server, Some(&viewer)).as_bytes())
            .await
            .expect("write");
        let (status, headers, _) = read_head(&stream).await;
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "date").is_some(),
            reuse,
            "served by the path under test"
        );
        // The stream holds the viewer's only slot.
        let (status, _, _) = open_raw(&server, Some(&viewer), false).await;
        assert_eq!(status, 429);
        // Many large events (few batches: nobody falls behind the live channel)
        // while the client reads nothing.
        for a in 0..40 {
            server.append_load(&format!("stall-{reuse}-{a}"), 100, &blob).await;
        }
        // The stalled stream is dropped: its slot is free again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _, raw) = open_raw(&server, Some(&viewer), false).await;
            if status == 200 {
                drop(raw);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "reuse {reuse}: the stalled stream still holds its slot"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And reset, not closed: what the kernel held for it is gone.
        match read_until_closed(&stream, WAIT).await {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "reuse {reuse}: {e}"),
            Ok(()) => panic!("reuse {reuse}: the connection was closed, not reset"),
        }
        // The freed slot may still be held by the stream opened above until it closes.
        poll_until("the slot is free", || async {
            open_raw(&server, Some(&viewer), false).await.0 == 200
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_that_cannot_be_recorded_still_revokes_and_ends_streams() {
    let server = start(config(), 1024).await;
    let (_, admin) = mint(&server.state, "admin", Role::Admin).await;
    // A token whose `token-<id>` stream does not exist: recording TokenRevoked
    // (which expects the stream) fails.
    let id = "unrecorded".to_owned();
    let secret = "hrld_unrecorded-secret";
    server
        .state
        .credentials
        .insert_token(
            &herald_core::auth::TokenRecord {
                id: id.clone(),
                name: "unrecorded".into(),
                role: Role::Viewer,
                created_at: herald_server::auth::now_rfc3339(),
                created_by: Actor::system("live-tests"),
                revoked_at: None,
            },
            &herald_server::auth::hash_secret(secret),
        )
        .await
        .expect("insert token");
    let r = server.open("/api/events/live", Some(secret), None).await;
    assert_eq!(r.status(), 200);
    let mut sse = Sse::new(r);
    sse.next_frame().await;
    let r = server
        .client
        .delete(server.url(&format!("/api/tokens/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("DELETE token");
    assert_eq!(r.status(), 500, "the missing audit record is reported");
    assert!(is_problem_json(&r));
    // The revocation stands: the stream ends, the token no longer works.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the stream was still open");
        match sse.next().await {
            None => break,
            Some(Item::Comment(_)) => {}
            Some(Item::Frame(f)) => panic!("no event after the revocation: {f:?}"),
        }
    }
    let r = server.open("/api/events/live", Some(secret), None).await;
    assert_eq!(r.status(), 401);
    let r = server
        .client
        .get(server.url("/api/events"))
        .bearer_auth(secret)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_authenticated_before_a_revocation_is_not_opened_after_it() {
    use herald_server::error::ApiError;

    let server = start(config(), 1024).await;
    let (id, viewer) = mint(&server.state, "racing", Role::Viewer).await;
    let parts = axum::http::Request::builder()
        .uri("/api/events/live")
        .header("authorization", format!("Bearer {viewer}"))
        .body(())
        .expect("request")
        .into_parts()
        .0;
    // Authenticated (the token is cached now too)…
    let principal = herald_server::auth::authenticate(&server.state, &parts)
        .await
        .expect("authenticated");
    // …then revoked before the stream registers…
    assert!(
        herald_server::auth::revoke_token(&server.state, &Actor::system("live-tests"), &id)
            .await
            .expect("revoked")
    );
    // …then opened: refused, on both streams.
    match herald_server::live::open(&server.state, &principal, &parts.headers, &parts.uri).await {
        Err(ApiError::Unauthorized(_)) => {}
        Err(e) => panic!("expected 401, got {e:?}"),
        Ok(_) => panic!("a stream of a revoked token was opened"),
    }
    let uri: axum::http::Uri = "/api/deployments/live".parse().expect("uri");
    let route = *server
        .state
        .registry
        .live_routes()
        .iter()
        .find(|r| r.pattern == "/api/deployments/live")
        .expect("the deployments stream is registered");
    match herald_server::resources::open_route(&server.state, route, &principal, &parts.headers, &uri, Vec::new()).await
    {
        Err(ApiError::Unauthorized(_)) => {}
        Err(e) => panic!("expected 401, got {e:?}"),
        Ok(_) => panic!("a deployments stream of a revoked token was opened"),
    }
    // Nothing stayed registered: the revoked credential holds no slot.
    assert_eq!(
        server
            .state
            .live
            .end_credential(&herald_server::auth::token_credential(&id)),
        0
    );
}

#[tokio::test]
async fn a_stream_of_a_session_that_ended_after_authentication_is_not_opened() {
    use herald_core::accounts::SessionRecord;
    use herald_server::auth::Principal;
    use herald_server::error::ApiError;

    let server = start(config(), 1024).await;
    // What `authenticate` gave for a session that was then logged out (its row
    // is gone): the store, not the request's earlier view, decides.
    let now = herald_server::sessions::now_millis();
    let session = SessionRecord {
        id: "logged-out".into(),
        user_id: "u1".into(),
        created_at: now,
        last_seen_at: now,
        expires_at: now + 3_600_000,
        verified_at: now,
        user_agent: None,
    };
    let principal = Principal {
        actor: Actor::system("someone"),
        role: Role::Viewer,
        credential_id: "user:u1".into(),
        ends_with: herald_server::sessions::session_credential(&session.id),
        session: Some(session),
    };
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("cookie", "herald_session=ended-secret".parse().expect("header"));
    let uri: axum::http::Uri = "/api/events/live".parse().expect("uri");
    match herald_server::live::open(&server.state, &principal, &headers, &uri).await {
        Err(ApiError::Unauthorized(_)) => {}
        Err(e) => panic!("expected 401, got {e:?}"),
        Ok(_) => panic!("a stream of an ended session was opened"),
    }
}
