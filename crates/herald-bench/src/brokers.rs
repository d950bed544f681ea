//! `--scenario brokers`: durable commands through NATS JetStream and through
//! a Redis stream beside the same commands over HTTP (one herald, same run),
//! and the event relay's rate to NATS.
//!
//! Each broker figure is `N` commands, all sent first (pipelined: the agents
//! are not what is measured), divided by the time from the first send until
//! the log holds all of them. The relay's figure is a catch-up: herald
//! restarted with its relay checkpoint removed and a new prefix, so that it
//! publishes the whole log to a fresh stream; events over the time until the
//! stream holds them all.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::fanout::herald_command;
use crate::scenarios;
use crate::targets::Herald;

pub struct BrokersConfig {
    pub nats_url: String,
    pub redis_url: String,
    /// Commands per transport.
    pub commands: usize,
    pub pad: usize,
    pub run: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokersResult {
    pub commands: usize,
    /// HTTP, one client (the brokers' consumers decide one message at a time).
    pub http_1_per_s: f64,
    /// HTTP, 64 clients.
    pub http_64_per_s: f64,
    pub nats_per_s: f64,
    pub redis_per_s: f64,
    /// Events the relay published in its catch-up.
    pub relay_events: u64,
    pub relay_per_s: f64,
}

/// The log's head, polled until it reaches `target` (for `limit` at most).
async fn wait_head(addr: SocketAddr, token: &str, target: u64, limit: Duration) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let head = scenarios::head(addr, token).await?;
        if head >= target {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("the log reached {head} of {target} events in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn run(exe: &Path, cfg: BrokersConfig) -> Result<BrokersResult> {
    let prefix = format!("bench{}", cfg.run);
    let serve_args = |prefix: &str, token: &str| {
        vec![
            "--nats".to_owned(),
            cfg.nats_url.clone(),
            "--redis".to_owned(),
            cfg.redis_url.clone(),
            "--nats-credential".to_owned(),
            format!("bench={token}"),
            "--broker-prefix".to_owned(),
            prefix.to_owned(),
        ]
    };
    let nats = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(cfg.nats_url.as_str())
        .await
        .with_context(|| format!("NATS at {}", cfg.nats_url))?;
    let js = async_nats::jetstream::new(nats);
    let mut redis = redis::Client::open(cfg.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("Redis at {}", cfg.redis_url))?;
    let mut herald = Herald::spawn_with(exe, |token| serve_args(&prefix, token)).await?;
    let outcome = async {
        let addr = herald.first();
        let token = herald.token.clone();
        let commands_stream = format!("{}_COMMANDS", prefix.to_uppercase());
        let deadline = Instant::now() + Duration::from_secs(30);
        while js.get_stream(&commands_stream).await.is_err() {
            if Instant::now() > deadline {
                bail!("herald never created the stream {commands_stream}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let n = cfg.commands;
        let long = Duration::from_secs(600);

        let mut per_s = Vec::new();
        for clients in [1, 64] {
            let r = scenarios::commands(
                &[addr],
                &token,
                &format!("{}h{clients}", cfg.run),
                clients,
                long,
                n,
                cfg.pad,
            )
            .await?;
            if r.errors > 0 {
                bail!("HTTP commands failed: {:?}", r.first_error);
            }
            eprintln!("  HTTP, {clients} clients: {:.0} commands/s", r.per_s);
            per_s.push(r.per_s);
        }

        let head = scenarios::head(addr, &token).await?;
        let started = Instant::now();
        let subject = format!("{prefix}.commands.bench");
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let mut acks = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let body = herald_command(&format!("{}n", cfg.run), i, cfg.pad);
                acks.push(js.publish(subject.clone(), body.into()).await?);
            }
            for ack in acks {
                ack.await?;
            }
        }
        let done = wait_head(addr, &token, head + n as u64, long).await?;
        let nats_per_s = n as f64 / done.duration_since(started).as_secs_f64();
        eprintln!("  NATS JetStream: {nats_per_s:.0} commands/s");

        let head = head + n as u64;
        let key = format!("{prefix}:commands");
        let started = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                let body = herald_command(&format!("{}r", cfg.run), i, cfg.pad);
                pipe.xadd(&key, "*", &[("credential", "bench"), ("command", body.as_str())])
                    .ignore();
            }
            let _: () = pipe.query_async(&mut redis).await?;
        }
        let done = wait_head(addr, &token, head + n as u64, long).await?;
        let redis_per_s = n as f64 / done.duration_since(started).as_secs_f64();
        eprintln!("  Redis stream: {redis_per_s:.0} commands/s");

        // The relay's catch-up: its checkpoint removed, a fresh prefix.
        let head = scenarios::head(addr, &token).await?;
        let relay_prefix = format!("{prefix}relay");
        let data = herald.data_dir.clone().context("a spawned herald")?;
        herald.stop().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(data.join("readmodels").join(format!("nats_relay.db{suffix}")));
        }
        herald.restart_with(exe, &serve_args(&relay_prefix, &token)).await?;
        let events_stream = format!("{}_EVENTS", relay_prefix.to_uppercase());
        let deadline = Instant::now() + long;
        // From the first message stored (not the process start).
        let mut first: Option<(Instant, u64)> = None;
        let relayed = loop {
            let messages = match js.get_stream(&events_stream).await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
                Err(_) => 0,
            };
            if messages > 0 && first.is_none() {
                first = Some((Instant::now(), messages));
            }
            if messages >= head {
                break Instant::now();
            }
            if Instant::now() > deadline {
                bail!("the relay published {messages} of {head} events");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let (since, already) = first.unwrap_or((relayed, 0));
        let relay_per_s = (head - already) as f64 / relayed.duration_since(since).as_secs_f64().max(1e-3);
        eprintln!("  relay to NATS: {head} events in catch-up, {relay_per_s:.0} events/s");
        let _ = redis::cmd("DEL")
            .arg(&key)
            .arg(format!("{prefix}:dead"))
            .query_async::<()>(&mut redis)
            .await;
        for p in [&prefix, &relay_prefix] {
            for what in ["COMMANDS", "DEAD", "EVENTS"] {
                let _ = js.delete_stream(format!("{}_{what}", p.to_uppercase())).await;
            }
        }
        Ok(BrokersResult {
            commands: n,
            http_1_per_s: per_s[0],
            http_64_per_s: per_s[1],
            nats_per_s,
            redis_per_s,
            relay_events: head,
            relay_per_s,
        })
    }
    .await;
    herald.stop().await;
    outcome
}
