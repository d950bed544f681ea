//! The real `herald` binary, driven as a user would (API.md §8): tokens, serve,
//! `kill -9` and restart, verify, export and projections rebuild, each on a
//! temporary `--data` directory.
//!
//! HTTP, SSE and the process guards are in `support/` (shared with
//! `cluster.rs`): plain `std::net::TcpStream`s, one request per connection;
//! every wait is a bounded poll or a read with a timeout, and every child
//! process is killed by a guard, whatever happens to the test.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use herald_server::domains::deployments::projection::{self as deployments, Deployments};
use herald_store::projection::{READMODELS_DIR, ReadModel, RowProjection};
use serde_json::{Value, json};
use support::*;
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

fn serve(data: &Path, logs: &Path) -> Server {
    start_serve(logs, "/healthz", |addr| {
        let mut cmd = herald(data);
        cmd.arg("serve").arg("--listen").arg(addr.to_string());
        cmd
    })
}

/// A fresh directory for a test: the data directory is `data` inside it, logs beside it.
fn workspace() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    (tmp, data)
}

// ---------------------------------------------------------------------------
// 1. herald token create
// ---------------------------------------------------------------------------

#[test]
fn token_create_prints_the_token_on_its_last_line_and_refuses_a_bad_role() {
    let (tmp, data) = workspace();
    let out = cli(&data, &["token", "create", "--name", "me", "--role", "operator"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let token = stdout.lines().last().expect("a line").to_owned();
    assert!(!token.is_empty() && !token.contains(char::is_whitespace), "{stdout:?}");
    assert!(!text(&out.stderr).contains(&token), "the secret goes to stdout only");

    let out = cli(&data, &["token", "create", "--name", "bad", "--role", "wizard"]);
    assert!(!out.status.success(), "a bad role must fail");
    let message = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        message.contains("wizard") && message.contains("role"),
        "a clear message naming the role: {message}"
    );
    let out = cli(&data, &["token", "create", "--name", "bad"]);
    assert!(!out.status.success(), "a missing role must fail");

    let viewer = create_token(&data, "looker", "viewer");
    // The tokens work, with their roles; the refused one created nothing.
    let server = serve(&data, tmp.path());
    let (events, head) = all_events(server.addr, &token);
    assert_eq!(head, 2, "two TokenCreated events: {events:?}");
    let names: Vec<Value> = events
        .iter()
        .map(|raw| serde_json::from_str::<Value>(raw).expect("envelope")["data"]["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("me"), json!("looker")]);
    command(server.addr, &token, "StartDeployment", "t1", json!({ "service": "s" }));
    let r = try_command(server.addr, &viewer, "StartDeployment", "t2", json!({ "service": "s" })).expect("POST");
    assert_eq!(r.status, 403, "a viewer sends no commands: {}", r.body);
    let r = http(server.addr, "GET", "/api/events", Some("hrld_bogus"), &[], None).expect("GET");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
}

// ---------------------------------------------------------------------------
// 2. kill -9, restart, resume
// ---------------------------------------------------------------------------

#[test]
fn acknowledged_events_survive_kill_9_and_a_subscriber_resumes_exactly() {
    let (tmp, data) = workspace();
    let token = create_token(&data, "ops", "operator");
    let server = serve(&data, tmp.path());
    let addr = server.addr;

    let mut acknowledged: Vec<String> = Vec::new();
    let ack = |acknowledged: &mut Vec<String>, r: Response| acknowledged.extend(raw_elements(&r.body, "events"));

    let mut sub = LiveStream::open(addr, "/api/events/live?after=0", &token, None);
    ack(
        &mut acknowledged,
        command(
            addr,
            &token,
            "StartDeployment",
            "d1",
            json!({ "service": "billing", "version": "2.0.0", "environment": "prod" }),
        ),
    );
    // The subscriber sees the token and the start, then is cut off.
    assert_eq!(sub.next_event().position, 1);
    let seen = sub.next_event();
    assert_eq!(seen.position, 2);
    assert_eq!(seen.raw, acknowledged[0], "the live envelope is the acknowledged one");
    drop(sub);

    let progress = json!({ "percent": 50, "message": "half" });
    ack(
        &mut acknowledged,
        command(addr, &token, "ReportDeploymentProgress", "d1", progress),
    );
    ack(
        &mut acknowledged,
        command(addr, &token, "ReportDeploymentProgress", "d1", json!({ "percent": 80 })),
    );
    ack(
        &mut acknowledged,
        command(addr, &token, "SucceedDeployment", "d1", json!({})),
    );
    server.kill();

    let server = serve(&data, tmp.path());
    let (stored, head) = all_events(server.addr, &token);
    assert_eq!(head, 5);
    assert_eq!(stored.len(), 5);
    for raw in &acknowledged {
        let p = position_of(raw) as usize;
        assert_eq!(&stored[p - 1], raw, "position {p} is byte-identical after kill -9");
    }
    for (i, raw) in stored.iter().enumerate() {
        assert_eq!(position_of(raw), i as u64 + 1, "gapless");
    }
    let d = get_json(server.addr, "/api/streams/deployment-d1", &token);
    assert_eq!(d["version"], 4);

    // The subscriber comes back with the last id it saw: exactly what it missed.
    let mut sub = LiveStream::open(server.addr, "/api/events/live", &token, Some("2"));
    for p in 3..=5u64 {
        let e = sub.next_event();
        assert_eq!(e.position, p);
        assert_eq!(e.raw, stored[p as usize - 1]);
    }
    let r = command(
        server.addr,
        &token,
        "StartDeployment",
        "d2",
        json!({ "service": "next" }),
    );
    let next = sub.next_event();
    assert_eq!(next.position, 6, "then live, no duplicate");
    assert_eq!(next.raw, raw_elements(&r.body, "events")[0]);
}

// ---------------------------------------------------------------------------
// 3. Acknowledged under load survives kill -9
// ---------------------------------------------------------------------------

#[test]
fn every_acknowledgement_under_load_survives_kill_9() {
    let (tmp, data) = workspace();
    const CLIENTS: usize = 8;
    let tokens: Vec<String> = (0..CLIENTS)
        .map(|c| create_token(&data, &format!("client-{c}"), "operator"))
        .collect();
    let server = serve(&data, tmp.path());
    let addr = server.addr;

    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(c, token)| {
            let acknowledged = acknowledged.clone();
            let unexpected = unexpected.clone();
            let killed = killed.clone();
            std::thread::spawn(move || {
                let mut id = String::new();
                for j in 0.. {
                    let (ty, data) = match j % 5 {
                        0 => {
                            id = format!("c{c}-{j}");
                            ("StartDeployment", json!({ "service": format!("svc-{c}") }))
                        }
                        4 => ("SucceedDeployment", json!({})),
                        k => ("ReportDeploymentProgress", json!({ "percent": k * 20 })),
                    };
                    match try_command(addr, &token, ty, &id, data) {
                        Ok(r) if r.status == 200 => acknowledged
                            .lock()
                            .expect("lock")
                            .extend(raw_elements(&r.body, "events")),
                        Ok(r) if r.status == 429 => {}
                        // A command whose predecessor was lost with the server may be refused.
                        Ok(_) if killed.load(Ordering::SeqCst) => {}
                        Ok(r) => unexpected
                            .lock()
                            .expect("lock")
                            .push(format!("{ty} {id}: {} {}", r.status, r.body)),
                        Err(_) if killed.load(Ordering::SeqCst) => return,
                        Err(e) => unexpected.lock().expect("lock").push(format!("{ty} {id}: {e}")),
                    }
                }
            })
        })
        .collect();

    poll_until("300 commands are acknowledged under load", || {
        acknowledged.lock().expect("lock").len() >= 300 || !unexpected.lock().expect("lock").is_empty()
    });
    killed.store(true, Ordering::SeqCst);
    server.kill();
    for c in clients {
        c.join().expect("client thread");
    }
    let unexpected = unexpected.lock().expect("lock").clone();
    assert!(
        unexpected.is_empty(),
        "unexpected answers before the kill: {unexpected:?}"
    );
    let acknowledged = acknowledged.lock().expect("lock").clone();

    let server = serve(&data, tmp.path());
    let reader = create_token(&data, "reader", "viewer");
    let (stored, head) = all_events(server.addr, &reader);
    assert_eq!(stored.len() as u64, head, "positions 1..=head");
    for (i, raw) in stored.iter().enumerate() {
        assert_eq!(position_of(raw), i as u64 + 1, "gapless");
    }
    for raw in &acknowledged {
        let p = position_of(raw) as usize;
        assert!(p <= stored.len(), "acknowledged position {p} is missing (head {head})");
        assert_eq!(&stored[p - 1], raw, "acknowledged position {p} is byte-identical");
    }
    server.kill();
    let out = cli(&data, &["verify"]);
    assert!(
        out.status.success(),
        "verify after kill -9: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// 4. token create while serve runs
// ---------------------------------------------------------------------------

#[test]
fn a_token_created_while_serving_works_at_once_and_is_seen_live() {
    let (tmp, data) = workspace();
    let token = create_token(&data, "watcher", "viewer");
    let server = serve(&data, tmp.path());
    let mut sub = LiveStream::open(server.addr, "/api/events/live", &token, None);
    assert_eq!(
        header(&sub.headers, "last-event-id"),
        Some("1"),
        "connected at the head"
    );
    let start = sub.next_frame();
    assert_eq!(start.id.as_deref(), Some("1"), "connected at the head");
    assert!(start.data.is_none());

    let fresh = create_token(&data, "fresh", "operator");
    // Works at once: no waiting.
    let r = get(server.addr, "/api/events?limit=1", &fresh);
    assert_eq!(r.status, 200, "the new token works at once: {}", r.body);

    // The subscriber sees the other process's event with nothing else happening.
    let created = sub.next_event();
    assert_eq!(created.position, 2);
    assert_eq!(created.event_type, "TokenCreated");
    assert_eq!(created.envelope["data"]["name"], "fresh");
    assert_eq!(created.envelope["data"]["role"], "operator");

    command(server.addr, &fresh, "StartDeployment", "x1", json!({ "service": "s" }));
    let started = sub.next_event();
    assert_eq!(started.position, 3);
    assert_eq!(started.event_type, "DeploymentStarted");
    assert_eq!(started.envelope["actor"]["name"], "fresh");
    assert_eq!(started.envelope["actor"]["kind"], "token");
}

#[test]
fn invite_create_prints_the_code_last_and_it_is_usable_at_once_while_serving() {
    let (tmp, data) = workspace();
    let admin = create_token(&data, "root", "admin");
    let server = serve(&data, tmp.path());
    let out = cli(&data, &["invite", "create", "--role", "operator"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let code = stdout.lines().last().expect("a line").to_owned();
    assert!(
        code.starts_with("hinv_") && !code.contains(char::is_whitespace),
        "{stdout:?}"
    );
    assert!(!text(&out.stderr).contains(&code), "the code goes to stdout only");
    assert!(
        stdout.contains("/register?invite=hinv_"),
        "the registration link is shown: {stdout}"
    );

    // The running server sees it at once: listed, and recorded in the log.
    let invites = get_json(server.addr, "/api/invites", &admin);
    // (The setup code `serve` printed on this empty store is an invite too.)
    let listed: Vec<&Value> = invites["invites"]
        .as_array()
        .expect("invites")
        .iter()
        .filter(|i| !i["id"].as_str().unwrap_or_default().starts_with("setup-"))
        .collect();
    assert_eq!(listed.len(), 1, "{invites}");
    assert_eq!(listed[0]["role"], "operator");
    assert!(listed[0]["used_by"].is_null());
    let (events, _) = all_events(server.addr, &admin);
    let created: Value = serde_json::from_str(events.last().expect("an event")).expect("envelope");
    assert_eq!(created["type"], "InviteCreated");
    assert_eq!(created["actor"]["kind"], "system");
    assert!(
        !events.iter().any(|e| e.contains(&code)),
        "the code never enters the log"
    );

    let out = cli(&data, &["invite", "create", "--role", "owner"]);
    assert!(!out.status.success(), "a bad role must fail");
    assert!(text(&out.stderr).contains("owner"));
}

// ---------------------------------------------------------------------------
// 5. herald verify
// ---------------------------------------------------------------------------

/// Whether `output` names position `k` (as a whole number).
/// Whether `output` names position `k`: "position" (any case), then, after
/// at most a few non-digit characters (`position 4`, `position: 4`), the number `k`.
fn names_position(output: &str, k: i64) -> bool {
    let lower = output.to_ascii_lowercase();
    lower.match_indices("position").any(|(i, word)| {
        let rest = lower[i + word.len()..].trim_start_matches(|c: char| !c.is_ascii_digit() && c != '\n');
        let skipped = lower.len() - i - word.len() - rest.len();
        let number: String = rest.chars().take_while(char::is_ascii_digit).collect();
        skipped <= 3 && number == k.to_string()
    })
}

#[test]
fn names_position_finds_the_number_after_position() {
    assert!(names_position("TAMPERED: first bad position 4 (hash)", 4));
    assert!(names_position("Position: 4", 4));
    assert!(!names_position("first bad position 14", 4));
    assert!(!names_position("hash a4b; first bad position 5", 4));
    assert!(!names_position("4 events; ok", 4));
}

fn tamper(data: &Path, f: impl FnOnce(&rusqlite::Connection)) {
    let conn = rusqlite::Connection::open(data.join("herald.db")).expect("open herald.db");
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS events_append_only_update; DROP TRIGGER IF EXISTS events_append_only_delete;",
    )
    .expect("drop the append-only triggers");
    f(&conn);
}

#[test]
fn verify_passes_an_intact_log_and_names_the_first_tampered_position() {
    let (_tmp, data) = workspace();
    for i in 0..6 {
        create_token(&data, &format!("t{i}"), "viewer");
    }
    let out = cli(&data, &["verify"]);
    assert!(
        out.status.success(),
        "intact: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    const K: i64 = 4;
    tamper(&data, |conn| {
        let envelope: String = conn
            .query_row("SELECT envelope FROM events WHERE position = ?1", [K], |r| r.get(0))
            .expect("event k");
        let mut v: Value = serde_json::from_str(&envelope).expect("envelope");
        v["data"]["role"] = json!("admin");
        let changed = serde_json::to_string(&v).expect("JSON");
        assert_ne!(changed, envelope);
        let n = conn
            .execute(
                "UPDATE events SET envelope = ?1 WHERE position = ?2",
                rusqlite::params![changed, K],
            )
            .expect("tamper");
        assert_eq!(n, 1);
    });
    let out = cli(&data, &["verify"]);
    let output = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "a tampered log fails verify: {output}");
    assert!(names_position(&output, K), "the output names position {K}: {output}");
}

#[test]
fn verify_names_a_deleted_position() {
    let (_tmp, data) = workspace();
    for i in 0..5 {
        create_token(&data, &format!("t{i}"), "viewer");
    }
    const K: i64 = 2;
    tamper(&data, |conn| {
        let n = conn
            .execute("DELETE FROM events WHERE position = ?1", [K])
            .expect("delete");
        assert_eq!(n, 1);
    });
    let out = cli(&data, &["verify"]);
    let output = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "a log with a hole fails verify: {output}");
    assert!(names_position(&output, K), "the output names position {K}: {output}");
}

// ---------------------------------------------------------------------------
// 6. herald projections rebuild, and a projection catching up after kill -9
// ---------------------------------------------------------------------------

/// The deployments read model's file in the data directory.
fn deployments_file(data: &Path) -> PathBuf {
    data.join(READMODELS_DIR).join(format!("{}.db", Deployments::NAME))
}

/// Every read model `herald projections rebuild` rebuilds when given no name.
fn registered_projections() -> Vec<&'static str> {
    herald_server::domains::registry().projection_names()
}

/// Every row of the deployments read model, every column, and its
/// checkpoint, read from its file (no herald running): equal dumps are the
/// same model, byte for byte.
fn dump_deployments(data: &Path) -> String {
    let conn = rusqlite::Connection::open(deployments_file(data)).expect("open the deployments read model");
    let checkpoint: i64 = conn
        .query_row("SELECT position FROM checkpoint WHERE id = 1", [], |r| r.get(0))
        .expect("checkpoint");
    let mut out = format!("checkpoint {checkpoint}\n");
    let mut stmt = conn
        .prepare("SELECT id, status, started_position, updated_position, view FROM deployments ORDER BY id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "{}\t{}\t{}\t{}\t{}\n",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?
            ))
        })
        .expect("query");
    for row in rows {
        out.push_str(&row.expect("row"));
    }
    out
}

