//! Agents and brokers (API.md §10): commands in from NATS JetStream and from
//! a Redis stream, events out to NATS, against the local servers (see
//! `support/brokers.rs`). Each test uses a fresh `--broker-prefix`, so its
//! streams and keys are its own.

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald_core::auth::Role;
use herald_core::store::{EventStore as _, Filter};
use herald_server::ServerConfig;
use herald_server::broker_config::DEFAULT_ACK_WAIT;
use herald_server::brokers::nats::{NatsConfig, run};
use herald_server::brokers::redis::RedisConfig;
use herald_server::brokers::{Credentials, Decision, decide};
use redis::AsyncCommands as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::brokers::{
    StallingProxy, eventually, fresh_prefix, nats_url, publish, redis_url, remove_streams, stored, stored_at_least,
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_jetstream_are_decided_once_and_refusals_dead_lettered() {
    let Some(client) = support::brokers::nats().await else {
        return;
    };
    let server = support::start(support::config()).await;
    let agent = support::mint(&server.state, "nats-tests", "deploy-bot", Role::Operator).await;
    let viewer = support::mint(&server.state, "nats-tests", "watcher", Role::Viewer).await;
    let prefix = fresh_prefix();
    let credentials = Credentials::parse([
        format!("agent={}", agent.secret).as_str(),
        format!("watcher={}", viewer.secret).as_str(),
    ])
    .expect("credentials");
    let config = NatsConfig {
        url: nats_url(),
        prefix: prefix.clone(),
        credentials,
        ack_wait: DEFAULT_ACK_WAIT,
    };
    let commands_stream = config.stream_name("COMMANDS");
    let dead_stream = config.stream_name("DEAD");
    let consumer = tokio::spawn(run(server.state.clone(), Arc::new(config)));

    let js = async_nats::jetstream::new(client);
    let deadline = tokio::time::Instant::now() + WAIT;
    while js.get_stream(&commands_stream).await.is_err() || js.get_stream(&dead_stream).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "herald never created its streams"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = json!({
        "type": "StartDeployment", "aggregate_id": "web", "command_id": "nats-start-web",
        "data": { "service": "web" }
    });
    let start = serde_json::to_vec(&start).expect("json");
    // The same message twice (as a redelivery would be): one event.
    publish(&js, format!("{prefix}.commands.agent"), start.clone()).await;
    publish(&js, format!("{prefix}.commands.agent"), start).await;
    // Four that can never succeed.
    publish(&js, format!("{prefix}.commands.agent"), b"{not json".to_vec()).await;
    let no_id = json!({ "type": "StartDeployment", "aggregate_id": "api", "data": { "service": "api" } });
    publish(
        &js,
        format!("{prefix}.commands.agent"),
        serde_json::to_vec(&no_id).expect("json"),
    )
    .await;
    let by_viewer = json!({
        "type": "StartDeployment", "aggregate_id": "db", "command_id": "nats-viewer", "data": { "service": "db" }
    });
    publish(
        &js,
        format!("{prefix}.commands.watcher"),
        serde_json::to_vec(&by_viewer).expect("json"),
    )
    .await;
    publish(
        &js,
        format!("{prefix}.commands.stranger"),
        serde_json::to_vec(&by_viewer).expect("json"),
    )
    .await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let dead = loop {
        let dead = stored(&js, &dead_stream).await;
        if dead.len() >= 4 {
            break dead;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "4 dead letters expected, got {}",
            dead.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Messages of different aggregates are decided side by side: their dead
    // letters come in any order; each names the message it stands for.
    let mut statuses: Vec<(u64, String, String, u64)> = dead
        .iter()
        .map(|(_, h, body)| {
            (
                h.get("Herald-Sequence")
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0),
                h.get("Herald-Subject")
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default(),
                h.get("Herald-Status")
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default(),
                body["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        vec![
            (3, format!("{prefix}.commands.agent"), "400".to_owned(), 400),
            (4, format!("{prefix}.commands.agent"), "400".to_owned(), 400),
            (5, format!("{prefix}.commands.watcher"), "403".to_owned(), 403),
            (6, format!("{prefix}.commands.stranger"), "401".to_owned(), 401),
        ],
        "dead letters: {dead:?}"
    );
    let no_id = dead
        .iter()
        .find(|(_, h, _)| h.get("Herald-Sequence").map(|v| v.as_str()) == Some("4"))
        .expect("the dead letter of the message without command_id");
    assert!(
        no_id.2["detail"].as_str().unwrap_or_default().contains("command_id"),
        "{:?}",
        no_id.2
    );

    // Every message acknowledged (the dead letters came after the start's), and
    // the start appended once, by the agent's token.
    let page = server
        .state
        .store
        .read_all(0, &Filter::default(), 100)
        .await
        .expect("read the log");
    let starts: Vec<_> = page.events.iter().filter(|e| e.stream() == "deployment-web").collect();
    assert_eq!(starts.len(), 1, "one event for two deliveries of one command");
    let envelope: Value = serde_json::from_slice(starts[0].json()).expect("envelope");
    assert_eq!(envelope["actor"]["name"], "deploy-bot", "{envelope}");
    assert!(
        !page
            .events
            .iter()
            .any(|e| e.stream() == "deployment-db" || e.stream() == "deployment-api"),
        "a refused command appended nothing"
    );
    let mut consumer_info = js
        .get_stream(&commands_stream)
        .await
        .expect("stream")
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("herald")
        .await
        .expect("consumer");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = consumer_info.info().await.expect("consumer info");
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages left unacknowledged: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.abort();
    let _ = js.delete_stream(&commands_stream).await;
    let _ = js.delete_stream(&dead_stream).await;
}

fn nats_config(prefix: &str, agent_token: &str, ack_wait: Duration) -> NatsConfig {
    NatsConfig {
        url: nats_url(),
        prefix: prefix.to_owned(),
        credentials: Credentials::parse([format!("agent={agent_token}").as_str()]).expect("credentials"),
        ack_wait,
    }
}

fn redis_config(prefix: &str, agent_token: &str, claim_idle: Duration) -> RedisConfig {
    RedisConfig {
        url: redis_url(),
        prefix: prefix.to_owned(),
        credentials: Credentials::parse([format!("agent={agent_token}").as_str()]).expect("credentials"),
        claim_idle,
    }
}

fn start_command(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "StartDeployment", "aggregate_id": id, "command_id": format!("cmd-{id}"),
        "data": { "service": id }
    }))
    .expect("json")
}

/// The log's events of `stream`.
async fn events_of(server: &support::Server, stream: &str) -> Vec<Value> {
    let mut events = server.events().await;
    events.retain(|e| e["stream"] == stream);
    events
}

/// The log's head.
async fn head(server: &support::Server) -> u64 {
    server.state.store.head().await.expect("head").position
}

/// herald on `server`'s data directory again, with `config` (the running
/// one is shut down first).
async fn restart(server: support::Server, config: ServerConfig) -> support::Server {
    let dir = stop(server).await;
    support::serve(dir, config).await
}

/// Stops herald as a process that ends would (every task of its ends);
/// returns its data directory.
async fn stop(mut server: support::Server) -> tempfile::TempDir {
    server.state.live.shutdown.cancel();
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().expect("temp dir"));
    drop(server);
    // Its tasks see the shutdown at their next wake-up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    dir
}

