//! The fan-out scenario: N SSE subscribers, spread round-robin over the
//! targets (one, or several instances of one herald), then
//! 1. a latency phase: commands (or messages) at a fixed rate; every delivery's
//!    latency is receive time − send time of the command it carries;
//! 2. a throughput phase: publishers send as fast as a window allows (at most
//!    `window` messages not yet delivered to every subscriber), which is the
//!    highest rate every subscriber sustains without a backlog growing.
//!
//! With several targets the publishers are spread over them too: a message
//! sent to one must reach the subscribers of every other, and each subscriber
//! must still get every message once.
//!
//! Each subscriber is one task on a raw TCP connection with an incremental
//! HTTP-chunked and SSE decoder; a delivery costs a few atomics.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::Kind;
use crate::http::{self, Conn, Dechunker, Framing};
use crate::sse;
use crate::stats::{AtomicHistogram, Histogram, Summary};
use crate::targets::{assigned, spread};

/// Lanes of the delivery bookkeeping: each client thread counts and records
/// into its own (a counter every thread writes on every delivery costs the
/// client more than the rest of its work, and the client shares the cores
/// with the server it measures).
const LANES: usize = 8;

/// This thread's lane.
fn lane() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % LANES;
    }
    LANE.with(|l| *l)
}

/// A message not delivered to every subscriber this long after it was sent no
/// longer holds the window (it will count as missing where it is).
const STALL: Duration = Duration::from_secs(2);
/// Concurrent connection attempts (beyond it a listen backlog overflows and
/// SYN retransmits would be measured instead of the server).
const CONNECTING: usize = 64;
/// Loopback source addresses the subscribers spread over (ephemeral ports are per address).
const SOURCES: u8 = 8;

#[derive(Clone, Debug)]
pub struct FanConfig {
    pub kind: Kind,
    /// Where subscribers and publishers connect, round-robin (at least one).
    pub addrs: Vec<SocketAddr>,
    pub token: Option<String>,
    /// Nchan's channel id.
    pub channel: String,
    pub subscribers: usize,
    pub rate: f64,
    pub duration: Duration,
    /// Publishing connections of each throughput run (`--publishers 1,4,64`:
    /// one run each, in this order).
    pub publishers: Vec<usize>,
    pub window: usize,
    /// Size of a reference payload; herald's envelope is padded to about this.
    pub payload: usize,
    /// Length of herald's `service` field that gives `payload`-byte envelopes.
    pub herald_pad: usize,
    pub run: String,
    pub max_messages: usize,
    /// Processes whose resident memory is the server's.
    pub pids: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanResult {
    pub target: String,
    /// The addresses subscribers and publishers were spread over.
    pub targets: Vec<String>,
    pub subscribers: usize,
    /// Per address: its subscribers and what they received.
    pub per_target: Vec<FanTarget>,
    pub connected: usize,
    pub connect_failures: usize,
    pub first_connect_error: Option<String>,
    /// Wall time to connect every subscriber (at most 64 connecting at once).
    pub connect_all_s: f64,
    /// One subscriber: TCP connect to response head.
    pub connect: Summary,
    /// Summed over the server's processes.
    pub rss_before_kib: Option<u64>,
    pub rss_idle_kib: Option<u64>,
    /// Each process's own.
    pub processes: Vec<ProcessMemory>,
    /// (idle − before) / connected.
    pub rss_per_subscriber_bytes: Option<f64>,
    pub latency_rate: f64,
    pub latency_published: usize,
    pub latency_missing: u64,
    pub latency: Summary,
    /// The last throughput run's (the most publishers, as `--publishers` is
    /// usually given): the flat-out figure.
    pub throughput_published: usize,
    pub throughput_missing: u64,
    pub deliveries_per_s: f64,
    pub messages_per_s: f64,
    pub throughput_latency: Summary,
    /// Every throughput run, one per `--publishers` count.
    pub sweep: Vec<SweepRun>,
    /// Missing deliveries over every phase.
    pub missing: u64,
    /// Publisher round trips (command or publish request).
    pub publish: Summary,
    pub publish_errors: u64,
    pub first_publish_error: Option<String>,
    pub duplicates: u64,
    pub disconnects: u64,
    /// Mean length of a delivered `data:` field.
    pub data_bytes: f64,
}

/// One throughput run of the `--publishers` sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRun {
    pub publishers: usize,
    pub published: usize,
    pub missing: u64,
    pub deliveries_per_s: f64,
    pub messages_per_s: f64,
    pub latency: Summary,
}

