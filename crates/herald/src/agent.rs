//! `herald agent simulate`: a stand-in for a deploy agent. It runs made-up
//! deployments through the path a real agent's commands take (HTTP, or a
//! broker `herald serve` consumes from), so that a dashboard moves by itself
//! and a broker set-up can be tried end to end without a real rollout.
//!
//! The scenario (what one deployment says, given an RNG) and the command JSON
//! are pure and tested below; the transports and the schedule are the rest.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Run made-up deployments through herald (start, progress every interval, then success or
    /// failure), so that a dashboard moves by itself.
    Simulate(Box<SimulateArgs>),
}

#[derive(Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    transport: TransportArgs,
    /// The credential a broker message is sent as: NAME of `herald serve --nats-credential NAME=TOKEN`.
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "target",
        conflicts_with = "target"
    )]
    credential: Option<String>,
    /// The first token of the broker's subjects and keys, as given to `herald serve`.
    #[arg(long = "broker-prefix", env = "HERALD_BROKER_PREFIX", default_value = herald_server::brokers::DEFAULT_PREFIX)]
    broker_prefix: String,
    /// The API token (operator or admin) the commands to --target are sent with.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Deployments running at once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    deployments: u32,
    /// Progress reports per deployment, the percent rising to 100 (a failing one stops short).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=100))]
    steps: u8,
    /// Milliseconds between one deployment's commands.
    #[arg(long = "interval-ms", default_value_t = 1000)]
    interval_ms: u64,
    /// The share of deployments that fail, from 0 to 1.
    #[arg(long = "fail-ratio", default_value_t = 0.2, value_parser = parse_ratio)]
    fail_ratio: f64,
    /// Seed of the scenarios (services, versions, messages, which fail and when), to tell the
    /// same story again; the ids are fresh every run, so herald takes them as new deployments.
    #[arg(long)]
    seed: Option<u64>,
    /// Start a new deployment whenever one ends, until Ctrl-C (a command that is not accepted
    /// stops the new starts).
    #[arg(long)]
    repeat: bool,
}

/// Where the commands go: exactly one of these.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct TransportArgs {
    /// Publish to NATS JetStream at this URL, on <prefix>.commands.<credential>.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// XADD to the Redis stream <prefix>:commands at this URL.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// POST /api/commands to herald at this URL (http://host:port).
    #[arg(long, value_name = "URL")]
    target: Option<String>,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?} is not a ratio from 0 to 1 (0.2 fails one deployment in five)"
        )),
    }
}

pub async fn run(command: AgentCommand) -> Result<ExitCode> {
    match command {
        AgentCommand::Simulate(args) => simulate(*args).await,
    }
}

// ---------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------

const SERVICES: &[&str] = &[
    "user-service",
    "billing-api",
    "search-indexer",
    "checkout-web",
    "notifications",
    "payments-gateway",
    "inventory-sync",
    "auth-service",
];

const ENVIRONMENTS: &[&str] = &[
    "staging",
    "prod",
    "prod-eu-west-1",
    "prod-us-east-1",
    "eu-west-1",
    "us-east-1",
];

