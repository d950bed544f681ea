//! Gapless global order with writers in several processes: this test binary
//! runs itself three times as a writer process (8 concurrent writers each) on
//! one fresh database, while the parent reads the log continuously. No
//! reader ever sees position N+1 before N; afterwards every stream's versions
//! are 1..=n with none shared, `recorded_at` never goes back, and the hash
//! chain verifies.

use std::collections::HashMap;
use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::envelope::Actor;
use herald_core::store::{AppendRequest, ExpectedVersion, Filter, NewEvent, StoreError};
use herald_core::{EventStore, JsonLines};
use herald_postgres::testing::TestDatabase;
use herald_postgres::{PgConfig, PgStore};
use tokio::sync::broadcast::error::RecvError;

const TEST_NAME: &str = "three_processes_of_eight_writers_keep_the_log_gapless";
/// Set in a child: the database to write to.
const CHILD_URL: &str = "HERALD_PG_TEST_WRITER_URL";
const CHILD_INDEX: &str = "HERALD_PG_TEST_WRITER_INDEX";
const PROCESSES: usize = 3;
const WRITERS: usize = 8;
const APPENDS: usize = 30;

fn request(stream: &str, expected: ExpectedVersion, n: usize, tag: &str) -> AppendRequest {
    AppendRequest {
        stream: stream.to_owned(),
        expected,
        events: (0..n)
            .map(|i| NewEvent {
                event_type: "Wrote".into(),
                schema: 1,
                data: serde_json::json!({ "by": tag, "i": i }),
            })
            .collect(),
        actor: Actor::system("multi-process test"),
        command_id: uuid::Uuid::new_v4().to_string(),
        correlation_id: tag.to_owned(),
        idempotency_fingerprint: None,
    }
}

/// One writer process: 8 writers, each appending to its own stream (exact
/// versions), a stream all share (any version) and a contested stream
/// (exact versions, retried on conflict). Prints how many events it wrote.
async fn child(url: &str, index: usize) {
    let store = PgStore::open(url, Arc::new(JsonLines), PgConfig::default())
        .await
        .unwrap_or_else(|e| panic!("writer process {index}: open: {e}"));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let tag = format!("p{index}w{w}");
            let own = format!("post-{tag}");
            let mut own_version = 0;
            let mut written = 0usize;
            for i in 0..APPENDS {
                let n = 1 + (i + w) % 3;
                let committed = match i % 3 {
                    0 => store
                        .append(request(&own, ExpectedVersion::Exact(own_version), n, &tag))
                        .await
                        .map(|o| o.into_committed()),
                    1 => store
                        .append(request("deployment-shared", ExpectedVersion::Any, n, &tag))
                        .await
                        .map(|o| o.into_committed()),
                    _ => loop {
                        let version = store
                            .read_stream("user-contested", 0, 0)
                            .await
                            .unwrap_or_else(|e| panic!("{tag}: read_stream: {e}"))
                            .version;
                        match store
                            .append(request("user-contested", ExpectedVersion::Exact(version), n, &tag))
                            .await
                        {
                            Err(StoreError::Conflict { .. }) => continue,
                            other => break other.map(|o| o.into_committed()),
                        }
                    },
                }
                .unwrap_or_else(|e| panic!("{tag}: append {i}: {e}"));
                if i % 3 == 0 {
                    own_version = committed.version;
                }
                assert_eq!(committed.events.len(), n, "{tag}: events of append {i}");
                written += n;
            }
            written
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t
            .await
            .unwrap_or_else(|e| panic!("writer process {index}: a writer failed: {e}"));
    }
    // On a line of its own (libtest prints the test name before it).
    println!("\nHERALD_CHILD_EVENTS={total}");
}

