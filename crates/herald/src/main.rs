//! The `herald` command line: parses flags, opens the store, calls into the
//! library. Errors become a message on stderr and a non-zero exit code.

mod agent;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use herald_core::accounts::AccountStore;
use herald_core::auth::{CredentialStore, Role};
use herald_core::envelope::Actor;
use herald_core::store::{EventStore, Filter};
use herald_server::{AppState, ServerConfig};
use herald_store::accounts::SqliteAccounts;
use herald_store::credentials::SqliteCredentials;
use herald_store::projection::RebuildSource;
use herald_store::sqlite::SqliteStore;

/// mimalloc: commands and rebuilds allocate and free envelopes across threads,
/// where the system allocator spent ~15–35 % of the CPU (docs/BENCHMARKS.md).
/// The `system-allocator` feature leaves it out, for heap profilers that
/// watch `malloc` (heaptrack, valgrind's massif).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "herald", version, about = "Event-sourced operations with live screens")]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// Directory of the embedded store (used unless --database-url is given).
    #[arg(long, global = true, env = "HERALD_DATA", default_value = "./data")]
    data: PathBuf,
    /// PostgreSQL URL (postgres://…) instead of the embedded store: the log, accounts and read
    /// models, shared by every herald instance on it (bench does not take it).
    #[arg(long, global = true, env = "HERALD_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and live streams.
    Serve(Box<ServeArgs>),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Invite people to register with a passkey.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Check every stored event (canonical JSON, hash chain, every column) and the append-only
    /// triggers, on a read-only connection; exit 1 naming the first bad position.
    Verify {
        /// An anchor recorded earlier (GET /api/audit/head): the event at POSITION must still
        /// exist with HASH, so a removed tail is caught. Events after it are fine.
        #[arg(long, value_name = "POSITION:HASH")]
        expect: Option<herald_core::audit::Expect>,
    },
    /// Write every event envelope as NDJSON (to stdout, or --output).
    Export {
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Load what `herald export` wrote into an empty store (--data, or --database-url), checking
    /// every line's position, canonical text and hash chain; all or nothing.
    Import {
        /// The NDJSON file; `-` (the default) reads stdin.
        #[arg(value_name = "FILE|-", default_value = "-")]
        file: PathBuf,
    },
    /// Read models.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Load generator: fan-out, commands, catch-up and rebuild figures (docs/BENCHMARKS.md).
    Bench(Box<herald_bench::BenchArgs>),
    /// A deploy agent's side: commands to a herald over HTTP or a broker.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The origin browsers use to reach herald.
    #[arg(long, env = "HERALD_PUBLIC_ORIGIN", default_value = "http://localhost:8080")]
    public_origin: String,
    /// Concurrent live streams per credential.
    #[arg(long, env = "HERALD_STREAM_LIMIT", default_value_t = 64)]
    stream_limit: usize,
    /// Commands per second per credential, bursts of twice that (0 = unlimited).
    #[arg(long, env = "HERALD_COMMAND_RATE", default_value_t = 200)]
    command_rate: u32,
    /// Minutes a passkey verification counts for risky commands (StartDeployment).
    #[arg(long, env = "HERALD_STEP_UP_MINUTES", default_value_t = 15)]
    step_up_minutes: u64,
    /// Hours a browser session lasts without a request.
    #[arg(long, env = "HERALD_SESSION_IDLE_HOURS", default_value_t = 12)]
    session_idle_hours: u64,
    /// Days a browser session lasts at most.
    #[arg(long, env = "HERALD_SESSION_MAX_DAYS", default_value_t = 7)]
    session_max_days: u64,
    /// Another name requests may be addressed to (`name` for any port, or
    /// `name:port`), besides the public origin's host and the listen address;
    /// any other Host is refused (421). Repeatable; comma-separated in the env.
    #[arg(long = "allowed-host", env = "HERALD_ALLOWED_HOST", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Open connections at most; more are answered 503 and closed at once (0 = no limit).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 50_000)]
    max_connections: usize,
    /// Open connections per client address at most (0 = no limit).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 1024)]
    max_connections_per_address: usize,
    /// Seconds open requests get after the shutdown signal; then every connection is closed.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    shutdown_grace_seconds: u64,
    /// Seconds a request head may take to arrive whole.
    #[arg(long, env = "HERALD_HEADER_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_seconds: u64,
    /// Seconds a keep-alive connection may wait for its next request.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_seconds: u64,
    /// Seconds a request body may take to arrive whole after its head (408 beyond).
    #[arg(long, env = "HERALD_BODY_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_seconds: u64,
    /// Seconds a write to a client may make no progress before the client is dropped.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    write_timeout_seconds: u64,
    /// A reverse proxy (IP or CIDR, repeatable; env comma-separated) whose
    /// X-Forwarded-For names the client for rate limits; from anyone else it is ignored.
    #[arg(long = "trusted-proxy", env = "HERALD_TRUSTED_PROXY", value_delimiter = ',')]
    trusted_proxy: Vec<herald_server::passkeys::TrustedProxy>,
    /// Consume commands from NATS JetStream at this URL (nats://host:4222), on
    /// the subjects <prefix>.commands.<credential name>.
    #[arg(long, env = "HERALD_NATS")]
    nats: Option<String>,
    /// Consume commands from the Redis stream <prefix>:commands at this URL
    /// (redis://host:6379), in the consumer group herald.
    #[arg(long, env = "HERALD_REDIS")]
    redis: Option<String>,
    /// NAME=TOKEN: a message on <prefix>.commands.NAME (NATS), or an entry
    /// whose credential field is NAME (Redis), acts as this API token
    /// (repeatable; env comma-separated). Needs --nats or --redis.
    #[arg(
        long = "nats-credential",
        visible_alias = "broker-credential",
        env = "HERALD_NATS_CREDENTIALS",
        value_delimiter = ','
    )]
    nats_credential: Vec<String>,
    /// The first token of every broker subject and stream name (several
    /// deployments, or tests, sharing one broker).
    #[arg(long = "broker-prefix", env = "HERALD_BROKER_PREFIX", default_value = herald_server::brokers::DEFAULT_PREFIX)]
    broker_prefix: String,
    /// Threads that serve requests other than live streams (commands, reads,
    /// logins), beside the runtime that writes live streams: a command is
    /// then not queued behind a burst of live writes. 0: one runtime for all.
    #[arg(long, env = "HERALD_API_THREADS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=64))]
    api_threads: u64,
    /// Seconds a broker message taken by an instance that does not
    /// acknowledge it (it crashed) waits before another instance gets it.
    #[arg(long, env = "HERALD_BROKER_ACK_WAIT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    broker_ack_wait_seconds: u64,
}

