//! What the tests that run the real `herald` binary share (`cli.rs`,
//! `cluster.rs`): child processes killed by a guard, HTTP/1.1 over plain
//! `std::net::TcpStream`s (one request per connection), and an incremental
//! SSE parser over a chunked body. Every wait is bounded.
#![allow(dead_code)] // each test file uses part of it

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The bound on any single wait (a read, a poll, a child's startup).
pub const WAIT: Duration = Duration::from_secs(30);

/// The environment that could change what a `herald` under test does.
pub const HERALD_ENV: [&str; 14] = [
    "HERALD_DATA",
    "HERALD_DATABASE_URL",
    "HERALD_LISTEN",
    "HERALD_PUBLIC_ORIGIN",
    "HERALD_STREAM_LIMIT",
    "HERALD_COMMAND_RATE",
    "HERALD_NAME",
    "HERALD_ROLE",
    "HERALD_TOKEN",
    "HERALD_NATS",
    "HERALD_REDIS",
    "HERALD_NATS_CREDENTIALS",
    "HERALD_BROKER_PREFIX",
    "HERALD_BROKER_ACK_WAIT_SECONDS",
];

/// `herald --data DATA` with none of [`HERALD_ENV`], plain `info` logs (they
/// are read back, and shown when a test fails).
pub fn herald(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for var in HERALD_ENV {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1").arg("--data").arg(data);
    cmd
}

/// Runs a one-shot `herald` command to completion (at most two minutes).
pub fn cli(data: &Path, args: &[&str]) -> std::process::Output {
    let mut child = herald(data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    // Read both pipes on threads so neither can fill up and block the child.
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let mut guard = ChildGuard(Some(child));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = guard.0.as_mut().expect("child").try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "herald {args:?} did not finish");
        std::thread::sleep(Duration::from_millis(10));
    };
    guard.0 = None;
    std::process::Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// `herald token create`; returns the token (alone on the last line of stdout).
pub fn create_token(data: &Path, name: &str, role: &str) -> String {
    let out = cli(data, &["token", "create", "--name", name, "--role", role]);
    assert!(
        out.status.success(),
        "token create failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().expect("a line on stdout");
    assert_eq!(last.trim(), last, "the token is alone on its line");
    assert!(
        last.len() >= 32 && !last.contains(char::is_whitespace),
        "a token: {last:?}"
    );
    last.to_owned()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Kills (SIGKILL on unix) and reaps a child when dropped.
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `herald serve`.
pub struct Server {
    pub child: ChildGuard,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    /// `kill -9`, and wait for the process to be gone.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.0.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Starts `herald serve` on a free port (`command(addr)` builds the command
/// line for it) and waits until `ready` answers 200; its stderr goes to a file
/// in `logs`. A start that exits at once (most likely the port was taken
/// between probing and binding) is retried on another port.
pub fn start_serve(logs: &Path, ready: &str, mut command: impl FnMut(SocketAddr) -> Command) -> Server {
    for attempt in 0..10 {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = logs.join(format!("serve-{port}-{attempt}.log"));
        let child = command(addr)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn herald serve");
        let mut server = Server {
            child: ChildGuard(Some(child)),
            addr,
            log,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let child = server.child.0.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                eprintln!("herald serve exited at start ({status}): {}", server.log());
                server.child.0 = None;
                break;
            }
            if matches!(http(addr, "GET", ready, None, &[], None), Ok(r) if r.status == 200) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "herald serve did not answer {ready} with 200: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("herald serve could not start on a free port");
}

/// The setup code `serve` printed to its stderr.
pub fn printed_setup_code(server: &Server) -> String {
    let mut code = None;
    poll_until("serve printed a setup code", || {
        code = server
            .log()
            .lines()
            .find_map(|l| l.trim().strip_prefix("setup code: ").map(str::to_owned));
        code.is_some()
    });
    code.expect("a setup code")
}

/// Whether a read failed only because its timeout passed.
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// Polls `check` every 20 ms until it holds; panics after [`WAIT`].
pub fn poll_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// HTTP over a plain socket
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

/// A response head: status, lowercase headers, and the bytes read past it.
pub type Head = (u16, Vec<(String, String)>, Vec<u8>);

/// Splits a response head off `buf`.
pub fn parse_head(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).expect("head is text");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((status, headers, buf[end + 4..].to_vec()))
}

pub fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"))
}

/// One request on its own connection (`Connection: close`).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    stream.write_all(&request_bytes(addr, method, path, token, headers, body))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let (status, headers, rest) = parse_head(&raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no complete response head"))?;
    let body = if is_chunked(&headers) {
        let mut decoder = Chunked::default();
        let mut out = Vec::new();
        decoder.feed(&rest, &mut out);
        if !decoder.done {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "truncated chunked body",
            ));
        }
        out
    } else {
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse::<usize>().expect("content-length"));
        match len {
            Some(len) if rest.len() < len => {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "truncated body"));
            }
            Some(len) => rest[..len].to_vec(),
            None => rest,
        }
    };
    Ok(Response {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    })
}