fn spawn_child(url: &str, index: usize) -> Child {
    let exe = std::env::current_exe().expect("the test binary's path");
    Command::new(exe)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_URL, url)
        .env(CHILD_INDEX, index.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a writer process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_of_eight_writers_keep_the_log_gapless() {
    if let Ok(url) = std::env::var(CHILD_URL) {
        let index = std::env::var(CHILD_INDEX)
            .ok()
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        child(&url, index).await;
        return;
    }
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    // The children start on an empty database: they and the parent migrate it at once.
    let mut children: Vec<Option<Child>> = (0..PROCESSES).map(|i| Some(spawn_child(db.url(), i))).collect();
    let store = PgStore::open(db.url(), Arc::new(JsonLines), PgConfig::default())
        .await
        .expect("open the reading store");

    // Live: batches strictly in order, no gap, no duplicate.
    let mut rx = store.live();
    let live = tokio::spawn(async move {
        let mut last: Option<u64> = None;
        let mut received = 0u64;
        loop {
            match rx.recv().await {
                Ok(batch) => {
                    for e in &batch.events {
                        if let Some(l) = last {
                            assert_eq!(e.position(), l + 1, "live: position {} after {l}", e.position());
                        }
                        last = Some(e.position());
                        received += 1;
                    }
                }
                Err(RecvError::Lagged(_)) => return (received, true),
                Err(RecvError::Closed) => return (received, false),
            }
        }
    });

    let started = Instant::now();
    let mut seen = 0u64;
    let mut reads = 0u64;
    let mut outputs = Vec::new();
    loop {
        let page = store.read_all(seen, &Filter::default(), 500).await.expect("read_all");
        reads += 1;
        for e in &page.events {
            assert_eq!(
                e.position(),
                seen + 1,
                "a reader saw position {} right after {seen}: position {} was not visible yet",
                e.position(),
                seen + 1
            );
            seen = e.position();
        }
        assert!(
            page.head >= seen,
            "read_all returned position {seen} past its head {}",
            page.head
        );
        for slot in children.iter_mut() {
            if let Some(child) = slot
                && let Some(status) = child.try_wait().expect("try_wait")
            {
                let mut out = String::new();
                if let Some(mut stdout) = child.stdout.take() {
                    let _ = stdout.read_to_string(&mut out);
                }
                assert!(status.success(), "a writer process failed ({status}):\n{out}");
                outputs.push(out);
                *slot = None;
            }
        }
        if children.iter().all(Option::is_none) && seen == store.head().await.expect("head").position {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the writer processes did not finish in 240 s"
        );
        tokio::task::yield_now().await;
    }

    let written: usize = outputs
        .iter()
        .map(|out| {
            out.lines()
                .find_map(|l| l.split_once("HERALD_CHILD_EVENTS=").map(|(_, n)| n))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("a writer process did not say what it wrote:\n{out}"))
        })
        .sum();
    assert_eq!(
        seen as usize, written,
        "events in the log vs events the writers appended"
    );
    println!("{written} events by {PROCESSES}×{WRITERS} writers; the reader polled {reads} times");

    // Every stream's versions are exactly 1..=n; recorded_at never goes back.
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    let mut after = 0;
    let mut last_recorded = String::new();
    while after < seen {
        let page = store.read_all(after, &Filter::default(), 1000).await.expect("read_all");
        for e in &page.events {
            versions.entry(e.stream().to_owned()).or_default().push(e.version());
            let env = e.envelope().expect("envelope");
            assert!(
                env.recorded_at >= last_recorded,
                "recorded_at went back at position {}",
                e.position()
            );
            last_recorded = env.recorded_at;
        }
        after = page.next_after;
    }
    assert_eq!(versions.len(), PROCESSES * WRITERS + 2, "streams");
    for (stream, mut vs) in versions {
        let n = vs.len() as u64;
        vs.sort_unstable();
        assert_eq!(
            vs,
            (1..=n).collect::<Vec<_>>(),
            "versions of {stream}: shared or missing"
        );
    }
    let report = store.verify(None).await.expect("verify");
    assert!(report.ok, "the chain does not verify: {report:?}");
    assert_eq!(report.checked, seen);

    drop(store);
    let (received, lagged) = live.await.expect("live checker");
    println!("live: {received} events received in order (lagged: {lagged})");
}
