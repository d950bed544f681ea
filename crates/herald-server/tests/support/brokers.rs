//! The brokers the broker tests run against: the local NATS (JetStream on
//! 127.0.0.1:4222; `HERALD_TEST_NATS` overrides) and Redis (127.0.0.1:6379;
//! `HERALD_TEST_REDIS`), each test with a fresh `--broker-prefix`. Without a
//! server a test says so and passes, except under `CI=true`, where it fails.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

pub fn nats_url() -> String {
    std::env::var("HERALD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn missing(what: &str, url: &str, e: &dyn std::fmt::Display) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI=true and no {what} server to test on at {url}: {e}");
    eprintln!("skipped: no {what} server at {url} ({e})");
}

/// A connection to the test NATS server, or `None` (outside CI) when there is none.
pub async fn nats() -> Option<async_nats::Client> {
    let url = nats_url();
    match async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(url.as_str())
        .await
    {
        Ok(client) => Some(client),
        Err(e) => {
            missing("NATS", &url, &e);
            None
        }
    }
}

/// A connection to the test Redis server, or `None` (outside CI) when there is none.
pub async fn redis() -> Option<redis::aio::MultiplexedConnection> {
    let url = redis_url();
    let connected = async {
        redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await
    };
    match tokio::time::timeout(Duration::from_secs(3), connected).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            missing("Redis", &url, &e);
            None
        }
        Err(e) => {
            missing("Redis", &url, &e);
            None
        }
    }
}

pub fn fresh_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// Every message stored so far in a JetStream stream: (subject, headers, body).
pub async fn stored(js: &async_nats::jetstream::Context, stream: &str) -> Vec<(String, async_nats::HeaderMap, Value)> {
    let Ok(mut s) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let (first, last) = s
        .info()
        .await
        .map(|i| (i.state.first_sequence, i.state.last_sequence))
        .unwrap_or((1, 0));
    let mut out = Vec::new();
    for seq in first.max(1)..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push((
                m.subject.to_string(),
                m.headers,
                serde_json::from_slice(&m.payload).unwrap_or(Value::Null),
            ));
        }
    }
    out
}

/// Publishes to JetStream and waits until the message is stored.
pub async fn publish(js: &async_nats::jetstream::Context, subject: String, body: Vec<u8>) {
    js.publish(subject, body.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

/// Polls `f` every 50 ms until it returns `Some`, for `bound` at most.
pub async fn eventually<T, F, Fut>(bound: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy to `target` that can be stalled: while stalled, no byte
/// passes either way (a broker that stopped answering, its sockets open).
pub struct StallingProxy {
    pub addr: std::net::SocketAddr,
    stall: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    pub async fn start(target: std::net::SocketAddr) -> StallingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (stall, stalled) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pipe(ri, wo, stalled.clone()));
                tokio::spawn(pipe(ro, wi, stalled.clone()));
            }
        });
        StallingProxy { addr, stall, task }
    }

    pub fn set_stalled(&self, stalled: bool) {
        let _ = self.stall.send(stalled);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // What arrived while stalling waits, as in a broker that froze.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The messages of a JetStream stream once it holds at least `n`.
pub async fn stored_at_least(
    js: &async_nats::jetstream::Context,
    stream: &str,
    n: u64,
) -> Vec<(String, async_nats::HeaderMap, Value)> {
    eventually(
        Duration::from_secs(30),
        &format!("{n} messages in {stream}"),
        || async move {
            let messages = stored(js, stream).await;
            (messages.len() as u64 >= n).then_some(messages)
        },
    )
    .await
}

/// Deletes the streams herald made for `prefix` (what a test leaves behind).
pub async fn remove_streams(js: &async_nats::jetstream::Context, config: &herald_server::broker_config::NatsConfig) {
    for what in ["COMMANDS", "DEAD", "EVENTS"] {
        let _ = js.delete_stream(config.stream_name(what)).await;
    }
}