/// A rollout's phases in order: what a progress report in the phase says, and
/// why a deployment that fails in it fails (`{service}` and `{version}` filled
/// in). A scenario with fewer steps skips phases; the last one always ends it.
const ROLLOUT: &[(&str, &[&str])] = &[
    (
        "pulling image registry.internal/{service}:{version}",
        &[
            "image pull failed: manifest for registry.internal/{service}:{version} not found",
            "image pull timed out after 120 s (the registry answered 503)",
        ],
    ),
    (
        "running database migrations",
        &[
            "migration timed out after 300 s waiting for a table lock",
            "migration failed: column \"tenant_id\" already exists",
        ],
    ),
    (
        "starting new pods: 3/10 ready",
        &[
            "health check failed on 3/10 pods",
            "2 pods in CrashLoopBackOff: OOMKilled at the 512 MiB limit",
        ],
    ),
    (
        "canary at 5%",
        &[
            "error rate above 2% during canary (4.7% over 5 min)",
            "p99 latency 1.8 s during canary, the SLO is 500 ms",
        ],
    ),
    (
        "canary healthy after 10 min: error rate 0.1%, p99 210 ms",
        &["canary analysis failed: 5xx rate 3.2% against a 0.4% baseline"],
    ),
    (
        "shifting traffic 25%",
        &["readiness probe failing on 4/10 pods after the traffic shift"],
    ),
    (
        "shifting traffic 50%",
        &["error rate above 2% at 50% traffic; rolled back to the previous version"],
    ),
    (
        "health checks passing on 10/10 pods",
        &["health check failed on 1/10 pods: connection refused on :8080"],
    ),
    (
        "shifting traffic 100%",
        &["timeouts from {service}-db at 100% traffic; rolled back"],
    ),
    ("draining old pods", &["old pods did not drain within 120 s"]),
    (
        "rollout complete, smoke tests passed",
        &["smoke test failed: GET /healthz answered 503"],
    ),
];

/// One command of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Start,
    Progress { percent: u8, message: String },
    Succeed,
    Fail { reason: String },
}

/// What one made-up deployment says: what it rolls out where, and its
/// commands in order (a start, progress reports, then a success or a failure).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scenario {
    service: &'static str,
    version: String,
    environment: &'static str,
    steps: Vec<Step>,
}

fn pick<'a>(rng: &mut impl Rng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

impl Scenario {
    /// `steps` progress reports (1 to 100) with percents rising to 100, then a
    /// success; or, with probability `fail_ratio`, fewer reports (as far as it
    /// got) and a failure whose reason fits the phase it stopped in.
    fn random(rng: &mut impl Rng, steps: u8, fail_ratio: f64) -> Scenario {
        let steps = usize::from(steps.clamp(1, 100));
        let service = pick(rng, SERVICES);
        let version = format!(
            "{}.{}.{}",
            rng.random_range(1..5),
            rng.random_range(0..30),
            rng.random_range(0..20)
        );
        let fill = |s: &str| s.replace("{service}", service).replace("{version}", &version);
        // Evenly spread with some jitter, as real progress is uneven; strictly
        // rising (room left for the reports after it), the last one 100.
        let width = 100.0 / steps as f64;
        let mut percents = Vec::with_capacity(steps);
        for i in 1..steps {
            let jittered = (i as f64 + rng.random_range(-0.3..0.3)) * width;
            let prev = percents.last().copied().unwrap_or(0);
            percents.push((jittered.round() as usize).clamp(prev + 1, 100 - (steps - i)));
        }
        percents.push(100);
        // The phase of the report `i` (0-based): spread over the rollout, the
        // last report in its last phase.
        let phase = |i: usize| {
            if steps == 1 {
                ROLLOUT.len() - 1
            } else {
                i * (ROLLOUT.len() - 1) / (steps - 1)
            }
        };
        let failed_after = rng.random_bool(fail_ratio).then(|| rng.random_range(0..steps));
        let reports = failed_after.unwrap_or(steps);
        let mut out = vec![Step::Start];
        out.extend(percents.iter().take(reports).enumerate().map(|(i, &p)| Step::Progress {
            percent: u8::try_from(p).unwrap_or(100),
            message: fill(ROLLOUT[phase(i)].0),
        }));
        out.push(match failed_after {
            Some(at) => Step::Fail {
                reason: fill(pick(rng, ROLLOUT[phase(at)].1)),
            },
            None => Step::Succeed,
        });
        Scenario {
            service,
            version,
            environment: pick(rng, ENVIRONMENTS),
            steps: out,
        }
    }

    /// The body of `POST /api/commands` (and of a broker message) for `step`.
    fn command(&self, step: &Step, aggregate_id: &str, command_id: &str) -> Value {
        let (command_type, data) = match step {
            Step::Start => (
                "StartDeployment",
                json!({ "service": self.service, "version": self.version, "environment": self.environment }),
            ),
            Step::Progress { percent, message } => (
                "ReportDeploymentProgress",
                json!({ "percent": percent, "message": message }),
            ),
            Step::Succeed => ("SucceedDeployment", json!({})),
            Step::Fail { reason } => ("FailDeployment", json!({ "reason": reason })),
        };
        json!({ "type": command_type, "aggregate_id": aggregate_id, "command_id": command_id, "data": data })
    }

