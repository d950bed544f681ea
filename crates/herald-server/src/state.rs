//! The cheap-to-clone application state every handler receives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_core::auth::CredentialStore;
use herald_core::store::{EventStore, StoreError};
use herald_store::credentials::SqliteCredentials;
use herald_store::readmodel::SqliteDeployments;
use herald_store::sqlite::SqliteStore;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            public_origin: "http://localhost:8080".into(),
            stream_limit: 64,
            keepalive: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            command_rate: 200,
        }
    }
}

/// Changed deployments after one projector step, pre-encoded as SSE frames.
#[derive(Debug)]
pub struct DeploymentChanges {
    /// The log position the read model reflects after the step.
    pub position: u64,
    pub frames: Bytes,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    pub credentials: Arc<dyn CredentialStore>,
    pub deployments: Arc<SqliteDeployments>,
    pub config: Arc<ServerConfig>,
    pub live: Arc<LiveRegistry>,
    pub limits: Arc<RateLimits>,
    /// Commands on one stream take turns in this process.
    pub stream_locks: Arc<herald_core::command::StreamLocks>,
}

impl AppState {
    /// The embedded store: everything in `dir`.
    pub fn open_sqlite(dir: &Path, config: ServerConfig) -> Result<AppState, StoreError> {
        Ok(AppState::new(
            SqliteStore::open(dir)?,
            SqliteCredentials::open(dir)?,
            SqliteDeployments::open(dir)?,
            config,
        ))
    }

    /// State around stores opened by the caller.
    pub fn new(
        store: Arc<dyn EventStore>,
        credentials: Arc<dyn CredentialStore>,
        deployments: Arc<SqliteDeployments>,
        config: ServerConfig,
    ) -> AppState {
        AppState {
            store,
            credentials,
            deployments,
            limits: Arc::new(RateLimits::new(&config)),
            stream_locks: Arc::default(),
            config: Arc::new(config),
            live: Arc::new(LiveRegistry::new()),
        }
    }
}

/// Live connections: per-credential counts, shutdown, and the deployments feed.
///
/// Each credential with open streams has a cancellation token (a child of
/// `shutdown`): revoking the credential — a token, later a session — cancels it,
/// which ends every stream it opened at once.
pub struct LiveRegistry {
    pub shutdown: CancellationToken,
    open: Mutex<HashMap<String, Credential>>,
    generation: AtomicU64,
    pub deployment_changes: broadcast::Sender<Arc<DeploymentChanges>>,
    /// The highest position delivered to the projector (for lag metrics).
    pub head: AtomicU64,
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
            open: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            deployment_changes: broadcast::channel(1024).0,
            head: AtomicU64::new(0),
        }
    }

    /// Counts one more live stream for `credential`, or 429 beyond `limit`.
    pub fn acquire(self: &Arc<Self>, credential: &str, limit: usize) -> Result<StreamGuard, ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::Unavailable("herald is shutting down".into()));
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let entry = open.entry(credential.to_owned()).or_insert_with(|| Credential {
            streams: 0,
            generation: self.generation.fetch_add(1, Ordering::Relaxed),
            ended: self.shutdown.child_token(),
        });
        if entry.streams >= limit {
            return Err(ApiError::TooManyRequests {
                detail: format!("at most {limit} live streams per credential are open at once; close one first"),
                retry_after_secs: 5,
            });
        }
        entry.streams += 1;
        metrics::gauge!("herald_live_subscribers").increment(1.0);
        Ok(StreamGuard {
            registry: self.clone(),
            credential: credential.to_owned(),
            generation: entry.generation,
            ended: entry.ended.clone(),
        })
    }

    /// Ends every open stream of `credential` (revoked, logged out, expired).
    /// Returns how many were open.
    pub fn end_credential(&self, credential: &str) -> usize {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.remove(credential) {
            Some(entry) => {
                entry.ended.cancel();
                entry.streams
            }
            None => 0,
        }
    }

    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }
}

struct Credential {
    streams: usize,
    /// Tells this entry from a later one for the same credential.
    generation: u64,
    ended: CancellationToken,
}

/// Releases a live-stream slot when the stream ends, however it ends.
pub struct StreamGuard {
    registry: Arc<LiveRegistry>,
    credential: String,
    generation: u64,
    ended: CancellationToken,
}

/// Why a stream's [`StreamGuard::ended`] fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Shutdown,
    Revoked,
}

impl StreamGuard {
    /// The newest position this process has seen.
    pub fn head(&self) -> u64 {
        self.registry.head()
    }

    /// Resolves when the stream must end: herald shuts down or the credential
    /// that opened it is revoked.
    pub async fn ended(&self) -> EndReason {
        self.ended.cancelled().await;
        if self.registry.shutdown.is_cancelled() {
            EndReason::Shutdown
        } else {
            EndReason::Revoked
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = open.get_mut(&self.credential)
            && entry.generation == self.generation
        {
            entry.streams -= 1;
            if entry.streams == 0 {
                open.remove(&self.credential);
            }
        }
        metrics::gauge!("herald_live_subscribers").decrement(1.0);
    }
}

type KeyedLimiter = governor::DefaultKeyedRateLimiter<String>;

/// Per-credential request rates (429 beyond them).
pub struct RateLimits {
    commands: Option<KeyedLimiter>,
}

impl RateLimits {
    pub fn new(config: &ServerConfig) -> Self {
        let commands = std::num::NonZeroU32::new(config.command_rate).map(|rate| {
            let burst = rate.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(1));
            governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
        });
        RateLimits { commands }
    }

    /// Counts one command for `credential`, or 429 with when to retry.
    pub fn command(&self, credential: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.commands else {
            return Ok(());
        };
        limiter.check_key(&credential.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            ApiError::TooManyRequests {
                detail: "this credential is sending commands faster than its rate limit; slow down".into(),
                retry_after_secs: wait.as_secs().max(1),
            }
        })?;
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        Ok(())
    }
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
        let a = registry.acquire("token:a", 2).unwrap();
        let _b = registry.acquire("token:a", 2).unwrap();
        assert!(matches!(
            registry.acquire("token:a", 2),
            Err(ApiError::TooManyRequests { .. })
        ));
        assert!(registry.acquire("token:other", 2).is_ok());
        drop(a);
        assert!(registry.acquire("token:a", 2).is_ok());
    }

    #[tokio::test]
    async fn ending_a_credential_ends_its_streams_only() {
        let registry = Arc::new(LiveRegistry::new());
        let a1 = registry.acquire("token:a", 2).unwrap();
        let a2 = registry.acquire("token:a", 2).unwrap();
        let b = registry.acquire("token:b", 2).unwrap();
        assert_eq!(registry.end_credential("token:a"), 2);
        assert_eq!(a1.ended().await, EndReason::Revoked);
        assert_eq!(a2.ended().await, EndReason::Revoked);
        assert!(!b.ended.is_cancelled());
        // A later entry for the same name is not miscounted by the old guards.
        let c1 = registry.acquire("token:a", 1).unwrap();
        drop(a1);
        drop(a2);
        assert!(matches!(
            registry.acquire("token:a", 1),
            Err(ApiError::TooManyRequests { .. })
        ));
        drop(c1);
        assert!(registry.acquire("token:a", 1).is_ok());
        registry.shutdown.cancel();
        assert_eq!(b.ended().await, EndReason::Shutdown);
    }
}