#[derive(Subcommand)]
enum InviteCommand {
    /// Mint an invite code; prints it alone on the last line of stdout.
    Create {
        /// viewer, operator or admin.
        #[arg(long, env = "HERALD_ROLE", value_parser = parse_role)]
        role: Role,
        /// The origin browsers use (for the registration link).
        #[arg(long, env = "HERALD_PUBLIC_ORIGIN", default_value = "http://localhost:8080")]
        public_origin: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token; prints it alone on the last line of stdout (shown once).
    Create {
        #[arg(long, env = "HERALD_NAME")]
        name: String,
        /// viewer, operator or admin.
        #[arg(long, env = "HERALD_ROLE", value_parser = parse_role)]
        role: Role,
    },
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Empty read models and replay the whole log into them (all of them, or those named).
    Rebuild {
        /// Read models to rebuild (default: every one).
        names: Vec<String>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?} is not a role (viewer, operator, admin)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file or a journal
        // gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        // A log line that cannot be written (stderr closed, its reader gone, a
        // full disk) is dropped: the default reports it with `eprintln!`, which
        // panics, and a panic in the event store's writer would stop writes.
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "herald: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the commands find the log, the accounts and the API tokens.
enum Backend {
    /// The embedded store in this directory.
    Sqlite(PathBuf),
    /// PostgreSQL at this URL (a secret: it may hold a password; never printed).
    Postgres(String),
}

impl Backend {
    fn of(store: &StoreArgs) -> Backend {
        match &store.database_url {
            Some(url) => Backend::Postgres(url.clone()),
            None => Backend::Sqlite(store.data.clone()),
        }
    }

    /// The embedded store's directory, or an error naming `command` as one
    /// that does not work on PostgreSQL yet.
    fn sqlite_only(&self, command: &str) -> Result<&std::path::Path> {
        match self {
            Backend::Sqlite(dir) => Ok(dir),
            Backend::Postgres(_) => bail!(
                "`herald {command}` does not support PostgreSQL (--database-url); use --data for the embedded store"
            ),
        }
    }

    /// The event store as `herald serve` opens it (each event framed as an
    /// SSE message), for the commands that work on it directly.
    async fn event_store(&self) -> Result<Arc<dyn EventStore>> {
        Ok(self.open().await?.store())
    }

    /// The event store, and what the accounts and tokens open on it: on
    /// PostgreSQL one pool, migrated once, for all of them.
    async fn open(&self) -> Result<Opened> {
        match self {
            Backend::Sqlite(dir) => Ok(Opened::Sqlite(dir.clone(), open_store(dir)?)),
            Backend::Postgres(url) => {
                let (config, target) = pg_config(url)?;
                let context = || format!("cannot open the event store on PostgreSQL at {target}");
                // One command at a time: the writer's connection, one for the
                // accounts, one for reads.
                let database = herald_postgres::Database::connect(config, 3)
                    .await
                    .with_context(context)?;
                let store = herald_postgres::PgStore::with_database(
                    &database,
                    Arc::new(herald_server::sse::Sse),
                    herald_postgres::PgConfig {
                        // No other process's commits to follow.
                        listen: false,
                        ..herald_postgres::PgConfig::default()
                    },
                )
                .await
                .with_context(context)?;
                Ok(Opened::Postgres(Box::new(database), store))
            }
        }
    }
}

/// What [`Backend::open`] opened.
enum Opened {
    Sqlite(PathBuf, Arc<SqliteStore>),
    Postgres(Box<herald_postgres::Database>, Arc<herald_postgres::PgStore>),
}

impl Opened {
    fn store(&self) -> Arc<dyn EventStore> {
        match self {
            Opened::Sqlite(_, store) => store.clone(),
            Opened::Postgres(_, store) => store.clone(),
        }
    }

    fn credentials(&self) -> Result<Arc<dyn CredentialStore>> {
        match self {
            Opened::Sqlite(dir, _) => Ok(SqliteCredentials::open(dir)?),
            Opened::Postgres(database, _) => Ok(herald_postgres::PgAccounts::with_database(database)),
        }
    }

    fn accounts(&self) -> Result<Arc<dyn AccountStore>> {
        match self {
            Opened::Sqlite(dir, _) => Ok(SqliteAccounts::open(dir)?),
            Opened::Postgres(database, _) => Ok(herald_postgres::PgAccounts::with_database(database)),
        }
    }
}

/// How long connecting to PostgreSQL may take unless the URL says otherwise.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `url` parsed, with a connect timeout unless it has one, and where it
/// points (`host:port/dbname`, never the password) for messages.
fn pg_config(url: &str) -> Result<(tokio_postgres::Config, String)> {
    // tokio-postgres' parse errors do not repeat the string (which may hold a password).
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| anyhow::anyhow!("--database-url is not a valid PostgreSQL connection string: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(PG_CONNECT_TIMEOUT);
    }
    let target = herald_postgres::describe_config(&config);
    Ok((config, target))
}

fn cli_actor() -> Actor {
    Actor {
        kind: herald_core::ActorKind::System,
        id: "cli".into(),
        name: "herald-cli".into(),
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let backend = Backend::of(&cli.store);
    match cli.command {
        Command::Serve(args) => serve(&backend, *args).await,
        Command::Token(TokenCommand::Create { name, role }) => {
            let opened = backend.open().await?;
            let (store, credentials) = (opened.store(), opened.credentials()?);
            let minted = herald_server::auth::create_token(&*store, &*credentials, &cli_actor(), &name, role)
                .await
                .context("could not create the token")?;
            eprintln!(
                "created token {} ({}, role {}); it is shown once, store it now:",
                minted.record.id, minted.record.name, minted.record.role
            );
            println!("{}", minted.secret);
            Ok(ExitCode::SUCCESS)
        }
        Command::Invite(InviteCommand::Create { role, public_origin }) => {
            let opened = backend.open().await?;
            let (store, accounts) = (opened.store(), opened.accounts()?);
            let minted = herald_server::passkeys::create_invite_in(&*store, &*accounts, &cli_actor(), role)
                .await
                .map_err(|e| anyhow::anyhow!("could not create the invite: {e}"))?;
            eprintln!(
                "created invite {} for role {}, usable once until {}; the code is shown once:",
                minted.record.id,
                minted.record.role,
                herald_server::sessions::millis_rfc3339(minted.record.expires_at),
            );
            println!(
                "register at {}/register?invite={}",
                public_origin.trim_end_matches('/'),
                minted.code
            );
            println!("{}", minted.code);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { expect } => {
            let report = match &backend {
                Backend::Sqlite(dir) => {
                    // Read-only: opening the store normally would recreate dropped
                    // triggers (erasing the evidence) and start a writer.
                    let scanner = herald_store::scan::Scanner::open_read_only(dir)
                        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
                    let anchor = expect.clone();
                    tokio::task::spawn_blocking(move || scanner.verify(anchor, verify_progress))
                        .await
                        .context("the verification task failed")??
                }
                // One connection, one read-only, repeatable-read transaction,
                // no migration (which could recreate a dropped trigger).
                Backend::Postgres(url) => {
                    let (config, _) = pg_config(url)?;
                    let verified = herald_postgres::verify_read_only(config, expect.clone(), verify_progress).await?;
                    if let Some(note) = verified.schema_note() {
                        let _ = writeln!(std::io::stderr(), "note: {note}");
                    }
                    verified.report
                }
            };
            let mut out = std::io::stdout().lock();
            if report.ok {
                writeln!(
                    out,
                    "ok: {} events, head position {} hash {}",
                    report.checked, report.head_position, report.head_hash
                )?;
                if let Some(expect) = &expect {
                    writeln!(
                        out,
                        "ok: position {} has the expected hash {}",
                        expect.position, expect.hash
                    )?;
                }
                Ok(ExitCode::SUCCESS)
            } else {
                let problem = report.problem.as_deref().unwrap_or("unknown problem");
                match report.first_bad_position {
                    Some(position) => writeln!(
                        out,
                        "TAMPERED: first bad position {position} ({problem}); {} events before it verified",
                        report.checked
                    )?,
                    None => writeln!(out, "TAMPERED: {problem}; all {} events verified", report.checked)?,
                }
                Ok(ExitCode::from(1))
            }
        }
        Command::Export { output } => {
            let store = backend.event_store().await?;
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut after = 0;
            let mut count = 0u64;
            loop {
                let page = store.read_all(after, &Filter::default(), 1000).await?;
                for e in &page.events {
                    out.write_all(e.json())?;
                    out.write_all(b"\n")?;
                }
                count += page.events.len() as u64;
                if page.events.is_empty() || page.next_after >= page.head {
                    break;
                }
                after = page.next_after;
            }
            out.flush()?;
            eprintln!("exported {count} events");
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { file } => import(&backend, &file).await,
        Command::Bench(args) => {
            // It serves a store of its own; the flag would be silently ignored.
            backend.sqlite_only("bench")?;
            herald_bench::run(*args).await
        }
        Command::Projections(ProjectionsCommand::Rebuild { names }) => rebuild(&backend, names).await,
        // Talks to a herald; opens no store.
        Command::Agent(command) => agent::run(command).await,
    }
}

/// `verify`'s progress on stderr: every 100,000 events, and at the end.
fn verify_progress(checked: u64, head: u64) {
    if checked.is_multiple_of(100_000) || checked == head {
        let _ = writeln!(std::io::stderr(), "checked {checked} of {head} events");
    }
}

/// How often `import` reports its progress.
const IMPORT_PROGRESS: Duration = Duration::from_secs(3);

/// `herald import [FILE|-]`: the file's lines are read and checked on a
/// thread of their own while the backend writes the batches before them.
async fn import(backend: &Backend, file: &std::path::Path) -> Result<ExitCode> {
    let input: Box<dyn std::io::BufRead + Send> = if file == std::path::Path::new("-") {
        Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()))
    } else {
        let opened = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, opened))
    };
    let started = std::time::Instant::now();
    let mut last_report = started;
    let progress = move |written: u64| {
        if last_report.elapsed() >= IMPORT_PROGRESS {
            let rate = written as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let _ = writeln!(std::io::stderr(), "imported {written} events ({rate:.0} events/s)");
            last_report = std::time::Instant::now();
        }
    };
    let batches = herald_core::import::read_in_background(input)?;
    let summary = match backend {
        Backend::Sqlite(dir) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || herald_store::import::import(&dir, batches, progress))
                .await
                .context("the import task failed")?
        }
        Backend::Postgres(url) => {
            let (config, target) = pg_config(url)?;
            let database = herald_postgres::Database::connect(config, 1)
                .await
                .with_context(|| format!("cannot open the event store on PostgreSQL at {target}"))?;
            herald_postgres::import(&database, batches, progress).await
        }
    }?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {} events in {seconds:.1} s ({:.0} events/s) and {} idempotency records",
        summary.events,
        summary.events as f64 / seconds.max(1e-9),
        summary.commands
    );
    println!(
        "ok: {} events, head position {} hash {}",
        summary.events, summary.head.position, summary.head.hash
    );
    Ok(ExitCode::SUCCESS)
}

