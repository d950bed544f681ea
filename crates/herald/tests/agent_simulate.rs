//! `herald agent simulate` against a real `herald serve` on a temporary
//! `--data` directory: over HTTP, and through NATS JetStream (the local
//! server at 127.0.0.1:4222, `HERALD_TEST_NATS` overrides, with a fresh
//! `--broker-prefix`; without a server the test says so and passes, except
//! under `CI=true`, where it fails). Every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn serve(data: &Path, logs: &Path, extra: &[&str]) -> Server {
    start_serve(logs, "/healthz", |addr| {
        let mut cmd = herald(data);
        cmd.arg("serve").arg("--listen").arg(addr.to_string()).args(extra);
        cmd
    })
}

/// Runs `herald agent simulate ARGS…` for 2 deployments of 2 steps, 50 ms apart.
fn simulate(data: &Path, transport: &[&str]) -> Output {
    let mut args = vec!["agent", "simulate"];
    args.extend_from_slice(transport);
    args.extend_from_slice(&["--deployments", "2", "--steps", "2", "--interval-ms", "50"]);
    cli(data, &args)
}

/// Asserts a simulation that went through: exit 0, a line per command and the summary.
fn assert_simulated(out: &Output, token: &str) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "simulate failed: {stdout}{stderr}");
    assert!(
        !stdout.contains(token) && !stderr.contains(token),
        "the token is never printed"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let sent = lines.iter().filter(|l| l.starts_with("deployment ")).count();
    let summary = lines.last().expect("a summary");
    assert!(summary.starts_with("2 deployments: "), "{stdout}");
    assert!(
        summary.ends_with(&format!("; {sent} commands sent, 0 errors")),
        "one line per command sent: {stdout}"
    );
    // Each: a start, up to 2 reports, a verdict.
    assert!((4..=8).contains(&sent), "{stdout}");
}

/// Polls `GET /api/deployments` until `n` deployments are there, each
/// succeeded or failed (the read model follows the log within moments).
fn assert_final_deployments(addr: SocketAddr, token: &str, n: usize, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let list = get_json(addr, "/api/deployments", token);
        let deployments = list["deployments"].as_array().cloned().unwrap_or_default();
        let final_ = |d: &Value| matches!(d["status"].as_str(), Some("succeeded" | "failed"));
        if deployments.len() == n && deployments.iter().all(final_) {
            return;
        }
        assert!(Instant::now() < deadline, "expected {n} finished deployments: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn simulate_over_http_runs_deployments_to_an_end_and_fails_on_a_refusal() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let token = create_token(&data, "deploy-bot", "operator");
    let viewer = create_token(&data, "watcher", "viewer");
    let server = serve(&data, tmp.path(), &[]);
    let target = format!("http://{}", server.addr);

    let out = simulate(&data, &["--target", &target, "--token", &token]);
    assert_simulated(&out, &token);
    assert_final_deployments(server.addr, &token, 2, WAIT);

    // Refused (a viewer may not command): the status and the problem are
    // shown, and the exit code says so.
    let out = simulate(&data, &["--target", &target, "--token", &viewer]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a refused command must fail the run");
    assert!(stderr.contains("403") && stderr.contains("\"status\":403"), "{stderr}");
    assert!(text(&out.stdout).contains("2 errors"), "{}", text(&out.stdout));
    assert_final_deployments(server.addr, &token, 2, WAIT);
}

fn nats_url() -> String {
    std::env::var("HERALD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

#[test]
fn simulate_through_nats_runs_deployments_to_an_end() {
    let url = nats_url();
    // A worker thread keeps the connection alive while this one waits on children.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();
    let connected = runtime.block_on(
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .connect(url.as_str()),
    );
    let client = match connected {
        Ok(client) => client,
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "CI=true and no NATS server to test on at {url}: {e}");
            eprintln!("skipped: no NATS server at {url} ({e})");
            return;
        }
    };
    let js = async_nats::jetstream::new(client);
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let token = create_token(&data, "deploy-bot", "operator");
    let credential = format!("agent={token}");
    let server = serve(
        &data,
        tmp.path(),
        &[
            "--nats",
            &url,
            "--nats-credential",
            &credential,
            "--broker-prefix",
            &prefix,
        ],
    );
    // herald creates its streams once it has connected.
    let subject = format!("{prefix}.commands.agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    while runtime.block_on(js.stream_by_subject(subject.as_str())).is_err() {
        assert!(
            Instant::now() < deadline,
            "herald never created its stream: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let broker = ["--nats", &url, "--credential", "agent", "--broker-prefix", &prefix];
    let out = simulate(&data, &broker);
    assert_simulated(&out, &token);
    assert_final_deployments(server.addr, &token, 2, Duration::from_secs(20));

    // A prefix no herald consumes: one clear error, nothing sent.
    let other = format!("{prefix}x");
    let out = simulate(
        &data,
        &["--nats", &url, "--credential", "agent", "--broker-prefix", &other],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "no stream must fail the run");
    assert!(
        stderr.contains("herald serve --nats") && stderr.contains(&other),
        "{stderr}"
    );

    // herald stopped first: its relay would make its stream again.
    server.kill();
    let upper = prefix.to_ascii_uppercase();
    runtime.block_on(async {
        for what in ["COMMANDS", "DEAD", "EVENTS"] {
            let _ = js.delete_stream(format!("{upper}_{what}")).await;
        }
    });
}