/// The last position of the log, read from its file (no herald running).
fn log_head(data: &Path) -> u64 {
    let conn = rusqlite::Connection::open(data.join("herald.db")).expect("open herald.db");
    let head: Option<i64> = conn
        .query_row("SELECT MAX(position) FROM events", [], |r| r.get(0))
        .expect("head");
    head.unwrap_or(0) as u64
}

/// The deployments read model's checkpoint, read from its file.
fn deployments_checkpoint(data: &Path) -> u64 {
    let conn = rusqlite::Connection::open(deployments_file(data)).expect("open the deployments read model");
    let checkpoint: i64 = conn
        .query_row("SELECT position FROM checkpoint WHERE id = 1", [], |r| r.get(0))
        .expect("checkpoint");
    checkpoint as u64
}

/// What one `herald projections rebuild` printed.
#[derive(Debug)]
struct Rebuilt {
    /// `rebuilt the NAME read model from N events in T s` on stdout: (NAME, N), in order.
    models: Vec<(String, u64)>,
    /// `NAME: position X of Y (R events/s, ETA S s)` on stderr (not a terminal): (NAME, X, Y).
    progress: Vec<(String, u64, u64)>,
    stdout: String,
    stderr: String,
}

fn parse_rebuilt_line(line: &str) -> Option<(String, u64)> {
    let rest = line.strip_prefix("rebuilt the ")?;
    let (name, rest) = rest.split_once(" read model from ")?;
    let (events, rest) = rest.split_once(" events in ")?;
    let seconds = rest.strip_suffix(" s")?;
    seconds.parse::<f64>().ok()?;
    Some((name.to_owned(), events.parse().ok()?))
}