    /// The line printed once `step` was accepted.
    fn line(&self, step: &Step, aggregate_id: &str) -> String {
        let what = match step {
            Step::Start => "started".to_owned(),
            Step::Progress { percent, message } => format!("{percent}% {message}"),
            Step::Succeed => "succeeded".to_owned(),
            Step::Fail { reason } => format!("failed: {reason}"),
        };
        let short: String = aggregate_id.chars().take(8).collect();
        format!(
            "deployment {short}… {} {} → {}: {what}",
            self.service, self.version, self.environment
        )
    }

    fn outcome(&self) -> Outcome {
        match self.steps.last() {
            Some(Step::Fail { .. }) => Outcome::Failed,
            _ => Outcome::Succeeded,
        }
    }
}

// ---------------------------------------------------------------------------
// Transports
// ---------------------------------------------------------------------------

/// How many times a command answered 5xx (or not answered) is sent again.
const RETRIES: u32 = 3;
/// How many times a command answered 429 is sent again.
const RATE_LIMIT_RETRIES: u32 = 10;
/// How long connecting, and each request, may take.
const TIMEOUT: Duration = Duration::from_secs(10);

enum Transport {
    Http {
        client: reqwest::Client,
        url: String,
        /// A secret: never printed.
        token: String,
    },
    Nats {
        js: async_nats::jetstream::Context,
        subject: String,
        prefix: String,
    },
    Redis {
        connection: redis::aio::MultiplexedConnection,
        key: String,
        credential: String,
    },
}

/// What a publish that found no stream means (`cause`: how that showed), and how to fix it.
fn no_stream(prefix: &str, subject: &str, cause: impl std::fmt::Display) -> anyhow::Error {
    // herald's stream names are the prefix upper-cased, dots made `_`.
    let stream = prefix.to_ascii_uppercase().replace('.', "_");
    anyhow::anyhow!(
        "no JetStream stream takes {subject} ({cause}): `herald serve --nats … --broker-prefix {prefix}` must be \
         running (it creates the stream {stream}_COMMANDS)"
    )
}

/// A credential name is a subject's last token (as `--nats-credential` checks it).
fn check_credential(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        bail!("--credential {name:?}: 1 to 64 letters, digits, '-' or '_'");
    }
    Ok(())
}

impl Transport {
    /// Connects (and, for NATS, checks that herald's stream takes the
    /// subject, so a wrong prefix is one clear error, not one per command).
    async fn connect(args: &SimulateArgs) -> Result<Transport> {
        let prefix = &args.broker_prefix;
        let credential = || -> Result<String> {
            let name = args
                .credential
                .clone()
                .context("--credential NAME is required with a broker")?;
            check_credential(&name)?;
            herald_server::brokers::nats::check_prefix(prefix).map_err(|e| anyhow::anyhow!(e))?;
            Ok(name)
        };
        let t = &args.transport;
        if let Some(target) = &t.target {
            let Some(token) = args.token.clone().filter(|t| !t.trim().is_empty()) else {
                bail!("--target needs --token TOKEN (or HERALD_TOKEN): an operator's API token");
            };
            if !target.starts_with("http://") {
                bail!("--target {target:?}: an http://host:port URL (this client speaks plain HTTP)");
            }
            let client = reqwest::Client::builder()
                .connect_timeout(TIMEOUT)
                .timeout(TIMEOUT)
                .build()
                .context("cannot build the HTTP client")?;
            let url = format!("{}/api/commands", target.trim_end_matches('/'));
            return Ok(Transport::Http {
                client,
                url,
                token: token.trim().to_owned(),
            });
        }
        if let Some(url) = &t.nats {
            let credential = credential()?;
            let client = async_nats::ConnectOptions::new()
                .name("herald agent simulate")
                .connection_timeout(TIMEOUT)
                .connect(url.as_str())
                .await
                .context("cannot connect to NATS (--nats)")?;
            let js = async_nats::jetstream::new(client);
            let subject = format!("{prefix}.commands.{credential}");
            if let Err(e) = js.stream_by_subject(subject.as_str()).await {
                return Err(no_stream(prefix, &subject, e));
            }
            return Ok(Transport::Nats {
                js,
                subject,
                prefix: prefix.clone(),
            });
        }
        let Some(url) = &t.redis else {
            bail!("one of --nats URL, --redis URL or --target URL is required");
        };
        let credential = credential()?;
        let client = redis::Client::open(url.as_str()).context("--redis: not a Redis URL")?;
        let connection = tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .context("cannot connect to Redis (--redis): timed out")?
            .context("cannot connect to Redis (--redis)")?;
        Ok(Transport::Redis {
            connection,
            key: format!("{prefix}:commands"),
            credential,
        })
    }

