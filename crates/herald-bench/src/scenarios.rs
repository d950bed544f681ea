//! The commands, catch-up and rebuild scenarios.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use herald_core::JsonLines;
use herald_core::envelope::Actor;
use herald_core::store::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use herald_store::sqlite::SqliteStore;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fanout::herald_command;
use crate::http::{self, Conn, Dechunker, Framing};
use crate::sse;
use crate::stats::{Histogram, Summary};
use crate::targets::{assigned, spread};

#[derive(Debug, Clone, Serialize)]
pub struct CommandsResult {
    pub clients: usize,
    /// The addresses the clients were spread over, round-robin.
    pub targets: Vec<String>,
    pub per_target: Vec<CommandsTarget>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub per_s: f64,
    pub latency: Summary,
}

/// One address of a commands run.
#[derive(Debug, Clone, Serialize)]
pub struct CommandsTarget {
    pub addr: String,
    pub clients: usize,
    pub ok: u64,
    pub errors: u64,
}

/// `clients` keep-alive connections, spread round-robin over `addrs`, each
/// sending StartDeployment commands one after another for `duration` (or
/// until `limit` commands in all).
pub async fn commands(
    addrs: &[SocketAddr],
    token: &str,
    run: &str,
    clients: usize,
    duration: Duration,
    limit: usize,
    pad: usize,
) -> Result<CommandsResult> {
    if addrs.is_empty() {
        bail!("the commands scenario needs at least one target");
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let addr = addrs[assigned(client, addrs.len())];
        let next = next.clone();
        let token = token.to_owned();
        let run = run.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::default();
            let mut errors = 0u64;
            let mut first_error = None;
            let mut conn = Conn::new(http::connect(addr, None).await?);
            let host = addr.to_string();
            while Instant::now() < end {
                let idx = next.fetch_add(1, Ordering::Relaxed);
                if idx >= limit {
                    break;
                }
                let body = herald_command(&run, idx, pad);
                let request = http::post(
                    &host,
                    "/api/commands",
                    Some(&token),
                    "application/json",
                    body.as_bytes(),
                );
                let t = Instant::now();
                match conn.request(&request).await {
                    Ok(r) if r.status == 200 => hist.record_duration(t.elapsed()),
                    Ok(r) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{}: {}", r.status, String::from_utf8_lossy(&r.body)));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        conn = Conn::new(http::connect(addr, None).await?);
                    }
                }
            }
            Ok::<_, anyhow::Error>((hist, errors, first_error))
        }));
    }
    let mut hist = Histogram::default();
    let mut errors = 0;
    let mut first_error = None;
    let mut per_target: Vec<CommandsTarget> = addrs
        .iter()
        .zip(spread(clients, addrs.len()))
        .map(|(addr, clients)| CommandsTarget {
            addr: addr.to_string(),
            clients,
            ok: 0,
            errors: 0,
        })
        .collect();
    for (client, t) in tasks.into_iter().enumerate() {
        let (h, e, f) = t.await??;
        let target = &mut per_target[assigned(client, addrs.len())];
        target.ok += h.count();
        target.errors += e;
        hist.merge(&h);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(CommandsResult {
        clients,
        targets: addrs.iter().map(|a| a.to_string()).collect(),
        per_target,
        ok: hist.count(),
        errors,
        first_error,
        seconds,
        per_s: hist.count() as f64 / seconds,
        latency: hist.summary(),
    })
}

/// The log's head, from `GET /api/events?limit=1`.
pub async fn head(addr: SocketAddr, token: &str) -> Result<u64> {
    let mut conn = Conn::new(http::connect(addr, None).await?);
    let r = conn
        .request(&http::get(&addr.to_string(), "/api/events?limit=1", Some(token), ""))
        .await?;
    if r.status != 200 {
        bail!("GET /api/events: {} {}", r.status, String::from_utf8_lossy(&r.body));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body)?;
    v["head"].as_u64().context("no head in /api/events")
}