fn parse_progress_line(line: &str) -> Option<(String, u64, u64)> {
    let (name, rest) = line.split_once(": position ")?;
    let (at, rest) = rest.split_once(" of ")?;
    let (head, rest) = rest.split_once(" (")?;
    let (rate, rest) = rest.split_once(" events/s, ETA ")?;
    let eta = rest.strip_suffix(" s)")?;
    rate.parse::<f64>().ok()?;
    eta.parse::<f64>().ok()?;
    Some((name.to_owned(), at.parse().ok()?, head.parse().ok()?))
}

/// `herald projections rebuild NAMES…`, which must succeed.
fn rebuild(data: &Path, names: &[&str]) -> Rebuilt {
    let mut args = vec!["projections", "rebuild"];
    args.extend_from_slice(names);
    let out = cli(data, &args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "rebuild {names:?}: {stdout}{stderr}");
    let models = stdout
        .lines()
        .map(|l| parse_rebuilt_line(l).unwrap_or_else(|| panic!("an unexpected line on stdout: {l:?}")))
        .collect();
    let mut progress = Vec::new();
    for line in stderr.lines() {
        match parse_progress_line(line) {
            Some(p) => progress.push(p),
            None => assert!(!line.contains(": position "), "a malformed progress line: {line:?}"),
        }
    }
    Rebuilt {
        models,
        progress,
        stdout,
        stderr,
    }
}

