//! Limits kept in this process's memory (per instance): how often the audit
//! verification may run. A leaf.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// How often one credential may start a verification.
pub const VERIFY_INTERVAL: Duration = Duration::from_secs(10);

/// Verification costs ~9 s per million events: at most one runs in this
/// process, and each credential may start one every [`VERIFY_INTERVAL`].
#[derive(Debug)]
pub struct AuditLimits {
    running: Arc<Semaphore>,
    /// When each credential last started one.
    started: Mutex<HashMap<String, Instant>>,
}

impl Default for AuditLimits {
    fn default() -> Self {
        AuditLimits {
            running: Arc::new(Semaphore::new(1)),
            started: Mutex::default(),
        }
    }
}

/// Most credentials remembered before the expired ones are dropped.
const STARTED_MAX: usize = 10_000;

impl AuditLimits {
    /// A permit to run one verification for `credential` (hold it until the
    /// verification ends), or 429 with `Retry-After`.
    pub fn begin(&self, credential: &str) -> Result<OwnedSemaphorePermit, ApiError> {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(at) = started.get(credential) {
            let since = now.duration_since(*at);
            if since < VERIFY_INTERVAL {
                let left = VERIFY_INTERVAL - since;
                return Err(ApiError::TooManyRequests {
                    detail: format!(
                        "a verification may be started once every {} s per credential",
                        VERIFY_INTERVAL.as_secs()
                    ),
                    retry_after_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                });
            }
        }
        let permit = self
            .running
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyRequests {
                detail: "another verification is running in this process; retry when it is done".into(),
                retry_after_secs: VERIFY_INTERVAL.as_secs(),
            })?;
        if started.len() >= STARTED_MAX {
            started.retain(|_, at| now.duration_since(*at) < VERIFY_INTERVAL);
        }
        started.insert(credential.to_owned(), now);
        Ok(permit)
    }
}
