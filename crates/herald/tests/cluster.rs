//! Three `herald serve` instances on one PostgreSQL database behind a real
//! nginx, configured with deploy/nginx/herald.conf as shipped (`scripts/cluster
//! nginx-config` replaces only its upstream servers and its listen address):
//!
//! - live streams opened through nginx spread over the instances (each
//!   instance's `herald_live_subscribers` says which one took each stream), and
//!   a command sent to one instance reaches every subscriber, through nginx and
//!   connected directly;
//! - after `kill -9` of one instance, the streams it served end, reconnect
//!   through nginx with `Last-Event-ID` (as EventSource does), land on the
//!   others, and have every event of the commands sent before, during and
//!   after the kill exactly once, in position order, as the log has it; the
//!   streams of the other instances are not disturbed;
//! - a command whose answer was lost with the instance is retried with its
//!   `command_id` (nginx does not retry a sent POST) and is in the log once;
//! - a resource stream (`/api/deployments/live`) resumes too: no state is
//!   lost (its folded states equal `GET /api/deployments`) and none is sent
//!   twice;
//! - a token revoked on one instance has its streams on another ended.
//!
//! Needs nginx (`nginx` on PATH, /usr/sbin/nginx, or `HERALD_TEST_NGINX`) and
//! PostgreSQL ([`TestDatabase`]); without either it prints why it skipped,
//! unless `CI=true`, where it fails. Every wait has a deadline.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use herald_postgres::testing::TestDatabase;
use serde_json::{Value, json};
use support::*;