/// `herald projections rebuild [NAME…]`: a progress bar on a terminal, a line
/// a second otherwise.
async fn rebuild(backend: &Backend, names: Vec<String>) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let registry = herald_server::domains::registry();
    let known = registry.projection_names();
    let names: Vec<String> = if names.is_empty() {
        known.iter().map(|n| (*n).to_owned()).collect()
    } else {
        names
    };
    if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
        bail!("there is no read model {unknown:?}; known: {}", known.join(", "));
    }
    let (source, models): (Arc<dyn RebuildSource>, _) = match backend {
        Backend::Sqlite(dir) => {
            let store = open_store(dir)?;
            let models = registry
                .open_models(dir)
                .with_context(|| format!("cannot open the read models in {}", dir.display()))?;
            (store, models)
        }
        Backend::Postgres(url) => {
            let store = backend.event_store().await?;
            let (config, target) = pg_config(url)?;
            let models = registry
                .open_models_postgres(&herald_postgres::PgModels::new(config))
                .await
                .with_context(|| format!("cannot open the read models on PostgreSQL at {target}"))?;
            (Arc::new(herald_store::projection::AnyStore(store)), models)
        }
    };
    let terminal = std::io::stderr().is_terminal();
    for name in &names {
        let Some(consumer) = models.consumer(name) else {
            bail!("there is no read model {name:?}");
        };
        let started = std::time::Instant::now();
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30}] {human_pos}/{human_len} events  {per_sec}  ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(name.clone());
            bar
        });
        let mut last_report = std::time::Instant::now();
        let mut progress = |checkpoint: u64, head: u64| match &bar {
            Some(bar) => {
                bar.set_length(head);
                bar.set_position(checkpoint);
            }
            None => {
                if last_report.elapsed() >= Duration::from_secs(1) || checkpoint >= head {
                    let seconds = started.elapsed().as_secs_f64().max(1e-9);
                    let rate = checkpoint as f64 / seconds;
                    let eta = if rate > 0.0 {
                        head.saturating_sub(checkpoint) as f64 / rate
                    } else {
                        0.0
                    };
                    eprintln!(
                        "{name}: position {checkpoint} of {head} ({:.0} events/s, ETA {eta:.0} s)",
                        rate
                    );
                    last_report = std::time::Instant::now();
                }
            }
        };
        let applied = consumer.rebuild(source.clone(), &mut progress).await?;
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        println!(
            "rebuilt the {name} read model from {applied} events in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The event store as `herald serve` opens it (each event framed as an SSE
/// message), for the commands that work on it directly.
fn open_store(dir: &std::path::Path) -> Result<Arc<SqliteStore>> {
    SqliteStore::open(dir, Arc::new(herald_server::sse::Sse))
        .with_context(|| format!("cannot open the store in {}", dir.display()))
}

/// `--nats`, `--redis`, `--nats-credential` and `--broker-prefix`, checked.
type Brokers = (
    Option<herald_server::brokers::nats::NatsConfig>,
    Option<herald_server::brokers::redis::RedisConfig>,
);

fn broker_configs(args: &ServeArgs) -> Result<Brokers> {
    use herald_server::brokers::{Credentials, nats, redis};
    let credentials = Credentials::parse(args.nats_credential.iter().map(String::as_str))
        .map_err(|e| anyhow::anyhow!("--nats-credential: {e}"))?;
    nats::check_prefix(&args.broker_prefix).map_err(|e| anyhow::anyhow!(e))?;
    if args.nats.is_none() && args.redis.is_none() {
        if !credentials.is_empty() {
            anyhow::bail!("--nats-credential needs --nats URL or --redis URL (the broker to consume commands from)");
        }
        return Ok((None, None));
    }
    if credentials.is_empty() {
        tracing::warn!(
            "a broker without --nats-credential: every command message will be dead-lettered (no credential names it)"
        );
    }
    if let Some(url) = &args.redis {
        ::redis::Client::open(url.as_str()).map_err(|e| anyhow::anyhow!("--redis {url:?}: {e}"))?;
    }
    Ok((
        args.nats.as_ref().map(|url| nats::NatsConfig {
            url: url.clone(),
            prefix: args.broker_prefix.clone(),
            credentials: credentials.clone(),
            ack_wait: Duration::from_secs(args.broker_ack_wait_seconds),
        }),
        args.redis.as_ref().map(|url| redis::RedisConfig {
            url: url.clone(),
            prefix: args.broker_prefix.clone(),
            credentials: credentials.clone(),
            claim_idle: Duration::from_secs(args.broker_ack_wait_seconds),
        }),
    ))
}

async fn serve(backend: &Backend, args: ServeArgs) -> Result<ExitCode> {
    let (nats, redis) = broker_configs(&args)?;
    let config = ServerConfig {
        public_origin: args.public_origin.trim_end_matches('/').to_owned(),
        stream_limit: args.stream_limit,
        command_rate: args.command_rate,
        step_up: Duration::from_secs(args.step_up_minutes.saturating_mul(60)),
        session_idle: Duration::from_secs(args.session_idle_hours.saturating_mul(3600)),
        session_max: Duration::from_secs(args.session_max_days.saturating_mul(86_400)),
        allowed_hosts: args.allowed_hosts.clone(),
        max_connections: args.max_connections,
        max_connections_per_address: args.max_connections_per_address,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        header_timeout: Duration::from_secs(args.header_timeout_seconds),
        idle_timeout: Duration::from_secs(args.idle_timeout_seconds),
        body_timeout: Duration::from_secs(args.body_timeout_seconds),
        write_timeout: Duration::from_secs(args.write_timeout_seconds),
        trusted_proxies: args.trusted_proxy,
        nats,
        redis,
        api_threads: args.api_threads as usize,
        ..ServerConfig::default()
    };
    let (state, data) = match backend {
        Backend::Sqlite(dir) => {
            let state = AppState::open_sqlite(dir, config).map_err(|e| match e {
                herald_server::state::ConfigError::Store(e) => {
                    anyhow::anyhow!("cannot open the store in {}: {e}", dir.display())
                }
                other => anyhow::anyhow!(other),
            })?;
            (state, dir.display().to_string())
        }
        Backend::Postgres(url) => {
            let (pg, target) = pg_config(url)?;
            let state = AppState::open_postgres(pg, herald_postgres::PgConfig::default(), config)
                .await
                .map_err(|e| match e {
                    herald_server::state::ConfigError::Store(e) => {
                        anyhow::anyhow!("cannot open the store on PostgreSQL at {target}: {e}")
                    }
                    other => anyhow::anyhow!(other),
                })?;
            (state, format!("postgresql {target}"))
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        listen = %args.listen,
        data = %data,
        "herald is serving on http://{}",
        listener.local_addr()?
    );
    print_setup_code(&state).await?;
    herald_server::run(state, listener, shutdown_signal()).await?;
    tracing::info!("herald stopped");
    Ok(ExitCode::SUCCESS)
}

/// While herald has no admin: a fresh one-time setup code (an admin invite),
/// printed to the terminal that started herald — only someone who can read it
/// can become the first admin, not whoever reaches the port first.
async fn print_setup_code(state: &AppState) -> Result<()> {
    let minted = herald_server::passkeys::issue_setup_code(&*state.store, &*state.accounts)
        .await
        .map_err(|e| anyhow::anyhow!("could not issue the setup code: {e}"))?;
    if let Some(minted) = minted {
        tracing::info!(invite = %minted.record.id, "no admin account yet: issued a one-time setup code");
        // Straight to the terminal, not through the log pipeline; a closed
        // stderr must not stop herald.
        let _ = writeln!(
            std::io::stderr(),
            "\nherald has no admin yet. Open {origin}/ and register the first admin with this one-time \
             setup code\n(or use {origin}/register?invite=<code>; a restart replaces it, and \
             `herald invite create --role admin` makes another):\n\n    setup code: {code}\n",
            origin = state.config.public_origin,
            code = minted.code,
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: ending live streams and finishing open requests");
}