pub fn get(addr: SocketAddr, path: &str, token: &str) -> Response {
    http(addr, "GET", path, Some(token), &[], None).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

pub fn get_json(addr: SocketAddr, path: &str, token: &str) -> Value {
    let r = get(addr, path, token);
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.json()
}

pub fn try_command(
    addr: SocketAddr,
    token: &str,
    command_type: &str,
    aggregate_id: &str,
    data: Value,
) -> std::io::Result<Response> {
    let body = json!({ "type": command_type, "aggregate_id": aggregate_id, "data": data }).to_string();
    http(addr, "POST", "/api/commands", Some(token), &[], Some(&body))
}

/// Sends a command, asserting 200; returns the raw answer.
pub fn command(addr: SocketAddr, token: &str, command_type: &str, aggregate_id: &str, data: Value) -> Response {
    let r = try_command(addr, token, command_type, aggregate_id, data).expect("POST /api/commands");
    assert_eq!(r.status, 200, "{command_type} {aggregate_id}: {}", r.body);
    r
}

pub fn position_of(raw: &str) -> u64 {
    serde_json::from_str::<Value>(raw).expect("envelope")["position"]
        .as_u64()
        .expect("position")
}

/// Every envelope `GET /api/events?FILTER` pages through, as raw JSON text,
/// and the head (`filter`: `type=T&…`, or empty).
pub fn events_where(addr: SocketAddr, token: &str, filter: &str) -> (Vec<String>, u64) {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let r = get(addr, &format!("/api/events?{filter}&after={after}&limit=1000"), token);
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        out.extend(raw_elements(&r.body, "events"));
        let next = page["next_after"].as_u64().expect("next_after");
        let head = page["head"].as_u64().expect("head");
        if next >= head {
            return (out, head);
        }
        assert!(next > after, "paging made no progress at {after}");
        after = next;
    }
}

/// Every envelope of the log, as raw JSON text, and the head.
pub fn all_events(addr: SocketAddr, token: &str) -> (Vec<String>, u64) {
    events_where(addr, token, "")
}

/// A live stream over a plain socket.
pub struct LiveStream {
    pub stream: TcpStream,
    pub headers: Vec<(String, String)>,
    pub body: Chunked,
    pub parser: SseParser,
    pub items: VecDeque<Item>,
}

impl LiveStream {
    /// Opens a live stream, asserting `200` and a streamed body.
    pub fn open(addr: SocketAddr, path: &str, token: &str, last_event_id: Option<&str>) -> LiveStream {
        match LiveStream::connect(addr, path, token, last_event_id, WAIT).expect("the response head arrives") {
            Ok(live) => live,
            Err(r) => panic!("GET {path}: {} {}", r.status, r.body),
        }
    }