    /// Sends one command: `Ok` once the transport has accepted it (herald
    /// answered 2xx, JetStream stored it, Redis appended it).
    async fn send(&self, command: &Value) -> Result<()> {
        match self {
            Transport::Http { client, url, token } => {
                let command_type = command["type"].as_str().unwrap_or("command");
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let wait = match client.post(url).bearer_auth(token).json(command).send().await {
                        Ok(r) if r.status().is_success() => return Ok(()),
                        Ok(r)
                            if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                                && attempt <= RATE_LIMIT_RETRIES =>
                        {
                            let seconds = r
                                .headers()
                                .get(reqwest::header::RETRY_AFTER)
                                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                                .unwrap_or(1);
                            Duration::from_secs(seconds.clamp(1, 60))
                        }
                        // The same command_id again: herald decides it once.
                        Ok(r) if r.status().is_server_error() && attempt <= RETRIES => Duration::from_secs(1),
                        Ok(r) => {
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            bail!("herald answered {status}: {}", body.trim());
                        }
                        Err(e) if attempt <= RETRIES => {
                            let _ = writeln!(std::io::stderr(), "{command_type}: {e}; sending it again");
                            Duration::from_secs(1)
                        }
                        Err(e) => return Err(anyhow::Error::new(e).context(format!("POST {url}"))),
                    };
                    tokio::time::sleep(wait).await;
                }
            }
            Transport::Nats { js, subject, prefix } => {
                use async_nats::jetstream::context::PublishErrorKind;
                let payload = serde_json::to_vec(command)?;
                let acked = match js.publish(subject.clone(), payload.into()).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match acked {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == PublishErrorKind::StreamNotFound => Err(no_stream(prefix, subject, e)),
                    Err(e) => Err(anyhow::Error::new(e).context(format!("JetStream publish to {subject}"))),
                }
            }
            Transport::Redis {
                connection,
                key,
                credential,
            } => {
                use redis::AsyncCommands;
                let json = command.to_string();
                let mut connection = connection.clone();
                let _: String = connection
                    .xadd(
                        key,
                        "*",
                        &[("credential", credential.as_str()), ("command", json.as_str())],
                    )
                    .await
                    .with_context(|| format!("XADD {key}"))?;
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The schedule
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    /// A command was not accepted: the rest of the deployment was not sent.
    BrokenOff,
}

/// Commands accepted and refused so far, by every deployment (those
/// interrupted by Ctrl-C too).
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    errors: AtomicU64,
}

/// Sends a scenario's commands `interval` apart, after `delay`, under a fresh id.
async fn deployment(
    transport: Arc<Transport>,
    tally: Arc<Tally>,
    scenario: Scenario,
    delay: Duration,
    interval: Duration,
) -> Outcome {
    tokio::time::sleep(delay).await;
    let id = uuid::Uuid::new_v4().to_string();
    for (n, step) in scenario.steps.iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(interval).await;
        }
        // A fresh id per command; `send`'s retries reuse it.
        let command = scenario.command(step, &id, &uuid::Uuid::new_v4().to_string());
        match transport.send(&command).await {
            Ok(()) => {
                tally.sent.fetch_add(1, Ordering::Relaxed);
                let _ = writeln!(std::io::stdout(), "{}", scenario.line(step, &id));
            }
            Err(e) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                let _ = writeln!(
                    std::io::stderr(),
                    "deployment {id}: {} was not accepted: {e:#}",
                    command["type"].as_str().unwrap_or("a command")
                );
                return Outcome::BrokenOff;
            }
        }
    }
    scenario.outcome()
}