/// Each rebuilt model's progress lines go forward and end at `head` of `head`.
fn assert_progress_ends_at(rebuilt: &Rebuilt, head: u64) {
    for (name, _) in &rebuilt.models {
        let lines: Vec<(u64, u64)> = rebuilt
            .progress
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, at, of)| (*at, *of))
            .collect();
        assert_eq!(lines.last(), Some(&(head, head)), "{name}: {}", rebuilt.stderr);
        assert!(lines.windows(2).all(|w| w[0].0 <= w[1].0), "{name}: {lines:?}");
        assert!(lines.iter().all(|(at, of)| at <= of), "{name}: {lines:?}");
    }
}

#[test]
fn projections_rebuild_on_a_stopped_store_gives_the_same_deployments() {
    let (tmp, data) = workspace();
    let token = create_token(&data, "ops", "operator");
    let server = serve(&data, tmp.path());
    let addr = server.addr;
    let run = |ty: &str, id: &str, data: Value| {
        command(addr, &token, ty, id, data);
    };
    run(
        "StartDeployment",
        "a",
        json!({ "service": "a", "version": "1", "environment": "prod" }),
    );
    run(
        "ReportDeploymentProgress",
        "a",
        json!({ "percent": 60, "message": "rolling" }),
    );
    run("SucceedDeployment", "a", json!({}));
    run("StartDeployment", "b", json!({ "service": "b" }));
    run("FailDeployment", "b", json!({ "reason": "health checks" }));
    run(
        "StartDeployment",
        "c",
        json!({ "service": "c", "environment": "staging" }),
    );
    run("CancelDeployment", "c", json!({ "reason": "superseded" }));
    run("StartDeployment", "d", json!({ "service": "d" }));
    run("ReportDeploymentProgress", "d", json!({ "percent": 30 }));
    let (_, head) = all_events(addr, &token);
    poll_until("the read model catches up", || {
        get_json(addr, "/api/deployments", &token)["position"].as_u64() == Some(head)
    });
    let before = get_json(addr, "/api/deployments", &token);
    assert_eq!(before["deployments"].as_array().map(Vec::len), Some(4));
    server.kill();

    // Throw the read model away; the rebuild must recreate it from the log alone.
    assert!(deployments_file(&data).exists());
    for suffix in ["", "-wal", "-shm"] {
        let mut path = deployments_file(&data).into_os_string();
        path.push(suffix);
        let path = PathBuf::from(path);
        if path.exists() {
            std::fs::remove_file(&path).expect("remove read model");
        }
    }
    // No name: every registered read model, each once, in order.
    let rebuilt = rebuild(&data, &[]);
    let names: Vec<&str> = rebuilt.models.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, registered_projections(), "{}", rebuilt.stdout);
    assert!(names.contains(&"deployments"));
    let deployments = rebuilt
        .models
        .iter()
        .find(|(n, _)| n == "deployments")
        .expect("deployments");
    assert_eq!(deployments.1, 9, "the deployment events: {}", rebuilt.stdout);
    assert_progress_ends_at(&rebuilt, head);

    // What the rebuild wrote, read before any server could project anything.
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let (views, checkpoint) = runtime.block_on(async {
        let model = ReadModel::<Deployments>::open(&data).expect("open read model");
        model
            .read(|conn, checkpoint| Ok((deployments::list(conn, None, 1000)?, checkpoint)))
            .await
            .expect("list")
    });
    assert_eq!(checkpoint, head, "the rebuilt model reflects the whole log");
    let views: Vec<Value> = views.iter().map(|v| serde_json::from_str(v).expect("a view")).collect();
    assert_eq!(Value::Array(views), before["deployments"], "the rebuilt deployments");

    let server = serve(&data, tmp.path());
    let after = get_json(server.addr, "/api/deployments", &token);
    assert_eq!(after, before, "GET /api/deployments after the rebuild");
}

