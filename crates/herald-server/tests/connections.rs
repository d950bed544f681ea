//! Connection hardening on a real socket: header, body and idle timeouts,
//! connection caps, and a bounded graceful shutdown. The server runs in
//! process on `127.0.0.1:0` through `herald_server::run`, with short timeouts.
//!
//! Each wait is bounded by [`WAIT`], well below the timeouts the old behaviour
//! would have needed (none), and no test asserts on how fast something happens.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use herald_core::auth::Role;
use herald_server::{AppState, ServerConfig};
use support::{Running, mint};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bound on any single wait.
const WAIT: Duration = Duration::from_secs(10);
/// A timeout the tests never reach.
const LONG: Duration = Duration::from_secs(120);

struct Server {
    addr: SocketAddr,
    token: String,
    running: Running,
    _dir: TempDir,
}

/// Long timeouts everywhere; each test shortens the one it tests.
fn config() -> ServerConfig {
    ServerConfig {
        command_rate: 0,
        header_timeout: LONG,
        idle_timeout: LONG,
        body_timeout: LONG,
        write_timeout: LONG,
        shutdown_grace: LONG,
        // The raw requests here say `Host: herald`.
        allowed_hosts: vec!["herald".into()],
        ..ServerConfig::default()
    }
}

async fn start(config: ServerConfig) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = AppState::open_sqlite(dir.path(), config).expect("state");
    let token = mint(&state, "connection-tests", "operator", Role::Operator)
        .await
        .secret;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    Server {
        addr,
        token,
        running: Running::spawn(state, listener),
        _dir: dir,
    }
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.addr).await.expect("connect")
}

/// Reads one whole response with a `content-length` (what herald sends for
/// plain requests): status and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("a length"))
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the response arrives")
            .expect("read");
        assert!(n > 0, "the connection closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the peer closes (EOF or reset); panics if it stays open past [`WAIT`].
async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the server closed the connection")
        {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn healthz(stream: &mut TcpStream) -> u16 {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await
        .expect("write");
    read_response(stream).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_head_is_cut_off_within_the_header_timeout() {
    let server = start(ServerConfig {
        header_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    // Half a head for hyper, half a head for herald's own live path, and one byte.
    for partial in [
        "GET /healthz HTTP/1.1\r\nHost: her".to_owned(),
        format!(
            "GET /api/events/live HTTP/1.1\r\nAuthorization: Bearer {}\r\n",
            server.token
        ),
        "G".to_owned(),
    ] {
        let mut stream = connect(&server).await;
        stream.write_all(partial.as_bytes()).await.expect("write");
        let got = closed_by_server(&mut stream).await;
        assert!(
            !String::from_utf8_lossy(&got).contains(" 200 "),
            "{partial:?} was answered: {got:?}"
        );
    }
    // Also on a keep-alive connection, for a second request's head.
    let mut stream = connect(&server).await;
    assert_eq!(healthz(&mut stream).await, 200);
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.expect("write");
    closed_by_server(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_without_their_body_get_408_and_a_close() {
    let server = start(ServerConfig {
        body_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let mut stream = connect(&server).await;
    let head = format!(
        "POST /api/commands HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"type\":",
        server.token
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 408, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).expect("problem json");
    assert_eq!(problem["status"], 408);
    closed_by_server(&mut stream).await;
    // A body that arrives in time is served as before.
    let mut stream = connect(&server).await;
    let body = r#"{"type":"StartDeployment","aggregate_id":"on-time","data":{"service":"s"}}"#;
    let request = format!(
        "POST /api/commands HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.token,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut stream).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let server = start(ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let mut stream = connect(&server).await;
    assert_eq!(healthz(&mut stream).await, 200);
    assert_eq!(healthz(&mut stream).await, 200, "kept alive between requests");
    closed_by_server(&mut stream).await;

    // A short header timeout does not cut an idle wait shorter than the idle timeout.
    let server = start(ServerConfig {
        header_timeout: Duration::from_millis(200),
        idle_timeout: LONG,
        ..config()
    })
    .await;
    let mut stream = connect(&server).await;
    assert_eq!(healthz(&mut stream).await, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        healthz(&mut stream).await,
        200,
        "idle for longer than the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_cap_are_refused_at_once() {
    let server = start(ServerConfig {
        max_connections_per_address: 2,
        ..config()
    })
    .await;
    let mut first = connect(&server).await;
    let mut second = connect(&server).await;
    assert_eq!(healthz(&mut first).await, 200);
    assert_eq!(healthz(&mut second).await, 200);
    // A third from 127.0.0.1: a 503 problem (or, if it races the request, a reset), then closed.
    let mut third = connect(&server).await;
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n").await;
    let got = String::from_utf8_lossy(&closed_by_server(&mut third).await).into_owned();
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 503 ") && got.contains("application/problem+json"),
        "{got:?}"
    );
    // Another address is not affected.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut other = socket.connect(server.addr).await.expect("connect");
    assert_eq!(healthz(&mut other).await, 200);
    // A closed connection frees its slot; the refusal was counted.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics = loop {
        let mut stream = connect(&server).await;
        let sent = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: herald\r\n\r\n").await;
        let mut probe = [0u8; 1];
        let refused = sent.is_err() || matches!(stream.peek(&mut probe).await, Ok(0) | Err(_));
        if !refused {
            let (status, body) = read_response(&mut stream).await;
            if status == 200 {
                break body;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot was not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_connections_refused_total "))
        .expect("the refusal metric")
        .trim()
        .parse()
        .expect("a number");
    assert!(refused >= 1.0, "{refused}");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_within_the_grace_period_with_a_slowloris_and_a_live_stream_open() {
    let mut server = start(ServerConfig {
        shutdown_grace: Duration::from_millis(500),
        ..config()
    })
    .await;
    let mut slowloris = connect(&server).await;
    slowloris
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: her")
        .await
        .expect("write");
    // A live stream on a reused connection (hyper's), whose reader reads nothing more.
    let mut live = connect(&server).await;
    assert_eq!(healthz(&mut live).await, 200);
    let request = format!(
        "GET /api/events/live HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {}\r\n\r\n",
        server.token
    );
    live.write_all(request.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    tokio::time::timeout(WAIT, live.read_exact(&mut head))
        .await
        .expect("the stream's head arrives")
        .expect("read");
    assert_eq!(&head, b"HTTP/1.1 200");
    // Both are in the server's hands; now stop it.
    server
        .running
        .shutdown
        .take()
        .expect("sender")
        .send(())
        .expect("running");
    let result = tokio::time::timeout(WAIT, server.running.handle.take().expect("handle"))
        .await
        .expect("run returns within the grace period (plus a margin)")
        .expect("run did not panic");
    result.expect("run returns Ok");
    closed_by_server(&mut slowloris).await;
    closed_by_server(&mut live).await;
}
