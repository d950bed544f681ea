//! The consumer runner: a read model that cannot be written makes `/readyz`
//! say so, and it recovers on its own once it can again.

mod support;

use std::time::Duration;

use herald_core::auth::Role;
use serde_json::{Value, json};
use support::{WAIT, mint, start};

async fn readyz(server: &support::Server) -> (u16, Value) {
    let r = server.client.get(server.url("/readyz")).send().await.expect("readyz");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_read_model_makes_readyz_fail_and_it_recovers_by_itself() {
    let server = start(support::config()).await;
    let token = mint(&server.state, "test", "ci", Role::Operator).await;
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["projections"]["deployments"]["position"].is_u64(), "{body}");
    assert!(body["projections"]["deployments"]["lag"].is_u64(), "{body}");

    // Another connection renames the table away: every apply fails.
    let file = server.dir.path().join("readmodels/deployments.db");
    let conn = rusqlite::Connection::open(&file).expect("open the read model");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    conn.execute_batch("ALTER TABLE deployments RENAME TO away")
        .expect("rename");
    let r = server
        .client
        .post(server.url("/api/commands"))
        .bearer_auth(&token.secret)
        .json(&json!({"type": "StartDeployment", "aggregate_id": "d1", "data": {"service": "api"}}))
        .send()
        .await
        .expect("command");
    assert_eq!(r.status(), 200);
    until("readyz to say the read model fails", async || {
        let (status, body) = readyz(&server).await;
        status == 503 && body["detail"].as_str().unwrap_or("").contains("deployments read model")
    })
    .await;

    // Back: it catches up without a restart and /readyz is 200 again, lag 0.
    conn.execute_batch("ALTER TABLE away RENAME TO deployments")
        .expect("rename back");
    until("readyz to recover", async || {
        let (status, body) = readyz(&server).await;
        status == 200 && body["projections"]["deployments"]["lag"] == 0
    })
    .await;
    let r = server
        .client
        .get(server.url("/api/deployments/d1"))
        .bearer_auth(&token.secret)
        .send()
        .await
        .expect("read");
    assert_eq!(r.status(), 200);
}