#[test]
fn projections_rebuild_rebuilds_the_models_named_and_refuses_an_unknown_name() {
    let (tmp, data) = workspace();
    let token = create_token(&data, "ops", "operator");
    let server = serve(&data, tmp.path());
    command(server.addr, &token, "StartDeployment", "a", json!({ "service": "a" }));
    command(server.addr, &token, "SucceedDeployment", "a", json!({}));
    command(server.addr, &token, "StartDeployment", "b", json!({ "service": "b" }));
    let (_, head) = all_events(server.addr, &token);
    poll_until("the read model catches up", || {
        get_json(server.addr, "/api/deployments", &token)["position"].as_u64() == Some(head)
    });
    server.kill();
    let projected = dump_deployments(&data);

    // A row no event made: a rebuild of the deployments model drops it.
    let plant_ghost = || {
        let conn = rusqlite::Connection::open(deployments_file(&data)).expect("open the read model");
        conn.execute(
            "INSERT INTO deployments (id, status, started_position, view, updated_position)
             VALUES ('ghost', 'in_progress', 0, '{\"id\":\"ghost\"}', 0)",
            [],
        )
        .expect("plant a row");
    };
    plant_ghost();
    let haunted = dump_deployments(&data);
    assert!(haunted.contains("ghost"));

    // An unknown name, alone or after a known one: nothing is rebuilt.
    let known = registered_projections().join(", ");
    for names in [vec!["nope"], vec!["deployments", "nope"]] {
        let mut args = vec!["projections", "rebuild"];
        args.extend_from_slice(&names);
        let out = cli(&data, &args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{names:?}: {stdout}{stderr}");
        assert!(stderr.contains("\"nope\""), "names the unknown one: {stderr}");
        assert!(
            stderr.contains(&format!("known: {known}")),
            "names the known ones ({known}): {stderr}"
        );
        assert!(!stdout.contains("rebuilt"), "{names:?}: {stdout}");
        assert_eq!(dump_deployments(&data), haunted, "{names:?}: the model is untouched");
    }

    // The one named, and only it.
    let rebuilt = rebuild(&data, &["deployments"]);
    assert_eq!(rebuilt.models, [("deployments".to_owned(), 3)], "{}", rebuilt.stdout);
    assert!(
        rebuilt.progress.iter().all(|(n, _, _)| n == "deployments"),
        "{}",
        rebuilt.stderr
    );
    assert_progress_ends_at(&rebuilt, head);
    assert_eq!(
        dump_deployments(&data),
        projected,
        "the ghost is gone, the rest as projected"
    );

    // Named twice: rebuilt twice, the same.
    plant_ghost();
    let rebuilt = rebuild(&data, &["deployments", "deployments"]);
    assert_eq!(rebuilt.models.len(), 2, "{}", rebuilt.stdout);
    assert_eq!(dump_deployments(&data), projected);
}

/// `herald serve` killed (SIGKILL) while commands stream in, its read model
/// behind the log or just caught up: restarted, its consumer runner catches
/// the model up from the checkpoint it had committed, to the head, and the
/// model is then byte for byte what a rebuild of the log makes.
#[test]
fn a_read_model_behind_when_serve_is_killed_catches_up_on_restart_and_matches_a_rebuild() {
    let (tmp, data) = workspace();
    const CLIENTS: usize = 4;
    let tokens: Vec<String> = (0..CLIENTS)
        .map(|c| create_token(&data, &format!("client-{c}"), "operator"))
        .collect();
    let reader = tokens[0].clone();
    let mut behind = Vec::new();
    for round in 0..5 {
        let server = serve(&data, tmp.path());
        let addr = server.addr;
        let acknowledged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = tokens
            .iter()
            .cloned()
            .enumerate()
            .map(|(c, token)| {
                let acknowledged = acknowledged.clone();
                let killed = killed.clone();
                std::thread::spawn(move || {
                    let mut id = String::new();
                    for j in 0.. {
                        let (ty, data) = match j % 5 {
                            0 => {
                                id = format!("r{round}-c{c}-{j}");
                                ("StartDeployment", json!({ "service": format!("svc-{c}") }))
                            }
                            4 => ("SucceedDeployment", json!({})),
                            k => ("ReportDeploymentProgress", json!({ "percent": k * 20 })),
                        };
                        match try_command(addr, &token, ty, &id, data) {
                            Ok(r) if r.status == 200 => {
                                acknowledged.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(_) => {}
                            Err(_) if killed.load(Ordering::SeqCst) => return,
                            Err(e) => panic!("{ty} {id}: {e}"),
                        }
                    }
                })
            })
            .collect();
        poll_until("150 commands are acknowledged", || {
            acknowledged.load(Ordering::SeqCst) >= 150
        });
        // Mid-stream: the clients are still sending.
        killed.store(true, Ordering::SeqCst);
        server.kill();
        for c in clients {
            c.join().expect("client thread");
        }
        let head = log_head(&data);
        let checkpoint = deployments_checkpoint(&data);
        assert!(
            checkpoint <= head,
            "round {round}: checkpoint {checkpoint}, head {head}"
        );
        behind.push(head - checkpoint);

        let server = serve(&data, tmp.path());
        poll_until("the restarted read model reaches the head", || {
            get_json(server.addr, "/api/deployments?limit=1", &reader)["position"].as_u64() == Some(head)
        });
        let served = get_json(server.addr, "/api/deployments?limit=1000", &reader);
        server.kill();
        assert_eq!(log_head(&data), head, "round {round}: nothing was appended meanwhile");
        let caught_up = dump_deployments(&data);
        assert!(caught_up.starts_with(&format!("checkpoint {head}\n")), "round {round}");

        rebuild(&data, &["deployments"]);
        assert_eq!(dump_deployments(&data), caught_up, "round {round}: caught up = rebuilt");
        let rows = caught_up.lines().count() - 1;
        assert!(rows < 1000);
        assert_eq!(
            served["deployments"].as_array().map(Vec::len),
            Some(rows),
            "round {round}: served every row"
        );
        if behind.iter().any(|b| *b > 0) {
            break;
        }
    }
    eprintln!("events the read model was behind at each kill: {behind:?}");
    assert!(
        behind.iter().any(|b| *b > 0),
        "serve was never killed while its read model was behind the log: {behind:?}"
    );
}

// ---------------------------------------------------------------------------
// 7. herald export
// ---------------------------------------------------------------------------

#[test]
fn export_prints_every_envelope_in_position_order() {
    let (tmp, data) = workspace();
    let token = create_token(&data, "ops", "operator");
    let server = serve(&data, tmp.path());
    for i in 0..40 {
        let id = format!("e{}", i / 4);
        match i % 4 {
            0 => command(
                server.addr,
                &token,
                "StartDeployment",
                &id,
                json!({ "service": "s/x \"q\" é" }),
            ),
            3 => command(server.addr, &token, "SucceedDeployment", &id, json!({})),
            k => command(
                server.addr,
                &token,
                "ReportDeploymentProgress",
                &id,
                json!({ "percent": k * 30 }),
            ),
        };
    }
    let (stored, head) = all_events(server.addr, &token);
    assert_eq!(head, 41);

    let out = cli(&data, &["export"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.ends_with('\n'));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), stored.len(), "one envelope per line");
    for (i, (line, raw)) in lines.iter().zip(&stored).enumerate() {
        assert_eq!(position_of(line), i as u64 + 1, "in position order");
        assert_eq!(line, raw, "line {} equals /api/events", i + 1);
    }

    // --output writes the same to a file.
    let file = tmp.path().join("export.ndjson");
    let out = cli(&data, &["export", "--output", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&file).expect("export file"), stdout);
}

#[test]
fn serve_prints_a_one_time_setup_code_while_there_is_no_admin_and_a_restart_replaces_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let server = serve(&data, tmp.path());
    let first = printed_setup_code(&server);
    assert!(first.starts_with("hinv_"), "{first}");
    let log = server.log();
    assert_eq!(log.matches(&first).count(), 1, "printed once, not logged again: {log}");
    server.kill();

    let server = serve(&data, tmp.path());
    let second = printed_setup_code(&server);
    assert_ne!(first, second);
    let start = |code: &str| {
        let body = serde_json::json!({ "username": "root", "invite": code }).to_string();
        http(
            server.addr,
            "POST",
            "/api/auth/register/start",
            None,
            &[("content-type", "application/json")],
            Some(&body),
        )
        .expect("register/start")
    };
    assert_eq!(start(&first).status, 403, "the code of an earlier start is void");
    let r = start(&second);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(server.addr, "GET", "/api/auth/setup", None, &[], None).expect("setup");
    assert_eq!(r.json()["setup_required"], true);
}