/// How long anything that must eventually happen may take.
const EVENTUALLY: Duration = Duration::from_secs(20);

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `HERALD_TEST_NGINX`, `nginx` on PATH, or where Debian and source builds put it.
fn find_nginx() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HERALD_TEST_NGINX") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nginx")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(
            [
                "/usr/sbin/nginx",
                "/usr/local/sbin/nginx",
                "/usr/local/nginx/sbin/nginx",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn herald_command(database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for var in HERALD_ENV {
        cmd.env_remove(var);
    }
    cmd.env_remove("HERALD_TRUSTED_PROXY")
        .env_remove("HERALD_ALLOWED_HOST")
        .env("RUST_LOG", "info")
        .env("HERALD_DATABASE_URL", database_url);
    cmd
}

/// `herald token create` on the database; the token.
fn create_token(database_url: &str, role: &str) -> String {
    let out = herald_command(database_url)
        .args(["token", "create", "--name", "cluster-test", "--role", role])
        .stdin(Stdio::null())
        .output()
        .expect("run herald token create");
    assert!(out.status.success(), "token create: {}", text(&out.stderr));
    text(&out.stdout).lines().last().expect("the token").trim().to_owned()
}

/// `herald serve` on the database, as scripts/cluster starts it behind nginx.
fn start_instance(database_url: &str, origin: &str, logs: &Path) -> Server {
    start_serve(logs, "/readyz", |addr| {
        let mut cmd = herald_command(database_url);
        cmd.args(["serve", "--listen", &addr.to_string(), "--public-origin", origin])
            .args(["--trusted-proxy", "127.0.0.1", "--max-connections-per-address", "0"]);
        cmd
    })
}

/// nginx in front of `upstreams`, from the shipped configuration; killed when dropped.
struct Nginx {
    child: ChildGuard,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    fn start(bin: &Path, dir: &Path, port: u16, upstreams: &[SocketAddr]) -> Nginx {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut generate = Command::new("bash");
        generate
            .arg(repository().join("scripts/cluster"))
            .args(["nginx-config", "--dir"])
            .arg(dir)
            .args(["--listen", &addr.to_string()]);
        for upstream in upstreams {
            generate.args(["--upstream", &upstream.to_string()]);
        }
        let out = generate.output().expect("run scripts/cluster nginx-config");
        assert!(
            out.status.success(),
            "scripts/cluster nginx-config: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let site = std::fs::read_to_string(dir.join("herald.conf")).expect("the generated site");
        for upstream in upstreams {
            assert!(site.contains(&format!("server {upstream} ")), "{site}");
        }
        // One process in the foreground, so that killing it leaves no worker behind.
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).expect("nginx stderr file"))
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            child: ChildGuard(Some(child)),
            addr,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + EVENTUALLY;
        loop {
            if let Some(status) = nginx.child.0.as_mut().expect("nginx").try_wait().expect("try_wait") {
                panic!("nginx exited at start ({status}): {}", nginx.log());
            }
            if matches!(http(addr, "GET", "/readyz", None, &[], None), Ok(r) if r.status == 200) {
                return nginx;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not pass /readyz on: {}",
                nginx.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}

/// The instance's `herald_live_subscribers` (0 before its first stream).
fn live_subscribers(addr: SocketAddr) -> u64 {
    let r = http(addr, "GET", "/metrics", None, &[], None).expect("GET /metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix("herald_live_subscribers "))
        .map_or(0, |v| v.trim().parse::<f64>().expect("a gauge value") as u64)
}

// ---------------------------------------------------------------------------
// A subscriber that reconnects like EventSource
// ---------------------------------------------------------------------------

/// What a subscriber saw.
#[derive(Default)]
struct Seen {
    /// Every frame with more than a `retry:`, with the connection it came on.
    frames: Vec<(usize, Frame)>,
    /// Per connection, the `Last-Event-ID` it was opened with.
    resumed_from: Vec<Option<String>>,
    /// Attempts that got no stream (refused, or an answer other than 200).
    failed_attempts: Vec<String>,
}

impl Seen {
    /// Events received (frames with data), as (position, raw envelope).
    fn events(&self) -> Vec<(u64, String)> {
        self.frames
            .iter()
            .filter_map(|(_, f)| {
                let data = f.data.clone()?;
                let id = f.id.as_deref().expect("an event has an id");
                Some((id.parse().expect("a position"), data))
            })
            .collect()
    }

    fn last_id(&self) -> Option<u64> {
        self.frames
            .iter()
            .rev()
            .find_map(|(_, f)| f.id.as_deref().map(|id| id.parse().expect("an id is a position")))
    }
}

/// A live stream read on its own thread; when it ends it reconnects to
/// `reconnect` with `Last-Event-ID` of the last id it received.
struct Subscriber {
    name: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    fn start(name: &str, first: SocketAddr, reconnect: SocketAddr, path: &str, token: &str) -> Subscriber {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop, path, token) = (seen.clone(), stop.clone(), path.to_owned(), token.to_owned());
            std::thread::spawn(move || follow(&seen, &stop, first, reconnect, &path, &token))
        };
        Subscriber {
            name: name.to_owned(),
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn connections(&self) -> usize {
        self.seen().resumed_from.len()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn follow(seen: &Mutex<Seen>, stop: &AtomicBool, first: SocketAddr, reconnect: SocketAddr, path: &str, token: &str) {
    let lock = || seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut target = first;
    while !stop.load(Ordering::Relaxed) {
        let last_id = lock().last_id().map(|id| id.to_string());
        let mut live = match LiveStream::connect(target, path, token, last_id.as_deref(), Duration::from_millis(200)) {
            Ok(Ok(live)) => live,
            Ok(Err(r)) => {
                lock()
                    .failed_attempts
                    .push(format!("{target}: {} {}", r.status, r.body));
                target = reconnect;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                lock().failed_attempts.push(format!("{target}: {e}"));
                target = reconnect;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let connection = {
            let mut seen = lock();
            seen.resumed_from.push(last_id);
            seen.resumed_from.len() - 1
        };
        loop {
            match live.try_next() {
                Ok(Some(Item::Frame(f))) if f.is_retry_only() => {}
                Ok(Some(Item::Frame(f))) => lock().frames.push((connection, f)),
                Ok(Some(Item::Comment(_))) => {}
                Err(e) if is_timeout(&e) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                // The stream ended (closed, reset, or its last chunk): reconnect.
                Ok(None) | Err(_) => break,
            }
        }
        target = reconnect;
    }
}

// ---------------------------------------------------------------------------
// Commands, each with a command_id, retried until acknowledged
// ---------------------------------------------------------------------------

/// Step `i` of the workload: deployment `dep-i` starts; from the third step
/// on, `dep-(i-2)` also reports progress (a second state for the resource
/// stream). Each command has its own `command_id`.
fn commands_of_step(i: usize) -> Vec<(String, Value)> {
    let mut out = vec![(
        format!("start-{i}"),
        json!({ "type": "StartDeployment", "aggregate_id": format!("dep-{i}"),
                "command_id": format!("start-{i}"),
                "data": { "service": format!("svc-{i}"), "version": "1.0.0" } }),
    )];
    if i >= 2 {
        out.push((
            format!("progress-{i}"),
            json!({ "type": "ReportDeploymentProgress", "aggregate_id": format!("dep-{}", i - 2),
                    "command_id": format!("progress-{i}"),
                    "data": { "percent": 50, "message": format!("step {i}") } }),
        ));
    }
    out
}

/// The ERROR lines of the instances' logs, for a failure's message.
fn errors_in(logs: &[PathBuf]) -> String {
    let mut out = String::from("errors the instances logged:\n");
    for log in logs {
        for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
            if line.contains("ERROR") {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Sends `body` to `addr` until it is acknowledged (200), retrying with the
/// same `command_id` after a lost connection or a 502/503/504/429: how a
/// client makes a command exactly-once across instances. Returns the answers
/// before the 200.
fn send_until_acknowledged(addr: SocketAddr, token: &str, body: &Value, logs: &[PathBuf]) -> Vec<String> {
    let deadline = Instant::now() + EVENTUALLY;
    let mut retried = Vec::new();
    loop {
        match http(addr, "POST", "/api/commands", Some(token), &[], Some(&body.to_string())) {
            Ok(r) if r.status == 200 => return retried,
            Ok(r) if matches!(r.status, 429 | 502 | 503 | 504) => retried.push(format!("{} {}", r.status, r.body)),
            Ok(r) => panic!("{body}: {} {}\n{}", r.status, r.body, errors_in(logs)),
            Err(e) => retried.push(e.to_string()),
        }
        assert!(
            Instant::now() < deadline,
            "{body} was not acknowledged in time: {retried:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn three_instances_behind_nginx_serve_every_subscriber_every_event_once_across_a_kill_9() {
    let Some(nginx_bin) = find_nginx() else {
        assert!(
            !ci(),
            "CI=true and nginx is not installed (apt-get install nginx-light, or set HERALD_TEST_NGINX)"
        );
        println!("skipped: nginx is not installed (apt-get install nginx-light, or set HERALD_TEST_NGINX)");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let Some(db) = runtime.block_on(TestDatabase::create()) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let token = create_token(db.url(), "operator");

    // Three instances; the public origin is nginx's address (the Host check
    // passes through nginx only if it forwards the client's Host).
    let nginx_port = free_port();
    let origin = format!("http://127.0.0.1:{nginx_port}");
    let mut instances: Vec<Option<Server>> = (0..3)
        .map(|_| Some(start_instance(db.url(), &origin, tmp.path())))
        .collect();
    let addrs: Vec<SocketAddr> = instances.iter().flatten().map(|s| s.addr).collect();
    let logs: Vec<PathBuf> = instances.iter().flatten().map(|s| s.log.clone()).collect();
    let nginx_dir = tmp.path().join("nginx");
    let nginx = Nginx::start(&nginx_bin, &nginx_dir, nginx_port, &addrs);
    let proxy = nginx.addr;

    // Opens a stream through nginx and finds which instance took it: the one
    // whose open streams went up by one.
    let open_through_nginx = |name: &str, path: &str| -> (Subscriber, usize) {
        let before: Vec<u64> = addrs.iter().map(|a| live_subscribers(*a)).collect();
        let sub = Subscriber::start(name, proxy, proxy, path, &token);
        let mut on = None;
        poll_until(&format!("{name} is open on one instance"), || {
            if sub.connections() == 0 {
                return false;
            }
            let after: Vec<u64> = addrs.iter().map(|a| live_subscribers(*a)).collect();
            let grown: Vec<usize> = (0..addrs.len()).filter(|&i| after[i] == before[i] + 1).collect();
            let unchanged = (0..addrs.len()).filter(|&i| after[i] == before[i]).count();
            if grown.len() == 1 && unchanged == addrs.len() - 1 {
                on = Some(grown[0]);
            }
            on.is_some()
        });
        (sub, on.expect("an instance"))
    };

    // Six live streams through nginx spread over the three instances
    // (least_conn: no instance has two more than another).
    let through_nginx: Vec<(Subscriber, usize)> = (0..6)
        .map(|i| open_through_nginx(&format!("nginx-{i}"), "/api/events/live"))
        .collect();
    let mut per_instance = [0usize; 3];
    for (_, on) in &through_nginx {
        per_instance[*on] += 1;
    }
    assert!(
        per_instance.iter().max().copied().unwrap_or(0) - per_instance.iter().min().copied().unwrap_or(0) <= 1,
        "least_conn spreads the streams: {per_instance:?}"
    );
    // One more on each instance directly; after its instance is gone it
    // reconnects through nginx.
    let direct: Vec<(Subscriber, usize)> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            (
                Subscriber::start(&format!("direct-{i}"), *addr, proxy, "/api/events/live", &token),
                i,
            )
        })
        .collect();
    for (sub, _) in &direct {
        poll_until(&format!("{} is open", sub.name), || sub.connections() == 1);
    }
    // A resource stream through nginx on each instance.
    let resources: Vec<(Subscriber, usize)> = (0..3)
        .map(|i| open_through_nginx(&format!("deployments-{i}"), "/api/deployments/live"))
        .collect();
    // The instance to kill: the one serving the first resource stream.
    let victim = resources[0].1;
    assert!(
        through_nginx.iter().any(|(_, on)| *on == victim),
        "streams through nginx on the instance to kill: {per_instance:?}"
    );
    let survivor = addrs[(victim + 1) % 3];
    let events: Vec<&Subscriber> = through_nginx.iter().chain(&direct).map(|(s, _)| s).collect();

    // nginx passes the largest body herald takes (64 KiB) and refuses a
    // bigger one itself, with herald's problem.
    let padded = |len: usize| {
        let body = json!({ "type": "NoSuchCommand", "aggregate_id": "x", "data": { "pad": "" } }).to_string();
        body.replace("\"pad\":\"\"", &format!("\"pad\":\"{}\"", "a".repeat(len - body.len())))
    };
    let at_limit = http(proxy, "POST", "/api/commands", Some(&token), &[], Some(&padded(65536))).expect("POST");
    assert_eq!(at_limit.status, 400, "herald itself answers 64 KiB: {}", at_limit.body);
    assert!(at_limit.body.contains("NoSuchCommand"), "{}", at_limit.body);
    let over = http(proxy, "POST", "/api/commands", Some(&token), &[], Some(&padded(65537))).expect("POST");
    assert_eq!(over.status, 413, "{}", over.body);
    assert_eq!(over.header("content-type"), Some("application/problem+json"));
    assert_eq!(over.json()["type"], "/problems/payload-too-large", "{}", over.body);

    // a. One command sent to one instance directly reaches every subscriber.
    let other = addrs[(victim + 2) % 3];
    let first = http(
        other,
        "POST",
        "/api/commands",
        Some(&token),
        &[],
        Some(&commands_of_step(0)[0].1.to_string()),
    )
    .expect("POST");
    assert_eq!(first.status, 200, "{}\n{}", first.body, errors_in(&logs));
    let first_position = first.json()["position"].as_u64().expect("position");
    let deadline = Instant::now() + EVENTUALLY;
    for sub in &events {
        while !sub.seen().events().iter().any(|(p, _)| *p == first_position) {
            assert!(Instant::now() < deadline, "{} did not get the first event", sub.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // b. Commands before the kill (each instance directly), during it
    // (through nginx, from another thread) and after it.
    let mut step = 1;
    for i in 0..6 {
        for (_, body) in commands_of_step(step) {
            send_until_acknowledged(addrs[i % 3], &token, &body, &logs);
        }
        step += 1;
    }
    let during_from = step;
    let during_steps = 24;
    let sent_during = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (token, sent, logs) = (token.clone(), sent_during.clone(), logs.clone());
        std::thread::spawn(move || {
            let mut retried = Vec::new();
            for s in during_from..during_from + during_steps {
                for (_, body) in commands_of_step(s) {
                    retried.extend(send_until_acknowledged(proxy, &token, &body, &logs));
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            retried
        })
    };
    poll_until("a third of the commands through nginx are acknowledged", || {
        sent_during.load(Ordering::Relaxed) >= during_steps / 3
    });
    instances[victim].take().expect("the victim").kill();
    let retried = sender.join().expect("the sender");
    step = during_from + during_steps;
    for _ in 0..6 {
        for (_, body) in commands_of_step(step) {
            send_until_acknowledged(survivor, &token, &body, &logs);
        }
        step += 1;
    }
    println!("answers through nginx before a 200 (each retried with its command_id): {retried:?}");

    // The log, from a survivor: every command exactly once.
    let (log, head) = all_events(survivor, &token);
    let log: BTreeMap<u64, String> = log.into_iter().map(|raw| (position_of(&raw), raw)).collect();
    assert_eq!(log.len() as u64, head, "positions 1..=head, no gap");
    let mut per_command: HashMap<String, usize> = HashMap::new();
    for raw in log.values() {
        let envelope: Value = serde_json::from_str(raw).expect("an envelope");
        if let Some(id) = envelope["command_id"].as_str() {
            *per_command.entry(id.to_owned()).or_default() += 1;
        }
    }
    for s in 0..step {
        for (command_id, _) in commands_of_step(s) {
            assert_eq!(per_command.get(&command_id), Some(&1), "{command_id} in the log once");
        }
    }

    // Every event subscriber reaches the head and has each event after where
    // it started exactly once, in order, byte for byte as the log has it.
    for sub in &events {
        poll_until(&format!("{} reaches the head {head}", sub.name), || {
            sub.seen().last_id() == Some(head)
        });
    }
    for (sub, on) in through_nginx.iter().chain(&direct) {
        let seen = sub.seen();
        let (_, opening) = seen.frames.first().expect("a first frame");
        assert!(
            opening.data.is_none(),
            "{}: a fresh connect starts with the head's id",
            sub.name
        );
        let start: u64 = opening.id.as_deref().expect("id").parse().expect("a position");
        let expected: Vec<(u64, String)> = log.range(start + 1..).map(|(p, raw)| (*p, raw.clone())).collect();
        let got = seen.events();
        let positions = |v: &[(u64, String)]| v.iter().map(|(p, _)| *p).collect::<Vec<_>>();
        assert_eq!(
            positions(&got),
            positions(&expected),
            "{}: every position after {start} once, in order",
            sub.name
        );
        assert!(got == expected, "{}: the envelopes are the log's", sub.name);
        if *on == victim {
            assert!(
                seen.resumed_from.len() >= 2,
                "{}: its instance was killed, it reconnected",
                sub.name
            );
            // Each reconnect resumed from the last id received before it.
            for (connection, from) in seen.resumed_from.iter().enumerate().skip(1) {
                let before = seen
                    .frames
                    .iter()
                    .rev()
                    .find(|(c, f)| *c < connection && f.id.is_some());
                assert_eq!(
                    from.as_deref(),
                    before.and_then(|(_, f)| f.id.as_deref()),
                    "{}: connection {connection} resumed from the last id",
                    sub.name
                );
            }
        } else {
            assert_eq!(
                seen.resumed_from.len(),
                1,
                "{}: its instance stayed, its stream was not disturbed ({:?})",
                sub.name,
                seen.failed_attempts
            );
        }
    }
    // The streams of the killed instance are now on the others: every stream
    // is open there.
    let open = events.len() + resources.len();
    let survivors: Vec<SocketAddr> = instances.iter().flatten().map(|s| s.addr).collect();
    poll_until("every stream is open on the surviving instances", || {
        survivors.iter().map(|a| live_subscribers(*a)).sum::<u64>() == open as u64
    });

    // c. The resource streams: a state never comes twice, and the states
    // folded from each equal the read model.
    for (sub, on) in &resources {
        poll_until(&format!("{} folds into the read model", sub.name), || {
            let current = http(survivor, "GET", "/api/deployments?limit=1000", Some(&token), &[], None)
                .expect("GET /api/deployments")
                .json();
            let position = current["position"].as_u64().expect("position");
            let wanted: BTreeMap<String, Value> = current["deployments"]
                .as_array()
                .expect("deployments")
                .iter()
                .map(|d| (d["id"].as_str().expect("id").to_owned(), d.clone()))
                .collect();
            position >= head && wanted.len() == step && fold_deployments(&sub.seen(), &sub.name) == wanted
        });
        let seen = sub.seen();
        assert_eq!(seen.frames[0].1.event.as_deref(), Some("snapshot"), "{}", sub.name);
        if *on == victim {
            assert!(seen.resumed_from.len() >= 2, "{}: it reconnected", sub.name);
        } else {
            assert_eq!(seen.resumed_from.len(), 1, "{}: not disturbed", sub.name);
        }
    }
    drop(nginx);
}

/// The deployments a resource stream's frames describe; panics on a state
/// sent twice, an id going back, or a resumed connection repeating what came
/// before its `Last-Event-ID`.
fn fold_deployments(seen: &Seen, name: &str) -> BTreeMap<String, Value> {
    let mut state: BTreeMap<String, Value> = BTreeMap::new();
    let mut last_state_at: HashMap<String, u64> = HashMap::new();
    let mut previous_id = 0;
    for (connection, frame) in &seen.frames {
        let id: u64 = frame.id.as_deref().expect("an id").parse().expect("a position");
        assert!(id >= previous_id, "{name}: ids go forward ({previous_id} then {id})");
        previous_id = id;
        let data: Value = serde_json::from_str(frame.data.as_deref().expect("data")).expect("JSON");
        match frame.event.as_deref() {
            Some("snapshot") => {
                state = data["deployments"]
                    .as_array()
                    .expect("deployments")
                    .iter()
                    .map(|d| (d["id"].as_str().expect("id").to_owned(), d.clone()))
                    .collect();
                last_state_at.clear();
            }
            Some("deployment") => {
                if let Some(from) = &seen.resumed_from[*connection] {
                    let from: u64 = from.parse().expect("a position");
                    assert!(
                        id > from,
                        "{name}: a resumed stream sends only what changed after {from}"
                    );
                }
                let key = data["id"].as_str().expect("id").to_owned();
                if let Some(at) = last_state_at.insert(key.clone(), id) {
                    assert!(at < id, "{name}: {key}'s state at {id} came twice");
                }
                state.insert(key, data);
            }
            other => panic!("{name}: unexpected event {other:?}"),
        }
    }
    state
}

/// Waits until `stream` ends (its last chunk, or the connection closed);
/// false if it is still open at `deadline`.
fn ends_before(stream: &mut LiveStream, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        match stream.try_next() {
            Ok(Some(_)) => {}
            Err(e) if is_timeout(&e) => {}
            Ok(None) | Err(_) => return true,
        }
    }
    false
}

/// A revocation on one instance ends the token's streams on the others too
/// (each instance follows `TokenRevoked` in the log, API.md §1).
#[test]
fn revoking_a_token_on_one_instance_ends_its_live_streams_on_every_instance() {
    let Some(db) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(TestDatabase::create())
    else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let admin = create_token(db.url(), "admin");
    let origin = "http://localhost:8080";
    let a = start_instance(db.url(), origin, tmp.path());
    let b = start_instance(db.url(), origin, tmp.path());
    let minted = http(
        a.addr,
        "POST",
        "/api/tokens",
        Some(&admin),
        &[],
        Some(&json!({ "name": "viewer", "role": "viewer" }).to_string()),
    )
    .expect("POST /api/tokens");
    assert_eq!(minted.status, 201, "{}", minted.body);
    let minted = minted.json();
    let (id, viewer) = (
        minted["id"].as_str().expect("id"),
        minted["token"].as_str().expect("token"),
    );
    let open = |addr| match LiveStream::connect(addr, "/api/events/live", viewer, None, Duration::from_millis(200)) {
        Ok(Ok(live)) => live,
        other => panic!("the stream did not open: {:?}", other.err()),
    };
    let (mut on_a, mut on_b) = (open(a.addr), open(b.addr));

    let revoked = http(a.addr, "DELETE", &format!("/api/tokens/{id}"), Some(&admin), &[], None).expect("DELETE");
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    assert!(
        ends_before(&mut on_a, Instant::now() + EVENTUALLY),
        "the revoking instance ends the stream"
    );
    // The other instance refuses the token's new requests (its token cache
    // holds a lookup for 5 s, API.md §2)...
    poll_until("the other instance refuses the revoked token", || {
        http(b.addr, "GET", "/api/events?limit=1", Some(viewer), &[], None)
            .expect("GET")
            .status
            == 401
    });
    // ...and ends the streams the token has open there too.
    assert!(
        ends_before(&mut on_b, Instant::now() + EVENTUALLY),
        "the revoked token's stream on the other instance is still open"
    );
}
