//! The real `herald` binary consuming commands from NATS JetStream and from a
//! Redis stream (API.md §12), killed with `kill -9` in the middle of the
//! stream and started again on the same data directory: every command is
//! appended once (nothing lost, nothing twice), every broker message ends up
//! acknowledged, and the relay to NATS holds every event of the log once, in
//! position order, across the crash.
//!
//! It runs against the local brokers (NATS with JetStream on 127.0.0.1:4222,
//! `HERALD_TEST_NATS` overrides; Redis on 127.0.0.1:6379, `HERALD_TEST_REDIS`),
//! with a fresh `--broker-prefix`. Without them it says so and passes, except
//! under `CI=true`, where it fails.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use serde_json::{Value, json};
use support::*;

/// Commands sent through each broker.
const EACH: usize = 300;
/// `DeploymentStarted` events in the log when herald is killed (at least).
const KILL_AT: usize = 100;
/// Commands sent and not yet in the log at the kill (at least, if it comes).
const BACKLOG: usize = 3;

fn nats_url() -> String {
    std::env::var("HERALD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Without a broker: skip, or fail under `CI=true`.
fn missing(what: &str, url: &str, e: &dyn std::fmt::Display) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI=true and no {what} server to test on at {url}: {e}");
    eprintln!("skipped: no {what} server at {url} ({e})");
}

/// Every `serve` log of the test, for failure messages.
fn serve_logs(dir: &Path) -> String {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("the logs directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    names
        .iter()
        .map(|p| {
            format!(
                "--- {}\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect()
}

/// The streams of the `DeploymentStarted` events in the log's file (no herald running).
fn committed_starts(data: &Path) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(data.join("herald.db")).expect("open herald.db");
    let mut query = conn
        .prepare("SELECT stream FROM events WHERE type = 'DeploymentStarted'")
        .expect("a query");
    query
        .query_map([], |r| r.get(0))
        .expect("the events")
        .collect::<Result<_, _>>()
        .expect("the events")
}

/// The streams of the log's `DeploymentStarted` events, in position order, and the head.
fn started(addr: SocketAddr, token: &str) -> (Vec<String>, u64) {
    let (events, head) = events_where(addr, token, "type=DeploymentStarted");
    let streams = events
        .iter()
        .map(|raw| {
            let e: Value = serde_json::from_str(raw).expect("envelope");
            assert_eq!(e["type"], "DeploymentStarted", "{e}");
            e["stream"].as_str().expect("stream").to_owned()
        })
        .collect();
    (streams, head)
}

fn start_command(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "StartDeployment", "aggregate_id": id, "command_id": format!("cmd-{id}"),
        "data": { "service": "svc" }
    }))
    .expect("json")
}

/// The brokers, and what the test made on them, deleted when dropped (after
/// the server, declared later, is gone: a running herald would make its
/// streams again).
struct Brokers {
    rt: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
    redis: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl Brokers {
    fn connect() -> Option<Brokers> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (nats, redis) = rt.block_on(async {
            let url = nats_url();
            let nats = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(3))
                .connect(url.as_str())
                .await
                .map_err(|e| missing("NATS", &url, &e))
                .ok()
                // The context spawns its acknowledger: inside the runtime.
                .map(async_nats::jetstream::new);
            let url = redis_url();
            let connected = async {
                redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await
            };
            let redis = match tokio::time::timeout(Duration::from_secs(3), connected).await {
                Ok(Ok(conn)) => Some(conn),
                Ok(Err(e)) => {
                    missing("Redis", &url, &e);
                    None
                }
                Err(e) => {
                    missing("Redis", &url, &e);
                    None
                }
            };
            (nats, redis)
        });
        Some(Brokers {
            js: nats?,
            redis: redis?,
            rt,
            prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
        })
    }

    fn stream_name(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix.to_uppercase())
    }

    fn commands_key(&self) -> String {
        format!("{}:commands", self.prefix)
    }

    /// Polls `check` every 50 ms until it returns `Some`; panics after [`WAIT`].
    fn eventually<T, Fut>(&self, what: &str, mut check: impl FnMut() -> Fut) -> T
    where
        Fut: std::future::Future<Output = Option<T>>,
    {
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                if let Some(v) = check().await {
                    return v;
                }
                assert!(tokio::time::Instant::now() < deadline, "gave up waiting until {what}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// The aggregate ids of the commands delivered and not acknowledged:
    /// JetStream's (herald acknowledges in stream order, so they are the
    /// consumer's `num_ack_pending` just past its ack floor; the one a kill
    /// caught on its way to the dead client counts as redelivered and is not
    /// in `delivered`), and the Redis group's.
    fn unacknowledged(&self) -> (Vec<String>, Vec<String>) {
        let aggregate = |body: &[u8]| -> String {
            let command: Value = serde_json::from_slice(body).expect("a command");
            command["aggregate_id"].as_str().expect("aggregate_id").to_owned()
        };
        self.rt.block_on(async {
            let stream = self
                .js
                .get_stream(self.stream_name("COMMANDS"))
                .await
                .expect("the commands stream");
            let info = stream.consumer_info("herald").await.expect("the consumer");
            let mut nats = Vec::new();
            let floor = info.ack_floor.stream_sequence;
            for seq in floor + 1..=floor + info.num_ack_pending as u64 {
                let m = stream.get_raw_message(seq).await.expect("a stored command");
                nats.push(aggregate(&m.payload));
            }
            let mut conn = self.redis.clone();
            let key = self.commands_key();
            let pending: redis::streams::StreamPendingCountReply = conn
                .xpending_count(&key, "herald", "-", "+", 1000)
                .await
                .expect("XPENDING");
            let mut redis = Vec::new();
            for p in &pending.ids {
                let entry: redis::streams::StreamRangeReply = conn.xrange(&key, &p.id, &p.id).await.expect("XRANGE");
                let command: Vec<u8> = entry.ids[0].get("command").expect("a command field");
                redis.push(aggregate(&command));
            }
            (nats, redis)
        })
    }

    /// Every message of a JetStream stream: (subject, Nats-Msg-Id, body).
    fn stored(&self, stream: &str) -> Vec<(String, Option<String>, Value)> {
        self.rt.block_on(async {
            let mut s = self.js.get_stream(stream).await.expect("the stream");
            let info = s.info().await.expect("stream info");
            let (first, last) = (info.state.first_sequence.max(1), info.state.last_sequence);
            let mut out = Vec::new();
            for seq in first..=last {
                let m = s.get_raw_message(seq).await.expect("a stored message");
                out.push((
                    m.subject.to_string(),
                    m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()),
                    serde_json::from_slice(&m.payload).expect("a JSON body"),
                ));
            }
            out
        })
    }
}

