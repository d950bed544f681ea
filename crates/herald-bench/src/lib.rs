//! `herald bench`: the load generator behind `docs/BENCHMARKS.md`.
//!
//! It drives a running herald (or one it spawns) the way real clients do —
//! subscribers on `/api/events/live` with tokens, commands on
//! `POST /api/commands` — and matches every delivered event to the command that
//! caused it by the envelope's `command_id`. The fan-out runs the same way
//! against two references: Nchan (nginx, run as a child) and an in-process
//! tokio broadcaster, the ceiling for this machine. The commands figure has
//! PostgreSQL's own beside it: `pgbench` inserting a 500-byte row per
//! transaction (`--pgbench-url`).
//!
//! `--target` may list several instances of one herald (on one PostgreSQL
//! database): the commands' clients, the fan-out's subscribers and its
//! publishers are spread over them round-robin.

pub mod brokers;
pub mod fanout;
pub mod http;
pub mod pgbench;
pub mod plot;
pub mod scenarios;
pub mod sse;
pub mod stats;
pub mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use crate::fanout::{FanConfig, FanResult};
use crate::pgbench::PgbenchResult;
use crate::scenarios::{CatchupResult, CommandsResult, RebuildResult};
use crate::targets::{Ceiling, Herald, Nchan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    Herald,
    Nchan,
    Ceiling,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Herald => "herald",
            Kind::Nchan => "nchan",
            Kind::Ceiling => "ceiling",
        }
    }

    fn parse(s: &str) -> Result<Kind> {
        Ok(match s {
            "herald" => Kind::Herald,
            "nchan" => Kind::Nchan,
            "ceiling" => Kind::Ceiling,
            _ => bail!("--reference {s:?}: expected herald, nchan or ceiling"),
        })
    }
}

/// `herald bench` options.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// A running herald (loopback only), e.g. http://127.0.0.1:8080, or several
    /// instances of one (comma-separated; commands' clients, subscribers and
    /// publishers are spread over them round-robin; catch-up uses the first).
    /// Each must answer to `Host: 127.0.0.1:PORT`: its --listen address, or
    /// --allowed-host 127.0.0.1. Needs --token.
    #[arg(long, env = "HERALD_BENCH_TARGET", conflicts_with = "spawn", value_delimiter = ',')]
    pub target: Vec<String>,
    /// Start a `herald serve` child on a temporary --data and a free port (the default).
    #[arg(long)]
    pub spawn: bool,
    /// An operator token for --target (valid on every instance; its --stream-limit must
    /// admit every subscriber of one instance).
    #[arg(long, env = "HERALD_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The --target servers' process ids (comma-separated), to read their memory
    /// (summed, and per process).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// A PostgreSQL URL for the pgbench scenario (the server herald's instances
    /// use): pgbench inserts 500-byte rows into a scratch table there, with
    /// --clients and --duration. Shown as host:port/db only.
    #[arg(long, env = "HERALD_BENCH_PGBENCH_URL", hide_env_values = true)]
    pub pgbench_url: Option<String>,
    /// fanout, commands, pgbench, catchup, rebuild or all (comma-separated; all
    /// includes pgbench when --pgbench-url is given).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub scenario: Vec<String>,
    /// Subscriber counts for the fan-out.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub subscribers: Vec<usize>,
    /// Fan-out targets: herald, nchan, ceiling.
    #[arg(long, value_delimiter = ',', default_value = "herald,nchan,ceiling")]
    pub reference: Vec<String>,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Commands per second in the fan-out's latency phase.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Publishing connections of the fan-out's throughput runs, one run each:
    /// a handful of agents (1, 4) beside flat out (64). The last is the
    /// figure the summary compares.
    #[arg(long, value_delimiter = ',', default_value = "1,4,64")]
    pub publishers: Vec<usize>,
    /// Messages not yet delivered to every subscriber the throughput phase allows.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Bytes of an event envelope (herald) or message (references).
    #[arg(long, default_value_t = 450)]
    pub payload: usize,
    /// Concurrent clients of the commands scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub clients: Vec<usize>,
    /// Events the catch-up subscriber resumes behind the head.
    #[arg(long, default_value_t = 100_000)]
    pub catchup_events: u64,
    /// Events in the log the projection rebuild replays.
    #[arg(long, default_value_t = 1_000_000)]
    pub rebuild_events: u64,
    /// Which read model the rebuild measures: `deployments` (a log of
    /// deployment events) or `posts` (a log of post events, the feeds read model).
    #[arg(long, default_value = "deployments", value_parser = ["deployments", "posts"])]
    pub rebuild_domain: String,
    /// Keep the rebuild's seeded log in this directory (and reuse it when it is
    /// there), instead of a temporary one.
    #[arg(long)]
    pub rebuild_data: Option<PathBuf>,
    /// The NATS server (JetStream on) of the brokers scenario.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The Redis server of the brokers scenario.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Commands per transport in the brokers scenario.
    #[arg(long, default_value_t = 10_000)]
    pub broker_commands: usize,
    /// Upper bound of messages one fan-out run sends.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_messages: usize,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the latency-against-subscribers plot (SVG) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Internal: serve the ceiling on this address until stdin closes (the bench
    /// runs it as its own process, as it runs herald and nginx).
    #[arg(long, hide = true)]
    pub serve_ceiling: Option<std::net::SocketAddr>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: Machine,
    pub open_files_limit: u64,
    pub fanout: Vec<FanResult>,
    pub fanout_skipped: Vec<String>,
    /// The herald instances the commands and fan-out ran against.
    pub targets: Vec<String>,
    pub commands: Vec<CommandsResult>,
    pub pgbench: Vec<PgbenchResult>,
    pub pgbench_skipped: Option<String>,
    /// pgbench runs that failed (client count: why); the other figures stand.
    pub pgbench_errors: Vec<String>,
    pub catchup: Option<CatchupResult>,
    pub rebuild: Option<RebuildResult>,
    pub brokers: Option<brokers::BrokersResult>,
}

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default(),
            memory: format!("{:.1} GiB", mem_kib as f64 / 1024.0 / 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:08x}",
        (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)) as u32
    )
}

