//! The cheap-to-clone application state every handler receives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::accounts::AccountStore;
use herald_core::auth::CredentialStore;
use herald_core::store::{EventStore, StoreError};
use herald_store::projection::{Model, RowProjection};
use tokio_util::sync::CancellationToken;
use webauthn_rs::prelude::{Webauthn, WebauthnBuilder};

use crate::error::ApiError;

/// Server settings (from `herald serve` flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `scheme://host[:port]` browsers use; origin checks and cookies derive from it.
    pub public_origin: String,
    /// Concurrent live streams per credential.
    pub stream_limit: usize,
    /// Keep-alive comment interval on idle live streams.
    pub keepalive: Duration,
    /// The `retry:` hint sent to EventSource clients.
    pub retry: Duration,
    /// Commands per second per credential (bursts of twice that); 0 = unlimited.
    pub command_rate: u32,
    /// Requests per second to the passkey endpoints per client address (bursts of
    /// five times that); 0 = unlimited.
    pub auth_rate: u32,
    /// A session ends after this long without a request.
    pub session_idle: Duration,
    /// A session ends this long after login, however active.
    pub session_max: Duration,
    /// Risky actions (commands their domain marks risky, minting tokens, admin
    /// invites, role changes, …) need a passkey verification this recent.
    pub step_up: Duration,
    /// Host names (`name`, any port) or `name:port` that requests may be
    /// addressed to, besides the public origin's and the listen address.
    pub allowed_hosts: Vec<String>,
    // --- Connections (serve.rs) ---
    /// A request head must arrive whole within this (from the connection's
    /// start, or from its first byte after an idle keep-alive wait).
    pub header_timeout: Duration,
    /// A keep-alive connection waiting for its next request is closed after this.
    pub idle_timeout: Duration,
    /// A request body must arrive whole within this after its head (408 otherwise).
    pub body_timeout: Duration,
    /// A write that makes no progress for this long drops the connection (a
    /// reader that stopped reading).
    pub write_timeout: Duration,
    /// Open connections at most; more are closed at once (0 = no limit).
    pub max_connections: usize,
    /// Open connections per client address at most (0 = no limit).
    pub max_connections_per_address: usize,
    /// After the shutdown signal, open requests get this long; then every
    /// connection is closed.
    pub shutdown_grace: Duration,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`).
    pub trusted_proxies: Vec<crate::hosts::TrustedProxy>,
    /// Login attempts per account (username) per `login_window`; 0 = unlimited.
    pub login_limit: u32,
    /// The window of the per-account login limit and of `LoginFailed` events
    /// (at most one per account per window).
    pub login_window: Duration,
    /// A request other than a live stream answers 503 after this long.
    pub request_timeout: Duration,
    /// Commands from NATS JetStream (`--nats`; API.md §10), when set.
    pub nats: Option<crate::broker_config::NatsConfig>,
    /// Commands from a Redis stream (`--redis`; API.md §10), when set.
    pub redis: Option<crate::broker_config::RedisConfig>,
    /// Threads of the runtime requests other than fresh live streams are
    /// served on (`--api-threads`); 0 serves them on the caller's runtime.
    pub api_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            public_origin: "http://localhost:8080".into(),
            stream_limit: 64,
            keepalive: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            command_rate: 200,
            auth_rate: 5,
            session_idle: Duration::from_secs(12 * 3600),
            session_max: Duration::from_secs(7 * 24 * 3600),
            step_up: Duration::from_secs(15 * 60),
            allowed_hosts: Vec::new(),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 50_000,
            max_connections_per_address: 1024,
            shutdown_grace: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            login_limit: 10,
            login_window: Duration::from_secs(15 * 60),
            request_timeout: Duration::from_secs(30),
            nats: None,
            redis: None,
            api_threads: 2,
        }
    }
}

/// Every handler receives it (and axum clones it per request, once per
/// middleware too): one reference count, whatever it holds.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    pub store: Arc<dyn EventStore>,
    pub credentials: Arc<dyn CredentialStore>,
    pub accounts: Arc<dyn AccountStore>,
    /// The passkey relying party; `None` when the public origin is an IP
    /// address (passkeys need a host name; tokens still work).
    pub webauthn: Option<Arc<Webauthn>>,
    /// What the domains registered (commands, projections, routes, streams).
    pub registry: Arc<Registry>,
    /// The domains' read models.
    pub models: crate::domain::Models,
    /// Which read models' tasks (and the revocation follower) are failing (for `/readyz`).
    pub consumer_health: Arc<crate::health::Health>,
    pub config: Arc<ServerConfig>,
    pub live: Arc<LiveRegistry>,
    pub limits: Arc<RateLimits>,
    /// Recently seen API tokens (see `secrets::TokenCache`).
    pub token_cache: Arc<crate::secrets::TokenCache>,
    /// Commands on one stream take turns in this process.
    pub stream_locks: Arc<herald_core::command::StreamLocks>,
    /// The names requests may be addressed to (421 otherwise).
    pub hosts: Arc<crate::hosts::AllowedHosts>,
    /// `GET /api/audit/verify`: one at a time, one per credential every 10 s.
    pub audit: Arc<crate::limits::AuditLimits>,
}

/// A setting herald cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--public-origin {0:?}: {1} (it must be the scheme://host[:port] browsers use, e.g. http://localhost:8080; \
         passkeys need a host name)"
    )]
    PublicOrigin(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The WebAuthn relying party: its id is the public origin's host. `None` (with
/// a warning) when that host is an IP address, where browsers offer no passkeys.
pub fn relying_party(public_origin: &str) -> Result<Option<Webauthn>, ConfigError> {
    let bad = |why: &str| ConfigError::PublicOrigin(public_origin.to_owned(), why.to_owned());
    let url = url::Url::parse(public_origin).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.path() != "/" || url.query().is_some() {
        return Err(bad("only scheme, host and port are allowed"));
    }
    if url.origin().ascii_serialization() != public_origin {
        return Err(bad(&format!("write it as {}", url.origin().ascii_serialization())));
    }
    let host = match url.host() {
        Some(url::Host::Domain(host)) => host,
        Some(_) => {
            tracing::warn!(
                public_origin,
                "passkey login is off: browsers offer passkeys only on a host name (e.g. localhost), \
                 not an IP address; API tokens still work"
            );
            return Ok(None);
        }
        None => return Err(bad("no host")),
    };
    WebauthnBuilder::new(host, &url)
        .and_then(|b| b.rp_name("herald").build())
        .map(Some)
        .map_err(|e| bad(&e.to_string()))
}

impl AppState {
    /// State around stores opened by the caller, with the domains of
    /// `registry` (their read models opened in `models_dir`, the data
    /// directory). `AppState::new` (in `lib.rs`) passes every domain.
    pub fn with_registry(
        store: Arc<dyn EventStore>,
        credentials: Arc<dyn CredentialStore>,
        accounts: Arc<dyn AccountStore>,
        models_dir: &Path,
        registry: Registry,
        config: ServerConfig,
    ) -> Result<AppState, ConfigError> {
        let models = registry.open_models(models_dir)?;
        AppState::with_models(store, credentials, accounts, models, registry, config)
    }

    /// State around stores and read models opened by the caller (`models`
    /// opened from `registry`).
    pub fn with_models(
        store: Arc<dyn EventStore>,
        credentials: Arc<dyn CredentialStore>,
        accounts: Arc<dyn AccountStore>,
        models: crate::domain::Models,
        registry: Registry,
        config: ServerConfig,
    ) -> Result<AppState, ConfigError> {
        Ok(AppState(Arc::new(AppStateInner {
            registry: Arc::new(registry),
            models,
            consumer_health: Arc::default(),
            webauthn: relying_party(&config.public_origin)?.map(Arc::new),
            store,
            credentials,
            accounts,
            limits: Arc::new(RateLimits::new(&config)),
            stream_locks: Arc::default(),
            token_cache: Arc::default(),
            hosts: Arc::new(crate::hosts::AllowedHosts::new(
                &config.public_origin,
                &config.allowed_hosts,
            )),
            audit: Arc::default(),
            config: Arc::new(config),
            live: Arc::new(LiveRegistry::new()),
        })))
    }
}

/// Live connections: per-user (or per-token) counts, shutdown, and the
/// deployments feed.
///
/// Each credential with open streams — a token or a browser session — has a
/// cancellation token (a child of `shutdown`): revoking the credential, logging
/// out or the session expiring cancels it, which ends every stream it opened at
/// once.
pub struct LiveRegistry {
    pub shutdown: CancellationToken,
    open: Mutex<Open>,
    generation: AtomicU64,
    /// Resources changed in the read models (whichever process applied the
    /// events), for resource streams: a channel per resource kind.
    pub resources: crate::changes::ResourceChannels,
    /// The highest position delivered to the projector (for lag metrics).
    pub head: AtomicU64,
}

#[derive(Default)]
struct Open {
    /// Streams per limit key (a user, or a token).
    counts: HashMap<String, usize>,
    /// Per credential: what ends its streams.
    credentials: HashMap<String, Credential>,
}

impl Default for LiveRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveRegistry {
    pub fn new() -> Self {
        LiveRegistry {
            shutdown: CancellationToken::new(),
            open: Mutex::new(Open::default()),
            generation: AtomicU64::new(0),
            resources: crate::changes::ResourceChannels::default(),
            head: AtomicU64::new(0),
        }
    }

    /// Counts one more live stream against `limit_key`, or 429 beyond `limit`;
    /// the stream ends when `credential` is ended (or at `deadline`).
    pub fn acquire(
        self: &Arc<Self>,
        limit_key: &str,
        credential: &str,
        limit: usize,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<StreamGuard, ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::Unavailable("herald is shutting down".into()));
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.counts.entry(limit_key.to_owned()).or_insert(0);
        if *n >= limit {
            return Err(ApiError::TooManyRequests {
                detail: format!("at most {limit} live streams per user or token are open at once; close one first"),
                retry_after_secs: 5,
            });
        }
        *n += 1;
        let entry = open
            .credentials
            .entry(credential.to_owned())
            .or_insert_with(|| Credential {
                limit_key: limit_key.to_owned(),
                streams: 0,
                generation: self.generation.fetch_add(1, Ordering::Relaxed),
                ended: self.shutdown.child_token(),
            });
        entry.streams += 1;
        metrics::gauge!("herald_live_subscribers").increment(1.0);
        Ok(StreamGuard {
            registry: self.clone(),
            limit_key: limit_key.to_owned(),
            credential: credential.to_owned(),
            generation: entry.generation,
            ended: entry.ended.clone(),
            deadline,
        })
    }

    /// Ends every open stream of `credential` (revoked, logged out, expired).
    /// Returns how many were open.
    pub fn end_credential(&self, credential: &str) -> usize {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.credentials.remove(credential) {
            Some(entry) => {
                entry.ended.cancel();
                entry.streams
            }
            None => 0,
        }
    }

    /// Ends every open stream counted against `limit_key` (a user: all their
    /// sessions' streams — disabled, or their roles changed). Returns how many
    /// were open.
    pub fn end_limit_key(&self, limit_key: &str) -> usize {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut ended = 0;
        open.credentials.retain(|_, entry| {
            if entry.limit_key != limit_key {
                return true;
            }
            entry.ended.cancel();
            ended += entry.streams;
            false
        });
        ended
    }

    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }
}

struct Credential {
    /// What its streams count against (one key per credential: its token, or
    /// its session's user).
    limit_key: String,
    streams: usize,
    /// Tells this entry from a later one for the same credential.
    generation: u64,
    ended: CancellationToken,
}

/// Releases a live-stream slot when the stream ends, however it ends.
pub struct StreamGuard {
    registry: Arc<LiveRegistry>,
    limit_key: String,
    credential: String,
    generation: u64,
    ended: CancellationToken,
    deadline: Option<tokio::time::Instant>,
}

/// Why a stream's [`StreamGuard::ended`] fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Shutdown,
    Revoked,
    Expired,
}

impl StreamGuard {
    /// The newest position this process has seen.
    pub fn head(&self) -> u64 {
        self.registry.head()
    }

    /// Resolves when the stream must end: herald shuts down, the credential
    /// that opened it is revoked, or it expires.
    pub async fn ended(&self) -> EndReason {
        self.ending().await
    }

    /// [`Self::ended`] as a future that owns what it needs, to be made once and
    /// kept for the stream's life (no timer registered per chunk).
    pub fn ending(&self) -> impl std::future::Future<Output = EndReason> + Send + 'static {
        let ended = self.ended.clone();
        let shutdown = self.registry.shutdown.clone();
        let deadline = self.deadline;
        async move {
            let revoked = || {
                if shutdown.is_cancelled() {
                    EndReason::Shutdown
                } else {
                    EndReason::Revoked
                }
            };
            match deadline {
                None => {
                    ended.cancelled().await;
                    revoked()
                }
                // Boxed: most streams (tokens) have no deadline, and a timer
                // would otherwise be part of every stream's end future.
                Some(at) => tokio::select! {
                    _ = ended.cancelled() => revoked(),
                    _ = Box::pin(tokio::time::sleep_until(at)) => EndReason::Expired,
                },
            }
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.counts.get_mut(&self.limit_key) {
            *n -= 1;
            if *n == 0 {
                open.counts.remove(&self.limit_key);
            }
        }
        if let Some(entry) = open.credentials.get_mut(&self.credential)
            && entry.generation == self.generation
        {
            entry.streams -= 1;
            if entry.streams == 0 {
                open.credentials.remove(&self.credential);
            }
        }
        metrics::gauge!("herald_live_subscribers").decrement(1.0);
    }
}

type KeyedLimiter = governor::DefaultKeyedRateLimiter<String>;

/// Request rates (429 beyond them): commands per credential, passkey
/// ceremonies per client address.
pub struct RateLimits {
    commands: Option<KeyedLimiter>,
    auth: Option<KeyedLimiter>,
}

impl RateLimits {
    pub fn new(config: &ServerConfig) -> Self {
        let commands = std::num::NonZeroU32::new(config.command_rate).map(|rate| {
            let burst = rate.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(1));
            governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
        });
        let auth = std::num::NonZeroU32::new(config.auth_rate).map(|rate| {
            let burst = rate.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(4));
            governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
        });
        RateLimits { commands, auth }
    }

    /// Counts one passkey-endpoint request from `client`, or 429.
    pub fn auth(&self, client: &str) -> Result<(), ApiError> {
        check(
            self.auth.as_ref(),
            client,
            "too many login or registration attempts from this address; wait and try again",
        )
    }

    /// Counts one command for `credential`, or 429 with when to retry.
    pub fn command(&self, credential: &str) -> Result<(), ApiError> {
        check(
            self.commands.as_ref(),
            credential,
            "this credential is sending commands faster than its rate limit; slow down",
        )
    }
}

fn check(limiter: Option<&KeyedLimiter>, key: &str, detail: &str) -> Result<(), ApiError> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter.check_key(&key.to_owned()).map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        ApiError::TooManyRequests {
            detail: detail.into(),
            retry_after_secs: wait.as_secs().max(1),
        }
    })?;
    if limiter.len() > 10_000 {
        limiter.retain_recent();
    }
    Ok(())
}

/// The application's registry, routes and resource streams (see `domain.rs`).
pub type Registry = crate::domain::Registry<AppState>;
pub type LiveRoute = crate::domain::LiveRoute<AppState>;
pub type LiveRequest<'a> = crate::domain::LiveRequest<'a, AppState>;
pub use crate::domain::LiveFuture;

impl AppState {
    /// The read model of `P`. A handler of an unregistered projection is a
    /// programming error: 500, not a panic.
    pub fn model<P: RowProjection>(&self) -> Result<Model<P>, ApiError> {
        self.models
            .get::<P>()
            .ok_or_else(|| ApiError::Internal(format!("the read model {} is not registered", P::NAME)))
    }
}

/// The read model of `P` once it has reached `min_position` (a read of one's
/// own write), waiting at most [`herald_store::projection::MAX_WAIT`]; after
/// that the caller answers with what it has (its `position` says how far it is).
pub async fn model_at<P: RowProjection>(state: &AppState, min_position: u64) -> Result<Model<P>, ApiError> {
    let model = state.model::<P>()?;
    if min_position > 0 {
        model.wait_for(min_position, herald_store::projection::MAX_WAIT).await?;
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_beyond_the_burst_are_refused_per_credential() {
        let limits = RateLimits::new(&ServerConfig {
            command_rate: 1,
            ..ServerConfig::default()
        });
        // Bursts of twice the rate, then 429 with a Retry-After of at least a second.
        assert!(limits.command("token:a").is_ok());
        assert!(limits.command("token:a").is_ok());
        match limits.command("token:a") {
            Err(ApiError::TooManyRequests { retry_after_secs, .. }) => assert!(retry_after_secs >= 1),
            other => panic!("expected 429, got {other:?}"),
        }
        // Another credential has its own budget.
        assert!(limits.command("token:b").is_ok());
    }

    #[test]
    fn the_relying_party_comes_from_the_public_origin() {
        assert!(relying_party("http://localhost:8080").unwrap().is_some());
        assert!(relying_party("https://herald.example.com").unwrap().is_some());
        // An IP address: herald serves, passkeys are off.
        assert!(relying_party("http://127.0.0.1:8080").unwrap().is_none());
        for bad in [
            "localhost:8080",
            "http://localhost:8080/app",
            "ftp://localhost",
            "http://localhost:8080?x=1",
        ] {
            let e = relying_party(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.to_string().contains("--public-origin"), "{e}");
        }
    }

    #[test]
    fn a_zero_rate_means_unlimited() {
        let limits = RateLimits::new(&ServerConfig {
            command_rate: 0,
            ..ServerConfig::default()
        });
        for _ in 0..10_000 {
            assert!(limits.command("token:a").is_ok());
        }
    }

    #[test]
    fn live_streams_are_limited_per_credential_and_released_on_drop() {
        let registry = Arc::new(LiveRegistry::new());
        let acquire = |key: &str, limit| registry.acquire(key, key, limit, None);
        let a = acquire("token:a", 2).unwrap();
        let _b = acquire("token:a", 2).unwrap();
        assert!(matches!(acquire("token:a", 2), Err(ApiError::TooManyRequests { .. })));
        assert!(acquire("token:other", 2).is_ok());
        drop(a);
        assert!(acquire("token:a", 2).is_ok());
    }

    #[tokio::test]
    async fn ending_a_credential_ends_its_streams_only() {
        let registry = Arc::new(LiveRegistry::new());
        let acquire = |key: &str, limit| registry.acquire(key, key, limit, None);
        let a1 = acquire("token:a", 2).unwrap();
        let a2 = acquire("token:a", 2).unwrap();
        let b = acquire("token:b", 2).unwrap();
        assert_eq!(registry.end_credential("token:a"), 2);
        assert_eq!(a1.ended().await, EndReason::Revoked);
        assert_eq!(a2.ended().await, EndReason::Revoked);
        assert!(!b.ended.is_cancelled());
        // A later entry for the same name is not miscounted by the old guards.
        let c1 = acquire("token:a", 3).unwrap();
        drop(a1);
        drop(a2);
        drop(c1);
        {
            let open = registry.open.lock().unwrap();
            assert!(!open.credentials.contains_key("token:a"));
            assert!(!open.counts.contains_key("token:a"));
            assert_eq!(open.counts.get("token:b"), Some(&1));
        }
        registry.shutdown.cancel();
        assert_eq!(b.ended().await, EndReason::Shutdown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_stream_counts_against_its_user_and_ends_with_its_session() {
        let registry = Arc::new(LiveRegistry::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let s1 = registry.acquire("user:u", "session:1", 2, Some(deadline)).unwrap();
        let s2 = registry.acquire("user:u", "session:2", 2, None).unwrap();
        // The limit is per user, across sessions.
        assert!(matches!(
            registry.acquire("user:u", "session:3", 2, None),
            Err(ApiError::TooManyRequests { .. })
        ));
        // Logging out one session ends its streams, not the other's.
        assert_eq!(registry.end_credential("session:2"), 1);
        assert_eq!(s2.ended().await, EndReason::Revoked);
        assert!(!s1.ended.is_cancelled());
        // The other ends at its session's expiry.
        assert_eq!(s1.ended().await, EndReason::Expired);
        assert!(tokio::time::Instant::now() >= deadline);
    }

    #[tokio::test]
    async fn ending_a_user_ends_the_streams_of_all_their_sessions_only() {
        let registry = Arc::new(LiveRegistry::new());
        let s1 = registry.acquire("user:u", "session:1", 8, None).unwrap();
        let s1b = registry.acquire("user:u", "session:1", 8, None).unwrap();
        let s2 = registry.acquire("user:u", "session:2", 8, None).unwrap();
        let other = registry.acquire("user:v", "session:3", 8, None).unwrap();
        let token = registry.acquire("token:u", "token:u", 8, None).unwrap();
        assert_eq!(registry.end_limit_key("user:u"), 3);
        for s in [&s1, &s1b, &s2] {
            assert_eq!(s.ended().await, EndReason::Revoked);
        }
        assert!(!other.ended.is_cancelled() && !token.ended.is_cancelled());
        assert_eq!(registry.end_limit_key("user:u"), 0, "once");
        // The ended streams still give their slots back when they close.
        drop((s1, s1b, s2));
        let open = registry.open.lock().unwrap();
        assert!(!open.counts.contains_key("user:u"));
        assert_eq!(open.counts.get("user:v"), Some(&1));
    }
}
