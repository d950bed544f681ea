//! Two herald instances on one PostgreSQL database (`AppState::open_postgres`
//! twice, each serving HTTP with its own consumer runner): a command sent to
//! one is read on the other with `min_position` — also for a read model the
//! command did not touch, on the instance that does not lead it —, a resource
//! stream on one hears of changes applied by the other, and when the leader of
//! the read models stops, the other takes over from the checkpoint.

mod support;

use std::time::Duration;

use herald_core::auth::Role;
use herald_postgres::PgConfig;
use herald_postgres::testing::TestDatabase;
use herald_server::{AppState, ServerConfig};
use serde_json::{Value, json};
use support::Running;

const WAIT: Duration = Duration::from_secs(20);

struct Instance {
    base: String,
    state: AppState,
    running: Option<Running>,
}

async fn instance(db: &TestDatabase) -> Instance {
    instance_with(db, None).await
}

/// An instance, relaying to NATS with `nats`.
async fn instance_with(db: &TestDatabase, nats: Option<herald_server::broker_config::NatsConfig>) -> Instance {
    let config = ServerConfig {
        command_rate: 0,
        keepalive: Duration::from_millis(200),
        nats,
        ..ServerConfig::default()
    };
    let state = AppState::open_postgres(
        db.url().parse().expect("test database URL"),
        PgConfig::default(),
        config,
    )
    .await
    .expect("open on PostgreSQL");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    Instance {
        base: format!("http://{addr}"),
        state: state.clone(),
        running: Some(Running::spawn(state, listener)),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

async fn command(at: &Instance, token: &str, command_type: &str, id: &str, data: Value) -> u64 {
    let r = client()
        .post(format!("{}/api/commands", at.base))
        .bearer_auth(token)
        .json(&json!({ "type": command_type, "aggregate_id": id, "data": data }))
        .send()
        .await
        .expect("POST /api/commands");
    assert_eq!(r.status(), 200, "{command_type} {id}");
    r.json::<Value>().await.expect("answer")["position"]
        .as_u64()
        .expect("position")
}

async fn get(at: &Instance, token: &str, path: &str) -> Value {
    let r = client()
        .get(format!("{}{path}", at.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.expect("JSON")
}

/// Which of the two instances leads `name` now (each asks; one says yes).
async fn leader_of(instances: &[&Instance], name: &str) -> Vec<bool> {
    leads(instances, |i| {
        i.state.models.consumer(name).expect("registered").clone()
    })
    .await
}

/// Whether each instance leads the consumer `pick` finds on it.
async fn leads(
    instances: &[&Instance],
    pick: impl Fn(&Instance) -> std::sync::Arc<dyn herald_store::projection::Consumer>,
) -> Vec<bool> {
    let mut out = Vec::new();
    for i in instances {
        out.push(pick(i).lead().await.expect("lead"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_the_log_and_the_read_models() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut a = instance(&db).await;
    let b = instance(&db).await;
    let token = support::mint(&a.state, "pg-instances", "operator", Role::Operator)
        .await
        .secret;

    // One instance leads each model (whichever asked first), never both.
    for name in ["deployments", "feeds"] {
        let leads = leader_of(&[&a, &b], name).await;
        assert_eq!(leads.iter().filter(|l| **l).count(), 1, "{name}: {leads:?}");
    }

    // A resource stream on B, opened before the command.
    let mut stream = client()
        .get(format!("{}/api/deployments/live", b.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("open the stream");
    assert_eq!(stream.status(), 200);

    // Written through A, read through B at once.
    let p = command(
        &a,
        &token,
        "StartDeployment",
        "d1",
        json!({"service": "api", "version": "2.0", "environment": "prod"}),
    )
    .await;
    let one = get(&b, &token, &format!("/api/deployments/d1?min_position={p}")).await;
    assert_eq!(one["status"], "in_progress", "{one}");
    // A post: the deployments model has nothing to apply, and B still knows it
    // reflects the log up to it (whoever leads it).
    let q = command(
        &a,
        &token,
        "CreatePost",
        "p1",
        json!({"title": "T", "content": "c", "tags": ["ops"]}),
    )
    .await;
    let list = get(&b, &token, &format!("/api/deployments?min_position={q}")).await;
    assert!(list["position"].as_u64().expect("position") >= q, "{list}");
    let feed = get(&b, &token, &format!("/api/feeds/ops?min_position={q}")).await;
    assert_eq!(feed["post_count"], 1, "{feed}");

    // B's stream got the change A's command made.
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains("\"id\":\"d1\"") {
            let chunk = stream.chunk().await.expect("read").expect("the stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("B's deployments stream never showed d1: {seen}"));

    // A stops (its connections close, with its locks): B takes over the
    // models A led and goes on from their checkpoints.
    a.state.live.shutdown.cancel();
    drop(a.running.take());
    drop(a);
    let r = command(&b, &token, "ReportDeploymentProgress", "d1", json!({"percent": 50})).await;
    let one = get(&b, &token, &format!("/api/deployments/d1?min_position={r}")).await;
    assert_eq!(one["progress"], 50, "B applied the progress: {one}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if leader_of(&[&b], "deployments").await == [true] && leader_of(&[&b], "feeds").await == [true] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never took over the read models"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_relays_to_nats_at_a_time_and_another_takes_over_when_it_stops() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let Some(client) = support::brokers::nats().await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let nats = herald_server::broker_config::NatsConfig {
        url: support::brokers::nats_url(),
        prefix: support::brokers::fresh_prefix(),
        credentials: herald_server::brokers::Credentials::default(),
        ack_wait: herald_server::broker_config::DEFAULT_ACK_WAIT,
    };
    let events = nats.stream_name("EVENTS");
    let mut a = instance_with(&db, Some(nats.clone())).await;
    let b = instance_with(&db, Some(nats.clone())).await;
    let token = support::mint(&a.state, "pg-instances", "operator", Role::Operator)
        .await
        .secret;
    // Commands on both instances; one order out.
    let mut last = 0;
    for i in 0..10 {
        let at = if i % 2 == 0 { &a } else { &b };
        last = command(
            at,
            &token,
            "StartDeployment",
            &format!("r{i}"),
            json!({"service": "api"}),
        )
        .await;
    }
    let relayed = support::brokers::stored_at_least(&js, &events, last).await;
    let positions: Vec<u64> = relayed.iter().filter_map(|(_, _, e)| e["position"].as_u64()).collect();
    assert_eq!(
        positions,
        (1..=last).collect::<Vec<_>>(),
        "in position order, once each"
    );
    let leads = leads(&[&a, &b], |i| {
        i.state.models.sinks().first().expect("the relay").clone()
    })
    .await;
    assert_eq!(leads.iter().filter(|l| **l).count(), 1, "one relay leads: {leads:?}");

    // The leader stops: the other takes over and relays what comes next.
    let (leader, follower) = if leads[0] { (a, b) } else { (b, a) };
    // Its tasks end (and its connections close) as in a process that stops.
    leader.state.live.shutdown.cancel();
    drop(leader.running);
    drop(leader.state);
    a = follower;
    support::brokers::eventually(WAIT, "the other instance leads the relay", || {
        let relay = a.state.models.sinks()[0].clone();
        async move { relay.lead().await.ok().filter(|l| *l) }
    })
    .await;
    for i in 10..14 {
        last = command(
            &a,
            &token,
            "StartDeployment",
            &format!("r{i}"),
            json!({"service": "api"}),
        )
        .await;
    }
    let relayed = support::brokers::stored_at_least(&js, &events, last).await;
    let positions: Vec<u64> = relayed.iter().filter_map(|(_, _, e)| e["position"].as_u64()).collect();
    assert_eq!(positions, (1..=last).collect::<Vec<_>>(), "nothing lost, nothing twice");
    a.state.live.shutdown.cancel();
    a.running.take();
    tokio::time::sleep(Duration::from_millis(200)).await;
    support::brokers::remove_streams(&js, &nats).await;
}