/// One address of a fan-out run.
#[derive(Debug, Clone, Serialize)]
pub struct FanTarget {
    pub addr: String,
    /// Subscribers assigned to it.
    pub subscribers: usize,
    pub connected: usize,
    /// Publishing connections it got (latency phase + throughput phase).
    pub publishers: usize,
    /// Deliveries its subscribers counted (each message once per subscriber).
    pub delivered: u64,
    /// Its connected subscribers × messages sent, minus `delivered`.
    pub missing: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessMemory {
    pub pid: u32,
    pub before_kib: Option<u64>,
    pub idle_kib: Option<u64>,
}

struct Shared {
    run: Vec<u8>,
    base: Instant,
    sent: Vec<AtomicU64>,
    /// Deliveries per lane and message.
    count: Vec<Vec<AtomicU32>>,
    phase: Vec<AtomicU8>,
    /// Subscribers a message must reach.
    expected: AtomicU32,
    /// Messages below this are delivered everywhere (or given up on).
    low: AtomicUsize,
    published: AtomicUsize,
    /// The next message index to send.
    next: AtomicUsize,
    window: Semaphore,
    window_from: AtomicUsize,
    /// Latency per phase and lane.
    hist: Vec<Vec<AtomicHistogram>>,
    /// The last receive time per phase and lane.
    last_recv: Vec<Vec<Padded>>,
    connect: AtomicHistogram,
    connected: AtomicUsize,
    failed: AtomicUsize,
    cancel: CancellationToken,
}

#[derive(Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

impl Shared {
    /// Deliveries of message `idx` so far.
    fn delivered(&self, idx: usize) -> u64 {
        self.count
            .iter()
            .map(|c| u64::from(c[idx].load(Ordering::Acquire)))
            .sum()
    }