    /// Sends the request (with `Last-Event-ID` when given, as EventSource
    /// does on a reconnect) and reads the response head: the stream when it is
    /// `200` with a chunked body, the response otherwise (its body as far as it
    /// came with the head). Reads wait at most `read_timeout`.
    pub fn connect(
        addr: SocketAddr,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
        read_timeout: Duration,
    ) -> std::io::Result<Result<LiveStream, Response>> {
        let mut stream = TcpStream::connect_timeout(&addr, WAIT)?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.set_write_timeout(Some(WAIT))?;
        let mut headers = vec![("Accept", "text/event-stream")];
        if let Some(id) = last_event_id {
            headers.push(("Last-Event-ID", id));
        }
        stream.write_all(&request_bytes(addr, "GET", path, Some(token), &headers, None))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let deadline = Instant::now() + WAIT;
        let (status, headers, rest) = loop {
            if let Some(head) = parse_head(&buf) {
                break head;
            }
            let n = match stream.read(&mut chunk) {
                Err(e) if is_timeout(&e) && Instant::now() < deadline => continue,
                read => read?,
            };
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the connection closed before the response head",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if status != 200 || !is_chunked(&headers) {
            return Ok(Err(Response {
                status,
                headers,
                body: text(&rest),
            }));
        }
        let mut live = LiveStream {
            stream,
            headers,
            body: Chunked::default(),
            parser: SseParser::default(),
            items: VecDeque::new(),
        };
        live.feed(&rest);
        Ok(Ok(live))
    }

    pub fn feed(&mut self, raw: &[u8]) {
        let mut decoded = Vec::new();
        self.body.feed(raw, &mut decoded);
        self.parser.feed(&decoded, &mut self.items);
    }

    /// The next item; `None` when the body ended.
    pub fn next(&mut self) -> Option<Item> {
        match self.try_next() {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                panic!("the connection closed in the middle of the stream")
            }
            other => other.expect("an SSE item arrives in time"),
        }
    }

    /// The next item: `Ok(None)` when the body ended (its last chunk came),
    /// `UnexpectedEof` when the connection closed before that, and a timeout
    /// error ([`is_timeout`]) when nothing came within the read timeout (the
    /// stream stays usable).
    pub fn try_next(&mut self) -> std::io::Result<Option<Item>> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(item) = self.items.pop_front() {
                return Ok(Some(item));
            }
            if self.body.done {
                return Ok(None);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the connection closed in the middle of the stream",
                ));
            }
            self.feed(&chunk[..n]);
        }
    }

    /// The next frame that is more than a `retry:` (comments skipped).
    pub fn next_frame(&mut self) -> Frame {
        let deadline = Instant::now() + WAIT;
        loop {
            // Keep-alives alone must not keep a test waiting forever.
            assert!(Instant::now() < deadline, "no frame within {WAIT:?} (only comments)");
            match self.next() {
                Some(Item::Frame(f)) if f.is_retry_only() => {}
                Some(Item::Frame(f)) => return f,
                Some(Item::Comment(_)) => {}
                None => panic!("the stream ended while a frame was expected"),
            }
        }
    }

    pub fn next_event(&mut self) -> Event {
        event_of(&self.next_frame())
    }
}

// ---------------------------------------------------------------------------
// Server-Sent Events, JSON and chunked-body parsing
// ---------------------------------------------------------------------------

/// One SSE message block (fields up to a blank line).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
}

impl Frame {
    pub fn is_retry_only(&self) -> bool {
        self.retry.is_some() && self.id.is_none() && self.event.is_none() && self.data.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Frame(Frame),
    /// A line starting with `:`, without the colon.
    Comment(String),
}

/// An incremental SSE parser: frames may be split anywhere across chunks.
#[derive(Default)]
pub struct SseParser {
    pub buf: Vec<u8>,
    pub current: Frame,
    pub has_field: bool,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<Item>) {
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
pub struct Event {
    pub position: u64,
    pub event_type: String,
    /// The `data:` line: the envelope as served.
    pub raw: String,
    pub envelope: Value,
}

pub fn event_of(frame: &Frame) -> Event {
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

pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The index just past the JSON value starting at `i`.
pub fn end_of_value(b: &[u8], i: usize) -> usize {
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
pub fn raw_elements(body: &str, key: &str) -> Vec<String> {
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
pub struct Chunked {
    pub buf: Vec<u8>,
    /// Bytes left in the current chunk; `None` while a size line is expected.
    pub left: Option<usize>,
    pub in_trailer: bool,
    pub done: bool,
}

impl Chunked {
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
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

pub fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}