/// The length of the envelope a StartDeployment with a `service` of `pad`
/// characters produces (sends one command, as bench run `run`: use a run id
/// as long as the measured runs' and never theirs).
pub async fn probe_envelope(addr: SocketAddr, token: &str, run: &str, pad: usize) -> Result<usize> {
    let mut conn = Conn::new(http::connect(addr, None).await?);
    let body = herald_command(run, 0, pad);
    let r = conn
        .request(&http::post(
            &addr.to_string(),
            "/api/commands",
            Some(token),
            "application/json",
            body.as_bytes(),
        ))
        .await?;
    if r.status != 200 {
        bail!("probe command: {} {}", r.status, String::from_utf8_lossy(&r.body));
    }
    // The envelope as stored (and as the live stream sends it): the raw text
    // of the one element of `events`.
    let body = String::from_utf8_lossy(&r.body);
    let start = body
        .find("\"events\":[")
        .context("no events in the command's response")?
        + 10;
    let end = body.rfind(']').context("no events in the command's response")?;
    Ok(body[start..end].trim().len())
}

#[derive(Debug, Clone, Serialize)]
pub struct CatchupResult {
    pub behind: u64,
    pub received: u64,
    pub gaps: u64,
    pub duplicates: u64,
    /// Request sent → the head's event received.
    pub seconds: f64,
    pub events_per_s: f64,
    pub first_event_ms: f64,
    pub bytes: u64,
}

struct Catch {
    parser: sse::Parser,
    started: Instant,
    received: u64,
    gaps: u64,
    duplicates: u64,
    last: u64,
    bytes: u64,
    first_event: Option<Duration>,
}

impl Catch {
    fn on_bytes(&mut self, b: &[u8]) {
        self.bytes += b.len() as u64;
        let Catch {
            parser,
            started,
            received,
            gaps,
            duplicates,
            last,
            first_event,
            ..
        } = self;
        parser.feed(b, |m| {
            if !m.has_data {
                return;
            }
            let Some(p) = m.id.and_then(sse::parse_u64) else { return };
            first_event.get_or_insert_with(|| started.elapsed());
            if p <= *last {
                *duplicates += 1;
                return;
            }
            *gaps += p - *last - 1;
            *last = p;
            *received += 1;
        });
    }
}

/// One subscriber resuming `behind` events before the head with `Last-Event-ID`.
pub async fn catchup(addr: SocketAddr, token: &str, behind: u64) -> Result<CatchupResult> {
    let head = head(addr, token).await?;
    if head < behind {
        bail!("the log has {head} events, fewer than {behind}");
    }
    let from = head - behind;
    let started = Instant::now();
    let mut conn = Conn::new(http::connect(addr, None).await?);
    conn.stream
        .write_all(&http::get(
            &addr.to_string(),
            "/api/events/live",
            Some(token),
            &format!("Accept: text/event-stream\r\nLast-Event-ID: {from}\r\n"),
        ))
        .await?;
    let h = conn.read_head().await?;
    if h.status != 200 {
        bail!("catch-up subscribe: status {}", h.status);
    }
    let mut dechunk = (h.framing == Framing::Chunked).then(Dechunker::default);
    let mut st = Catch {
        parser: sse::Parser::new(),
        started,
        received: 0,
        gaps: 0,
        duplicates: 0,
        last: from,
        bytes: 0,
        first_event: None,
    };
    let mut chunk = conn.take_leftover();
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = started + Duration::from_secs(120);
    loop {
        match dechunk.as_mut() {
            Some(d) => {
                d.feed(&chunk, |b| st.on_bytes(b))?;
            }
            None => st.on_bytes(&chunk),
        }
        if st.last >= head || Instant::now() > deadline {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(30), conn.stream.read(&mut buf)).await??;
        if n == 0 {
            break;
        }
        chunk = buf[..n].to_vec();
    }
    let seconds = started.elapsed().as_secs_f64();
    let Catch {
        received,
        gaps,
        duplicates,
        bytes,
        first_event,
        ..
    } = st;
    Ok(CatchupResult {
        behind,
        received,
        gaps,
        duplicates,
        seconds,
        events_per_s: received as f64 / seconds,
        first_event_ms: first_event.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        bytes,
    })
}

/// What the rebuild scenario's log holds, and which read model it rebuilds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RebuildDomain {
    /// Deployment events; the `deployments` read model.
    Deployments,
    /// Post events; the `feeds` read model.
    Posts,
}

impl RebuildDomain {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "deployments" => Ok(RebuildDomain::Deployments),
            "posts" => Ok(RebuildDomain::Posts),
            other => bail!("--rebuild-domain {other:?}: expected deployments or posts"),
        }
    }

    /// The read model `herald projections rebuild` is asked for.
    pub fn projection(self) -> &'static str {
        match self {
            RebuildDomain::Deployments => "deployments",
            RebuildDomain::Posts => "feeds",
        }
    }

    fn name(self) -> &'static str {
        match self {
            RebuildDomain::Deployments => "deployments",
            RebuildDomain::Posts => "posts",
        }
    }
}