    fn last_recv(&self, phase: usize) -> u64 {
        self.last_recv[phase]
            .iter()
            .map(|t| t.0.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }
}

#[derive(Debug, Default)]
struct SubStats {
    connected: bool,
    delivered: u64,
    duplicates: u64,
    data_bytes: u64,
    disconnected: bool,
    error: Option<String>,
}

struct SubState {
    sh: Arc<Shared>,
    parser: sse::Parser,
    last_id: Option<(u64, u64)>,
    stats: SubStats,
}

impl SubState {
    fn on_bytes(&mut self, bytes: &[u8]) {
        let SubState {
            sh,
            parser,
            last_id,
            stats,
        } = self;
        // One receive time for what one read brought.
        let now = sh.now_ns();
        let lane = lane();
        parser.feed(bytes, |m| {
            if !m.has_data {
                return;
            }
            let Some(idx) = sse::command_index(m.data, &sh.run) else {
                return;
            };
            let idx = idx as usize;
            if idx >= sh.sent.len() {
                return;
            }
            if let Some(id) = m.id.and_then(sse::id_key) {
                if last_id.is_some_and(|last| id <= last) {
                    stats.duplicates += 1;
                    return;
                }
                *last_id = Some(id);
            }
            let sent = sh.sent[idx].load(Ordering::Acquire);
            let phase = usize::from(sh.phase[idx].load(Ordering::Relaxed)).min(sh.hist.len() - 1);
            if sent > 0 && now >= sent {
                sh.hist[phase][lane].record(now - sent);
            }
            stats.delivered += 1;
            stats.data_bytes += m.data.len() as u64;
            sh.last_recv[phase][lane].0.fetch_max(now, Ordering::Relaxed);
            sh.count[lane][idx].fetch_add(1, Ordering::Release);
        });
    }
}

async fn subscriber(
    sh: Arc<Shared>,
    i: usize,
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    connecting: Arc<Semaphore>,
) -> SubStats {
    let source = match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCES as usize) as u8)))
        }
        _ => None,
    };
    let started = Instant::now();
    let opened = {
        let _permit = connecting.acquire().await;
        async {
            let stream = http::connect(addr, source).await?;
            let mut conn = Conn::new(stream);
            conn.stream.write_all(&request).await?;
            let head = conn.read_head().await?;
            if head.status != 200 {
                bail!("status {}", head.status);
            }
            Ok::<_, anyhow::Error>((conn, head))
        }
        .await
    };
    let (mut conn, head) = match opened {
        Ok(ok) => ok,
        Err(e) => {
            sh.failed.fetch_add(1, Ordering::Relaxed);
            return SubStats {
                error: Some(format!("{e:#}")),
                ..SubStats::default()
            };
        }
    };
    sh.connect.record(started.elapsed().as_nanos() as u64);
    sh.connected.fetch_add(1, Ordering::Relaxed);
    let mut state = SubState {
        sh: sh.clone(),
        parser: sse::Parser::new(),
        last_id: None,
        stats: SubStats {
            connected: true,
            ..SubStats::default()
        },
    };
    let mut dechunk = (head.framing == Framing::Chunked).then(Dechunker::default);
    let mut feed = |bytes: &[u8], state: &mut SubState| match dechunk.as_mut() {
        Some(d) => d.feed(bytes, |piece| state.on_bytes(piece)).is_ok(),
        None => {
            state.on_bytes(bytes);
            true
        }
    };
    let leftover = conn.take_leftover();
    let mut ok = feed(&leftover, &mut state);
    let mut stream = conn.stream;
    let mut buf = vec![0u8; 8 * 1024];
    // Made once: a fresh one per read would lock the token's waiter list twice.
    let cancelled = sh.cancel.clone().cancelled_owned();
    let mut cancelled = std::pin::pin!(cancelled);
    while ok {
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    state.stats.disconnected = true;
                    sh.expected.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                Ok(n) => ok = feed(&buf[..n], &mut state),
            }
        }
    }
    state.stats
}

/// Messages the reaper has seen delivered everywhere move `low` on and, in the
/// throughput phase, give their window slot back.
async fn reaper(sh: Arc<Shared>, stop: CancellationToken) {
    let mut low = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        let expected = sh.expected.load(Ordering::Relaxed);
        let now = sh.now_ns();
        let published = sh.published.load(Ordering::Acquire);
        while low < published {
            let sent = sh.sent[low].load(Ordering::Acquire);
            if sent == 0 {
                break; // taken but not sent yet
            }
            let done = sh.delivered(low) >= u64::from(expected);
            if !done && now.saturating_sub(sent) < STALL.as_nanos() as u64 {
                break;
            }
            if low >= sh.window_from.load(Ordering::Relaxed) {
                sh.window.add_permits(1);
            }
            low += 1;
        }
        sh.low.store(low, Ordering::Release);
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Paced {
        first: usize,
        t0: tokio::time::Instant,
        rate: f64,
    },
    Windowed,
}

#[derive(Default)]
struct PubStats {
    hist: Histogram,
    errors: u64,
    first_error: Option<String>,
}