impl Drop for Brokers {
    fn drop(&mut self) {
        let keys = [self.commands_key(), format!("{}:dead", self.prefix)];
        let streams = ["COMMANDS", "DEAD", "EVENTS"].map(|s| self.stream_name(s));
        let (js, mut redis) = (self.js.clone(), self.redis.clone());
        self.rt.block_on(async move {
            for stream in &streams {
                let _ = js.delete_stream(stream).await;
            }
            let _: redis::RedisResult<()> = redis.del(&keys).await;
        });
    }
}

#[test]
fn herald_killed_mid_stream_loses_no_broker_command_appends_none_twice_and_relays_each_event_once() {
    let Some(brokers) = Brokers::connect() else { return };
    let began = Instant::now();
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let token = create_token(&data, "deploy-bot", "operator");
    let prefix = brokers.prefix.clone();
    let credential = format!("agent={token}");
    let serve = || {
        start_serve(tmp.path(), "/healthz", |addr| {
            let mut cmd = herald(&data);
            cmd.arg("serve")
                .args(["--listen", &addr.to_string(), "--command-rate", "0"])
                .args(["--nats", &nats_url(), "--redis", &redis_url()])
                .args(["--nats-credential", &credential])
                .args(["--broker-prefix", &prefix, "--broker-ack-wait-seconds", "1"]);
            cmd
        })
    };
    let server = serve();
    let commands_stream = brokers.stream_name("COMMANDS");
    brokers.eventually("herald created its commands stream", || {
        let js = brokers.js.clone();
        let name = commands_stream.clone();
        async move { js.get_stream(&name).await.ok().map(|_| ()) }
    });

    // The agents: one command through each broker in turn, a few ms apart.
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let js = brokers.js.clone();
        let mut conn = brokers.redis.clone();
        let subject = format!("{prefix}.commands.agent");
        let key = brokers.commands_key();
        let published = published.clone();
        brokers.rt.spawn(async move {
            for i in 0..EACH {
                js.publish(subject.clone(), start_command(&format!("n{i}")).into())
                    .await
                    .expect("publish")
                    .await
                    .expect("JetStream stored the command");
                published.fetch_add(1, Ordering::SeqCst);
                let fields = [
                    ("credential", b"agent".to_vec()),
                    ("command", start_command(&format!("r{i}"))),
                ];
                let _: String = conn.xadd(&key, "*", &fields).await.expect("XADD");
                published.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };

    // The kill: once KILL_AT are in, at a moment commands sent before the
    // count are not in it yet (herald has some in hand), or, should herald
    // keep up every time, before two thirds are sent.
    let (mut at_kill, mut sent_at_kill) = (0, 0);
    poll_until("some commands are in the log", || {
        sent_at_kill = published.load(Ordering::SeqCst);
        at_kill = started(server.addr, &token).0.len();
        at_kill >= KILL_AT && (at_kill + BACKLOG <= sent_at_kill || sent_at_kill >= 4 * EACH / 3)
    });
    server.kill();
    let killed_after = began.elapsed();
    // The log as the killed process left it, and what it had in hand.
    let in_log = committed_starts(&data);
    let (nats_unacked, redis_unacked) = brokers.unacknowledged();
    let committed = |ids: &[String]| {
        ids.iter()
            .filter(|id| in_log.contains(&format!("deployment-{id}")))
            .count()
    };
    eprintln!(
        "kill -9 at {killed_after:?}: {} DeploymentStarted in the log ({at_kill} seen just before), \
         {sent_at_kill} of {} commands sent before; left unacknowledged: {} JetStream messages \
         ({} of them committed), {} Redis entries ({} committed)",
        in_log.len(),
        2 * EACH,
        nats_unacked.len(),
        committed(&nats_unacked),
        redis_unacked.len(),
        committed(&redis_unacked),
    );
    // Relayed past the relay's checkpoint: published again after the restart.
    let relay_checkpoint: Option<i64> = rusqlite::Connection::open(data.join("readmodels").join("nats_relay.db"))
        .and_then(|c| c.query_row("SELECT position FROM checkpoint", [], |r| r.get(0)))
        .ok();
    let relayed_at_kill = brokers.rt.block_on(async {
        let mut s = brokers.js.get_stream(brokers.stream_name("EVENTS")).await.ok()?;
        s.info().await.ok().map(|i| i.state.messages)
    });
    eprintln!("relay at the kill: checkpoint {relay_checkpoint:?}, {relayed_at_kill:?} events in NATS");
    assert!(
        in_log.len() < 2 * EACH && sent_at_kill < 2 * EACH,
        "herald was killed only after the stream ended ({} events, {sent_at_kill} sent): \
         the kill must fall in the middle of it",
        in_log.len()
    );
    let server = serve();
    brokers
        .rt
        .block_on(async { tokio::time::timeout(WAIT, publisher).await })
        .expect("the agents finished in time")
        .expect("the agents");

    let logs = || serve_logs(tmp.path());
    let expected: BTreeSet<String> = (0..EACH)
        .flat_map(|i| [format!("deployment-n{i}"), format!("deployment-r{i}")])
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let (streams, _) = started(server.addr, &token);
        if streams.len() >= 2 * EACH {
            break;
        }
        if Instant::now() > deadline {
            let seen: BTreeSet<String> = streams.into_iter().collect();
            let lost: Vec<_> = expected.difference(&seen).collect();
            panic!("never in the log ({} of them): {lost:?}\n{}", lost.len(), logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every message acknowledged (what the killed process took and did not
    // acknowledge was delivered again, and found its command_id) ...
    let key = brokers.commands_key();
    brokers.eventually("every Redis entry acknowledged", || {
        let mut conn = brokers.redis.clone();
        let key = key.clone();
        async move {
            let reply: redis::streams::StreamPendingReply = conn.xpending(&key, "herald").await.ok()?;
            (reply.count() == 0).then_some(())
        }
    });
    brokers.eventually("every JetStream message acknowledged", || {
        let js = brokers.js.clone();
        let name = commands_stream.clone();
        async move {
            let info = js.get_stream(&name).await.ok()?.consumer_info("herald").await.ok()?;
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
        }
    });
    // Nothing refused: a redelivery that missed its command_id would be a
    // conflict (the deployment is started already), dead-lettered.
    let dead_nats = brokers.stored(&brokers.stream_name("DEAD"));
    let dead_redis: usize = brokers
        .rt
        .block_on(brokers.redis.clone().xlen(format!("{prefix}:dead")))
        .expect("XLEN");
    assert!(
        dead_nats.is_empty() && dead_redis == 0,
        "dead letters: {dead_nats:?}, {dead_redis} in Redis\n{}",
        logs()
    );
    // ... and then each command appended exactly once.
    let (streams, head) = started(server.addr, &token);
    let distinct: BTreeSet<String> = streams.iter().cloned().collect();
    let lost: Vec<_> = expected.difference(&distinct).collect();
    let unexpected: Vec<_> = distinct.difference(&expected).collect();
    assert!(
        lost.is_empty() && unexpected.is_empty(),
        "lost: {lost:?}; unexpected: {unexpected:?}\n{}",
        logs()
    );
    let mut twice: Vec<&String> = Vec::new();
    let mut seen = BTreeSet::new();
    for s in &streams {
        if !seen.insert(s) {
            twice.push(s);
        }
    }
    assert!(twice.is_empty(), "appended twice: {twice:?}\n{}", logs());
    assert_eq!(streams.len(), 2 * EACH, "every command once");

    // The relay: every event of the log once, in position order, as in the log.
    let events_stream = brokers.stream_name("EVENTS");
    let relayed = brokers.eventually("the relay reached the head", || {
        let js = brokers.js.clone();
        let name = events_stream.clone();
        async move {
            let info = js.get_stream(&name).await.ok()?.info().await.ok()?.clone();
            (info.state.messages >= head).then_some(info.state.messages)
        }
    });
    let (log, head_now) = all_events(server.addr, &token);
    assert_eq!(head_now, head, "nothing appended after every command was in");
    let relayed_messages = brokers.stored(&events_stream);
    assert_eq!(
        relayed_messages.len() as u64,
        head,
        "the events stream holds each event once ({relayed} messages)"
    );
    for (i, (subject, msg_id, envelope)) in relayed_messages.iter().enumerate() {
        let position = i as u64 + 1;
        assert_eq!(
            envelope["position"].as_u64(),
            Some(position),
            "in position order, once each: {envelope}"
        );
        assert_eq!(
            msg_id.as_deref(),
            envelope["id"].as_str(),
            "Nats-Msg-Id is the event id"
        );
        let stored: Value = serde_json::from_str(&log[i]).expect("envelope");
        assert_eq!(envelope, &stored, "the relayed envelope is the log's at {position}");
        let stream = envelope["stream"].as_str().unwrap_or_default();
        let category = stream.split_once('-').map_or(stream, |(c, _)| c);
        let kind = envelope["type"].as_str().unwrap_or_default();
        assert_eq!(subject, &format!("{prefix}.events.{category}.{kind}"));
    }

    let redeliveries = brokers.rt.block_on(async {
        let info = brokers
            .js
            .get_stream(&commands_stream)
            .await
            .expect("the commands stream")
            .consumer_info("herald")
            .await
            .expect("the consumer");
        info.delivered.consumer_sequence - info.delivered.stream_sequence
    });
    let all = logs();
    // "took over commands another Redis consumer left unacknowledged count=N"
    let claimed: usize = all
        .lines()
        .filter(|l| l.contains("left unacknowledged"))
        .filter_map(|l| l.split("count=").nth(1))
        .filter_map(|n| {
            n.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<usize>()
                .ok()
        })
        .sum();
    eprintln!("after the restart: {redeliveries} JetStream redeliveries, {claimed} Redis entries claimed");
    assert!(!all.contains("panicked"), "a panic in serve:\n{all}");
    server.kill();
    eprintln!(
        "{} commands in once each, {head} events relayed once each, in {:?}",
        2 * EACH,
        began.elapsed()
    );
}