// ---------------------------------------------------------------------------
// 9. Logging that cannot be written, and verify against every kind of edit
// ---------------------------------------------------------------------------

#[test]
fn serve_keeps_accepting_commands_after_the_reader_of_its_stderr_is_gone() {
    let (_tmp, data) = workspace();
    let token = create_token(&data, "ci", "operator");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut child = herald(&data)
        // Every request logs (tower-http traces at debug).
        .env("RUST_LOG", "debug")
        .arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut guard = ChildGuard(Some(child));
    poll_until("herald serve is healthy", || {
        assert!(
            guard.0.as_mut().expect("child").try_wait().expect("try_wait").is_none(),
            "herald serve exited at start"
        );
        matches!(http(addr, "GET", "/healthz", None, &[], None), Ok(r) if r.status == 200)
    });
    // The reader goes away: every later write to stderr fails with EPIPE.
    drop(stderr);
    for i in 0..20 {
        let r = try_command(
            addr,
            &token,
            "StartDeployment",
            &format!("d{i}"),
            json!({ "service": "s" }),
        )
        .unwrap_or_else(|e| panic!("command {i}: {e}"));
        assert_eq!(r.status, 200, "command {i} after stderr closed: {}", r.body);
    }
    let ready = http(addr, "GET", "/readyz", None, &[], None).expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(
        guard.0.as_mut().expect("child").try_wait().expect("try_wait").is_none(),
        "herald serve is still running"
    );
}