/// What one publish request to `addr` looks like for message `idx`.
pub fn publish_request(cfg: &FanConfig, addr: SocketAddr, idx: usize) -> Vec<u8> {
    let host = addr.to_string();
    let run = &cfg.run;
    match cfg.kind {
        Kind::Herald => {
            let body = herald_command(run, idx, cfg.herald_pad);
            http::post(
                &host,
                "/api/commands",
                cfg.token.as_deref(),
                "application/json",
                body.as_bytes(),
            )
        }
        Kind::Nchan => http::post(
            &host,
            &format!("/pub?chan={}", cfg.channel),
            None,
            "application/json",
            reference_payload(run, idx, cfg.payload).as_bytes(),
        ),
        Kind::Ceiling => http::post(
            &host,
            "/pub",
            None,
            "application/json",
            reference_payload(run, idx, cfg.payload).as_bytes(),
        ),
    }
}

/// A durable single-event command: StartDeployment of a new deployment.
pub fn herald_command(run: &str, idx: usize, pad: usize) -> String {
    format!(
        r#"{{"type":"StartDeployment","aggregate_id":"{run}x{idx:08}","expected_version":0,"command_id":"{run}-{idx:08}","data":{{"service":"{}","version":"1.4.2","environment":"prod"}}}}"#,
        "s".repeat(pad.max(1))
    )
}

/// A JSON message of exactly `size` bytes (when `size` allows) carrying the
/// same `command_id` a herald envelope would.
pub fn reference_payload(run: &str, idx: usize, size: usize) -> String {
    let head = format!(r#"{{"command_id":"{run}-{idx:08}","type":"BenchMessage","data":{{"pad":""#);
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "p".repeat(pad))
}

async fn publisher(
    sh: Arc<Shared>,
    cfg: Arc<FanConfig>,
    addr: SocketAddr,
    mode: Mode,
    phase: u8,
    end: tokio::time::Instant,
) -> PubStats {
    let mut stats = PubStats::default();
    let mut conn = match http::connect(addr, None).await {
        Ok(s) => Conn::new(s),
        Err(e) => {
            stats.errors += 1;
            stats.first_error = Some(format!("connect: {e}"));
            return stats;
        }
    };
    loop {
        let idx = match mode {
            Mode::Paced { first, t0, rate } => {
                let idx = sh.next.fetch_add(1, Ordering::Relaxed);
                let at = t0 + Duration::from_secs_f64((idx - first) as f64 / rate);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                idx
            }
            Mode::Windowed => {
                tokio::select! {
                    permit = sh.window.acquire() => match permit {
                        Ok(p) => p.forget(),
                        Err(_) => break,
                    },
                    _ = tokio::time::sleep_until(end) => break,
                }
                sh.next.fetch_add(1, Ordering::Relaxed)
            }
        };
        if idx >= sh.sent.len() || tokio::time::Instant::now() >= end {
            break;
        }
        let request = publish_request(&cfg, addr, idx);
        sh.phase[idx].store(phase, Ordering::Relaxed);
        sh.sent[idx].store(sh.now_ns(), Ordering::Release);
        sh.published.fetch_max(idx + 1, Ordering::AcqRel);
        let started = Instant::now();
        match conn.request(&request).await {
            Ok(r) if r.status < 300 => stats.hist.record_duration(started.elapsed()),
            Ok(r) => {
                stats.errors += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(format!("{}: {}", r.status, String::from_utf8_lossy(&r.body)));
                }
            }
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert_with(|| format!("{e:#}"));
                match http::connect(addr, None).await {
                    Ok(s) => conn = Conn::new(s),
                    Err(_) => break,
                }
            }
        }
    }
    stats
}

