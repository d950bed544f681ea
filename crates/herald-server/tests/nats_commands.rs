//! Commands in from NATS JetStream (API.md §10), against the local NATS
//! server (JetStream on 127.0.0.1:4222; `HERALD_TEST_NATS` overrides). Each
//! test uses a fresh `--broker-prefix`, so its streams are its own. Without a
//! server the test says so and passes, except under `CI=true`, where it fails.

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald_core::auth::Role;
use herald_core::store::Filter;
use herald_server::brokers::Credentials;
use herald_server::brokers::nats::{NatsConfig, run};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn nats_url() -> String {
    std::env::var("HERALD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A connection to the test server, or `None` (outside CI) when there is none.
async fn connect() -> Option<async_nats::Client> {
    let url = nats_url();
    match async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(url.as_str())
        .await
    {
        Ok(client) => Some(client),
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "CI=true and no NATS server to test on at {url}: {e}");
            eprintln!("skipped: no NATS server at {url} ({e})");
            None
        }
    }
}

fn fresh_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// Every message stored so far on `subject` (a JetStream stream's subject),
/// read with an ordered consumer: (headers, body).
async fn stored(js: &async_nats::jetstream::Context, stream: &str) -> Vec<(async_nats::HeaderMap, Value)> {
    let Ok(mut s) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let count = s.info().await.map(|i| i.state.messages).unwrap_or(0);
    let mut out = Vec::new();
    for seq in 1..=count {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push((m.headers, serde_json::from_slice(&m.payload).unwrap_or(Value::Null)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_jetstream_are_decided_once_and_refusals_dead_lettered() {
    let Some(client) = connect().await else { return };
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
    let publish = |subject: String, body: Vec<u8>| {
        let js = js.clone();
        async move {
            js.publish(subject, body.into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    };
    let start = json!({
        "type": "StartDeployment", "aggregate_id": "web", "command_id": "nats-start-web",
        "data": { "service": "web" }
    });
    let start = serde_json::to_vec(&start).expect("json");
    // The same message twice (as a redelivery would be): one event.
    publish(format!("{prefix}.commands.agent"), start.clone()).await;
    publish(format!("{prefix}.commands.agent"), start).await;
    // Four that can never succeed.
    publish(format!("{prefix}.commands.agent"), b"{not json".to_vec()).await;
    let no_id = json!({ "type": "StartDeployment", "aggregate_id": "api", "data": { "service": "api" } });
    publish(
        format!("{prefix}.commands.agent"),
        serde_json::to_vec(&no_id).expect("json"),
    )
    .await;
    let by_viewer = json!({
        "type": "StartDeployment", "aggregate_id": "db", "command_id": "nats-viewer", "data": { "service": "db" }
    });
    publish(
        format!("{prefix}.commands.watcher"),
        serde_json::to_vec(&by_viewer).expect("json"),
    )
    .await;
    publish(
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
    let statuses: Vec<(String, String, u64)> = dead
        .iter()
        .map(|(h, body)| {
            (
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
    assert_eq!(
        statuses,
        vec![
            (format!("{prefix}.commands.agent"), "400".to_owned(), 400),
            (format!("{prefix}.commands.agent"), "400".to_owned(), 400),
            (format!("{prefix}.commands.watcher"), "403".to_owned(), 403),
            (format!("{prefix}.commands.stranger"), "401".to_owned(), 401),
        ],
        "dead letters: {dead:?}"
    );
    assert!(
        dead[1].1["detail"].as_str().unwrap_or_default().contains("command_id"),
        "{:?}",
        dead[1].1
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