/// Resolves on Ctrl-C; never, if the signal cannot be listened for.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

async fn simulate(args: SimulateArgs) -> Result<ExitCode> {
    let transport = Arc::new(Transport::connect(&args).await?);
    let mut rng = match args.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    };
    let interval = Duration::from_millis(args.interval_ms);
    let tally = Arc::new(Tally::default());
    let mut running = tokio::task::JoinSet::new();
    for i in 0..args.deployments {
        // Spread over one interval, so they do not all speak at once.
        let delay = interval * i / args.deployments;
        let scenario = Scenario::random(&mut rng, args.steps, args.fail_ratio);
        running.spawn(deployment(transport.clone(), tally.clone(), scenario, delay, interval));
    }
    let (mut started, mut succeeded, mut failed, mut broken, mut interrupted) =
        (u64::from(args.deployments), 0, 0, 0, 0);
    let stop = ctrl_c();
    tokio::pin!(stop);
    loop {
        let outcome = tokio::select! {
            _ = &mut stop => {
                interrupted += running.len() as u64;
                running.shutdown().await;
                break;
            }
            joined = running.join_next() => match joined {
                None => break,
                Some(Ok(outcome)) => outcome,
                Some(Err(e)) => {
                    let _ = writeln!(std::io::stderr(), "a deployment's task stopped: {e}");
                    Outcome::BrokenOff
                }
            },
        };
        match outcome {
            Outcome::Succeeded => succeeded += 1,
            Outcome::Failed => failed += 1,
            Outcome::BrokenOff => broken += 1,
        }
        if args.repeat && broken == 0 {
            let scenario = Scenario::random(&mut rng, args.steps, args.fail_ratio);
            running.spawn(deployment(
                transport.clone(),
                tally.clone(),
                scenario,
                Duration::ZERO,
                interval,
            ));
            started += 1;
        }
    }
    let (sent, errors) = (tally.sent.load(Ordering::Relaxed), tally.errors.load(Ordering::Relaxed));
    let mut summary = format!(
        "{}: {succeeded} succeeded, {failed} failed",
        count(started, "deployment")
    );
    if broken > 0 {
        summary.push_str(&format!(", {broken} broken off by an error"));
    }
    if interrupted > 0 {
        summary.push_str(&format!(", {interrupted} interrupted"));
    }
    let _ = writeln!(
        std::io::stdout(),
        "{summary}; {} sent, {}",
        count(sent, "command"),
        count(errors, "error")
    );
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use herald_core::aggregate::Aggregate;
    use herald_server::domains::deployments::aggregate::Deployment;

    fn scenarios(seed: u64, n: usize, steps: u8, fail_ratio: f64) -> Vec<Scenario> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| Scenario::random(&mut rng, steps, fail_ratio)).collect()
    }

    fn percents(s: &Scenario) -> Vec<u8> {
        s.steps
            .iter()
            .filter_map(|st| match st {
                Step::Progress { percent, .. } => Some(*percent),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_scenario_starts_reports_rising_percents_and_ends_with_one_verdict() {
        for steps in [1, 2, 3, 8, 11, 30, 100] {
            for s in scenarios(u64::from(steps), 300, steps, 0.2) {
                assert_eq!(s.steps.first(), Some(&Step::Start), "{s:?}");
                let verdicts = s
                    .steps
                    .iter()
                    .filter(|st| matches!(st, Step::Succeed | Step::Fail { .. }))
                    .count();
                assert_eq!(verdicts, 1, "{s:?}");
                assert!(matches!(s.steps.last(), Some(Step::Succeed | Step::Fail { .. })));
                assert_eq!(s.steps.iter().filter(|st| **st == Step::Start).count(), 1);
                let p = percents(&s);
                assert!(p.windows(2).all(|w| w[0] < w[1]), "strictly rising: {p:?}");
                assert!(p.iter().all(|&x| (1..=100).contains(&x)), "{p:?}");
                match s.outcome() {
                    Outcome::Succeeded => {
                        assert_eq!(p.len(), usize::from(steps));
                        assert_eq!(p.last(), Some(&100));
                    }
                    _ => assert!(p.len() < usize::from(steps), "a failure stops short: {p:?}"),
                }
                for st in &s.steps {
                    let text = match st {
                        Step::Progress { message, .. } => message,
                        Step::Fail { reason } => reason,
                        _ => continue,
                    };
                    assert!(!text.trim().is_empty() && !text.contains('{'), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn about_the_fail_ratio_fails_and_the_seed_repeats_the_story() {
        let failed = |ratio| {
            scenarios(42, 1000, 8, ratio)
                .iter()
                .filter(|s| s.outcome() == Outcome::Failed)
                .count()
        };
        let fifth = failed(0.2);
        assert!((150..=250).contains(&fifth), "{fifth} of 1000 failed");
        assert_eq!(failed(0.0), 0);
        assert_eq!(failed(1.0), 1000);
        assert_eq!(scenarios(7, 20, 8, 0.2), scenarios(7, 20, 8, 0.2));
        assert_ne!(scenarios(7, 20, 8, 0.2), scenarios(8, 20, 8, 0.2));
    }

    #[test]
    fn every_command_is_one_the_deployment_aggregate_accepts() {
        let id = uuid::Uuid::new_v4().to_string();
        assert!(herald_core::names::AggregateId::parse(&id).is_ok());
        for s in scenarios(3, 100, 8, 0.5) {
            for step in &s.steps {
                let body = s.command(step, &id, "c-1");
                assert_eq!(body["aggregate_id"], id.as_str());
                assert_eq!(body["command_id"], "c-1");
                let command_type = body["type"].as_str().expect("type");
                let parsed = Deployment::parse_command(command_type, body["data"].clone());
                assert!(matches!(parsed, Some(Ok(_))), "{body}: {parsed:?}");
            }
        }
        let s = &scenarios(3, 1, 8, 0.0)[0];
        let start = s.command(&Step::Start, &id, "c-1");
        assert_eq!(start["type"], "StartDeployment");
        assert_eq!(start["data"]["service"], s.service);
        assert_eq!(start["data"]["version"], s.version.as_str());
        assert_eq!(start["data"]["environment"], s.environment);
        assert_eq!(s.command(&Step::Succeed, &id, "c-2")["data"], json!({}));
        let line = s.line(
            &Step::Progress {
                percent: 40,
                message: "canary at 5%".into(),
            },
            "7f3a0000-aaaa",
        );
        assert_eq!(
            line,
            format!(
                "deployment 7f3a0000… {} {} → {}: 40% canary at 5%",
                s.service, s.version, s.environment
            )
        );
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    #[test]
    fn exactly_one_transport_and_a_credential_for_a_broker() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["simulate"], args].concat()).map(|c| c.args);
        assert!(parse(&[]).is_err());
        assert!(parse(&["--nats", "nats://x", "--target", "http://y", "--credential", "a"]).is_err());
        assert!(parse(&["--nats", "nats://x"]).is_err(), "a broker needs --credential");
        assert!(parse(&["--target", "http://y", "--credential", "a"]).is_err());
        assert!(parse(&["--target", "http://y", "--fail-ratio", "1.5"]).is_err());
        assert!(parse(&["--target", "http://y", "--steps", "0"]).is_err());
        let args = parse(&["--redis", "redis://x", "--credential", "a"]).expect("redis");
        assert_eq!((args.deployments, args.steps, args.interval_ms), (3, 8, 1000));
        assert!((args.fail_ratio - 0.2).abs() < 1e-9 && !args.repeat && args.seed.is_none());
    }
}