/// Runs the fan-out against the targets of `cfg` at one subscriber count.
pub async fn run(cfg: FanConfig) -> Result<FanResult> {
    if cfg.addrs.is_empty() {
        bail!("the fan-out needs at least one target");
    }
    if cfg.publishers.is_empty() {
        bail!("--publishers: at least one count");
    }
    let n = cfg.subscribers;
    let targets = cfg.addrs.len();
    let cap = cfg.max_messages;
    // The latency phase, then one per throughput run.
    let phases = 1 + cfg.publishers.len();
    let sh = Arc::new(Shared {
        run: cfg.run.as_bytes().to_vec(),
        base: Instant::now(),
        sent: (0..cap).map(|_| AtomicU64::new(0)).collect(),
        count: (0..LANES)
            .map(|_| (0..cap).map(|_| AtomicU32::new(0)).collect())
            .collect(),
        phase: (0..cap).map(|_| AtomicU8::new(0)).collect(),
        expected: AtomicU32::new(0),
        low: AtomicUsize::new(0),
        published: AtomicUsize::new(0),
        next: AtomicUsize::new(0),
        window: Semaphore::new(0),
        window_from: AtomicUsize::new(usize::MAX),
        hist: (0..phases)
            .map(|_| (0..LANES).map(|_| AtomicHistogram::default()).collect())
            .collect(),
        last_recv: (0..phases)
            .map(|_| (0..LANES).map(|_| Padded::default()).collect())
            .collect(),
        connect: AtomicHistogram::default(),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        cancel: CancellationToken::new(),
    });
    let rss = |pids: &[u32]| -> Vec<Option<u64>> { pids.iter().map(|p| crate::targets::rss_kib(*p)).collect() };
    let sum = |v: &[Option<u64>]| -> Option<u64> {
        let known: Vec<u64> = v.iter().flatten().copied().collect();
        (!known.is_empty()).then(|| known.iter().sum())
    };
    let rss_before = rss(&cfg.pids);

    // Connect, round-robin over the targets (each request names its own Host).
    let requests: Vec<Arc<Vec<u8>>> = cfg
        .addrs
        .iter()
        .map(|&addr| {
            Arc::new(crate::targets::subscribe_request(
                cfg.kind,
                addr,
                cfg.token.as_deref(),
                &cfg.channel,
            ))
        })
        .collect();
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let t = assigned(i, targets);
        tasks.push(tokio::spawn(subscriber(
            sh.clone(),
            i,
            cfg.addrs[t],
            requests[t].clone(),
            connecting.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while sh.connected.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_all = started.elapsed();
    let connected = sh.connected.load(Ordering::Relaxed);
    sh.expected.store(connected as u32, Ordering::Relaxed);
    eprintln!(
        "  {} subscribers connected in {:.2} s ({} failed)",
        connected,
        connect_all.as_secs_f64(),
        n - connected
    );
    // Idle: let the server settle, then read its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss(&cfg.pids);

    let stop_reaper = CancellationToken::new();
    let reaper_task = tokio::spawn(reaper(sh.clone(), stop_reaper.clone()));
    let cfg = Arc::new(cfg);
    let mut pub_stats = PubStats::default();
    let absorb = |s: PubStats, into: &mut PubStats| {
        into.hist.merge(&s.hist);
        into.errors += s.errors;
        if into.first_error.is_none() {
            into.first_error = s.first_error;
        }
    };

    // 1. Latency at a fixed rate.
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = t0 + cfg.duration;
    // Open loop: enough connections that a slow answer never delays the next send.
    let publishers = ((cfg.rate / 2.0).ceil() as usize).clamp(1, 64).max(targets);
    let mut publishers_per_target = spread(publishers, targets);
    let mut pubs = Vec::new();
    for p in 0..publishers {
        pubs.push(tokio::spawn(publisher(
            sh.clone(),
            cfg.clone(),
            cfg.addrs[assigned(p, targets)],
            Mode::Paced {
                first: 0,
                t0,
                rate: cfg.rate,
            },
            0,
            end,
        )));
    }
    for p in pubs {
        absorb(p.await?, &mut pub_stats);
    }
    let latency_published = sh.published.load(Ordering::Acquire);
    drain(&sh).await;

    // 2. Throughput through a window, once per publisher count.
    let mut runs = Vec::with_capacity(cfg.publishers.len());
    for (k, &count) in cfg.publishers.iter().enumerate() {
        let first = sh.published.load(Ordering::Acquire);
        sh.next.store(first, Ordering::Relaxed);
        sh.window_from.store(first, Ordering::Relaxed);
        // Nothing is outstanding after a drain: the window starts whole.
        sh.window.forget_permits(usize::MAX);
        sh.window.add_permits(cfg.window);
        let end = tokio::time::Instant::now() + cfg.duration;
        // Every target publishes: at least one publisher each.
        let publishers = count.max(1).max(targets);
        for (total, more) in publishers_per_target.iter_mut().zip(spread(publishers, targets)) {
            *total += more;
        }
        let mut pubs = Vec::new();
        for p in 0..publishers {
            pubs.push(tokio::spawn(publisher(
                sh.clone(),
                cfg.clone(),
                cfg.addrs[assigned(p, targets)],
                Mode::Windowed,
                (1 + k) as u8,
                end,
            )));
        }
        for p in pubs {
            absorb(p.await?, &mut pub_stats);
        }
        let published = sh.published.load(Ordering::Acquire);
        drain(&sh).await;
        runs.push((publishers, first, published));
    }
    let published = sh.published.load(Ordering::Acquire);
    sh.window.close();
    stop_reaper.cancel();
    let _ = reaper_task.await;
    sh.cancel.cancel();

    let mut duplicates = 0;
    let mut disconnects = 0;
    let mut delivered = 0;
    let mut data_bytes = 0;
    let mut first_connect_error = None;
    let mut per_target: Vec<FanTarget> = cfg
        .addrs
        .iter()
        .zip(spread(n, targets))
        .zip(&publishers_per_target)
        .map(|((addr, subscribers), &publishers)| FanTarget {
            addr: addr.to_string(),
            subscribers,
            connected: 0,
            publishers,
            delivered: 0,
            missing: 0,
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let s = t.await?;
        let target = &mut per_target[assigned(i, targets)];
        target.connected += usize::from(s.connected);
        target.delivered += s.delivered;
        duplicates += s.duplicates;
        disconnects += u64::from(s.disconnected);
        delivered += s.delivered;
        data_bytes += s.data_bytes;
        if first_connect_error.is_none() {
            first_connect_error = s.error;
        }
    }
    let missing = |range: std::ops::Range<usize>| -> u64 {
        range.map(|i| (connected as u64).saturating_sub(sh.delivered(i))).sum()
    };
    let merged = |phase: usize| {
        let mut h = Histogram::default();
        for s in &sh.hist[phase] {
            h.merge(&s.snapshot());
        }
        h
    };
    let sweep: Vec<SweepRun> = runs
        .iter()
        .enumerate()
        .map(|(k, &(publishers, first, published))| {
            let deliveries: u64 = (first..published).map(|i| sh.delivered(i)).sum();
            let first_sent = if published > first {
                sh.sent[first].load(Ordering::Relaxed)
            } else {
                0
            };
            let elapsed_s = sh.last_recv(1 + k).saturating_sub(first_sent) as f64 / 1e9;
            let per_s = |x: f64| if elapsed_s > 0.0 { x / elapsed_s } else { 0.0 };
            SweepRun {
                publishers,
                published: published - first,
                missing: missing(first..published),
                deliveries_per_s: per_s(deliveries as f64),
                messages_per_s: per_s((published - first) as f64),
                latency: merged(1 + k).summary(),
            }
        })
        .collect();
    let flat_out = sweep.last().cloned().context("no throughput run")?;
    for t in &mut per_target {
        t.missing = (t.connected as u64 * published as u64).saturating_sub(t.delivered);
    }
    let processes: Vec<ProcessMemory> = cfg
        .pids
        .iter()
        .zip(rss_before.iter().zip(&rss_idle))
        .map(|(&pid, (&before_kib, &idle_kib))| ProcessMemory {
            pid,
            before_kib,
            idle_kib,
        })
        .collect();
    let (rss_before, rss_idle) = (sum(&rss_before), sum(&rss_idle));
    let rss_per = match (rss_before, rss_idle) {
        (Some(b), Some(a)) if connected > 0 => Some((a as f64 - b as f64) * 1024.0 / connected as f64),
        _ => None,
    };
    Ok(FanResult {
        target: cfg.kind.name().to_owned(),
        targets: cfg.addrs.iter().map(|a| a.to_string()).collect(),
        subscribers: n,
        per_target,
        connected,
        connect_failures: n - connected,
        first_connect_error,
        connect_all_s: connect_all.as_secs_f64(),
        connect: sh.connect.snapshot().summary(),
        rss_before_kib: rss_before,
        rss_idle_kib: rss_idle,
        rss_per_subscriber_bytes: rss_per,
        processes,
        latency_rate: cfg.rate,
        latency_published,
        latency_missing: missing(0..latency_published),
        latency: merged(0).summary(),
        throughput_published: flat_out.published,
        throughput_missing: flat_out.missing,
        deliveries_per_s: flat_out.deliveries_per_s,
        messages_per_s: flat_out.messages_per_s,
        throughput_latency: flat_out.latency,
        missing: missing(0..latency_published) + sweep.iter().map(|r| r.missing).sum::<u64>(),
        sweep,
        publish: pub_stats.hist.summary(),
        publish_errors: pub_stats.errors,
        first_publish_error: pub_stats.first_error,
        duplicates,
        disconnects,
        data_bytes: if delivered > 0 {
            data_bytes as f64 / delivered as f64
        } else {
            0.0
        },
    })
}

/// Waits until every sent message is delivered everywhere (or given up on).
async fn drain(sh: &Shared) {
    // Long enough for every delivery still queued on an overloaded 2-core
    // machine to arrive: what is not there after it is missing, not late.
    let deadline = Instant::now() + STALL + Duration::from_secs(18);
    while sh.low.load(Ordering::Acquire) < sh.published.load(Ordering::Acquire) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl FanResult {
    pub fn print(&self) {
        eprintln!(
            "  {} × {}: connect all {:.2} s, one {}",
            self.target, self.subscribers, self.connect_all_s, self.connect
        );
        if let Some(per) = self.rss_per_subscriber_bytes {
            eprintln!(
                "    server RSS {} → {} KiB idle: {:.0} bytes per subscriber",
                self.rss_before_kib.unwrap_or(0),
                self.rss_idle_kib.unwrap_or(0),
                per
            );
        }
        if self.processes.len() > 1 {
            for p in &self.processes {
                let kib = |v: Option<u64>| v.map_or("-".to_owned(), |k| k.to_string());
                eprintln!(
                    "      pid {}: RSS {} → {} KiB idle",
                    p.pid,
                    kib(p.before_kib),
                    kib(p.idle_kib)
                );
            }
        }
        if self.per_target.len() > 1 {
            for t in &self.per_target {
                eprintln!(
                    "    {}: {} subscribers ({} connected), {} publishers, {} delivered, missing {}",
                    t.addr, t.subscribers, t.connected, t.publishers, t.delivered, t.missing
                );
            }
        }
        eprintln!(
            "    latency at {}/s: {} ; missing {} of {} messages × subscribers",
            self.latency_rate,
            self.latency,
            self.latency_missing,
            self.latency_published * self.connected
        );
        for run in &self.sweep {
            eprintln!(
                "    throughput, {} publishers: {:.0} deliveries/s ({:.1} messages/s, {} sent, missing {}), latency {}",
                run.publishers, run.deliveries_per_s, run.messages_per_s, run.published, run.missing, run.latency
            );
        }
        eprintln!(
            "    publish {} ; errors {} ; duplicates {} ; disconnects {} ; data {:.0} bytes",
            self.publish, self.publish_errors, self.duplicates, self.disconnects, self.data_bytes
        );
        if let Some(e) = &self.first_publish_error {
            eprintln!("    first publish error: {e}");
        }
        if let Some(e) = &self.first_connect_error {
            eprintln!("    first connect error: {e}");
        }
    }
}