/// Runs the scenarios `args` asks for and prints the figures.
pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    if let Some(addr) = args.serve_ceiling {
        let _ = rlimit::increase_nofile_limit(u64::MAX);
        targets::serve_ceiling(addr).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let scenarios: Vec<String> = args.scenario.iter().map(|s| s.trim().to_owned()).collect();
    let wants = |s: &str| scenarios.iter().any(|x| x == s || x == "all");
    for s in &scenarios {
        if !["all", "fanout", "commands", "pgbench", "catchup", "rebuild", "brokers"].contains(&s.as_str()) {
            bail!("--scenario {s:?}: expected fanout, commands, pgbench, catchup, rebuild, brokers or all");
        }
    }
    if scenarios.iter().any(|s| s == "pgbench") && args.pgbench_url.is_none() {
        bail!("--scenario pgbench needs --pgbench-url postgres://USER@HOST:PORT/DB (the server to insert into)");
    }
    let kinds: Vec<Kind> = args
        .reference
        .iter()
        .map(|s| Kind::parse(s.trim()))
        .collect::<Result<_>>()?;
    let open_files = rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-file limit")?;
    let exe = std::env::current_exe().context("cannot find the herald executable")?;
    let duration = Duration::from_secs_f64(args.duration.max(0.5));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = run_id();
    let mut report = Report {
        date: now_utc(),
        machine: Machine::read(),
        open_files_limit: open_files,
        ..Report::default()
    };
    eprintln!(
        "herald bench {} on {} × {} ({}, Linux {}), open-file limit {}",
        report.date,
        report.machine.cpus,
        report.machine.cpu_model,
        report.machine.memory,
        report.machine.kernel,
        open_files
    );
    // Found before anything runs: a missing binary is said at the start.
    let pgbench = if !wants("pgbench") {
        None
    } else if let Some(url) = &args.pgbench_url {
        match pgbench::find_pgbench() {
            Some(exe) => Some((url.clone(), exe)),
            None => {
                report.pgbench_skipped = Some(
                    "no pgbench on PATH or under /usr/lib/postgresql/*/bin (apt-get install postgresql-client)".into(),
                );
                None
            }
        }
    } else {
        report.pgbench_skipped = Some("no --pgbench-url".into());
        None
    };
    if let Some(why) = &report.pgbench_skipped {
        eprintln!("pgbench: skipped: {why}");
    }
    let max_subs = args.subscribers.iter().copied().max().unwrap_or(0);
    if wants("fanout") && max_subs as u64 + 64 > open_files {
        eprintln!("warning: {max_subs} subscribers need more open files than the limit {open_files}");
    }

    let needs_herald = wants("commands") || wants("catchup") || (wants("fanout") && kinds.contains(&Kind::Herald));
    let mut herald = if !needs_herald {
        None
    } else if !args.target.is_empty() {
        let addrs = targets::parse_targets(&args.target)?;
        let token = args
            .token
            .clone()
            .context("--target needs --token (an operator token)")?;
        let h = Herald::running(addrs, token, args.server_pid.clone())?;
        if h.targets.len() > 1 {
            // Each one answers (Host, token) before minutes are spent on the others.
            for &addr in &h.targets {
                scenarios::head(addr, &h.token)
                    .await
                    .with_context(|| format!("target http://{addr}"))?;
            }
        }
        Some(h)
    } else {
        let h = Herald::spawn(&exe).await?;
        eprintln!(
            "spawned herald serve (pid {}) on {} with data in {}",
            h.pids.first().copied().unwrap_or(0),
            h.first(),
            h.data_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
        );
        Some(h)
    };
    if let Some(h) = &herald {
        report.targets = h.targets.iter().map(|a| format!("http://{a}")).collect();
        eprintln!("herald targets: {}", report.targets.join(", "));
    }

    // The `service` length that makes herald's envelopes `payload` bytes.
    // herald's smallest envelope may already be longer: then the references
    // publish messages of that length too.
    let mut pad = 1;
    let mut payload = args.payload;
    if let Some(h) = &herald {
        let base = scenarios::probe_envelope(h.first(), &h.token, &format!("{run}p00000"), 1).await?;
        pad = (args.payload + 1).saturating_sub(base).max(1);
        payload = base + pad - 1;
        eprintln!(
            "herald envelopes of this bench: {payload} bytes (asked for {})",
            args.payload
        );
    }

    let outcome = async {
        if wants("fanout") {
            for &n in &args.subscribers {
                for &kind in &kinds {
                    eprintln!("fan-out: {} with {n} subscribers", kind.name());
                    let mut cfg = FanConfig {
                        kind,
                        addrs: Vec::new(),
                        token: None,
                        channel: format!("{run}n{n}"),
                        subscribers: n,
                        rate: args.rate,
                        duration,
                        publishers: args.publishers.clone(),
                        window: args.window,
                        payload,
                        herald_pad: pad,
                        run: format!("{run}{}{n:05}", &kind.name()[..1]),
                        max_messages: args.max_messages,
                        pids: Vec::new(),
                    };
                    let result = match kind {
                        Kind::Herald => {
                            let Some(h) = &herald else { continue };
                            cfg.addrs = h.targets.clone();
                            cfg.token = Some(h.token.clone());
                            cfg.pids = h.pids.clone();
                            fanout::run(cfg).await?
                        }
                        Kind::Nchan => {
                            if let Some(why) = Nchan::missing() {
                                eprintln!("  skipped: {why}");
                                report.fanout_skipped.push(format!("nchan: {why}"));
                                continue;
                            }
                            let nchan = Nchan::start(cpus).await?;
                            cfg.addrs = vec![nchan.addr];
                            cfg.pids = nchan.pids();
                            let r = fanout::run(cfg).await;
                            nchan.stop().await;
                            r?
                        }
                        Kind::Ceiling => {
                            let ceiling = Ceiling::start(&exe).await?;
                            cfg.addrs = vec![ceiling.addr];
                            cfg.pids = ceiling.pid.into_iter().collect();
                            let r = fanout::run(cfg).await;
                            ceiling.stop().await;
                            r?
                        }
                    };
                    result.print();
                    report.fanout.push(result);
                    // Let closed connections leave TIME_WAIT / the servers settle.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        if let Some(h) = &herald
            && wants("commands")
        {
            for &c in &args.clients {
                eprintln!(
                    "commands: {c} concurrent clients{} for {:.0} s",
                    over_targets(h.targets.len()),
                    duration.as_secs_f64()
                );
                let r = scenarios::commands(
                    &h.targets,
                    &h.token,
                    &format!("{run}c{c}"),
                    c,
                    duration,
                    usize::MAX,
                    pad,
                )
                .await?;
                eprintln!(
                    "  {} clients: {:.0} commands/s ({} ok, {} errors), latency {}",
                    r.clients, r.per_s, r.ok, r.errors, r.latency
                );
                if r.per_target.len() > 1 {
                    for t in &r.per_target {
                        eprintln!("    {}: {} clients, {} ok, {} errors", t.addr, t.clients, t.ok, t.errors);
                    }
                }
                if let Some(e) = &r.first_error {
                    eprintln!("  first error: {e}");
                }
                report.commands.push(r);
            }
        }
        if let Some((url, exe)) = &pgbench {
            let reference = pgbench::Reference::open(url, exe, &run).await?;
            eprintln!(
                "{} on {} (server {}): fsync={}, synchronous_commit={}; table {}",
                reference.pgbench_version,
                reference.server,
                reference.server_version,
                reference.fsync,
                reference.synchronous_commit,
                reference.table
            );
            for &c in &args.clients {
                match reference.run(c, duration).await {
                    Ok(r) => {
                        eprintln!(
                            "  pgbench INSERT {} B, {} clients: {:.0}/s ({} transactions, {} failed, {} rows, latency avg {})",
                            r.row_bytes,
                            r.clients,
                            r.output.tps,
                            r.output.transactions,
                            r.output.failed,
                            r.rows_inserted,
                            r.output.latency_avg_ms.map_or("-".into(), |ms| format!("{ms:.3} ms"))
                        );
                        report.pgbench.push(r);
                    }
                    Err(e) => {
                        // Said, and the bench fails at the end, but the figures
                        // of the other runs are still printed.
                        eprintln!("  pgbench, {c} clients: failed: {e:#}");
                        report.pgbench_errors.push(format!("{c} clients: {e:#}"));
                    }
                }
            }
            reference.close().await?;
        }
        if let Some(h) = &herald
            && wants("catchup")
        {
            let first = h.first();
            let head = scenarios::head(first, &h.token).await?;
            if head < args.catchup_events + 1 {
                let missing = (args.catchup_events + 1 - head) as usize;
                eprintln!("catch-up: appending {missing} events first (64 clients)");
                let r = scenarios::commands(
                    &[first],
                    &h.token,
                    &format!("{run}f"),
                    64,
                    Duration::from_secs(600),
                    missing,
                    pad,
                )
                .await?;
                if r.errors > 0 {
                    bail!("filling the log failed: {:?}", r.first_error);
                }
            }
            eprintln!(
                "catch-up: one subscriber resuming {} events behind",
                args.catchup_events
            );
            let r = scenarios::catchup(first, &h.token, args.catchup_events).await?;
            eprintln!(
                "  received {} events in {:.3} s ({:.0}/s; first after {:.1} ms; {} gaps, {} duplicates, {:.1} MB)",
                r.received,
                r.seconds,
                r.events_per_s,
                r.first_event_ms,
                r.gaps,
                r.duplicates,
                r.bytes as f64 / 1e6
            );
            report.catchup = Some(r);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    // Stopped, and its data deleted, before the rebuild.
    if let Some(mut h) = herald.take() {
        h.stop().await;
    }
    outcome?;
    if wants("rebuild") {
        let domain = scenarios::RebuildDomain::parse(&args.rebuild_domain)?;
        eprintln!(
            "rebuild ({}): seeding {} events",
            domain.projection(),
            args.rebuild_events
        );
        let r = scenarios::rebuild(&exe, domain, args.rebuild_events, args.rebuild_data.as_deref()).await?;
        eprintln!(
            "  herald projections rebuild: {} events in {:.2} s = {:.0} events/s (median of {} s, after a first run of {:.2} s; {})",
            r.events,
            r.seconds,
            r.events_per_s,
            r.runs.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>().join(", "),
            r.first_seconds,
            r.output
        );
        report.rebuild = Some(r);
    }
    // Only when asked for (not in `all`): it needs a NATS and a Redis server.
    if scenarios.iter().any(|s| s == "brokers") {
        eprintln!(
            "brokers: {} commands each over HTTP (1 and 64 clients), NATS JetStream ({}) and a Redis stream ({}); then the relay's catch-up",
            args.broker_commands, args.nats_url, args.redis_url
        );
        let r = brokers::run(
            &exe,
            brokers::BrokersConfig {
                nats_url: args.nats_url.clone(),
                redis_url: args.redis_url.clone(),
                commands: args.broker_commands.max(1),
                // Envelopes of about --payload bytes (~330 without the pad).
                pad: if pad > 1 {
                    pad
                } else {
                    args.payload.saturating_sub(330).max(1)
                },
                run: run.clone(),
            },
        )
        .await?;
        report.brokers = Some(r);
    }

    print_summary(&report);
    if let Some(path) = &args.svg {
        plot::write_svg(path, &report)?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if !report.pgbench_errors.is_empty() {
        eprintln!("pgbench failed: {}", report.pgbench_errors.join("; "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// " over N targets" when there are several.
fn over_targets(n: usize) -> String {
    if n > 1 {
        format!(" over {n} targets")
    } else {
        String::new()
    }
}

fn print_summary(report: &Report) {
    print_commands_summary(report);
    print_fanout_summary(report);
}

/// herald's durable commands/s beside pgbench's INSERTs, per client count.
fn print_commands_summary(report: &Report) {
    if report.commands.is_empty() && report.pgbench.is_empty() {
        return;
    }
    eprintln!("\ncommands summary (durable commands/s; pgbench: one INSERT of a 500 B row per transaction)");
    if let Some(p) = report.pgbench.first() {
        eprintln!(
            "  PostgreSQL {} on {}: fsync={}, synchronous_commit={}",
            p.server_version, p.server, p.fsync, p.synchronous_commit
        );
    }
    let mut counts: Vec<usize> = report
        .commands
        .iter()
        .map(|r| r.clients)
        .chain(report.pgbench.iter().map(|p| p.clients))
        .collect();
    counts.sort_unstable();
    counts.dedup();
    for n in counts {
        let herald = report.commands.iter().find(|r| r.clients == n);
        let pg = report.pgbench.iter().find(|p| p.clients == n);
        if let Some(h) = herald {
            eprintln!(
                "  herald, {n} clients{}: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
                over_targets(h.targets.len()),
                h.per_s,
                h.latency.p50_ms,
                h.latency.p99_ms
            );
        }
        if let Some(p) = pg {
            eprintln!("  pgbench INSERT {} B, {n} clients: {:.0}/s", p.row_bytes, p.output.tps);
        }
        if let (Some(h), Some(p)) = (herald, pg) {
            eprintln!(
                "  {n} clients: herald / pgbench = {:.2}×",
                h.per_s / p.output.tps.max(f64::MIN_POSITIVE)
            );
        }
    }
}

fn print_fanout_summary(report: &Report) {
    if report.fanout.is_empty() {
        return;
    }
    eprintln!("\nfan-out summary (deliveries/s in the throughput phase; latency at the fixed rate)");
    eprintln!(
        "{:>8} {:>8} {:>14} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "target", "subs", "deliveries/s", "p50 ms", "p99 ms", "max ms", "B/sub idle", "missing"
    );
    for r in &report.fanout {
        eprintln!(
            "{:>8} {:>8} {:>14.0} {:>10.3} {:>10.3} {:>10.3} {:>12} {:>12}",
            r.target,
            r.subscribers,
            r.deliveries_per_s,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.rss_per_subscriber_bytes.map_or("-".into(), |b| format!("{b:.0}")),
            r.missing
        );
    }
    for r in report.fanout.iter().filter(|r| r.per_target.len() > 1) {
        let each: Vec<String> = r
            .per_target
            .iter()
            .map(|t| {
                format!(
                    "{} {} ({} connected, missing {})",
                    t.addr, t.subscribers, t.connected, t.missing
                )
            })
            .collect();
        eprintln!(
            "  {} × {} over {} targets: {}",
            r.target,
            r.subscribers,
            r.per_target.len(),
            each.join("; ")
        );
    }
    let find = |t: &str, n: usize| report.fanout.iter().find(|r| r.target == t && r.subscribers == n);
    let mut counts: Vec<usize> = report.fanout.iter().map(|r| r.subscribers).collect();
    counts.dedup();
    for n in counts {
        if let Some(h) = find("herald", n) {
            if let Some(x) = find("nchan", n) {
                eprintln!(
                    "  {n} subscribers: herald / nchan = {:.2}×",
                    h.deliveries_per_s / x.deliveries_per_s.max(1.0)
                );
            }
            if let Some(c) = find("ceiling", n) {
                // Each publisher count against the ceiling's at the same count.
                for (hr, cr) in h.sweep.iter().zip(&c.sweep) {
                    eprintln!(
                        "  {n} subscribers, {} publishers: herald / ceiling = {:.0} % ({:.0} / {:.0} deliveries/s)",
                        hr.publishers,
                        100.0 * hr.deliveries_per_s / cr.deliveries_per_s.max(1.0),
                        hr.deliveries_per_s,
                        cr.deliveries_per_s
                    );
                }
            }
        }
    }
}