async fn http_command(server: &support::Server, token: &str, body: &[u8]) -> StatusCode {
    server
        .client
        .post(server.url("/api/commands"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .expect("POST /api/commands")
        .status()
}

/// The Redis consumer group's pending count; `None` while herald has not
/// made the group yet (its consumer starts beside the test).
async fn redis_pending(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<usize> {
    match conn
        .xpending::<_, _, redis::streams::StreamPendingReply>(key, "herald")
        .await
    {
        Ok(reply) => Some(reply.count()),
        Err(e) if e.code() == Some("NOGROUP") => None,
        Err(e) => panic!("XPENDING: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_message_committed_but_not_acknowledged_is_redelivered_and_appends_once() {
    use async_nats::jetstream;
    use futures_util::StreamExt as _;
    let Some(client) = support::brokers::nats().await else {
        return;
    };
    let server = support::start(support::config()).await;
    let agent = support::mint(&server.state, "nats-tests", "deploy-bot", Role::Operator).await;
    let prefix = fresh_prefix();
    let config = nats_config(&prefix, &agent.secret, Duration::from_secs(1));
    let js = jetstream::new(client);
    // The streams and the durable consumer, as herald makes them.
    let consumer = herald_server::brokers::nats::set_up(&js, &config)
        .await
        .expect("set up");
    publish(&js, format!("{prefix}.commands.agent"), start_command("crash")).await;

    // An instance takes the message, commits its command, and dies before
    // it acknowledges it.
    let mut batch = consumer.fetch().max_messages(1).messages().await.expect("fetch");
    let message = batch.next().await.expect("a message").expect("message");
    let decided = decide(&server.state, &config.credentials, "agent", &message.payload).await;
    assert!(matches!(decided, Decision::Done), "{decided:?}");
    drop(message);
    drop(batch);
    assert_eq!(events_of(&server, "deployment-crash").await.len(), 1);

    // herald's consumer gets it again after the ack wait, and acknowledges it.
    let task = tokio::spawn(run(server.state.clone(), Arc::new(config.clone())));
    let info = eventually(WAIT, "the redelivered message acknowledged", || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?.clone();
            (info.num_ack_pending == 0 && info.num_pending == 0 && info.ack_floor.stream_sequence == 1).then_some(info)
        }
    })
    .await;
    assert!(info.delivered.consumer_sequence >= 2, "delivered again: {info:?}");
    assert_eq!(
        events_of(&server, "deployment-crash").await.len(),
        1,
        "the redelivery appended nothing"
    );
    task.abort();
    remove_streams(&js, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_a_redis_stream_are_decided_once_and_refusals_dead_lettered() {
    let Some(mut conn) = support::brokers::redis().await else {
        return;
    };
    let server = support::start(support::config()).await;
    let agent = support::mint(&server.state, "redis-tests", "deploy-bot", Role::Operator).await;
    let viewer = support::mint(&server.state, "redis-tests", "watcher", Role::Viewer).await;
    let prefix = fresh_prefix();
    let mut config = redis_config(&prefix, &agent.secret, DEFAULT_ACK_WAIT);
    config.credentials = Credentials::parse([
        format!("agent={}", agent.secret).as_str(),
        format!("watcher={}", viewer.secret).as_str(),
    ])
    .expect("credentials");
    let key = config.commands_key();
    let dead_key = config.dead_key();
    let add = |fields: Vec<(&'static str, Vec<u8>)>| {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            let _: String = conn.xadd(&key, "*", &fields).await.expect("XADD");
        }
    };
    // Entries added before herald first reads the stream are read too.
    let start = start_command("web");
    add(vec![("credential", b"agent".to_vec()), ("command", start.clone())]).await;
    add(vec![("credential", b"agent".to_vec()), ("command", start)]).await;
    let consumer = tokio::spawn(herald_server::brokers::redis::run(
        server.state.clone(),
        Arc::new(config.clone()),
    ));
    add(vec![
        ("credential", b"agent".to_vec()),
        ("command", b"{not json".to_vec()),
    ])
    .await;
    let no_id = json!({ "type": "StartDeployment", "aggregate_id": "api", "data": { "service": "api" } });
    add(vec![
        ("credential", b"agent".to_vec()),
        ("command", serde_json::to_vec(&no_id).expect("json")),
    ])
    .await;
    add(vec![
        ("credential", b"watcher".to_vec()),
        ("command", start_command("db")),
    ])
    .await;
    add(vec![
        ("credential", b"stranger".to_vec()),
        ("command", start_command("db")),
    ])
    .await;
    add(vec![("command", start_command("cache"))]).await;

    let dead: Vec<redis::streams::StreamId> = eventually(WAIT, "5 dead letters", || {
        let mut conn = conn.clone();
        let dead_key = dead_key.clone();
        async move {
            let reply: redis::streams::StreamRangeReply = conn.xrange_all(&dead_key).await.ok()?;
            (reply.ids.len() >= 5).then_some(reply.ids)
        }
    })
    .await;
    // Entries of different aggregates are decided side by side: their dead
    // letters come in any order. Each keeps the entry it stands for.
    let entries: redis::streams::StreamRangeReply = conn.xrange_all(&key).await.expect("XRANGE");
    let mut letters: Vec<(usize, String, String, u64)> = dead
        .iter()
        .map(|d| {
            let problem: Value =
                serde_json::from_slice(&d.get::<Vec<u8>>("problem").unwrap_or_default()).unwrap_or(Value::Null);
            let entry = d.get::<String>("entry").unwrap_or_default();
            let original = entries
                .ids
                .iter()
                .position(|e| e.id == entry)
                .expect("the entry a dead letter names");
            assert_eq!(
                d.get::<Vec<u8>>("command"),
                entries.ids[original].get::<Vec<u8>>("command"),
                "a dead letter keeps the command as sent"
            );
            (
                original,
                d.get::<String>("credential").unwrap_or_default(),
                d.get::<String>("status").unwrap_or_default(),
                problem["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    letters.sort();
    assert_eq!(
        letters,
        vec![
            (2, "agent".to_owned(), "400".to_owned(), 400),
            (3, "agent".to_owned(), "400".to_owned(), 400),
            (4, "watcher".to_owned(), "403".to_owned(), 403),
            (5, "stranger".to_owned(), "401".to_owned(), 401),
            (6, String::new(), "400".to_owned(), 400),
        ],
        "dead letters: {dead:?}"
    );
    let no_fields = dead
        .iter()
        .find(|d| d.get::<String>("credential").unwrap_or_default().is_empty())
        .expect("the entry without a credential");
    let no_fields: Value =
        serde_json::from_slice(&no_fields.get::<Vec<u8>>("problem").unwrap_or_default()).expect("problem");
    assert!(
        no_fields["detail"].as_str().unwrap_or_default().contains("credential"),
        "{no_fields}"
    );

    let starts = events_of(&server, "deployment-web").await;
    assert_eq!(starts.len(), 1, "one event for two entries of one command");
    assert_eq!(starts[0]["actor"]["name"], "deploy-bot");
    for refused in ["deployment-api", "deployment-db", "deployment-cache"] {
        assert!(
            events_of(&server, refused).await.is_empty(),
            "{refused}: refused, nothing appended"
        );
    }
    eventually(WAIT, "every entry acknowledged", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move { (redis_pending(&mut conn, &key).await == Some(0)).then_some(()) }
    })
    .await;
    consumer.abort();
    let _: () = conn.del(&[&key, &dead_key]).await.expect("DEL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_entry_left_pending_by_a_dead_consumer_is_claimed_and_appends_once() {
    let Some(mut conn) = support::brokers::redis().await else {
        return;
    };
    let server = support::start(support::config()).await;
    let agent = support::mint(&server.state, "redis-tests", "deploy-bot", Role::Operator).await;
    let prefix = fresh_prefix();
    let config = redis_config(&prefix, &agent.secret, Duration::from_secs(1));
    let key = config.commands_key();
    let _: () = conn
        .xgroup_create_mkstream(&key, "herald", "0")
        .await
        .expect("XGROUP CREATE");
    let _: String = conn
        .xadd(
            &key,
            "*",
            &[("credential", b"agent".to_vec()), ("command", start_command("crash"))],
        )
        .await
        .expect("XADD");
    // A consumer reads it, commits its command, and dies before XACK.
    let options = redis::streams::StreamReadOptions::default()
        .group("herald", "crashed")
        .count(1);
    let read: redis::streams::StreamReadReply =
        conn.xread_options(&[&key], &[">"], &options).await.expect("XREADGROUP");
    let entry = &read.keys[0].ids[0];
    let command: Vec<u8> = entry.get("command").expect("command");
    let decided = decide(&server.state, &config.credentials, "agent", &command).await;
    assert!(matches!(decided, Decision::Done), "{decided:?}");
    assert_eq!(redis_pending(&mut conn, &key).await, Some(1));

    let task = tokio::spawn(herald_server::brokers::redis::run(
        server.state.clone(),
        Arc::new(config.clone()),
    ));
    eventually(WAIT, "the dead consumer's entry claimed and acknowledged", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move { (redis_pending(&mut conn, &key).await == Some(0)).then_some(()) }
    })
    .await;
    assert_eq!(
        events_of(&server, "deployment-crash").await.len(),
        1,
        "the claimed entry appended nothing"
    );
    task.abort();
    let _: () = conn.del(&[&key, &config.dead_key()]).await.expect("DEL");
}

/// Every message of the events stream is an event of the log, once, in
/// position order, with its id as `Nats-Msg-Id`; returns how many.
fn check_relayed(relayed: &[(String, async_nats::HeaderMap, Value)], prefix: &str) -> usize {
    for (i, (subject, headers, envelope)) in relayed.iter().enumerate() {
        assert_eq!(
            envelope["position"].as_u64(),
            Some(i as u64 + 1),
            "in position order, once each"
        );
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            envelope["id"].as_str(),
            "Nats-Msg-Id is the event id"
        );
        let stream = envelope["stream"].as_str().unwrap_or_default();
        let category = stream.split_once('-').map_or(stream, |(c, _)| c);
        assert_eq!(
            subject,
            &format!(
                "{prefix}.events.{category}.{}",
                envelope["type"].as_str().unwrap_or_default()
            )
        );
    }
    relayed.len()
}

fn relay_checkpoint(dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("readmodels").join("nats_relay.db")).expect("open the relay's checkpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_every_event_in_order_and_resumes_from_its_checkpoint() {
    let Some(client) = support::brokers::nats().await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let server = support::start(support::config()).await;
    let agent = support::mint(&server.state, "relay-tests", "deploy-bot", Role::Operator).await;
    let prefix = fresh_prefix();
    let nats = nats_config(&prefix, &agent.secret, DEFAULT_ACK_WAIT);
    let events_stream = nats.stream_name("EVENTS");
    let with_nats = ServerConfig {
        nats: Some(nats.clone()),
        ..support::config()
    };
    let server = restart(server, with_nats.clone()).await;
    for i in 0..6 {
        let status = http_command(&server, &agent.secret, &start_command(&format!("relay-{i}"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let first_head = head(&server).await;
    let relayed = stored_at_least(&js, &events_stream, first_head).await;
    assert_eq!(check_relayed(&relayed, &prefix) as u64, first_head);
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics");
    assert!(
        metrics.contains("herald_projection_lag_events{projection=\"nats_relay\"}"),
        "the relay's lag is a metric"
    );

    // A crash after the relay published and before its checkpoint moved:
    // the checkpoint is behind what NATS holds.
    let dir = stop(server).await;
    relay_checkpoint(dir.path())
        .execute("UPDATE checkpoint SET position = 2", [])
        .expect("rewind the checkpoint");
    let server = support::serve(dir, with_nats).await;
    for i in 6..10 {
        let status = http_command(&server, &agent.secret, &start_command(&format!("relay-{i}"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let last_head = head(&server).await;
    let dir = server.dir.path().to_owned();
    eventually(WAIT, "the relay's checkpoint at the head", || {
        let dir = dir.clone();
        async move {
            let at: i64 = relay_checkpoint(&dir)
                .query_row("SELECT position FROM checkpoint", [], |r| r.get(0))
                .ok()?;
            (at as u64 >= last_head).then_some(())
        }
    })
    .await;
    // Positions 3..first_head were published twice; JetStream kept one of each.
    let relayed = stored(&js, &events_stream).await;
    assert_eq!(
        check_relayed(&relayed, &prefix) as u64,
        last_head,
        "nothing lost, nothing twice"
    );
    stop(server).await;
    remove_streams(&js, &nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_broker_does_not_hold_up_http_commands() {
    let Some(client) = support::brokers::nats().await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let target = nats_url()
        .trim_start_matches("nats://")
        .parse::<std::net::SocketAddr>()
        .expect("HERALD_TEST_NATS as nats://IP:PORT");
    let proxy = StallingProxy::start(target).await;
    let server = support::start(support::config()).await;
    let agent = support::mint(&server.state, "stall-tests", "deploy-bot", Role::Operator).await;
    let prefix = fresh_prefix();
    let mut nats = nats_config(&prefix, &agent.secret, DEFAULT_ACK_WAIT);
    nats.url = format!("nats://{}", proxy.addr);
    let events_stream = nats.stream_name("EVENTS");
    let server = restart(
        server,
        ServerConfig {
            nats: Some(nats.clone()),
            ..support::config()
        },
    )
    .await;
    assert_eq!(
        http_command(&server, &agent.secret, &start_command("stall-0")).await,
        StatusCode::OK
    );
    let before = head(&server).await;
    stored_at_least(&js, &events_stream, before).await;

    // The broker stops answering (its sockets stay open).
    proxy.set_stalled(true);
    for i in 1..=20 {
        let status = http_command(&server, &agent.secret, &start_command(&format!("stall-{i}"))).await;
        assert_eq!(status, StatusCode::OK, "an HTTP command while the broker is stalled");
    }
    // All twenty were answered while not one reached the broker: HTTP never
    // waited for it.
    assert_eq!(head(&server).await, before + 20);
    assert_eq!(
        stored(&js, &events_stream).await.len() as u64,
        before,
        "nothing got through the stalled proxy"
    );

    proxy.set_stalled(false);
    let after = head(&server).await;
    let relayed = stored_at_least(&js, &events_stream, after).await;
    assert_eq!(check_relayed(&relayed, &prefix) as u64, after);
    stop(server).await;
    remove_streams(&js, &nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_restarted_mid_stream_loses_nothing_and_appends_nothing_twice() {
    let Some(client) = support::brokers::nats().await else {
        return;
    };
    let Some(mut conn) = support::brokers::redis().await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let server = support::start(support::config()).await;
    let agent = support::mint(&server.state, "restart-tests", "deploy-bot", Role::Operator).await;
    let prefix = fresh_prefix();
    let nats = nats_config(&prefix, &agent.secret, Duration::from_secs(1));
    let redis = redis_config(&prefix, &agent.secret, Duration::from_secs(1));
    let config = ServerConfig {
        nats: Some(nats.clone()),
        redis: Some(redis.clone()),
        ..support::config()
    };
    let server = restart(server, config.clone()).await;
    // herald made the commands stream.
    eventually(WAIT, "the commands stream", || {
        let js = &js;
        let name = nats.stream_name("COMMANDS");
        async move { js.get_stream(&name).await.ok().map(|_| ()) }
    })
    .await;

    const EACH: usize = 120;
    let agents = {
        let js = js.clone();
        let mut conn = conn.clone();
        let key = redis.commands_key();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            for i in 0..EACH {
                publish(&js, format!("{prefix}.commands.agent"), start_command(&format!("n{i}"))).await;
                let _: String = conn
                    .xadd(
                        &key,
                        "*",
                        &[
                            ("credential", b"agent".to_vec()),
                            ("command", start_command(&format!("r{i}"))),
                        ],
                    )
                    .await
                    .expect("XADD");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let deployments = |server: &support::Server| {
        let store = server.state.store.clone();
        async move {
            let filter = Filter {
                types: vec!["DeploymentStarted".into()],
                ..Filter::default()
            };
            let page = store.read_all(0, &filter, 10_000).await.expect("read");
            page.events.iter().map(|e| e.stream().to_owned()).collect::<Vec<_>>()
        }
    };
    eventually(WAIT, "some commands in", || {
        let seen = deployments(&server);
        async move { (seen.await.len() >= 40).then_some(()) }
    })
    .await;
    let server = restart(server, config).await;
    agents.await.expect("the agents");
    let streams = eventually(WAIT, "every command in", || {
        let seen = deployments(&server);
        async move {
            let seen = seen.await;
            (seen.len() >= 2 * EACH).then_some(seen)
        }
    })
    .await;
    let mut distinct = streams.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 2 * EACH, "every command once");
    assert_eq!(streams.len(), 2 * EACH, "nothing twice");
    let key = redis.commands_key();
    eventually(WAIT, "every Redis entry acknowledged", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move { (redis_pending(&mut conn, &key).await == Some(0)).then_some(()) }
    })
    .await;
    stop(server).await;
    let _: () = conn.del(&[&key, &redis.dead_key()]).await.expect("DEL");
    remove_streams(&js, &nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_is_decided_again_in_place_and_the_ones_after_it_wait() {
    let Some(client) = support::brokers::nats().await else {
        return;
    };
    let Some(mut conn) = support::brokers::redis().await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    // One command a second for the agent's token: most of these are 429 at
    // first, which is a decision to try again later.
    let limited = ServerConfig {
        command_rate: 1,
        ..support::config()
    };
    let server = support::start(limited.clone()).await;
    let agent = support::mint(&server.state, "delay-tests", "deploy-bot", Role::Operator).await;
    let prefix = fresh_prefix();
    let nats = nats_config(&prefix, &agent.secret, DEFAULT_ACK_WAIT);
    let redis = redis_config(&prefix, &agent.secret, DEFAULT_ACK_WAIT);
    let server = restart(
        server,
        ServerConfig {
            nats: Some(nats.clone()),
            redis: Some(redis.clone()),
            ..limited
        },
    )
    .await;
    eventually(WAIT, "the commands stream", || {
        let js = &js;
        let name = nats.stream_name("COMMANDS");
        async move { js.get_stream(&name).await.ok().map(|_| ()) }
    })
    .await;
    let steps = |id: &str| {
        [
            json!({ "type": "StartDeployment", "aggregate_id": id, "command_id": format!("{id}-1"), "data": { "service": id } }),
            json!({ "type": "ReportDeploymentProgress", "aggregate_id": id, "command_id": format!("{id}-2"), "data": { "percent": 50 } }),
            json!({ "type": "SucceedDeployment", "aggregate_id": id, "command_id": format!("{id}-3"), "data": {} }),
        ]
        .map(|c| serde_json::to_vec(&c).expect("json"))
    };
    for (n, r) in steps("n").into_iter().zip(steps("r")) {
        publish(&js, format!("{prefix}.commands.agent"), n).await;
        let _: String = conn
            .xadd(
                redis.commands_key(),
                "*",
                &[("credential", b"agent".to_vec()), ("command", r)],
            )
            .await
            .expect("XADD");
    }
    for stream in ["deployment-n", "deployment-r"] {
        let types = eventually(WAIT, "three events, in order", || {
            let server = &server;
            async move {
                let types: Vec<String> = events_of(server, stream)
                    .await
                    .iter()
                    .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
                    .collect();
                (types.len() >= 3).then_some(types)
            }
        })
        .await;
        assert_eq!(
            types,
            ["DeploymentStarted", "DeploymentProgressed", "DeploymentSucceeded"],
            "{stream}: in the order sent, none refused"
        );
    }
    assert!(
        stored(&js, &nats.stream_name("DEAD")).await.is_empty(),
        "nothing dead-lettered"
    );
    let dead: usize = conn.xlen(redis.dead_key()).await.expect("XLEN");
    assert_eq!(dead, 0, "nothing dead-lettered");
    stop(server).await;
    let _: () = conn
        .del(&[&redis.commands_key(), &redis.dead_key()])
        .await
        .expect("DEL");
    remove_streams(&js, &nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_how_far_the_relay_is_and_names_it_while_nats_is_unreachable() {
    // A port nothing listens on: the relay cannot connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut nats = nats_config(&fresh_prefix(), "unused", DEFAULT_ACK_WAIT);
    nats.url = format!("nats://127.0.0.1:{port}");
    let server = support::start(ServerConfig {
        nats: Some(nats),
        ..support::config()
    })
    .await;
    // An event for the relay to publish.
    support::mint(&server.state, "readyz-tests", "deploy-bot", Role::Operator).await;
    // Both parts fail on their own schedule: wait until both are named.
    let problem: Value = eventually(WAIT, "readyz 503 naming the relay and the consumer", || {
        let server = &server;
        async move {
            let r = server.client.get(server.url("/readyz")).send().await.ok()?;
            if r.status() != StatusCode::SERVICE_UNAVAILABLE {
                return None;
            }
            let problem: Value = r.json().await.ok()?;
            let detail = problem["detail"].as_str()?;
            (detail.contains("event relay to NATS") && detail.contains("NATS command consumer")).then_some(problem)
        }
    })
    .await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&port.to_string()), "{problem}");
    assert!(
        detail.contains("NATS command consumer"),
        "both parts are named: {problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_lists_the_relay_position_and_lag() {
    let Some(_) = support::brokers::nats().await else {
        return;
    };
    let server = support::start(ServerConfig {
        nats: Some(nats_config(&fresh_prefix(), "unused", DEFAULT_ACK_WAIT)),
        ..support::config()
    })
    .await;
    support::mint(&server.state, "readyz-tests", "deploy-bot", Role::Operator).await;
    let head = head(&server).await;
    let ready: Value = eventually(WAIT, "the relay caught up, on /readyz", || {
        let server = &server;
        async move {
            let r = server.client.get(server.url("/readyz")).send().await.ok()?;
            let body: Value = r.json().await.ok()?;
            (body["relays"]["nats_relay"]["position"].as_u64() >= Some(head)).then_some(body)
        }
    })
    .await;
    assert_eq!(ready["relays"]["nats_relay"]["lag"], 0, "{ready}");
    let nats = server.state.config.nats.clone();
    stop(server).await;
    if let (Some(nats), Some(client)) = (nats, support::brokers::nats().await) {
        remove_streams(&async_nats::jetstream::new(client), &nats).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_store_cannot_take_is_not_acknowledged_and_appends_once_the_store_is_back() {
    use std::sync::atomic::Ordering;
    let Some(client) = support::brokers::nats().await else {
        return;
    };
    let Some(mut conn) = support::brokers::redis().await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = support::Faulty::open(dir.path(), false, None);
    let state = herald_server::AppState::new(
        store.clone(),
        herald_store::credentials::SqliteCredentials::open(dir.path()).expect("open credentials"),
        herald_store::accounts::SqliteAccounts::open(dir.path()).expect("open accounts"),
        dir.path(),
        support::config(),
    )
    .expect("state");
    let agent = support::mint(&state, "store-tests", "deploy-bot", Role::Operator).await;
    let prefix = fresh_prefix();
    let nats = nats_config(&prefix, &agent.secret, DEFAULT_ACK_WAIT);
    let redis = redis_config(&prefix, &agent.secret, DEFAULT_ACK_WAIT);
    let consumer = herald_server::brokers::nats::set_up(&js, &nats).await.expect("set up");
    let tasks = [
        tokio::spawn(run(state.clone(), Arc::new(nats.clone()))),
        tokio::spawn(herald_server::brokers::redis::run(
            state.clone(),
            Arc::new(redis.clone()),
        )),
    ];

    // The store goes away; a command arrives on each broker.
    store.appends_failing.store(true, Ordering::SeqCst);
    publish(&js, format!("{prefix}.commands.agent"), start_command("n")).await;
    let _: String = conn
        .xadd(
            redis.commands_key(),
            "*",
            &[("credential", b"agent".to_vec()), ("command", start_command("r"))],
        )
        .await
        .expect("XADD");
    // Both taken, tried, and kept unacknowledged (with the retry after 1 s).
    eventually(WAIT, "both commands taken and held", || {
        let mut consumer = consumer.clone();
        let mut conn = conn.clone();
        let key = redis.commands_key();
        async move {
            let info = consumer.info().await.ok()?.clone();
            let held = info.num_ack_pending == 1 && redis_pending(&mut conn, &key).await == Some(1);
            held.then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let info = consumer.clone().info().await.expect("consumer info").clone();
    assert_eq!(
        (info.num_ack_pending, info.ack_floor.stream_sequence),
        (1, 0),
        "{info:?}"
    );
    assert_eq!(redis_pending(&mut conn, &redis.commands_key()).await, Some(1));
    let log = store.inner.read_all(0, &Filter::default(), 100).await.expect("read");
    assert!(
        !log.events.iter().any(|e| e.stream().starts_with("deployment-")),
        "nothing appended while the store was down"
    );

    // The store is back: each appended once, acknowledged, nothing dead-lettered.
    store.appends_failing.store(false, Ordering::SeqCst);
    eventually(WAIT, "both acknowledged", || {
        let mut consumer = consumer.clone();
        let mut conn = conn.clone();
        let key = redis.commands_key();
        async move {
            let info = consumer.info().await.ok()?.clone();
            let done =
                info.num_ack_pending == 0 && info.num_pending == 0 && redis_pending(&mut conn, &key).await == Some(0);
            done.then_some(())
        }
    })
    .await;
    let log = store.inner.read_all(0, &Filter::default(), 100).await.expect("read");
    for stream in ["deployment-n", "deployment-r"] {
        assert_eq!(
            log.events.iter().filter(|e| e.stream() == stream).count(),
            1,
            "{stream}"
        );
    }
    assert!(
        stored(&js, &nats.stream_name("DEAD")).await.is_empty(),
        "nothing dead-lettered"
    );
    let dead: usize = conn.xlen(redis.dead_key()).await.expect("XLEN");
    assert_eq!(dead, 0);
    state.live.shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let _: () = conn
        .del(&[&redis.commands_key(), &redis.dead_key()])
        .await
        .expect("DEL");
    remove_streams(&js, &nats).await;
}