/// The file in a kept rebuild directory saying which domain it was seeded with.
const SEEDED_DOMAIN: &str = "bench-domain";

#[derive(Debug, Clone, Serialize)]
pub struct RebuildResult {
    pub domain: RebuildDomain,
    pub events: u64,
    pub seed_seconds: f64,
    /// Wall time of `herald projections rebuild`, process start to exit: the
    /// median of the timed runs.
    pub seconds: f64,
    pub events_per_s: f64,
    /// The timed runs' wall times.
    pub runs: Vec<f64>,
    /// The first run's, not part of the figure: it reads the log from memory
    /// the machine may have let go cold (on the VM of docs/BENCHMARKS.md a
    /// first pass over data untouched for minutes costs up to 1.5×).
    pub first_seconds: f64,
    pub output: String,
}

/// Timed rebuilds after the first (their median is the figure).
const REBUILD_RUNS: usize = 3;

/// Events per deployment in the seeded log: started, progress ×8, succeeded.
const PER_DEPLOYMENT: u64 = 10;

/// Writes `events` deployment events into a new store in `dir` (through the
/// store API, in concurrent appends the writer groups into transactions).
pub async fn seed(dir: &Path, events: u64) -> Result<()> {
    let store = SqliteStore::open(dir, Arc::new(JsonLines))?;
    let deployments = events.div_ceil(PER_DEPLOYMENT);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(2048));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for d in 0..deployments {
        let permit = in_flight.clone().acquire_owned().await?;
        let store = store.clone();
        let n = PER_DEPLOYMENT.min(events - d * PER_DEPLOYMENT);
        tasks.spawn(async move {
            let _permit = permit;
            let mut list = vec![NewEvent {
                event_type: "DeploymentStarted".into(),
                schema: 1,
                data: json!({"service": format!("service-{}", d % 50), "version": "1.4.2", "environment": "prod"}),
            }];
            for i in 1..n.saturating_sub(1) {
                list.push(NewEvent {
                    event_type: "DeploymentProgressed".into(),
                    schema: 1,
                    data: json!({"percent": i * 10, "message": "canary ok"}),
                });
            }
            if n > 1 {
                list.push(NewEvent {
                    event_type: "DeploymentSucceeded".into(),
                    schema: 1,
                    data: json!({}),
                });
            }
            list.truncate(n as usize);
            store
                .append(AppendRequest {
                    stream: format!("deployment-seed{d:08}"),
                    expected: ExpectedVersion::NoStream,
                    events: list,
                    actor: Actor::system("bench"),
                    command_id: format!("seed-{d}"),
                    correlation_id: format!("seed-{d}"),
                    idempotency_fingerprint: None,
                })
                .await
        });
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
        if d % 20_000 == 0 && d > 0 {
            eprintln!(
                "  seeded {} events ({:.0}/s)",
                d * PER_DEPLOYMENT,
                (d * PER_DEPLOYMENT) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Events per post in the seeded log: created, then its title, content, tags
/// and all three edited.
const PER_POST: u64 = 5;

const VOCABULARY: &[&str] = &[
    "rust", "ops", "release", "incident", "database", "frontend", "security", "infra",
];

const SENTENCES: &[&str] = &[
    "The release went out to the canary fleet first.",
    "Latency stayed flat while traffic shifted over.",
    "We rotated the database credentials during the window.",
    "The incident review found a missing alert on queue depth.",
    "Frontend bundles are now built once per commit.",
    "Infra changes land behind a feature flag from now on.",
];

/// `n` (1–4) tags of the vocabulary for the `k`-th choice.
fn tags_for(k: u64, n: u64) -> Vec<&'static str> {
    (0..n)
        .map(|i| VOCABULARY[((k * 7 + i * 3) % VOCABULARY.len() as u64) as usize])
        .collect()
}

fn content_for(k: u64) -> String {
    let n = 2 + k % 4;
    (0..n)
        .map(|i| SENTENCES[((k + i) % SENTENCES.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The events of the `p`-th seeded post (at most `n` of them), as its
/// commands would have written them.
fn post_events(p: u64, n: u64) -> Vec<NewEvent> {
    let event = |event_type: &str, data: serde_json::Value| NewEvent {
        event_type: event_type.into(),
        schema: 1,
        data,
    };
    let (title, content) = (format!("Post {p}"), content_for(p));
    let mut tags = tags_for(p, 1 + p % 4);
    tags.dedup();
    let mut new_tags = tags_for(p + 1, 1 + (p + 1) % 4);
    new_tags.dedup();
    let mut list = vec![
        event("PostCreated", json!({"title": title, "content": content, "tags": tags})),
        event(
            "PostUpdated",
            json!({"title": {"old": title, "new": format!("{title} (edited)")}}),
        ),
        event(
            "PostUpdated",
            json!({"content": {"old": content, "new": content_for(p + 1)}}),
        ),
        event("PostUpdated", json!({"tags": {"old": tags, "new": new_tags}})),
        event(
            "PostUpdated",
            json!({
                "title": {"old": format!("{title} (edited)"), "new": format!("{title}, again")},
                "content": {"old": content_for(p + 1), "new": content_for(p + 2)},
                "tags": {"old": new_tags, "new": tags},
            }),
        ),
    ];
    list.truncate(n as usize);
    list
}

/// Writes `events` post events into a new store in `dir`, like [`seed`].
pub async fn seed_posts(dir: &Path, events: u64) -> Result<()> {
    let store = SqliteStore::open(dir, Arc::new(JsonLines))?;
    let posts = events.div_ceil(PER_POST);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(2048));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for p in 0..posts {
        let permit = in_flight.clone().acquire_owned().await?;
        let store = store.clone();
        let n = PER_POST.min(events - p * PER_POST);
        tasks.spawn(async move {
            let _permit = permit;
            store
                .append(AppendRequest {
                    stream: format!("post-seed{p:08}"),
                    expected: ExpectedVersion::NoStream,
                    events: post_events(p, n),
                    actor: Actor::system("bench"),
                    command_id: format!("seed-{p}"),
                    correlation_id: format!("seed-{p}"),
                    idempotency_fingerprint: None,
                })
                .await
        });
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
        if p % 40_000 == 0 && p > 0 {
            eprintln!(
                "  seeded {} events ({:.0}/s)",
                p * PER_POST,
                (p * PER_POST) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Seeds `events` of `domain` into a temporary store, then runs `herald
/// projections rebuild` of its read model on it once, then [`REBUILD_RUNS`]
/// times timed.
pub async fn rebuild(exe: &Path, domain: RebuildDomain, events: u64, keep: Option<&Path>) -> Result<RebuildResult> {
    let temp = tempfile::Builder::new().prefix("herald-bench-rebuild-").tempdir()?;
    let dir = keep.unwrap_or(temp.path());
    let started = Instant::now();
    let existing = if dir.join("herald.db").exists() {
        let store = SqliteStore::open(dir, Arc::new(JsonLines))?;
        store.head().await?.position
    } else {
        0
    };
    // (A kept directory seeded before there were domains holds deployments.)
    let seeded = std::fs::read_to_string(dir.join(SEEDED_DOMAIN)).unwrap_or_else(|_| "deployments".into());
    if existing == 0 {
        match domain {
            RebuildDomain::Deployments => seed(dir, events).await?,
            RebuildDomain::Posts => seed_posts(dir, events).await?,
        }
        std::fs::write(dir.join(SEEDED_DOMAIN), domain.name())?;
        eprintln!("  seeded {events} events in {:.1} s", started.elapsed().as_secs_f64());
    } else if existing != events {
        bail!("{} holds {existing} events, not {events}", dir.display());
    } else if seeded.trim() != domain.name() {
        bail!(
            "{} holds {} events, not {}",
            dir.display(),
            seeded.trim(),
            domain.name()
        );
    } else {
        eprintln!("  reusing the {existing} events in {}", dir.display());
    }
    let seed_seconds = started.elapsed().as_secs_f64();
    let mut output = String::new();
    let mut times = Vec::new();
    for _ in 0..=REBUILD_RUNS {
        let started = Instant::now();
        let out = tokio::process::Command::new(exe)
            .arg("--data")
            .arg(dir)
            .args(["projections", "rebuild", domain.projection()])
            .env("RUST_LOG", "warn")
            .output()
            .await?;
        times.push(started.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!(
                "herald projections rebuild failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        output = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    let first_seconds = times.remove(0);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let seconds = sorted[sorted.len() / 2];
    Ok(RebuildResult {
        domain,
        events,
        seed_seconds,
        seconds,
        events_per_s: events as f64 / seconds,
        runs: times,
        first_seconds,
        output,
    })
}