/// Edits the log as an attacker who also puts the append-only triggers back.
fn tamper_and_restore_triggers(data: &Path, f: impl FnOnce(&rusqlite::Connection)) {
    tamper(data, f);
    let conn = rusqlite::Connection::open(data.join("herald.db")).expect("open herald.db");
    conn.execute_batch(
        "CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
             BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
         CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
             BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;",
    )
    .expect("restore the triggers");
}

/// The `hash` column at `position`.
fn stored_hash(data: &Path, position: i64) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(data.join("herald.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open herald.db");
    conn.query_row("SELECT hash FROM events WHERE position = ?1", [position], |r| r.get(0))
        .expect("hash")
}

/// Runs `herald verify` with `args`; returns (success, stdout + stderr).
fn verify(data: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let out = cli(data, &all);
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// A log of `n` token events, verified intact.
fn log_of(n: usize) -> (TempDir, PathBuf) {
    let (tmp, data) = workspace();
    for i in 0..n {
        create_token(&data, &format!("t{i}"), "viewer");
    }
    let (ok, output) = verify(&data, &[]);
    assert!(ok, "intact: {output}");
    (tmp, data)
}

#[test]
fn verify_expect_catches_rows_deleted_from_the_end() {
    let (_tmp, data) = log_of(5);
    let anchor = format!("5:{}", stored_hash(&data, 5));
    let early = format!("3:{}", stored_hash(&data, 3));
    let (ok, output) = verify(&data, &["--expect", &anchor]);
    assert!(ok, "the anchor holds on the intact log: {output}");

    tamper_and_restore_triggers(&data, |conn| {
        let n = conn
            .execute("DELETE FROM events WHERE position > 3", [])
            .expect("delete");
        assert_eq!(n, 2);
    });
    // What is left is a valid chain: only an anchor shows the tail is gone.
    let (ok, output) = verify(&data, &[]);
    assert!(ok, "a truncated chain is still a chain: {output}");
    let (ok, output) = verify(&data, &["--expect", &anchor]);
    assert!(!ok, "the anchor's event is gone: {output}");
    assert!(output.contains("removed"), "says events were removed: {output}");
    assert!(names_position(&output, 4), "names the first missing position: {output}");
    let (ok, output) = verify(&data, &["--expect", &early]);
    assert!(ok, "an anchor that is still there holds: {output}");
    let wrong = format!("3:{}", stored_hash(&data, 2));
    let (ok, output) = verify(&data, &["--expect", &wrong]);
    assert!(
        !ok && names_position(&output, 3),
        "a wrong hash at the anchor: {output}"
    );
    let out = cli(&data, &["verify", "--expect", "3"]);
    assert_eq!(out.status.code(), Some(2), "a malformed anchor is a usage error");
}

#[test]
fn verify_catches_a_column_that_disagrees_with_its_envelope() {
    for (column, sql) in [
        ("type", "UPDATE events SET type = 'TokenRevoked' WHERE position = 3"),
        ("category", "UPDATE events SET category = 'user' WHERE position = 3"),
        ("stream", "UPDATE events SET stream = 'token-forged' WHERE position = 3"),
        ("version", "UPDATE events SET version = 7 WHERE position = 3"),
    ] {
        let (_tmp, data) = log_of(4);
        tamper_and_restore_triggers(&data, |conn| {
            assert_eq!(conn.execute(sql, []).expect("tamper"), 1);
        });
        let (ok, output) = verify(&data, &[]);
        assert!(!ok, "{column}: {output}");
        assert!(names_position(&output, 3), "{column}: names position 3: {output}");
        assert!(
            output.contains(&format!("{column} column")),
            "{column}: names the column: {output}"
        );
    }
}

#[test]
fn verify_catches_an_edited_hash_column_below_the_head() {
    let (_tmp, data) = log_of(5);
    tamper_and_restore_triggers(&data, |conn| {
        let n = conn
            .execute("UPDATE events SET hash = ?1 WHERE position = 2", ["ab".repeat(32)])
            .expect("tamper");
        assert_eq!(n, 1);
    });
    let (ok, output) = verify(&data, &[]);
    assert!(!ok, "{output}");
    assert!(names_position(&output, 2), "{output}");
    assert!(output.contains("hash column"), "{output}");
}

#[test]
fn verify_catches_stored_json_that_is_not_canonical() {
    for (what, edit) in [
        // A blank line would also end the event's SSE frame early.
        (
            "line break",
            (|e: &str| format!("{{\n\n{}", &e[1..])) as fn(&str) -> String,
        ),
        // A duplicate key: JSON parsers keep one of the two, so the hash still matches.
        ("duplicate key", |e: &str| format!("{{\"type\":\"Forged\",{}", &e[1..])),
        ("whitespace", |e: &str| format!("{{ {}", &e[1..])),
    ] {
        let (_tmp, data) = log_of(4);
        tamper_and_restore_triggers(&data, |conn| {
            let envelope: String = conn
                .query_row("SELECT envelope FROM events WHERE position = 2", [], |r| r.get(0))
                .expect("envelope");
            let n = conn
                .execute("UPDATE events SET envelope = ?1 WHERE position = 2", [edit(&envelope)])
                .expect("tamper");
            assert_eq!(n, 1);
        });
        let (ok, output) = verify(&data, &[]);
        assert!(!ok, "{what}: {output}");
        assert!(names_position(&output, 2), "{what}: {output}");
        assert!(output.contains("not canonical"), "{what}: {output}");
    }
}

#[test]
fn verify_reports_a_dropped_trigger_and_does_not_recreate_it() {
    let (_tmp, data) = log_of(3);
    let conn = rusqlite::Connection::open(data.join("herald.db")).expect("open herald.db");
    conn.execute_batch("DROP TRIGGER events_append_only_delete")
        .expect("drop");
    drop(conn);
    let (ok, output) = verify(&data, &[]);
    assert!(!ok, "a missing append-only trigger is evidence of tampering: {output}");
    assert!(output.contains("events_append_only_delete"), "{output}");
    assert!(
        !output.contains("events_append_only_update"),
        "only the missing one: {output}"
    );
    let conn = rusqlite::Connection::open(data.join("herald.db")).expect("open herald.db");
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        triggers,
        vec!["events_append_only_update".to_owned()],
        "verify left the evidence"
    );
    let (ok, _) = verify(&data, &[]);
    assert!(!ok, "and reports it again");
}

#[test]
fn verify_catches_an_idempotency_record_pointing_at_other_events() {
    let (tmp, data) = workspace();
    let token = create_token(&data, "ci", "operator");
    let server = serve(&data, tmp.path());
    for id in ["d1", "d2"] {
        let body = json!({ "type": "StartDeployment", "aggregate_id": id, "command_id": format!("cmd-{id}"),
                           "data": { "service": "s" } })
        .to_string();
        let r = http(server.addr, "POST", "/api/commands", Some(&token), &[], Some(&body)).expect("POST");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    server.kill();
    let (ok, output) = verify(&data, &[]);
    assert!(ok, "intact: {output}");
    // A retry of cmd-d1 would now be answered with d2's event.
    tamper_and_restore_triggers(&data, |conn| {
        let n = conn
            .execute(
                "UPDATE commands SET first_position = 3, last_position = 3 WHERE command_id = 'cmd-d1'",
                [],
            )
            .expect("tamper");
        assert_eq!(n, 1);
    });
    let (ok, output) = verify(&data, &[]);
    assert!(!ok, "{output}");
    assert!(output.contains("cmd-d1"), "names the command: {output}");
}

#[test]
fn verify_reports_a_trigger_replaced_by_one_that_never_fires() {
    let (_tmp, data) = log_of(3);
    let conn = rusqlite::Connection::open(data.join("herald.db")).expect("open herald.db");
    conn.execute_batch(
        "DROP TRIGGER events_append_only_update;
         CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events WHEN 0
             BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;",
    )
    .expect("replace the trigger");
    drop(conn);
    let (ok, output) = verify(&data, &[]);
    assert!(!ok, "{output}");
    assert!(
        output.contains("events_append_only_update has been changed"),
        "{output}"
    );
}
